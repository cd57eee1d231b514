"""run(): strategy -> data -> model -> fit -> checkpoint -> export -> evaluation -> results.json.

Every hyperparameter is a keyword argument of a gin-configurable function (this one, load_data,
build_model, build_encoder, build_optimizer, view_transforms, linear_probe); main.py only parses
flags and gin and calls run().
"""

import dataclasses
import json
import math
import os
import tempfile
import time
import uuid

from absl import logging
import gin
import keras
import numpy as np
import tensorflow as tf

from minc_tf import augment
from minc_tf import checkpoint
from minc_tf import data as data_lib
from minc_tf import evaluate
from minc_tf import export as export_lib
from minc_tf import files
from minc_tf import model as model_lib
from minc_tf import monitor
from minc_tf import networks
from minc_tf import optim
from minc_tf import plots
from minc_tf import spectrum
from minc_tf.errors import UserError, int_at_least, one_of, real_in, require

MODES = ('train', 'eval', 'export', 'train_and_eval')
# results.json figures of an evaluation, all of one checkpoint step ('eval_step').
EVAL_KEYS = ('probe_top1', 'knn_top1', 'random_init_top1', 'raw_pixel_top1', 'feature_dim',
             'feature_effective_rank', 'eval_wall_time_s', 'linear_eval_top1',
             'linear_eval_wall_time_s', 'eval_step', 'eval_split', 'test_probe_top1',
             'test_knn_top1', 'test_random_init_top1', 'test_raw_pixel_top1',
             'test_linear_eval_top1')
CHECKPOINT = 'checkpoint.weights.h5'


def set_up_determinism(deterministic, one_op_at_a_time=True):
  """What run.deterministic needs from TensorFlow, some of it before its runtime starts.

  Op determinism, and ONE inter-op thread (one_op_at_a_time): with several, independent ops of
  the train step run concurrently, and seeded CPU runs on a loaded machine came out different
  from step 2 on (measured; intra-op threads, the data pipeline and the order of gradients and
  updates were ruled out, docs/reproducibility.md). TensorFlow fixes the inter-op pool when its
  runtime starts, so main calls this before it builds the strategy; run() calls it again.
  Multi-replica strategies keep their inter-op pool (their collectives run side by side), so
  for them only op determinism is set.
  """
  if not deterministic:
    return
  tf.config.experimental.enable_op_determinism()
  if not one_op_at_a_time:
    return
  try:
    tf.config.threading.set_inter_op_parallelism_threads(1)
  except RuntimeError:  # the runtime has started: only the environment could have set it.
    if os.environ.get('TF_NUM_INTEROP_THREADS') != '1':
      raise UserError('run.deterministic=True needs TensorFlow to run one op at a time, which '
                      'is fixed when its runtime starts, and it has started already (run.'
                      'deterministic set outside the top-level gin config, or train.run called '
                      'from your own program). Fix: set TF_NUM_INTEROP_THREADS=1 in the '
                      'environment before launching.') from None


def deterministic_from_gin():
  """run.deterministic as bound in the parsed gin config (False when unbound)."""
  try:
    return bool(gin.query_parameter('run.deterministic'))
  except ValueError:
    return False


def _check_writable(model_dir):
  try:
    tf.io.gfile.makedirs(model_dir)
    probe = os.path.join(model_dir, f'.write_test-{os.getpid()}-{uuid.uuid4().hex[:8]}')
    with tf.io.gfile.GFile(probe, 'w') as f:
      f.write('ok')
    tf.io.gfile.remove(probe)
  except (OSError, tf.errors.OpError) as e:
    raise UserError(f'The model dir {model_dir} is not writable ({e.__class__.__name__}). Fix: '
                    'pass --model_dir=<a directory you can write>.') from None


IDENTITY = 'run_identity.json'
# What a model dir trains: method, architecture, data, views, optimizer and schedule, batch. A
# rerun with other values would be another run in the same dir.
_IDENTITY_PREFIXES = ('build_model.', 'build_encoder.', 'build_optimizer.', 'view_transforms.',
                      'load_data.')
# Where the data lies, how it is read, and what is evaluated on: not what the run trains.
_NOT_IDENTITY = ('load_data.data_dir', 'load_data.idx_dir', 'load_data.image_dir',
                 'load_data.cache', 'load_data.on_corrupt', 'load_data.eval_split',
                 'load_data.eval_every')
# What shapes the checkpoint's variables: all an eval or export must agree with.
_ARCHITECTURE = ('build_model.method', 'build_model.projector_hidden', 'build_model.projector_dim',
                 'build_model.predictor', 'build_model.predictor_hidden', 'build_model.use_target',
                 'build_encoder.')


