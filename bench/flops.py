"""FLOPs of one MINC training step of ResNet-50 at 224 px, counted from the model's graph.

  python bench/flops.py [--gin_file gin/minc.gin] [--target config|on|off] [--batch 4096]
                        [--image_size 224] [--epochs 300] [--chips 16] [--utilisation 0.4]
                        [--peak_tflops 275]

TensorFlow's profiler counts the floating-point operations of the forward pass of the online
network (encoder + projector, as gin/minc.gin and imagenet_base.gin build them) on one image.
A training step of B pairs runs it on 2B images forward and backward (backward ~ 2 x forward)
and, with an EMA target (build_model.use_target in the config, or --target on), the target
network forward on 2B images; the
loss, the summary statistic and the optimizer are small beside it (not counted). Printed: FLOPs
per image and per step, the run's total, and the chip-hours and wall-clock hours on `chips`
chips at `utilisation` of `peak_tflops` (Cloud TPU v4: 275 TFLOP/s bf16 per chip).
"""

import argparse
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import gin  # noqa: E402
import tensorflow as tf  # noqa: E402

from minc_tf import config  # noqa: E402
from minc_tf import configurables  # noqa: E402,F401  (registers every gin configurable)
from minc_tf import methods  # noqa: E402
from minc_tf import networks  # noqa: E402


def forward_flops(model, shape):
  """FLOPs of model(x) for one example, from the profiler's float_operation count."""
  fn = tf.function(lambda x: model(x, training=False)).get_concrete_function(
      tf.TensorSpec((1,) + shape, tf.float32))
  opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
  opts['output'] = 'none'
  info = tf.compat.v1.profiler.profile(graph=fn.graph, options=opts)
  return info.total_float_ops


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--batch', type=int, default=4096, help='B: pairs per step')
  parser.add_argument('--image_size', type=int, default=224)
  parser.add_argument('--epochs', type=int, default=300)
  parser.add_argument('--train_images', type=int, default=1281167)
  parser.add_argument('--chips', type=int, default=16, help='v4-32: 16 chips')
  parser.add_argument('--utilisation', type=float, default=0.4)
  parser.add_argument('--peak_tflops', type=float, default=275.0)
  parser.add_argument('--gin_file', default='gin/minc.gin', help='the method configuration; '
                      'its build_model.use_target says whether a target network runs forward')
  parser.add_argument('--target', choices=['config', 'on', 'off'], default='config',
                      help='count the EMA target forward pass: as the config says, or not')
  args = parser.parse_args()
  config.parse_gin([args.gin_file], [])
  def bound(name, default):
    try:
      return gin.query_parameter(name)
    except ValueError:
      return default

  use_target = bound('build_model.use_target', None)
  if use_target is None:  # the method's default (methods/<method>.py: TARGET)
    use_target = methods.get(bound('build_model.method', 'minc')).TARGET
  if args.target != 'config':
    use_target = args.target == 'on'
  args.no_target = not use_target
  shape = (args.image_size, args.image_size, 3)
  encoder = networks.build_encoder(shape)
  # The projector of imagenet_base.gin: 2048 -> 4096 -> 256.
  projector = networks.build_mlp(encoder.output_shape[-1], (4096,), 256, name='projector')
  f_encoder = forward_flops(encoder, shape)
  f_online = f_encoder + forward_flops(projector, tuple(encoder.output_shape[1:]))
  images = 2 * args.batch
  per_step = images * 3 * f_online + (0 if args.no_target else images * f_online)
  steps = args.train_images // args.batch * args.epochs
  total = per_step * steps
  seconds = total / (args.chips * args.peak_tflops * 1e12 * args.utilisation)
  print(f'ResNet-50 encoder forward, one {args.image_size}px image: {f_encoder / 1e9:.2f} GFLOPs'
        f' (online network with projector: {f_online / 1e9:.2f})')
  print(f'MINC step, B = {args.batch} pairs ({images} images; forward+backward online'
        f'{"" if args.no_target else ", forward target"}): {per_step / 1e12:.1f} TFLOPs')
  print(f'{args.epochs} epochs = {steps} steps: {total / 1e18:.1f} EFLOPs')
  print(f'on {args.chips} chips at {args.utilisation:.0%} of {args.peak_tflops:.0f} TFLOP/s: '
        f'{seconds / 3600:.1f} h wall, {seconds * args.chips / 3600:.0f} chip-hours, '
        f'{args.batch / (seconds / steps) / args.chips:.0f} pairs/s per chip')


if __name__ == '__main__':
  main()
