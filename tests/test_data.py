"""data.py: IDX parsing, TFDS (mock ImageNet) pipelines, per-host sharding, image folders with
a corrupt file, and determinism under a seed."""

import gzip
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from minc_tf import data as data_lib
from minc_tf import sources
from minc_tf.errors import UserError
from helpers import write_idx


def _fake_arrays():
  """{IDX split name: (images [n, 28, 28], labels [n])}, the values the fixture writes."""
  rng = np.random.default_rng(0)
  return {split: (rng.integers(0, 256, (n, 28, 28)), rng.integers(0, 10, (n,)))
          for split, n in (('train', 64), ('t10k', 16))}


@pytest.fixture
def fake_fmnist(tmp_path):
  for split, (images, labels) in _fake_arrays().items():
    write_idx(tmp_path / f'{split}-images-idx3-ubyte.gz', images)
    write_idx(tmp_path / f'{split}-labels-idx1-ubyte.gz', labels)
  return tmp_path


def test_idx_files_load_and_pipeline_shapes(fake_fmnist):
  d = data_lib.load_data('fashion_mnist', image_size=28, idx_dir=str(fake_fmnist))
  assert d.image_shape == (28, 28, 1) and d.num_train == 64 and d.num_classes == 10
  (v1, v2), y = next(iter(d.pretrain_dataset(8)))
  assert v1.shape == v2.shape == (8, 28, 28, 1) and v1.dtype == tf.float32 and y.shape == (8,)
  x, y = next(iter(d.eval_dataset('test', 16)))
  # Expected values from what was written, not from the parser under test.
  images, labels = _fake_arrays()['t10k']
  expected = (images[..., None] / 255.0 - d.mean[0]) / d.std[0]
  np.testing.assert_allclose(x.numpy(), expected, atol=1e-5)
  np.testing.assert_array_equal(y.numpy(), labels)
  train_images, train_labels = _fake_arrays()['train']
  np.testing.assert_array_equal(d.arrays('train')[0][..., 0], train_images)
  np.testing.assert_array_equal(d.arrays('train')[1], train_labels)


def test_truncated_idx_file_is_a_clear_error(tmp_path):
  path = tmp_path / 'bad.gz'
  with gzip.open(path, 'wb') as f:
    f.write(bytes([0, 0, 8, 1]) + (10).to_bytes(4, 'big') + b'abc')
  with pytest.raises(UserError, match='truncated'):
    data_lib.read_idx(str(path))


def test_missing_fashion_mnist_explains_how_to_get_it_and_cleans_up(tmp_path, monkeypatch):
  """No Debian files: the TFDS download is tried; when it fails half-way, the error names where
  it wrote and the half-built dataset folder is gone."""
  tfds_dir = tmp_path / 'tfds'

  def no_network(*a, **k):
    (tfds_dir / 'fashion_mnist' / '3.0.1.incompleteXYZ').mkdir(parents=True)
    raise ConnectionError('no network')
  monkeypatch.setattr(tfds, 'load', no_network)
  monkeypatch.setattr(sources, 'FASHION_MNIST_DIR', str(tmp_path / 'no_debian_package'))
  with pytest.raises(UserError, match=f'download of .fashion_mnist. into {tfds_dir} failed '
                                      r'\(ConnectionError: no network\).*apt-get install '
                                      'dataset-fashion-mnist'):
    data_lib.load_data('fashion_mnist', data_dir=str(tfds_dir))
  assert not (tfds_dir / 'fashion_mnist').exists()


def test_mock_imagenet_fused_decode_and_shards_per_input_pipeline():
  with tfds.testing.mock_data(num_examples=32):
    d = data_lib.load_data('imagenet2012', image_size=32, num_train=32)
    assert d.image_shape == (32, 32, 3) and d.num_classes == 1000
    (v1, _), _ = next(iter(d.pretrain_dataset(4)))
    assert v1.shape == (4, 32, 32, 3)
    x, _ = next(iter(d.eval_dataset('validation', 4)))
    assert x.shape == (4, 32, 32, 3)


def test_missing_imagenet_names_manual_dir(tmp_path):
  with pytest.raises(UserError) as err:
    data_lib.load_data('imagenet2012', data_dir=str(tmp_path))
  assert os.path.join(str(tmp_path), 'downloads', 'manual') in str(err.value)


