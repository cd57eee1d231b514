"""Experiments in miniature, rerunnable: the MINC ablation, the batch-size and projector-width
sweeps, the six methods with their learning rates chosen on validation, the gradient noise.

  python -m minc_tf.main --mode=study --gin_file=gin/study_ablation.gin --model_dir=/tmp/ablation

Each variant is one train.run (pretraining, then the linear probe on frozen features) per seed,
under the base gin files plus the variant's bindings, in <model_dir>/runs/<hash>/seed<s>;
the table (mean +- std over the seeds) goes to <model_dir>/<name>.md and .json (and to `table_path`
when given, e.g. docs/study_ablation.md). docs/study.md has the protocol and the results.
"""

import hashlib
import json
import os
import re
import time

from absl import logging
import gin
import keras
import tensorflow as tf

from minc_tf import files
from minc_tf import gin_internals
from minc_tf import labels
from minc_tf import monitor
from minc_tf import outcome
from minc_tf import run_dir
from minc_tf import schema
from minc_tf import tables
from minc_tf.errors import UserError

# Variants of MINC's open choices (docs/method.md), each a list of gin bindings, on the study's
# base (gin/study_ablation.gin runs a fractional design of its own: run_study.variants).
ABLATION = {
    'no target, decay 0 (batch only)': [],
    'no target, decay 0.99': ['build_model.summary_decay = 0.99'],
    'EMA target, decay 0': ['build_model.use_target = True'],
    'EMA target, decay 0.99': ['build_model.use_target = True',
                               'build_model.summary_decay = 0.99'],
    'spectral contrastive (reference)': ["build_model.method = 'spectral'"],
}

def _sweep(axis, values, minc_decays, pretrain_pairs, batch_size=None):
  """MINC (each summary decay) and Spectral at every value of `axis` ('batch' or 'width'):
  {label: bindings}. pretrain_pairs: the same number of view pairs for every batch size."""
  variants = {}
  for v in values:
    b = v if axis == 'batch' else batch_size
    cell = [f'run.global_batch_size = {b}'] if b else []
    if axis == 'width':
      cell.append(f'build_model.projector_dim = {v}')
    if pretrain_pairs:
      cell.append(f'run.steps_per_epoch = {max(pretrain_pairs // b, 1)}')
    for decay in minc_decays:
      variants[labels.sweep_label(axis, v, decay)] = (
          ["build_model.method = 'minc'", f'build_model.summary_decay = {decay}'] + cell)
    variants[labels.sweep_label(axis, v)] = ["build_model.method = 'spectral'"] + cell
  return variants


def gradient_noise_to_signal(model, dataset, num_batches, summary_noise=True):
  """E||g - mean g||^2 / ||mean g||^2 over `num_batches` minibatch gradients of the SSL loss
  w.r.t. the online encoder and projector, at fixed weights and target.

  summary_noise: MINC's summary takes each batch in as a training step would (decay * M +
  (1 - decay) * the batch's moment, from the same stored M each time, which is restored after),
  so its estimation noise from the current batch is part of the measured noise; False holds
  the stored M constant. The summary's variance over earlier batches (its history) is not
  resampled: the measure is conditional on the trained state.
  """
  variables = model.encoder.trainable_variables + model.projector.trainable_variables
  state = list(model.method.weights)  # the method's own state (MINC's summary), restored after
  grads = []
  for (x1, x2), _ in dataset.take(num_batches):
    kept = [v.numpy() for v in state]
    with tf.GradientTape() as tape:
      loss, _, _, _ = model.compute_ssl_loss(x1, x2, training=True,
                                             update_state=summary_noise and bool(state))
    grads.append(tf.concat([tf.reshape(g, [-1]) for g in tape.gradient(loss, variables)], 0))
    for v, value in zip(state, kept):
      v.assign(value)
  if len(grads) < 2:
    raise UserError(f'The gradient noise needs at least 2 batches; the dataset gave '
                    f'{len(grads)}. Fix: raise run_study.num_batches or use more data.')
  g = tf.stack(grads).numpy().astype('float64')
  mean = g.mean(axis=0)
  noise = ((g - mean) ** 2).sum(axis=1).mean()
  return float(noise / max((mean ** 2).sum(), 1e-30))


