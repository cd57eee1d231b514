"""run(): strategy -> data -> model -> fit -> checkpoint -> export -> evaluation -> results.json.

Every hyperparameter is a keyword argument of a gin-configurable function (this one, load_data,
build_model, build_encoder, build_optimizer, view_transforms, linear_probe); main.py only parses
flags and gin and calls run().
"""

import dataclasses
import types
import math
import os
import time

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
from minc_tf import optim
from minc_tf import plots
from minc_tf import run_dir
from minc_tf import runtime
from minc_tf import schema
from minc_tf import strategy as strategy_lib
from minc_tf.errors import UserError, int_at_least, one_of, real_in, require, subset_of

MODES = ('train', 'eval', 'export', 'train_and_eval')
TRAINING = ('train', 'train_and_eval')
EXPORT_FORMATS = tuple(export_lib.FORMATS)  # run.export_formats' choices


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
  lock: object = None  # run_dir.Lock of a training's chief
  export_formats: tuple = ()  # run.export_formats

  @property
  def chief(self):
    return self.out_dir == self.model_dir

  def out(self, name):
    return os.path.join(self.out_dir, name)

  def close(self):
    if self.lock is not None:
      self.lock.release()
    if not self.chief and tf.io.gfile.exists(self.out_dir):
      tf.io.gfile.rmtree(self.out_dir)


@gin.configurable(denylist=['mode', 'model_dir', 'strategy', 'allow_config_change',
                            'reuse_model_dir'])
