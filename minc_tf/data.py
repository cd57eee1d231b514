"""Image sources and tf.data pipelines: two-view pretraining batches and labelled eval batches.

Sources:
  * 'fashion_mnist': the four standard IDX files from `idx_dir` (Debian's dataset-fashion-mnist
    package installs them in /usr/share/datasets/fashion-mnist), else TFDS 'fashion_mnist'.
  * any TFDS image-classification dataset by name (imagenet2012, ...): JPEG bytes are read
    undecoded and only the crop window is decoded (decode_and_crop_jpeg) for training views.

Pretraining input is built per input pipeline (strategy.distribute_datasets_from_function):
each host reads only its shard and batches its replicas' share of the global batch.
"""

import gzip
import math
import os
import shutil
import zlib

from absl import logging
import gin
import numpy as np
import tensorflow as tf

from minc_tf import augment
from minc_tf.errors import UserError, each, int_at_least, one_of, real_in, require

FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'
_FMNIST_FILES = {'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
                 'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz')}
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)
# The held-out validation split is the same for every run and seed (load_data.validation_examples).
VALIDATION_SEED = 20250422


def read_idx(path):
  """Reads one (optionally gzipped) IDX file into a NumPy array."""
  opener = gzip.open if path.endswith('.gz') else open
  try:
    with opener(path, 'rb') as f:
      data = f.read()
  except (EOFError, gzip.BadGzipFile, zlib.error) as e:
    raise UserError(f'{path} is damaged ({type(e).__name__}: {e}): a truncated or corrupt gzip '
                    'file. Fix: re-download it, or re-install it (apt-get install --reinstall '
                    'dataset-fashion-mnist).') from None
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 8:
    raise UserError(f'{path} is not an IDX file of unsigned bytes (bad magic number); '
                    're-install it (apt-get install --reinstall dataset-fashion-mnist).')
  ndim = data[3]
  shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], 'big') for i in range(ndim))
  array = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
  if array.size != int(np.prod(shape)):
    raise UserError(f'{path} is truncated: expected {int(np.prod(shape))} values, found '
                    f'{array.size}; re-download or re-install it.')
  return array.reshape(shape)


def hold_out(arrays, count):
  """arrays with `count` training examples moved to a 'validation' split: a permutation fixed
  by VALIDATION_SEED, so every run, seed and method sees the same split."""
  images, labels = arrays['train']
  if count >= len(labels):
    raise UserError(f'load_data.validation_examples={count} leaves no training images (the '
                    f'training split has {len(labels)}). Fix: bind load_data.validation_examples to '
                    'fewer (10000 of Fashion-MNIST\'s 60000).')
  order = np.random.default_rng(VALIDATION_SEED).permutation(len(labels))
  held, kept = np.sort(order[:count]), np.sort(order[count:])
  return {**arrays, 'train': (images[kept], labels[kept]),
          'validation': (images[held], labels[held])}


