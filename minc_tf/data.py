"""tf.data pipelines over a source (sources.py): two-view pretraining batches, labelled eval
batches, and the linear evaluation's training views; load_data picks the source.

Sources:
  * 'fashion_mnist': the four standard IDX files from `idx_dir` (Debian's dataset-fashion-mnist
    package installs them in /usr/share/datasets/fashion-mnist), else TFDS 'fashion_mnist'.
  * any TFDS image-classification dataset by name (imagenet2012, ...): JPEG bytes are read
    undecoded and only the crop window is decoded (decode_and_crop_jpeg) for training views.

Pretraining input is built per input pipeline (strategy.distribute_datasets_from_function):
each host reads only its shard and batches its replicas' share of the global batch.
"""

import math
import os

from absl import logging
import gin
import numpy as np
import tensorflow as tf

from minc_tf import augment
from minc_tf import sources
from minc_tf.errors import UserError, each, int_at_least, one_of, real_in, require

# Re-exported: where callers have found them (the readers live in sources.py).
FASHION_MNIST_DIR = sources.FASHION_MNIST_DIR
read_idx = sources.read_idx
hold_out = sources.hold_out
IMAGE_EXTENSIONS = sources.IMAGE_EXTENSIONS
VALIDATION_SEED = sources.VALIDATION_SEED


