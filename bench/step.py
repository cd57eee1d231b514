"""Train-step time of MINC (with its live EMA target), BYOL and Spectral Contrastive against
plain supervised training.

  python bench/step.py [--depth 18] [--image_size 32] [--batch 64] [--steps 10] [--jit]
                       [--precision float32|mixed_bfloat16] [--methods minc byol spectral]

All train the same encoder on 2B images per step: the SSL models see B pairs of views (2B
images through the online network; MINC and BYOL also 2B through their EMA target), the
supervised model 2B labelled images. One extra forward pass over 2B images (the target) is the
physical floor of the target-network methods' overhead, about 1.33 (a forward pass costs ~1/3
of forward + backward). Printed: ms per step, images/s, and each method / supervised.
"""

import argparse
import os
import sys
import time

os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import gin  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from minc_tf import model as model_lib  # noqa: E402
from minc_tf import networks  # noqa: E402


def seconds_per_step(model, dataset, steps, repeats):
  model.fit(dataset, steps_per_epoch=2, epochs=1, verbose=0)  # trace, warm up
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
    best = min(best, (time.perf_counter() - start) / steps)
  return best


METHODS = {  # name: build_model keyword arguments
    'minc': dict(method='minc', use_target=True),  # with its live EMA target network
    'byol': dict(method='byol'),
    'spectral': dict(method='spectral'),
}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--depth', type=int, default=18)
  parser.add_argument('--image_size', type=int, default=32)
  parser.add_argument('--batch', type=int, default=64, help='B: pairs per SSL step')
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--methods', nargs='+', default=list(METHODS), choices=list(METHODS))
  parser.add_argument('--jit', action='store_true', help='XLA-compile every train step')
  parser.add_argument('--precision', default='float32',
                      choices=['float32', 'mixed_bfloat16', 'mixed_float16'])
  args = parser.parse_args()
  keras.mixed_precision.set_global_policy(args.precision)
  gin.bind_parameter('build_encoder.depth', args.depth)
  gin.bind_parameter('build_encoder.small_images', args.image_size <= 64)
  shape = (args.image_size, args.image_size, 3)
  rng = np.random.default_rng(0)
  images = rng.random((2 * args.batch,) + shape).astype(np.float32)
  labels = rng.integers(0, 10, 2 * args.batch)
  pairs = tf.data.Dataset.from_tensors(
      ((images[:args.batch], images[args.batch:]), labels[:args.batch])).repeat()
  supervised_data = tf.data.Dataset.from_tensors((images, labels)).repeat()

  results = {}
  for name in args.methods:
    keras.utils.set_random_seed(0)
    m = model_lib.build_model(shape, num_classes=10, projector_hidden=(512,), projector_dim=128,
                              predictor_hidden=(512,), total_steps=1000, **METHODS[name])
    m.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), jit_compile=args.jit)
    results[name] = seconds_per_step(m, pairs, args.steps, args.repeats)
  keras.utils.set_random_seed(0)
  encoder = networks.build_encoder(shape)
  supervised = keras.Sequential([encoder, keras.layers.Dense(10, dtype='float32')])
  supervised.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), jit_compile=args.jit,
                     loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  results['supervised'] = seconds_per_step(supervised, supervised_data, args.steps, args.repeats)

  device = tf.config.list_logical_devices()[-1].device_type
  print(f'ResNet-{args.depth}, {args.image_size}x{args.image_size}, 2B = {2 * args.batch} '
        f'images per step, {args.precision}, {"XLA" if args.jit else "no XLA"}, {device}, '
        f'best of {args.repeats} x {args.steps} steps')
  for name, t in results.items():
    print(f'  {name:<11} {t * 1e3:8.1f} ms/step  {2 * args.batch / t:9.1f} images/s')
  for name in args.methods:
    target = 1.10 if name == 'spectral' else 1.40
    print(f'  {name} / supervised {results[name] / results["supervised"]:5.2f}  '
          f'(target <= {target:.2f})')


if __name__ == '__main__':
  main()
