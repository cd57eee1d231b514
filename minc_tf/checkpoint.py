"""Preemption-safe checkpoints: periodic, atomic, last K kept, resumable mid-epoch.

A checkpoint is a tf.train.Checkpoint of the model (online and target networks, summary
statistic, probe) and its optimizer (slots and step count). TensorFlow writes the data files
under temporary names and renames them, then rewrites the small `checkpoint` index the same
way, so a kill at any moment leaves the previous checkpoint loadable; CheckpointManager keeps
the last K. It works on local disks and gs:// alike, under every strategy.

Under MultiWorkerMirroredStrategy every worker takes part in every save (reading the Keras
metrics' on-read variables is a collective), but only the chief's files are kept: the others
save into a private directory of their own (`save_directory`) and restore from the chief's.
A SIGTERM (or Ctrl-C) on any one worker is agreed on through Google's
PreemptionCheckpointHandler, so that every worker saves at the same step and stops.
"""

import contextlib
import os
import re
import shutil
import signal
import tempfile
import time

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from minc_tf import files
from minc_tf.errors import UserError


class Checkpointer:
  """Saves and restores the training state of `model` in `directory`.

  save_directory: where this process saves, when not `directory` (a multi-worker run's
  non-chief workers: their saves are collective duties, not files to keep). Such a Checkpointer
  never writes to `directory`: it restores the newest of the checkpoint files it finds there.
  Create it under the strategy's scope: `data_seed` is then the chief's on every worker.
  """

  def __init__(self, model, directory, keep=3, save_directory=None):
    self._model = model
    # The input pipeline's random state: every view is a function of (data_seed, example
    # index) and the step fixes the index, so this seed is all a resumed run needs to continue
    # the same stream. Drawn once per run, restored with everything else.
    self.data_seed = tf.Variable(np.random.default_rng().integers(2 ** 31), dtype=tf.int64,
                                 trainable=False, name='data_seed')
    self._ckpt = tf.train.Checkpoint(model=model, optimizer=model.optimizer,
                                     data_seed=self.data_seed)
    self.directory = directory
    self._keep = keep
    self._reader_only = save_directory not in (None, directory)
    self.index_rebuilt = False
    if self._reader_only:
      self._manager = tf.train.CheckpointManager(self._ckpt, save_directory, max_to_keep=1)
    else:
      self._manager = self._open_manager()
    self.damaged = []  # newer checkpoints a restore skipped as unreadable, with the reason

  def _files_on_disk(self):
    """Checkpoint prefixes whose index file is on disk, oldest first (by step)."""
    prefixes = [p[:-len('.index')] for p in tf.io.gfile.glob(
        os.path.join(self.directory, 'ckpt-*.index'))]
    prefixes = [p for p in prefixes if re.search(r'ckpt-\d+$', p)]  # not a stray ckpt-foo
    return sorted(prefixes, key=lambda p: int(re.search(r'ckpt-(\d+)$', p).group(1)))

  def _open_manager(self):
    """A CheckpointManager over `directory`, its `checkpoint` index rebuilt from the files on
    disk when it is damaged, missing or lags behind them (a torn write, a copy without it):
    without that, a finished run would look untrained."""
    try:
      manager = tf.train.CheckpointManager(self._ckpt, self.directory, max_to_keep=self._keep)
      listed = set(manager.checkpoints)
    except Exception as e:  # pylint: disable=broad-except  (text-format errors vary by damage)
      logging.warning('The checkpoint index in %s is unreadable (%s).', self.directory,
                      type(e).__name__)
      manager, listed = None, set()
    self.index_rebuilt = False
    on_disk = self._files_on_disk()
    if on_disk and not set(on_disk) <= listed:
      logging.warning('Rebuilding the checkpoint index of %s from the checkpoint files on disk '
                      '(%s).', self.directory, ', '.join(os.path.basename(p) for p in on_disk))
      index = os.path.join(self.directory, 'checkpoint')
      if tf.io.gfile.exists(index):  # kept for inspection, never deleted
        tf.io.gfile.rename(index, index + f'.damaged-{int(time.time())}', overwrite=True)
      _write_index(self.directory, on_disk)
      self.index_rebuilt = True
      manager = tf.train.CheckpointManager(self._ckpt, self.directory, max_to_keep=self._keep)
    return manager

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
    """Restores the newest readable checkpoint; returns its step (0 when there is none).

    A checkpoint whose files are damaged (torn, truncated) is skipped with a warning, and named
    in `damaged`, and the previous one is tried. A readable checkpoint that does not fit the
    model (another architecture or method) is not damage: that raises a UserError, as does a
    directory whose checkpoints are all unreadable, so a run is never restarted over them.
    """
    self.build_optimizer()
    self.damaged = []
    candidates = self._files_on_disk() if self._reader_only else self._manager.checkpoints
    for path in reversed(candidates):
      try:
        return self.restore(path)
      except (tf.errors.OpError, ValueError, AssertionError, IndexError, OSError) as e:
        error = f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}'
        damage = _damage(path)
        if damage is None:
          raise UserError(
              f'The checkpoint {path} is readable but does not fit the model this '
              f'configuration builds ({error[:300]}): it was written by another configuration. '
              'Fix: rerun with the configuration that wrote it (its config.gin), or use '
              'another --model_dir.') from None
        self.damaged.append((path, damage))
        logging.warning('Checkpoint %s could not be loaded (%s); trying the previous one.',
                        path, damage)
    if self.damaged:
      raise UserError(
          f'No checkpoint in {self.directory} can be read: ' +
          '; '.join(f'{os.path.basename(p)}: {d}' for p, d in self.damaged) +
          ('. The checkpoint index was rebuilt from these files (the old one kept aside); '
           'nothing else was changed.' if self.index_rebuilt else '. Nothing was changed.') +
          ' Fix: restore the files from a backup, or move the directory aside to start the run '
          'over.')
    if required:
      raise UserError(f'No checkpoint in {self.directory}. Fix: train first '
                      '(--mode=train) or point --model_dir at a trained run.')
    return 0