class ImageData:
  """A labelled image dataset and the pipelines built from it.

  Attributes: name, image_shape (S, S, C), num_classes, num_train, mean, std, train_split,
  eval_split, test_split, source (sources.py). Exactly one source: `arrays` ({split: (uint8
  images, labels)}), `builder` (a TFDS builder, read with JPEG bytes undecoded), `files`
  ({split: (paths, labels)}), or a `source` object.
  """

  def __init__(self, name, image_size, channels, num_classes, num_train, mean, std, arrays=None,
               builder=None, files=None, train_split='train', eval_split='validation',
               cache=False, test_split=None, source=None):
    self.name = name
    self.image_shape = (image_size, image_size, channels)
    self.num_classes = num_classes
    self.num_train = num_train
    self.mean, self.std = mean, std
    given = [s for s in (arrays, builder, files, source) if s is not None]
    if len(given) != 1:
      raise ValueError('ImageData needs exactly one of arrays, builder, files or source')
    if source is None:
      source = (sources.ArraySource(arrays) if arrays is not None else
                sources.TfdsSource(builder, cache) if builder is not None else
                sources.FolderSource(files, cache))
    self.source = source
    # test_split: a split read only when asked (run.report_test), beside eval_split, for a
    # final configuration chosen on eval_split (None: the data has no separate test split).
    self.train_split, self.eval_split, self.test_split = train_split, eval_split, test_split

  @property
  def encoded(self):
    return self.source.encoded

  def _decode_crop(self, encoded, window_fn):
    """Decodes only the crop window of a JPEG (decode_and_crop_jpeg); other formats whole."""
    channels = self.image_shape[-1]

    def jpeg():
      shape = tf.image.extract_jpeg_shape(encoded)
      return tf.image.decode_and_crop_jpeg(encoded, tf.stack(window_fn(shape[0], shape[1])),
                                           channels=channels)

    def other():
      image = tf.io.decode_image(encoded, channels=channels, expand_animations=False)
      shape = tf.shape(image)
      return tf.image.crop_to_bounding_box(image, *window_fn(shape[0], shape[1]))

    return tf.cond(tf.io.is_jpeg(encoded), jpeg, other)

  def _random_crop(self, image, crop, rng):
    """One random resized crop of a raw example (only the window decoded, for JPEGs)."""
    if self.encoded:
      return crop(self._decode_crop(image, lambda h, w: crop.window(h, w, rng)), rng,
                  cropped=True)
    return crop(image, rng)

  # --- pipelines ---------------------------------------------------------------------------

  def pretrain_dataset(self, batch_size, input_context=None, seed=None, views=None,
                       shuffle_buffer=None, start_step=0, crops_only=False, ordered=None,
                       split=None):
    """Infinite ((view1, view2), label) batches of `batch_size` (per replica), normalised.

    split: the split to view (default: train_split; evaluate.spectral_objective views the
      evaluation split).
    shuffle_buffer: TFDS sources: each epoch's examples are permuted within runs of this many
      (default 10 x batch_size), after each epoch's file order (sources.TfdsSource.epochs);
      in-memory and folder sources are permuted whole.
    seed: makes the order and every augmentation reproducible (each epoch's order, and each
      example's views, come from stateless seeds of (seed, pipeline, epoch[, position]));
      None draws a fresh seed.
    start_step: training steps to skip before the first batch (each step took one batch per
      replica this pipeline feeds), so that a run resumed at that step with the same seed sees
      exactly the data of an uninterrupted run. Each epoch's order and views are functions of
      (seed, pipeline, epoch), so the resumed stream starts at its epoch and skips at most one
      epoch's examples, before decoding and augmentation.
    ordered: keep the order of parallel map results (tf.data deterministic); default: when a
      seed is given. Unordered is faster; the views themselves are fixed by the seed either way.
    crops_only: yield the two random-resized crops as uint8, unnormalised, and leave the rest of
      the views to the model (augment.batch_views inside train_step).
    """
    crop, view1, view2 = views or augment.view_transforms(self.image_shape[0])
    if ordered is None:
      ordered = seed is not None
    if seed is None:
      seed = int(np.random.default_rng().integers(2 ** 31))
    pipeline = input_context.input_pipeline_id if input_context is not None else 0
    base = tf.constant([seed, pipeline], tf.int64)
    split = split or self.train_split

    def two_views(epoch, index, example):
      image, label = example
      rng = augment.Rng(tf.random.experimental.stateless_fold_in(
          tf.random.experimental.stateless_fold_in(base, epoch), index))
      crops = [self._random_crop(image, crop, rng) for _ in range(2)]
      if crops_only:  # uint8: a quarter of float32's infeed bytes
        v1, v2 = (tf.cast(tf.round(c * 255.0), tf.uint8) for c in crops)
      else:
        v1 = augment.normalize(view1(crops[0], rng), self.mean, self.std)
        v2 = augment.normalize(view2(crops[1], rng), self.mean, self.std)
      v1.set_shape(self.image_shape)
      v2.set_shape(self.image_shape)
      return (v1, v2), label

    # Each step this pipeline feeds every replica it serves one batch: a resumed run skips
    # what it consumed, which is not start_step batches on a multi-replica host.
    replicas_here = (input_context.num_replicas_in_sync // input_context.num_input_pipelines
                     if input_context is not None else 1)
    consumed = start_step * replicas_here * batch_size
    per_epoch = self.source.epoch_size(split, input_context)
    if per_epoch == 0:
      raise UserError(f'Input pipeline {pipeline} of {self.name} has no examples of {split!r} '
                      '(more input pipelines than examples or files). Fix: use fewer hosts, '
                      'or a split with at least one file per host.')
    if per_epoch:
      first_epoch, offset, skip = *divmod(consumed, per_epoch), 0
    else:  # an unknown epoch size: skip from the start (reads every example since step 0)
      first_epoch, offset, skip = 0, 0, consumed
      if consumed:
        logging.warning('The size of an epoch of %s is unknown: resuming reads and discards '
                        '%d examples.', self.name, consumed)
    epoch_of = self.source.epochs(split, input_context, seed,
                            window=shuffle_buffer or 10 * batch_size)

    def epoch_stream(epoch):
      start = tf.where(epoch == first_epoch, tf.constant(offset, tf.int64), 0)
      order = epoch_of(tf.random.experimental.stateless_fold_in(base, epoch), start)
      return order.map(lambda index, example: (epoch, index, example))

    ds = tf.data.Dataset.range(first_epoch, 2 ** 62).flat_map(epoch_stream).skip(skip)
    # flat_map leaves the cardinality unknown; tf.distribute then handles partial batches
    # (a cross-worker all-reduce per batch, dynamic batch shapes under steps_per_execution).
    ds = ds.apply(tf.data.experimental.assert_cardinality(tf.data.INFINITE_CARDINALITY))
    ds = ds.map(two_views, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return ds.with_options(_options(deterministic=ordered))

  def eval_dataset(self, split, batch_size, drop_remainder=False, limit=None):
    """(image, label) batches in order: centre crop (0.875) of decoded images, normalised."""
    size = self.image_shape[0]

    def prep(image, label):
      if self.encoded:
        image = tf.io.decode_image(image, channels=self.image_shape[-1], expand_animations=False)
        image = augment.center_crop(image, size)
      else:
        image = tf.image.convert_image_dtype(image, tf.float32)
        if image.shape[0] != size:
          image = tf.image.resize(image, [size, size], method='bicubic')
      image = augment.normalize(image, self.mean, self.std)
      image.set_shape(self.image_shape)
      return image, label

    ds = self.source.examples(split)
    if limit:
      ds = ds.take(limit)
    ds = ds.map(prep, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)

  def linear_eval_dataset(self, batch_size, seed=None, crop_area=(0.08, 1.0), flip=True,
                          input_context=None):
    """Infinite (image, label) batches of `batch_size` (per replica) of training images for
    offline linear evaluation: the BYOL protocol's view (random resized crop, area
    U(crop_area), and a horizontal flip; no colour) as uint8, unnormalised (a quarter of
    float32's infeed bytes; the classifier normalises on the device). Reproducible with a
    seed, like pretrain_dataset; each input pipeline reads its own shard (input_context)."""
    crop, _, _ = augment.view_transforms(self.image_shape[0], crop_area=crop_area)
    if seed is None:
      seed = int(np.random.default_rng().integers(2 ** 31))
    pipeline = input_context.input_pipeline_id if input_context is not None else 0
    base = tf.constant([seed, (1 << 20) + pipeline], tf.int64)  # a stream apart from pretraining's

    def one_view(index, example):
      image, label = example
      rng = augment.Rng(tf.random.experimental.stateless_fold_in(base, index))
      image = self._random_crop(image, crop, rng)
      if flip:
        image = tf.cond(rng.uniform() < 0.5, lambda: tf.image.flip_left_right(image),
                        lambda: image)
      image = tf.cast(tf.round(tf.clip_by_value(image, 0.0, 1.0) * 255.0), tf.uint8)
      image.set_shape(self.image_shape)
      return image, label

    if isinstance(self.source, sources.TfdsSource):
      # Files in another seeded order each pass, then ten of this pipeline's global-batch
      # shares shuffled (batch_size is per replica): simclr tf2's shuffling.
      ds = self.source.examples(self.train_split, input_context, shuffle=True, seed=seed,
                                reshuffle=True)
      replicas_here = (input_context.num_replicas_in_sync // input_context.num_input_pipelines
                       if input_context is not None else 1)
      ds = ds.shuffle(10 * batch_size * replicas_here, seed=seed)
    else:
      ds = self.source.examples(self.train_split, input_context, shuffle=True, seed=seed)
    ds = ds.repeat().enumerate().map(one_view, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return ds.with_options(_options(deterministic=True))

  def arrays(self, split):
    """(images uint8, labels) for in-memory sources, else None."""
    return self.source.arrays(split)


def _options(deterministic):
  options = tf.data.Options()
  options.deterministic = deterministic
  options.threading.private_threadpool_size = max(os.cpu_count() or 1, 1)
  options.autotune.enabled = True
  return options


@gin.configurable
def load_data(name='imagenet2012', data_dir=None, image_size=224, idx_dir=None,
              image_dir=None, channels=3, on_corrupt='skip', eval_every=10,
              train_split='train', eval_split='validation', num_train=None, mean=None, std=None,
              cache=False, validation_examples=None):
  """Returns the ImageData for `name`: 'fashion_mnist', 'image_folder' or a TFDS dataset name.

  data_dir: TFDS data dir (local path or gs://); idx_dir: where the Fashion-MNIST IDX files are
    (None: Debian's dataset-fashion-mnist directory, else a TFDS download).
  image_dir ('image_folder'): <image_dir>/<class>/<image>, or with train/ and validation/ (val/,
    test/) sub-folders; otherwise every eval_every-th image per class is held out for eval.
    on_corrupt: 'skip' (count, warn) or 'fail' (error naming the file). channels: 3 or 1.
  num_train: examples per pretraining epoch, when TFDS metadata lacks it.
  mean / std: normalisation (ImageNet's for RGB datasets unless given).
  cache: keep the encoded examples of file-backed sources in memory after the first pass (for
    datasets that fit; in-memory sources need none).
  validation_examples ('fashion_mnist'): hold out this many training images (the same ones for
    every run: VALIDATION_SEED) as the 'validation' split that evaluation reads; pretraining and
    the probe's training use the rest, and the test split is read only with run.report_test.
    (TFDS datasets slice instead: train_split='train[10000:]', eval_split='train[:10000]'.)
  name: 'fashion_mnist', 'image_folder' or a TFDS dataset name (e.g. 'imagenet2012').
  image_size: the side S of the square views and evaluation crops, in pixels.
  channels: 3 (RGB) or 1 (grey); image-folder files with other counts are converted.
  eval_every: image folders without train/ and validation/: every this-many-th image of each
    class is held out.
  train_split / eval_split: TFDS split names (slices allowed) for pretraining and for
    evaluation.
  idx_dir: where the Fashion-MNIST IDX files are (None: Debian's dataset-fashion-mnist
    directory, else a TFDS download).
  """
  require('load_data.image_size', image_size, int_at_least(1))
  require('load_data.channels', channels, one_of((1, 3)))
  require('load_data.on_corrupt', on_corrupt, one_of(('skip', 'fail')))
  require('load_data.eval_every', eval_every, int_at_least(2))
  require('load_data.num_train', num_train, int_at_least(1, optional=True))
  require('load_data.validation_examples', validation_examples, int_at_least(1, optional=True))
  if validation_examples is not None and name != 'fashion_mnist':
    raise UserError(f'load_data.validation_examples holds out images of in-memory datasets '
                    f'(fashion_mnist), not of {name!r}. Fix: unbind it; for a TFDS dataset slice '
                    "the splits instead, e.g. load_data.train_split = 'train[10000:]' and "
                    "load_data.eval_split = 'train[:10000]'.")
  positive = real_in(0, math.inf, low_open=True, high_open=True)
  require('load_data.std', std, (lambda v: v is None or positive[0](v) or each(positive)[0](v),
                                 'None, a number > 0 or a list of numbers > 0 (per channel)'))
  if name == 'image_folder':
    files, classes = sources.folder_source(image_dir, on_corrupt, eval_every, channels)
    default_mean, default_std = ((augment.IMAGENET_MEAN, augment.IMAGENET_STD) if channels == 3
                                 else ((0.5,), (0.5,)))
    return ImageData(name, image_size, channels, len(classes), len(files['train'][1]),
                     mean or default_mean, std or default_std, files=files,
                     train_split='train', eval_split='validation', cache=cache)
  if name == 'fashion_mnist':
    arrays = sources.fashion_mnist_arrays(idx_dir, data_dir)
    splits = dict(train_split='train', eval_split='test')
    if validation_examples is not None:
      arrays = sources.hold_out(arrays, validation_examples)
      splits = dict(train_split='train', eval_split='validation', test_split='test')
    return ImageData(name, image_size, 1, 10, len(arrays['train'][0]),
                     mean or sources.FASHION_MNIST_MEAN, std or sources.FASHION_MNIST_STD, arrays=arrays,
                     **splits)
  import tensorflow_datasets as tfds
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise UserError(f'Unknown TFDS dataset {name!r}: {str(e).splitlines()[0]} Fix the name in '
                    'load_data.name.') from None
  try:
    # Probes that the prepared files exist (mock_data patches as_dataset, so tests pass here).
    builder.as_dataset(split=train_split, decoders={'image': tfds.decode.SkipDecoding()})
  except (AssertionError, FileNotFoundError, tf.errors.NotFoundError) as e:
    raise UserError(sources.imagenet_help(name, data_dir)) from e
  info = builder.info
  image_feature = info.features['image']
  channels = image_feature.shape[-1] or 3
  num_classes = info.features['label'].num_classes
  if num_train is None:
    try:
      num_train = info.splits[train_split].num_examples
    except (KeyError, ValueError):
      num_train = 0
  if not num_train:
    raise UserError(f'{name}: the number of training examples is unknown; bind '
                    'load_data.num_train.')
  default_mean, default_std = augment.IMAGENET_MEAN, augment.IMAGENET_STD
  if channels == 1:
    default_mean, default_std = (0.5,), (0.5,)
  return ImageData(name, image_size, channels, num_classes, num_train,
                   mean or default_mean, std or default_std, builder=builder,
                   train_split=train_split, eval_split=eval_split, cache=cache)
