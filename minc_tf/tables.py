"""A study's tables: means over seeds, differences paired by seed, and the markdown (with its
plot) that study.run_study writes beside its runs and into docs/.

Rows are study.run_study's: train.run's results plus 'variant' (the label) and 'seed'. Labels
carry the structure the tables need (labels.py writes and parses them).
"""
import json
import os
import platform

import keras
import numpy as np
import tensorflow as tf

from minc_tf import files
from minc_tf import labels
from minc_tf import outcome
from minc_tf import plots
from minc_tf import schema
from minc_tf.errors import UserError

# Summary columns of a study's table: (results key, header), mean +- std over the seeds.
COLUMNS = schema.COLUMNS



def mean_std(values):
  """(mean, sample std); the std is None for a single value (no spread measured)."""
  return (float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else None)


def pm(value, digits=2):
  """'mean +- std' of a (mean, std) pair ('-' when missing; the mean alone for one seed)."""
  if value is None:
    return '-'
  if value[1] is None:
    return f'{value[0]:.{digits}f} (1 seed)'
  return f'{value[0]:.{digits}f} +- {value[1]:.{digits}f}'


def best(scores):
  """The key with the highest finite score (a diverged run's NaN never wins)."""
  finite = {k: v for k, v in scores.items()
            if isinstance(v, (int, float)) and np.isfinite(v)}
  if not finite:
    raise UserError(f'Every screened run diverged or has no probe figure ({scores}). Fix: '
                    'lower the learning rate (run_study.learning_rates in a methods study, '
                    'build_optimizer.base_lr otherwise).')
  return max(finite, key=finite.get)


def _by_seed(rows, key, group=lambda r: r['variant'], missing=None):
  """{group(row): {seed: row[key]}} in order of first appearance; rows whose group is None are
  left out, and so are rows without a number for `key` unless `missing` stands in for it."""
  out = {}
  for r in rows:
    g = group(r)
    value = r.get(key) if isinstance(r.get(key), (int, float)) else missing
    if g is not None and value is not None:
      out.setdefault(g, {})[r.get('seed')] = value
  return out


def paired(a, b):
  """(mean, std) of a[s] - b[s] over the seeds both {seed: value} have; None when none.
  Seeds share the initialisation and the data order across variants, so a difference paired
  by seed is tighter than the two rows' own spreads."""
  seeds = sorted(set(a) & set(b), key=str)
  return mean_std([a[s] - b[s] for s in seeds]) if seeds else None


def summarize(rows):
  """Per variant (in order of first appearance): {'variant', 'n', 'seeds', key: (mean, std)}
  over its seeds; std is the sample standard deviation (None for one seed)."""
  out = {}
  for r in rows:
    out.setdefault(r['variant'], []).append(r)
  table = []
  for label, group in out.items():
    entry = {'variant': label, 'n': len(group), 'seeds': [r.get('seed') for r in group]}
    for key, _ in COLUMNS:
      values = [r[key] for r in group if isinstance(r.get(key), (int, float))]
      if values:
        entry[key] = mean_std(values)
    table.append(entry)
  return table


def paired_differences(rows, key='probe_top1'):
  """{variant: (mean, std)} of `key` minus the first variant's, seed by seed (seeds both
  have); variants sharing no seed with the first are left out."""
  by = _by_seed(rows, key)
  if not by:
    return {}
  first = next(iter(by.values()))
  out = {v: paired(values, first) for v, values in list(by.items())[1:]}
  return {v: d for v, d in out.items() if d is not None}


