"""evaluate.py: kNN against a NumPy reference, the feature probe, and the BYOL offline linear
evaluation (frozen encoder, SGD Nesterov, augmented training view) on a tiny image set."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from minc_tf import data as data_lib
from minc_tf import evaluate
from minc_tf.errors import UserError


def np_knn(train_x, train_y, test_x, num_classes, k, temperature):
  a = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
  b = test_x / np.linalg.norm(test_x, axis=1, keepdims=True)
  preds = []
  for q in b:
    sim = a @ q
    top = np.argsort(-sim)[:k]
    votes = np.zeros(num_classes)
    for j in top:
      votes[train_y[j]] += np.exp(sim[j] / temperature)
    preds.append(np.argmax(votes))
  return np.array(preds)


def test_knn_matches_numpy_weighted_vote():
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(4, 8))
  train_y = rng.integers(0, 4, 300)
  test_y = rng.integers(0, 4, 120)
  train_x = (centres[train_y] + 1.2 * rng.normal(size=(300, 8))).astype(np.float32)
  test_x = (centres[test_y] + 1.2 * rng.normal(size=(120, 8))).astype(np.float32)
  expected = 100.0 * np.mean(np_knn(train_x, train_y, test_x, 4, 20, 0.1) == test_y)
  got = evaluate.knn_accuracy(train_x, train_y, test_x, test_y, 4, k=20, temperature=0.1,
                              chunk=50)  # chunks must not change the answer
  assert got == pytest.approx(expected, abs=1e-9)
  assert 40.0 < got < 100.0  # the data is neither trivial nor hopeless


def test_linear_probe_separates_separable_data_and_not_random_labels():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(1000, 10)).astype(np.float32)
  score = x[:, 0] + 0.5 * x[:, 3]
  x = x[np.abs(score) > 0.3][:600]  # a margin: separable with room to spare
  y = (x[:, 0] + 0.5 * x[:, 3] > 0).astype(np.int64)
  # batch 50: 8 steps an epoch (the default 1024 suits 60k examples, not 400).
  assert evaluate.linear_probe(x[:400], y[:400], x[400:], y[400:], 2, batch_size=50) >= 97.0
  noise = rng.integers(0, 2, 600)
  assert evaluate.linear_probe(x[:400], noise[:400], x[400:], noise[400:], 2,
                               batch_size=50) <= 65.0


def brightness_data(n_train=256, n_test=128, size=8, flipped_test=False):
  """Two classes told apart only by brightness, which crops and flips keep. flipped_test: a
  test split apart from the evaluation split, the same images with every label flipped."""
  rng = np.random.default_rng(2)

  def split(n):
    y = rng.integers(0, 2, n)
    level = np.where(y == 1, 170.0, 80.0)[:, None, None, None]
    x = np.clip(level + 25.0 * rng.normal(size=(n, size, size, 1)), 0, 255).astype(np.uint8)
    return x, y.astype(np.int64)

  arrays = {'train': split(n_train), 'test': split(n_test)}
  if flipped_test:
    arrays['flipped'] = (arrays['test'][0], 1 - arrays['test'][1])
  return data_lib.ImageData('bright', size, 1, 2, n_train, (0.5,), (0.25,), arrays=arrays,
                            eval_split='test', test_split='flipped' if flipped_test else None)


def small_encoder():
  keras.utils.set_random_seed(0)
  return keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, padding='same'),
                           keras.layers.BatchNormalization(), keras.layers.ReLU(),
                           keras.layers.GlobalAveragePooling2D()])


@pytest.mark.parametrize('distributed', [False, True])
def test_offline_linear_eval_learns_and_leaves_the_encoder_frozen(distributed, mirrored):
  strategy = mirrored if distributed else tf.distribute.get_strategy()
  data = brightness_data()
  with strategy.scope():
    encoder = small_encoder()
  before = [w.numpy().copy() for w in encoder.weights]  # includes batch-norm statistics
  top1 = evaluate.offline_linear_eval(encoder, data, strategy, epochs=6, batch_size=64,
                                      base_learning_rate=0.5, seed=0)
  assert top1 >= 90.0
  for b, w in zip(before, encoder.weights):
    np.testing.assert_array_equal(b, w.numpy())
  assert encoder.trainable  # restored


def test_offline_linear_eval_scores_one_trained_layer_on_each_split(monkeypatch):
  """splits=[eval, test]: the same layer scored twice, the test split read apart. Here the test
  split is the evaluation split with every label flipped, so its top-1 is 100 minus the
  evaluation split's exactly, and the first figure is that of a call without splits."""
  data = brightness_data(flipped_test=True)
  settings = dict(epochs=6, batch_size=64, base_learning_rate=0.5, seed=0)
  alone = evaluate.offline_linear_eval(small_encoder(), data, **settings)
  fit, fits = keras.Model.fit, []
  monkeypatch.setattr(keras.Model, 'fit', lambda *a, **k: fits.append(1) or fit(*a, **k))
  top1, flipped = evaluate.offline_linear_eval(
      small_encoder(), data, splits=[data.eval_split, data.test_split], **settings)
  assert len(fits) == 1  # one layer trained, scored on both splits
  assert top1 == pytest.approx(alone) and top1 >= 90.0
  assert flipped == pytest.approx(100.0 - top1)


