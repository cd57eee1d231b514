"""Every configurable parameter: its default, its allowed values and a line of doc, read from
where each is stated once (signatures, the checks that enforce them, docstrings, the methods'
SETTINGS), for main's --list_settings and --print_config.

  python -m minc_tf.main --list_settings [--gin_file=...]      every parameter, one line each
  python -m minc_tf.main --print_config --gin_file=gin/minc.gin  the resolved values of a command
"""

import ast
import inspect
import math
import re
import textwrap

from minc_tf import errors
from minc_tf import gin_internals
from minc_tf import monitor
from minc_tf import schema

# The configurables a user sets (gin_internals.configurables() also lists gin's own helpers).
SELECTORS = ('run', 'load_data', 'view_transforms', 'build_encoder', 'build_model',
             'build_optimizer', 'linear_probe', 'knn_accuracy', 'offline_linear_eval',
             'run_study', 'transfer', 'fine_tune')
# Main's arguments, not settings: gin refuses them (denylist).
_NOT_SETTINGS = {'mode', 'model_dir', 'strategy', 'allow_config_change', 'reuse_model_dir',
                 'command_line', 'image_shape', 'num_classes', 'total_steps', 'sync_bn',
                 'input_shape', 'encoder', 'data', 'splits', 'backup_dir', 'trainable',
                 'source_dir', 'fine_tuning'}


def _function(selector):
  return gin_internals.configurable(selector)


def _doc_lines(fn):
  """{param: first sentence of its entry} from a docstring's 'param: ...' (or 'a / b: ...')
  paragraphs."""
  out = {}
  doc = inspect.getdoc(fn) or ''
  entries = re.split(r'\n(?=\s*[\w][\w /,]*(?: \([^)]*\))?: )', '\n' + doc)
  for entry in entries:
    m = re.match(r'\s*([\w][\w /,]*?)(?: \([^)]*\))?: (.*)', entry, re.S)
    if not m:
      continue
    text = ' '.join(m.group(2).split())
    sentence = re.split(r'(?<=[a-z0-9)\]]\.)\s(?=[A-Z])', text, maxsplit=1)[0]
    if len(sentence) > 200:
      sentence = sentence[:197].rsplit(' ', 1)[0] + ' ...'
    for name in re.split(r'\s*[/,]\s*', m.group(1)):
      out.setdefault(name.strip(), sentence)
  return out


def _eval_check(node, names):
  try:
    value = eval(compile(ast.Expression(node), '<check>', 'eval'), names)  # pylint: disable=eval-used
  except Exception:  # pylint: disable=broad-except  (a check built from run-time values)
    return None
  return value[1] if isinstance(value, tuple) and len(value) == 2 else None


def _checks_in(module):
  """{'selector.param': description} of the require() calls and check tables of `module`."""
  tree = ast.parse(inspect.getsource(module))
  # The module's immutable constants too (`one_of(MODES)`): the checks are evaluated here, and
  # neither a call of the module's code nor a method of a dict or list of it may run.
  constants = {k: v for k, v in vars(module).items()
               if k.isupper() and isinstance(v, (tuple, frozenset, str, int, float))}
  out = {}
  for fn in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):
    names = dict(constants, **vars(errors), math=math)
    for node in ast.walk(fn):  # local checks: `positive = real_in(0, math.inf, ...)`
      if (isinstance(node, ast.Assign) and len(node.targets) == 1 and
          isinstance(node.targets[0], ast.Name) and isinstance(node.value, ast.Call)):
        found = _eval_check(node.value, names)
        if found is not None:
          names[node.targets[0].id] = eval(compile(ast.Expression(node.value), '<check>',  # pylint: disable=eval-used
                                                   'eval'), names)
    for node in ast.walk(fn):
      if isinstance(node, ast.Call) and getattr(node.func, 'id', None) == 'require':
        key, check = node.args[0], node.args[2] if len(node.args) > 2 else None
        if isinstance(key, ast.Constant) and check is not None:
          found = _eval_check(check, names)
          if found:
            out[key.value] = found
      elif isinstance(node, ast.For) and isinstance(node.iter, ast.Tuple):
        prefix = _loop_prefix(node)
        for element in node.iter.elts:
          if (prefix and isinstance(element, ast.Tuple) and len(element.elts) == 3 and
              isinstance(element.elts[0], ast.Constant)):
            found = _eval_check(element.elts[2], names)
            if found:
              out[prefix + element.elts[0].value] = found
      elif isinstance(node, ast.Dict):  # evaluate.check_settings: {selector: {param: check}}
        for k, v in zip(node.keys, node.values):
          if isinstance(k, ast.Constant) and isinstance(v, ast.Dict) and k.value in SELECTORS:
            for pk, pv in zip(v.keys, v.values):
              found = _eval_check(pv, names) if isinstance(pk, ast.Constant) else None
              if found:
                out[f'{k.value}.{pk.value}'] = found
  return out


