"""Time per call (forward + backward) of the MINC and Spectral Contrastive losses.

  python bench/losses.py [--batches 256 1024 4096] [--dims 256 2048] [--repeats 5]

MINC's cost is O(B k^2) (the summary update and z M), Spectral's O(B^2 k) (all pairs), so MINC
grows linearly in the batch. Both are timed side by side in one run; compare the ratios, not the
absolute times, on a shared machine.
"""

import argparse
import os
import sys
import time

os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # noqa: E402

from minc_tf import losses  # noqa: E402


def make_step(name):
  @tf.function(jit_compile=False)
  def step(z1, z2, t1, t2):
    with tf.GradientTape() as tape:
      tape.watch([z1, z2])
      if name == 'minc':
        # What the model does per step: summary from this batch, then the loss.
        m = losses.batch_second_moment(t1, t2)
        loss = losses.minc_loss(z1, z2, t1, t2, m)
      else:
        loss = losses.spectral_contrastive_loss(z1, z2, mu=1.0)
    return tape.gradient(loss, [z1, z2])
  return step


def time_call(step, args, repeats):
  step(*args)  # trace and warm up
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    out = step(*args)
    _ = [o.numpy() for o in out]
    best = min(best, time.perf_counter() - start)
  return best


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--batches', type=int, nargs='+', default=[256, 1024, 4096])
  parser.add_argument('--dims', type=int, nargs='+', default=[256, 2048])
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args()
  steps = {name: make_step(name) for name in ('minc', 'spectral')}
  print(f'{"B":>6} {"k":>6} {"MINC ms":>10} {"Spectral ms":>12} {"Spectral/MINC":>14}')
  rows = []
  for k in args.dims:
    for b in args.batches:
      z = [tf.random.normal([b, k]) * 0.1 for _ in range(4)]
      t_minc = time_call(steps['minc'], z, args.repeats)
      t_spec = time_call(steps['spectral'], z, args.repeats)
      rows.append((b, k, t_minc, t_spec))
      print(f'{b:>6} {k:>6} {1e3 * t_minc:>10.2f} {1e3 * t_spec:>12.2f} {t_spec / t_minc:>14.1f}',
            flush=True)
  print('\nGrowth with B (time at B / time at the smallest B):')
  for k in args.dims:
    sub = [r for r in rows if r[1] == k]
    b0 = sub[0]
    for b, _, tm, ts in sub[1:]:
      print(f'  k={k} B={b} (x{b // b0[0]}): MINC x{tm / b0[2]:.1f}, Spectral x{ts / b0[3]:.1f}')


if __name__ == '__main__':
  main()