def test_linear_eval_views_are_crops_and_flips_of_training_images():
  data = brightness_data()
  (x, y), = data.linear_eval_dataset(32, seed=3).take(1)
  # uint8 crops (a quarter of float32's infeed), normalised by the classifier on the device.
  assert x.shape == (32, 8, 8, 1) and x.dtype == tf.uint8 and y.shape == (32,)
  (x2, _), = data.linear_eval_dataset(32, seed=3).take(1)
  np.testing.assert_array_equal(x.numpy(), x2.numpy())  # seeded: reproducible
  originals = data.arrays('train')[0].astype(np.float32)

  def matches(views):
    """Per view: 'plain' or 'flipped' when it equals a training image (or its mirror)."""
    out = []
    for v in views.astype(np.float32):
      if np.abs(originals - v).max(axis=(1, 2, 3)).min() < 0.5:
        out.append('plain')
      elif np.abs(originals[:, :, ::-1] - v).max(axis=(1, 2, 3)).min() < 0.5:
        out.append('flipped')
      else:
        out.append(None)
    return out

  # Whole-image crops: every view is a training image, mirrored about half the time.
  (whole, _), = data.linear_eval_dataset(64, seed=3, crop_area=(1.0, 1.0)).take(1)
  found = matches(whole.numpy())
  assert None not in found and 16 <= found.count('flipped') <= 48, found
  # The protocol's crops (area U(0.08, 1)): almost no view is a whole image any more.
  assert matches(x.numpy()).count(None) >= 28


def test_linear_eval_input_pipelines_read_disjoint_shards():
  """Each input pipeline (a pod host) crops only its own examples: with whole-image crops and
  no flip the views are the training images themselves, split between two pipelines with
  none read twice."""
  data = brightness_data()
  originals = data.arrays('train')[0]
  n = len(originals)
  seen = []
  for p in range(2):
    ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=p,
                                     num_replicas_in_sync=2)
    (x, _), = data.linear_eval_dataset(n // 2, seed=0, crop_area=(1.0, 1.0), flip=False,
                                       input_context=ctx).take(1)
    x = x.numpy()
    index = [int(np.argmin(np.abs(originals.astype(np.float32) - v).max(axis=(1, 2, 3))))
             for v in x.astype(np.float32)]
    assert np.abs(originals[index].astype(np.float32) - x).max() < 0.5
    seen.append(set(index))
  assert len(seen[0]) == len(seen[1]) == n // 2 and not seen[0] & seen[1]


def test_features_through_mirrored_strategy_equal_one_device_and_keep_order(mirrored):
  """10 images in batches of 4 (a short last batch, padded and masked) over 2 replicas: the
  features and labels equal the single-device ones, in order."""
  import keras
  rng = np.random.default_rng(0)
  x = rng.normal(size=(10, 6, 6, 1)).astype(np.float32)
  y = np.arange(10)
  ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
  with mirrored.scope():
    enc = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(3, 3),
                            keras.layers.GlobalAveragePooling2D()])
  f1, y1 = evaluate.extract_features(enc, ds)
  f2, y2 = evaluate.extract_features(enc, ds, mirrored)
  assert f2.shape == (10, 3)
  np.testing.assert_array_equal(y2, y)
  np.testing.assert_array_equal(y1, y)
  np.testing.assert_allclose(f2, f1, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(f1, enc(x).numpy(), rtol=1e-6, atol=1e-6)
  # Batches of 3 over 2 replicas: padded to 4, the same features.
  f3, y3 = evaluate.extract_features(enc, tf.data.Dataset.from_tensor_slices((x, y)).batch(3),
                                     mirrored)
  np.testing.assert_array_equal(y3, y)
  np.testing.assert_allclose(f3, f1, rtol=1e-6, atol=1e-6)
  # A caller's cache (the Monitor's, every epoch): one traced function while the encoder and
  # strategy are the same, a new one for another encoder.
  cache = {}
  np.testing.assert_allclose(evaluate.extract_features(enc, ds, mirrored, cache=cache)[0], f2)
  first = cache['embed']
  for _ in range(2):
    np.testing.assert_allclose(evaluate.extract_features(enc, ds, mirrored, cache=cache)[0], f2)
  assert cache['embed'] is first and first.experimental_get_tracing_count() == 1
  with mirrored.scope():
    other = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(3, 3),
                              keras.layers.GlobalAveragePooling2D()])
  f3, _ = evaluate.extract_features(other, ds, mirrored, cache=cache)
  np.testing.assert_allclose(f3, other(x).numpy(), rtol=1e-6, atol=1e-6)