def run(mode, model_dir, strategy, global_batch_size=4096, epochs=300, steps_per_epoch=None,
        steps_per_execution=1, jit_compile=False, mixed_precision=None, seed=None,
        deterministic=False, augment_on_device=False, verbose=1,
        eval_batch_size=512, eval_train_examples=None, eval_test_examples=None, baselines=True,
        knn=True, report_test=False, offline_linear_eval=False, objective_pairs=0,
        tensorboard_update_freq=100,
        feature_rank_every_steps=None, feature_rank_per_epoch=1, feature_rank_images=1024,
        checkpoint_every_steps=1000, checkpoint_every_secs=600, keep_checkpoints=3,
        max_weight_growth=1e4, sync_bn=None, export_formats=(), allow_config_change=False,
        reuse_model_dir=False):
  """Runs one experiment in `model_dir` and returns the results dict.

  global_batch_size: across all replicas; must divide by strategy.num_replicas_in_sync.
  epochs: passes over the training split (of steps_per_epoch steps each).
  verbose: Keras' progress output of fit (1 a bar, 2 one line per epoch, 0 none).
  eval_batch_size: images per batch of feature extraction (a multiple of the replicas).
  knn: also score weighted kNN on the frozen features ('knn_top1').
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
  objective_pairs: also the validation Spectral objective of the encoder + projector over that
    many fixed view pairs of the evaluation split (evaluate.spectral_objective; 0: off).
  feature_rank_every_steps / feature_rank_per_epoch / feature_rank_images: the effective rank
    of the encoder's features on that many evaluation-split images is logged at the start and every so
    many steps (None: feature_rank_per_epoch times an epoch), to TensorBoard and to
    <model_dir>/curves.json, which training.png plots.
  checkpoint_every_steps / checkpoint_every_secs / keep_checkpoints: training-state checkpoints
    in <model_dir>/checkpoints, every so many steps or seconds, whichever comes first (also at
    each epoch end and on SIGTERM or Ctrl-C); a rerun resumes from the newest readable one.
    Under MultiWorkerMirroredStrategy only the steps count (each worker has its own clock),
    and a SIGTERM on any worker makes all of them save the same step and stop.
  max_weight_growth: a checkpoint is only written of sane weights: a norm of the trained
    variables above this many times their norm when this training started (a resumed run:
    its restored weights; or a non-finite norm)
    stops the run as a NaN loss does, the last sane checkpoint kept (None: the loss alone).
  sync_bn: BatchNorm statistics over the global batch (one all-reduce per BN layer per step);
    None: when there is more than one replica (as SimCLR and BYOL train); False keeps them per
    replica (fewer collectives on GPU clusters, a different estimator).
  export_formats: Keras' other formats to write beside the SavedModel in <model_dir>/export:
    'onnx' (encoder.onnx), 'litert' (encoder.tflite), 'openvino' (encoder.xml + .bin). Each
    has the SavedModel's input and output (export.py); ONNX and OpenVINO need
    pip install 'minc_tf[export]', which is checked before training starts.
  allow_config_change (main's --allow_config_change, not a gin setting): continue a model dir
    whose recorded defining settings (run_identity.json) differ from this configuration's.
  reuse_model_dir (main's flag): use a dir of other files (run_dir.claim). Every mode holds
    <model_dir>/.minc_tf.lock while it runs (run_dir.Lock), so a second one stops.

  Phases (docs/architecture.md): checks, set-up, then resume + fit + finish (training) or the
  newest checkpoint; then evaluation and results. Every worker of a multi-worker run runs
  every phase (saves and feature extraction are collectives); each writes only through
  job.out(): model_dir on the chief, a private temporary directory on the other workers.
  tensorboard_update_freq: steps between TensorBoard scalar writes.
  """
  settings = types.SimpleNamespace(**locals())  # run()'s arguments by name, for its phases
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
      ('objective_pairs', objective_pairs, int_at_least(0)),
      ('eval_train_examples', eval_train_examples, int_at_least(1, optional=True)),
      ('eval_test_examples', eval_test_examples, int_at_least(1, optional=True)),
      ('tensorboard_update_freq', tensorboard_update_freq, int_at_least(1)),
      ('feature_rank_every_steps', feature_rank_every_steps, int_at_least(1, optional=True)),
      ('feature_rank_per_epoch', feature_rank_per_epoch, int_at_least(1)),
      ('feature_rank_images', feature_rank_images, int_at_least(0)),
      ('checkpoint_every_steps', checkpoint_every_steps, int_at_least(1, optional=True)),
      ('checkpoint_every_secs', checkpoint_every_secs,
       real_in(0, math.inf, low_open=True, optional=True)),
      ('keep_checkpoints', keep_checkpoints, int_at_least(1)),
      ('max_weight_growth', max_weight_growth,
       real_in(1, math.inf, low_open=True, optional=True)),
      ('sync_bn', sync_bn, one_of((None, False, True))),
      ('export_formats', export_formats, subset_of(EXPORT_FORMATS))):
    require(f'run.{name}', value, check)
  evaluate.check_settings()
  strategy_lib.check_host_loop(strategy, steps_per_execution, 'run.steps_per_execution')
  if offline_linear_eval:
    strategy_lib.check_host_loop(strategy,
                                 evaluate.settings('offline_linear_eval')['steps_per_execution'],
                                 'offline_linear_eval.steps_per_execution')
  if mode != 'eval':  # the modes that export: a converter missing here fails now, not then
    export_lib.check_formats(export_formats)
  if seed is not None:
    keras.utils.set_random_seed(seed)
  # The default strategy is the single-device one; others keep their inter-op pool.
  runtime.set_up_determinism(deterministic, one_op_at_a_time=strategy is tf.distribute.get_strategy())
  if deterministic and os.environ.get('TF_ENABLE_ONEDNN_OPTS') == '1':
    logging.warning('run.deterministic=True: oneDNN kernels are not bit-reproducible; set '
                    'TF_ENABLE_ONEDNN_OPTS=0 before launching for identical reruns.')

  job = _set_up(settings)
  try:
    if mode in TRAINING:
      start_step = _resume(job, seed)
      fit = _fit(job, start_step, settings)
      results = _training_results(job, start_step, fit)
      # Written before the export too: a crash there leaves the training's true figures,
      # which the rerun that finishes the run keeps (it trains nothing itself). HParams are
      # written once, with the final results.
      run_dir.write_results(job.out_dir, results, job.checkpointer.step, session=False,
                            hparams=False)
      if fit.guard.preempted:
        _write_results(job, results)
        return results
      _finish_training(job)
    else:
      results = _restored_results(job)
    if mode in ('eval', 'train_and_eval'):
      results['eval_step'] = job.checkpointer.step
      results.update(evaluate.evaluate_encoders(
          job.model.encoder, job.data, eval_batch_size, eval_train_examples, eval_test_examples,
          baselines, knn, strategy, report_test, linear_eval=offline_linear_eval,
          projector=job.model.projector, objective_pairs=objective_pairs,
          objective_mu=getattr(job.model.method, 'mu', None),
          linear_eval_backup=job.out(f'backup_linear_eval_step{job.checkpointer.step}')))
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


