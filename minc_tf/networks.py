"""Encoders (ResNet v1, any width; a small ResNet for 28-32 px images) and MLP heads.

All networks are functional Keras models built by plain functions, so an identical copy (the
EMA target) is one more call away. Batch normalisation is synchronised across replicas when
`sync_bn` is set: unsynchronised BN lets per-replica statistics drift apart and, on small
per-replica batches, hands a contrastive model a shortcut.
"""

import math

import gin
import keras
from keras import layers

from minc_tf.errors import int_at_least, one_of, real_in, require


def _bn(sync_bn, gamma_zero=False, name=None):
  return layers.BatchNormalization(
      momentum=0.9, epsilon=1e-5, synchronized=sync_bn, name=name,
      gamma_initializer='zeros' if gamma_zero else 'ones')


def _conv(filters, kernel, strides=1, name=None):
  return layers.Conv2D(filters, kernel, strides=strides, padding='same', use_bias=False,
                       kernel_initializer='he_normal', name=name)


def _basic_block(x, filters, strides, sync_bn, name):
  shortcut = x
  if strides != 1 or x.shape[-1] != filters:
    shortcut = _conv(filters, 1, strides, name=f'{name}_proj')(x)
    shortcut = _bn(sync_bn, name=f'{name}_proj_bn')(shortcut)
  y = _conv(filters, 3, strides, name=f'{name}_conv1')(x)
  y = layers.ReLU()(_bn(sync_bn, name=f'{name}_bn1')(y))
  y = _conv(filters, 3, name=f'{name}_conv2')(y)
  # Zero-init of the last BN in each block: every block starts as the identity (Goyal et al.).
  y = _bn(sync_bn, gamma_zero=True, name=f'{name}_bn2')(y)
  return layers.ReLU()(layers.Add()([shortcut, y]))


def _bottleneck_block(x, filters, strides, sync_bn, name):
  out = 4 * filters
  shortcut = x
  if strides != 1 or x.shape[-1] != out:
    shortcut = _conv(out, 1, strides, name=f'{name}_proj')(x)
    shortcut = _bn(sync_bn, name=f'{name}_proj_bn')(shortcut)
  y = _conv(filters, 1, name=f'{name}_conv1')(x)
  y = layers.ReLU()(_bn(sync_bn, name=f'{name}_bn1')(y))
  y = _conv(filters, 3, strides, name=f'{name}_conv2')(y)  # stride in the 3x3, as TF's v1 code.
  y = layers.ReLU()(_bn(sync_bn, name=f'{name}_bn2')(y))
  y = _conv(out, 1, name=f'{name}_conv3')(y)
  y = _bn(sync_bn, gamma_zero=True, name=f'{name}_bn3')(y)
  return layers.ReLU()(layers.Add()([shortcut, y]))


_DEPTHS = {18: ('basic', [2, 2, 2, 2]), 34: ('basic', [3, 4, 6, 3]),
           50: ('bottleneck', [3, 4, 6, 3]), 101: ('bottleneck', [3, 4, 23, 3])}


@gin.configurable
def build_encoder(input_shape, depth=50, width_multiplier=1, small_images=False, base_width=64,
                  stage_blocks=None, sync_bn=False, name='encoder'):
  """ResNet v1 encoder: image [H, W, C] float -> globally pooled features [D].

  depth: 18, 34, 50 or 101 (ImageNet ResNets); width_multiplier scales every stage (1x, 2x, 4x).
  small_images: a 3x3 stride-1 stem without max-pool (CIFAR / MNIST-size inputs).
  stage_blocks: overrides the blocks per stage (e.g. [1, 1, 1] for a 3-stage quickstart net,
    basic blocks); the number of stages is its length.
  D = 4 * base_width * width_multiplier * 2^(stages-1) for bottlenecks, a quarter of that for
  basic blocks.
  width_multiplier: channels of every stage times this (ResNet-50 x2, x4 as in SimCLR).
  base_width: channels of the first stage (64 for a standard ResNet).
  name: the Keras model's name.
  """
  require('build_encoder.depth', depth, one_of(sorted(_DEPTHS)))
  require('build_encoder.base_width', base_width, int_at_least(1))
  require('build_encoder.width_multiplier', width_multiplier, real_in(0, math.inf, low_open=True))
  require('build_encoder.stage_blocks', stage_blocks, (
      lambda v: v is None or (isinstance(v, (list, tuple)) and len(v) >= 1 and
                              all(int_at_least(1)[0](b) for b in v)),
      'None or a non-empty list of integers >= 1'))
  kind, blocks = _DEPTHS[depth]
  if stage_blocks is not None:
    blocks = list(stage_blocks)
  block_fn = _basic_block if kind == 'basic' else _bottleneck_block
  width = int(base_width * width_multiplier)
  inputs = keras.Input(shape=tuple(input_shape), name='image')
  if small_images:
    x = _conv(width, 3, name='stem_conv')(inputs)
    x = layers.ReLU()(_bn(sync_bn, name='stem_bn')(x))
  else:
    x = _conv(width, 7, strides=2, name='stem_conv')(inputs)
    x = layers.ReLU()(_bn(sync_bn, name='stem_bn')(x))
    x = layers.MaxPooling2D(3, strides=2, padding='same')(x)
  for stage, num_blocks in enumerate(blocks):
    for b in range(num_blocks):
      strides = 2 if (b == 0 and stage > 0) else 1
      x = block_fn(x, width * 2 ** stage, strides, sync_bn, name=f's{stage}b{b}')
  x = layers.GlobalAveragePooling2D(name='pool')(x)
  return keras.Model(inputs, x, name=name)


def build_mlp(input_dim, hidden_dims=(4096,), output_dim=256, sync_bn=False, name='mlp'):
  """MLP head: [Dense -> BN -> ReLU] per hidden layer, then a plain Dense.

  BYOL projector / predictor: hidden_dims=(4096,), output_dim=256.
  Spectral Contrastive projector: hidden_dims=(8192, 8192), output_dim=8192.
  LinearBYOL predictor: hidden_dims=() (a single linear map).
  """
  inputs = keras.Input(shape=(input_dim,), name='features')
  x = inputs
  for i, dim in enumerate(hidden_dims):
    x = layers.Dense(dim, use_bias=False, name=f'dense{i}')(x)
    x = layers.ReLU()(_bn(sync_bn, name=f'bn{i}')(x))
  x = layers.Dense(output_dim, name=f'dense{len(hidden_dims)}')(x)
  return keras.Model(inputs, x, name=name)