def _write_index(directory, prefixes):
  """Writes the `checkpoint` index (a CheckpointState text proto) listing `prefixes`, oldest
  first, as CheckpointManager writes it: relative paths and save times, which it needs to list
  them (the files' modification times stand in)."""
  times = [tf.io.gfile.stat(p + '.index').mtime_nsec / 1e9 for p in prefixes]
  names = [os.path.basename(p) for p in prefixes]
  lines = [f'model_checkpoint_path: "{names[-1]}"']
  lines += [f'all_model_checkpoint_paths: "{n}"' for n in names]
  lines += [f'all_model_checkpoint_timestamps: {t!r}' for t in times]
  lines.append(f'last_preserved_timestamp: {min(times) - 1.0!r}')
  files.write(os.path.join(directory, 'checkpoint'), '\n'.join(lines) + '\n')


def _damage(path):
  """Why the checkpoint at `path` cannot be read (None when every tensor reads back)."""
  try:
    reader = tf.train.load_checkpoint(path)
    for name in reader.get_variable_to_shape_map():
      reader.get_tensor(name)
  except (tf.errors.OpError, ValueError, OSError, IndexError) as e:
    return f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}'[:300]
  return None


def in_cluster(strategy):
  """Whether `strategy` spans several worker processes (MultiWorkerMirroredStrategy over a
  TF_CONFIG cluster): then saves are collective and a signal must reach every worker."""
  resolver = getattr(strategy, 'cluster_resolver', None)
  return (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and
          resolver is not None and bool(resolver.cluster_spec().jobs))


class ClusterPreemption:
  """Every worker saves at the same step when any one of them is told to stop.

  Google's PreemptionCheckpointHandler does the agreeing: a worker that gets SIGTERM posts its
  step to the cluster's coordination service, every worker reads it and, on reaching it, calls
  `save` and then `stop` (our checkpoint and our way of stopping fit(), instead of its own
  manager and exit). `check()` must run on every worker at the same points (each batch end).
  On platforms where the handler watches no signal (GCE CPU and TPU VMs, where it is a no-op;
  GCE GPU VMs, where it polls the metadata server for maintenance events) `notify` is None.
  """

  def __init__(self, strategy, save, stop):
    # The handler's own checkpoint dir (never written: `save` is ours); a non-chief worker's
    # handler makes a sibling of it, so both lie inside this directory, removed by close().
    self._dir = tempfile.mkdtemp(prefix='minc_tf_preemption_')
    before = signal.getsignal(signal.SIGTERM)
    self._handler = tf.distribute.experimental.PreemptionCheckpointHandler(
        strategy.cluster_resolver, tf.train.Checkpoint(), os.path.join(self._dir, 'unused'),
        tf.distribute.experimental.TerminationConfig(save_fn=save, exit_fn=stop))
    installed = signal.getsignal(signal.SIGTERM)
    self.notify = installed if installed is not before else None  # (signum, frame) -> None

  def check(self):
    self._handler.save_checkpoint_if_preempted()

  def close(self):
    # Stops the handler's thread that waits on the coordination service (its finaliser does,
    # and a thread holding the handler keeps that from running by itself).
    self._handler.__del__()
    shutil.rmtree(self._dir, ignore_errors=True)


