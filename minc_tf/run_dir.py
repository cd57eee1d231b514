"""The model dir as a record: writable, whose run it holds (identity), final weights, results.

  <model_dir>/run_identity.json   the settings that define the run (schema.defines_run), with
                                  the history of allowed changes
  <model_dir>/results.json        the run's figures (schema.RESULTS names them)
  <model_dir>/checkpoint.weights.h5   final weights, for users (Keras format)

Every read is damage-tolerant (read_json): a truncated or foreign file is set aside (renamed,
never deleted) with a warning and treated as absent. Every write is atomic (files.write).
"""

import json
import os
import socket
import threading
import time
import uuid

from absl import logging
import tensorflow as tf

from minc_tf import files
from minc_tf import gin_internals
from minc_tf import monitor
from minc_tf import schema
from minc_tf.errors import UserError

IDENTITY = 'run_identity.json'
RESULTS = 'results.json'
CHECKPOINT = 'checkpoint.weights.h5'


def read_json(path, set_aside=False, kind=dict):
  """The JSON object (`kind`) in `path`, or None when it is missing or damaged (not JSON, not
  a `kind`); set_aside renames a damaged file to <path>.damaged-<time> (the chief's job: other
  workers only read)."""
  try:
    if not tf.io.gfile.exists(path):
      return None
    with tf.io.gfile.GFile(path) as f:
      value = json.loads(f.read())
    if isinstance(value, kind):
      return value
  except tf.errors.NotFoundError:  # set aside by the chief meanwhile
    return None
  except (ValueError, UnicodeDecodeError):
    pass
  if set_aside:
    aside = f'{path}.damaged-{int(time.time())}'
    tf.io.gfile.rename(path, aside, overwrite=True)
    logging.warning('%s is not a JSON %s (truncated or damaged); set aside as %s.', path,
                    'object' if kind is dict else kind.__name__, aside)
  else:
    logging.warning('%s is damaged (not a JSON %s).', path, kind.__name__)
  return None


def check_writable(model_dir):
  try:
    tf.io.gfile.makedirs(model_dir)
    probe = os.path.join(model_dir, f'.write_test-{os.getpid()}-{uuid.uuid4().hex[:8]}')
    with tf.io.gfile.GFile(probe, 'w') as f:
      f.write('ok')
    tf.io.gfile.remove(probe)
  except (OSError, tf.errors.OpError) as e:
    raise UserError(f'The model dir {model_dir} is not writable ({e.__class__.__name__}). Fix: '
                    'pass --model_dir=<a directory you can write>.') from None


# --- claim and lock -------------------------------------------------------------------------

# What a model dir of ours holds (any one of them makes it ours): a run's record and files, or a
# study's run directories.
RECORD = (IDENTITY, RESULTS, CHECKPOINT, 'checkpoints', 'config.gin', 'operative_config.gin',
          'export', 'tensorboard', 'curves.json', 'training.png', 'runs')
LOCK = '.minc_tf.lock'


def claim(model_dir, reuse=False):
  """Refuses a model dir that is unset, or an existing directory with files but no run record
  in it (someone's other data, which a run would overwrite), unless reuse (the user said "yes,
  this one": main's --reuse_model_dir)."""
  if not model_dir or not str(model_dir).strip():
    raise UserError('--model_dir is empty (an unset variable?). Fix: pass --model_dir=<a new '
                    'directory for this run, or the directory of the run to resume>.')
  if reuse or not tf.io.gfile.isdir(model_dir):
    return
  names = [n.rstrip('/') for n in tf.io.gfile.listdir(model_dir)]
  names = [n for n in names if not n.startswith('.')]
  ours = [n for n in names if n in RECORD or n.startswith(('events.out.tfevents', 'backup_'))]  # a study's
  if names and not ours:
    shown = ', '.join(sorted(names)[:5]) + (' ...' if len(names) > 5 else '')
    raise UserError(f'{model_dir} already holds files that are not a minc_tf run ({shown}); a '
                    'run would write its config, results and plots over them. Nothing was '
                    'changed. Fix: pass a new --model_dir, or --reuse_model_dir to use this '
                    'directory anyway.')


