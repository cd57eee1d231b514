"""TensorBoard monitoring beyond Keras' own callback: what tells a run is healthy.

Scalars every `every_steps` steps: learning rate, target tau, images/s, and for MINC the
effective rank and leading eigenvalues of the summary matrix; every `rank_every_steps` steps the
effective rank of the encoder's features on a fixed batch of evaluation images (collapse shows
as a falling rank); at the start, a few augmented view pairs as images and the operative gin
config as text; weight histograms each epoch. Keras' TensorBoard callback writes the losses
(and their attract / repel terms) and the online probe accuracy beside these.

The same scalars go to a curves file (JSON, rewritten atomically at each epoch end and kept
across a resumed run) from which plots.py draws the run's PNG.
"""

import json
import os
import time

import keras
import numpy as np
import tensorflow as tf

from minc_tf import model as model_lib


def _scalar(value):
  """A logged value as a float; multi-worker logs carry a leading axis of 1."""
  return float(np.asarray(value).reshape(-1)[0])


def feature_effective_rank(features):
  """Effective rank of a [n, d] feature matrix: of the singular values of the centred matrix
  (RankMe, Garrido et al. 2023). Not the eigenvalues of the covariance (their squares); the
  MINC summary's rank, `summary/eigenvalue_effective_rank`, is of its eigenvalues."""
  f = np.asarray(features, np.float64)
  return effective_rank(np.linalg.svd(f - f.mean(0, keepdims=True), compute_uv=False))


def effective_rank(eigenvalues):
  """exp(entropy) of the normalised spectrum (Roy & Vetterli 2007); k for a flat spectrum."""
  p = np.clip(np.asarray(eigenvalues, np.float64), 0.0, None)
  p = p / max(p.sum(), 1e-12)
  p = p[p > 0]
  return float(np.exp(-np.sum(p * np.log(p))))


class TensorBoard(keras.callbacks.TensorBoard):
  """Keras' TensorBoard callback with batch-level steps that continue across resumed runs.

  Keras counts batches from 0 in every fit() call, so a resumed run would draw its curve over
  the previous one; the optimizer's step count is the true x-axis.
  """

  def on_train_begin(self, logs=None):
    super().on_train_begin(logs)
    self._global_train_batch = int(self.model.optimizer.iterations.numpy())


class Monitor(keras.callbacks.Callback):
  """Writes the extra TensorBoard summaries to <log_dir>/monitor."""

  def __init__(self, log_dir, global_batch_size, every_steps=100, view_pairs=None,
               config_text=None, histograms=True, num_eigenvalues=8, rank_images=None,
               rank_every_steps=None, curves_path=None):
    super().__init__()
    self._rank_images = rank_images
    self._rank_every = rank_every_steps
    self._curves_path = curves_path
    self.curves = {}  # name -> [[step, value], ...]
    self._writer = tf.summary.create_file_writer(os.path.join(log_dir, 'monitor'))
    self._batch = global_batch_size
    self._every = max(int(every_steps), 1)
    self._view_pairs = view_pairs
    self._config_text = config_text
    self._histograms = histograms
    self._num_eig = num_eigenvalues
    self._last = None

  def _step(self):
    return int(self.model.optimizer.iterations.numpy())

  def _record(self, name, step, value):
    value = _scalar(value)
    self.curves.setdefault(name, []).append([step, value])
    tf.summary.scalar(name, value)

  def _load_curves(self, step):
    """The curves of earlier runs in this model dir, up to the step this run resumes from."""
    if not self._curves_path or not tf.io.gfile.exists(self._curves_path):
      return {}
    with tf.io.gfile.GFile(self._curves_path) as f:
      old = json.load(f)
    return {k: [p for p in v if p[0] <= step] for k, v in old.items()}

  def save_curves(self):
    if not self._curves_path:
      return
    tmp = self._curves_path + '.tmp'
    with tf.io.gfile.GFile(tmp, 'w') as f:
      json.dump(self.curves, f)
    tf.io.gfile.rename(tmp, self._curves_path, overwrite=True)

  def _feature_rank(self, step):
    if self._rank_images is None:
      return
    feats = [np.asarray(self.model.encoder(self._rank_images[i:i + 256], training=False))
             for i in range(0, len(self._rank_images), 256)]
    self._record('feature_effective_rank', step, feature_effective_rank(np.concatenate(feats)))

  def on_train_begin(self, logs=None):
    step = self._step()
    self.curves = self._load_curves(step)
    with self._writer.as_default(step=step):
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

  def on_train_batch_end(self, batch, logs=None):
    step = self._step()
    if self._rank_every and step % self._rank_every == 0:
      with self._writer.as_default(step=step):
        self._feature_rank(step)
    if step % self._every:
      return
    model = self.model
    now = time.time()
    with self._writer.as_default(step=step):
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
      summary = model.summary.numpy().astype(np.float64)
      # A NaN step is the guard's to report; its summary has no spectrum.
      if (model.method == 'minc' and float(model.summary_steps.numpy()) > 0 and
          np.isfinite(summary).all()):
        decay = model.summary_decay
        if decay > 0:
          summary /= 1.0 - decay ** float(model.summary_steps.numpy())
        eig = np.sort(np.linalg.eigvalsh((summary + summary.T) / 2))[::-1]
        self._record('summary/eigenvalue_effective_rank', step, effective_rank(eig))
        for i, value in enumerate(eig[:self._num_eig]):
          tf.summary.scalar(f'summary/eigenvalue_{i}', float(value))
    self._last = (now, step)

  def on_epoch_end(self, epoch, logs=None):
    step = self._step()
    for name, value in (logs or {}).items():
      self.curves.setdefault(f'epoch/{name}', []).append(
          [step, _scalar(value)])
    if not self._rank_every:
      with self._writer.as_default(step=step):
        self._feature_rank(step)
    self.save_curves()
    if not self._histograms:
      return
    with self._writer.as_default(step=step):
      for w in self.model.encoder.trainable_weights + self.model.projector.trainable_weights:
        tf.summary.histogram(w.path, w.numpy())
    self._writer.flush()

  def on_train_end(self, logs=None):
    self.save_curves()
    self._writer.flush()