def test_array_source_shards_by_input_pipeline(fake_fmnist):
  d = data_lib.load_data('fashion_mnist', idx_dir=str(fake_fmnist), image_size=28)
  ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1,
                                   num_replicas_in_sync=2)
  labels = [int(y) for _, y in d.source.examples('train', ctx)]
  np.testing.assert_array_equal(labels, d.arrays('train')[1][1::2])


def test_stream_is_infinite_uint8_crops_and_an_empty_shard_is_a_clear_error(fake_fmnist):
  """An infinite cardinality (not flat_map's unknown one, which makes tf.distribute handle
  partial batches: an all-reduce per batch, dynamic shapes); a pipeline with nothing to read
  stops with an error instead of spinning through empty epochs."""
  d = data_lib.load_data('fashion_mnist', idx_dir=str(fake_fmnist), image_size=28)
  assert d.pretrain_dataset(8).cardinality() == tf.data.INFINITE_CARDINALITY
  # Views finished on the accelerator: the host ships uint8 crops (a quarter of the bytes).
  (c1, c2), _ = next(iter(d.pretrain_dataset(8, crops_only=True)))
  assert c1.dtype == c2.dtype == tf.uint8 and c1.shape == (8, 28, 28, 1)
  images, labels = d.arrays('train')
  one = data_lib.ImageData('one', 28, 1, 10, 1, (0.5,), (0.25,),
                           arrays={'train': (images[:1], labels[:1])})
  ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1,
                                   num_replicas_in_sync=2)
  with pytest.raises(UserError, match="Input pipeline 1 of one has no examples of 'train'"):
    one.pretrain_dataset(4, ctx)


def test_seed_makes_the_pipeline_reproducible(fake_fmnist):
  d = data_lib.load_data('fashion_mnist', idx_dir=str(fake_fmnist), image_size=28)
  first = [next(iter(d.pretrain_dataset(8, seed=3)))[0][0].numpy() for _ in range(2)]
  np.testing.assert_array_equal(first[0], first[1])
  other = next(iter(d.pretrain_dataset(8, seed=4)))[0][0].numpy()
  assert not np.array_equal(first[0], other)


def test_resumed_distributed_input_continues_the_uninterrupted_stream(fake_fmnist, mirrored):
  """MirroredStrategy over 2 logical CPUs, one input pipeline feeding both replicas: the batches
  a run resumed at step 6 (mid-epoch 1 of 64-example epochs) sees are those of steps 6-10 of an
  uninterrupted run, per replica, across the next epoch boundary (skipping 6 per-replica
  batches instead of 6 steps' worth gave step 3's data)."""
  d = data_lib.load_data('fashion_mnist', idx_dir=str(fake_fmnist), image_size=28)

  def steps(start, count):
    dist = mirrored.distribute_datasets_from_function(
        lambda ctx: d.pretrain_dataset(ctx.get_per_replica_batch_size(16), ctx, seed=5,
                                       start_step=start, ordered=True))
    out, it = [], iter(dist)
    for _ in range(count):
      (v1, _), y = next(it)
      out.append([np.concatenate([r.numpy() for r in mirrored.experimental_local_results(t)])
                  for t in (v1, y)])
    return out

  uninterrupted = steps(0, 11)
  resumed = steps(6, 5)
  for (v, y), (v_ref, y_ref) in zip(resumed, uninterrupted[6:], strict=True):
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(v, v_ref)
  # Every epoch (4 steps of 16) is the whole training set, in an order of its own.
  labels = [np.concatenate([y for _, y in uninterrupted[e * 4:(e + 1) * 4]]) for e in (0, 1)]
  for epoch_labels in labels:
    np.testing.assert_array_equal(np.sort(epoch_labels), np.sort(d.arrays('train')[1]))
  assert not np.array_equal(labels[0], labels[1])
  assert not np.array_equal(uninterrupted[6][0], uninterrupted[7][0])


