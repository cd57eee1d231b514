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
  path = plots.plot_study(rows, str(tmp_path / 'sub' / 'sweep.png'))
  h, w, _ = png_shape(path)
  assert w > 2 * h  # two panels side by side (the sweep, the ranks)
  with open(path, 'rb') as f:
    pixels = tf.io.decode_png(f.read()).numpy()
  pixels = pixels.reshape(-1, pixels.shape[-1])
  assert len(np.unique(pixels, axis=0)) > 20  # curves drawn, not a blank canvas
