"""configurables.py is a leaf that registers every configurable, and the package has no import
circle (lazy imports inside functions count too)."""

import ast
import os

from minc_tf import configurables  # noqa: F401
from minc_tf import gin_internals

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'minc_tf')


def _imports():
  """{module: {minc_tf modules it imports anywhere in its file}} over minc_tf/."""
  graph = {}
  for root, _, names in os.walk(PACKAGE):
    for name in names:
      if not name.endswith('.py'):
        continue
      path = os.path.join(root, name)
      rel = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, '.')
      module = rel[:-len('.__init__')] if rel.endswith('.__init__') else rel
      deps = set()
      for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith('minc_tf'):
          for alias in node.names:
            full = f'{node.module}.{alias.name}'
            deps.add(full if os.path.exists(os.path.join(
                os.path.dirname(PACKAGE), *full.split('.')) + '.py') else node.module)
        elif isinstance(node, ast.Import):
          deps.update(a.name for a in node.names if a.name.startswith('minc_tf'))
      graph[module] = deps - {module}
  return graph


def test_every_configurable_is_registered():
  names = {s.split('.')[-1] for s in gin_internals.configurables()}
  assert {'run', 'load_data', 'build_model', 'build_encoder', 'build_optimizer',
          'view_transforms', 'linear_probe', 'knn_accuracy', 'offline_linear_eval',
          'run_study'} <= names


def test_no_import_circle():
  graph = _imports()
  assert len(graph) > 25 and graph['minc_tf.train']
  state = {}

  def visit(node, path):
    if state.get(node) == 'done':
      return
    assert state.get(node) != 'open', 'import circle: ' + ' -> '.join(path + [node])
    state[node] = 'open'
    for dep in sorted(graph.get(node, ())):
      visit(dep, path + [node])
    state[node] = 'done'

  for module in sorted(graph):
    visit(module, [])


def test_only_the_entry_point_imports_configurables():
  importers = sorted(m for m, deps in _imports().items() if 'minc_tf.configurables' in deps)
  assert importers == ['minc_tf.main']
