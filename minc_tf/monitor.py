"""TensorBoard monitoring beyond Keras' own callback: what tells a run is healthy.

Scalars every `every_steps` steps (at the first batch end at or after each multiple, when Keras
runs several steps per call): learning rate, target tau, images/s, and for MINC the
effective rank and leading eigenvalues of the summary matrix; every `rank_every_steps` steps the
effective rank of the encoder's features on a fixed batch of evaluation images (collapse shows
as a falling rank); at the start, a few augmented view pairs as images and the operative gin
config as text; weight histograms each epoch. Keras' TensorBoard callback writes the losses
(and their attract / repel terms) and the online probe accuracy beside these.

The same scalars go to a curves file (JSON, rewritten atomically at each epoch end and kept
across a resumed run) from which plots.py draws the run's PNG.
"""

import contextlib
import json
import os
import time

import keras
import numpy as np
import tensorflow as tf
from tensorboard.plugins.hparams import api as hp

from minc_tf import evaluate
from minc_tf import files
from minc_tf import gin_internals
from minc_tf import keras_internals
from minc_tf import model as model_lib
from minc_tf import schema
from minc_tf import spectrum


# results.json figures a run's HParams carry as metrics, written as `results/<name>` scalars.
HPARAM_METRICS = schema.HPARAM_METRICS


def _scalar(value):
  """A logged value as a float; multi-worker logs carry a leading axis of 1."""
  return float(np.asarray(value).reshape(-1)[0])


def writing(writer, step):
  """`writer` as the default at `step`, recording whatever Keras' callback has installed.

  Keras' TensorBoard callback with an integer update_freq installs a thread-wide
  `tf.summary.record_if(step % update_freq == 0)` for the whole of fit(), of its last batch's
  step: without this, a summary written at any other step (every epoch end whose step is not a
  multiple of the cadence, the feature rank) is silently dropped.
  """
  stack = contextlib.ExitStack()
  stack.enter_context(writer.as_default(step=step))
  stack.enter_context(tf.summary.record_if(True))
  return stack


# Keras' TensorBoard callback on the optimizer's step (it overrides Keras internals, so it lives
# with the others).
TensorBoard = keras_internals.StepTensorBoard


