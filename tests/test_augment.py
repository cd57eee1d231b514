"""augment.py: shapes and ranges, one-channel images, and each view's probabilities measured over
many samples (binomial tolerance), the crop-area distribution against U(0.08, 1)."""

import math

import numpy as np
import pytest
import tensorflow as tf

from minc_tf import augment

N = 1000
OFF = dict(flip_prob=0.0, jitter_prob=0.0, grayscale_prob=0.0, blur_prob=(0.0, 0.0),
           solarize_prob=(0.0, 0.0))


def rng(i=0):
  return augment.Rng(tf.constant([7, i], tf.int64))


def apply_many(fn, image, n=N):
  """fn applied to n copies of image, each with its own seed, as a parallel tf.data map."""
  image = tf.constant(image, tf.float32)
  ds = tf.data.Dataset.range(n).map(
      lambda i: fn(image, augment.Rng(tf.stack([tf.constant(7, tf.int64), i]))),
      num_parallel_calls=4).batch(n)
  return next(iter(ds)).numpy()


def assert_rate(hits, p, n=N):
  sigma = math.sqrt(max(p * (1 - p), 1e-12) / n)
  assert abs(np.mean(hits) - p) <= 4 * sigma + 1e-9, (np.mean(hits), p)


@pytest.mark.parametrize('channels', [3, 1])
def test_views_have_shape_dtype_and_range(channels):
  image = np.random.default_rng(0).integers(0, 256, size=(50, 70, channels)).astype(np.uint8)
  crop, v1, v2 = augment.view_transforms(32)
  for view in (v1, v2):
    out = view(crop(tf.constant(image), rng()), rng(1))
    assert out.shape == (32, 32, channels) and out.dtype == tf.float32
    assert 0.0 <= float(tf.reduce_min(out)) and float(tf.reduce_max(out)) <= 1.0


def test_crop_area_is_uniform_on_008_1():
  def area(i):
    window = augment.sample_crop_window(
        300, 400, augment.Rng(tf.stack([tf.constant(1, tf.int64), i])))
    return tf.cast(window[2] * window[3], tf.float32) / (300 * 400)

  ds = tf.data.Dataset.range(4000).map(area)
  areas = np.array(list(ds.as_numpy_iterator()))
  assert areas.min() >= 0.075 and areas.max() <= 1.0
  # Kolmogorov-Smirnov distance against U(0.08, 1); 1.63/sqrt(n) is the 1% critical value.
  xs = np.sort(areas)
  cdf = (xs - 0.08) / 0.92
  ks = np.max(np.abs(cdf - np.arange(1, len(xs) + 1) / len(xs)))
  assert ks < 1.63 / math.sqrt(len(xs)), ks


@pytest.mark.parametrize('view,p', [(0, 0.0), (1, 0.2)])
def test_solarize_probability(view, p):
  views = augment.view_transforms(8, **dict(OFF, solarize_prob=(0.0, 0.2)))
  out = apply_many(views[1 + view], np.full((8, 8, 3), 0.9))
  assert_rate(np.isclose(out[:, 0, 0, 0], 0.1, atol=1e-4), p)


@pytest.mark.parametrize('view,p', [(0, 1.0), (1, 0.1)])
def test_blur_probability(view, p):
  views = augment.view_transforms(16, **dict(OFF, blur_prob=(1.0, 0.1), blur_sigma=(1.0, 2.0)))
  checker = (np.indices((16, 16)).sum(0) % 2).astype(np.float32)[..., None].repeat(3, -1)
  out = apply_many(views[1 + view], checker)
  assert_rate(np.abs(out - checker).max(axis=(1, 2, 3)) > 0.05, p)


def test_grayscale_probability_and_skipped_for_one_channel():
  views = augment.view_transforms(8, **dict(OFF, grayscale_prob=0.2))
  colour = np.zeros((8, 8, 3))
  colour[..., 0] = 0.8
  out = apply_many(views[1], colour)
  assert_rate(np.isclose(out[:, 0, 0, 0], out[:, 0, 0, 1], atol=1e-4), 0.2)
  grey = apply_many(augment.view_transforms(8, **dict(OFF, grayscale_prob=1.0))[1],
                    np.full((8, 8, 1), 0.3), n=20)
  np.testing.assert_allclose(grey, 0.3, atol=1e-6)


def test_jitter_probability():
  views = augment.view_transforms(8, **dict(OFF, jitter_prob=0.8, contrast=0.0, saturation=0.0,
                                            hue=0.0))
  out = apply_many(views[1], np.full((8, 8, 3), 0.5))
  assert_rate(np.abs(out[:, 0, 0, 0] - 0.5) > 1e-6, 0.8)


def test_one_channel_views_run_every_op():
  crop, v1, v2 = augment.view_transforms(
      16, jitter_prob=1.0, grayscale_prob=1.0, blur_prob=(1.0, 1.0), solarize_prob=(1.0, 1.0))
  out = v1(crop(tf.random.uniform((20, 20, 1)), rng()), rng(1))
  assert out.shape == (16, 16, 1)


def test_center_crop_takes_the_middle():
  image = np.zeros((100, 200, 1), np.uint8)
  image[40:60, 90:110] = 255
  out = augment.center_crop(tf.constant(image), 8, crop_frac=0.2)  # the 20 x 20 centre
  np.testing.assert_allclose(out.numpy(), 1.0, atol=1e-3)


def test_same_seed_same_views_different_seed_different_views():
  crop, v1, _ = augment.view_transforms(16)
  image = tf.random.uniform((24, 24, 3), seed=1)
  a = v1(crop(image, rng(3)), rng(4)).numpy()
  b = v1(crop(image, rng(3)), rng(4)).numpy()
  c = v1(crop(image, rng(5)), rng(4)).numpy()
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_batch_views_apply_the_host_view_per_example():
  _, v1, v2 = augment.view_transforms(8)
  x = tf.random.uniform((4, 8, 8, 3), seed=2)
  seed = tf.constant([11, 0], tf.int64)
  # In a tf.function, as in train_step (eager map_fn would run tf.cond eagerly).
  b1, b2 = tf.function(augment.batch_views(v1, v2, (0.5,) * 3, (0.25,) * 3))(x, x, seed)

  # Traced, as in the input pipeline: a traced tf.cond draws for both branches, eager for one.
  @tf.function
  def host_view(view_index, image, k):
    view = (v1, v2)[view_index]
    rng_i = augment.Rng(tf.random.experimental.stateless_fold_in(seed, k))
    return augment.normalize(view(image, rng_i), (0.5,) * 3, (0.25,) * 3)

  for i in range(4):
    for k, out in enumerate((b1, b2)):
      expected = host_view(k, x[i], tf.constant(2 * i + k, tf.int64))
      np.testing.assert_allclose(out[i].numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)