class TrainingGuard(keras.callbacks.Callback):
  """Periodic checkpoints, a NaN / Inf guard and a SIGTERM / SIGINT handler.

  It saves a checkpoint every `every_steps` steps or `every_secs` seconds, whichever comes
  first, and at each epoch end, unless the loss has become non-finite: then it stops training
  without saving, so the last good checkpoint stays the newest, and `diverged_at` names the
  step. On SIGTERM (preemption) or SIGINT (Ctrl-C) it saves at the end of the current step and
  stops; `preempted` then names the signal. A second Ctrl-C interrupts at once. With a
  multi-worker `strategy`, a signal on one worker makes every worker save the same step and
  stop (ClusterPreemption); `every_secs` must then be None (each worker has its own clock).
  """

  def __init__(self, checkpointer, every_steps=1000, every_secs=None, strategy=None):
    super().__init__()
    self._ckpt = checkpointer
    self._every = max(int(every_steps), 1) if every_steps else None
    self._every_secs = every_secs
    self._last_saved = None
    self._last_saved_time = None
    self._signal = None
    self.preempted = None
    self.diverged_at = None
    self._previous_handlers = {}
    self._held = False
    self._strategy = strategy
    self._cluster = None

  @contextlib.contextmanager
  def catching_signals(self):
    """Takes SIGTERM and SIGINT for the whole block (several fit() calls and the time between
    them), not just within each fit()."""
    self._install()
    self._held = True
    try:
      yield self
    finally:
      self._held = False
      self._restore()

  def _install(self):
    if self._previous_handlers or self._cluster is not None:
      return
    signals = (signal.SIGTERM, signal.SIGINT)
    if in_cluster(self._strategy):
      before = signal.getsignal(signal.SIGTERM)
      self._cluster = ClusterPreemption(self._strategy, save=self._save,
                                        stop=self._stop_with_cluster)
      if self._cluster.notify is not None:
        self._previous_handlers[signal.SIGTERM] = before  # the handler's own takes SIGTERM
        signals = (signal.SIGINT,)
      else:
        logging.warning('Multi-worker run on a platform where PreemptionCheckpointHandler '
                        'watches no signal: a SIGTERM or Ctrl-C must reach every worker.')
    for sig in signals:
      try:
        self._previous_handlers[sig] = signal.signal(sig, self._on_signal)
      except ValueError:  # not the main thread: no handler, periodic checkpoints still run.
        pass

  def _restore(self):
    for sig, handler in self._previous_handlers.items():
      signal.signal(sig, handler)
    self._previous_handlers = {}
    if self._cluster is not None:
      self._cluster.close()
      self._cluster = None

  def _on_signal(self, signum, frame):
    if self._signal == signal.SIGINT and signum == signal.SIGINT:
      raise KeyboardInterrupt  # a second Ctrl-C: the user will not wait for the step
    self._signal = signum
    if self._cluster is not None and self._cluster.notify is not None:
      self._cluster.notify(signum, frame)  # Ctrl-C as a preemption notice to the cluster

  def _stop_with_cluster(self):
    """ClusterPreemption's stop: every worker has saved this step."""
    self.preempted = (signal.Signals(self._signal).name if self._signal is not None else
                      'SIGTERM on another worker')
    self.model.stop_training = True

  def _save(self):
    self._ckpt.save()
    self._last_saved = self._ckpt.step
    self._last_saved_time = time.time()

  def on_train_begin(self, logs=None):
    self._last_saved = self._ckpt.step
    self._last_saved_time = time.time()
    self._install()

  def on_train_batch_end(self, batch, logs=None):
    logs = logs or {}
    watched = [logs[k] for k in ('loss', 'probe_loss') if logs.get(k) is not None]
    if not all(np.isfinite(np.asarray(v, np.float64)).all() for v in watched):
      self.diverged_at = self._ckpt.step
      self.model.stop_training = True
      return
    step = self._ckpt.step
    if self._cluster is not None:
      self._cluster.check()  # may save and stop, on every worker at once
      if self.preempted:
        return
    if self._signal is not None and (self._cluster is None or self._cluster.notify is None):
      self._save()
      self.preempted = signal.Signals(self._signal).name
      self.model.stop_training = True
      return
    if ((self._every and step - self._last_saved >= self._every) or
        (self._every_secs and time.time() - self._last_saved_time >= self._every_secs)):
      self._save()

  def on_epoch_end(self, epoch, logs=None):
    if self.diverged_at is None and not self.preempted and self._ckpt.step != self._last_saved:
      self._save()

  def on_train_end(self, logs=None):
    if not self._held:
      self._restore()
