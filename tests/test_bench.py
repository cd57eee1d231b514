"""bench/accelerator.py (the accelerator check's figures) runs on CPU at a tiny size: one cell
of a shipped config through train.run, its line in the documented format with a positive
images/s; a cell over its time limit is stopped and named; an unknown config is refused."""

import os
import re
import subprocess
import sys

from conftest import REPO

BENCH = os.path.join(REPO, 'bench', 'accelerator.py')
# A ResNet-18 of one 4-wide stage at 32 px; the shipped MINC head and everything else as shipped.
TINY = ['--depth', '18', '--image_size', '32', '--batch', '8', '--warmup', '1', '--steps', '2',
        '--synthetic_images', '16', '--jpeg_size', '48x36',
        '--binding', 'build_encoder.stage_blocks = (1,)',
        '--binding', 'build_encoder.base_width = 4']


def bench(*args, timeout=120):
  # No GPU even where there is one: the figures checked are the CPU path's.
  env = dict(os.environ, CUDA_VISIBLE_DEVICES='', TF_ENABLE_ONEDNN_OPTS='1')
  return subprocess.run([sys.executable, BENCH, *args], capture_output=True, text=True,
                        timeout=timeout, cwd=REPO, env=env, check=False)


def test_one_cell_prints_its_figure_in_the_documented_format(tmp_path):
  proc = bench('--configs', 'minc', '--xla', '0', '--precisions', 'float32', '--work_dir',
               str(tmp_path), *TINY)
  assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
  lines = proc.stdout.splitlines()
  assert lines[0].startswith('accelerator bench: minc as shipped, 2 timed steps after 1')
  assert 'run.global_batch_size = 8' in lines[1] and 'run.steps_per_epoch = 3' in lines[1]
  assert 'device: CPU' in lines
  [figure] = [line for line in lines if line.startswith('minc xla=0 float32: ')]
  m = re.fullmatch(r'minc xla=0 float32: (\d+\.\d) images/s \(step (\d+\.\d{3}) s over 2 '
                   r'steps; first step (\d+\.\d) s; cell (\d+) s\)', figure)
  assert m, figure
  images_per_s, step_s = float(m.group(1)), float(m.group(2))
  assert images_per_s > 0 and step_s > 0
  # 2B = 16 images per step. The step is printed to 1 ms and the rate to 0.1, so 16 / step
  # agrees with the rate within what those roundings allow (on a fast CPU a 20 ms step leaves
  # 2.5% of slack, more than a fixed 1%).
  slack = 16 * 0.0005 / (step_s - 0.0005) ** 2 + 0.05
  assert abs(images_per_s - 16 / step_s) <= slack + 1e-6, (images_per_s, step_s)
  assert any(line.startswith('ratios of images/s') for line in lines)


def test_a_cell_over_its_time_limit_is_stopped_and_named(tmp_path):
  proc = bench('--configs', 'minc', '--xla', '0', '--precisions', 'float32', '--cell_limit',
               '1', '--work_dir', str(tmp_path), *TINY)
  assert proc.returncode == 1
  assert ('minc xla=0 float32: no figure (time limit 1 s reached building, compiling or in '
          'the first step)') in proc.stdout, proc.stdout


def test_an_unknown_config_is_refused_with_the_shipped_names():
  proc = bench('--configs', 'minc', 'byol_big', timeout=30)
  assert proc.returncode == 2
  assert "unknown config 'byol_big': the shipped configs are minc, spectral, supervised" in \
      proc.stderr, proc.stderr