def _set_up(settings):
  """Data, model and optimizer (built up front: slots must exist before a checkpoint loads into
  them, and a lazy build inside fit fails under MultiWorkerMirroredStrategy), the memory and
  write checks, and the identity check. Nothing is written before every check has passed.
  settings: run()'s arguments."""
  mode, model_dir, strategy = settings.mode, settings.model_dir, settings.strategy
  # An unset dir always; someone else's files only for training (eval and export read).
  run_dir.claim(model_dir, reuse=settings.reuse_model_dir or mode not in TRAINING)
  global_batch_size, epochs = settings.global_batch_size, settings.epochs
  steps_per_execution, mixed_precision = settings.steps_per_execution, settings.mixed_precision
  seed, augment_on_device = settings.seed, settings.augment_on_device
  replicas = strategy.num_replicas_in_sync
  if global_batch_size % replicas:
    raise UserError(f'The global batch size {global_batch_size} does not divide by the '
                    f'{replicas} replicas of this strategy. Fix: bind '
                    f'run.global_batch_size to a multiple of {replicas}.')
  data = data_lib.load_data()
  if settings.report_test and mode in ('eval', 'train_and_eval') and data.test_split is None:
    raise UserError(f'run.report_test = True, but {data.name} has no test split apart from the '
                    f'one evaluation reads ({data.eval_split!r}). Fix: bind '
                    'load_data.validation_examples = 10000 (fashion_mnist) to hold out a '
                    'validation split, or unbind run.report_test.')
  if mode in ('eval', 'train_and_eval') and data.num_classes == 0:
    raise UserError(f'{data.name} has no labels (a folder of unlabelled images): the probe and '
                    'kNN need them. Fix: pretrain only (--mode=train), then evaluate the '
                    'encoder on labelled images (<dir>/<class>/<image> folders).')
  if mode in ('eval', 'train_and_eval') and data.num_classes < 2:
    raise UserError(f'{data.name} has {data.num_classes} class: its probe and kNN accuracy would '
                    'be 100% whatever the encoder learnt. Fix: give the evaluation labelled '
                    'images of at least two classes, or pretrain only (--mode=train).')
  if global_batch_size > data.num_train:
    raise UserError(f'run.global_batch_size = {global_batch_size} is more than the '
                    f'{data.num_train} training examples of {data.name}. Fix: bind '
                    f'run.global_batch_size to at most {data.num_train}.')
  steps_per_epoch = settings.steps_per_epoch or data.num_train // global_batch_size
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
                                  total_steps=steps_per_epoch * epochs,
                                  sync_bn=replicas > 1 if settings.sync_bn is None else settings.sync_bn)
    optimizer = optim.build_optimizer(global_batch_size, steps_per_epoch, epochs)
    model.compile(optimizer=optimizer, jit_compile=settings.jit_compile,
                  steps_per_execution=steps_per_execution)
  runtime.check_host_memory(model, strategy, global_batch_size)
  if mode in TRAINING:  # eval and export run no training step
    runtime.check_accelerator_memory(model, strategy, global_batch_size, mixed_precision)
  if mode in ('eval', 'train_and_eval'):
    runtime.check_evaluation_memory(
        model.encoder.output_shape[-1], data, settings.eval_train_examples,
        settings.eval_test_examples, settings.baselines, settings.knn, settings.report_test)
  run_dir.check_writable(model_dir)  # after every check above: a refused run creates nothing
  if augment_on_device:
    _, view1, view2 = augment.view_transforms(data.image_shape[0])
    model.device_views = augment.batch_views(view1, view2, data.mean, data.std)
  identity = run_dir.run_identity(
      global_batch_size=global_batch_size, epochs=epochs, steps_per_epoch=steps_per_epoch,
      seed=seed, augment_on_device=augment_on_device,
      mixed_precision=mixed_precision or 'float32')
  record_identity = run_dir.check_identity(model_dir, mode, settings.allow_config_change,
                                           identity)
  out_dir = runtime.worker_dir(strategy, model_dir)
  # Before the Checkpointer can touch the dir (it may rebuild its index), in every mode (an
  # eval writes there too); a refusal on a multi-worker chief is raised on every worker.
  take = lambda: run_dir.Lock(model_dir).acquire() if out_dir == model_dir else None  # noqa
  lock = (checkpoint.on_every_worker(strategy, take) if checkpoint.in_cluster(strategy)
          else take())
  try:
    with strategy.scope():  # the data seed is then the chief's on every worker
      checkpointer = checkpoint.Checkpointer(
          model, os.path.join(model_dir, 'checkpoints'), keep=settings.keep_checkpoints,
          save_directory=os.path.join(out_dir, 'checkpoints'))
      checkpointer.build_optimizer()
  except BaseException:
    if lock is not None:
      lock.release()
    if out_dir != model_dir:
      tf.io.gfile.rmtree(out_dir)
    raise
  return _Job(mode, model_dir, out_dir, strategy, data, model, checkpointer, global_batch_size,
              epochs, steps_per_epoch, identity, record_identity, lock,
              tuple(settings.export_formats))