def sweep_differences(rows):
  """MINC minus Spectral per sweep cell ('B=64', 'k=256', ...): MINC's summary decay chosen by
  the mean validation probe in that cell, then the per-seed differences (paired by seed), mean
  +- std. Returns [{'cell', 'x', 'decay', 'n', 'per_decay': {decay: (mean, std)},
  'probe': (mean, std), 'knn': (mean, std)}]: per_decay pairs each decay alone (no selection,
  so no bias towards MINC)."""
  def arm(r):  # ((axis, x), decay or 'spectral')
    return labels.parse_sweep(r['variant'])

  # A run without a probe figure counts as NaN, so a decay missing a seed's figure is never
  # chosen on the seeds it has.
  probe, knn = _by_seed(rows, 'probe_top1', arm, np.nan), _by_seed(rows, 'knn_top1', arm)
  out = []
  for cell in sorted({c for c, _ in probe}):
    decays = [d for c, d in probe if c == cell and d != 'spectral']
    spectral = probe.get((cell, 'spectral'))
    if not decays or not spectral:
      continue
    chosen = best({d: np.mean(list(probe[(cell, d)].values())) for d in decays})
    entry = {'cell': f'{cell[0]}={cell[1]}', 'x': cell[1], 'decay': chosen,
             'n': len(set(probe[(cell, chosen)]) & set(spectral)),
             'per_decay': {d: paired(probe[(cell, d)], spectral) for d in decays}}
    entry['per_decay'] = {d: v for d, v in entry['per_decay'].items() if v is not None}
    for name, by in (('probe', probe), ('knn', knn)):
      diff = paired(by.get((cell, chosen), {}), by.get((cell, 'spectral'), {}))
      if diff is not None:
        entry[name] = diff
    out.append(entry)
  return out


def methods_summary(rows):
  """The methods study's two tables from its rows: the screen, {method: {lr: validation probe}}
  (the first seed), and the finals, [{'method', 'lr', 'n', key: (mean, std)}] with
  'test_probe_vs_first' (each final's test probe minus the first final's, paired by seed)."""
  screen = {}
  for r in rows:
    parsed = labels.parse_screen(r['variant'])
    if parsed and isinstance(r.get('probe_top1'), (int, float)):
      screen.setdefault(parsed[0], {})[parsed[1]] = r['probe_top1']
  finals = [e for e in summarize(rows) if labels.parse_final(e['variant'])]
  test = _by_seed(rows, 'test_probe_top1', lambda r: r['variant'] if labels.parse_final(
      r['variant']) else None)
  first = test.get(finals[0]['variant'], {}) if finals else {}
  for e in finals:
    method, lr = labels.parse_final(e['variant'])
    e.update(method=method, lr=lr)
    if e['variant'] != finals[0]['variant']:
      e['test_probe_vs_first'] = paired(test.get(e['variant'], {}), first)
  return screen, finals


def _methods_lines(rows):
  """The methods study's finals and screen tables (none before its first final)."""
  screen, finals = methods_summary(rows)
  if not finals:
    return []
  lines = ['| method | lr | seeds | probe (validation) | kNN (validation) | probe (test) | '
           f"kNN (test) | test probe - {finals[0]['method']}, paired | pretrain s |",
           '|---|---|---|---|---|---|---|---|---|']
  for e in finals:
    lines.append(f"| {e['method']} | {e['lr']:g} | {e['n']} | {pm(e.get('probe_top1'))} | "
                 f"{pm(e.get('knn_top1'))} | {pm(e.get('test_probe_top1'))} | "
                 f"{pm(e.get('test_knn_top1'))} | "
                 f"{pm(e.get('test_probe_vs_first')) if 'test_probe_vs_first' in e else '-'} | "
                 f"{pm(e.get('pretrain_wall_time_s'), 1)} |")
  base = _seed_baselines([r for r in rows if r['variant'] == finals[0]['variant']])
  if base:
    def col(key):
      values = [r[key] for r in base if isinstance(r.get(key), (int, float))]
      return pm(mean_std(values)) if values else '-'
    lines.append(f"| random-init encoder | - | {len(base)} | {col('random_init_top1')} | - | "
                 f"{col('test_random_init_top1')} | - | - | - |")
    lines.append(f"| raw pixels | - | {len(base)} | {col('raw_pixel_top1')} | - | "
                 f"{col('test_raw_pixel_top1')} | - | - | - |")
  lines.append('\nProbe and kNN top-1 (%), mean +- sample std over the seeds; the test split is '
               'read once, by the finals. The seed-0 final is its screen\'s winning run, '
               'evaluated again with the test split, so its validation figure was used to '
               'choose the lr: read the test columns. The baselines are the same probe on a '
               'random-init encoder (one per seed) and on the raw pixels.')
  if screen:
    rates = sorted({lr for by in screen.values() for lr in by})
    lines += ['\nThe screen: probe top-1 on validation at the first seed, per learning rate '
              '(the chosen rate in bold):\n',
              '| method | ' + ' | '.join(f'lr {lr:g}' for lr in rates) + ' |',
              '|---|' + '---|' * len(rates)]
    chosen_lr = {e['method']: e['lr'] for e in finals}
    for method, by in screen.items():
      chosen = chosen_lr.get(method)
      lines.append(f'| {method} | ' + ' | '.join(
          '-' if lr not in by else (f'**{by[lr]:.2f}**' if lr == chosen else f'{by[lr]:.2f}')
          for lr in rates) + ' |')
  return lines