def test_one_probe_scores_validation_and_test_as_separate_probes_would():
  """Lists of held-out sets: the probe is trained once (same seed, same data), so each score
  equals the single-set call's."""
  rng = np.random.default_rng(3)
  centres = rng.normal(size=(3, 6))
  sets = []
  for n in (300, 90, 120):
    y = rng.integers(0, 3, n)
    sets.append(((centres[y] + 1.5 * rng.normal(size=(n, 6))).astype(np.float32), y))
  (tx, ty), (vx, vy), (sx, sy) = sets
  both = evaluate.linear_probe(tx, ty, [vx, sx], [vy, sy], 3, batch_size=50, epochs=5)
  assert both == [evaluate.linear_probe(tx, ty, vx, vy, 3, batch_size=50, epochs=5),
                  evaluate.linear_probe(tx, ty, sx, sy, 3, batch_size=50, epochs=5)]
  assert both[0] != both[1]  # two different sets, told apart


def test_report_test_scores_the_same_probe_on_the_test_split():
  """train.evaluate_encoders with a validation and a test split: the test figures are the
  probe and kNN of the same training features, scored on the test images."""
  rng = np.random.default_rng(4)

  def split(n):
    y = rng.integers(0, 2, n)
    # Overlapping classes: validation and test scores differ, so a mix-up shows.
    return ((y[:, None, None, None] * 12 + rng.integers(0, 150, (n, 8, 8, 1))).astype(np.uint8),
            y.astype(np.int64))
  arrays = {'train': split(128), 'validation': split(48), 'test': split(64)}
  d = data_lib.ImageData('toy', 8, 1, 2, 128, (0.5,), (0.5,), arrays=arrays,
                         eval_split='validation', test_split='test')
  encoder = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(4, kernel_initializer='ones')])
  out = evaluate.evaluate_encoders(encoder, d, 32, None, None, False, True, report_test=True)
  feats = {s: evaluate.extract_features(encoder, d.eval_dataset(s, 32)) for s in arrays}
  for prefix, s in (('', 'validation'), ('test_', 'test')):
    assert out[f'{prefix}probe_top1'] == evaluate.linear_probe(*feats['train'], *feats[s], 2)
    assert out[f'{prefix}knn_top1'] == evaluate.knn_accuracy(*feats['train'], *feats[s], 2)
  assert out['eval_split'] == 'validation' and out['probe_top1'] > 60
  assert out['probe_top1'] != out['test_probe_top1']
  assert 'test_probe_top1' not in evaluate.evaluate_encoders(encoder, d, 32, None, None, False,
                                                          False)
  # The baselines are scored on the test split too (the random-init row of a final table).
  with_baselines = evaluate.evaluate_encoders(encoder, d, 32, None, None, True, False,
                                           report_test=True)
  pixels = {s: evaluate.extract_features(keras.Sequential([keras.Input((8, 8, 1)),
                                                           keras.layers.Flatten()]),
                                         d.eval_dataset(s, 32)) for s in ('train', 'test')}
  assert with_baselines['test_raw_pixel_top1'] == evaluate.linear_probe(
      *pixels['train'], *pixels['test'], 2)
  assert 0 < with_baselines['test_random_init_top1'] <= 100


