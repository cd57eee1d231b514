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


def apply_many(fn, image, n=N, path='host'):
  """The view fn applied to n copies of image, each with its own random parameters: on the host
  path one example at a time, in a parallel tf.data map; on the batch path (the accelerator's,
  fn.batch) all n at once."""
  image = tf.constant(image, tf.float32)
  if path == 'batch':
    return fn.batch(tf.tile(image[None], [n, 1, 1, 1]), tf.constant([7, 0], tf.int64)).numpy()
  ds = tf.data.Dataset.range(n).map(
      lambda i: fn(image, augment.Rng(tf.stack([tf.constant(7, tf.int64), i]))),
      num_parallel_calls=4).batch(n)
  return next(iter(ds)).numpy()


PATHS = pytest.mark.parametrize('path', ['host', 'batch'])


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


@PATHS
@pytest.mark.parametrize('view,p', [(0, 0.0), (1, 0.2)])
def test_solarize_probability(view, p, path):
  views = augment.view_transforms(8, **dict(OFF, solarize_prob=(0.0, 0.2)))
  out = apply_many(views[1 + view], np.full((8, 8, 3), 0.9), path=path)
  assert_rate(np.isclose(out[:, 0, 0, 0], 0.1, atol=1e-4), p)


@PATHS
@pytest.mark.parametrize('view,p', [(0, 1.0), (1, 0.1)])
def test_blur_probability(view, p, path):
  views = augment.view_transforms(16, **dict(OFF, blur_prob=(1.0, 0.1), blur_sigma=(1.0, 2.0)))
  checker = (np.indices((16, 16)).sum(0) % 2).astype(np.float32)[..., None].repeat(3, -1)
  out = apply_many(views[1 + view], checker, path=path)
  assert_rate(np.abs(out - checker).max(axis=(1, 2, 3)) > 0.05, p)


@PATHS
def test_grayscale_probability_and_skipped_for_one_channel(path):
  views = augment.view_transforms(8, **dict(OFF, grayscale_prob=0.2))
  colour = np.zeros((8, 8, 3))
  colour[..., 0] = 0.8
  out = apply_many(views[1], colour, path=path)
  assert_rate(np.isclose(out[:, 0, 0, 0], out[:, 0, 0, 1], atol=1e-4), 0.2)
  grey = apply_many(augment.view_transforms(8, **dict(OFF, grayscale_prob=1.0))[1],
                    np.full((8, 8, 1), 0.3), n=20, path=path)
  np.testing.assert_allclose(grey, 0.3, atol=1e-6)


@PATHS
def test_jitter_probability(path):
  views = augment.view_transforms(8, **dict(OFF, jitter_prob=0.8, contrast=0.0, saturation=0.0,
                                            hue=0.0))
  out = apply_many(views[1], np.full((8, 8, 3), 0.5), path=path)
  assert_rate(np.abs(out[:, 0, 0, 0] - 0.5) > 1e-6, 0.8)


def test_one_channel_views_run_every_op():
  crop, v1, v2 = augment.view_transforms(
      16, jitter_prob=1.0, grayscale_prob=1.0, blur_prob=(1.0, 1.0), solarize_prob=(1.0, 1.0))
  cropped = crop(tf.random.uniform((20, 20, 1)), rng())
  out = v1(cropped, rng(1)).numpy()
  assert out.shape == (16, 16, 1)
  # Solarize (last, always on) leaves no value above 1/2; the ops before it changed the image.
  assert out.max() <= 0.5 + 1e-6 and cropped.numpy().max() > 0.6
  solarized_only = np.where(cropped.numpy() < 0.5, cropped.numpy(), 1.0 - cropped.numpy())
  assert np.abs(out - solarized_only).max() > 1e-2


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


def _ks(a, b):
  """Two-sample Kolmogorov-Smirnov distance."""
  xs = np.sort(np.concatenate([a, b]))
  return np.max(np.abs(np.searchsorted(np.sort(a), xs, 'right') / len(a) -
                       np.searchsorted(np.sort(b), xs, 'right') / len(b)))


