"""Preemption-safe checkpoints: periodic, atomic, last K kept, resumable mid-epoch.

A checkpoint is a tf.train.Checkpoint of the model (online and target networks, summary
statistic, probe) and its optimizer (slots and step count). TensorFlow writes the data files
under temporary names and renames them, then rewrites the small `checkpoint` index the same
way, so a kill at any moment leaves the previous checkpoint loadable; CheckpointManager keeps
the last K. It works on local disks and gs:// alike, under every strategy.

Under MultiWorkerMirroredStrategy every worker takes part in every save (reading the Keras
metrics' on-read variables is a collective), but only the chief's files are kept: the others
save into a private directory of their own (`save_directory`) and restore from the chief's.
A SIGTERM (or Ctrl-C) on any one worker is shared with all of them at the next batch end
(ClusterSignal), so that every worker saves the same step and stops.
"""

import contextlib
import os
import re
import signal
import time

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from minc_tf import files
from minc_tf import keras_internals
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

  def _candidates(self):
    """The checkpoints a restore tries, oldest first: the chief's index (its save order);
    a worker that only reads uses the same index, or the files when there is none."""
    if not self._reader_only:
      return list(self._manager.checkpoints)
    try:
      state = tf.train.get_checkpoint_state(self.directory)
    except Exception:  # pylint: disable=broad-except  (a damaged index: the files instead)
      state = None
    if state is not None and state.all_model_checkpoint_paths:
      return [p if os.path.isabs(p) or '://' in p else os.path.join(self.directory, p)
              for p in state.all_model_checkpoint_paths]
    return self._files_on_disk()

  def newest_step(self):
    """The step of the newest checkpoint a restore would try first (0: none)."""
    candidates = self._candidates()
    return int(re.search(r'ckpt-(\d+)$', candidates[-1]).group(1)) if candidates else 0

  def restore(self, path):
    """Restores one checkpoint (every saved object must match); returns its step."""
    self.build_optimizer()
    status = self._root_for(path).restore(path)
    status.assert_existing_objects_matched()
    # Values the model no longer has (a non-MINC checkpoint's old, never-updated summary) are
    # allowed; this only silences TensorFlow's warning about them at exit.
    status.expect_partial()
    logging.info('Restored %s (step %d)', path, self.step)
    return self.step

  def _root_for(self, path):
    """The checkpoint root that reads `path`: today's, or for a checkpoint written before a
    method held its own state (MINC's summary was model/summary), one whose model has the
    method's variables under their old names (Method.LEGACY_CHECKPOINT_NAMES)."""
    method = getattr(self._model, 'method', None)
    legacy = getattr(method, 'LEGACY_CHECKPOINT_NAMES', {})
    # Only a model whose method state is all in the map (old checkpoints had nothing else):
    # with more (a queue, a horizon's weight), the usual restore refuses the old checkpoint.
    if not legacy or {v.name for v in method.weights} != set(legacy):
      return self._ckpt
    # Not tf.train.load_checkpoint: on ram:// it takes the prefix for a directory.
    reader = tf.compat.v1.train.NewCheckpointReader(path)
    if not all(reader.has_tensor(f'model/{old}/.ATTRIBUTES/VARIABLE_VALUE')
               for old in legacy.values()):
      return self._ckpt
    # The method's variables read the old keys, everything else its usual ones; the assertion
    # in restore() still demands that every object of the model finds its value.
    changes = {'method': None}
    changes.update({old: getattr(method, new) for new, old in legacy.items()})
    model_view = keras_internals.checkpoint_view(self._model, changes)
    return tf.train.Checkpoint(model=model_view, optimizer=self._model.optimizer,
                               data_seed=self.data_seed)

  def restore_latest(self, required=False):
    """Restores the newest readable checkpoint; returns its step (0 when there is none).

    A checkpoint whose files are damaged (torn, truncated) is skipped with a warning, and named
    in `damaged`, and the previous one is tried. A readable checkpoint that does not fit the
    model (another architecture or method) is not damage: that raises a UserError, as does a
    directory whose checkpoints are all unreadable, so a run is never restarted over them.
    """
    self.build_optimizer()
    self.damaged = []
    for path in reversed(self._candidates()):
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
    # Not tf.train.load_checkpoint: on ram:// it takes the prefix for a directory.
    reader = tf.compat.v1.train.NewCheckpointReader(path)
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