def _variance_study(base_gin_files, bindings_for, batch_sizes, pretrain_steps, num_batches,
                    seeds, train_batch_size):
  """Noise-to-signal of MINC and Spectral gradients per batch size, at initialisation and after
  `pretrain_steps` steps of each method's own training (MINC's summary and target as trained),
  for every seed (the initialisation, the training data order and the measured batches)."""
  from minc_tf import config
  from minc_tf import data as data_lib
  from minc_tf import model as model_lib
  from minc_tf import optim
  rows = []
  for seed in seeds:
    for method in ('minc', 'spectral'):
      gin.clear_config()
      keras.backend.clear_session()
      config.parse_gin(list(base_gin_files), bindings_for([f"build_model.method = '{method}'"],
                                                         seed))
      keras.utils.set_random_seed(seed)
      data = data_lib.load_data()
      model = model_lib.build_model(data.image_shape, num_classes=data.num_classes,
                                    total_steps=max(pretrain_steps, 1))
      model.compile(optimizer=optim.build_optimizer(train_batch_size, max(pretrain_steps, 1), 1))
      model.optimizer.build(model.online_variables)
      for stage, steps in (('init', 0), (f'after {pretrain_steps} steps', pretrain_steps)):
        if steps:
          model.fit(data.pretrain_dataset(train_batch_size, seed=seed), steps_per_epoch=steps,
                    epochs=1, verbose=0)
        for b in batch_sizes:
          # Measured batches come from another stream than training's (seed + 1000).
          ratio = gradient_noise_to_signal(model, data.pretrain_dataset(b, seed=seed + 1000),
                                           num_batches)
          rows.append({'method': method, 'stage': stage, 'batch_size': b, 'seed': seed,
                       'num_batches': num_batches, 'noise_to_signal': ratio})
          logging.info('variance: %s', rows[-1])
  return rows


@gin.configurable(denylist=['model_dir', 'strategy', 'allow_config_change', 'command_line',
                            'reuse_model_dir'])
