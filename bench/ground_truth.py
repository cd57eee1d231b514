"""Prints the gradient-noise table of the linear-Gaussian ground truth (tests/test_ground_truth.py).

  python bench/ground_truth.py        (from the repository root; about a minute)

For each state (initialisation, halfway, optimum) and batch size N: N x E||g - E g||^2 (the
per-pair noise) of every estimator, its ratio to the exact summary's, and Spectral's excess over
the exact summary, N x (Var_S - Var_exact), which stays put as N grows (first order).
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), 'tests'))

import test_ground_truth as gt  # noqa: E402


def main():
  names = None
  for state, w in gt.STATES.items():
    for n in (32, 512):
      e = gt.estimates(w, n, 300)
      names = names or list(e)
      noise = {k: gt.noise(v) * n for k, v in e.items()}
      if state == 'init' and n == 32:
        print('state     N    ' + '  '.join(f'{k:>14s}' for k in names) + '   excess')
      print(f'{state:8s} {n:4d}  ' + '  '.join(
          f'{noise[k]:8.2f} ({noise[k] / noise["exact M"]:3.1f})' for k in names) +
            f'   {noise["spectral"] - noise["exact M"]:8.2f}', flush=True)
  train = gt._train  # pylint: disable=protected-access
  best = {kind: min(sum(train(kind, 8, 512, lr, s) for s in range(3)) / 3
                    for lr in (0.003, 0.01, 0.03)) for kind in ('spectral', 'exact')}
  print(f'B = 8, 4096 pairs, best lr of (0.003, 0.01, 0.03), 3 seeds: population loss above the '
        f'optimum: spectral {best["spectral"]:.4f}, exact summary {best["exact"]:.4f} '
        f'({best["spectral"] / best["exact"]:.1f}x)')


if __name__ == '__main__':
  main()