def run_identity(**run_settings):
  """The defining settings of this configuration, {binding: value}, as JSON stores them."""
  values = {k: v for k, v in monitor.gin_hparams().items()
            if k.startswith(_IDENTITY_PREFIXES) and k not in _NOT_IDENTITY}
  values.update({f'run.{k}': v for k, v in run_settings.items()})
  return json.loads(json.dumps(values))


def _check_identity(model_dir, mode, allow_change, identity):
  """Stops, before anything in model_dir is touched, a rerun whose defining settings differ
  from those recorded when its training started (eval and export: those that shape the
  variables, ignoring settings the record predates). Returns whether training should (re)record
  the identity: no record yet, a damaged one, an allowed change, or a dir with nothing trained
  in it (a first run that failed before its first checkpoint)."""
  path = os.path.join(model_dir, IDENTITY)
  trained = (tf.io.gfile.glob(os.path.join(model_dir, 'checkpoints', 'ckpt-*.index')) or
             tf.io.gfile.exists(os.path.join(model_dir, 'results.json')))
  if not tf.io.gfile.exists(path):
    return True
  try:
    with tf.io.gfile.GFile(path) as f:
      recorded = json.load(f)['settings']
    if not isinstance(recorded, dict):
      raise TypeError
  except (ValueError, KeyError, TypeError, UnicodeDecodeError):
    logging.warning('%s is damaged; it will be rewritten from this configuration.', path)
    return True
  if not trained:
    return True
  if 'run.mixed_precision' in recorded and recorded['run.mixed_precision'] is None:
    recorded['run.mixed_precision'] = 'float32'  # recorded so before the two were one
  evaluating = mode in ('eval', 'export')
  keys = sorted(set(recorded) | set(identity))
  if evaluating:
    keys = [k for k in keys if k.startswith(_ARCHITECTURE) and k in recorded]
  missing = '(unset)'
  changed = [f'{k}: {recorded.get(k, missing)!r} -> {identity.get(k, missing)!r}' for k in keys
             if recorded.get(k, missing) != identity.get(k, missing)]
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


def _write_identity(model_dir, identity):
  """Records the identity when a training run starts (keeping earlier ones as history)."""
  path = os.path.join(model_dir, IDENTITY)
  history = []
  if tf.io.gfile.exists(path):
    try:
      with tf.io.gfile.GFile(path) as f:
        old = json.load(f)
      history = list(old.get('history', [])) + [old['settings']]
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
      pass
  files.write(path, json.dumps({'settings': identity, 'history': history}, indent=2))


def _check_memory(model, strategy, global_batch_size):
  """Stops a batch whose activations cannot fit in this host's memory before it is allocated
  (TensorFlow on CPU dies of it with a segfault, not an error). A lower bound: the float32
  outputs of every encoder and projector layer, kept for the backward pass, for both views of
  the host's share of the batch; accelerators report their own out-of-memory errors."""
  try:
    devices = strategy.extended.worker_devices
  except RuntimeError:  # the default strategy: one device, an accelerator when there is one
    accelerators = tf.config.list_logical_devices('GPU') + tf.config.list_logical_devices('TPU')
    devices = [accelerators[0].name if accelerators else 'CPU:0']
  if not all('CPU' in d.upper() for d in devices):
    return
  try:
    ram = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
  except (ValueError, OSError, AttributeError):  # not a POSIX host: no estimate
    return
  per_example = sum(math.prod(d or 1 for d in layer.output.shape[1:])
                    for net in (model.encoder, model.projector) for layer in net.layers)
  host_batch = global_batch_size * len(devices) // strategy.num_replicas_in_sync
  need = 4 * per_example * 2 * host_batch
  if need > ram:
    raise UserError(f'run.global_batch_size = {global_batch_size} needs at least '
                    f'{need / 2 ** 30:.0f} GiB for its activations on this host, which has '
                    f'{ram / 2 ** 30:.0f} GiB of memory. Fix: lower run.global_batch_size to at '
                    f'most {max(int(global_batch_size * ram / need), 1)}, or use a smaller '
                    'encoder.')


def _save_weights(model, model_dir):
  """Final weights as a Keras file (for users), written to a temporary file and renamed."""
  path = os.path.join(model_dir, CHECKPOINT)
  tmp = path + '.tmp.weights.h5'
  model.save_weights(tmp)  # Keras writes remote paths (gs://, ram://) through gfile
  tf.io.gfile.rename(tmp, path, overwrite=True)
  return path


TRAINING = ('train', 'train_and_eval')


