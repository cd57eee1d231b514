"""Gin parsing for the launch and the studies: files, bindings, and errors that say the fix."""

import difflib
import inspect
import os
import re

import gin

from minc_tf import gin_internals
from minc_tf.errors import UserError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIN_DIR = os.path.join(REPO_ROOT, 'gin')


def parse_gin(files, bindings):
  """Parses gin files, then bindings; typos become a UserError naming the nearest valid names.

  Every configurable must be registered first: entry points import minc_tf.configurables.
  """
  if gin_internals.configurable('run') is None:
    raise RuntimeError('minc_tf.configurables is not imported, so gin knows none of minc_tf\'s '
                       'configurables. Fix: `from minc_tf import configurables` before parsing.')
  # `include 'gin/...'` resolves from the repository root as well as from the working dir.
  gin.add_config_file_search_path(REPO_ROOT)
  for path in files:
    if path and (os.path.isdir(path) or os.path.isdir(os.path.join(REPO_ROOT, path))):
      raise UserError(f'--gin_file={path} is a directory. Fix: name a gin file, e.g. '
                      f'--gin_file={os.path.join(path, "minc.gin")}.')
    if not os.path.exists(path) and not os.path.exists(os.path.join(REPO_ROOT, path)):
      shipped = ', '.join(sorted(os.listdir(GIN_DIR))) if os.path.isdir(GIN_DIR) else ''
      raise UserError(f'The gin file {path} does not exist. Fix: pass an existing file to '
                      f'--gin_file (shipped in gin/: {shipped}).')
  try:
    gin.parse_config_files_and_bindings(files, bindings, finalize_config=False)
  except (ValueError, SyntaxError, TypeError) as e:
    raise UserError(f'Bad gin configuration: {e}{_suggest(str(e))} Fix the binding or file '
                    'named above.') from None


def _suggest(message):
  """' Did you mean ...?' for an unknown configurable or parameter named in a gin error."""
  m = re.search(r"No configurable matching '([^']+)'", message)
  if m:
    names = sorted({selector.split('.')[-1] for selector in gin_internals.configurables()})
    close = difflib.get_close_matches(m.group(1).split('.')[-1], names, n=3)
    return f' Did you mean {" or ".join(close)}?' if close else ''
  m = re.search(r"Configurable '([^']+)' doesn't have a parameter named '([^']+)'", message)
  if m:
    fn = gin_internals.configurable(m.group(1))
    params = inspect.signature(fn).parameters if fn is not None else []
    close = difflib.get_close_matches(m.group(2), list(params), n=3)
    return f' Did you mean {" or ".join(close)}?' if close else ''
  return ''
