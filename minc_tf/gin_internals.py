"""Every private gin API the project relies on, in one place.

gin has no public listing of its configurables, of the values a run bound, or of the values it
used (bound or default) other than as text for reading. Each function below reaches into
gin.config for one of those; tests/test_gin_internals.py fails loudly, naming the function,
when a new gin changes them.
"""

import inspect

import gin


def configurables():
  """{selector: the configurable's function} of every registered configurable."""
  registry = gin.config._REGISTRY  # pylint: disable=protected-access
  return {selector: c.wrapped for selector, c in registry.items()}


def configurable(selector):
  """The function of the configurable `selector` (a name or module.name), or None."""
  found = gin.config._REGISTRY.get_match(selector)  # pylint: disable=protected-access
  return found.wrapped if found is not None else None


def defaults(selector):
  """{parameter: default} of the configurable `selector` (its signature's, __signature__
  included: build_model's method settings), {} when it has none."""
  fn = configurable(selector)
  if fn is None:
    return {}
  return {name: p.default for name, p in inspect.signature(fn).parameters.items()
          if p.default is not inspect.Parameter.empty}


def bound_values():
  """{'selector.param' (scope/ prefixed when scoped): value} of every binding parsed so far;
  the selector is module-qualified as gin registered it (monitor.binding_key shortens it)."""
  out = {}
  for (scope, selector), params in gin.config._CONFIG.items():  # pylint: disable=protected-access
    for name, value in params.items():
      out[f'{scope + "/" if scope else ""}{selector}.{name}'] = value
  return out


def macro_value(value):
  """(name, value) of a gin macro reference such as %EPOCHS (its value as bound), else None."""
  if isinstance(value, gin.config.ConfigurableReference) and str(value).startswith('%'):
    return str(value), gin.query_parameter(str(value))
  return None


def operative_values():
  """{'selector.param': value} of every parameter of every configurable called so far, bound
  or default (what operative_config.gin shows as text); selectors as in bound_values."""
  out = {}
  operative = gin.config._OPERATIVE_CONFIG  # pylint: disable=protected-access
  for (scope, selector), params in operative.items():
    for name, value in params.items():
      out[f'{scope + "/" if scope else ""}{selector}.{name}'] = value
  return out
