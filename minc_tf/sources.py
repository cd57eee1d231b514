"""Where examples come from: in-memory arrays, image files, or a TFDS builder.

A source yields a split's raw examples, (uint8 image or encoded bytes, label), for one input
pipeline (its shard under tf.distribute's InputContext), and one epoch of them in an order that
is a stateless function of a key: all a pipeline in data.py needs to make reproducible,
resumable views. The readers that build sources (IDX files, image folders) live here too.
"""

import gzip
import hashlib
import json
import os
import shutil
import zlib

from absl import logging
import numpy as np
import tensorflow as tf

from minc_tf.errors import UserError

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


def fashion_mnist_arrays(idx_dir, data_dir):
  """{'train': (images [N,28,28,1] uint8, labels [N] int64), 'test': ...}.

  idx_dir None: Debian's directory when it holds the files, else a TFDS download. An idx_dir
  given explicitly must hold the four files: no download is tried in its place.
  """
  explicit = idx_dir is not None
  idx_dir = idx_dir or FASHION_MNIST_DIR
  paths = {s: [os.path.join(idx_dir, f) for f in files] for s, files in _FMNIST_FILES.items()}
  missing = [p for ps in paths.values() for p in ps if not os.path.exists(p)]
  if not missing:
    out = {}
    for split, (images_path, labels_path) in paths.items():
      images, labels = read_idx(images_path), read_idx(labels_path)
      if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise UserError(
            f'The Fashion-MNIST {split} files disagree: {os.path.basename(images_path)} holds '
            f'images of shape {images.shape} and {os.path.basename(labels_path)} labels of '
            f'shape {labels.shape} (expected [n, 28, 28] and [n]). Fix: replace them with a '
            'matching pair (apt-get install --reinstall dataset-fashion-mnist).')
      if labels.size and labels.max() > 9:
        raise UserError(f'{labels_path} holds label {int(labels.max())}; Fashion-MNIST has '
                        'classes 0-9. Fix: replace the file with the real labels.')
      out[split] = (images[..., None], labels.astype(np.int64))
    return out
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


class Source:
  """A split's raw examples for one input pipeline (see the module docstring).

  encoded: examples are encoded image bytes (decoded by the pipeline), not uint8 arrays.
  """

  encoded = True

  def examples(self, split, input_context=None, shuffle=False, seed=None):
    """This input pipeline's share of `split`, (image or encoded bytes, label)."""
    raise NotImplementedError

  def epoch_size(self, split, input_context):
    """Examples per epoch in this input pipeline (None: unknown)."""
    raise NotImplementedError

  def epochs(self, split, input_context, seed, window):
    """epoch(key, start) -> (position, example) pairs of one epoch of this pipeline's examples
    from `start` on, in an order that is a stateless function of `key`."""
    raise NotImplementedError

  def arrays(self, split):  # pylint: disable=unused-argument
    """(images uint8, labels) of an in-memory source, else None."""
    return None


def streamed_epochs(stream, window, moving_boundaries=True):
  """epoch(key, start) over examples read in sequence, stream(key) (a dataset: one epoch's
  examples, in an order that may itself depend on key): a permutation within runs of `window`
  examples whose boundaries move from epoch to epoch (moving_boundaries; else one run from the
  start, for a source that is in memory anyway)."""

  def epoch(key, start):
    source = stream(key)
    block_key = tf.random.experimental.stateless_fold_in(key, -2)
    # The first run is shorter by a random amount, so the runs' boundaries (and with them
    # which examples can share a batch) differ from epoch to epoch.
    first = (tf.random.stateless_uniform(
        [], tf.random.experimental.stateless_fold_in(key, -3), 1, window + 1, tf.int64)
             if moving_boundaries else 0)
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


