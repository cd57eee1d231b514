"""The one exception type for problems the user can fix (bad config, missing data, ...), and
the checks that turn a setting out of its range into one.

main.py prints its message (which names the problem and the fix) without a traceback and exits
with status 2; everything else is a bug and keeps its traceback.
"""

import numbers


class UserError(Exception):
  """A problem in the user's input, with a message that says how to fix it."""


def is_int(value):
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value):
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def int_at_least(low, optional=False):
  """(predicate, description) of an integer >= low (or None when optional)."""
  return ((lambda v: (optional and v is None) or (is_int(v) and v >= low)),
          f'an integer >= {low}' + (' or None' if optional else ''))


def real_in(low, high, low_open=False, high_open=False, optional=False):
  """(predicate, description) of a number in the interval, e.g. real_in(0, 1, high_open=True)
  for [0, 1); None allowed when optional."""
  def ok(v):
    if optional and v is None:
      return True
    if not is_real(v) or v != v:  # NaN is no number here
      return False
    above = v > low if low_open else v >= low
    below = v < high if high_open else v <= high
    return above and below
  interval = (('(' if low_open else '[') + f'{low}, {high}' + (')' if high_open else ']'))
  return ok, f'a number in {interval}' + (' or None' if optional else '')


def one_of(choices):
  """(predicate, description) of one of `choices`, of the same type (1 is not True)."""
  return ((lambda v: any(v == c and type(v) is type(c) for c in choices)),
          'one of ' + ', '.join(repr(c) for c in choices))


def interval_in(low, high, low_open=False):
  """(predicate, description) of a pair (a, b) with low <= a <= b <= high (low < a when
  low_open): a sampling range such as a crop area."""
  inner, _ = real_in(low, high, low_open=low_open)
  return ((lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and inner(v[0]) and
           inner(v[1]) and v[0] <= v[1]),
          f'a pair (a, b) with {low} {"<" if low_open else "<="} a <= b <= {high}')


def each(check):
  """(predicate, description) of a non-empty list whose every element passes `check`."""
  ok, allowed = check
  return ((lambda v: isinstance(v, (list, tuple)) and len(v) >= 1 and all(ok(x) for x in v)),
          f'a non-empty list of values, each {allowed}')


def subset_of(choices):
  """(predicate, description) of a list of distinct values out of `choices`, each of the same
  type as its choice; the empty list too (a set of options, none of them on)."""
  choices = tuple(choices)
  member, _ = one_of(choices)
  return ((lambda v: isinstance(v, (list, tuple)) and all(member(x) for x in v) and
           len(set(v)) == len(v)),
          'a list of distinct values out of ' + ', '.join(repr(c) for c in choices) +
          ' (or empty)')


def require(binding, value, check):
  """Raises a UserError naming the binding, its value and what it must be, unless the value
  passes `check`, a (predicate, description) pair such as int_at_least(1)."""
  ok, allowed = check
  if not ok(value):
    raise UserError(f'{binding} = {value!r} is not allowed: it must be {allowed}. Fix: bind '
                    f'{binding} to {allowed} (in the gin file or --gin_bindings).')