def _resume(job, seed):
  """Restores the newest readable checkpoint (its step; 0 for a fresh run) unless that would
  overwrite a finished run, and records the run's identity and config."""
  start_step = checkpoint.restore_collectively(job.checkpointer, job.strategy)
  calls = int(getattr(job.model, 'steps_per_execution', 1) or 1)
  done = start_step % job.steps_per_epoch
  if done % calls:  # before anything is written
    fits = [d for d in range(1, calls) if done % d == 0 and job.steps_per_epoch % d == 0]
    raise UserError(f'The run resumes at step {start_step}, {done} steps into an epoch, which '
                    f'is not a multiple of run.steps_per_execution = {calls} (its checkpoint '
                    'was written with another setting): Keras would run past the epoch\'s '
                    f'end. Fix: bind run.steps_per_execution to {max(fits)} (it divides both '
                    f'{done} and the epoch\'s {job.steps_per_epoch} steps) for this run.')
  previous = run_dir.read_results(job.model_dir, job.chief)
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
    run_dir.write_identity(job.out_dir, job.identity)
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


def _fit(job, start_step, settings):
  """Trains from start_step to the planned step, or until a signal, with checkpoints and
  TensorBoard; a NaN loss is a UserError naming the checkpoint kept. settings: run()'s."""
  s = settings
  data, strategy, model = job.data, job.strategy, job.model
  data_seed = int(job.checkpointer.data_seed.numpy())

  def dataset_from(step):
    return strategy.distribute_datasets_from_function(
        lambda ctx: data.pretrain_dataset(ctx.get_per_replica_batch_size(job.global_batch_size),
                                          ctx, seed=data_seed, start_step=step,
                                          crops_only=s.augment_on_device,
                                          ordered=s.seed is not None))

  cluster = checkpoint.in_cluster(strategy)
  guard = checkpoint.TrainingGuard(
      job.checkpointer, every_steps=s.checkpoint_every_steps,
      every_secs=None if cluster else s.checkpoint_every_secs,  # one clock per worker
      strategy=strategy, max_weight_growth=s.max_weight_growth)
  (v1, v2), _ = next(iter(data.pretrain_dataset(4)))
  rank_images = None
  if s.feature_rank_images:
    rank_images = np.concatenate([x.numpy() for x, _ in data.eval_dataset(
        data.eval_split, 256, limit=s.feature_rank_images)])
  tb_dir = job.out('tensorboard')
  run_monitor = monitor.Monitor(
      tb_dir, job.global_batch_size, every_steps=s.tensorboard_update_freq, view_pairs=(v1, v2),
      config_text=gin.config_str(), rank_images=rank_images,
      rank_every_steps=s.feature_rank_every_steps or max(
          job.steps_per_epoch // s.feature_rank_per_epoch, 1),
      curves_path=job.out('curves.json'),
      curves_from=os.path.join(job.model_dir, 'curves.json'))
  callbacks = [  # the guard first: no checkpoint is written after a NaN step.
      guard,
      monitor.TensorBoard(tb_dir, update_freq=s.tensorboard_update_freq),
      run_monitor,
  ]
  start = time.time()
  with guard.catching_signals():  # also between the two fit() calls of a resumed run
    history = _fit_from(model, dataset_from, start_step, job.steps_per_epoch, job.epochs,
                        callbacks, s.verbose, guard)
  wall = time.time() - start
  if guard.diverged_at is not None:
    saved = job.checkpointer.paths
    kept = (f'the last good checkpoint, {saved[-1]}, was kept; rerunning the same command '
            'resumes from it and would diverge again' if saved else
            'no checkpoint had been written yet')
    what = guard.divergence[0].upper() + guard.divergence[1:]
    raise UserError(
        f'{what} at step {guard.diverged_at}; training stopped and {kept}. Fix: lower the '
        'learning rate (build_optimizer.base_lr), keep the output '
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
  previous = run_dir.read_results(job.model_dir, job.chief) if step == start_step else {}
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
  run_dir.save_weights(job.model, job.out_dir)
  export_lib.export_encoder(job.model.encoder, job.data.mean, job.data.std, job.out('export'),
                            step=job.checkpointer.step, formats=job.export_formats)
  files.write(job.out('operative_config.gin'), gin.operative_config_str())


def _restored_results(job):
  """eval / export: the newest readable checkpoint restored (export: written), beside what the
  training run measured."""
  mode = job.mode
  trained = run_dir.read_results(job.model_dir, job.chief).get('final_step')
  if trained and not job.checkpointer.newest_step():
    raise UserError(f'{job.model_dir} holds a run trained to step {trained}, but its '
                    'checkpoints are gone (checkpoints/ is empty or missing), and training '
                    'again would overwrite the finished run. Nothing was changed. Fix: restore '
                    f'{job.model_dir}/checkpoints from a backup, or use the exported encoder '
                    '(export/), or train afresh in another --model_dir.')
  step = checkpoint.restore_collectively(job.checkpointer, job.strategy, required=True)
  previous = run_dir.read_results(job.model_dir, job.chief)
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
    previous = {k: v for k, v in previous.items() if k not in schema.EVAL_KEYS}
  # The config's epochs and steps describe a plan, not this checkpoint: report the step read,
  # and keep what the training run measured (losses, wall time) beside the new figures.
  results = {**previous, 'method': job.model.method.name, 'dataset': job.data.name,
             'batch_size': job.global_batch_size,
             'replicas': job.strategy.num_replicas_in_sync, f'{mode}_checkpoint_step': step}
  if mode == 'export':
    export_lib.export_encoder(job.model.encoder, job.data.mean, job.data.std, job.out('export'),
                              step=step, formats=job.export_formats)
  return results


def _write_results(job, results):
  """results.json and the HParams metrics; the HParams settings are a training run's."""
  run_dir.write_results(job.out_dir, results, job.checkpointer.step,
                        session=job.mode in TRAINING)


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