def test_resuming_late_in_a_run_reads_at_most_one_epoch(fake_fmnist, monkeypatch):
  """A run resumed at step 100 (epoch 12 of 64 examples at batch 8) reads the examples of its
  own epoch only: skipping from step 0 read 800 examples before its first batch (late in an
  ImageNet run, terabytes), and gives the uninterrupted run's batch of step 100."""
  d = data_lib.load_data('fashion_mnist', idx_dir=str(fake_fmnist), image_size=28)
  reads = []
  epochs = d.source.epochs

  def counted(*args, **kwargs):
    def count(label):
      reads.append(1)
      return label
    epoch = epochs(*args, **kwargs)
    return lambda key, start: epoch(key, start).map(lambda i, example: (i, (
        example[0], tf.ensure_shape(tf.numpy_function(count, [example[1]], example[1].dtype,
                                                      stateful=True), []))))

  monkeypatch.setattr(d.source, 'epochs', counted)
  late = iter(d.pretrain_dataset(8, seed=5, start_step=100, ordered=True))
  first = next(late)
  assert 0 < len(reads) <= 64 + 8 * 8, len(reads)  # its epoch, and what prefetching takes
  uninterrupted = iter(d.pretrain_dataset(8, seed=5, ordered=True))
  for _ in range(100):
    next(uninterrupted)
  expected = next(uninterrupted)
  np.testing.assert_array_equal(first[1].numpy(), expected[1].numpy())
  np.testing.assert_array_equal(first[0][0].numpy(), expected[0][0].numpy())


def _image_folder(tmp_path):
  rng = np.random.default_rng(0)
  for cls in ('cat', 'dog'):
    (tmp_path / cls).mkdir()
    for i in range(10):
      img = rng.integers(0, 256, (40, 30, 3)).astype(np.uint8)
      enc = tf.io.encode_jpeg(img) if i % 2 else tf.io.encode_png(img)
      (tmp_path / cls / f'{i}.{"jpg" if i % 2 else "png"}').write_bytes(enc.numpy())
  (tmp_path / 'dog' / 'broken.jpg').write_bytes(b'\xff\xd8 not really a jpeg')
  return tmp_path


def test_image_folder_skips_corrupt_file_and_trains(tmp_path):
  root = _image_folder(tmp_path)
  d = data_lib.load_data('image_folder', image_dir=str(root), image_size=16, eval_every=5)
  assert d.num_classes == 2 and d.num_train == 16  # 20 good images, every 5th held out
  (v1, v2), y = next(iter(d.pretrain_dataset(8)))
  assert v1.shape == (8, 16, 16, 3)
  x, y = next(iter(d.eval_dataset('validation', 8)))
  assert x.shape == (4, 16, 16, 3) and sorted(y.numpy().tolist()) == [0, 0, 1, 1]


def _resume_matches(d, batch, steps, resume_at, input_context=None, shuffle_buffer=None):
  """Labels and first views of `steps` batches from step 0 and from `resume_at`, compared;
  returns the uninterrupted labels."""
  def stream(start, count):
    it = iter(d.pretrain_dataset(batch, input_context, seed=3, start_step=start, ordered=True,
                                 shuffle_buffer=shuffle_buffer))
    return [(y.numpy(), v1.numpy()) for (v1, _), y in (next(it) for _ in range(count))]

  uninterrupted = stream(0, steps)
  resumed = stream(resume_at, steps - resume_at)
  assert len(resumed) > 0
  for (y, v), (y_ref, v_ref) in zip(resumed, uninterrupted[resume_at:], strict=True):
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(v, v_ref)
  return np.concatenate([y for y, _ in uninterrupted])


@pytest.mark.parametrize('cache', [False, True])
def test_image_folder_reshuffles_every_epoch_and_resumes_exactly(tmp_path, cache):
  """16 training images, batch 4: each epoch (4 steps) is all of them in an order of its own,
  and a run resumed at step 6 (mid-epoch 1) continues the uninterrupted stream into epoch 2.
  Cached: the encoded files are read once and permuted within runs of shuffle_buffer."""
  root = _image_folder(tmp_path)
  d = data_lib.load_data('image_folder', image_dir=str(root), image_size=16, eval_every=5,
                         cache=cache)
  labels = _resume_matches(d, 4, 10, 6)
  epochs = [labels[i * 16:(i + 1) * 16] for i in range(2)]
  for epoch in epochs:
    np.testing.assert_array_equal(np.sort(epoch), np.sort(d.source.shard('train', None)[1]))
  assert not np.array_equal(epochs[0], epochs[1])


