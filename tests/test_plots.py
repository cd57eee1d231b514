"""plots.py: a run's PNG has one panel per kind of curve present; a study's PNG is written."""

import numpy as np
import pytest
import tensorflow as tf

from minc_tf import plots

pytest.importorskip('matplotlib')


def png_shape(path):
  with open(path, 'rb') as f:
    data = f.read()
  assert data[:8] == b'\x89PNG\r\n\x1a\n'
  return tf.io.decode_png(data).shape


def curve(n, f):
  return [[10 * i, f(i)] for i in range(n)]


def test_run_plot_has_a_panel_per_curve_kind(tmp_path):
  one = {'train/loss': curve(5, lambda i: 1.0 / (i + 1))}
  four = dict(one, **{'train/loss_attract': curve(5, lambda i: -i), 'epoch/probe_train_acc': curve(2, float),
                      'feature_effective_rank': curve(3, lambda i: 5.0 + i),
                      'learning_rate': curve(5, lambda i: 0.1)})
  h1, w1, _ = png_shape(plots.plot_run(one, str(tmp_path / 'one.png')))
  h4, w4, _ = png_shape(plots.plot_run(four, str(tmp_path / 'four.png'), title='t'))
  assert w4 > 3 * w1 and abs(h4 - h1) < 0.3 * h1
  assert plots.plot_run({}, str(tmp_path / 'none.png')) is None
  assert not (tmp_path / 'none.png').exists()
  assert not list(tmp_path.glob('*.tmp'))  # written atomically


def test_study_plot(tmp_path):
  rows = [{'variant': f'{m} B={b}', 'method': m, 'batch_size': b, 'probe_top1': 70.0 + b / 100,
           'feature_effective_rank_curve': curve(4, lambda i: 10.0 - i)}
          for m in ('minc', 'spectral') for b in (64, 128)]
  h, w, _ = png_shape(plots.plot_study(rows, str(tmp_path / 'sub' / 'sweep.png')))
  assert w > h > 0
  assert np.isfinite(h)


def test_sweep_table_and_difference_plot(tmp_path):
  """A sweep's rows: the table gains MINC - Spectral per cell (each decay and the chosen one)
  and the PNG is the difference plot, a single-seed cell drawn without an error bar."""
  from minc_tf import study
  rows = [{'variant': v, 'seed': s, 'probe_top1': p + s, 'knn_top1': p}
          for v, p in (('minc decay=0.0 k=64', 70.0), ('minc decay=0.99 k=64', 71.0),
                       ('spectral k=64', 69.0), ('minc decay=0.0 k=256', 72.0),
                       ('minc decay=0.99 k=256', 70.0), ('spectral k=256', 72.5))
          for s in (0, 1)]
  rows += [{'variant': 'minc decay=0.0 k=1024', 'seed': 0, 'probe_top1': 70.0, 'knn_top1': 1.0},
           {'variant': 'spectral k=1024', 'seed': 0, 'probe_top1': 69.0, 'knn_top1': 1.0}]
  study._write(str(tmp_path), 'width_sweep', rows, None, 'run.epochs = 1\n')
  text = (tmp_path / 'width_sweep.md').read_text()
  assert '| k=64 | 2 | 1.00 +- 0.00 | 2.00 +- 0.00 | 0.99 | 2.00 +- 0.00 |' in text
  assert '| k=256 | 2 | -0.50 +- 0.00 | -2.50 +- 0.00 | 0 | -0.50 +- 0.00 |' in text
  assert '| k=1024 | 1 | 1.00 (1 seed) | - | 0 | 1.00 (1 seed) |' in text
  h, w, _ = png_shape(str(tmp_path / 'width_sweep.png'))
  assert w > h > 0
