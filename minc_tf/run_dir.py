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


# --- identity ---------------------------------------------------------------------------------

def run_identity(**run_settings):
  """The defining settings of this configuration, {binding: value}, as JSON stores them: every
  operative parameter (bound or default) that schema.defines_run, and run()'s own (resolved:
  steps_per_epoch from the data, mixed_precision 'float32' for None)."""
  values = {k: v for k, v in monitor.gin_hparams().items() if schema.defines_run(k)}
  values.update({f'run.{k}': schema.record_value(v) for k, v in run_settings.items()})
  return json.loads(json.dumps(values))


def default_value(key):
  """The recorded form of the code default of setting `key` ('selector.param'), or a sentinel
  that equals nothing when it has none."""
  selector, _, param = key.rpartition('.')
  found = gin_internals.defaults(selector.rpartition('/')[2])
  if param not in found:
    return _NO_DEFAULT
  return json.loads(json.dumps(schema.record_value(found[param])))


_NO_DEFAULT = object()
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
    if old is _MISSING and new == default_value(k):
      continue
    if new is _MISSING and old == default_value(k):
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


def write_results(out_dir, results, step, session):
  """results.json (atomically), and the same figures as TensorBoard HParams metrics, so
  `tensorboard --logdir` over many model dirs compares them; the settings (the HParams session)
  are a training run's (session; an eval's or export's command line may differ in what it
  ignores)."""
  files.write(os.path.join(out_dir, RESULTS), json.dumps(results, indent=2))
  monitor.write_hparams(os.path.join(out_dir, 'tensorboard'), results, step, session=session)
