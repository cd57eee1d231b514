"""tables.py: means over seeds, differences paired by seed, the markdown a study writes."""

import importlib.util
import os

import numpy as np
import pytest
import tensorflow as tf

from minc_tf import tables


def test_a_table_and_its_plot_go_beside_the_runs_and_into_docs(tmp_path):
  rows = [{'variant': 'a', 'probe_top1': 80.0, 'knn_top1': 79.0, 'feature_effective_rank': 20.0,
           'final_loss': -1.0, 'pretrain_wall_time_s': 10, 'images_per_s': 5,
           'random_init_top1': 70.0, 'raw_pixel_top1': 84.0}]
  docs = tmp_path / 'docs'
  docs.mkdir()
  tables.write(str(tmp_path / 'run'), 'ablation', rows, str(docs / 'table.md'), 'run.epochs = 1\n')
  text = (tmp_path / 'run' / 'ablation.md').read_text()
  # One seed: no spread was measured, and none is printed.
  assert '| a | 1 | 80.00 (1 seed) | 79.00 (1 seed) | 20.0 (1 seed) |' in text
  assert 'random-init encoder 70.00 (1 seed), raw pixels 84.00' in text
  assert (docs / 'table.md').read_text() == text
  if importlib.util.find_spec('matplotlib'):  # drawn once, the same PNG beside both tables
    png = (tmp_path / 'run' / 'ablation.png').read_bytes()
    assert png[:4] == b'\x89PNG' and (docs / 'table.png').read_bytes() == png
  # On a remote filesystem (ram://, the stand-in for gs://) nothing lands on the local disk.
  tables.write('ram://tables/run', 'ablation', rows, None, 'run.epochs = 1\n')
  assert tf.io.gfile.exists('ram://tables/run/ablation.md')
  if importlib.util.find_spec('matplotlib'):
    assert tf.io.gfile.exists('ram://tables/run/ablation.png')
  assert not os.path.exists('ram:')
  var = [{'method': m, 'stage': 'init', 'batch_size': 64, 'noise_to_signal': v, 'seed': s}
         for m, vs in (('minc', (2.0, 3.0)), ('spectral', (4.0, 2.0))) for s, v in enumerate(vs)]
  tables.write_variance(str(tmp_path), var, None)
  # Per-seed ratios 0.5 and 1.5: mean 1, sample std 0.71.
  assert ('| init | 64 | 2 | 2.500 +- 0.707 | 3.000 +- 1.414 | 1.00 +- 0.71 |' in
          (tmp_path / 'variance.md').read_text())


def test_sweep_cells_choose_minc_decay_on_validation_and_pair_seeds():
  """MINC's decay per cell is the one with the better mean validation probe; the difference
  to Spectral is taken seed by seed."""
  probes = {'minc decay=0.0 B=64': [70, 71, 72], 'minc decay=0.99 B=64': [73, 74, 69],
            'spectral B=64': [70, 70, 70], 'minc decay=0.0 B=32': [60, 60, 60],
            'minc decay=0.99 B=32': [50, 50, 50], 'spectral B=32': [61, 59, 63]}
  # A diverged decay (NaN probe) comes first: plain max() would keep it.
  rows = [{'variant': 'minc decay=0.5 B=64', 'seed': s, 'probe_top1': float('nan'),
           'knn_top1': 0.0} for s in (0, 1, 2)]
  rows += [{'variant': v, 'seed': s, 'probe_top1': p[s], 'knn_top1': p[s] - 1.0}
           for v, p in probes.items() for s in (2, 0, 1)]
  got = {d['cell']: d for d in tables.sweep_differences(rows)}
  assert [d['x'] for d in tables.sweep_differences(rows)] == [32, 64]
  assert got['B=64']['decay'] == 0.99 and got['B=32']['decay'] == 0.0
  np.testing.assert_allclose(got['B=64']['probe'], (2.0, np.sqrt(7.0)))
  np.testing.assert_allclose(got['B=32']['probe'], (-1.0, 2.0))
  np.testing.assert_allclose(got['B=32']['knn'], (-1.0, 2.0))
  # Each decay alone, unselected: decay 0 at B=64 is 1 +- 1 above Spectral.
  np.testing.assert_allclose(got['B=64']['per_decay'][0.0], (1.0, 1.0))
  np.testing.assert_allclose(got['B=64']['per_decay'][0.99], (2.0, np.sqrt(7.0)))
  assert np.isnan(got['B=64']['per_decay'][0.5][0])
  # A decay missing a seed's probe figure is not chosen on the seeds it has.
  cell = [{'variant': v, 'seed': s, 'probe_top1': p, 'knn_top1': p}
          for v, p in (('minc decay=0.0 B=128', 70.0), ('minc decay=0.99 B=128', 90.0),
                       ('spectral B=128', 70.0)) for s in (0, 1, 2)]
  del cell[4]['probe_top1']  # decay 0.99, seed 1
  assert tables.sweep_differences(cell)[0]['decay'] == 0.0


