"""The host loop: train steps per host round trip (run.steps_per_execution), 1 against 20.

  python bench/host_loop.py [--steps 120] [--repeats 3] [--batch 64] [--per_call 1 20]

The quickstart model (gin/quickstart.gin: ResNet-18 of width 16 on 28 px images) at a small
batch, so that the host's share of a step shows, with the callbacks run() installs (the
checkpoint guard with its NaN check, Keras' TensorBoard subclass and the Monitor, writing to a
temporary directory) on a cached in-memory dataset, so that the input pipeline is not measured.
Each setting is timed in turn, `repeats` times, interleaved; printed: the best ms/step of each
and their ratio. Beside it, the infeed bytes per step of the two views as float32 (host-made
views) and as uint8 crops (views finished on the accelerator, run.augment_on_device) for the
quickstart and for ImageNet at B = 4096. Figures only: nothing is asserted.
"""

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from minc_tf import checkpoint  # noqa: E402
from minc_tf import config  # noqa: E402
from minc_tf import configurables  # noqa: E402,F401  (registers every gin configurable)
from minc_tf import model as model_lib  # noqa: E402
from minc_tf import monitor  # noqa: E402

SHAPE = (28, 28, 1)


def build(per_call, log_dir, total_steps):
  keras.utils.set_random_seed(0)
  model = model_lib.build_model(SHAPE, num_classes=10, total_steps=total_steps)
  model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                steps_per_execution=per_call)
  ckpt = checkpoint.Checkpointer(model, os.path.join(log_dir, 'checkpoints'))
  ckpt.build_optimizer()
  callbacks = [checkpoint.TrainingGuard(ckpt, every_steps=10 ** 6, every_secs=None),
               monitor.TensorBoard(log_dir, update_freq=100),
               monitor.Monitor(log_dir, 64, every_steps=100, histograms=False)]
  return model, callbacks


def seconds_per_step(model, callbacks, dataset, steps):
  start = time.perf_counter()
  model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=callbacks)
  return (time.perf_counter() - start) / steps


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--steps', type=int, default=120, help='a multiple of every --per_call')
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--batch', type=int, default=64, help='B: pairs per step')
  parser.add_argument('--per_call', type=int, nargs='+', default=[1, 20])
  args = parser.parse_args()
  config.parse_gin(['gin/quickstart.gin'], [])
  rng = np.random.default_rng(0)
  views = rng.normal(size=(2, args.batch) + SHAPE).astype(np.float32)
  labels = rng.integers(0, 10, args.batch)
  data = tf.data.Dataset.from_tensors(((views[0], views[1]), labels)).cache().repeat()

  best = {}
  with tempfile.TemporaryDirectory() as tmp:
    runs = {}
    for k in args.per_call:
      runs[k] = build(k, os.path.join(tmp, f'per_call{k}'), args.steps * (args.repeats + 1))
      seconds_per_step(*runs[k], data, k)  # trace and warm up
    for _ in range(args.repeats):
      for k in args.per_call:
        t = seconds_per_step(*runs[k], data, args.steps)
        best[k] = min(best.get(k, float('inf')), t)
  print(f'quickstart model, B = {args.batch} pairs, best of {args.repeats} x {args.steps} steps, '
        'with run()\'s callbacks')
  for k, t in best.items():
    print(f'  steps_per_execution {k:>3}: {t * 1e3:7.2f} ms/step')
  first, last = args.per_call[0], args.per_call[-1]
  print(f'  ratio {first} / {last}: {best[first] / best[last]:.2f}')

  print('infeed bytes per step (two views):')
  for name, batch, shape in (('quickstart', 256, SHAPE), ('ImageNet', 4096, (224, 224, 3))):
    values = 2 * batch * int(np.prod(shape))
    print(f'  {name:<10} B = {batch}: float32 {4 * values / 2 ** 20:8.1f} MiB, '
          f'uint8 {values / 2 ** 20:8.1f} MiB (x{4})')


if __name__ == '__main__':
  main()