def _fashion_mnist_arrays(idx_dir, data_dir):
  """{'train': (images [N,28,28,1] uint8, labels [N] int64), 'test': ...}.

  idx_dir None: Debian's directory when it holds the files, else a TFDS download. An idx_dir
  given explicitly must hold the four files: no download is tried in its place.
  """
  explicit = idx_dir is not None
  idx_dir = idx_dir or FASHION_MNIST_DIR
  paths = {s: [os.path.join(idx_dir, f) for f in files] for s, files in _FMNIST_FILES.items()}
  missing = [p for ps in paths.values() for p in ps if not os.path.exists(p)]
  if not missing:
    return {s: (read_idx(ps[0])[..., None], read_idx(ps[1]).astype(np.int64))
            for s, ps in paths.items()}
  if explicit:
    present = sorted(os.listdir(idx_dir)) if os.path.isdir(idx_dir) else None
    found = ('it does not exist' if present is None else
             f'it holds {", ".join(present[:8]) or "nothing"}' + (' ...' if len(present) > 8 else ''))
    raise UserError(
        f'load_data.idx_dir={idx_dir!r} lacks {", ".join(os.path.basename(p) for p in missing)} '
        f'({found}). Fix: put the four Fashion-MNIST files '
        f'{", ".join(f for fs in _FMNIST_FILES.values() for f in fs)} there, or unbind '
        'load_data.idx_dir to use Debian\'s package or a TFDS download.')
  import tensorflow_datasets as tfds
  where = data_dir or os.environ.get('TFDS_DATA_DIR') or os.path.expanduser('~/tensorflow_datasets')
  logging.warning('No Fashion-MNIST IDX files in %s; downloading fashion_mnist with TFDS into '
                  '%s (needs the internet).', idx_dir, where)
  folder = os.path.join(where, 'fashion_mnist')
  existed = os.path.exists(folder)
  try:
    splits = tfds.load('fashion_mnist', split=['train', 'test'], batch_size=-1,
                       as_supervised=True, data_dir=data_dir, download=True)
    return {s: tuple(np.asarray(a) for a in tfds.as_numpy(d)) for s, d in
            zip(('train', 'test'), splits)}
  except Exception as e:  # network, permissions, partial downloads: all need the same fix.
    if not existed and not where.startswith(('gs://', 's3://')):
      shutil.rmtree(folder, ignore_errors=True)  # no half-built dataset left behind
    raise UserError(
        f'Fashion-MNIST not found: no IDX files in {idx_dir}, and the TFDS download of '
        f"'fashion_mnist' into {where} failed ({type(e).__name__}: "
        f"{str(e).splitlines()[0] if str(e) else ''}). "
        'Fix: `apt-get install dataset-fashion-mnist` (Debian/Ubuntu) or put the four files '
        f'{", ".join(f for fs in _FMNIST_FILES.values() for f in fs)} in a directory and bind '
        "load_data.idx_dir='<dir>', or run where TFDS can download 'fashion_mnist'.") from None