@dataclasses.dataclass
class _Job:
  """What the phases of run() share.

  model_dir is the run's directory: every worker reads it, only the chief writes it. out_dir is
  where this process writes: model_dir, or, on a multi-worker run's other workers, a private
  temporary directory for their part in the collective saves, removed by close().
  """
  mode: str
  model_dir: str
  out_dir: str
  strategy: tf.distribute.Strategy
  data: data_lib.ImageData
  model: model_lib.SSLModel
  checkpointer: checkpoint.Checkpointer
  global_batch_size: int
  epochs: int
  steps_per_epoch: int
  identity: dict
  record_identity: bool

  @property
  def chief(self):
    return self.out_dir == self.model_dir

  def out(self, name):
    return os.path.join(self.out_dir, name)

  def close(self):
    if not self.chief and tf.io.gfile.exists(self.out_dir):
      tf.io.gfile.rmtree(self.out_dir)


@gin.configurable(denylist=['mode', 'model_dir', 'strategy', 'allow_config_change'])
def run(mode, model_dir, strategy, global_batch_size=4096, epochs=300, steps_per_epoch=None,
        steps_per_execution=1, jit_compile=False, mixed_precision=None, seed=None,
        deterministic=False, augment_on_device=False, verbose=1,
        eval_batch_size=512, eval_train_examples=None, eval_test_examples=None, baselines=True,
        knn=True, report_test=False, offline_linear_eval=False, tensorboard_update_freq=100,
        feature_rank_every_steps=None, feature_rank_per_epoch=1, feature_rank_images=1024,
        checkpoint_every_steps=1000, checkpoint_every_secs=600, keep_checkpoints=3,
        allow_config_change=False):
  """Runs one experiment in `model_dir` and returns the results dict.

  global_batch_size: across all replicas; must divide by strategy.num_replicas_in_sync.
  steps_per_epoch: default num_train // global_batch_size.
  steps_per_execution: train steps per host round trip (the TPU host loop).
  jit_compile: XLA-compile the train step (TPUs always do; off by default on CPU).
  seed / deterministic: seeds Python, NumPy and TensorFlow and the input pipeline (every
    example's views come from a stateless per-example seed, and a resumed run skips to its
    step, so it sees the data of an uninterrupted run); deterministic=True adds TensorFlow's op
    determinism and one inter-op thread (set_up_determinism): with TF_ENABLE_ONEDNN_OPTS=0,
    reruns and resumed runs end with bit-identical variables (docs/reproducibility.md).
  augment_on_device: the input pipeline makes the crops, the model the rest of the views
    (flip, colour, blur, solarize) inside train_step, as BYOL does on TPU.
  mixed_precision: None or a Keras policy ('mixed_bfloat16' on TPU); losses, the summary
    statistic and the EMA updates stay in float32. 'mixed_float16' cannot train (its loss
    scaling skips steps without counting them; the step count is the run's clock).
  eval_train_examples / eval_test_examples: caps on the examples the offline probe reads (None:
    all; for smoke tests).
  baselines: also probe a randomly initialised encoder and the raw pixels.
  report_test: also score the probe, kNN and offline linear evaluation on the data's test split
    (load_data.validation_examples holds out a validation split, which evaluation reads
    otherwise): for a final configuration, chosen on validation, read once.
  offline_linear_eval: also run the BYOL linear-evaluation protocol (evaluate.
    offline_linear_eval, its settings in gin) on the frozen encoder: 'linear_eval_top1' (and
    'test_linear_eval_top1' with report_test).
  feature_rank_every_steps / feature_rank_per_epoch / feature_rank_images: the effective rank
    of the encoder's features on that many evaluation-split images is logged at the start and every so
    many steps (None: feature_rank_per_epoch times an epoch), to TensorBoard and to
    <model_dir>/curves.json, which training.png plots.
  checkpoint_every_steps / checkpoint_every_secs / keep_checkpoints: training-state checkpoints
    in <model_dir>/checkpoints, every so many steps or seconds, whichever comes first (also at
    each epoch end and on SIGTERM or Ctrl-C); a rerun resumes from the newest readable one.
    Under MultiWorkerMirroredStrategy only the steps count (each worker has its own clock),
    and a SIGTERM on any worker makes all of them save the same step and stop.
  allow_config_change (main's --allow_config_change, not a gin setting): continue a model dir
    whose recorded defining settings (run_identity.json) differ from this configuration's.

  Phases: checks, set-up (data, model, optimizer, the run's identity), then for training
  resume + fit + finish (weights, export), else the newest checkpoint; then evaluation and
  results. Every worker of a multi-worker run runs every phase (saves and feature extraction
  are collectives); each phase reads model_dir and writes only through job.out(), which is
  model_dir on the chief and a private temporary directory on the other workers.
  """
  if mode not in MODES:
    raise UserError(f'Unknown --mode {mode!r}; choose one of {", ".join(MODES)}.')
  for name, value, check in (
      ('global_batch_size', global_batch_size, int_at_least(1)),
      ('epochs', epochs, int_at_least(1)),
      ('steps_per_epoch', steps_per_epoch, int_at_least(1, optional=True)),
      ('steps_per_execution', steps_per_execution, int_at_least(1)),
      ('mixed_precision', mixed_precision,
       one_of((None, 'float32', 'mixed_float16', 'mixed_bfloat16'))),
      ('seed', seed, int_at_least(0, optional=True)),
      ('eval_batch_size', eval_batch_size, int_at_least(1)),
      ('eval_train_examples', eval_train_examples, int_at_least(1, optional=True)),
      ('eval_test_examples', eval_test_examples, int_at_least(1, optional=True)),
      ('tensorboard_update_freq', tensorboard_update_freq, int_at_least(1)),
      ('feature_rank_every_steps', feature_rank_every_steps, int_at_least(1, optional=True)),
      ('feature_rank_per_epoch', feature_rank_per_epoch, int_at_least(1)),
      ('feature_rank_images', feature_rank_images, int_at_least(0)),
      ('checkpoint_every_steps', checkpoint_every_steps, int_at_least(1, optional=True)),
      ('checkpoint_every_secs', checkpoint_every_secs,
       real_in(0, math.inf, low_open=True, optional=True)),
      ('keep_checkpoints', keep_checkpoints, int_at_least(1))):
    require(f'run.{name}', value, check)
  evaluate.check_settings()
  if seed is not None:
    keras.utils.set_random_seed(seed)
  # The default strategy is the single-device one; others keep their inter-op pool.
  set_up_determinism(deterministic, one_op_at_a_time=strategy is tf.distribute.get_strategy())
  if deterministic and os.environ.get('TF_ENABLE_ONEDNN_OPTS') == '1':
    logging.warning('run.deterministic=True: oneDNN kernels are not bit-reproducible; set '
                    'TF_ENABLE_ONEDNN_OPTS=0 before launching for identical reruns.')

  job = _set_up(mode, model_dir, strategy, global_batch_size, epochs, steps_per_epoch,
                steps_per_execution, jit_compile, mixed_precision, seed, augment_on_device,
                keep_checkpoints, allow_config_change, report_test)
  try:
    if mode in TRAINING:
      start_step = _resume(job, seed)
      fit = _fit(job, start_step, seed, augment_on_device, verbose, tensorboard_update_freq,
                 feature_rank_every_steps, feature_rank_per_epoch, feature_rank_images,
                 checkpoint_every_steps, checkpoint_every_secs)
      results = _training_results(job, start_step, fit)
      if fit.guard.preempted:
        _write_results(job, results)
        return results
      _finish_training(job)
    else:
      results = _restored_results(job)
    if mode in ('eval', 'train_and_eval'):
      results['eval_step'] = job.checkpointer.step
      results.update(evaluate_encoders(job.model.encoder, job.data, eval_batch_size,
                                       eval_train_examples, eval_test_examples, baselines, knn,
                                       strategy, report_test))
      if offline_linear_eval:
        start = time.time()
        splits = [job.data.eval_split] + ([job.data.test_split] if report_test else [])
        top1 = evaluate.offline_linear_eval(job.model.encoder, job.data, strategy, splits=splits)
        results['linear_eval_top1'] = top1[0]
        if report_test:
          results['test_linear_eval_top1'] = top1[1]
        results['linear_eval_wall_time_s'] = round(time.time() - start, 1)
    if mode in TRAINING:
      title = f'{job.model.method.name}, {job.data.name}, batch {global_batch_size}, {epochs} epochs'
      if 'probe_top1' in results:
        title += f": linear probe {results['probe_top1']:.2f}%"
      if plots.plot_run(fit.monitor.curves, job.out('training.png'), title):
        results['plot'] = 'training.png'
    _write_results(job, results)
    return results
  finally:
    job.close()


