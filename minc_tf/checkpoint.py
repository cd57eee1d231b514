"""Preemption-safe checkpoints: periodic, atomic, last K kept, resumable mid-epoch.

A checkpoint is a tf.train.Checkpoint of the model (online and target networks, summary
statistic, probe) and its optimizer (slots and step count). TensorFlow writes the data files
under temporary names and renames them, then rewrites the small `checkpoint` index the same
way, so a kill at any moment leaves the previous checkpoint loadable; CheckpointManager keeps
the last K. It works on local disks and gs:// alike, under every strategy.
"""

import signal

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from minc_tf.errors import UserError


class Checkpointer:
  """Saves and restores the training state of `model` in `directory`."""

  def __init__(self, model, directory, keep=3):
    self._model = model
    # The input pipeline's random state: every view is a function of (data_seed, example
    # index) and the step fixes the index, so this seed is all a resumed run needs to continue
    # the same stream. Drawn once per run, restored with everything else.
    self.data_seed = tf.Variable(np.random.default_rng().integers(2 ** 31), dtype=tf.int64,
                                 trainable=False, name='data_seed')
    self._ckpt = tf.train.Checkpoint(model=model, optimizer=model.optimizer,
                                     data_seed=self.data_seed)
    self._manager = tf.train.CheckpointManager(self._ckpt, directory, max_to_keep=keep)
    self.directory = directory

  def build_optimizer(self):
    """Creates the optimizer's slots for the online variables, in that order: checkpoints
    store slots by position, so a fresh run and a restore must build them alike (and slots must
    exist before their values can be restored into them)."""
    if not self._model.optimizer.built:
      self._model.optimizer.build(self._model.online_variables)

  @property
  def step(self):
    return int(self._model.optimizer.iterations.numpy())

  def save(self):
    path = self._manager.save(checkpoint_number=self.step)
    logging.info('Saved checkpoint %s', path)
    return path

  @property
  def paths(self):
    return list(self._manager.checkpoints)

  def restore(self, path):
    """Restores one checkpoint (every saved object must match); returns its step."""
    self.build_optimizer()
    self._ckpt.restore(path).assert_existing_objects_matched()
    logging.info('Restored %s (step %d)', path, self.step)
    return self.step

  def restore_latest(self, required=False):
    """Restores the newest loadable checkpoint; returns its step (0 when there is none).

    A checkpoint that fails to load (torn or corrupted files) is skipped with a warning and the
    previous one is tried.
    """
    self.build_optimizer()
    for path in reversed(self._manager.checkpoints):
      try:
        return self.restore(path)
      except (tf.errors.OpError, ValueError, AssertionError, IndexError, OSError) as e:
        # A torn or corrupted file surfaces as any of these, depending on where it broke.
        logging.warning('Checkpoint %s could not be loaded (%s: %s); trying the previous one.',
                        path, type(e).__name__, str(e).splitlines()[0] if str(e) else '')
    if required:
      raise UserError(f'No loadable checkpoint in {self.directory}. Fix: train first '
                      '(--mode=train) or point --model_dir at a trained run.')
    return 0


class TrainingGuard(keras.callbacks.Callback):
  """Periodic checkpoints, a NaN / Inf guard and a SIGTERM (preemption) handler.

  Every `every_steps` steps and at each epoch end it saves a checkpoint, unless the loss has
  become non-finite: then it stops training without saving, so the last good checkpoint stays
  the newest, and `diverged_at` names the step. On SIGTERM it saves at the end of the current
  step and stops; `preempted` is then True.
  """

  def __init__(self, checkpointer, every_steps=1000):
    super().__init__()
    self._ckpt = checkpointer
    self._every = max(int(every_steps), 1)
    self._last_saved = None
    self._sigterm = False
    self.preempted = False
    self.diverged_at = None
    self._previous_handler = None

  def on_train_begin(self, logs=None):
    self._last_saved = self._ckpt.step
    try:
      self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
    except ValueError:  # not the main thread: no handler, periodic checkpoints still run.
      self._previous_handler = None

  def _on_sigterm(self, signum, frame):
    del signum, frame
    self._sigterm = True

  def on_train_batch_end(self, batch, logs=None):
    logs = logs or {}
    watched = [logs[k] for k in ('loss', 'probe_loss') if logs.get(k) is not None]
    if not all(np.isfinite(np.asarray(v, np.float64)).all() for v in watched):
      self.diverged_at = self._ckpt.step
      self.model.stop_training = True
      return
    step = self._ckpt.step
    if self._sigterm:
      self._ckpt.save()
      self._last_saved = step
      self.preempted = True
      self.model.stop_training = True
    elif step - self._last_saved >= self._every:
      self._ckpt.save()
      self._last_saved = step

  def on_epoch_end(self, epoch, logs=None):
    if self.diverged_at is None and not self.preempted and self._ckpt.step != self._last_saved:
      self._ckpt.save()
      self._last_saved = self._ckpt.step

  def on_train_end(self, logs=None):
    if self._previous_handler is not None:
      signal.signal(signal.SIGTERM, self._previous_handler)
