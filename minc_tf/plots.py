"""PNG plots of a run's training curves and of a study's results.

matplotlib is an optional dependency (`pip install -e '.[plot]'`): without it the plots are
skipped with a warning and nothing else changes. Files are written to a temporary name and
renamed, so a preempted run never leaves a truncated PNG.
"""

import os

from absl import logging
import tensorflow as tf

from minc_tf import files

# (curve name in monitor.Monitor.curves, label) per panel of a run's plot.
RUN_PANELS = (
    ('SSL loss and its terms (running mean over the epoch)',
     (('train/loss', 'loss'), ('train/loss_attract', 'attract term'),
      ('train/loss_repel', 'repel term'))),
    ('online probe accuracy on the augmented training views',
     (('train/probe_train_acc', 'running, this epoch'), ('epoch/probe_train_acc', 'epoch'))),
    ('effective rank (collapse shows as a fall)',
     (('feature_effective_rank', 'encoder features (singular values)'),
      ('summary/eigenvalue_effective_rank', 'MINC summary (eigenvalues)'))),
    ('learning rate', (('learning_rate', 'lr'),)),
)


def _pyplot():
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
    return plt
  except ImportError:
    logging.warning("matplotlib is not installed: no PNG plot written. Fix: pip install -e "
                    "'.[plot]' (or pip install matplotlib).")
    return None


def _save(fig, plt, path):
  files.write_with(path, lambda f: fig.savefig(f, format='png', dpi=110, bbox_inches='tight'),
                   binary=True)
  plt.close(fig)
  return path


def plot_run(curves, path, title=''):
  """Draws the curves of one run (monitor.Monitor.curves: name -> [[step, value], ...]) into
  a PNG with one panel per RUN_PANELS entry that has data; returns the path, or None."""
  panels = [(t, [(curves[n], label) for n, label in series if curves.get(n)])
            for t, series in RUN_PANELS]
  panels = [(t, s) for t, s in panels if s]
  plt = _pyplot()
  if plt is None or not panels:
    return None
  fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
  for ax, (panel_title, series) in zip(axes[0], panels):
    for points, label in series:
      steps, values = zip(*points)
      ax.plot(steps, values, marker='o' if len(points) < 30 else None, ms=3, label=label)
    ax.set_title(panel_title, fontsize=9)
    ax.set_xlabel('step')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  if title:
    fig.suptitle(title, fontsize=10)
  return _save(fig, plt, path)


def plot_study(rows, path, title=''):
  """A study's PNG: probe top-1 per batch size for each method (when the rows carry a method and
  a batch size), and the feature effective rank over training of every variant that has one.

  rows: study.run_study's rows (train.run's results: 'variant', 'method', 'batch_size',
  'probe_top1' and optionally 'feature_effective_rank_curve' = [[step, value], ...]).
  """
  plt = _pyplot()
  if plt is None or not rows:
    return None
  by_method = {}
  for r in rows:
    if 'probe_top1' in r and 'batch_size' in r:
      by_method.setdefault(r['method'], []).append((r['batch_size'], r['probe_top1']))
  sweep = any(len(v) > 1 for v in by_method.values())
  ranked = [r for r in rows if r.get('feature_effective_rank_curve')]
  fig, axes = plt.subplots(1, int(sweep) + int(bool(ranked)) or 1, figsize=(10, 3.6),
                           squeeze=False)
  axes = list(axes[0])
  if sweep:
    ax = axes.pop(0)
    for method, points in sorted(by_method.items()):
      points.sort()
      ax.plot([b for b, _ in points], [a for _, a in points], marker='o', label=method)
    ax.set_xscale('log', base=2)
    ax.set_xlabel('global batch size')
    ax.set_ylabel('linear probe top-1 (%)')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  if ranked:
    ax = axes.pop(0)
    for r in ranked:
      steps, values = zip(*r['feature_effective_rank_curve'])
      # Steps differ with the batch size; the fraction of training done compares the runs.
      ax.plot([s / max(steps[-1], 1) for s in steps], values, label=r['variant'])
    ax.set_xlabel('fraction of training')
    ax.set_ylabel('feature effective rank')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  if title:
    fig.suptitle(title, fontsize=10)
  tf.io.gfile.makedirs(os.path.dirname(path) or '.')  # gs:// and ram:// too
  return _save(fig, plt, path)


def plot_differences(differences, path, xlabel, title=''):
  """MINC minus Spectral (probe and kNN top-1) per sweep cell with +- 1 std error bars.

  differences: tables.sweep_differences' entries ('x', 'probe' and 'knn' as (mean, std)).
  """
  plt = _pyplot()
  if plt is None or not differences:
    return None
  fig, ax = plt.subplots(figsize=(6, 3.6))
  xs = [d['x'] for d in differences]
  for key, label, shift in (('probe', 'linear probe', 0.97), ('knn', 'kNN', 1.03)):
    points = [(x * shift, d[key]) for x, d in zip(xs, differences) if key in d]
    if points:
      ax.errorbar([x for x, _ in points], [m for _, (m, _) in points],
                  yerr=[s or 0.0 for _, (_, s) in points], marker='o', capsize=3, label=label)
  ax.axhline(0.0, color='grey', lw=0.8)
  ax.set_xscale('log', base=2)
  ax.set_xticks(xs)
  ax.set_xticklabels([str(x) for x in xs])
  ax.set_xlabel(xlabel)
  ax.set_ylabel('MINC - Spectral top-1 (points)')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  if title:
    ax.set_title(title, fontsize=10)
  tf.io.gfile.makedirs(os.path.dirname(path) or '.')
  return _save(fig, plt, path)