def _loop_prefix(loop):
  """'run.' of a loop whose body calls require(f'run.{name}', ...)."""
  for node in ast.walk(loop):
    if (isinstance(node, ast.Call) and getattr(node.func, 'id', None) == 'require' and
        isinstance(node.args[0], ast.JoinedStr) and
        isinstance(node.args[0].values[0], ast.Constant)):
      return node.args[0].values[0].value
  return None


def entries():
  """[{'key', 'default', 'allowed', 'doc'}] of every parameter of every user configurable."""
  import sys  # pylint: disable=import-outside-toplevel
  from minc_tf import methods  # pylint: disable=import-outside-toplevel
  checks = {}
  for selector in SELECTORS:
    fn = _function(selector)
    if fn is not None:
      checks.update(_checks_in(sys.modules[fn.__module__]))
  method_settings = {}
  for name in methods.names():
    for setting, spec in methods.get(name).SETTINGS.items():
      method_settings.setdefault(setting, (spec, []))[1].append(name)
  out = []
  for selector in SELECTORS:
    fn = _function(selector)
    if fn is None:
      continue
    docs = _doc_lines(fn)
    for param, default in gin_internals.defaults(selector).items():
      if param in _NOT_SETTINGS:
        continue
      key = f'{selector}.{param}'
      entry = {'key': key, 'default': default, 'allowed': checks.get(key),
               'doc': docs.get(param)}
      if selector == 'build_model' and param in method_settings:
        spec, owners = method_settings[param]
        entry.update(allowed=spec.check[1], doc=f'{spec.doc} ({", ".join(owners)})')
      entry['defines_run'] = schema.defines_run(key)
      out.append(entry)
  return out


def _text(heading, lines_of):
  """One block per configurable (its `heading`), the lines lines_of(entry) gives each entry."""
  lines, selector = [], None
  for e in entries():
    sel = e['key'].split('.')[0]
    if sel != selector:
      selector = sel
      lines.append(f'\n{heading(sel)}')
    lines += lines_of(e)
  return '\n'.join(lines).lstrip('\n') + '\n'


def list_text():
  """--list_settings: one block per configurable, one line per parameter."""
  def lines_of(e):
    allowed = f"  [{e['allowed']}]" if e['allowed'] else ''
    doc = ['      ' + line for line in textwrap.wrap(e['doc'], 92)] if e['doc'] else []
    return [f"  {e['key']} = {e['default']!r}{allowed}"] + doc
  return _text(lambda sel: sel, lines_of)


def resolved_text():
  """--print_config: every parameter's value under the parsed gin files and bindings (bound
  ones marked), as gin lines. Scoped bindings apply to their scope only and are not shown."""
  bound = {monitor.binding_key(k): v for k, v in gin_internals.bound_values().items()}

  def lines_of(e):
    if e['key'] in bound:
      value = bound[e['key']]
      macro = gin_internals.macro_value(value)
      if macro:  # the macro's value, with its name (the line stays valid gin)
        return [f"{e['key']} = {macro[1]!r}  # bound, {macro[0]}"]
      return [f"{e['key']} = {value!r}  # bound"]
    return [f"{e['key']} = {e['default']!r}"]
  return _text(lambda sel: f'# {sel}', lines_of)