@pytest.mark.parametrize('view', [0, 1])
def test_batch_views_equal_the_host_views_in_distribution(view):
  """Every op on (BYOL's defaults: flip, jitter in random order, grayscale, blur, solarize), on
  a colourful image: statistics of 2000 host views and of 2000 batch views are equal in
  distribution (two-sample KS at the 0.1% level, 1.95 sqrt(2 / n)): a pixel of each channel,
  the mean, the spread and the left-right difference (flip)."""
  rng = np.random.default_rng(3)
  image = np.clip(rng.random((16, 16, 3)) * [1.0, 0.6, 0.3] + [0, 0.2, 0.5], 0, 1)
  fn = augment.view_transforms(16)[1 + view]
  n = 2000
  host, batch = (apply_many(fn, image, n=n, path=p) for p in ('host', 'batch'))

  def stats(x):
    return {'r': x[:, 3, 5, 0], 'g': x[:, 8, 8, 1], 'b': x[:, 12, 2, 2], 'mean': x.mean((1, 2, 3)),
            'std': x.std((1, 2, 3)), 'flip': (x[:, :, :8] - x[:, :, 8:]).mean((1, 2, 3))}
  critical = 1.95 * math.sqrt(2 / n)
  distances = {k: _ks(v, stats(batch)[k]) for k, v in stats(host).items()}
  assert max(distances.values()) < critical, (distances, critical)


def test_batch_views_normalise_and_take_uint8_crops():
  """(XLA: test_model's train step with the views made inside compiles with jit_compile.)"""
  _, v1, v2 = augment.view_transforms(8)
  x = tf.random.uniform((4, 8, 8, 3), seed=2)
  seed = tf.constant([11, 0], tf.int64)
  views = augment.batch_views(v1, v2, (0.5,) * 3, (0.25,) * 3)
  b1, b2 = tf.function(views)(x, x, seed)
  assert b1.shape == b2.shape == (4, 8, 8, 3) and not np.allclose(b1, b2)
  pixels = b1.numpy() * 0.25 + 0.5  # normalised with mean 0.5, std 0.25
  assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6
  u1, _ = views(tf.cast(tf.round(x * 255), tf.uint8), x, seed)  # crops shipped as uint8
  np.testing.assert_allclose(u1, views(tf.round(x * 255) / 255, x, seed)[0], atol=1e-5)


def test_batch_jitter_keeps_each_examples_own_random_order():
  """Brightness then contrast for example 0, contrast then brightness for example 1 (their
  order keys say so), each op clipped, against the composition computed by hand."""
  image = np.where(np.indices((4, 4)).sum(0) % 2, 0.8, 0.2).astype(np.float32)[..., None]
  x = tf.constant(np.stack([image, image]))
  draws = iter([tf.constant([0.3, 0.3]), tf.constant([1.5, 1.5]), tf.constant([1.0, 1.0]),
                tf.constant([0.0, 0.0]), tf.constant([[0.1, 0.9], [0.9, 0.1]])])
  out = augment._batch_color_jitter(x, 0.4, 0.4, 0.0, 0.0,
                                    lambda minval=0.0, maxval=1.0, shape=(): next(draws)).numpy()

  def bright(y):
    return np.clip(y + 0.3, 0, 1)

  def contrast(y):
    return np.clip((y - y.mean()) * 1.5 + y.mean(), 0, 1)

  np.testing.assert_allclose(out[0], contrast(bright(image)), atol=1e-6)
  np.testing.assert_allclose(out[1], bright(contrast(image)), atol=1e-6)
  assert not np.allclose(out[0], out[1])


def test_batch_blur_and_colour_ops_equal_the_per_image_ops():
  """The exact parts: the batch blur with a sigma per example is gaussian_blur of each example
  (a kernel given to the wrong example or channel would differ), and the batch saturation and
  hue are tf.image.adjust_saturation / adjust_hue with each example's own factor."""
  x = tf.random.uniform((3, 12, 12, 3), seed=4)
  sigma = tf.constant([0.3, 1.0, 2.0])
  blurred = augment.batch_gaussian_blur(x, sigma, 5)
  for i in range(3):
    np.testing.assert_allclose(blurred[i], augment.gaussian_blur(x[i], sigma[i], 5), atol=1e-6)
  sat, shift = [0.6, 1.0, 1.2], [0.05, -0.1, 0.0]
  draws = iter([tf.zeros(3), tf.ones(3), tf.constant(sat), tf.constant(shift),
                tf.constant([[0.3, 0.4, 0.1, 0.2]] * 3)])  # order: saturation, hue, bright, contrast
  out = augment._batch_color_jitter(x, 0.4, 0.4, 0.2, 0.1,
                                    lambda minval=0.0, maxval=1.0, shape=(): next(draws))
  for i in range(3):
    expected = tf.clip_by_value(tf.image.adjust_hue(tf.clip_by_value(
        tf.image.adjust_saturation(x[i], sat[i]), 0.0, 1.0), shift[i]), 0.0, 1.0)
    np.testing.assert_allclose(out[i], expected, atol=2e-6)
