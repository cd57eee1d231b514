"""LARS against a NumPy reference step; the warmup-cosine schedule; the BYOL presets."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from minc_tf import optim
from minc_tf.errors import UserError


def np_lars(w, g, v, lr, momentum=0.9, wd=1e-4, eta=1e-3):
  """Reference: classic-momentum LARS of You et al. as in the SimCLR / BYOL code."""
  if w.ndim > 1:
    g = g + wd * w
    w_norm, g_norm = np.linalg.norm(w), np.linalg.norm(g)
    ratio = eta * w_norm / g_norm if w_norm > 0 and g_norm > 0 else 1.0
    lr = lr * ratio
  v = momentum * v + lr * g
  return w - v, v


@pytest.mark.parametrize('shape', [(4, 3), (3, 3, 2, 5), (7,)])
def test_lars_matches_numpy_reference_over_three_steps(shape):
  rng = np.random.default_rng(0)
  w0 = rng.normal(size=shape).astype(np.float32)
  var = keras.Variable(w0)
  opt = optim.LARS(0.5, momentum=0.9, weight_decay_rate=1e-4, trust_coefficient=1e-3)
  w, v = w0.astype(np.float64), np.zeros(shape)
  for _ in range(3):
    g = rng.normal(size=shape).astype(np.float32)
    opt.apply([tf.constant(g)], [var])
    w, v = np_lars(w, g.astype(np.float64), v, 0.5)
  np.testing.assert_allclose(var.numpy(), w, rtol=1e-5, atol=1e-6)


def test_lars_trust_ratio_is_one_for_zero_weights():
  var = keras.Variable(np.zeros((2, 2), np.float32))
  opt = optim.LARS(0.1, momentum=0.0, weight_decay_rate=0.0)
  opt.apply([tf.ones((2, 2))], [var])
  np.testing.assert_allclose(var.numpy(), -0.1 * np.ones((2, 2)), rtol=1e-6)


def test_warmup_cosine_schedule():
  sched = optim.warmup_cosine(peak_lr=1.2, total_steps=110, warmup_steps=10)
  np.testing.assert_allclose(float(sched(0)), 0.0, atol=1e-7)
  np.testing.assert_allclose(float(sched(5)), 0.6, rtol=1e-5)
  np.testing.assert_allclose(float(sched(10)), 1.2, rtol=1e-5)
  np.testing.assert_allclose(float(sched(60)), 1.2 * 0.5 * (1 + math.cos(math.pi * 0.5)),
                             rtol=1e-4)
  np.testing.assert_allclose(float(sched(110)), 0.0, atol=1e-6)


def test_build_optimizer_scales_lr_with_batch():
  opt = optim.build_optimizer(global_batch_size=4096, steps_per_epoch=10, epochs=20,
                              name='lars', base_lr=0.3, warmup_epochs=10)
  assert isinstance(opt, optim.LARS)
  opt.build([keras.Variable(np.zeros((2, 2), np.float32))])
  opt.iterations.assign(100)  # the end of the 10 warmup epochs
  np.testing.assert_allclose(float(opt.learning_rate), 0.3 * 16, rtol=1e-5)
  with pytest.raises(UserError, match="build_optimizer.name = 'lamb' is not allowed"):
    optim.build_optimizer(256, 1, 1, name='lamb')


def test_byol_presets():
  assert optim.preset(300) == (0.3, 1e-6, 0.99)
  assert optim.preset(1000) == (0.2, 1.5e-6, 0.996)
  with pytest.raises(UserError, match='byol_preset .* = 200 is not allowed'):
    optim.preset(200)
  opt = optim.build_optimizer(256, 100, 100, byol_preset=100, warmup_epochs=0)
  opt.build([keras.Variable(np.zeros((2, 2), np.float32))])
  np.testing.assert_allclose(float(opt.learning_rate), 0.45, rtol=1e-6)
  assert opt.weight_decay_rate == 1e-6