def _worker_dir(strategy, model_dir):
  """model_dir for the chief (and every single-client strategy); a private temporary directory
  for the other workers of a multi-worker run."""
  if strategy.extended.should_checkpoint:
    return model_dir
  resolver = strategy.cluster_resolver
  return tempfile.mkdtemp(prefix=f'minc_tf_{resolver.task_type}{resolver.task_id}_')


def _set_up(mode, model_dir, strategy, global_batch_size, epochs, steps_per_epoch,
            steps_per_execution, jit_compile, mixed_precision, seed, augment_on_device,
            keep_checkpoints, allow_config_change, report_test):
  """Data, model and optimizer (built up front: slots must exist before a checkpoint loads into
  them, and a lazy build inside fit fails under MultiWorkerMirroredStrategy), the memory and
  write checks, and the identity check. Nothing is written before every check has passed."""
  replicas = strategy.num_replicas_in_sync
  if global_batch_size % replicas:
    raise UserError(f'The global batch size {global_batch_size} does not divide by the '
                    f'{replicas} replicas of this strategy. Fix: bind '
                    f'run.global_batch_size to a multiple of {replicas}.')
  data = data_lib.load_data()
  if report_test and mode in ('eval', 'train_and_eval') and data.test_split is None:
    raise UserError(f'run.report_test = True, but {data.name} has no test split apart from the '
                    f'one evaluation reads ({data.eval_split!r}). Fix: bind '
                    'load_data.validation_examples = 10000 (fashion_mnist) to hold out a '
                    'validation split, or unbind run.report_test.')
  if global_batch_size > data.num_train:
    raise UserError(f'run.global_batch_size = {global_batch_size} is more than the '
                    f'{data.num_train} training examples of {data.name}. Fix: bind '
                    f'run.global_batch_size to at most {data.num_train}.')
  steps_per_epoch = steps_per_epoch or data.num_train // global_batch_size
  if mixed_precision == 'mixed_float16' and mode in TRAINING:
    # Its loss-scale optimizer does not count the steps it skips: the step count, which
    # checkpoints, resumes and the finished-run check take as the run's clock, would fall
    # behind the batches trained on (and a resume would replay some).
    raise UserError('run.mixed_precision = \'mixed_float16\' cannot train a run: its loss '
                    'scaling skips steps without counting them, so the run could not resume '
                    'or finish at the right step. Fix: bind run.mixed_precision to '
                    '\'mixed_bfloat16\' (TPUs, recent GPUs) or None.')
  if steps_per_epoch % steps_per_execution:
    # Keras runs whole executions: the epoch would overrun its planned steps.
    below = max(d for d in range(1, steps_per_execution) if steps_per_epoch % d == 0)
    above = [d for d in range(steps_per_execution + 1, steps_per_epoch + 1)
             if steps_per_epoch % d == 0][:1]
    raise UserError(f'run.steps_per_execution = {steps_per_execution} does not divide the '
                    f'{steps_per_epoch} steps of an epoch (Keras would run whole executions '
                    'past the epoch\'s end). Fix: bind run.steps_per_execution to a divisor '
                    f'of {steps_per_epoch} (e.g. {" or ".join(map(str, [below] + above))}), or '
                    'run.steps_per_epoch to a multiple of it.')
  augment.view_transforms(data.image_shape[0])  # checks its settings; they join the identity

  keras.mixed_precision.set_global_policy(mixed_precision or 'float32')
  with strategy.scope():
    model = model_lib.build_model(data.image_shape, num_classes=data.num_classes,
                                  total_steps=steps_per_epoch * epochs, sync_bn=replicas > 1)
    optimizer = optim.build_optimizer(global_batch_size, steps_per_epoch, epochs)
    model.compile(optimizer=optimizer, jit_compile=jit_compile,
                  steps_per_execution=steps_per_execution)
  _check_memory(model, strategy, global_batch_size)
  _check_writable(model_dir)  # after every check above: a refused run creates nothing
  if augment_on_device:
    _, view1, view2 = augment.view_transforms(data.image_shape[0])
    model.device_views = augment.batch_views(view1, view2, data.mean, data.std)
  identity = run_identity(
      global_batch_size=global_batch_size, epochs=epochs, steps_per_epoch=steps_per_epoch,
      seed=seed, augment_on_device=augment_on_device,
      mixed_precision=mixed_precision or 'float32')
  record_identity = _check_identity(model_dir, mode, allow_config_change, identity)
  out_dir = _worker_dir(strategy, model_dir)
  try:
    with strategy.scope():  # the data seed is then the chief's on every worker
      checkpointer = checkpoint.Checkpointer(
          model, os.path.join(model_dir, 'checkpoints'), keep=keep_checkpoints,
          save_directory=os.path.join(out_dir, 'checkpoints'))
      checkpointer.build_optimizer()
  except BaseException:
    if out_dir != model_dir:
      tf.io.gfile.rmtree(out_dir)
    raise
  return _Job(mode, model_dir, out_dir, strategy, data, model, checkpointer, global_batch_size,
              epochs, steps_per_epoch, identity, record_identity)


