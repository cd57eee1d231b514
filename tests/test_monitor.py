"""monitor.py: effective rank, and the TensorBoard tags read back from the event files."""

import glob
import json
import os

import keras
import numpy as np
import tensorflow as tf

from minc_tf import monitor
from test_model import batches, compile_model, dataset, tiny_model


def test_effective_rank():
  np.testing.assert_allclose(monitor.effective_rank(np.ones(16)), 16.0, rtol=1e-9)
  np.testing.assert_allclose(monitor.effective_rank([5.0, 0.0, 0.0]), 1.0, rtol=1e-9)
  # A non-flat spectrum: p = (3, 1) / 4, exp(-(0.75 ln 0.75 + 0.25 ln 0.25)) = 1.7548...
  np.testing.assert_allclose(monitor.effective_rank([3.0, 1.0]), 1.7547654, rtol=1e-6)


def test_feature_effective_rank_is_of_the_singular_values_of_the_centred_features():
  """Features U diag(s) V^T plus a constant offset: the offset is removed by the centring and
  the rank is that of the singular values s (not of their squares, the eigenvalues of the
  covariance, which agree with them only on flat or one-hot spectra)."""
  rng = np.random.default_rng(0)
  n, d, s = 200, 6, np.array([4.0, 2.0, 1.0, 0.5, 0.0, 0.0])
  u, _ = np.linalg.qr(rng.normal(size=(n, d)))
  u -= u.mean(0)  # centred columns, re-orthonormalised
  u, _ = np.linalg.qr(u)
  v, _ = np.linalg.qr(rng.normal(size=(d, d)))
  features = u @ np.diag(s) @ v.T + 5.0 * rng.normal(size=(1, d))
  p = s / s.sum()
  expected = np.exp(-np.sum(p[p > 0] * np.log(p[p > 0])))
  np.testing.assert_allclose(monitor.feature_effective_rank(features), expected, rtol=1e-6)
  p2 = s ** 2 / (s ** 2).sum()
  assert abs(np.exp(-np.sum(p2[p2 > 0] * np.log(p2[p2 > 0]))) - expected) > 0.3


def read_tags(directory):
  tags = set()
  for path in glob.glob(os.path.join(directory, '**', 'events.out.tfevents.*'), recursive=True):
    for event in tf.compat.v1.train.summary_iterator(path):
      tags.update(v.tag for v in event.summary.value)
  return tags


def test_expected_tags_are_written(tmp_path):
  m = tiny_model('minc', use_target=True)
  compile_model(m, lr=0.01)
  (v1, v2), _ = batches(n=4, count=1)[0]
  cb = monitor.Monitor(str(tmp_path), global_batch_size=16, every_steps=1,
                       view_pairs=(v1, v2), config_text='run.epochs = 1', rank_images=v1,
                       curves_path=str(tmp_path / 'curves.json'))
  tb = keras.callbacks.TensorBoard(str(tmp_path), update_freq=1)
  m.fit(dataset(batches(count=3)), epochs=1, verbose=0, callbacks=[cb, tb])
  tags = read_tags(str(tmp_path))
  for tag in ('learning_rate', 'target_tau', 'images_per_s', 'summary/eigenvalue_effective_rank',
              'summary/eigenvalue_0', 'view_pairs', 'gin_config', 'epoch_loss',
              'epoch_loss', 'epoch_probe_loss', 'epoch_loss_attract', 'epoch_loss_repel', 'epoch_probe_train_acc',
              'epoch_feature_std', 'feature_effective_rank'):
    assert tag in tags, (tag, sorted(tags))
  assert any(t.startswith('encoder/') or '/kernel' in t for t in tags)  # histograms


def test_curves_file_holds_the_run_and_survives_a_resume(tmp_path):
  m = tiny_model('minc')
  compile_model(m, lr=0.01)
  (v1, _), _ = batches(n=8, count=1)[0]
  path = str(tmp_path / 'curves.json')

  def fit(epochs, initial_epoch=0):
    cb = monitor.Monitor(str(tmp_path), 16, every_steps=1, rank_images=v1, curves_path=path,
                         histograms=False)
    m.fit(dataset(batches(count=2)), epochs=epochs, initial_epoch=initial_epoch, verbose=0,
          callbacks=[cb])
    with open(path) as f:
      return json.load(f)

  first = fit(1)
  assert [p[0] for p in first['feature_effective_rank']] == [0, 2]  # start and epoch end
  assert [p[0] for p in first['train/loss']] == [1, 2]
  attract = dict(first['train/loss_attract'])
  repel = dict(first['train/loss_repel'])
  for step, loss in first['train/loss']:
    np.testing.assert_allclose(attract[step] + repel[step], loss, rtol=1e-5)
  # The optimizer's step continues (2 -> 4); the curves keep the first run's points.
  second = fit(2, initial_epoch=1)
  assert [p[0] for p in second['train/loss']] == [1, 2, 3, 4]
  assert [p[0] for p in second['feature_effective_rank']] == [0, 2, 4]
  ranks = [v for _, v in second['feature_effective_rank']]
  assert all(1.0 <= r <= v1.shape[0] for r in ranks)
