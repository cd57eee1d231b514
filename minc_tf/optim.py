"""Optimisers and schedules: LARS (Keras 3 has none), warmup-cosine learning rate, presets."""

import math

import gin
import keras
from keras import ops

from minc_tf.errors import one_of, real_in, require

# BYOL's presets by epoch budget (Grill et al. 2020; facts.md): base lr, weight decay, tau_base.
BYOL_PRESETS = {100: (0.45, 1e-6, 0.99), 300: (0.3, 1e-6, 0.99), 1000: (0.2, 1.5e-6, 0.996)}


class LARS(keras.optimizers.Optimizer):
  """Layer-wise Adaptive Rate Scaling (You et al. 2017) with classic momentum, as SimCLR/BYOL.

  For a variable w with rank > 1 and gradient g:
    g' = g + wd * w
    ratio = eta * ||w|| / ||g'||   (1 when either norm is 0)
    v <- m v + lr * ratio * g'
    w <- w - v
  1-D variables (biases, BN scales and offsets) get neither weight decay nor adaptation:
    v <- m v + lr * g,  w <- w - v.
  """

  def __init__(self, learning_rate=0.1, momentum=0.9, weight_decay_rate=0.0,
               trust_coefficient=1e-3, name='lars', **kwargs):
    # Keras' own `weight_decay` is decoupled (applied after the step); LARS needs it inside the
    # trust ratio, hence a separate argument.
    super().__init__(learning_rate=learning_rate, name=name, **kwargs)
    self.momentum = momentum
    self.weight_decay_rate = weight_decay_rate
    self.trust_coefficient = trust_coefficient

  def build(self, var_list):
    if self.built:
      return
    super().build(var_list)
    self.velocities = [self.add_variable_from_reference(v, 'velocity') for v in var_list]

  def update_step(self, gradient, variable, learning_rate):
    lr = ops.cast(learning_rate, variable.dtype)
    g = ops.cast(gradient, variable.dtype)
    v = self.velocities[self._get_variable_index(variable)]
    if len(variable.shape) > 1:
      g = g + self.weight_decay_rate * variable
      w_norm = ops.sqrt(ops.sum(ops.square(variable)))
      g_norm = ops.sqrt(ops.sum(ops.square(g)))
      ratio = ops.where((w_norm > 0) & (g_norm > 0),
                        self.trust_coefficient * w_norm / ops.maximum(g_norm, 1e-30),
                        ops.ones_like(w_norm))
      lr = lr * ratio
    self.assign(v, self.momentum * v + lr * g)
    self.assign_sub(variable, v)

  def get_config(self):
    config = super().get_config()
    config.update(momentum=self.momentum, weight_decay_rate=self.weight_decay_rate,
                  trust_coefficient=self.trust_coefficient)
    return config


def warmup_cosine(peak_lr, total_steps, warmup_steps):
  """Linear warmup from 0 to peak_lr over warmup_steps, then cosine decay to 0 at total_steps."""
  warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
  return keras.optimizers.schedules.CosineDecay(
      initial_learning_rate=0.0 if warmup_steps else peak_lr,
      decay_steps=max(total_steps - warmup_steps, 1), alpha=0.0,
      warmup_target=peak_lr if warmup_steps else None, warmup_steps=warmup_steps)


@gin.configurable
def build_optimizer(global_batch_size, steps_per_epoch, epochs, name='lars', base_lr=0.3,
                    weight_decay=1e-6, momentum=0.9, warmup_epochs=10, trust_coefficient=1e-3,
                    byol_preset=None):
  """Optimizer with lr = base_lr * global_batch / 256, linear warmup and cosine decay to 0.

  byol_preset: 100, 300 or 1000 takes base_lr and weight_decay from BYOL's table for that
  epoch budget (overriding the two arguments).

  name: 'lars', 'sgd' (momentum) or 'adamw'; Keras' SGD and AdamW decay weights decoupled.
  name: 'lars', 'sgd', 'adamw' or 'adam'.
  base_lr: the learning rate at batch 256; the peak is base_lr x global batch / 256.
  weight_decay: decoupled weight decay (LARS and AdamW skip biases and BatchNorm).
  momentum: momentum of SGD and LARS.
  warmup_epochs: epochs of linear warm-up from 0 to the peak learning rate.
  trust_coefficient: LARS's trust ratio coefficient eta.
  """
  if byol_preset is not None:
    base_lr, weight_decay, _ = preset(byol_preset)
  require('build_optimizer.name', name, one_of(('lars', 'sgd', 'adamw')))
  require('build_optimizer.base_lr', base_lr, real_in(0, math.inf, low_open=True))
  require('build_optimizer.weight_decay', weight_decay, real_in(0, math.inf))
  require('build_optimizer.momentum', momentum, real_in(0, 1, high_open=True))
  require('build_optimizer.warmup_epochs', warmup_epochs, real_in(0, math.inf, high_open=True))
  require('build_optimizer.trust_coefficient', trust_coefficient,
          real_in(0, math.inf, low_open=True))
  total = steps_per_epoch * epochs
  schedule = warmup_cosine(base_lr * global_batch_size / 256, total,
                           int(round(warmup_epochs * steps_per_epoch)))
  if name == 'lars':
    return LARS(schedule, momentum=momentum, weight_decay_rate=weight_decay,
                trust_coefficient=trust_coefficient)
  if name == 'sgd':
    return keras.optimizers.SGD(schedule, momentum=momentum, weight_decay=weight_decay or None)
  if name == 'adamw':
    return keras.optimizers.AdamW(schedule, weight_decay=weight_decay)
  raise ValueError(f"unknown optimizer {name!r}; choose 'lars', 'sgd' or 'adamw'")


def preset(epochs):
  """(base_lr, weight_decay, tau_base) of BYOL for a 100, 300 or 1000 epoch budget."""
  require('byol_preset (of build_optimizer / build_model)', epochs, one_of(sorted(BYOL_PRESETS)))
  return BYOL_PRESETS[epochs]
