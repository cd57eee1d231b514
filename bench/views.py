"""Views made on the accelerator: the whole batch at once (viewK.batch) against one example at a
time (tf.map_fn over the host view, the implementation before 2026-11-29), under XLA.

  python bench/views.py [--batch 128] [--size 64] [--repeats 5]

Both make the two BYOL views (flip, colour jitter in random order, grayscale, blur, solarize,
normalise) of a batch of crops inside one jit-compiled tf.function, as train_step does with
run.augment_on_device. Printed: images/s of each (best of `repeats`, timed in turn) and the
ratio. Figures only: nothing is asserted.
"""

import argparse
import os
import sys
import time

os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # noqa: E402

from minc_tf import augment  # noqa: E402


def per_example_views(view1, view2, mean, std):
  """The former augment.batch_views: the host view per example, in a tf.map_fn."""
  def apply(view, x, seed, k):
    index = tf.range(tf.shape(x)[0], dtype=tf.int64)
    return tf.map_fn(
        lambda a: augment.normalize(view(a[0], augment.Rng(
            tf.random.experimental.stateless_fold_in(seed, 2 * a[1] + k))), mean, std),
        (x, index), fn_output_signature=tf.float32)

  return lambda x1, x2, seed: (apply(view1, x1, seed, 0), apply(view2, x2, seed, 1))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--batch', type=int, default=128, help='crops per view')
  parser.add_argument('--size', type=int, default=64)
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args()
  _, v1, v2 = augment.view_transforms(args.size)
  mean, std = augment.IMAGENET_MEAN, augment.IMAGENET_STD
  x = tf.random.uniform((args.batch, args.size, args.size, 3), seed=0)
  seed = tf.constant([1, 0], tf.int64)
  fns = {'vectorised': tf.function(augment.batch_views(v1, v2, mean, std), jit_compile=True),
         'per-example': tf.function(per_example_views(v1, v2, mean, std), jit_compile=True)}
  compile_s = {}
  for name, fn in fns.items():
    start = time.perf_counter()
    fn(x, x, seed)[0].numpy()
    compile_s[name] = time.perf_counter() - start
  best = {}
  for _ in range(args.repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      fn(x, x, seed)[0].numpy()
      best[name] = min(best.get(name, float('inf')), time.perf_counter() - start)
  print(f'two views of {args.batch} crops of {args.size} px, XLA on {tf.config.list_logical_devices()[0].device_type}, best of {args.repeats}')
  for name, t in best.items():
    print(f'  {name:<12} {2 * args.batch / t:9.0f} images/s  (first call, with compilation: '
          f'{compile_s[name]:.1f} s)')
  print(f'  vectorised / per-example: {best["per-example"] / best["vectorised"]:.1f}x')


if __name__ == '__main__':
  main()