def run_study(model_dir, strategy, name='ablation', base_gin_files=('gin/quickstart.gin',),
              common_bindings=(), seeds=(0,), variants=None, batch_sizes=(64, 128, 256, 512),
              widths=(64, 256, 1024, 2048), sweep_batch_size=64, minc_decays=(0.0, 0.99),
              pretrain_pairs=None, table_path=None, baselines_once=True, pretrain_steps=200,
              num_batches=32, variance_batch_size=256, methods=None, learning_rates=(),
              screen_batch_size=64, max_learning_rate=6.4e-2, allow_config_change=False, command_line=((), ()), reuse_model_dir=False):
  """Runs every variant of study `name` for every seed and writes the table (mean +- std over
  the seeds). A finished run (its bindings unchanged) is read back, not rerun.

  name: 'ablation' (ABLATION, or `variants`), 'batch_sweep' / 'width_sweep' (MINC at each of
    `minc_decays` and Spectral at each of `batch_sizes`, or each projector width in `widths` at
    `sweep_batch_size`; pretrain_pairs: the same view pairs per run), 'variance', or any name
    with `variants` ({label: [bindings]}); 'methods': each of `methods` ({label: [bindings]})
    at each of `learning_rates` on validation at the first seed, then each at its best rate at
    every seed with the test split scored (run.report_test); 'outcome': the registered test
    of docs/study_preregistration.md: each arm of `methods` screened over `learning_rates` at
    `screen_batch_size` (the first seed, lowest validation Spectral objective; a best rate at
    the top of the grid extends it by doubling up to max_learning_rate), then run at its rate
    at each of `batch_sizes` for every seed (outcome.py reads the contrasts).
  Every run parses base_gin_files and the command line's gin files (command_line, from main),
  then common_bindings, the variant's bindings, `run.seed = s` and the command line's bindings,
  which may not set what a variant sets (an error); a run.seed on the command line (file or
  binding) replaces `seeds`. Runs live in <model_dir>/runs/<hash of the parsed configuration,
  less the evaluation-only settings>/seed<s>, each with a study_run_<hash>.json record per
  evaluation.
  A run stopped by SIGTERM or Ctrl-C stops the study (its table holds the runs done); rerunning
  the command resumes it. allow_config_change: main's flag, for every variant's train.run;
  reuse_model_dir: main's flag, for a model_dir that holds other files (run_dir.claim).
  name: 'ablation', 'batch_sweep', 'width_sweep', 'variance', 'methods', 'outcome' or your own
    with variants.
  base_gin_files / common_bindings: the gin files and bindings under every run of the study.
  seeds: the seeds every variant runs at.
  variants: {label: [bindings]}: the study's rows (default: its name's).
  batch_sizes / widths / sweep_batch_size / minc_decays / pretrain_pairs: the sweeps' cells; the
    outcome study's batch sizes.
  table_path: also write the table there (e.g. docs/study_ablation.md).
  baselines_once: probe the random-init encoder and raw pixels once per seed, not per run.
  pretrain_steps / num_batches / variance_batch_size: the variance study's checkpoint step,
    batches and batch size.
  methods / learning_rates: the methods and outcome studies' {label: [bindings]} and their lr
    grid.
  screen_batch_size / max_learning_rate: the outcome study's screen batch, and its cap for
    extending the grid upward.
  """
  from minc_tf import config
  from minc_tf import train
  run_dir.claim(model_dir, reuse=reuse_model_dir)
  cli_files, cli_bindings = (list(x) for x in command_line)
  # main parsed the command line (its files and bindings) before calling: a run.seed bound
  # there, by either, replaces the study's seeds ("the same command with run.seed = 1").
  cli_seed = gin.get_bindings('run').get('seed')
  command_line_keys = {monitor.binding_key(m.group(1)) for m in re.finditer(
      r'^([A-Za-z_][\w./]*) = ', gin.config_str(), re.M)} | {
          monitor.binding_key(b) for b in cli_bindings}
  seeds = list(seeds)
  if cli_seed is not None and seeds != [cli_seed]:
    logging.warning('The command line sets run.seed = %s: the study runs that seed only (not '
                    'run_study.seeds = %s).', cli_seed, tuple(seeds))
    seeds = [cli_seed]
  if not seeds:
    raise UserError('run_study.seeds is empty. Fix: give at least one seed, e.g. (0, 1, 2).')

  def bindings_for(bindings, seed):
    return list(common_bindings) + list(bindings) + [f'run.seed = {seed}'] + cli_bindings

  base_gin_files = list(base_gin_files) + cli_files
  chief = strategy.extended.should_checkpoint  # a multi-worker study's other workers write nothing
  if name == 'variance':
    rows = _variance_study(base_gin_files, bindings_for, batch_sizes, pretrain_steps,
                           num_batches, seeds, variance_batch_size)
    if chief:
      tables.write_variance(model_dir, rows, table_path)
    return [{'variant': f"{r['method']} {r['stage']} B={r['batch_size']} seed={r['seed']}",
             'probe_top1': r['noise_to_signal']} for r in rows]
  if name in ('methods', 'outcome'):
    variants = _learning_rate_grid(methods, learning_rates)
  else:
    variants = study_variants(name, variants, batch_sizes, widths, sweep_batch_size,
                              minc_decays, pretrain_pairs)
  varied = {monitor.binding_key(b) for bindings in list(variants.values()) + list(
      (methods or {}).values()) for b in bindings}
  if name in ('methods', 'outcome'):
    varied.add('build_optimizer.base_lr')
  if name == 'outcome':
    varied.add('run.global_batch_size')
  clashes = sorted(varied & command_line_keys)
  if clashes:
    raise UserError(f'The command line sets {", ".join(clashes)}, which the variants of study '
                    f'{name!r} set themselves (the rows would be mislabelled). Fix: remove it '
                    'from the --gin_bindings or --gin_file that sets it and change the study\'s '
                    'own settings instead (run_study.variants, batch_sizes, widths, '
                    'learning_rates or methods), or run a plain train_and_eval.')
  shown = {}  # the configuration of the study's first run, printed under its table
  if chief:  # the HParams dashboard over <model_dir> shows the settings the variants change.
    monitor.write_hparams_config(model_dir, sorted({monitor.binding_key(b)
                                                    for bindings in variants.values()
                                                    for b in bindings}))
  rows = []

  def run_all(variants, seeds, extra=(), baselines=True):
    """Runs (or reads back) every variant at every seed into `rows`; False when stopped."""
    for seed in seeds:
      for i, (label, bindings) in enumerate(variants.items()):
        first = baselines and i == 0  # each seed's baselines: its random-init encoder differs
        full = bindings_for(bindings + list(extra) + (
            [] if (first or not baselines_once) else ['run.baselines = False']), seed)
        gin.clear_config()
        keras.backend.clear_session()
        config.parse_gin(base_gin_files, full)
        configuration = _run_configuration()
        shown.setdefault('configuration', configuration)
        # The directory is named by what the run trains (run_name), not by the label or
        # position: a changed variant starts a new run; the same training under other
        # evaluation settings is evaluated by train.run, which finds it trained, and keeps a
        # record of its own.
        run = run_name(configuration, seed, model_dir)
        path = os.path.join(model_dir, run)
        record = os.path.join(path, f'study_run_{_digest(configuration)}.json')
        row = _finished(record, configuration)
        if row is None:
          start = time.time()
          result = train.run('train_and_eval', path, strategy,
                             allow_config_change=allow_config_change)
          if result.get('preempted'):
            logging.warning('%s stopped %s (%s), seed %d; rerun the same command to resume the '
                            'study.', result['preempted'], path, label, seed)
            return False
          row = dict(result, variant=label, seed=seed, bindings=bindings,
                     code=code_version(), total_wall_time_s=round(time.time() - start, 1))
          if chief:
            tf.io.gfile.makedirs(path)
            files.write(record, json.dumps(
                {'configuration': configuration, 'gin_files': base_gin_files,
                 'bindings': full, 'row': row}, indent=2))
        rows.append(dict(row, variant=label, run=run))
        if chief:
          tables.write(model_dir, name, rows, table_path, shown['configuration'])
    return True

  if name == 'outcome':
    return _outcome(run_all, rows, methods, learning_rates, batch_sizes, screen_batch_size,
                    seeds, max_learning_rate)
  if name != 'methods':
    run_all(variants, seeds)
    return rows
  # Screen each method's learning rates on validation at the first seed, then run each method
  # at its chosen rate at every seed with the test split scored (read once per final config).
  if not run_all(variants, seeds[:1], baselines=False):  # the finals carry the baselines
    return rows
  finals = {}
  for label, bindings in methods.items():
    screened = {lr: r.get('probe_top1') for r in rows for lr in learning_rates
                if r['variant'] == labels.screen_label(label, lr)}
    best = tables.best(screened)
    finals[labels.final_label(label, best)] = list(bindings) + [
        f'build_optimizer.base_lr = {best!r}']
  run_all(finals, seeds, extra=['run.report_test = True'])
  return rows


