"""Time per call (forward + backward) of the MINC and Spectral Contrastive losses.

  python bench/losses.py [--batches 256 1024 4096] [--dims 256 2048] [--repeats 5] [--jit]

MINC's cost is O(B k^2) (z M, and the summary update t^T t), Spectral's O(B^2 k) (all pairs), so
MINC grows linearly in the batch. Three calls are timed side by side in one run: the MINC loss
(`losses.minc_loss`, the summary given, as the model holds it), the MINC loss with the summary
update of the same step (`batch_second_moment`, what a MINC train step adds in all), and the
Spectral loss. Compare the ratios, not the absolute times, on a shared machine.
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


def make_step(name, jit):
  @tf.function(jit_compile=jit)
  def step(z1, z2, t1, t2, summary):
    with tf.GradientTape() as tape:
      tape.watch([z1, z2])
      if name == 'minc':
        # The summary as model state (a constant of the step).
        loss = losses.minc_loss(z1, z2, t1, t2, summary)
      elif name == 'minc+summary':
        # What the model does per step: the summary's batch moment, then the loss.
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
  parser.add_argument('--jit', action='store_true', help='XLA-compile each call (as on TPU)')
  args = parser.parse_args()
  names = ('minc', 'minc+summary', 'spectral')
  steps = {name: make_step(name, args.jit) for name in names}
  print(f'jit_compile={args.jit}; ms per forward+backward call (best of {args.repeats})')
  print(f'{"B":>6} {"k":>6} {"MINC":>9} {"MINC+summ.":>11} {"Spectral":>10} '
        f'{"Spec/MINC":>10} {"Spec/(MINC+summ.)":>18}')
  rows = []
  for k in args.dims:
    for b in args.batches:
      z = [tf.random.normal([b, k]) * 0.1 for _ in range(4)]
      summary = losses.batch_second_moment(z[2], z[3])
      t = [time_call(steps[name], z + [summary], args.repeats) for name in names]
      rows.append((b, k, *t))
      print(f'{b:>6} {k:>6} {1e3 * t[0]:>9.2f} {1e3 * t[1]:>11.2f} {1e3 * t[2]:>10.2f} '
            f'{t[2] / t[0]:>10.1f} {t[2] / t[1]:>18.1f}', flush=True)
  print('\nGrowth with B (time at B / time at the smallest B):')
  for k in args.dims:
    sub = [r for r in rows if r[1] == k]
    b0 = sub[0]
    for b, _, tm, tms, ts in sub[1:]:
      print(f'  k={k} B={b} (x{b // b0[0]}): MINC x{tm / b0[2]:.1f}, MINC+summary '
            f'x{tms / b0[3]:.1f}, Spectral x{ts / b0[4]:.1f}')


if __name__ == '__main__':
  main()
