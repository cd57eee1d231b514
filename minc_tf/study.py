"""Experiments in miniature, rerunnable: the MINC ablation and the batch-size sweep.

  python -m minc_tf.main --mode=study --gin_file=gin/study_ablation.gin --model_dir=/tmp/ablation

Each variant is one train.run (pretraining, then the linear probe on frozen features) under the
base gin files plus the variant's bindings; the table goes to <model_dir>/<name>.md and .json
(and to `table_path` when given, e.g. docs/ablation.md).
"""

import json
import os
import platform
import time

from absl import logging
import gin
import keras
import tensorflow as tf

from minc_tf import files
from minc_tf import monitor
from minc_tf import plots

# Variants of MINC's open choices (docs/method.md), each a list of gin bindings.
ABLATION = {
    # The base: the MINC defaults when the ablation ran (gin/study_ablation.gin pins them).
    'EMA target, decay 0.99, full M (the earlier default)': [],
    'summary decay 0.9': ['build_model.summary_decay = 0.9'],
    'summary decay 0 (batch only)': ['build_model.summary_decay = 0.0'],
    'lower triangular (GHA)': ['build_model.lower_triangular = True'],
    'no target network (sg online)': ['build_model.use_target = False'],
    'no target + lower triangular': ['build_model.use_target = False',
                                     'build_model.lower_triangular = True'],
    'spectral contrastive (reference)': ["build_model.method = 'spectral'"],
}


def _batch_sweep(batch_sizes):
  return {f'{method} B={b}': [f"build_model.method = '{method}'", f'run.global_batch_size = {b}']
          for b in batch_sizes for method in ('minc', 'spectral')}


def gradient_noise_to_signal(model, dataset, num_batches):
  """E||g - mean g||^2 / ||mean g||^2 over `num_batches` minibatch gradients of the SSL loss
  w.r.t. the online encoder and projector, at fixed weights, summary and target."""
  variables = model.encoder.trainable_variables + model.projector.trainable_variables
  grads = []
  for (x1, x2), _ in dataset.take(num_batches):
    with tf.GradientTape() as tape:
      loss, _, _, _ = model.compute_ssl_loss(x1, x2, training=True, update_summary=False)
    grads.append(tf.concat([tf.reshape(g, [-1]) for g in tape.gradient(loss, variables)], 0))
  g = tf.stack(grads).numpy().astype('float64')
  mean = g.mean(axis=0)
  noise = ((g - mean) ** 2).sum(axis=1).mean()
  return float(noise / max((mean ** 2).sum(), 1e-30))


def _variance_study(model_dir, base_gin_files, common_bindings, batch_sizes, pretrain_steps,
                    num_batches):
  """Noise-to-signal of MINC and Spectral gradients per batch size, at initialisation and after
  `pretrain_steps` steps of each method's own training (MINC's summary and target as trained)."""
  from minc_tf import config
  from minc_tf import data as data_lib
  from minc_tf import model as model_lib
  from minc_tf import optim
  rows = []
  for method in ('minc', 'spectral'):
    gin.clear_config()
    keras.backend.clear_session()
    config.parse_gin(list(base_gin_files), list(common_bindings) +
                     [f"build_model.method = '{method}'"])
    keras.utils.set_random_seed(0)
    data = data_lib.load_data()
    model = model_lib.build_model(data.image_shape, num_classes=data.num_classes,
                                  total_steps=max(pretrain_steps, 1))
    batch = 256
    model.compile(optimizer=optim.build_optimizer(batch, max(pretrain_steps, 1), 1))
    model.optimizer.build(model.online_variables)
    for stage, steps in (('init', 0), (f'after {pretrain_steps} steps', pretrain_steps)):
      if steps:
        model.fit(data.pretrain_dataset(batch, seed=0), steps_per_epoch=steps, epochs=1,
                  verbose=0)
      for b in batch_sizes:
        ratio = gradient_noise_to_signal(model, data.pretrain_dataset(b, seed=1), num_batches)
        rows.append({'method': method, 'stage': stage, 'batch_size': b, 'noise_to_signal': ratio})
  return rows