@pytest.mark.parametrize('distributed', [False, True])
def test_spectral_objective_is_the_u_statistic_of_fixed_evaluation_pairs(distributed, mirrored):
  """The objective equals losses.spectral_contrastive_loss (no clip) on the projected views of
  the evaluation split made with OBJECTIVE_SEED, BatchNorm in inference mode; the same pairs
  on every call and on 2 replicas; P capped at the split's size."""
  from minc_tf import losses
  data = brightness_data()
  strategy = mirrored if distributed else tf.distribute.get_strategy()
  with strategy.scope():
    enc = small_encoder()
    proj = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
  # Moving statistics far from a batch's: inference and training mode disagree.
  bn = enc.layers[1]
  bn.moving_mean.assign(bn.moving_mean - 0.5)
  bn.moving_variance.assign(bn.moving_variance * 0.25)
  value, clipped, pairs = evaluate.spectral_objective(enc, proj, data, 100, 32, strategy, mu=0.5)
  assert pairs == 100

  def reference(split, training=False, n=100, mu=None):
    views = data.pretrain_dataset(32, seed=evaluate.OBJECTIVE_SEED, split=split).take(4)
    z = [[], []]
    for (v1, v2), _ in views:
      for i, v in enumerate((v1, v2)):
        z[i].append(proj(enc(v, training=training), training=training))
    z1, z2 = (tf.concat(zi, 0)[:n] for zi in z)
    return float(losses.spectral_contrastive_loss(z1, z2, mu=mu))

  np.testing.assert_allclose(value, reference('test'), rtol=1e-5)
  np.testing.assert_allclose(clipped, reference('test', mu=0.5), rtol=1e-5)
  assert abs(clipped - value) > 1e-3 * abs(value)  # the clip bites at mu = 0.5
  assert abs(value - reference('train')) > 1e-3 * abs(value)  # the evaluation split's views
  assert evaluate.spectral_objective(enc, proj, data, 100, 32, strategy, mu=0.5) == (
      value, clipped, pairs)
  *_, capped = evaluate.spectral_objective(enc, proj, data, 10 ** 6, 32, strategy)
  assert capped == 128  # the split's size
  # Last: a training-mode call moves BatchNorm's statistics.
  assert abs(value - reference('test', training=True)) > 1e-3 * abs(value)  # inference mode


def test_a_stopped_linear_evaluation_resumes_at_its_last_epoch(tmp_path, monkeypatch):
  """Stopped in its third epoch (of 4, 4 steps each), the rerun with the same backup_dir trains
  the remaining two epochs only; a finished one removes its backup. trainable=True (fine-tuning)
  changes the encoder, the frozen default does not."""
  data = brightness_data()
  real = data.linear_eval_dataset
  pulled = []

  def counting(batch_size, fail_after=None, **kw):
    def count(x, y):
      pulled.append(1)
      if fail_after is not None and len(pulled) > fail_after:
        raise KeyboardInterrupt  # a stop mid-epoch (SIGTERM, Ctrl-C)
      return x, y

    def wrap(x, y):
      x, y = tf.py_function(count, [x, y], [tf.uint8, tf.int64])
      x.set_shape([batch_size, 8, 8, 1])
      y.set_shape([batch_size])
      return x, y
    return real(batch_size, **kw).map(wrap)

  settings = dict(epochs=4, batch_size=16, steps_per_epoch=4, base_learning_rate=0.5, seed=0,
                  verbose=0, backup_dir=str(tmp_path / 'backup'))
  monkeypatch.setattr(data, 'linear_eval_dataset',
                      lambda b, **kw: counting(b, fail_after=10, **kw))
  with pytest.raises(Exception):
    evaluate.offline_linear_eval(small_encoder(), data, **settings)
  backups = [p.name for p in tmp_path.iterdir() if p.name.startswith('backup_')]
  assert len(backups) == 1  # named by its settings: others would not resume it
  # Other settings never resume it: a backup of their own (stopped in its third epoch too).
  pulled.clear()
  with pytest.raises(Exception):
    evaluate.offline_linear_eval(small_encoder(), data, **dict(settings, seed=1))
  assert len([p for p in tmp_path.iterdir() if p.name.startswith('backup_')]) == 2
  import shutil
  shutil.rmtree(next(p for p in tmp_path.iterdir() if p.name.startswith('backup_') and
                     p.name != backups[0]))
  pulled.clear()
  monkeypatch.setattr(data, 'linear_eval_dataset', lambda b, **kw: counting(b, **kw))
  encoder = small_encoder()
  before = [w.numpy().copy() for w in encoder.weights]
  evaluate.offline_linear_eval(encoder, data, **settings)
  assert 8 <= len(pulled) < 16, len(pulled)  # two epochs of 4 steps (plus prefetch), not four
  assert not any(p.name.startswith('backup_') for p in tmp_path.iterdir())  # done: removed
  assert all(np.array_equal(b, w.numpy()) for b, w in zip(before, encoder.weights))
  evaluate.offline_linear_eval(encoder, data, **dict(settings, trainable=True))
  assert not all(np.array_equal(b, w.numpy()) for b, w in zip(before, encoder.weights))