class ImageData:
  """A labelled image dataset and the pipelines built from it.

  Attributes: name, image_shape (S, S, C), num_classes, num_train, mean, std, train_split,
  eval_split, test_split. Exactly one source: `arrays` ({split: (uint8 images, labels)}),
  `builder` (a TFDS builder, read with JPEG bytes undecoded) or `files` ({split: (paths,
  labels)}).
  """

  def __init__(self, name, image_size, channels, num_classes, num_train, mean, std, arrays=None,
               builder=None, files=None, train_split='train', eval_split='validation',
               cache=False, test_split=None):
    self.name = name
    self.image_shape = (image_size, image_size, channels)
    self.num_classes = num_classes
    self.num_train = num_train
    self.mean, self.std = mean, std
    self._arrays, self._builder, self._files = arrays, builder, files
    # test_split: a split read only when asked (run.report_test), beside eval_split, for a
    # final configuration chosen on eval_split (None: the data has no separate test split).
    self.train_split, self.eval_split, self.test_split = train_split, eval_split, test_split
    self._cache = cache

  # --- raw examples: (uint8 image or encoded bytes, label) ----------------------------------

  def _examples(self, split, input_context=None, shuffle=False, seed=None):
    """This input pipeline's share of `split`, (image or encoded bytes, label). shuffle: TFDS
    files in one order fixed by the seed (pretrain_dataset shuffles each epoch's examples
    itself); in-memory and folder sources shuffled whole, anew each iteration."""
    if self._builder is not None:
      import tensorflow_datasets as tfds
      # Per-host file sharding: each input pipeline reads only its own files. Their order is
      # the same every epoch, so that epoch e's stream is a function of (seed, e) alone.
      read_config = tfds.ReadConfig(input_context=input_context, shuffle_seed=seed,
                                    shuffle_reshuffle_each_iteration=False,
                                    try_autocache=False)
      ds = self._builder.as_dataset(split=split, shuffle_files=shuffle,
                                    read_config=read_config, as_supervised=True,
                                    decoders={'image': tfds.decode.SkipDecoding()})
      # Encoded bytes are cached (when they fit in memory), never decoded or augmented images.
      return ds.cache() if self._cache else ds
    images, labels = self._shard(split, input_context)
    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    if self._files is not None:
      ds = ds.map(lambda path, label: (tf.io.read_file(path), label),
                  num_parallel_calls=tf.data.AUTOTUNE)
      if self._cache:  # before the shuffle, so every epoch is shuffled anew
        ds = ds.cache()
    return ds.shuffle(len(labels), seed=seed) if shuffle else ds

  def _shard(self, split, input_context):
    """(images or paths, labels) of this input pipeline's share of an in-memory or folder
    source: every num_input_pipelines-th example."""
    images, labels = (self._arrays or self._files)[split]
    if input_context is not None and input_context.num_input_pipelines > 1:
      step, first = input_context.num_input_pipelines, input_context.input_pipeline_id
      images, labels = images[first::step], labels[first::step]
    return images, labels

  def _epoch_size(self, split, input_context):
    """Examples per epoch in this input pipeline (None: unknown). TFDS gives each pipeline
    every num_input_pipelines-th file of the split (tfds.ReadConfig(input_context))."""
    if self._builder is None:
      return len(self._shard(split, input_context)[1])
    try:
      instructions = list(self._builder.info.splits[split].file_instructions)
    except Exception:  # pylint: disable=broad-except  (mocked or unusual builders)
      return None
    if input_context is not None:
      instructions = instructions[input_context.input_pipeline_id::
                                  input_context.num_input_pipelines]
    return sum(int(f.take) for f in instructions) or None

  def _epochs(self, split, input_context, seed, window):
    """epoch(key, start) -> (position, example) pairs of one epoch of this pipeline's examples
    from `start` on, in an order that is a stateless function of `key`: a permutation of the
    whole shard for in-memory and folder sources (indices shuffled, then read: a resume reads
    nothing it skips; a cached folder's bytes are permuted whole), and for TFDS (files read in
    sequence, in the order TFDS's seeded file shuffle gives) a permutation within runs of
    `window` examples whose boundaries move from epoch to epoch."""
    if self._builder is None and not (self._files is not None and self._cache):
      images, labels = self._shard(split, input_context)
      n = len(labels)
      images, labels = tf.constant(images), tf.constant(labels)
      read = tf.io.read_file if self._files is not None else tf.identity

      def epoch(key, start):
        order_key = tf.random.experimental.stateless_fold_in(key, -1)

        def example(i):
          j = tf.random.experimental.index_shuffle(i, order_key, n - 1)
          return i, (read(tf.gather(images, j)), tf.gather(labels, j))

        # deterministic: positions key the views, whatever run.seed makes of the rest.
        return tf.data.Dataset.range(start, n).map(
            example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

      return epoch

    cached_folder = self._builder is None
    if cached_folder:  # in memory anyway, so permuted whole
      window = len(self._shard(split, input_context)[1])
    source = self._examples(split, input_context, shuffle=not cached_folder, seed=seed)

    def epoch(key, start):
      block_key = tf.random.experimental.stateless_fold_in(key, -2)
      # The first run is shorter by a random amount, so the runs' boundaries (and with them
      # which examples can share a batch) differ from epoch to epoch.
      first = (0 if cached_folder else tf.random.stateless_uniform(
          [], tf.random.experimental.stateless_fold_in(key, -3), 1, window + 1, tf.int64))
      blocks = source.take(first).batch(window).concatenate(
          source.skip(first).batch(window)).prefetch(1)

      def permuted(w, block):
        n = tf.shape(block[1], out_type=tf.int64)[0]
        order = tf.random.experimental.index_shuffle(
            tf.range(n), tf.random.experimental.stateless_fold_in(block_key, w), n - 1)
        return tf.data.Dataset.from_tensor_slices(
            tf.nest.map_structure(lambda t: tf.gather(t, order), block))

      return blocks.enumerate().flat_map(permuted).enumerate().skip(start)

    return epoch

  @property
  def encoded(self):
    return self._arrays is None

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
                       shuffle_buffer=None, start_step=0, crops_only=False, ordered=None):
    """Infinite ((view1, view2), label) batches of `batch_size` (per replica), normalised.

    shuffle_buffer: TFDS sources: each epoch's examples are permuted within runs of this many
      (default 10 x batch_size), after the seeded file order; in-memory and folder sources are
      permuted whole.
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
    per_epoch = self._epoch_size(self.train_split, input_context)
    if per_epoch == 0:
      raise UserError(f'Input pipeline {pipeline} of {self.name} has no training examples '
                      '(more input pipelines than examples or files). Fix: use fewer hosts, '
                      'or a split with at least one file per host.')
    if per_epoch:
      first_epoch, offset, skip = *divmod(consumed, per_epoch), 0
    else:  # an unknown epoch size: skip from the start (reads every example since step 0)
      first_epoch, offset, skip = 0, 0, consumed
      if consumed:
        logging.warning('The size of an epoch of %s is unknown: resuming reads and discards '
                        '%d examples.', self.name, consumed)
    epoch_of = self._epochs(self.train_split, input_context, seed,
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

    ds = self._examples(split)
    if limit:
      ds = ds.take(limit)
    ds = ds.map(prep, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)

  def linear_eval_dataset(self, batch_size, seed=None, crop_area=(0.08, 1.0), flip=True):
    """Infinite (image, label) batches of training images for offline linear evaluation: the
    BYOL protocol's view (random resized crop, area U(crop_area), and a horizontal flip; no
    colour), normalised. Reproducible with a seed, like pretrain_dataset."""
    crop, _, _ = augment.view_transforms(self.image_shape[0], crop_area=crop_area)
    if seed is None:
      seed = int(np.random.default_rng().integers(2 ** 31))
    base = tf.constant([seed, 1 << 20], tf.int64)  # a stream apart from pretraining's

    def one_view(index, example):
      image, label = example
      rng = augment.Rng(tf.random.experimental.stateless_fold_in(base, index))
      image = self._random_crop(image, crop, rng)
      if flip:
        image = tf.cond(rng.uniform() < 0.5, lambda: tf.image.flip_left_right(image),
                        lambda: image)
      image = augment.normalize(image, self.mean, self.std)
      image.set_shape(self.image_shape)
      return image, label

    ds = self._examples(self.train_split, shuffle=True, seed=seed)
    if self._builder is not None:
      ds = ds.shuffle(10 * batch_size, seed=seed)
    ds = ds.repeat().enumerate().map(one_view, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return ds.with_options(_options(deterministic=True))

  def arrays(self, split):
    """(images uint8, labels) for in-memory sources, else None."""
    return None if self._arrays is None else self._arrays[split]


def _options(deterministic):
  options = tf.data.Options()
  options.deterministic = deterministic
  options.threading.private_threadpool_size = max(os.cpu_count() or 1, 1)
  options.autotune.enabled = True
  return options


def _imagenet_help(name, data_dir):
  where = data_dir or os.path.expanduser('~/tensorflow_datasets')
  manual = os.path.join(where, 'downloads', 'manual')
  if name == 'imagenet2012':
    return (f'The TFDS dataset imagenet2012 is not prepared in the data dir {where}. Fix: put '
            f'the ILSVRC2012 tar files (ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar) in '
            f'{manual}, then run `tfds build imagenet2012 --data_dir={where}` (on Cloud TPU, '
            'prepare once and point --gin_bindings="load_data.data_dir=\'gs://...\'" at it).')
  return (f'The TFDS dataset {name} is not prepared in the data dir {where}. Fix: run '
          f'`tfds build {name} --data_dir={where}` on a machine with the source files.')


IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.gif', '.bmp')


def _scan_folder(root, on_corrupt):
  """{class name: [valid image paths]} for root/<class>/<image>, checking every file decodes."""
  classes = sorted(d for d in tf.io.gfile.listdir(root) if tf.io.gfile.isdir(os.path.join(root, d)))
  found, bad = {}, []
  for cls in classes:
    cls = cls.rstrip('/')
    for fname in sorted(tf.io.gfile.listdir(os.path.join(root, cls))):
      path = os.path.join(root, cls, fname)
      if tf.io.gfile.isdir(path):
        continue
      try:
        if not fname.lower().endswith(IMAGE_EXTENSIONS):
          raise ValueError('not an image file extension')
        tf.io.decode_image(tf.io.read_file(path), expand_animations=False)
      except (ValueError, tf.errors.InvalidArgumentError, tf.errors.OpError) as e:
        if on_corrupt == 'fail':
          raise UserError(f'{path} is not a readable image ({e.__class__.__name__}). Fix: '
                          'remove or replace the file, or bind '
                          "load_data.on_corrupt='skip' to skip such files.") from None
        bad.append(path)
        continue
      found.setdefault(cls, []).append(path)
  if bad:
    logging.warning('Skipped %d unreadable or non-image files under %s, e.g. %s', len(bad), root,
                    bad[0])
  return found, bad


def _folder_source(image_dir, on_corrupt, eval_every):
  """{split: (paths, labels)}, class names. Uses image_dir/train and image_dir/validation (or
  val / test) when present; else every `eval_every`-th image of each class is held out."""
  if not image_dir or not tf.io.gfile.isdir(image_dir):
    raise UserError(f'The image folder {image_dir!r} does not exist. Fix: bind '
                    "load_data.image_dir='<dir>' to a folder with one sub-folder of images per "
                    'class.')
  subdirs = set(d.rstrip('/') for d in tf.io.gfile.listdir(image_dir))
  eval_name = next((d for d in ('validation', 'val', 'test') if d in subdirs), None)
  if 'train' in subdirs and eval_name:
    per_split = {'train': _scan_folder(os.path.join(image_dir, 'train'), on_corrupt)[0],
                 'validation': _scan_folder(os.path.join(image_dir, eval_name), on_corrupt)[0]}
  else:
    found = _scan_folder(image_dir, on_corrupt)[0]
    per_split = {'train': {c: [p for i, p in enumerate(ps) if i % eval_every] for c, ps in found.items()},
                 'validation': {c: ps[::eval_every] for c, ps in found.items()}}
  classes = sorted(set(per_split['train']) | set(per_split['validation']))
  if not per_split['train']:
    raise UserError(f'No images found in {image_dir}: expected {image_dir}/<class>/<image> '
                    f'with extensions {", ".join(IMAGE_EXTENSIONS)}. Fix: point '
                    'load_data.image_dir at such a folder.')
  files = {}
  for split, per_class in per_split.items():
    pairs = [(p, classes.index(c)) for c in sorted(per_class) for p in per_class[c]]
    files[split] = (np.array([p for p, _ in pairs], dtype=object).astype(str),
                    np.array([l for _, l in pairs], np.int64))
  return files, classes


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
    files, classes = _folder_source(image_dir, on_corrupt, eval_every)
    default_mean, default_std = ((augment.IMAGENET_MEAN, augment.IMAGENET_STD) if channels == 3
                                 else ((0.5,), (0.5,)))
    return ImageData(name, image_size, channels, len(classes), len(files['train'][1]),
                     mean or default_mean, std or default_std, files=files,
                     train_split='train', eval_split='validation', cache=cache)
  if name == 'fashion_mnist':
    arrays = _fashion_mnist_arrays(idx_dir, data_dir)
    splits = dict(train_split='train', eval_split='test')
    if validation_examples is not None:
      arrays = hold_out(arrays, validation_examples)
      splits = dict(train_split='train', eval_split='validation', test_split='test')
    return ImageData(name, image_size, 1, 10, len(arrays['train'][0]),
                     mean or FASHION_MNIST_MEAN, std or FASHION_MNIST_STD, arrays=arrays,
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
    raise UserError(_imagenet_help(name, data_dir)) from e
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
