"""TensorBoard monitoring beyond Keras' own callback: what tells a run is healthy.

Scalars every `every_steps` steps: learning rate, target tau, images/s, and for MINC the
effective rank and leading eigenvalues of the summary matrix; at the start, a few augmented view
pairs as images and the operative gin config as text; weight histograms each epoch. Keras'
TensorBoard callback writes the losses and probe accuracy beside these.
"""

import os
import time

import keras
import numpy as np
import tensorflow as tf

from minc_tf import model as model_lib


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
               config_text=None, histograms=True, num_eigenvalues=8):
    super().__init__()
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

  def on_train_begin(self, logs=None):
    step = self._step()
    with self._writer.as_default(step=step):
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
    if step % self._every:
      return
    model = self.model
    now = time.time()
    with self._writer.as_default(step=step):
      lr = model.optimizer.learning_rate
      tf.summary.scalar('learning_rate', float(np.asarray(lr)))
      if model.target_encoder is not None:
        tf.summary.scalar('target_tau', float(model_lib.target_tau(
            step, model.total_steps, model.tau_base)))
      if self._last is not None and step > self._last[1]:
        tf.summary.scalar('images_per_s', (step - self._last[1]) * self._batch /
                          max(now - self._last[0], 1e-9))
      summary = model.summary.numpy().astype(np.float64)
      # A NaN step is the guard's to report; its summary has no spectrum.
      if (model.method == 'minc' and float(model.summary_steps.numpy()) > 0 and
          np.isfinite(summary).all()):
        decay = model.summary_decay
        if decay > 0:
          summary /= 1.0 - decay ** float(model.summary_steps.numpy())
        eig = np.sort(np.linalg.eigvalsh((summary + summary.T) / 2))[::-1]
        tf.summary.scalar('summary/effective_rank', effective_rank(eig))
        for i, value in enumerate(eig[:self._num_eig]):
          tf.summary.scalar(f'summary/eigenvalue_{i}', float(value))
    self._last = (now, step)

  def on_epoch_end(self, epoch, logs=None):
    if not self._histograms:
      return
    with self._writer.as_default(step=self._step()):
      for w in self.model.encoder.trainable_weights + self.model.projector.trainable_weights:
        tf.summary.histogram(w.path, w.numpy())
    self._writer.flush()

  def on_train_end(self, logs=None):
    self._writer.flush()