def _restore(job, required=False):
  """The newest readable checkpoint restored (its step; 0: none). Restoring is collective
  under MultiWorkerMirroredStrategy: the workers first agree on what they see, and an error on
  any worker (a UserError or any other) stops them all."""
  ckpt = job.checkpointer
  if not checkpoint.in_cluster(job.strategy):
    with job.strategy.scope():  # restored slots are created as distributed variables
      return ckpt.restore_latest(required=required)
  # A barrier first: the chief has rebuilt a damaged index (in _set_up) before anyone reads it.
  checkpoint.replica_sum(job.strategy)([0.0])
  newest = _on_every_worker(job, ckpt.newest_step)
  checkpoint.check_same_step(job.strategy, newest, ckpt.directory)

  def restore():
    with job.strategy.scope():
      return ckpt.restore_latest(required=required)

  step = _on_every_worker(job, restore)
  checkpoint.check_same_step(job.strategy, step, ckpt.directory)
  return step


def _on_every_worker(job, fn):
  """fn() on this worker of a multi-worker run; an exception on any worker is raised on all
  (a worker that stopped alone would leave the others waiting in their next collective)."""
  try:
    result, error = fn(), None
  except Exception as e:  # pylint: disable=broad-except  (re-raised below, on every worker)
    result, error = None, e
  checkpoint.agree_on_error(job.strategy, error)
  return result


