"""Dual-view augmentations: pure TensorFlow ops on one image [H, W, C] float32 in [0, 1].

Defaults are BYOL's view table (Grill et al. 2020, Table 6); gin/augment_simclr.gin binds the
SimCLR preset. Per-view parameters are pairs (view1, view2). One-channel images skip the colour
ops that have no meaning for them (saturation, hue, grayscale) instead of failing.

All randomness is stateless and flows from an Rng made from a per-example seed, so an example's
views depend only on (seed, example index): parallel maps stay reproducible, and a resumed run
can skip to where it stopped without replaying the augmentations. Views finished on the
accelerator (viewK.batch, batch_views) draw from (step, replica, position in the batch).
"""

import math

import gin
import tensorflow as tf

from minc_tf.errors import interval_in, real_in, require

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Rng:
  """Stateless random draws from one seed ([2] ints): draw k uses fold_in(seed, k).

  The counter advances at trace time, so draws are a fixed function of the seed and of their
  order in the traced function, whatever the thread scheduling.
  """

  def __init__(self, seed):
    self._seed = tf.cast(seed, tf.int64)
    self._count = 0

  def seed(self):
    self._count += 1
    return tf.random.experimental.stateless_fold_in(self._seed, self._count)

  def uniform(self, minval=0.0, maxval=1.0, shape=(), dtype=tf.float32):
    return tf.random.stateless_uniform(shape, self.seed(), minval, maxval, dtype=dtype)

  def shuffle(self, x):
    # argsort of uniform keys rather than stateless_shuffle, which XLA cannot compile.
    return tf.gather(x, tf.argsort(self.uniform(shape=tf.shape(x)[:1])))


def sample_crop_window(height, width, rng, area=(0.08, 1.0), aspect=(3 / 4, 4 / 3)):
  """Random-resized-crop window (offset_y, offset_x, crop_h, crop_w), int32 scalars.

  Area fraction ~ U(area) exactly; aspect ratio (w/h) log-uniform in `aspect`, clamped into the
  range for which a crop of that area fits the image. (torchvision instead redraws up to 10
  times and falls back to a centre crop, which skews the areas towards small ones.) Returned as
  a window so JPEG sources can decode only the crop (decode_and_crop_jpeg).
  """
  h = tf.cast(height, tf.float32)
  w = tf.cast(width, tf.float32)
  target = rng.uniform(area[0], area[1]) * h * w
  ratio = tf.exp(rng.uniform(math.log(aspect[0]), math.log(aspect[1])))
  ratio = tf.clip_by_value(ratio, target / tf.square(h), tf.square(w) / target)
  crop_w = tf.cast(tf.clip_by_value(tf.round(tf.sqrt(target * ratio)), 1.0, w), tf.int32)
  crop_h = tf.cast(tf.clip_by_value(tf.round(tf.sqrt(target / ratio)), 1.0, h), tf.int32)
  off_y = rng.uniform(0, tf.cast(height, tf.int32) - crop_h + 1, dtype=tf.int32)
  off_x = rng.uniform(0, tf.cast(width, tf.int32) - crop_w + 1, dtype=tf.int32)
  return off_y, off_x, crop_h, crop_w


def _maybe(prob, fn, x, rng):
  return tf.cond(rng.uniform() < prob, lambda: fn(x), lambda: x)


def _color_jitter(x, brightness, contrast, saturation, hue, rng):
  """Jitter in a random order, each op followed by a clip (BYOL)."""
  channels = x.shape[-1]

  def bright(y):
    return y + rng.uniform(-brightness, brightness)

  def contr(y):
    mean = tf.reduce_mean(tf.image.rgb_to_grayscale(y) if channels == 3 else y)
    return (y - mean) * rng.uniform(1 - contrast, 1 + contrast) + mean

  def satur(y):
    return tf.image.adjust_saturation(y, rng.uniform(1 - saturation, 1 + saturation))

  def hue_fn(y):
    return tf.image.adjust_hue(y, rng.uniform(-hue, hue))

  ops = [bright, contr] + ([satur, hue_fn] if channels == 3 else [])
  order = rng.shuffle(tf.range(len(ops)))
  for i in range(len(ops)):
    x = tf.switch_case(order[i], [lambda op=op: tf.clip_by_value(op(x), 0., 1.) for op in ops])
  return x


