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

import gin
import keras
import tensorflow as tf

# Variants of MINC's open choices (docs/method.md), each a list of gin bindings.
ABLATION = {
    'default (decay 0.99, EMA target, full M)': [],
    'summary decay 0.9': ['build_model.summary_decay = 0.9'],
    'summary decay 0 (batch only)': ['build_model.summary_decay = 0.0'],
    'lower triangular (GHA)': ['build_model.lower_triangular = True'],
    'no target network (sg online)': ['build_model.use_target = False'],
    'spectral contrastive (reference)': ["build_model.method = 'spectral'"],
}


def _batch_sweep(batch_sizes):
  return {f'{method} B={b}': [f"build_model.method = '{method}'", f'run.global_batch_size = {b}']
          for b in batch_sizes for method in ('minc', 'spectral')}


@gin.configurable(denylist=['model_dir', 'strategy'])
def run_study(model_dir, strategy, name='ablation', base_gin_files=('gin/quickstart.gin',),
              common_bindings=(), batch_sizes=(64, 128, 256, 512), table_path=None,
              baselines_once=True):
  """Runs every variant of study `name` ('ablation' or 'batch_sweep') and writes the table."""
  from minc_tf import main as main_lib
  from minc_tf import train
  variants = ABLATION if name == 'ablation' else _batch_sweep(batch_sizes)
  operative = gin.config_str()
  rows = []
  for i, (label, bindings) in enumerate(variants.items()):
    gin.clear_config()
    keras.backend.clear_session()
    extra = [] if (i == 0 or not baselines_once) else ['run.baselines = False']
    main_lib.parse_gin(list(base_gin_files), list(common_bindings) + bindings + extra)
    start = time.time()
    result = train.run('train_and_eval', os.path.join(model_dir, f'variant{i}'), strategy)
    result.update(variant=label, bindings=bindings, total_wall_time_s=round(time.time() - start, 1))
    rows.append(result)
    _write(model_dir, name, rows, table_path, operative)
  return rows


def _write(model_dir, name, rows, table_path, operative):
  tf.io.gfile.makedirs(model_dir)
  with tf.io.gfile.GFile(os.path.join(model_dir, f'{name}.json'), 'w') as f:
    json.dump(rows, f, indent=2)
  lines = [f'| variant | probe top-1 | kNN top-1 | feature eff. rank | final loss | '
           'pretrain s | images/s |', '|---|---|---|---|---|---|---|']
  for r in rows:
    lines.append(f"| {r['variant']} | {r.get('probe_top1', float('nan')):.2f} | "
                 f"{r.get('knn_top1', float('nan')):.2f} | "
                 f"{r.get('feature_effective_rank', float('nan')):.1f} | "
                 f"{r.get('final_loss', float('nan')):.4f} | {r.get('pretrain_wall_time_s')} | "
                 f"{r.get('images_per_s')} |")
  base = rows[0]
  if 'random_init_top1' in base:
    lines.append(f"\nSame run, same probe: random-init encoder {base['random_init_top1']:.2f}, "
                 f"raw pixels {base['raw_pixel_top1']:.2f}.")
  lines.append(f'\nMachine: {platform.machine()}, {os.cpu_count()} CPUs, TensorFlow '
               f'{tf.__version__}, Keras {keras.__version__}.')
  lines.append('\nBase configuration (before each variant\'s bindings):\n\n```\n' + operative +
               '```\n')
  text = '\n'.join(lines) + '\n'
  for path in filter(None, [os.path.join(model_dir, f'{name}.md'), table_path]):
    with tf.io.gfile.GFile(path, 'w') as f:
      f.write(text)