def _resume(job, seed):
  """Restores the newest readable checkpoint (its step; 0 for a fresh run) unless that would
  overwrite a finished run, and records the run's identity and config."""
  start_step = _restore(job)
  calls = int(getattr(job.model, 'steps_per_execution', 1) or 1)
  done = start_step % job.steps_per_epoch
  if done % calls:  # before anything is written
    fits = [d for d in range(1, calls) if done % d == 0 and job.steps_per_epoch % d == 0]
    raise UserError(f'The run resumes at step {start_step}, {done} steps into an epoch, which '
                    f'is not a multiple of run.steps_per_execution = {calls} (its checkpoint '
                    'was written with another setting): Keras would run past the epoch\'s '
                    f'end. Fix: bind run.steps_per_execution to {max(fits)} (it divides both '
                    f'{done} and the epoch\'s {job.steps_per_epoch} steps) for this run.')
  previous = _read_results(job)
  finished = previous.get('final_step', 0) if not previous.get('preempted') else 0
  finished = max(finished,
                 export_lib.exported_step(os.path.join(job.model_dir, 'export')) or 0)
  if finished > start_step:
    unread = ''.join(f' ({os.path.basename(p)} unreadable: {d})'
                     for p, d in job.checkpointer.damaged)
    raise UserError(
        f'{job.model_dir} holds a run that finished at step {finished}, but its newest '
        f'readable checkpoint is of step {start_step}{unread}: training from there would '
        'overwrite the finished run\'s weights, export and results. Nothing was changed. Fix: '
        'restore the checkpoint files, or train in another --model_dir.')
  if job.record_identity:
    _write_identity(job.out_dir, job.identity)
  files.write(job.out('config.gin'), gin.config_str())
  if seed is not None:
    job.checkpointer.data_seed.assign(seed)  # so the checkpoint records the stream it trained on
  return start_step


@dataclasses.dataclass
class _Fit:
  history: object
  guard: checkpoint.TrainingGuard
  monitor: monitor.Monitor
  wall_s: float