def write_variance(model_dir, rows, table_path):
  """variance.json and variance.md under model_dir (and table_path when given): MINC's and
  Spectral's gradient noise-to-signal per stage and batch size, and their ratio."""
  tf.io.gfile.makedirs(model_dir)
  files.write(os.path.join(model_dir, 'variance.json'), json.dumps(rows, indent=2))
  lines = ['| stage | batch | seeds | MINC noise/signal | Spectral noise/signal | '
           'MINC / Spectral |', '|---|---|---|---|---|---|']
  index = {}
  for r in rows:
    index.setdefault((r['stage'], r['batch_size']), {}).setdefault(r['method'], {})[
        r['seed']] = r['noise_to_signal']
  for (stage, b), by in sorted(index.items(), key=lambda k: (k[0][0] != 'init', k[0][1])):
    seeds = sorted(set(by.get('minc', {})) & set(by.get('spectral', {})))
    if not seeds:
      continue
    m = [by['minc'][s] for s in seeds]
    sp = [by['spectral'][s] for s in seeds]
    ratio = [a / c for a, c in zip(m, sp)]
    lines.append(f'| {stage} | {b} | {len(seeds)} | {pm(mean_std(m), 3)} | '
                 f'{pm(mean_std(sp), 3)} | {pm(mean_std(ratio))} |')
  lines.append('\nNoise-to-signal: E||g - mean g||^2 / ||mean g||^2 over minibatch gradients of '
               'the online encoder and projector at fixed weights (scale-free, so the two losses '
               'compare). MINC\'s summary takes in each measured batch (decay * stored M + (1 - '
               'decay) * the batch moment); its history, the stored M, is the trained one and is '
               'not resampled, so at decay > 0 only the current batch\'s share of its noise is '
               'counted. '
               'Mean +- std over seeds (the ratio per seed, then its mean). Machine: '
               f'{platform.machine()}, {os.cpu_count()} CPUs.')
  counts = sorted({r['num_batches'] for r in rows if 'num_batches' in r})
  if counts:
    lines.append(f'\n{counts[0]} batches per estimate: when the mean gradient is small against '
                 f'its noise the estimate tends to n - 1 = {counts[0] - 1} (the squared norm of '
                 'the mean of n pure-noise gradients is the noise / n), so figures near it say '
                 'only that the mean gradient is not resolved.')
  text = '\n'.join(lines) + '\n'
  for path in filter(None, [os.path.join(model_dir, 'variance.md'), table_path]):
    files.write(path, text)


def _baselines(row):
  return [k for k in ('random_init_top1', 'raw_pixel_top1', 'test_random_init_top1',
                      'test_raw_pixel_top1') if k in (row or {})]


def _seed_baselines(rows):
  """One row per seed for the baselines, which depend on the seed alone: the seed's first row
  with the most of them. Several runs of a seed may carry them (a run found trained by an
  earlier study keeps its copy; with run_study.baselines_once off every run has them), and
  a final's carry the test split's too."""
  base = {}
  for r in rows:
    if 'random_init_top1' in r and len(_baselines(r)) > len(_baselines(base.get(r.get('seed')))):
      base[r.get('seed')] = r
  return list(base.values())