def replica_sum(strategy):
  """values -> their sum over all replicas of `strategy` (float32 vectors; each worker passes
  its own, counted once per replica it holds). A collective: every worker must call it."""

  @tf.function
  def total(values):
    # tf.identity places the value on the replica's device (an argument has none, and a
    # reduction needs one to reduce to).
    return strategy.run(lambda v: tf.distribute.get_replica_context().all_reduce(
        tf.distribute.ReduceOp.SUM, tf.identity(v)), args=(values,))

  def call(values):
    out = total(tf.constant(values, tf.float32))
    return strategy.experimental_local_results(out)[0].numpy()

  return call


def check_same_step(strategy, step, directory):
  """Stops every worker of a multi-worker run whose workers would restore different steps (a
  model dir each worker sees differently: local disks instead of shared storage). Before the
  restore: restoring is itself collective, and different checkpoints break it."""
  total = replica_sum(strategy)
  replicas = strategy.num_replicas_in_sync
  parts = divmod(int(step), 4096)  # float32 sums stay exact: each part is small
  differs = any(t != replicas * p for t, p in zip(total(list(parts)), parts))
  if total([float(differs)])[0] > 0:
    raise UserError(f'The workers of this run see different checkpoints in {directory} '
                    f'(this worker: step {step}); the model dir must be storage every worker '
                    'reads alike (or a worker found a checkpoint damaged that another read: its '
                    'log names it). Fix: pass a --model_dir on gs:// or a shared file system, '
                    'the same on every worker.')


def agree_on_error(strategy, error):
  """Raises, on every worker of a multi-worker run, when any worker met an error (`error`: this
  worker's exception, or None; re-raised here): a worker that stopped alone would leave the
  others waiting in their next collective."""
  failed = replica_sum(strategy)([float(error is not None)])[0] > 0
  if error is not None:
    raise error
  if failed:
    raise UserError('Another worker of this run stopped with an error (its log names it); '
                    'this one stopped with it.')


class ClusterSignal:
  """Whether any worker of a multi-worker run has been signalled, agreed on by all of them.

  `agree(signum)` is a collective: every worker calls it at the same points (each batch end),
  with the signal it received (None: none), and all get the same answer (SIGTERM if any worker
  got one, else SIGINT if any did, else None), so they all save the same step and stop
  together, whichever worker was told. One small all-reduce per call, plain tf.distribute
  (TensorFlow's PreemptionCheckpointHandler, which agrees through the coordination service,
  does not watch SIGTERM on GCE VMs, and its keys serve one preemption per process).
  """
  SIGNALS = (signal.SIGTERM, signal.SIGINT)  # in order of precedence

  def __init__(self, strategy):
    self._total = replica_sum(strategy)

  def agree(self, signum):
    counts = self._total([float(signum == s) for s in self.SIGNALS])
    return next((s for s, n in zip(self.SIGNALS, counts) if n > 0), None)