def gaussian_blur(x, sigma, kernel_size):
  """Separable Gaussian blur with reflect padding; kernel_size odd."""
  radius = kernel_size // 2
  pos = tf.cast(tf.range(-radius, radius + 1), tf.float32)
  k = tf.exp(-tf.square(pos) / (2.0 * tf.square(sigma)))
  k /= tf.reduce_sum(k)
  channels = x.shape[-1]
  kx = tf.tile(tf.reshape(k, [1, -1, 1, 1]), [1, 1, channels, 1])
  ky = tf.reshape(kx, [-1, 1, channels, 1])
  y = tf.pad(x[None], [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode='REFLECT')
  y = tf.nn.depthwise_conv2d(y, kx, [1, 1, 1, 1], 'VALID')
  y = tf.nn.depthwise_conv2d(y, ky, [1, 1, 1, 1], 'VALID')
  return y[0]


def _per_example(v):
  return tf.reshape(v, [-1, 1, 1, 1])


def _batch_color_jitter(x, brightness, contrast, saturation, hue, uniform):
  """_color_jitter on a batch [N, S, S, C] with per-example strengths and per-example random
  order: at each of the op slots every op is computed on the whole batch and each example keeps
  the one its order puts there (what vectorising a switch does; no per-example loop)."""
  channels = x.shape[-1]
  delta = _per_example(uniform(-brightness, brightness))
  factor = _per_example(uniform(1 - contrast, 1 + contrast))
  sat = uniform(1 - saturation, 1 + saturation)[:, None, None]
  shift = uniform(-hue, hue)[:, None, None]

  def bright(y):
    return y + delta

  def contr(y):
    grey = tf.image.rgb_to_grayscale(y) if channels == 3 else y
    mean = tf.reduce_mean(grey, axis=[1, 2, 3], keepdims=True)
    return (y - mean) * factor + mean

  def satur(hsv):  # tf.image.adjust_saturation, with one factor per example
    h, s, v = hsv
    return tf.image.hsv_to_rgb(tf.stack([h, tf.clip_by_value(s * sat, 0.0, 1.0), v], -1))

  def hue_fn(hsv):  # tf.image.adjust_hue, with one shift per example
    h, s, v = hsv
    return tf.image.hsv_to_rgb(tf.stack([tf.math.floormod(h + shift, 1.0), s, v], -1))

  ops = [bright, contr] + ([satur, hue_fn] if channels == 3 else [])
  order = tf.argsort(uniform(shape=[len(ops)]), axis=1)  # [N, ops]: a permutation each
  for slot in range(len(ops)):
    hsv = tf.unstack(tf.image.rgb_to_hsv(x), axis=-1) if channels == 3 else None
    outs = [tf.clip_by_value(op(hsv if op in (satur, hue_fn) else x), 0.0, 1.0) for op in ops]
    pick = order[:, slot]
    x = outs[0]
    for j in range(1, len(ops)):
      x = tf.where(_per_example(tf.equal(pick, j)), outs[j], x)
  return x


def batch_gaussian_blur(x, sigma, kernel_size):
  """gaussian_blur on a batch [N, S, S, C], sigma [N] one per example: the examples' channels
  become the channels of one depthwise convolution, each with its own kernel."""
  radius = kernel_size // 2
  pos = tf.cast(tf.range(-radius, radius + 1), tf.float32)
  k = tf.exp(-tf.square(pos)[None] / (2.0 * tf.square(sigma)[:, None]))  # [N, K]
  k /= tf.reduce_sum(k, axis=1, keepdims=True)
  shape = tf.shape(x)
  n, height, width, channels = shape[0], shape[1], shape[2], x.shape[-1]
  k = tf.repeat(k, channels, axis=0)  # [N * C, K], example-major like the channels below
  kx = tf.transpose(k)[None, :, :, None]  # [1, K, N * C, 1]
  ky = tf.transpose(k)[:, None, :, None]  # [K, 1, N * C, 1]
  y = tf.reshape(tf.transpose(x, [1, 2, 0, 3]), [1, height, width, n * channels])
  y = tf.pad(y, [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode='REFLECT')
  y = tf.nn.depthwise_conv2d(y, kx, [1, 1, 1, 1], 'VALID')
  y = tf.nn.depthwise_conv2d(y, ky, [1, 1, 1, 1], 'VALID')
  return tf.transpose(tf.reshape(y, [height, width, n, channels]), [2, 0, 1, 3])


@gin.configurable
def view_transforms(image_size, crop_area=(0.08, 1.0), aspect=(3 / 4, 4 / 3), flip_prob=0.5,
                    jitter_prob=0.8, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1,
                    grayscale_prob=0.2, blur_prob=(1.0, 0.1), blur_sigma=(0.1, 2.0),
                    blur_kernel_frac=0.1, solarize_prob=(0.0, 0.2)):
  """Returns (crop, view1, view2).

  crop(image [H, W, C] uint8 or float, rng, cropped=False) -> float [image_size, image_size, C] in [0, 1]: random
  resized crop (area U(crop_area), log-uniform aspect), bicubic, clipped; crop.window(h, w, rng)
  samples the window alone (for decode_and_crop_jpeg; then pass the cropped image with
  cropped=True).
  viewK(image float [S, S, C], rng) -> float [S, S, C] in [0, 1]: flip, colour jitter with jitter_prob,
  grayscale, blur (kernel blur_kernel_frac of the side, sigma U(blur_sigma)) and solarize
  (threshold 0.5) with view K's probabilities. viewK.batch(images [N, S, S, C], seed [2]) is
  the same view on a whole batch at once, each example with its own random parameters (for the
  accelerator: no per-example loop; equal in distribution, not draw for draw, to viewK).
  crop_area: the random resized crop's area, a fraction of the image drawn from U(low, high).
  aspect: the crop's aspect ratio range (width / height), drawn log-uniformly.
  flip_prob: probability of a horizontal flip.
  jitter_prob: probability of the colour jitter (brightness, contrast, saturation, hue in random
    order).
  brightness / contrast / saturation: colour-jitter strengths: factors drawn from U(1 - s, 1 +
    s) (brightness as in SimCLR).
  hue: colour-jitter hue shift, drawn from U(-hue, hue), at most 0.5.
  grayscale_prob: probability of converting the view to grey.
  blur_prob: probability of a Gaussian blur for view 1 and view 2 (BYOL: 1.0, 0.1).
  blur_sigma: the blur's sigma range, in pixels of a 224-pixel image, U(low, high).
  blur_kernel_frac: the blur kernel's side as a fraction of the view's side.
  solarize_prob: probability of solarizing view 1 and view 2 (BYOL: 0.0, 0.2).
  """
  prob = real_in(0, 1)
  for name, value, check in (
      ('crop_area', crop_area, interval_in(0, 1, low_open=True)),
      ('aspect', aspect, interval_in(0, math.inf, low_open=True)),
      ('flip_prob', flip_prob, prob), ('jitter_prob', jitter_prob, prob),
      ('brightness', brightness, real_in(0, math.inf)),
      ('contrast', contrast, real_in(0, math.inf)),
      ('saturation', saturation, real_in(0, math.inf)), ('hue', hue, real_in(0, 0.5)),
      ('grayscale_prob', grayscale_prob, prob),
      ('blur_prob', blur_prob, (lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and
                                all(prob[0](x) for x in v), 'a pair of probabilities in [0, 1]')),
      ('blur_sigma', blur_sigma, interval_in(0, math.inf, low_open=True)),
      ('blur_kernel_frac', blur_kernel_frac, real_in(0, 1, low_open=True)),
      ('solarize_prob', solarize_prob, (lambda v: isinstance(v, (list, tuple)) and len(v) == 2
                                        and all(prob[0](x) for x in v),
                                        'a pair of probabilities in [0, 1]'))):
    require(f'view_transforms.{name}', value, check)
  kernel = max(3, int(image_size * blur_kernel_frac) // 2 * 2 + 1)

  def crop(image, rng, cropped=False):
    if not cropped:
      shape = tf.shape(image)
      image = tf.image.crop_to_bounding_box(image, *crop.window(shape[0], shape[1], rng))
    image = tf.image.convert_image_dtype(image, tf.float32) if image.dtype == tf.uint8 else image
    image = tf.image.resize(image, [image_size, image_size], method='bicubic')
    return tf.clip_by_value(image, 0.0, 1.0)

  crop.window = lambda h, w, rng: sample_crop_window(h, w, rng, crop_area, aspect)

  def make_view(k):
    def view(x, rng):
      channels = x.shape[-1]
      x = _maybe(flip_prob, tf.image.flip_left_right, x, rng)
      x = _maybe(jitter_prob, lambda y: _color_jitter(y, brightness, contrast, saturation, hue,
                                                      rng), x, rng)
      if channels == 3:
        x = _maybe(grayscale_prob, lambda y: tf.tile(tf.image.rgb_to_grayscale(y), [1, 1, 3]), x,
                   rng)
      x = _maybe(blur_prob[k], lambda y: gaussian_blur(
          y, rng.uniform(blur_sigma[0], blur_sigma[1]), kernel), x, rng)
      x = _maybe(solarize_prob[k], lambda y: tf.where(y < 0.5, y, 1.0 - y), x, rng)
      return tf.clip_by_value(x, 0.0, 1.0)

    def batch(x, seed):
      x = tf.cast(x, tf.float32)
      channels = x.shape[-1]
      n = tf.shape(x)[:1]
      draws = iter(range(1, 1 << 20))

      def uniform(minval=0.0, maxval=1.0, shape=()):
        return tf.random.stateless_uniform(
            tf.concat([n, tf.constant(shape, tf.int32)], 0),
            tf.random.experimental.stateless_fold_in(seed, next(draws)), minval, maxval)

      def maybe(prob, y, x):
        return tf.where(_per_example(uniform() < prob), y, x)

      x = maybe(flip_prob, tf.reverse(x, [2]), x)
      x = maybe(jitter_prob, _batch_color_jitter(x, brightness, contrast, saturation, hue,
                                                 uniform), x)
      if channels == 3:
        x = maybe(grayscale_prob, tf.tile(tf.image.rgb_to_grayscale(x), [1, 1, 1, 3]), x)
      x = maybe(blur_prob[k], batch_gaussian_blur(x, uniform(blur_sigma[0], blur_sigma[1]),
                                                  kernel), x)
      x = maybe(solarize_prob[k], tf.where(x < 0.5, x, 1.0 - x), x)
      return tf.clip_by_value(x, 0.0, 1.0)

    view.batch = batch
    return view

  return crop, make_view(0), make_view(1)


def batch_views(view1, view2, mean, std):
  """(x1, x2, seed) -> normalised views of two batches of crops, for use inside train_step.

  The flip / colour / blur / solarize part of the views on the accelerator, as BYOL does on TPU;
  the crops come from the input pipeline (uint8 or floats in [0, 1]). Each view is computed on
  the whole batch at once with per-example random parameters (viewK.batch), from
  fold_in(seed, k), seed = (step, replica), so no Python-side randomness enters the compiled
  step.
  """
  def views(x1, x2, seed):
    out = []
    for k, (view, x) in enumerate(((view1, x1), (view2, x2))):
      x = tf.image.convert_image_dtype(x, tf.float32) if x.dtype == tf.uint8 else x
      out.append(normalize(view.batch(tf.cast(x, tf.float32),
                                      tf.random.experimental.stateless_fold_in(seed, k)),
                           mean, std))
    return tuple(out)

  return views


def normalize(x, mean, std):
  return (x - tf.constant(mean, x.dtype)) / tf.constant(std, x.dtype)


def center_crop(image, image_size, crop_frac=0.875):
  """Eval transform: centre crop of crop_frac of the shorter side, resized (bicubic) to image_size."""
  shape = tf.shape(image)
  h, w = shape[0], shape[1]
  side = tf.cast(tf.cast(tf.minimum(h, w), tf.float32) * crop_frac, tf.int32)
  image = tf.image.crop_to_bounding_box(image, (h - side) // 2, (w - side) // 2, side, side)
  image = tf.image.convert_image_dtype(image, tf.float32) if image.dtype == tf.uint8 else image
  image = tf.image.resize(image, [image_size, image_size], method='bicubic')
  return tf.clip_by_value(image, 0.0, 1.0)