def _outcome(run_all, rows, arms, learning_rates, batch_sizes, screen_batch_size, seeds,
             max_learning_rate):
  """The outcome study's screen, then its cells (run_study, name='outcome')."""
  if not batch_sizes:
    raise UserError('The outcome study needs run_study.batch_sizes (e.g. (16, 64, 256)).')

  def at(bindings, batch_size, lr):
    return list(bindings) + [f'run.global_batch_size = {batch_size}',
                             f'build_optimizer.base_lr = {lr!r}']

  chosen = {}
  for arm, bindings in arms.items():
    rates, todo = [], sorted(learning_rates)
    while todo:
      screen = {labels.screen_label(arm, lr): at(bindings, screen_batch_size, lr) for lr in todo}
      if not run_all(screen, seeds[:1], baselines=False):
        return rows
      rates += todo
      best = outcome.lowest({lr: r.get(outcome.ENDPOINT) for r in rows for lr in rates
                             if r['variant'] == labels.screen_label(arm, lr)})
      # The best rate at the top of the grid: the optimum may lie above it (registered).
      todo = [best * 2] if best == max(rates) and best * 2 <= max_learning_rate else []
    chosen[arm] = best
  finals = {labels.cell_label(arm, b, chosen[arm]): at(bindings, b, chosen[arm])
            for arm, bindings in arms.items() for b in batch_sizes}
  run_all(finals, seeds, extra=['run.report_test = True'])
  return rows


def study_variants(name, variants=None, batch_sizes=(), widths=(), sweep_batch_size=64,
                   minc_decays=(0.0,), pretrain_pairs=None):
  """{label: [bindings]} of study `name` (run_study's arguments): `variants` when given, else the
  batch or width sweep, else ABLATION."""
  if variants is None:
    if name == 'batch_sweep':
      variants = _sweep('batch', batch_sizes, minc_decays, pretrain_pairs)
    elif name == 'width_sweep':
      variants = _sweep('width', widths, minc_decays, pretrain_pairs, sweep_batch_size)
    else:
      variants = ABLATION
  variants = {label: list(b) for label, b in variants.items()}
  if not variants:
    raise UserError(f'Study {name!r} has no variants. Fix: bind run_study.variants.')
  return variants


def _learning_rate_grid(methods, learning_rates):
  """The methods study's screen: every method at every learning rate."""
  if not methods or not learning_rates:
    raise UserError('The methods study needs run_study.methods ({label: [bindings]}) and '
                    'run_study.learning_rates (e.g. (5e-4, 1e-3, 2e-3)). Fix: bind both.')
  return {labels.screen_label(label, lr): list(bindings) + [f'build_optimizer.base_lr = {lr!r}']
          for label, bindings in methods.items() for lr in learning_rates}