def _summary_lines(rows, paired_column):
  """The per-variant table (mean +- std of every column; with paired_column, each variant's
  probe minus the first's, paired by seed), the baselines and the splits."""
  table = summarize(rows)
  shown = [(k, h) for k, h in COLUMNS if any(k in e for e in table)]
  paired_to_first = paired_differences(rows) if paired_column else {}
  first = table[0]['variant']
  extra = ['probe - first row, paired'] if paired_column else []
  lines = ['| variant | seeds | ' + ' | '.join([h for _, h in shown] + extra) + ' |',
           '|---|---|' + '---|' * (len(shown) + len(extra))]
  for e in table:
    cells = [pm(e.get(k), 4 if k == 'final_loss' else 1 if k in (
        'feature_effective_rank', 'pretrain_wall_time_s') else 2) for k, _ in shown]
    if extra:
      cells.append('-' if e['variant'] == first else pm(paired_to_first.get(e['variant'])))
    lines.append(f"| {e['variant']} | {e['n']} | " + ' | '.join(cells) + ' |')
  base = _seed_baselines(rows)
  if base:
    line = ('\nSame runs, same probe: random-init encoder '
            f"{pm(mean_std([r['random_init_top1'] for r in base]))}" +
            (f' ({len(base)} seeds)' if len(base) > 1 else ''))
    if 'raw_pixel_top1' in base[0]:
      line += f", raw pixels {base[0]['raw_pixel_top1']:.2f}"
    tests = [r['test_random_init_top1'] for r in base if 'test_random_init_top1' in r]
    if tests:
      line += f'; on test: random-init {pm(mean_std(tests))}'
      if 'test_raw_pixel_top1' in base[0]:
        line += f", raw pixels {base[0]['test_raw_pixel_top1']:.2f}"
    lines.append(line + '.')
  splits = sorted({r.get('eval_split') for r in rows if r.get('eval_split')})
  if splits:
    lines.append(f"\nEvaluated on: {', '.join(splits)} (test columns: the test split, read "
                 'once for a final configuration). Mean +- sample std over the seeds.')
  return lines


def _sweep_lines(differences):
  decays = sorted({k for d in differences for k in d['per_decay']})
  lines = ['\nMINC minus Spectral per cell, probe top-1 on validation, differences paired by '
           'seed: at each summary decay, then at the decay with the better mean validation '
           'probe in the cell (a best-of-' + str(len(decays)) + ' choice against one '
           'Spectral setting, so it leans towards MINC; the fixed-decay columns do not):\n',
           '| cell | seeds | ' + ' | '.join(f'decay {k:g}' for k in decays) +
           ' | chosen decay | chosen: probe | chosen: kNN |',
           '|---|---|' + '---|' * len(decays) + '---|---|---|']
  for d in differences:
    fixed = ' | '.join(pm(d['per_decay'].get(k)) for k in decays)
    lines.append(f"| {d['cell']} | {d['n']} | {fixed} | {d['decay']:g} | "
                 f"{pm(d.get('probe'))} | {pm(d.get('knn'))} |")
  return lines


def write(model_dir, name, rows, table_path, operative):
  """<name>.json, <name>.md and <name>.png under model_dir (the .md and .png also at
  table_path when given): the methods study's finals and screen, or every variant's mean +-
  std with a sweep's MINC - Spectral per cell; the configuration of the first run below."""
  tf.io.gfile.makedirs(model_dir)
  files.write(os.path.join(model_dir, f'{name}.json'), json.dumps(rows, indent=2))
  differences = sweep_differences(rows)
  lines = _methods_lines(rows) if name == 'methods' else []
  if name == 'outcome':
    lines = outcome.lines(rows)
  if lines:
    lines += ['\nEvery run, one row per variant:\n']
  # A sweep pairs within its cells; the methods' runs are paired in the finals' table.
  lines += _summary_lines(rows, paired_column=not differences and not lines)
  if differences:
    lines += _sweep_lines(differences)
  lines.append(f'\nMachine: {platform.machine()}, {os.cpu_count()} CPUs, TensorFlow '
               f'{tf.__version__}, Keras {keras.__version__}.')
  lines.append(f"\nConfiguration of the first run ({rows[0]['variant']}, seed {rows[0].get('seed')}"
               f"); every other run adds its variant's bindings (in {name}.json) and its "
               'seed:\n\n```\n' + operative +
               '```\n')
  text = '\n'.join(lines) + '\n'
  png = os.path.join(model_dir, f'{name}.png')
  if differences:
    axis = 'global batch size B' if differences[0]['cell'].startswith('B') else (
        'projector output width k')
    drawn = plots.plot_differences(differences, png, xlabel=axis,
                                   title=f'study: {name} (MINC minus Spectral)')
  elif name == 'methods':
    drawn = None  # one batch size, 24 variants: the tables say it; a plot would not
  else:
    drawn = plots.plot_study([r for r in rows if r.get('seed') == rows[0].get('seed')], png,
                             title=f'study: {name}')
  for path in filter(None, [os.path.join(model_dir, f'{name}.md'), table_path]):
    files.write(path, text)
    copy = os.path.splitext(path)[0] + '.png'
    if drawn and copy != png:  # drawn once, copied beside the table
      tf.io.gfile.copy(png, copy, overwrite=True)
