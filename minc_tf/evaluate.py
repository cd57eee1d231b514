"""Evaluation of frozen representations: feature extraction, linear probe, kNN, and the
offline linear evaluation of the BYOL protocol."""

import hashlib
import inspect
import json
import math
import time

from absl import logging
import gin
import keras
import numpy as np
import tensorflow as tf

from minc_tf import export
from minc_tf import networks
from minc_tf import spectrum
from minc_tf import strategy as strategy_lib
from minc_tf.errors import UserError, int_at_least, interval_in, real_in, require


class Progress:
  """One log line per `every_s` seconds on a long loop: done / total and the time left."""

  def __init__(self, what, total, every_s=30.0):
    self.what, self.total, self.every_s = what, total, every_s
    self.start = self.last = time.time()

  def __call__(self, done):
    now = time.time()
    if now - self.last < self.every_s:
      return
    self.last = now
    rate = done / max(now - self.start, 1e-9)
    left = f', about {(self.total - done) / rate:.0f} s left' if self.total and rate else ''
    logging.info('%s: %d/%s%s', self.what, done, self.total or '?', left)


def extract_features(encoder, dataset, strategy=None, cache=None, sharded=None):
  """Runs `encoder` (inference mode) over (image, label) batches on the replicas of `strategy`
  (default: the current one); returns (features, labels) in the dataset's order.

  Every batch is padded to the first batch's size (rounded up to a multiple of the replicas)
  and split across the replicas, so that shapes
  stay static (TPUs compile one program) and a short last batch is no special case; the padding
  is masked out. Each worker of a multi-worker strategy embeds the whole dataset (auto-sharding
  off), so that every worker holds all the features its probe needs.
  sharded (default: under TPUStrategy): each input pipeline (a pod's host) reads every
  num_input_pipelines-th example only (host_shard), and the one client puts the features back
  in order: without it every host of a single-client pod would feed the whole split and each
  image would count once per host.
  """
  strategy = strategy or tf.distribute.get_strategy()
  batch = None
  for images, _ in dataset.take(1):
    batch = int(images.shape[0])
  if batch is None:
    raise ValueError('extract_features: empty dataset')
  replicas = strategy.num_replicas_in_sync
  # Padded up to a multiple of the replicas (the first batch is short when the dataset is
  # smaller than a batch): every replica gets an equal, static share.
  batch = -(-batch // replicas) * replicas
  if sharded is None:
    sharded = isinstance(strategy, tf.distribute.TPUStrategy)
  steps = int(dataset.cardinality())
  embed = _embedding_function(encoder, strategy, cache)

  def local(value):
    return np.concatenate([np.asarray(v) for v in strategy.experimental_local_results(value)])

  if sharded and steps > 0:
    dist = strategy.distribute_datasets_from_function(
        lambda ctx: host_shard(dataset, ctx, batch // replicas, steps))
  else:
    def pad(images, labels):
      n = tf.shape(images)[0]
      images = tf.pad(images, [[0, batch - n]] + [[0, 0]] * (len(images.shape) - 1))
      images.set_shape([batch] + images.shape[1:].as_list())
      labels = tf.pad(labels, [[0, batch - n]])
      labels.set_shape([batch])
      return images, labels, tf.range(batch, dtype=tf.int64), tf.range(batch) < n

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    dist = strategy.experimental_distribute_dataset(dataset.map(pad).with_options(options))

  feats, labels, order = [], [], []
  progress = Progress('feature extraction, batches', steps if steps >= 0 else None)
  for i, (images, y, index, valid) in enumerate(dist):
    f, y, index, m = (local(v) for v in embed(images, y, index, valid))
    feats.append(f[m])
    labels.append(y[m])
    order.append(index[m] + (0 if sharded and steps > 0 else i * batch))
    progress(i + 1)
  feats, labels, order = (np.concatenate(x) for x in (feats, labels, order))
  if sharded and steps > 0:  # the hosts' shards interleaved back into the dataset's order
    perm = np.argsort(order, kind='stable')
    feats, labels, order = feats[perm], labels[perm], order[perm]
    if len(np.unique(order)) != len(order):
      raise RuntimeError('extract_features: an example was embedded twice (input sharding)')
  return feats.astype(np.float32), labels.astype(np.int64)


def host_shard(dataset, input_context, per_replica_batch, steps):
  """One input pipeline's share of `dataset` ((image, label) batches) for extract_features:
  every num_input_pipelines-th example from its id, each with its index in the dataset, in
  per-replica batches, padded (mask False) to `steps` batches for each replica it feeds, so
  that every host runs the same number of steps."""
  pipelines, me = input_context.num_input_pipelines, input_context.input_pipeline_id
  here = input_context.num_replicas_in_sync // pipelines
  image_spec, label_spec = dataset.element_spec
  examples = dataset.unbatch().enumerate().shard(pipelines, me)
  examples = examples.map(lambda i, ex: (ex[0], ex[1], i, True))
  blank = tf.data.Dataset.from_tensors(
      (tf.zeros(image_spec.shape[1:], image_spec.dtype), tf.zeros([], label_spec.dtype),
       tf.constant(-1, tf.int64), False)).repeat()
  need = steps * here * per_replica_batch
  return examples.concatenate(blank).take(need).batch(per_replica_batch, drop_remainder=True)


def _embedding_function(encoder, strategy, cache):
  """A traced function embedding a distributed batch; kept in `cache` (a dict the caller
  owns, such as the Monitor, which calls again every epoch: a new tf.function would retrace,
  on TPU recompile) so that it lives no longer than its caller."""
  owner = cache.get('for') if cache is not None else None
  if owner is not None and owner[0] is encoder and owner[1] is strategy:
    return cache['embed']

  @tf.function
  def embed(images, *passed):  # labels, indices and masks pass through beside the features
    return strategy.run(lambda x, *rest: (encoder(x, training=False),) + tuple(rest),
                        args=(images,) + passed)

  if cache is not None:
    cache.update(embed=embed, **{'for': (encoder, strategy)})
  return embed


# The validation pairs of spectral_objective: one seed, so every run is scored on the same views.
OBJECTIVE_SEED = 1234


def spectral_objective(encoder, projector, data, pairs, batch_size, strategy=None, mu=None):
  """The Spectral Contrastive objective of the frozen encoder + projector on held-out pairs:

    L_val = ( -(2/P) sum_i z1_i . z2_i  +  1/(P(P-1)) sum_{i != j} (z1_i . z2_j)^2 ) / mu

  with z <- radial_clip(z, mu) (losses.radial_clip; the loss as Spectral trains it and as
  MINC's full-M objective estimates it; lower is better), over P = min(pairs, the evaluation
  split's size) view pairs of data.eval_split, made with the training views seeded by
  OBJECTIVE_SEED (the same pairs for every run and method), BatchNorm in inference mode.
  Returns (L_val without clip and with mu = 1, L_val at `mu`, P). The first is the endpoint
  docs/study_preregistration.md registered; the clip leaves the norm of z free above sqrt(mu),
  so that one measures the norm as much as the representation (docs/study_outcome.md).
  """
  strategy = strategy or tf.distribute.get_strategy()
  size = data.source.epoch_size(data.eval_split, None)
  pairs = min(pairs, size) if size else pairs
  views = data.pretrain_dataset(batch_size, seed=OBJECTIVE_SEED, split=data.eval_split)
  views = views.take(-(-pairs // batch_size))
  projected = _Projected(encoder, projector)
  cache = {}
  z1, _ = extract_features(projected, views.map(lambda v, y: (v[0], y)), strategy, cache)
  z2, _ = extract_features(projected, views.map(lambda v, y: (v[1], y)), strategy, cache)
  z1, z2 = z1[:pairs].astype(np.float64), z2[:pairs].astype(np.float64)

  def objective(a, b, scale):
    if scale is not None:
      a, b = (x * np.minimum(1.0, np.sqrt(scale) / np.maximum(
          np.linalg.norm(x, axis=1, keepdims=True), 1e-12)) for x in (a, b))
    dots = a @ b.T
    n = len(a)
    attract = -2.0 * np.trace(dots) / n
    repel = (np.sum(dots ** 2) - np.sum(np.diag(dots) ** 2)) / (n * (n - 1.0))
    return float((attract + repel) / (scale or 1.0))

  return objective(z1, z2, None), objective(z1, z2, mu), len(z1)


class _Projected:
  """encoder then projector, as one callable for extract_features (float32 out: a bf16
  policy's outputs are cast before the objective's sums)."""

  def __init__(self, encoder, projector):
    self.encoder, self.projector = encoder, projector

  def __call__(self, x, training=False):
    z = self.projector(self.encoder(x, training=training), training=training)
    return tf.cast(z, tf.float32)


@gin.configurable
def linear_probe(train_x, train_y, test_x, test_y, num_classes, epochs=30, batch_size=1024,
                 learning_rate=1e-2, l2=1e-4, seed=0):
  """Top-1 accuracy (%) of a softmax-regression probe trained on frozen features.

  Features are standardised with the training statistics; the probe is trained with Adam on
  mini-batches (a fixed, cheap protocol so that encoders compare on equal terms; the BYOL
  protocol for ImageNet is the offline evaluation in the gin configs). test_x and test_y may be
  lists of arrays (a validation and a test split): one probe is trained and a list returned.
  epochs / batch_size / learning_rate: the probe's Adam training: epochs over the training
    features, mini-batch size, step size.
  l2: L2 penalty on the probe's weights.
  seed: seed of the probe's initialisation and batch order (the same for every encoder).
  """
  several = isinstance(test_x, (list, tuple))
  tests = list(zip(test_x, test_y)) if several else [(test_x, test_y)]
  mean = train_x.mean(0, keepdims=True)
  std = train_x.std(0, keepdims=True) + 1e-6
  train_x = (train_x - mean) / std
  rng = np.random.default_rng(seed)
  dim = train_x.shape[1]
  w = tf.Variable(tf.zeros([dim, num_classes]))
  b = tf.Variable(tf.zeros([num_classes]))
  opt = keras.optimizers.Adam(learning_rate)

  @tf.function
  def step(x, y):
    with tf.GradientTape() as tape:
      logits = tf.matmul(x, w) + b
      loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
      loss += l2 * tf.reduce_sum(tf.square(w))
    opt.apply(tape.gradient(loss, [w, b]), [w, b])

  n = len(train_x)
  for _ in range(epochs):
    order = rng.permutation(n)
    for start in range(0, n, batch_size):
      idx = order[start:start + batch_size]
      step(tf.constant(train_x[idx]), tf.constant(train_y[idx]))
  scores = [100.0 * float(np.mean(np.argmax(((x - mean) / std) @ w.numpy() + b.numpy(), axis=1)
                                        == y)) for x, y in tests]
  return scores if several else scores[0]


@gin.configurable
def knn_accuracy(train_x, train_y, test_x, test_y, num_classes, k=20, temperature=0.1,
                 chunk=1024):
  """Top-1 (%) of weighted kNN on cosine similarity (Wu et al. 2018): each of the k nearest
  training features votes for its class with weight exp(similarity / temperature).
  k: neighbours that vote.
  temperature: the votes' weight exp(similarity / temperature).
  chunk: queries per similarity matrix (memory: chunk x training images floats).
  """
  train = tf.math.l2_normalize(tf.constant(train_x), axis=1)
  correct = 0
  progress = Progress('kNN, queries', len(test_x))
  for start in range(0, len(test_x), chunk):
    progress(start)
    q = tf.math.l2_normalize(tf.constant(test_x[start:start + chunk]), axis=1)
    sim, idx = tf.math.top_k(tf.matmul(q, train, transpose_b=True), k=k)
    votes = tf.one_hot(tf.gather(train_y, idx), num_classes) * tf.exp(sim / temperature)[..., None]
    pred = tf.argmax(tf.reduce_sum(votes, axis=1), axis=1).numpy()
    correct += int(np.sum(pred == test_y[start:start + chunk]))
  return 100.0 * correct / len(test_x)


@gin.configurable(denylist=['encoder', 'data', 'strategy', 'splits', 'backup_dir', 'trainable'])
def offline_linear_eval(encoder, data, strategy=None, epochs=80, batch_size=1024,
                        base_learning_rate=0.2, momentum=0.9, nesterov=True, weight_decay=0.0,
                        crop_area=(0.08, 1.0), steps_per_epoch=None, eval_batch_size=None,
                        seed=0, verbose=2, steps_per_execution=1, splits=None, backup_dir=None,
                        trainable=False):
  """Top-1 (%) of the BYOL linear-evaluation protocol on the frozen encoder.

  A linear layer on the encoder's features (inference-mode batch norm, no gradient into the
  encoder) trained for `epochs` with SGD, Nesterov momentum, learning rate
  base_learning_rate * batch_size / 256 cosine-decayed to 0, weight decay `weight_decay` (BYOL:
  none), on random resized crops (area U(crop_area)) and flips of the training split; tested on
  centre crops (0.875) of the evaluation split. Runs under `strategy` (batch_size is global).
  splits: given a list of splits (e.g. the validation and the test split), the one trained
  layer is scored on each and a list of top-1s returned, in order.
  epochs / batch_size: the linear layer's training: epochs over the training split, batch size.
  base_learning_rate / momentum / nesterov / weight_decay: its SGD: learning rate at batch 256,
    momentum, Nesterov, weight decay.
  crop_area: the training crops' area range (the views: random resized crop and flip).
  steps_per_epoch: steps per epoch (None: the training split once).
  eval_batch_size: batch size of its scoring (None: batch_size).
  seed: seed of its crops, order and initialisation.
  verbose: Keras' verbosity of its fit (0 silent, 1 progress bar, 2 one line per epoch).
  steps_per_execution: its train steps per host round trip (the TPU host loop; must divide
    its steps per epoch).
  splits: the splits it scores (default: the evaluation split).
  backup_dir: Keras' BackupAndRestore directory (with a digest of these settings appended): the
    training state saved every epoch, so that a stopped evaluation resumes at its last epoch
    (removed once it finishes; None: none).
  trainable: train the encoder too, end to end (transfer.py's fine-tuning; its BatchNorm then
    in training mode).
  """
  strategy = strategy or tf.distribute.get_strategy()
  strategy_lib.check_host_loop(strategy, steps_per_execution,
                               'offline_linear_eval.steps_per_execution')
  steps = steps_per_epoch or max(data.num_train // batch_size, 1)
  if steps % steps_per_execution:
    raise UserError(f'offline_linear_eval.steps_per_execution = {steps_per_execution} does not '
                    f'divide its {steps} steps per epoch. Fix: bind it to a divisor of {steps}.')
  was_trainable = encoder.trainable
  encoder.trainable = trainable  # frozen (the default): the linear layer alone is trained
  try:
    with strategy.scope():
      images = keras.Input(data.image_shape)
      features = encoder(images) if trainable else encoder(images, training=False)
      logits = keras.layers.Dense(data.num_classes, kernel_initializer='zeros',
                                  name='linear_eval')(features)
      scorer = keras.Model(images, logits)  # on normalised images (data.eval_dataset's)
      # Trained on uint8 crops, normalised on the device: (x / 255 - mean) / std.
      crops = keras.Input(data.image_shape, dtype='uint8')
      classifier = keras.Model(crops, scorer(export.normalizer(data.mean, data.std)(crops)))
      schedule = keras.optimizers.schedules.CosineDecay(
          base_learning_rate * batch_size / 256, steps * epochs)
      classifier.compile(
          optimizer=keras.optimizers.SGD(schedule, momentum=momentum, nesterov=nesterov,
                                         weight_decay=weight_decay or None),
          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
          metrics=['accuracy'], steps_per_execution=steps_per_execution)
    callbacks = []
    if backup_dir:
      # Named by what it trains: a backup of other settings (or of another encoder, whose
      # weights the caller's step names) is never resumed into this one.
      digest = hashlib.sha1(json.dumps(
          [epochs, batch_size, base_learning_rate, momentum, nesterov, weight_decay,
           list(crop_area), steps, seed, trainable, data.num_classes,
           list(data.image_shape)]).encode()).hexdigest()[:10]
      callbacks.append(keras.callbacks.BackupAndRestore(f'{backup_dir}_{digest}'))
    # Per input pipeline, as pretraining: a pod host decodes only its shard of the split.
    train = strategy.distribute_datasets_from_function(
        lambda ctx: data.linear_eval_dataset(ctx.get_per_replica_batch_size(batch_size),
                                             seed=seed, crop_area=crop_area, input_context=ctx))
    classifier.fit(train, epochs=epochs, steps_per_epoch=steps, verbose=verbose,
                   callbacks=callbacks)
    # Scored through extract_features, not classifier.evaluate: its padding gives every
    # replica a full share of a short last batch (Keras' evaluate hands a replica an empty
    # one, which BatchNorm under a multi-replica strategy refuses), and pod hosts read their
    # own shards.
    top1 = []
    for split in ([data.eval_split] if splits is None else splits):
      logits, labels = extract_features(
          scorer, data.eval_dataset(split, eval_batch_size or batch_size), strategy)
      top1.append(100.0 * float(np.mean(np.argmax(logits, axis=1) == labels)))
  finally:
    encoder.trainable = was_trainable
  return top1 if splits is not None else top1[0]


def settings(name):
  """{parameter: value} of this module's configurable `name` as gin binds it (defaults
  filled in)."""
  return settings_of(globals()[name])


def settings_of(fn):
  """{parameter: value} of the gin configurable `fn` as gin binds it (defaults filled in)."""
  values = {p.name: p.default for p in inspect.signature(fn).parameters.values()}
  values.update(gin.get_bindings(fn.__name__))
  return values


def check_settings():
  """Checks the evaluation settings bound in gin, so that a bad one stops the run before
  pretraining rather than after it (these functions are only called at the end)."""
  positive = real_in(0, math.inf, low_open=True)
  table = {
      'linear_probe': {'epochs': int_at_least(1), 'batch_size': int_at_least(1),
                       'learning_rate': positive, 'l2': real_in(0, math.inf)},
      'knn_accuracy': {'k': int_at_least(1), 'temperature': positive, 'chunk': int_at_least(1)},
      'offline_linear_eval': {
          'epochs': int_at_least(1), 'batch_size': int_at_least(1),
          'base_learning_rate': positive, 'momentum': real_in(0, 1, high_open=True),
          'weight_decay': real_in(0, math.inf), 'crop_area': interval_in(0, 1, low_open=True),
          'steps_per_epoch': int_at_least(1, optional=True),
          'eval_batch_size': int_at_least(1, optional=True),
          'steps_per_execution': int_at_least(1)},
  }
  for name, checks in table.items():
    values = settings(name)
    for param, check in checks.items():
      require(f'{name}.{param}', values[param], check)


# Above this many values per image the raw-pixel baseline is skipped: its probe would hold the
# training set's pixels as features (ImageNet at 224 px: 1.28M x 150,528 floats, ~770 GB).
RAW_PIXEL_MAX_FEATURES = 16384


def evaluate_encoders(encoder, data, batch_size, max_train, max_test, baselines, knn,
                      strategy=None, report_test=False, linear_eval=False, projector=None,
                      objective_pairs=0, objective_mu=None, linear_eval_backup=None):
  """Linear probe (and kNN) top-1 on frozen features, with the same-run baselines; features
  are extracted on the strategy's replicas. report_test: the same probe (and kNN) also scored
  on data.test_split, as 'test_probe_top1' ('test_knn_top1'), for a final configuration.
  linear_eval: also the BYOL linear-evaluation protocol (offline_linear_eval) on the frozen
  encoder, 'linear_eval_top1' (and 'test_linear_eval_top1' with report_test), resumable from
  linear_eval_backup (a directory) when given.
  objective_pairs (with the model's projector): also spectral_objective over that many
  evaluation-split pairs: 'val_objective' (no clip), 'val_objective_clipped' (at
  objective_mu, the method's mu) and 'val_objective_pairs' (the pairs it read)."""
  strategy = strategy or tf.distribute.get_strategy()
  start = time.time()
  train_ds = data.eval_dataset(data.train_split, batch_size, limit=max_train)
  splits = {'': data.eval_dataset(data.eval_split, batch_size, limit=max_test)}
  if report_test:
    splits['test_'] = data.eval_dataset(data.test_split, batch_size, limit=max_test)
  out = {}

  def probe(name, enc):
    cache = {}  # one traced function for every split
    tr_x, tr_y = extract_features(enc, train_ds, strategy, cache=cache)
    held = {p: extract_features(enc, ds, strategy, cache=cache)
            for p, ds in splits.items()}
    scores = linear_probe(tr_x, tr_y, [x for x, _ in held.values()],
                                   [y for _, y in held.values()], data.num_classes)
    for prefix, score in zip(held, scores):
      out[f'{prefix}{name}_top1'] = score
      if knn and name == 'probe':
        out[f'{prefix}knn_top1'] = knn_accuracy(tr_x, tr_y, *held[prefix],
                                                         data.num_classes)
    return tr_x

  feats = probe('probe', encoder)
  out['feature_dim'] = int(feats.shape[1])
  out['feature_effective_rank'] = spectrum.feature_effective_rank(feats[:20000])
  if baselines:
    with strategy.scope():
      random_encoder = networks.build_encoder(data.image_shape, name='random_encoder')
      pixels = keras.Sequential([keras.Input(data.image_shape), keras.layers.Flatten()])
    probe('random_init', random_encoder)
    size = math.prod(data.image_shape)
    if size <= RAW_PIXEL_MAX_FEATURES:
      probe('raw_pixel', pixels)
    else:
      out['raw_pixel_note'] = (f'skipped: {size} values per image (more than '
                               f'{RAW_PIXEL_MAX_FEATURES}) would make the probe hold the '
                               'training images as features')
  if objective_pairs:
    (out['val_objective'], out['val_objective_clipped'],
     out['val_objective_pairs']) = spectral_objective(encoder, projector, data, objective_pairs,
                                                      batch_size, strategy, objective_mu)
  out['eval_split'] = data.eval_split
  out['eval_wall_time_s'] = round(time.time() - start, 1)
  if linear_eval:
    start = time.time()
    names = [data.eval_split] + ([data.test_split] if report_test else [])
    top1 = offline_linear_eval(encoder, data, strategy, splits=names,
                               backup_dir=linear_eval_backup)
    out['linear_eval_top1'] = top1[0]
    if report_test:
      out['test_linear_eval_top1'] = top1[1]
    out['linear_eval_wall_time_s'] = round(time.time() - start, 1)
  return out