def _fit(job, start_step, seed, augment_on_device, verbose, tensorboard_update_freq,
         feature_rank_every_steps, feature_rank_per_epoch, feature_rank_images,
         checkpoint_every_steps, checkpoint_every_secs):
  """Trains from start_step to the planned step, or until a signal, with checkpoints and
  TensorBoard; a NaN loss is a UserError naming the checkpoint kept."""
  data, strategy, model = job.data, job.strategy, job.model
  data_seed = int(job.checkpointer.data_seed.numpy())

  def dataset_from(step):
    return strategy.distribute_datasets_from_function(
        lambda ctx: data.pretrain_dataset(ctx.get_per_replica_batch_size(job.global_batch_size),
                                          ctx, seed=data_seed, start_step=step,
                                          crops_only=augment_on_device,
                                          ordered=seed is not None))

  cluster = checkpoint.in_cluster(strategy)
  guard = checkpoint.TrainingGuard(
      job.checkpointer, every_steps=checkpoint_every_steps,
      every_secs=None if cluster else checkpoint_every_secs,  # one clock per worker
      strategy=strategy)
  (v1, v2), _ = next(iter(data.pretrain_dataset(4)))
  rank_images = None
  if feature_rank_images:
    rank_images = np.concatenate([x.numpy() for x, _ in data.eval_dataset(
        data.eval_split, 256, limit=feature_rank_images)])
  tb_dir = job.out('tensorboard')
  run_monitor = monitor.Monitor(
      tb_dir, job.global_batch_size, every_steps=tensorboard_update_freq, view_pairs=(v1, v2),
      config_text=gin.config_str(), rank_images=rank_images,
      rank_every_steps=feature_rank_every_steps or max(
          job.steps_per_epoch // feature_rank_per_epoch, 1),
      curves_path=job.out('curves.json'),
      curves_from=os.path.join(job.model_dir, 'curves.json'))
  callbacks = [  # the guard first: no checkpoint is written after a NaN step.
      guard,
      monitor.TensorBoard(tb_dir, update_freq=tensorboard_update_freq),
      run_monitor,
  ]
  start = time.time()
  with guard.catching_signals():  # also between the two fit() calls of a resumed run
    history = _fit_from(model, dataset_from, start_step, job.steps_per_epoch, job.epochs,
                        callbacks, verbose, guard)
  wall = time.time() - start
  if guard.diverged_at is not None:
    saved = job.checkpointer.paths
    kept = (f'the last good checkpoint, {saved[-1]}, was kept; rerunning the same command '
            'resumes from it and would diverge again' if saved else
            'no checkpoint had been written yet')
    raise UserError(
        f'The loss became NaN or infinite at step {guard.diverged_at}; training stopped and '
        f'{kept}. Fix: lower the learning rate (build_optimizer.base_lr), keep the output '
        'clip on (build_model.mu > 0), use float32 (run.mixed_precision=None), or check the '
        'data\'s normalisation (load_data.mean / std), then rerun with '
        '--allow_config_change to continue this run with the new setting, or start afresh in '
        'another --model_dir.')
  return _Fit(history, guard, run_monitor, wall)


def _training_results(job, start_step, fit):
  """results.json's figures of a training run: what this fit() measured, or, for a rerun of a
  finished run (which trains nothing), what its training measured."""
  step = job.checkpointer.step
  results = {'method': job.model.method.name, 'dataset': job.data.name, 'epochs': job.epochs,
             'batch_size': job.global_batch_size, 'steps': job.steps_per_epoch * job.epochs,
             'replicas': job.strategy.num_replicas_in_sync}
  previous = _read_results(job) if step == start_step else {}
  if previous.get('final_step') == step:
    # Not a stop on its last step either: that run is finished now.
    results = {**{k: v for k, v in previous.items() if k != 'preempted'}, **results}
  else:
    results.update(resumed_from_step=start_step, final_step=step,
                   pretrain_wall_time_s=round(fit.wall_s, 1),
                   images_per_s=round((step - start_step) * job.global_batch_size /
                                      max(fit.wall_s, 1e-9), 1))
  history = fit.history.history if fit.history is not None else {}
  if history.get('loss'):
    results['final_loss'] = float(history['loss'][-1])
    for name in ('loss_attract', 'loss_repel', 'probe_loss', 'probe_train_acc'):
      if history.get(name):
        results[f'final_{name}'] = float(history[name][-1])
  ranks = fit.monitor.curves.get('feature_effective_rank')
  if ranks:
    results['feature_effective_rank_curve'] = ranks
  results['curves'] = 'curves.json'
  if fit.guard.preempted:
    results['preempted'] = fit.guard.preempted
    logging.warning('%s: checkpoint saved at step %d; rerun the same command to resume.',
                    fit.guard.preempted, step)
  return results


def _finish_training(job):
  """The finished run's files: the final weights, the exported encoder, the operative config."""
  _save_weights(job.model, job.out_dir)
  export_lib.export_encoder(job.model.encoder, job.data.mean, job.data.std, job.out('export'),
                            step=job.checkpointer.step)
  files.write(job.out('operative_config.gin'), gin.operative_config_str())


def _restored_results(job):
  """eval / export: the newest readable checkpoint restored (export: written), beside what the
  training run measured."""
  mode = job.mode
  step = _restore(job, required=True)
  previous = _read_results(job)
  if job.checkpointer.damaged:
    note = (', '.join(os.path.basename(p) for p, _ in job.checkpointer.damaged) +
            f' unreadable; {mode} used the newest readable checkpoint, of step {step}')
    logging.warning('%s', note)
    previous[f'{mode}_note'] = note
  if mode == 'export':
    exported = export_lib.exported_step(os.path.join(job.model_dir, 'export'))
    if exported is not None and exported > step:
      raise UserError(f'{job.model_dir}/export holds the encoder of step {exported}, newer '
                      f'than the newest readable checkpoint (step {step}); it was not '
                      'replaced. Fix: restore the newer checkpoint files, or export elsewhere.')
  evaluated = previous.get('eval_step', previous.get('final_step'))
  if mode == 'eval' and evaluated is not None and evaluated != step:
    logging.warning('Replacing the evaluation of step %s in results.json with that of step %d.',
                    evaluated, step)
    previous = {k: v for k, v in previous.items() if k not in EVAL_KEYS}
  # The config's epochs and steps describe a plan, not this checkpoint: report the step read,
  # and keep what the training run measured (losses, wall time) beside the new figures.
  results = {**previous, 'method': job.model.method.name, 'dataset': job.data.name,
             'batch_size': job.global_batch_size,
             'replicas': job.strategy.num_replicas_in_sync, f'{mode}_checkpoint_step': step}
  if mode == 'export':
    export_lib.export_encoder(job.model.encoder, job.data.mean, job.data.std, job.out('export'),
                              step=step)
  return results


def _fit_from(model, dataset_from, start_step, steps_per_epoch, epochs, callbacks, verbose, guard):
  """Runs fit from optimizer step `start_step` to steps_per_epoch * epochs, finishing a partly
  done epoch first, so a resumed run ends at exactly the planned step.

  dataset_from(step) gives the input stream from batch `step` on: each fit() starts a new
  iterator, which must continue where the previous one stopped.
  """
  epoch, done = divmod(start_step, steps_per_epoch)
  history = None
  if done:
    history = model.fit(dataset_from(start_step), initial_epoch=epoch, epochs=epoch + 1,
                        steps_per_epoch=steps_per_epoch - done, callbacks=callbacks,
                        verbose=verbose)
    epoch += 1
    if guard.preempted or guard.diverged_at is not None:
      return history
  if epoch < epochs:
    history = model.fit(dataset_from(epoch * steps_per_epoch), initial_epoch=epoch,
                        epochs=epochs, steps_per_epoch=steps_per_epoch, callbacks=callbacks,
                        verbose=verbose)
  return history


def _read_results(job):
  """<model_dir>/results.json as a dict; the chief sets a damaged one aside (renamed, never
  deleted) with a warning."""
  path = os.path.join(job.model_dir, 'results.json')
  if not tf.io.gfile.exists(path):
    return {}
  try:
    with tf.io.gfile.GFile(path) as f:
      results = json.loads(f.read())
    if isinstance(results, dict):
      return results
  except tf.errors.NotFoundError:  # set aside by the chief meanwhile
    return {}
  except (ValueError, UnicodeDecodeError):
    pass
  if job.chief:
    aside = f'{path}.damaged-{int(time.time())}'
    tf.io.gfile.rename(path, aside, overwrite=True)
    logging.warning('%s is not a JSON object (truncated or damaged); set aside as %s.', path,
                    aside)
  return {}


def _write_results(job, results):
  """results.json (atomically), and the same figures as TensorBoard HParams metrics, so
  `tensorboard --logdir` over many model dirs compares them; the settings (the HParams session)
  are a training run's (an eval's or export's command line may differ in what it ignores)."""
  files.write(job.out('results.json'), json.dumps(results, indent=2))
  monitor.write_hparams(job.out('tensorboard'), results, job.checkpointer.step,
                        session=job.mode in TRAINING)


# Above this many values per image the raw-pixel baseline is skipped: its probe would hold the
# training set's pixels as features (ImageNet at 224 px: 1.28M x 150,528 floats, ~770 GB).
RAW_PIXEL_MAX_FEATURES = 16384


def evaluate_encoders(encoder, data, batch_size, max_train, max_test, baselines, knn,
                      strategy=None, report_test=False):
  """Linear probe (and kNN) top-1 on frozen features, with the same-run baselines; features
  are extracted on the strategy's replicas. report_test: the same probe (and kNN) also scored
  on data.test_split, as 'test_probe_top1' ('test_knn_top1'), for a final configuration."""
  strategy = strategy or tf.distribute.get_strategy()
  start = time.time()
  train_ds = data.eval_dataset(data.train_split, batch_size, limit=max_train)
  splits = {'': data.eval_dataset(data.eval_split, batch_size, limit=max_test)}
  if report_test:
    splits['test_'] = data.eval_dataset(data.test_split, batch_size, limit=max_test)
  out = {}

  def probe(name, enc):
    cache = {}  # one traced function for every split
    tr_x, tr_y = evaluate.extract_features(enc, train_ds, strategy, cache=cache)
    held = {p: evaluate.extract_features(enc, ds, strategy, cache=cache)
            for p, ds in splits.items()}
    scores = evaluate.linear_probe(tr_x, tr_y, [x for x, _ in held.values()],
                                   [y for _, y in held.values()], data.num_classes)
    for prefix, score in zip(held, scores):
      out[f'{prefix}{name}_top1'] = score
      if knn and name == 'probe':
        out[f'{prefix}knn_top1'] = evaluate.knn_accuracy(tr_x, tr_y, *held[prefix],
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
  out['eval_split'] = data.eval_split
  out['eval_wall_time_s'] = round(time.time() - start, 1)
  return out