def test_baselines_count_once_per_seed(tmp_path):
  """Two runs of a seed with the seed's baselines (one found trained by an earlier study):
  the random-init figure is over the seeds, not the runs."""
  rows = [{'variant': v, 'seed': s, 'probe_top1': 70.0, 'random_init_top1': 60.0 + 2 * s,
           'raw_pixel_top1': 83.0} for s in (0, 1) for v in ('a', 'b')]
  for r in rows[1::2]:  # b's runs are finals: the seed's test baselines are theirs
    r.update(test_random_init_top1=50.0 + 4 * r['seed'], test_raw_pixel_top1=82.0)
  tables.write(str(tmp_path), 'ablation', rows, None, '')
  assert ('random-init encoder 61.00 +- 1.41 (2 seeds), raw pixels 83.00; on test: random-init '
          '52.00 +- 2.83, raw pixels 82.00.') in (tmp_path / 'ablation.md').read_text()


def test_sweep_table_and_difference_plot(tmp_path):
  """A sweep's rows: the table gains MINC - Spectral per cell (each decay and the chosen one)
  and the PNG is the difference plot, a single-seed cell drawn without an error bar."""
  rows = [{'variant': v, 'seed': s, 'probe_top1': p + s, 'knn_top1': p}
          for v, p in (('minc decay=0.0 k=64', 70.0), ('minc decay=0.99 k=64', 71.0),
                       ('spectral k=64', 69.0), ('minc decay=0.0 k=256', 72.0),
                       ('minc decay=0.99 k=256', 70.0), ('spectral k=256', 72.5))
          for s in (0, 1)]
  rows += [{'variant': 'minc decay=0.0 k=1024', 'seed': 0, 'probe_top1': 70.0, 'knn_top1': 1.0},
           {'variant': 'spectral k=1024', 'seed': 0, 'probe_top1': 69.0, 'knn_top1': 1.0}]
  tables.write(str(tmp_path), 'width_sweep', rows, None, 'run.epochs = 1\n')
  text = (tmp_path / 'width_sweep.md').read_text()
  assert '| k=64 | 2 | 1.00 +- 0.00 | 2.00 +- 0.00 | 0.99 | 2.00 +- 0.00 |' in text
  assert '| k=256 | 2 | -0.50 +- 0.00 | -2.50 +- 0.00 | 0 | -0.50 +- 0.00 |' in text
  assert '| k=1024 | 1 | 1.00 (1 seed) | - | 0 | 1.00 (1 seed) |' in text
  if importlib.util.find_spec('matplotlib'):
    png = (tmp_path / 'width_sweep.png').read_bytes()
    assert png[:8] == b'\x89PNG\r\n\x1a\n'
    h, w, _ = tf.io.decode_png(png).shape
    assert w > h > 0