class Monitor(keras.callbacks.Callback):
  """Writes the extra TensorBoard summaries to <log_dir>/monitor."""

  def __init__(self, log_dir, global_batch_size, every_steps=100, view_pairs=None,
               config_text=None, histograms=True, num_eigenvalues=8, rank_images=None,
               rank_every_steps=None, curves_path=None, curves_from=None):
    super().__init__()
    self._rank_images = rank_images
    self._rank_every = rank_every_steps
    self._curves_path = curves_path
    # Where earlier runs' curves are read: curves_path, or the chief's file on a multi-worker
    # run's other workers, so that every worker decides alike (the feature rank at the start
    # is a collective).
    self._curves_from = curves_from or curves_path
    self._loaded = False
    self.curves = {}  # name -> [[step, value], ...]
    self._writer = tf.summary.create_file_writer(os.path.join(log_dir, 'monitor'))
    self._batch = global_batch_size
    self._every = max(int(every_steps), 1)
    self._view_pairs = view_pairs
    self._config_text = config_text
    self._histograms = histograms
    self._num_eig = num_eigenvalues
    self._last = None
    self._last_batch_step = 0
    self._rank_ds = None
    self._embed = {}  # extract_features' traced function, kept for this run

  def _step(self):
    return int(self.model.optimizer.iterations.numpy())

  @staticmethod
  def _crossed(step, last, every):
    """Whether the steps after `last` up to `step` include a multiple of `every`: a cadence
    that works when callbacks see only every steps_per_execution-th step."""
    return bool(every) and step // every > last // every

  def _record(self, name, step, value):
    value = _scalar(value)
    self.curves.setdefault(name, []).append([step, value])
    tf.summary.scalar(name, value)

  def _load_curves(self, step):
    """The curves of earlier runs in this model dir, up to the step this run resumes from."""
    if not self._curves_from or not tf.io.gfile.exists(self._curves_from):
      return {}
    with tf.io.gfile.GFile(self._curves_from) as f:
      old = json.load(f)
    return {k: [p for p in v if p[0] <= step] for k, v in old.items()}

  def save_curves(self):
    if not self._curves_path:
      return
    files.write(self._curves_path, json.dumps(self.curves))

  def _feature_rank(self, step):
    if self._rank_images is None:
      return
    # On the strategy's replicas (a TPU's cores, every worker of a multi-worker run), as the
    # evaluation extracts its features, not eagerly on the host.
    strategy = self.model.distribute_strategy
    if self._rank_ds is None:  # built once: the images are copied into it once
      images = self._rank_images
      replicas = strategy.num_replicas_in_sync
      batch = max(min(256, len(images)) // replicas, 1) * replicas
      self._rank_ds = tf.data.Dataset.from_tensor_slices(
          (images, np.zeros(len(images), np.int64))).batch(batch)
    feats, _ = evaluate.extract_features(self.model.encoder, self._rank_ds, strategy,
                                         cache=self._embed)
    self._record('feature_effective_rank', step, spectrum.feature_effective_rank(feats))

  def on_train_begin(self, logs=None):
    step = self._step()
    if not self._loaded:  # once: a resumed run's second fit() keeps what the first had
      self.curves, self._loaded = self._load_curves(step), True
    with writing(self._writer, step):
      if not self.curves.get('feature_effective_rank'):
        self._feature_rank(step)
      if self._config_text:
        tf.summary.text('gin_config', '```\n' + self._config_text + '\n```')
      if self._view_pairs is not None:
        v1, v2 = (np.asarray(v, np.float32) for v in self._view_pairs)
        pairs = np.concatenate([v1, v2], axis=2)  # side by side
        lo = pairs.min(axis=(1, 2, 3), keepdims=True)
        hi = pairs.max(axis=(1, 2, 3), keepdims=True)
        tf.summary.image('view_pairs', (pairs - lo) / np.maximum(hi - lo, 1e-6), max_outputs=8)
    self._writer.flush()
    self._last = (time.time(), step)
    self._last_batch_step = step

  def on_epoch_begin(self, epoch, logs=None):
    self._epoch_start = self._step()  # read once an epoch, counted from there (see guard)

  def on_train_batch_end(self, batch, logs=None):
    step = self._epoch_start + batch + 1
    last, self._last_batch_step = self._last_batch_step, step
    if self._crossed(step, last, self._rank_every):
      with writing(self._writer, step):
        self._feature_rank(step)
    if not self._crossed(step, last, self._every):
      return
    model = self.model
    now = time.time()
    with writing(self._writer, step):
      for name, value in (logs or {}).items():  # running means over the epoch so far
        self.curves.setdefault(f'train/{name}', []).append(
            [step, _scalar(value)])
      self._record('learning_rate', step, np.asarray(model.optimizer.learning_rate))
      if model.target_encoder is not None:
        self._record('target_tau', step, float(model_lib.target_tau(
            step, model.total_steps, model.tau_base)))
      if self._last is not None and step > self._last[1]:
        self._record('images_per_s', step, (step - self._last[1]) * self._batch /
                     max(now - self._last[0], 1e-9))
      for tag, value in model.method.diagnostics(self._num_eig).items():
        self._record(tag, step, value)
    self._last = (now, step)

  def on_epoch_end(self, epoch, logs=None):
    step = self._step()
    for name, value in (logs or {}).items():
      self.curves.setdefault(f'epoch/{name}', []).append(
          [step, _scalar(value)])
    if not self._rank_every:
      with writing(self._writer, step):
        self._feature_rank(step)
    self.save_curves()
    if not self._histograms:
      return
    with writing(self._writer, step):
      for part in ('encoder', 'projector'):  # variable paths are only unique within each
        for w in getattr(self.model, part).trainable_weights:
          tf.summary.histogram(f'{part}/{w.path}', w.numpy())
    self._writer.flush()

  def on_train_end(self, logs=None):
    self.save_curves()
    self._writer.flush()


def binding_key(binding):
  """'build_model.summary_decay' for a gin binding 'build_model.summary_decay = 0.9' (or its
  module-qualified or scoped spelling, the scope kept): the key HParams use for a setting."""
  lhs = binding.split('=', 1)[0].strip()
  scope, _, selector = lhs.rpartition('/')
  key = '.'.join(selector.split('.')[-2:])
  return f'{scope}/{key}' if scope else key


def gin_hparams():
  """Every parameter of every configurable this run has called, bound or default, as HParams
  values (bool, int, float or str; other values as text), keyed like `binding_key`."""
  return {binding_key(k): schema.record_value(v)
          for k, v in gin_internals.operative_values().items()}


def write_hparams(log_dir, results, step=0, session=True):
  """The run's settings (gin_hparams; session=False leaves them as recorded) and its results
  figures (HPARAM_METRICS) for TensorBoard's HParams dashboard, to <log_dir>/hparams: one
  session per run dir, its metrics beside it."""
  writer = tf.summary.create_file_writer(os.path.join(log_dir, 'hparams'))
  with writing(writer, step):
    if session:
      hp.hparams(gin_hparams())
    for name in HPARAM_METRICS:
      value = results.get(name)
      if isinstance(value, (int, float)) and not isinstance(value, bool):
        tf.summary.scalar(f'results/{name}', float(value))
  writer.close()


def write_hparams_config(log_dir, keys):
  """The HParams experiment of a study at its root: the settings `keys` it varies (columns of
  the dashboard) and the results figures as metrics."""
  writer = tf.summary.create_file_writer(log_dir)
  with writing(writer, 0):
    hp.hparams_config(hparams=[hp.HParam(k) for k in keys],
                      metrics=[hp.Metric(f'results/{m}', display_name=m)
                               for m in HPARAM_METRICS])
  writer.close()
