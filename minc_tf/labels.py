"""A study's row labels: each format written and parsed here, nowhere else.

study.py names its variants with these; tables.py reads the structure back out of them.

  sweep   'minc decay=0.99 B=64', 'spectral k=256'     (sweep_label / parse_sweep)
  screen  'BYOL lr=0.001'                               (screen_label / parse_screen)
  final   'BYOL (lr 0.001, final)'                      (final_label / parse_final)
  cell    'Spectral B=16 (lr 0.001)'                    (cell_label / parse_cell)
"""

import re

_SWEEP = re.compile(r'(minc decay=(\S+)|spectral) ([Bk])=(\d+)$')
_SCREEN = re.compile(r'(.+) lr=(\S+)$')
_FINAL = re.compile(r'(.+) \(lr (\S+), final\)$')
_CELL = re.compile(r'(.+) B=(\d+) \(lr (\S+)\)$')
_AXES = {'batch': 'B', 'width': 'k'}


def sweep_label(axis, value, decay=None):
  """MINC at summary decay `decay` (None: Spectral) at `value` of `axis` ('batch', 'width')."""
  arm = 'spectral' if decay is None else f'minc decay={decay}'
  return f'{arm} {_AXES[axis]}={value}'


def parse_sweep(label):
  """((axis letter 'B' or 'k', value), decay or 'spectral') of a sweep label, else None."""
  m = _SWEEP.match(label)
  if not m:
    return None
  return (m.group(3), int(m.group(4))), 'spectral' if m.group(2) is None else float(m.group(2))


def screen_label(method, lr):
  return f'{method} lr={lr:g}'


def parse_screen(label):
  """(method label, lr) of a screen label, else None."""
  m = _SCREEN.match(label)
  return (m.group(1), float(m.group(2))) if m else None


def final_label(method, lr):
  return f'{method} (lr {lr:g}, final)'


def parse_final(label):
  """(method label, lr) of a final's label, else None."""
  m = _FINAL.match(label)
  return (m.group(1), float(m.group(2))) if m else None


def cell_label(arm, batch_size, lr):
  """An outcome study's run of `arm` at global batch `batch_size` and its screened lr."""
  return f'{arm} B={batch_size} (lr {lr:g})'


def parse_cell(label):
  """(arm, batch size, lr) of a cell label, else None."""
  m = _CELL.match(label)
  return (m.group(1), int(m.group(2)), float(m.group(3))) if m else None