def test_methods_table_gives_the_finals_on_test_beside_validation_and_the_screen(tmp_path):
  """The finals: mean +- std per method on validation and test, test probe paired by seed
  against the first method, the baselines as rows (the first final's, one per seed); the
  screen: each rate's validation probe, the final's rate in bold."""
  rows = [{'variant': f'{m} lr={lr:g}', 'seed': 0, 'probe_top1': p}
          for m, lr, p in (('A', 5e-4, 70.0), ('A', 1e-3, 72.0), ('B', 5e-4, float('nan')),
                           ('B', 1e-3, 69.0))]
  rows[1]['random_init_top1'] = 0.0  # a screen run with baselines: not a final's
  a_test, b_test = [80.0, 82.0, 87.0], {1: 81.0, 2: 85.0, 3: 90.0}
  rows += [{'variant': 'A (lr 0.001, final)', 'seed': s, 'probe_top1': 72.0 + s,
            'knn_top1': 71.0, 'test_probe_top1': a_test[s], 'test_knn_top1': 79.0,
            'pretrain_wall_time_s': 100.0 + 10 * s, 'random_init_top1': 60.0 + s,
            'test_random_init_top1': 61.0 + s, 'raw_pixel_top1': 83.0,
            'test_raw_pixel_top1': 84.0} for s in (0, 1, 2)]
  rows += [{'variant': 'B (lr 0.001, final)', 'seed': s, 'probe_top1': 69.0,
            'knn_top1': 68.0, 'test_probe_top1': b_test[s], 'test_knn_top1': 67.0,
            'pretrain_wall_time_s': 50.0, 'random_init_top1': 0.0} for s in (1, 2, 3)]
  screen, finals = tables.methods_summary(rows)
  assert screen == {'A': {5e-4: 70.0, 1e-3: 72.0}, 'B': {5e-4: pytest.approx(
      float('nan'), nan_ok=True), 1e-3: 69.0}}
  assert [(e['method'], e['lr'], e['n']) for e in finals] == [('A', 1e-3, 3), ('B', 1e-3, 3)]
  # B - A on test over the seeds both have (1, 2): -1 and -2.
  diff = np.array([b_test[1] - a_test[1], b_test[2] - a_test[2]])
  np.testing.assert_allclose(finals[1]['test_probe_vs_first'],
                             (diff.mean(), diff.std(ddof=1)))
  tables.write(str(tmp_path), 'methods', rows, None, 'run.epochs = 1\n')
  text = (tmp_path / 'methods.md').read_text()
  a_mean, a_std = np.mean(a_test), np.std(a_test, ddof=1)
  assert (f'| A | 0.001 | 3 | 73.00 +- 1.00 | 71.00 +- 0.00 | {a_mean:.2f} +- {a_std:.2f} | '
          '79.00 +- 0.00 | - | 110.0 +- 10.0 |') in text
  assert (f'| B | 0.001 | 3 | 69.00 +- 0.00 | 68.00 +- 0.00 | 85.33 +- 4.51 | 67.00 +- 0.00 | '
          f'{diff.mean():.2f} +- {diff.std(ddof=1):.2f} | 50.0 +- 0.0 |') in text
  assert '| random-init encoder | - | 3 | 61.00 +- 1.00 | - | 62.00 +- 1.00 | - | - | - |' in text
  assert '| raw pixels | - | 3 | 83.00 +- 0.00 | - | 84.00 +- 0.00 | - | - | - |' in text
  assert '| A | 70.00 | **72.00** |' in text and '| B | nan | **69.00** |' in text
  assert 'probe - first row, paired' not in text  # the screen's runs are not paired to A's
  # The first method without test figures: nothing to pair against, not the next method.
  untested = [{k: v for k, v in r.items() if not (k == 'test_probe_top1' and
                                                   r['variant'].startswith('A ('))}
              for r in rows]
  assert tables.methods_summary(untested)[1][1]['test_probe_vs_first'] is None
  # Another study's labels may hold ' lr=' too: no methods tables there, and no crash.
  tables.write(str(tmp_path / 'other'), 'ablation',
               [{'variant': 'adam lr=1e-3,wd=0', 'seed': 0, 'probe_top1': 70.0}], None, '')
  assert '| method | lr |' not in (tmp_path / 'other' / 'ablation.md').read_text()