def test_long_loops_log_their_progress_and_time_left(monkeypatch, caplog):
  import logging
  import types
  from absl import logging as absl_logging
  # Other tests may have lowered absl's verbosity (the CLI sets it from flags).
  monkeypatch.setattr(absl_logging, 'info', lambda msg, *args: logging.getLogger(
      'progress').info(msg, *args))
  clock = iter([0.0, 10.0, 40.0, 50.0, 100.0])  # evaluate's clock only (logging has its own)
  monkeypatch.setattr(evaluate, 'time', types.SimpleNamespace(time=lambda: next(clock)))
  progress = evaluate.Progress('kNN, queries', 100, every_s=30.0)  # starts at t = 0
  with caplog.at_level(logging.INFO, logger='progress'):
    progress(10)  # t = 10: too soon
    progress(40)  # t = 40: 1 per second, 60 left
    progress(45)  # t = 50: too soon after the last line
    progress(90)  # t = 100
  lines = [r.getMessage() for r in caplog.records if 'kNN' in r.getMessage()]
  assert lines == ['kNN, queries: 40/100, about 60 s left', 'kNN, queries: 90/100, about 11 s left']


def test_each_host_of_a_pod_embeds_its_own_share_once():
  """4 input pipelines (a v4-32's hosts) feeding 8 replicas, 23 examples in batches of 8: each
  example goes to exactly one pipeline, every pipeline runs the same number of steps (padding
  masked), and the indices put the features back in order."""
  x = np.arange(23, dtype=np.float32)[:, None, None, None] * np.ones((1, 2, 2, 1), np.float32)
  ds = tf.data.Dataset.from_tensor_slices((x, np.arange(23))).batch(8)
  seen, steps = [], set()
  for p in range(4):
    ctx = tf.distribute.InputContext(num_input_pipelines=4, input_pipeline_id=p,
                                     num_replicas_in_sync=8)
    batches = list(evaluate.host_shard(ds, ctx, per_replica_batch=1, steps=3))
    steps.add(len(batches))
    for images, labels, index, valid in batches:
      for img, lab, i, v in zip(images.numpy(), labels.numpy(), index.numpy(), valid.numpy()):
        if v:
          assert img[0, 0, 0] == lab == i  # the example and its own index
          seen.append(int(i))
  assert steps == {3 * 2}  # 3 steps x 2 replicas per host, on every host
  assert sorted(seen) == list(range(23))  # each example once over the hosts


def test_sharded_extraction_equals_the_unsharded_one(mirrored):
  rng = np.random.default_rng(1)
  x = rng.normal(size=(10, 6, 6, 1)).astype(np.float32)
  ds = tf.data.Dataset.from_tensor_slices((x, np.arange(10))).batch(4)
  with mirrored.scope():
    enc = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(3, 3),
                            keras.layers.GlobalAveragePooling2D()])
  f1, y1 = evaluate.extract_features(enc, ds, mirrored, sharded=False)
  f2, y2 = evaluate.extract_features(enc, ds, mirrored, sharded=True)
  np.testing.assert_array_equal(y2, np.arange(10))
  np.testing.assert_array_equal(y1, y2)
  np.testing.assert_allclose(f2, f1, rtol=1e-6, atol=1e-6)


def test_the_linear_evaluation_runs_its_host_loop_and_refuses_one_that_overruns(monkeypatch):
  data = brightness_data()
  compiled = []
  real = keras.Model.compile
  monkeypatch.setattr(keras.Model, 'compile',
                      lambda self, **kw: compiled.append(kw['steps_per_execution']) or real(
                          self, **kw))
  top1 = evaluate.offline_linear_eval(small_encoder(), data, epochs=6, batch_size=64,
                                      base_learning_rate=0.5, seed=0, steps_per_execution=2,
                                      verbose=0)
  assert compiled == [2] and top1 >= 90.0  # 4 steps per epoch, 2 per call
  with pytest.raises(UserError, match='steps_per_execution = 3 does not divide its 4 steps'):
    evaluate.offline_linear_eval(small_encoder(), data, epochs=1, batch_size=64,
                                 steps_per_execution=3)