@gin.configurable(denylist=['model_dir', 'strategy', 'allow_config_change'])
def run_study(model_dir, strategy, name='ablation', base_gin_files=('gin/quickstart.gin',),
              common_bindings=(), batch_sizes=(64, 128, 256, 512), table_path=None,
              baselines_once=True, pretrain_steps=200, num_batches=16, variants=None,
              allow_config_change=False):
  """Runs every variant of study `name` ('ablation', 'batch_sweep' or 'variance') and writes
  the table. `variants` ({label: [bindings]}) replaces the study's own list. A variant stopped
  by SIGTERM or Ctrl-C stops the study (its table holds the variants done); rerunning the
  command resumes it. allow_config_change: main's flag, for every variant's train.run."""
  from minc_tf import config
  from minc_tf import train
  chief = strategy.extended.should_checkpoint  # a multi-worker study's other workers write nothing
  if name == 'variance':
    rows = _variance_study(model_dir, base_gin_files, common_bindings, batch_sizes,
                           pretrain_steps, num_batches)
    if chief:
      _write_variance(model_dir, rows, table_path)
    return [{'variant': f"{r['method']} {r['stage']} B={r['batch_size']}",
             'probe_top1': r['noise_to_signal']} for r in rows]
  if variants is None:
    variants = ABLATION if name == 'ablation' else _batch_sweep(batch_sizes)
  variants = {label: list(b) for label, b in variants.items()}
  operative = gin.config_str()
  if chief:  # the HParams dashboard over <model_dir> shows the settings the variants change.
    monitor.write_hparams_config(model_dir, sorted({monitor.binding_key(b)
                                                    for bindings in variants.values()
                                                    for b in bindings}))
  rows = []
  for i, (label, bindings) in enumerate(variants.items()):
    gin.clear_config()
    keras.backend.clear_session()
    extra = [] if (i == 0 or not baselines_once) else ['run.baselines = False']
    config.parse_gin(list(base_gin_files), list(common_bindings) + bindings + extra)
    start = time.time()
    result = train.run('train_and_eval', os.path.join(model_dir, f'variant{i}'), strategy,
                       allow_config_change=allow_config_change)
    if result.get('preempted'):
      logging.warning('%s stopped variant %d (%s); rerun the same command to resume the study.',
                      result['preempted'], i, label)
      break
    result.update(variant=label, bindings=bindings, total_wall_time_s=round(time.time() - start, 1))
    rows.append(result)
    if chief:
      _write(model_dir, name, rows, table_path, operative)
  return rows


def _write_variance(model_dir, rows, table_path):
  tf.io.gfile.makedirs(model_dir)
  files.write(os.path.join(model_dir, 'variance.json'), json.dumps(rows, indent=2))
  lines = ['| stage | batch | MINC noise/signal | Spectral noise/signal | MINC / Spectral |',
           '|---|---|---|---|---|']
  index = {(r['method'], r['stage'], r['batch_size']): r['noise_to_signal'] for r in rows}
  for stage, b in sorted({(r['stage'], r['batch_size']) for r in rows},
                         key=lambda k: (k[0] != 'init', k[1])):
    m, s = index[('minc', stage, b)], index[('spectral', stage, b)]
    lines.append(f'| {stage} | {b} | {m:.3g} | {s:.3g} | {m / s:.2f} |')
  lines.append('\nNoise-to-signal: E||g - mean g||^2 / ||mean g||^2 over minibatch gradients of '
               'the online encoder and projector at fixed weights (scale-free, so the two losses '
               f'compare). Machine: {platform.machine()}, {os.cpu_count()} CPUs.')
  text = '\n'.join(lines) + '\n'
  for path in filter(None, [os.path.join(model_dir, 'variance.md'), table_path]):
    files.write(path, text)


def _write(model_dir, name, rows, table_path, operative):
  tf.io.gfile.makedirs(model_dir)
  files.write(os.path.join(model_dir, f'{name}.json'), json.dumps(rows, indent=2))
  lines = ['| variant | probe top-1 | kNN top-1 | feature eff. rank | final loss | '
           'pretrain s | images/s |', '|---|---|---|---|---|---|---|']
  for r in rows:
    lines.append(f"| {r['variant']} | {r.get('probe_top1', float('nan')):.2f} | "
                 f"{r.get('knn_top1', float('nan')):.2f} | "
                 f"{r.get('feature_effective_rank', float('nan')):.1f} | "
                 f"{r.get('final_loss', float('nan')):.4f} | {r.get('pretrain_wall_time_s')} | "
                 f"{r.get('images_per_s')} |")
  base = rows[0]
  if 'random_init_top1' in base:
    pixels = (f"raw pixels {base['raw_pixel_top1']:.2f}" if 'raw_pixel_top1' in base else
              f"raw pixels {base.get('raw_pixel_note', 'not measured')}")
    lines.append(f"\nSame run, same probe: random-init encoder {base['random_init_top1']:.2f}, "
                 f'{pixels}.')
  lines.append(f'\nMachine: {platform.machine()}, {os.cpu_count()} CPUs, TensorFlow '
               f'{tf.__version__}, Keras {keras.__version__}.')
  lines.append('\nBase configuration (before each variant\'s bindings):\n\n```\n' + operative +
               '```\n')
  text = '\n'.join(lines) + '\n'
  png = os.path.join(model_dir, f'{name}.png')
  drawn = plots.plot_study(rows, png, title=f'study: {name}')
  for path in filter(None, [os.path.join(model_dir, f'{name}.md'), table_path]):
    files.write(path, text)
    copy = os.path.splitext(path)[0] + '.png'
    if drawn and copy != png:  # drawn once, copied beside the table
      tf.io.gfile.copy(png, copy, overwrite=True)