class _Indexed(Source):
  """{split: (images or paths, labels)} held in memory; shard = every n-th example."""

  def __init__(self, splits, cache=False):
    self._splits = splits
    self._cache = cache

  def _read(self, item):
    return item

  def shard(self, split, input_context):
    images, labels = self._splits[split]
    if input_context is not None and input_context.num_input_pipelines > 1:
      step, first = input_context.num_input_pipelines, input_context.input_pipeline_id
      images, labels = images[first::step], labels[first::step]
    return images, labels

  def epoch_size(self, split, input_context):
    return len(self.shard(split, input_context)[1])

  def examples(self, split, input_context=None, shuffle=False, seed=None):
    """Shuffled whole (anew each iteration) when asked."""
    images, labels = self.shard(split, input_context)
    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    if self.encoded:
      ds = ds.map(lambda path, label: (self._read(path), label),
                  num_parallel_calls=tf.data.AUTOTUNE)
      if self._cache:  # before the shuffle, so every epoch is shuffled anew
        ds = ds.cache()
    return ds.shuffle(len(labels), seed=seed) if shuffle else ds

  def epochs(self, split, input_context, seed, window):
    """A permutation of the whole shard: indices shuffled, then read (a resume reads nothing
    it skips); a cached folder's bytes are permuted whole instead."""
    if self._cache and self.encoded:
      size = self.epoch_size(split, input_context)
      cached = self.examples(split, input_context)
      return streamed_epochs(lambda key: cached, size, moving_boundaries=False)
    images, labels = self.shard(split, input_context)
    n = len(labels)
    images, labels = tf.constant(images), tf.constant(labels)

    def epoch(key, start):
      order_key = tf.random.experimental.stateless_fold_in(key, -1)

      def example(i):
        j = tf.random.experimental.index_shuffle(i, order_key, n - 1)
        return i, (self._read(tf.gather(images, j)), tf.gather(labels, j))

      # deterministic: positions key the views, whatever run.seed makes of the rest.
      return tf.data.Dataset.range(start, n).map(
          example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    return epoch


class ArraySource(_Indexed):
  """{split: (uint8 images [n, h, w, c], int64 labels [n])} in memory."""

  encoded = False

  def arrays(self, split):
    return self._splits[split]


class FolderSource(_Indexed):
  """{split: (image file paths, labels)}: files read (and decoded by the pipeline) per use;
  cache keeps their bytes in memory after the first pass."""

  def _read(self, item):
    return tf.io.read_file(item)


class TfdsSource(Source):
  """A prepared TFDS builder, read with JPEG bytes undecoded; each input pipeline reads only
  its own files (every num_input_pipelines-th of the split's, as tfds.ReadConfig(input_context)
  shards them)."""

  # Files read at once, one example from each in turn (TFDS' default cycle; simclr tf2's
  # block of 1, so that neighbours in the stream come from different files).
  INTERLEAVE_CYCLE = 16

  def __init__(self, builder, cache=False):
    self.builder = builder
    self._cache = cache

  def examples(self, split, input_context=None, shuffle=False, seed=None, reshuffle=False):
    """shuffle: the files in an order drawn from the seed, the same every pass (reshuffle:
    another each pass of a repeat, the sequence of orders fixed by the seed)."""
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    read_config = tfds.ReadConfig(input_context=input_context, shuffle_seed=seed,
                                  shuffle_reshuffle_each_iteration=reshuffle,
                                  try_autocache=False)
    ds = self.builder.as_dataset(split=split, shuffle_files=shuffle,
                                 read_config=read_config, as_supervised=True,
                                 decoders={'image': tfds.decode.SkipDecoding()})
    # Encoded bytes are cached (when they fit in memory), never decoded or augmented images.
    return ds.cache() if self._cache else ds

  def files(self, split, input_context):
    """This pipeline's share of the split's file instructions (tfds FileInstruction: path,
    skip, take), or None where the builder lists none (a mocked builder)."""
    try:
      instructions = list(self.builder.info.splits[split].file_instructions)
    except Exception:  # pylint: disable=broad-except  (mocked or unusual builders)
      return None
    if input_context is not None:
      instructions = instructions[input_context.input_pipeline_id::
                                  input_context.num_input_pipelines]
    return instructions

  def epoch_size(self, split, input_context):
    instructions = self.files(split, input_context)
    return sum(int(f.take) for f in instructions or ()) or None

  def epochs(self, split, input_context, seed, window):
    """Each epoch reads this pipeline's files in an order of its own, a stateless function of
    the epoch's key (as simclr tf2's files are reshuffled each epoch, but reproducible: a run
    resumed in epoch e reads epoch e's order, whatever the process read before), interleaved
    INTERLEAVE_CYCLE at a time; then permuted within runs of `window` (streamed_epochs).

    Cached, or where the files cannot be read directly (a mocked builder, a file format other
    than TFRecord): the files in one order fixed by the seed, every epoch."""
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    instructions = self.files(split, input_context)
    file_format = getattr(self.builder.info, 'file_format', None)  # None: TFDS' default
    tfrecord = getattr(file_format, 'value', file_format) in (None, 'tfrecord')
    if self._cache or not instructions or not tfrecord:
      fixed = self.examples(split, input_context, shuffle=True, seed=seed)
      return streamed_epochs(lambda key: fixed, window)
    paths = tf.constant([os.fspath(f.filename) for f in instructions])
    skips = tf.constant([int(f.skip) for f in instructions], tf.int64)
    takes = tf.constant([int(f.take) for f in instructions], tf.int64)
    n = len(instructions)
    features = self.builder.info.features
    image_key, label_key = self.builder.info.supervised_keys
    decoders = {image_key: tfds.decode.SkipDecoding()}

    def parse(serialized):
      example = features.deserialize_example(serialized, decoders=decoders)
      return example[image_key], example[label_key]

    def stream(key):
      order = tf.random.experimental.index_shuffle(
          tf.range(n, dtype=tf.int64), tf.random.experimental.stateless_fold_in(key, -4), n - 1)
      files = tf.data.Dataset.from_tensor_slices(
          (tf.gather(paths, order), tf.gather(skips, order), tf.gather(takes, order)))
      # deterministic: the epoch's stream, and so a resume's skip, is the same on every read.
      records = files.interleave(
          lambda path, skip, take: tf.data.TFRecordDataset(path).skip(skip).take(take),
          cycle_length=min(n, self.INTERLEAVE_CYCLE), block_length=1,
          num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
      return records.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    return streamed_epochs(stream, window)


def imagenet_help(name, data_dir):
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


def manifest_path(root):
  """Where the check of folder `root` is remembered: $MINC_TF_CACHE (default ~/.cache/minc_tf)
  /folders/<hash of the folder's path>.json, on this host (the folder may be read-only)."""
  cache = os.environ.get('MINC_TF_CACHE') or os.path.join(os.path.expanduser('~'), '.cache',
                                                          'minc_tf')
  key = hashlib.sha1(root.rstrip('/').encode()).hexdigest()[:16]
  return os.path.join(cache, 'folders', f'{key}.json')


def _listing(root):
  """{class: [file paths]} of root/<class>/<file>, and the files directly in root."""
  per_class, loose = {}, []
  for name in sorted(tf.io.gfile.listdir(root)):
    path = os.path.join(root, name.rstrip('/'))
    if tf.io.gfile.isdir(path):
      per_class[name.rstrip('/')] = [os.path.join(path, f) for f in
                                     sorted(tf.io.gfile.listdir(path))
                                     if not tf.io.gfile.isdir(os.path.join(path, f))]
    else:
      loose.append(path)
  return per_class, loose


def _check_images(paths, on_corrupt, manifest):
  """{path: [height, width, channels]} of the readable images among `paths`. A file is decoded
  once: `manifest` ({path: [bytes, mtime(, inode), shape or None]}) remembers it while its size,
  modification time (and, on a local disk, inode) stay the same."""
  good, bad = {}, []
  for path in paths:
    try:
      if '://' in path:
        stat = tf.io.gfile.stat(path)
        key = [int(stat.length), int(stat.mtime_nsec)]
      else:  # local: the inode too, as a copy that keeps mtime (cp -p, rsync -t) is a new file
        stat = os.stat(path)
        key = [int(stat.st_size), int(stat.st_mtime_ns), int(stat.st_ino)]
    except (OSError, tf.errors.NotFoundError):  # deleted since the listing
      bad.append(path)
      continue
    seen = manifest.get(path)
    if isinstance(seen, list) and seen[:-1] == key:
      shape = seen[-1]
    else:
      shape = None
      if path.lower().endswith(IMAGE_EXTENSIONS):
        try:
          shape = [int(d) for d in tf.io.decode_image(tf.io.read_file(path),
                                                      expand_animations=False).shape]
        except (ValueError, tf.errors.InvalidArgumentError, tf.errors.OpError):
          pass
      manifest[path] = key + [shape]
    if shape is None:
      if on_corrupt == 'fail':
        raise UserError(f'{path} is not a readable image (extensions: '
                        f'{", ".join(IMAGE_EXTENSIONS)}). Fix: remove or replace the file, or '
                        "bind load_data.on_corrupt='skip' to skip such files.")
      bad.append(path)
      continue
    good[path] = shape
  return good, bad


def _describe(root, shapes, bad, channels):
  """One line on what the folder holds; warnings where the run will change the images."""
  if not shapes:
    return
  heights, widths, chans = (np.array([s[i] for s in shapes]) for i in range(3))
  counts = {int(c): int((chans == c).sum()) for c in np.unique(chans)}
  logging.info('%s: %d images, %dx%d to %dx%d pixels (height x width), channels %s%s.', root,
               len(shapes), heights.min(), widths.min(), heights.max(), widths.max(), counts,
               f', {len(bad)} unreadable skipped' if bad else '')
  if bad:
    logging.warning('Skipped %d unreadable or non-image files under %s, e.g. %s', len(bad),
                    root, bad[0])
  other = {c: n for c, n in counts.items() if c != channels}
  if other:
    logging.warning('%s: %s of its images have other channel counts than load_data.channels = '
                    '%d (%s): they are converted (RGB to grey, grey repeated, alpha dropped).',
                    root, sum(other.values()), channels, other)
  tiny = int((np.minimum(heights, widths) < 8).sum())
  if tiny:
    logging.warning('%s: %d images have a side below 8 pixels; their crops are upsampled '
                    'blur.', root, tiny)


def _scan(root, on_corrupt, channels, manifest, unlabelled_ok):
  """{class: [readable image paths]} of root/<class>/<image>, or {'': paths} for a flat folder
  of unlabelled images (when unlabelled_ok)."""
  per_class, loose = _listing(root)
  images_here = [p for p in loose if p.lower().endswith(IMAGE_EXTENSIONS)]
  if images_here and any(per_class.values()):
    raise UserError(f'{root} holds both images ({images_here[0]}, ...) and class folders '
                    f'({", ".join(sorted(per_class)[:3])}, ...). Fix: move the loose images '
                    'into a class folder, or point load_data.image_dir at a folder of one kind.')
  if images_here:
    if not unlabelled_ok:
      raise UserError(f'{root} holds images but no class folders. Fix: put each class\'s '
                      f'images in {root}/<class>/.')
    per_class = {'': loose}
  found, bad, shapes = {}, [], []
  for cls, paths in per_class.items():
    good, skipped = _check_images(paths, on_corrupt, manifest)
    bad += skipped
    shapes += list(good.values())
    if good:
      found[cls] = list(good)
  _describe(root, shapes, bad, channels)
  return found


def folder_source(image_dir, on_corrupt, eval_every, channels=3):
  """{split: (paths, labels)}, class names. Uses image_dir/train and image_dir/validation (or
  val / test) when present; else every `eval_every`-th image of each class is held out. A flat
  folder of images is unlabelled: class names [] (pretraining only). Every file is decoded once
  per change (the manifest at manifest_path(image_dir)), not at every launch."""
  if not image_dir or not tf.io.gfile.isdir(image_dir):
    raise UserError(f'The image folder {image_dir!r} does not exist. Fix: bind '
                    "load_data.image_dir='<dir>' to a folder with one sub-folder of images per "
                    'class (or a folder of unlabelled images, to pretrain only).')
  where = manifest_path(image_dir)
  manifest = _read_manifest(where)
  subdirs = set(d.rstrip('/') for d in tf.io.gfile.listdir(image_dir))
  eval_name = next((d for d in ('validation', 'val', 'test') if d in subdirs), None)
  if 'train' in subdirs and eval_name:
    per_split = {'train': _scan(os.path.join(image_dir, 'train'), on_corrupt, channels,
                                manifest, unlabelled_ok=False),
                 'validation': _scan(os.path.join(image_dir, eval_name), on_corrupt, channels,
                                     manifest, unlabelled_ok=False)}
    missing = sorted(set(per_split['validation']) - set(per_split['train']))
    if missing:
      raise UserError(f'{image_dir}/{eval_name} has classes with no training images in '
                      f'{image_dir}/train: {", ".join(missing[:5])}. Fix: add their training '
                      f'images, or remove them from {eval_name}/ (a probe cannot learn them).')
  else:
    found = _scan(image_dir, on_corrupt, channels, manifest, unlabelled_ok=True)
    per_split = {'train': {c: [p for i, p in enumerate(ps) if i % eval_every]
                           for c, ps in found.items()},
                 'validation': {c: ps[::eval_every] for c, ps in found.items()}}
    single = sorted(c for c, ps in found.items() if c and len(ps) < 2)
    if single:
      logging.warning('%s: classes %s have one image, which is held out for evaluation: the '
                      'probe trains on none of theirs.', image_dir, ', '.join(single[:5]))
  scanned = {p for split in per_split.values() for ps in split.values() for p in ps}
  scanned |= {p for p in manifest if p.startswith(image_dir.rstrip('/') + '/') and
              tf.io.gfile.exists(p)}  # unreadable files stay remembered while they exist
  _write_manifest(where, {p: v for p, v in manifest.items() if p in scanned})
  if not any(per_split['train'].values()):
    raise UserError(f'No images found in {image_dir}: expected {image_dir}/<class>/<image> '
                    f'(or {image_dir}/<image>, unlabelled) with extensions '
                    f'{", ".join(IMAGE_EXTENSIONS)}. Fix: point load_data.image_dir at such a '
                    'folder.')
  classes = sorted(c for c in set(per_split['train']) | set(per_split['validation']) if c)
  files = {}
  for split, per_class in per_split.items():
    pairs = [(p, classes.index(c) if c else 0) for c in sorted(per_class)
             for p in per_class[c]]
    files[split] = (np.array([p for p, _ in pairs], dtype=object).astype(str),
                    np.array([l for _, l in pairs], np.int64))
  return files, classes


def _read_manifest(path):
  """A manifest's entries, {} when absent or unreadable (it is only a cache)."""
  try:
    with tf.io.gfile.GFile(path) as f:
      entries = json.loads(f.read())
    return entries if isinstance(entries, dict) else {}
  except (tf.errors.OpError, ValueError, UnicodeDecodeError):
    return {}


def _write_manifest(path, manifest):
  """Written atomically; a host where it cannot be written decodes again next launch."""
  try:
    tf.io.gfile.makedirs(os.path.dirname(path))
    tmp = f'{path}.tmp{os.getpid()}'
    with tf.io.gfile.GFile(tmp, 'w') as f:
      f.write(json.dumps(manifest))
    tf.io.gfile.rename(tmp, path, overwrite=True)
  except (tf.errors.OpError, OSError) as e:
    logging.warning('Could not write the image folder manifest %s (%s): the next launch '
                    'checks every file again.', path, e)