class Lock:
  """<model_dir>/.minc_tf.lock while a training runs in model_dir: its holder's host, pid and a
  heartbeat (rewritten every `heartbeat_s`). A second training of the dir stops with a
  UserError naming the holder. A lock is stale, and taken over with a warning, when its pid is
  gone on this host, or its heartbeat is older than `stale_s` (another host's holder cannot be
  asked). Creation is atomic on local disks (O_EXCL); on object stores (gs://), which have no
  such primitive here, it is written and read back (the last writer wins a race of seconds).
  """

  def __init__(self, model_dir, heartbeat_s=60.0, stale_s=600.0):
    self.path = os.path.join(model_dir, LOCK)
    self._heartbeat_s, self._stale_s = heartbeat_s, stale_s
    self._token = uuid.uuid4().hex
    self._stop = threading.Event()
    self._thread = None

  def _record(self):
    return json.dumps({'host': socket.gethostname(), 'pid': os.getpid(), 'token': self._token,
                       'heartbeat': time.time()})

  def _stale(self, held):
    age = time.time() - float(held.get('heartbeat', 0))
    if age > self._stale_s:
      return f'its heartbeat is {age:.0f} s old'
    if held.get('host') == socket.gethostname():
      if held.get('pid') == os.getpid() and held.get('token') not in _HELD:
        return 'it names this process, which has not taken it (an earlier life of this pid)'
      try:
        os.kill(int(held['pid']), 0)
      except ProcessLookupError:
        return 'its process is gone'
      except (PermissionError, ValueError, KeyError, TypeError):
        pass
    return None

  def acquire(self):
    for _ in range(3):
      if self._create():
        _HELD.add(self._token)
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()
        return self
      held = read_json(self.path)
      if held is None:  # released meanwhile, or damaged: stale only once old
        if tf.io.gfile.exists(self.path) and self._age() < self._heartbeat_s:
          held = {'host': '(unreadable lock)', 'pid': '?', 'heartbeat': time.time()}
        else:
          self._remove_if(None)
          continue
      why = self._stale(held)
      if why is None:
        raise UserError(
            f'{os.path.dirname(self.path)} is being trained by another process (host '
            f"{held.get('host')}, pid {held.get('pid')}, lock {self.path}); two trainings of "
            'one dir would overwrite each other. Fix: wait for it to finish (or stop it), or '
            'train in another --model_dir. If that process is gone, delete the lock file.')
      logging.warning('Taking over the stale lock %s (host %s, pid %s): %s.', self.path,
                      held.get('host'), held.get('pid'), why)
      self._remove_if(held.get('token'))
    raise UserError(f'Could not lock {self.path}: it kept changing (another process is '
                    'starting in the same dir). Fix: start one training per --model_dir.')

  def _age(self):
    try:
      return time.time() - tf.io.gfile.stat(self.path).mtime_nsec / 1e9
    except tf.errors.OpError:
      return 0.0

  def _create(self):
    if '://' not in self.path:
      tmp = f'{self.path}.{self._token}'
      with open(tmp, 'w') as f:
        f.write(self._record())
      try:
        os.link(tmp, self.path)  # atomic, and fails if the lock exists: no half-written lock
        return True
      except FileExistsError:
        return False
      finally:
        os.remove(tmp)
    if tf.io.gfile.exists(self.path):
      return False
    files.write(self.path, self._record())
    held = read_json(self.path) or {}
    return held.get('token') == self._token

  def _remove_if(self, token):
    held = read_json(self.path)
    if token is None or (held or {}).get('token') == token:
      try:
        tf.io.gfile.remove(self.path)
      except tf.errors.NotFoundError:
        pass

  def _beat(self):
    while not self._stop.wait(self._heartbeat_s):
      try:
        files.write(self.path, self._record())
      except (OSError, tf.errors.OpError) as e:  # a full disk must not kill the run from here
        logging.warning('Could not refresh the lock %s (%s).', self.path, e)

  def release(self):
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=5)
    self._remove_if(self._token)
    _HELD.discard(self._token)


_HELD = set()  # tokens of the locks this process holds


# --- identity ---------------------------------------------------------------------------------

def run_identity(**run_settings):
  """The defining settings of this configuration, {binding: value}, as JSON stores them: every
  operative parameter (bound or default) that schema.defines_run, and run()'s own (resolved:
  steps_per_epoch from the data, mixed_precision 'float32' for None)."""
  values = {k: v for k, v in monitor.gin_hparams().items() if schema.defines_run(k)}
  values.update({f'run.{k}': v for k, v in run_settings.items()})  # as recorded since the start
  return json.loads(json.dumps(values))


def default_values(key):
  """The forms a record may hold the code default of setting `key` ('selector.param') in: its
  JSON value (run()'s own settings) and its HParams form (gin's, None as 'None'); () when it
  has no default."""
  selector, _, param = key.rpartition('.')
  found = gin_internals.defaults(selector.rpartition('/')[2])
  if param not in found:
    return ()
  raw = found[param]
  return tuple(json.loads(json.dumps(v)) for v in (raw, schema.record_value(raw))
               if isinstance(v, (bool, int, float, str, type(None), list, tuple)))


