"""study.py: the gradient noise-to-signal measure and the tables it writes."""

import importlib.util

import numpy as np
import tensorflow as tf

from minc_tf import study
from test_model import batches, compile_model, tiny_model


def _repeat(data):
  (x1, x2), y = data[0]
  return tf.data.Dataset.from_tensors(((x1, x2), y)).repeat()


def test_noise_to_signal_is_zero_for_identical_batches_and_positive_otherwise():
  m = tiny_model('spectral')
  compile_model(m)
  assert study.gradient_noise_to_signal(m, _repeat(batches(n=8, count=1)), 4) < 1e-10
  data = batches(n=8, count=4)
  ds = tf.data.Dataset.from_generator(lambda: iter(data), output_signature=(
      (tf.TensorSpec((8, 8, 8, 1), tf.float32),) * 2, tf.TensorSpec((8,), tf.int64)))
  assert study.gradient_noise_to_signal(m, ds, 4) > 1e-3


def test_noise_to_signal_equals_its_definition_on_three_batches():
  """E_b ||g_b - g_mean||^2 / ||g_mean||^2 over the first 3 batches (of 4 offered), with g_b the
  gradient of batch b w.r.t. the online encoder and projector, written out here in NumPy."""
  m = tiny_model('spectral')
  compile_model(m)
  data = batches(n=8, count=4)
  grads = []
  for (x1, x2), _ in data[:3]:
    with tf.GradientTape() as tape:
      loss, _, _, _ = m.compute_ssl_loss(tf.constant(x1), tf.constant(x2))
    variables = m.encoder.trainable_weights + m.projector.trainable_weights
    grads.append(np.concatenate([np.ravel(g) for g in tape.gradient(loss, variables)]))
  g = np.array(grads, np.float64)
  mean = g.mean(0)
  expected = np.mean([np.sum((gb - mean) ** 2) for gb in g]) / np.sum(mean ** 2)
  ds = tf.data.Dataset.from_generator(lambda: iter(data), output_signature=(
      (tf.TensorSpec((8, 8, 8, 1), tf.float32),) * 2, tf.TensorSpec((8,), tf.int64)))
  np.testing.assert_allclose(study.gradient_noise_to_signal(m, ds, 3), expected, rtol=1e-4)


def test_minc_noise_measure_leaves_the_summary_untouched():
  m = tiny_model('minc')
  compile_model(m)
  before = m.summary.numpy().copy()
  study.gradient_noise_to_signal(m, _repeat(batches(n=8, count=1)), 2)
  np.testing.assert_array_equal(m.summary.numpy(), before)
  assert m.summary_steps.numpy() == 0


def test_tables(tmp_path):
  rows = [{'variant': 'a', 'probe_top1': 80.0, 'knn_top1': 79.0, 'feature_effective_rank': 20.0,
           'final_loss': -1.0, 'pretrain_wall_time_s': 10, 'images_per_s': 5,
           'random_init_top1': 70.0, 'raw_pixel_top1': 84.0}]
  docs = tmp_path / 'docs'
  docs.mkdir()
  study._write(str(tmp_path / 'run'), 'ablation', rows, str(docs / 'table.md'), 'run.epochs = 1\n')
  text = (tmp_path / 'run' / 'ablation.md').read_text()
  assert '| a | 80.00 | 79.00 | 20.0 |' in text and 'raw pixels 84.00' in text
  assert (docs / 'table.md').read_text() == text
  if importlib.util.find_spec('matplotlib'):  # drawn once, the same PNG beside both tables
    png = (tmp_path / 'run' / 'ablation.png').read_bytes()
    assert png[:4] == b'\x89PNG' and (docs / 'table.png').read_bytes() == png
  var = [{'method': m, 'stage': 'init', 'batch_size': 64, 'noise_to_signal': v}
         for m, v in (('minc', 2.0), ('spectral', 4.0))]
  study._write_variance(str(tmp_path), var, None)
  assert '| init | 64 | 2 | 4 | 0.50 |' in (tmp_path / 'variance.md').read_text()
