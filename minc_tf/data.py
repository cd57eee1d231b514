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
import os

import gin
import numpy as np
import tensorflow as tf

from minc_tf import augment
from minc_tf.errors import UserError

FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'
_FMNIST_FILES = {'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
                 'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz')}
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)


def read_idx(path):
  """Reads one (optionally gzipped) IDX file into a NumPy array."""
  opener = gzip.open if path.endswith('.gz') else open
  with opener(path, 'rb') as f:
    data = f.read()
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


def _fashion_mnist_arrays(idx_dir, data_dir):
  """{'train': (images [N,28,28,1] uint8, labels [N] int64), 'test': ...}."""
  paths = {s: [os.path.join(idx_dir, f) for f in files] for s, files in _FMNIST_FILES.items()}
  if all(os.path.exists(p) for ps in paths.values() for p in ps):
    return {s: (read_idx(ps[0])[..., None], read_idx(ps[1]).astype(np.int64))
            for s, ps in paths.items()}
  try:
    import tensorflow_datasets as tfds
    splits = tfds.load('fashion_mnist', split=['train', 'test'], batch_size=-1,
                       as_supervised=True, data_dir=data_dir, download=True)
    return {s: tuple(np.asarray(a) for a in tfds.as_numpy(d)) for s, d in
            zip(('train', 'test'), splits)}
  except Exception as e:  # network, permissions, partial downloads: all need the same fix.
    raise UserError(
        f'Fashion-MNIST not found: no IDX files in {idx_dir} and TFDS could not load '
        f"'fashion_mnist' ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
        'Fix: `apt-get install dataset-fashion-mnist` (Debian/Ubuntu) or put the four files '
        f'{", ".join(f for fs in _FMNIST_FILES.values() for f in fs)} in a directory and bind '
        "load_data.idx_dir='<dir>', or run where TFDS can download 'fashion_mnist'.") from None


class ImageData:
  """A labelled image dataset and the pipelines built from it.

  Attributes: name, image_shape (S, S, C), num_classes, num_train, mean, std.
  """

  def __init__(self, name, image_size, channels, num_classes, num_train, mean, std, arrays=None,
               builder=None, train_split='train', eval_split='validation', shuffle_buffer=None):
    self.name = name
    self.image_shape = (image_size, image_size, channels)
    self.num_classes = num_classes
    self.num_train = num_train
    self.mean, self.std = mean, std
    self._arrays = arrays
    self._builder = builder
    self.train_split, self.eval_split = train_split, eval_split
    self._shuffle_buffer = shuffle_buffer

  # --- raw examples: (image uint8 or JPEG bytes, label) -------------------------------------

  def _examples(self, split, input_context=None, shuffle=False, seed=None):
    if self._arrays is not None:
      images, labels = self._arrays[split]
      ds = tf.data.Dataset.from_tensor_slices((images, labels))
      if input_context is not None and input_context.num_input_pipelines > 1:
        ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
      return ds.shuffle(len(images), seed=seed) if shuffle else ds
    import tensorflow_datasets as tfds
    read_config = tfds.ReadConfig(input_context=input_context, shuffle_seed=seed,
                                  try_autocache=False)
    ds = self._builder.as_dataset(split=split, shuffle_files=shuffle, read_config=read_config,
                                  decoders={'image': tfds.decode.SkipDecoding()},
                                  as_supervised=True)
    return ds

  def _is_encoded(self):
    return self._arrays is None

  # --- pipelines ---------------------------------------------------------------------------

  def pretrain_dataset(self, batch_size, input_context=None, seed=None, views=None):
    """Infinite ((view1, view2), label) batches of `batch_size` (per replica), normalised."""
    crop, view1, view2 = views or augment.view_transforms(self.image_shape[0])
    channels = self.image_shape[-1]

    def two_views(image, label):
      if self._is_encoded():
        shape = tf.image.extract_jpeg_shape(image)
        crops = []
        for _ in range(2):
          oy, ox, ch, cw = crop.window(shape[0], shape[1])
          decoded = tf.image.decode_and_crop_jpeg(image, tf.stack([oy, ox, ch, cw]),
                                                  channels=channels)
          crops.append(crop(decoded, cropped=True))
      else:
        crops = [crop(image), crop(image)]
      v1 = augment.normalize(view1(crops[0]), self.mean, self.std)
      v2 = augment.normalize(view2(crops[1]), self.mean, self.std)
      v1.set_shape(self.image_shape)
      v2.set_shape(self.image_shape)
      return (v1, v2), label

    ds = self._examples(self.train_split, input_context, shuffle=True, seed=seed)
    if self._arrays is None:  # file shuffling alone leaves neighbours together.
      ds = ds.shuffle(self._shuffle_buffer or 10 * batch_size, seed=seed)
    ds = ds.repeat().map(two_views, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return ds.with_options(_options(deterministic=seed is not None))

  def eval_dataset(self, split, batch_size, drop_remainder=False, limit=None):
    """(image, label) batches in file order: centre crop (0.875) for large images, normalised."""
    size = self.image_shape[0]

    def prep(image, label):
      if self._is_encoded():
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


@gin.configurable
def load_data(name='imagenet2012', data_dir=None, image_size=224, idx_dir=FASHION_MNIST_DIR,
              train_split='train', eval_split='validation', num_train=None, mean=None, std=None):
  """Returns the ImageData for `name` ('fashion_mnist' or any TFDS image dataset).

  data_dir: TFDS data dir (local path or gs://); idx_dir: where the Fashion-MNIST IDX files are.
  num_train: examples per pretraining epoch, when TFDS metadata lacks it.
  mean / std: normalisation (ImageNet's for RGB TFDS datasets unless given).
  """
  if name == 'fashion_mnist':
    arrays = _fashion_mnist_arrays(idx_dir, data_dir)
    return ImageData(name, image_size, 1, 10, len(arrays['train'][0]),
                     mean or FASHION_MNIST_MEAN, std or FASHION_MNIST_STD, arrays=arrays,
                     train_split='train', eval_split='test')
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
                   train_split=train_split, eval_split=eval_split)