def _tfds_images(data_dir):
  """A real TFDS dataset (16 px PNGs of 3 classes, 40 training images in 4 files)."""

  class TinyImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          'image': tfds.features.Image(shape=(16, 16, 3)),
          'label': tfds.features.ClassLabel(num_classes=3)}), supervised_keys=('image', 'label'))

    def _split_generators(self, dl_manager):
      return {'train': self._generate_examples(40, 0),
              'validation': self._generate_examples(8, 1)}

    def _generate_examples(self, n, seed):
      rng = np.random.default_rng(seed)
      for i in range(n):
        yield i, {'image': rng.integers(0, 256, (16, 16, 3)).astype(np.uint8), 'label': i % 3}

  builder = TinyImages(data_dir=str(data_dir))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(num_shards=4))
  return data_lib.ImageData('tiny_images', 16, 3, 3, 40, (0.5,) * 3, (0.25,) * 3,
                            builder=builder)


def test_tfds_source_knows_each_input_pipelines_epoch_and_resumes_exactly(tmp_path):
  """TFDS gives input pipeline 1 of 2 every other file: its epoch size is counted from the
  split's file instructions (TFDS reports no cardinality under an InputContext), so a resume
  starts at its epoch; the resumed stream equals the uninterrupted one across an epoch."""
  d = _tfds_images(tmp_path)
  ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1,
                                   num_replicas_in_sync=2)
  read = len(list(d.source.examples('train', ctx)))
  assert d.source.epoch_size('train', ctx) == read and 0 < read < 40
  assert d.source.epoch_size('train', None) == 40
  # 5 steps an epoch of 20; permuted within runs of 6 (the first run shorter, by epoch).
  labels = _resume_matches(d, 4, 12, 7, ctx, shuffle_buffer=6)
  np.testing.assert_array_equal(np.sort(labels[:read]), np.sort(labels[read:2 * read]))
  assert not np.array_equal(labels[:read], labels[read:2 * read])


def _tfds_file_of(d):
  """{encoded image: the file of the tiny TFDS split it is in}, from TFDS's own reading of
  each file's slice of the split."""
  assert [int(f.take) for f in d.source.files('train', None)] == [10] * 4
  skip = {'image': tfds.decode.SkipDecoding()}
  file_of = {}
  for i in range(4):
    for image, _ in d.source.builder.as_dataset(split=f'train[{10 * i}:{10 * (i + 1)}]',
                                                as_supervised=True, decoders=skip):
      file_of[image.numpy()] = i
  assert len(file_of) == 40
  return file_of


def test_tfds_files_are_read_in_a_new_order_each_epoch_and_resume_exactly(tmp_path):
  """Each epoch reads the split's 4 files in an order of its own, interleaved one example from
  each in turn (simclr tf2's reshuffled, interleaved files): with runs of 1 (no permutation
  after the read), the file each example came from, told by TFDS's own reading of the file's
  slice of the split, shows the order. The same key gives the same stream, and a resume across
  an epoch boundary is bit-exact."""
  d = _tfds_images(tmp_path)
  file_of = _tfds_file_of(d)
  epoch_of = d.source.epochs('train', None, seed=3, window=1)

  def files_read(epoch):
    key = tf.constant([3, epoch], tf.int64)
    return [file_of[image.numpy()] for _, (image, _) in epoch_of(key, 0)]

  orders = []
  for epoch in range(3):
    read = files_read(epoch)
    assert len(read) == 40 and sorted(read) == sorted(list(range(4)) * 10)
    order = read[:4]
    assert sorted(order) == [0, 1, 2, 3] and read == order * 10, read
    orders.append(tuple(order))
  assert len(set(orders)) > 1, orders
  assert files_read(1) == list(orders[1]) * 10
  # 10 steps an epoch of 40; resumed in epoch 1, permuted within runs of 6.
  labels = _resume_matches(d, 4, 25, 13, shuffle_buffer=6)
  np.testing.assert_array_equal(np.sort(labels[:40]), np.sort(labels[40:80]))


