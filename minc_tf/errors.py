"""The one exception type for problems the user can fix (bad config, missing data, ...).

main.py prints its message (which names the problem and the fix) without a traceback and exits
with status 2; everything else is a bug and keeps its traceback.
"""


class UserError(Exception):
  """A problem in the user's input, with a message that says how to fix it."""