class TrainingGuard(keras.callbacks.Callback):
  """Periodic checkpoints, a NaN / Inf guard and a SIGTERM / SIGINT handler.

  It saves a checkpoint once `every_steps` steps or `every_secs` seconds have passed since the
  last, whichever comes first (checked once per execution of steps_per_execution steps), and at
  each epoch end, unless the loss has become non-finite: then it stops training
  without saving, so the last good checkpoint stays the newest, and `diverged_at` names the
  step. On SIGTERM (preemption) or SIGINT (Ctrl-C) it saves at the end of the current step and
  stops; `preempted` then names the signal. A second Ctrl-C interrupts at once. With a
  multi-worker `strategy`, a signal on one worker makes every worker save the same step and
  stop (ClusterSignal); `every_secs` must then be None (each worker has its own clock).
  """

  def __init__(self, checkpointer, every_steps=1000, every_secs=None, strategy=None,
               max_weight_growth=1e4):
    super().__init__()
    self._ckpt = checkpointer
    self._max_growth = max_weight_growth
    self._norm0 = None
    self.divergence = None  # what diverged: the loss, or the weights' norm
    self._every = max(int(every_steps), 1) if every_steps else None
    self._every_secs = every_secs
    self._last_saved = None
    self._last_saved_time = None
    self._signal = None
    self.preempted = None
    self.diverged_at = None
    self._previous_handlers = {}
    self._held = False
    self._cluster = ClusterSignal(strategy) if in_cluster(strategy) else None
    if self._cluster is not None and every_secs:
      raise ValueError('every_secs under a multi-worker strategy: each worker would save at '
                       'another step (its own clock) and the saves are collective.')

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
    if self._previous_handlers:
      return
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous_handlers[sig] = signal.signal(sig, self._on_signal)
      except ValueError:  # not the main thread: no handler, periodic checkpoints still run.
        pass

  def _restore(self):
    for sig, handler in self._previous_handlers.items():
      signal.signal(sig, handler)
    self._previous_handlers = {}

  def _on_signal(self, signum, frame):
    del frame
    if self._signal == signal.SIGINT and signum == signal.SIGINT:
      raise KeyboardInterrupt  # a second Ctrl-C: the user will not wait for the step
    self._signal = signum

  def _weight_norm(self):
    variables = getattr(self.model, 'online_variables', None) or self.model.trainable_weights
    return float(np.sqrt(sum(np.sum(np.square(np.asarray(v.numpy(), np.float64)))
                             for v in variables)))

  def _save(self, step):
    """Saves, unless the weights have blown up (then it stops training, as for a NaN)."""
    norm = self._weight_norm()
    if not np.isfinite(norm) or (self._max_growth and self._norm0 and
                                 norm > self._max_growth * self._norm0):
      self.diverged_at = step
      self.divergence = (f'the weights blew up (their norm is {norm:.3g}, '
                         f'{norm / self._norm0:.3g} times its {self._norm0:.3g} at the start)'
                         if np.isfinite(norm) else 'the weights became NaN or infinite')
      self.model.stop_training = True
      return
    self._ckpt.save()
    self._last_saved = self._ckpt.step
    self._last_saved_time = time.time()

  def on_train_begin(self, logs=None):
    if self._norm0 is None:  # the first fit() of a run (a resumed run: its restored weights)
      self._norm0 = self._weight_norm()
    self._last_saved = self._ckpt.step
    self._last_saved_time = time.time()
    self._install()

  def on_epoch_begin(self, epoch, logs=None):
    # The step is read from the device once an epoch and counted from there: Keras calls
    # on_train_batch_end once per execution (steps_per_execution steps), with the epoch's
    # index of its last step, and its logs are the one read of the loss per execution.
    self._epoch_start = self._ckpt.step

  def on_train_batch_end(self, batch, logs=None):
    logs = logs or {}
    step = self._epoch_start + batch + 1
    watched = [logs[k] for k in ('loss', 'probe_loss') if logs.get(k) is not None]
    if not all(np.isfinite(np.asarray(v, np.float64)).all() for v in watched):
      self.diverged_at = step
      self.divergence = 'the loss became NaN or infinite'
      self.model.stop_training = True
      return
    signum = self._signal
    if self._cluster is not None:  # every worker learns of a signal to any one of them
      signum = self._cluster.agree(self._signal)
    if signum is not None:
      self._save(step)
      if self.diverged_at is not None:
        return
      self.preempted = signal.Signals(signum).name + (
          '' if self._signal == signum else ' on another worker')
      self.model.stop_training = True
      return
    if ((self._every and step - self._last_saved >= self._every) or
        (self._every_secs and time.time() - self._last_saved_time >= self._every_secs)):
      self._save(step)

  def on_epoch_end(self, epoch, logs=None):
    if self.diverged_at is None and not self.preempted and self._ckpt.step != self._last_saved:
      self._save(self._ckpt.step)

  def on_train_end(self, logs=None):
    if not self._held:
      self._restore()


def restore_collectively(checkpointer, strategy, required=False):
  """The newest readable checkpoint restored (its step; 0: none). Restoring is collective
  under MultiWorkerMirroredStrategy: the workers first agree on what they see, and an error on
  any worker (a UserError or any other) stops them all."""
  if not in_cluster(strategy):
    with strategy.scope():  # restored slots are created as distributed variables
      return checkpointer.restore_latest(required=required)
  # A barrier first: the chief has rebuilt a damaged index (when its Checkpointer was made)
  # before anyone reads it.
  replica_sum(strategy)([0.0])
  newest = on_every_worker(strategy, checkpointer.newest_step)
  check_same_step(strategy, newest, checkpointer.directory)

  def restore():
    with strategy.scope():
      return checkpointer.restore_latest(required=required)

  step = on_every_worker(strategy, restore)
  check_same_step(strategy, step, checkpointer.directory)
  return step


def on_every_worker(strategy, fn):
  """fn() on this worker of a multi-worker run; an exception on any worker is raised on all
  (a worker that stopped alone would leave the others waiting in their next collective)."""
  try:
    result, error = fn(), None
  except Exception as e:  # pylint: disable=broad-except  (re-raised below, on every worker)
    result, error = None, e
  agree_on_error(strategy, error)
  return result
