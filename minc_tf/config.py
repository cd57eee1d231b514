"""Gin parsing for the launch and the studies: files, bindings, and errors that say the fix."""

import difflib
import inspect
import os
import re

import gin

from minc_tf.errors import UserError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIN_DIR = os.path.join(REPO_ROOT, 'gin')


def parse_gin(files, bindings):
  """Parses gin files, then bindings; typos become a UserError naming the nearest valid names."""
  from minc_tf import study  # noqa: F401  (imports register every configurable)
  from minc_tf import train  # noqa: F401
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
  registry = gin.config._REGISTRY  # gin has no public listing of configurables.
  m = re.search(r"No configurable matching '([^']+)'", message)
  if m:
    names = sorted({selector.split('.')[-1] for selector, _ in registry.items()})
    close = difflib.get_close_matches(m.group(1).split('.')[-1], names, n=3)
    return f' Did you mean {" or ".join(close)}?' if close else ''
  m = re.search(r"Configurable '([^']+)' doesn't have a parameter named '([^']+)'", message)
  if m:
    configurable = registry.get_match(m.group(1))
    params = inspect.signature(configurable.wrapped).parameters if configurable else []
    close = difflib.get_close_matches(m.group(2), list(params), n=3)
    return f' Did you mean {" or ".join(close)}?' if close else ''
  return ''