def test_linear_evaluation_reads_tfds_files_in_a_new_seeded_order_each_pass(tmp_path):
  """The offline probe's TFDS input reshuffles the files every pass (TFDS reads a file whole
  at a time here, so each run of 10 shows the order), reproducibly from the seed; its views
  are uint8 crops."""
  d = _tfds_images(tmp_path)
  file_of = _tfds_file_of(d)

  def pass_orders(reshuffle, seed):
    ds = d.source.examples('train', shuffle=True, seed=seed, reshuffle=reshuffle).repeat(4)
    read = [file_of[image.numpy()] for image, _ in ds]
    assert len(read) == 160
    return [tuple(read[p * 40: (p + 1) * 40: 10]) for p in range(4)]

  fixed, reshuffled = pass_orders(False, 5), pass_orders(True, 5)
  assert len(set(fixed)) == 1 and len(set(reshuffled)) > 1, (fixed, reshuffled)
  assert all(sorted(o) == [0, 1, 2, 3] for o in reshuffled)
  assert pass_orders(True, 5) == reshuffled
  asked = []
  examples = d.source.examples
  d.source.examples = lambda *a, **kw: asked.append(kw) or examples(*a, **kw)
  (x, y), = d.linear_eval_dataset(8, seed=5).take(1)
  assert asked == [{'shuffle': True, 'seed': 5, 'reshuffle': True}], asked
  assert x.dtype == tf.uint8 and x.shape == (8, 16, 16, 3) and y.shape == (8,)


def test_image_folder_fail_mode_names_the_file(tmp_path):
  root = _image_folder(tmp_path)
  with pytest.raises(UserError, match='broken.jpg'):
    data_lib.load_data('image_folder', image_dir=str(root), on_corrupt='fail')


def test_empty_image_folder_is_a_clear_error(tmp_path):
  (tmp_path / 'cls').mkdir()
  with pytest.raises(UserError, match='No images found'):
    data_lib.load_data('image_folder', image_dir=str(tmp_path))


def test_validation_is_a_fixed_hold_out_of_training_and_the_test_split_stays_apart(fake_fmnist):
  """validation_examples: the same 16 training images for every load, disjoint from what
  pretraining and the probe read; the test split is the IDX test set, untouched."""
  train, test = _fake_arrays()['train'], _fake_arrays()['t10k']
  d = data_lib.load_data('fashion_mnist', idx_dir=str(fake_fmnist), image_size=28,
                         validation_examples=16)
  assert (d.num_train, d.train_split, d.eval_split, d.test_split) == (
      48, 'train', 'validation', 'test')
  again = data_lib.load_data('fashion_mnist', idx_dir=str(fake_fmnist), image_size=28,
                             validation_examples=16)
  key = lambda images: {im.tobytes() for im in images[..., 0]}  # noqa: E731
  val, kept = key(d.arrays('validation')[0]), key(d.arrays('train')[0])
  assert val == key(again.arrays('validation')[0]) and len(val) == 16
  assert not val & kept and val | kept == key(train[0][..., None].astype(np.uint8))
  np.testing.assert_array_equal(d.arrays('test')[0][..., 0], test[0])
  # Labels travel with their images.
  index = {im.tobytes(): y for im, y in zip(train[0].astype(np.uint8), train[1])}
  images, labels = d.arrays('validation')
  assert [index[im.tobytes()] for im in images[..., 0]] == list(labels)
  # Without it: no validation split, evaluation reads the test set.
  plain = data_lib.load_data('fashion_mnist', idx_dir=str(fake_fmnist), image_size=28)
  assert (plain.num_train, plain.eval_split, plain.test_split) == (64, 'test', None)
  with pytest.raises(UserError, match='validation_examples=64 leaves no training images'):
    data_lib.load_data('fashion_mnist', idx_dir=str(fake_fmnist), validation_examples=64)
  with pytest.raises(UserError, match="not of 'imagenet2012'.*train_split = 'train\\[10000:\\]'"):
    data_lib.load_data('imagenet2012', validation_examples=10)


