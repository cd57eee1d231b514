"""study.py: the gradient noise-to-signal measure and the tables it writes."""

import importlib.util
import types

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


class _LinearModel:
  """A stand-in whose SSL loss sum(w * x1) has the gradient x1: batch b's gradient is known."""

  def __init__(self):
    self.w = tf.Variable(tf.zeros(2))
    self.encoder = types.SimpleNamespace(trainable_variables=[self.w])
    self.projector = types.SimpleNamespace(trainable_variables=[])

  def compute_ssl_loss(self, x1, x2, training=True, update_summary=True):
    assert not update_summary  # the measure must not move MINC's summary
    return tf.reduce_sum(self.w * x1), None, None, {}


def test_noise_to_signal_has_its_closed_form_value():
  """Gradients (1, 0), (3, 0), (2, 3) of the first 3 batches (a 4th is offered, not read):
  mean (2, 1), E||g - mean||^2 = (2 + 2 + 4) / 3, ||mean||^2 = 5, so the ratio is 8 / 15."""
  grads = [(1.0, 0.0), (3.0, 0.0), (2.0, 3.0), (100.0, 100.0)]
  ds = tf.data.Dataset.from_tensor_slices(
      ((np.array(grads, np.float32), np.zeros((4, 2), np.float32)), np.zeros(4, np.int64)))
  np.testing.assert_allclose(study.gradient_noise_to_signal(_LinearModel(), ds, 3), 8 / 15,
                             rtol=1e-6)


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