_MISSING = '(unset)'


def identity_changes(recorded, identity, keys=None):
  """['key: recorded -> now'] for every setting whose value differs. A setting missing from
  the record (it predates the setting) is unchanged when its value now is the code default;
  so is one missing now (since removed from the code) at its recorded default."""
  changed = []
  for k in sorted(keys if keys is not None else set(recorded) | set(identity)):
    old, new = recorded.get(k, _MISSING), identity.get(k, _MISSING)
    if old == new:
      continue
    if old is _MISSING and new in default_values(k):
      continue
    if new is _MISSING and old in default_values(k):
      continue
    changed.append(f'{k}: {old!r} -> {new!r}')
  return changed


def check_identity(model_dir, mode, allow_change, identity):
  """Stops, before anything in model_dir is touched, a rerun whose defining settings differ
  from those recorded when its training started (eval and export: those that shape the
  variables, ignoring settings the record predates). Returns whether training should (re)record
  the identity: no record yet, a damaged one, an allowed change, or a dir with nothing trained
  in it (a first run that failed before its first checkpoint)."""
  path = os.path.join(model_dir, IDENTITY)
  trained = (tf.io.gfile.glob(os.path.join(model_dir, 'checkpoints', 'ckpt-*.index')) or
             tf.io.gfile.exists(os.path.join(model_dir, RESULTS)))
  if not tf.io.gfile.exists(path):
    return True
  record = read_json(path)
  recorded = record.get('settings') if record is not None else None
  if not isinstance(recorded, dict):
    logging.warning('%s is damaged; it will be rewritten from this configuration.', path)
    return True
  if not trained:
    return True
  if 'run.mixed_precision' in recorded and recorded['run.mixed_precision'] is None:
    recorded['run.mixed_precision'] = 'float32'  # recorded so before the two were one
  evaluating = mode in ('eval', 'export')
  keys = None
  if evaluating:
    keys = [k for k in set(recorded) | set(identity)
            if k.startswith(schema.ARCHITECTURE) and k in recorded]
  changed = identity_changes(recorded, identity, keys)
  if not changed:
    return False
  if allow_change:
    logging.warning('--allow_config_change: continuing %s with changed settings: %s', model_dir,
                    '; '.join(changed))
    return not evaluating
  fix = ('Fix: use another --model_dir for the new configuration, or pass '
         '--allow_config_change to ' + ('evaluate or export with it anyway.' if evaluating else
                                        'continue this run with it (its checkpoints must still '
                                        'load).'))
  raise UserError(f'{model_dir} holds a run of another configuration; nothing was changed. '
                  f'Settings that differ (recorded -> now): {"; ".join(changed)}. {fix}')


def write_identity(out_dir, identity):
  """Records the identity when a training run starts (keeping earlier ones as history)."""
  path = os.path.join(out_dir, IDENTITY)
  old = read_json(path) or {}
  history = []
  if isinstance(old.get('settings'), dict):
    history = list(old.get('history', [])) + [old['settings']]
  files.write(path, json.dumps({'settings': identity, 'history': history}, indent=2))


# --- weights and results ----------------------------------------------------------------------

def save_weights(model, out_dir):
  """Final weights as a Keras file (for users), written to a temporary file and renamed."""
  path = os.path.join(out_dir, CHECKPOINT)
  tmp = path + '.tmp.weights.h5'
  model.save_weights(tmp)  # Keras writes remote paths (gs://, ram://) through gfile
  tf.io.gfile.rename(tmp, path, overwrite=True)
  return path


def read_results(model_dir, chief):
  """<model_dir>/results.json as a dict ({} when absent); the chief sets a damaged one aside."""
  return read_json(os.path.join(model_dir, RESULTS), set_aside=chief) or {}


def write_results(out_dir, results, step, session, hparams=True):
  """results.json (atomically), and (hparams) the same figures as TensorBoard HParams metrics,
  so `tensorboard --logdir` over many model dirs compares them; the settings (the HParams
  session) are a training run's (session; an eval's or export's command line may differ in
  what it ignores)."""
  files.write(os.path.join(out_dir, RESULTS), json.dumps(results, indent=2))
  if hparams:
    monitor.write_hparams(os.path.join(out_dir, 'tensorboard'), results, step, session=session)