def test_an_image_folder_is_decoded_once_then_only_where_files_change(tmp_path, monkeypatch):
  from minc_tf import sources
  root = _image_folder(tmp_path)
  first = data_lib.load_data('image_folder', image_dir=str(root), image_size=16, eval_every=5)
  assert os.path.exists(sources.manifest_path(str(root)))
  decoded = []
  real = tf.io.decode_image
  monkeypatch.setattr(tf.io, 'decode_image', lambda *a, **k: decoded.append(1) or real(*a, **k))
  again = data_lib.load_data('image_folder', image_dir=str(root), image_size=16, eval_every=5)
  assert decoded == []  # the manifest answered for all 21 files, the broken one included
  for split in ('train', 'validation'):
    np.testing.assert_array_equal(again.source.shard(split, None)[0], first.source.shard(split, None)[0])
  # A changed file (other bytes, other size) is decoded again: now broken, it is skipped.
  (root / 'cat' / '0.png').write_bytes(b'no longer an image')
  changed = data_lib.load_data('image_folder', image_dir=str(root), image_size=16, eval_every=5)
  assert len(decoded) == 1 and changed.num_train == first.num_train - 1
  # A copy that keeps the modification time (cp -p) is another file: decoded again.
  shutil.copy2(root / 'cat' / '1.jpg', root / 'copy.tmp')
  os.replace(root / 'copy.tmp', root / 'cat' / '1.jpg')
  decoded.clear()
  data_lib.load_data('image_folder', image_dir=str(root), image_size=16, eval_every=5)
  assert len(decoded) == 1
  # A deleted file leaves the manifest.
  os.remove(root / 'cat' / '3.jpg')
  data_lib.load_data('image_folder', image_dir=str(root), image_size=16, eval_every=5)
  with open(sources.manifest_path(str(root))) as f:
    assert str(root / 'cat' / '3.jpg') not in f.read()
  # A damaged manifest is only a cache: everything is checked again.
  with open(sources.manifest_path(str(root)), 'w') as f:
    f.write('{not json')
  decoded.clear()
  data_lib.load_data('image_folder', image_dir=str(root), image_size=16, eval_every=5)
  assert len(decoded) == 20  # every file of the folder (one was deleted)


def test_a_flat_folder_is_unlabelled_and_a_mixed_one_is_refused(tmp_path):
  for i in range(6):
    (tmp_path / f'{i}.png').write_bytes(
        tf.io.encode_png(np.full((12, 10, 3), 20 * i, np.uint8)).numpy())
  d = data_lib.load_data('image_folder', image_dir=str(tmp_path), image_size=8, eval_every=3)
  assert d.num_classes == 0 and d.num_train == 4
  (v1, _), _ = next(iter(d.pretrain_dataset(2)))
  assert v1.shape == (2, 8, 8, 3)
  (tmp_path / 'dogs').mkdir()
  (tmp_path / 'dogs' / 'a.png').write_bytes((tmp_path / '0.png').read_bytes())
  with pytest.raises(UserError, match='holds both images .* and class folders'):
    data_lib.load_data('image_folder', image_dir=str(tmp_path))


def test_validation_classes_without_training_images_are_refused(tmp_path):
  png = tf.io.encode_png(np.zeros((8, 8, 3), np.uint8)).numpy()
  for split, classes in (('train', ('cat', 'dog')), ('val', ('cat', 'dog', 'eel'))):
    for c in classes:
      (tmp_path / split / c).mkdir(parents=True)
      (tmp_path / split / c / 'a.png').write_bytes(png)
  with pytest.raises(UserError, match=r'val has classes with no training images .*: eel'):
    data_lib.load_data('image_folder', image_dir=str(tmp_path))


def test_the_folder_report_names_sizes_channels_and_conversions(tmp_path, caplog):
  import logging
  (tmp_path / 'a').mkdir()
  (tmp_path / 'b').mkdir()
  for i in range(3):
    (tmp_path / 'a' / f'{i}.png').write_bytes(tf.io.encode_png(np.zeros((20, 30, 3), np.uint8)).numpy())
    (tmp_path / 'b' / f'{i}.png').write_bytes(tf.io.encode_png(np.zeros((4, 6, 1), np.uint8)).numpy())
  with caplog.at_level(logging.INFO):
    data_lib.load_data('image_folder', image_dir=str(tmp_path), image_size=8, channels=3)
  text = caplog.text
  assert '6 images, 4x6 to 20x30 pixels' in text and 'channels {1: 3, 3: 3}' in text
  assert '3 of its images have other channel counts than load_data.channels = 3' in text
  assert '3 images have a side below 8 pixels' in text