def _finished(path, configuration):
  """The row of a finished run of exactly this configuration (gin's parsed bindings), else
  None. A row made by other code is read back with a warning (its 'code' says which)."""
  if not tf.io.gfile.exists(path):
    return None
  try:
    with tf.io.gfile.GFile(path) as f:
      done = json.loads(f.read())
  except (ValueError, UnicodeDecodeError):
    return None
  if done.get('configuration') != configuration:
    return None  # a hash collision of the directory name; train.run's identity check refuses
  row = done['row']
  if row.get('code') != code_version():
    logging.warning('%s was made by other minc_tf code (%s, now %s); its figures are read '
                    'back as they are. To retrain, use a new --model_dir.', path,
                    row.get('code'), code_version())
  else:
    logging.info('%s: finished earlier, read back.', path)
  return row


def _run_configuration():
  """gin's bound parameters without run_study's own (the study's seeds, tables and variant
  lists do not change what a run trains)."""
  return '\n\n'.join(block for block in gin.config_str().split('\n\n')
                     if not block.strip().startswith('# Parameters for run_study:'))


def run_name(configuration, seed, model_dir=None):
  """runs/<hash>/seed<s>: the run directory of the parsed gin config within a study.

  The hash is of the settings that define a run (schema.defines_run: the ones run_identity.json
  records too) and of every gin macro (a defining setting may take its value from one), as
  bound, leaving out those bound to their code default: a setting added to
  the code later, or a binding that restates a default, does not rename the run. A default
  changed since is compared as it was (schema.NAMING_DEFAULTS): binding the new value keeps the
  run's old name, leaving it unbound (now a different training) names a new run. Study dirs
  made before this rule named runs by the whole parsed config less two evaluation settings
  (legacy_run_name); where such a directory exists in model_dir, it is used.
  """
  def default(key):
    selector, _, param = key.rpartition('.')
    defaults = gin_internals.defaults(selector.rpartition('/')[2])
    if key in schema.NAMING_DEFAULTS:
      return True, schema.record_value(schema.NAMING_DEFAULTS[key])
    return param in defaults, schema.record_value(defaults.get(param))

  defining = {}
  from minc_tf import methods  # pylint: disable=import-outside-toplevel
  method = gin.get_bindings('build_model').get('method', gin_internals.defaults(
      'build_model').get('method'))
  read = methods.get(method).SETTINGS if method in methods.names() else {}
  for key in schema.NAMING_DEFAULTS:  # unbound: the code's current default, named if changed
    selector, _, param = key.rpartition('.')
    if param not in read:  # a setting this run's method never reads changes nothing
      continue
    current = schema.record_value(gin_internals.defaults(selector).get(param))
    if current != default(key)[1]:
      defining[key] = current
  for full, value in gin_internals.bound_values().items():
    if full.endswith('gin.macro.value'):  # a macro: its value may define a run (%EPOCHS)
      defining[full] = schema.record_value(value)
      continue
    key = monitor.binding_key(full)
    if not schema.defines_run(key):
      continue
    value = schema.record_value(value)
    has_default, base = default(key)
    if has_default and base == value:
      defining.pop(key, None)
      continue
    defining[key] = value
  name = os.path.join('runs', _digest(json.dumps(defining, sort_keys=True)), f'seed{seed}')
  if model_dir is not None:
    legacy = legacy_run_name(configuration, seed)
    if tf.io.gfile.exists(os.path.join(model_dir, legacy)):
      return legacy
  return name


# Settings that change what a run evaluates, not what it trains (the legacy rule's only ones).
_EVALUATION_ONLY = ('run.baselines = ', 'run.report_test = ')


def legacy_run_name(configuration, seed):
  """The run directory of studies made before run_name's rule: a hash of the whole parsed
  config (_run_configuration) less _EVALUATION_ONLY."""
  trained = '\n'.join(line for line in configuration.split('\n')
                      if not line.startswith(_EVALUATION_ONLY))
  return os.path.join('runs', _digest(trained), f'seed{seed}')


def code_version():
  """A short hash of the minc_tf sources: which code made a study's row."""
  package = os.path.dirname(os.path.abspath(__file__))
  digest = hashlib.sha256()
  for name in sorted(os.listdir(package)):
    if name.endswith('.py'):
      with open(os.path.join(package, name), 'rb') as f:
        digest.update(name.encode() + f.read())
  return digest.hexdigest()[:10]


def _digest(text):
  return hashlib.sha256(text.encode()).hexdigest()[:12]
