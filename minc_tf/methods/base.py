"""What a method is: the settings it reads, the networks it needs, its own state, its loss.

A method is one module in this package and one line in its registry (methods/__init__.py).
The model (model.py) owns what every method shares (encoder, projector, optional predictor and
EMA target, probe, optimizer) and asks the method for the rest:

  PREDICTOR  the predictor it uses when build_model.predictor is left 'none'
  TARGET     whether it has an EMA target network when build_model.use_target is left None
  TARGET_OUTPUTS  whether its loss reads target outputs (an EMA target's, or sg(online) ones)
  TERMS      the names of the loss terms it logs beside the loss (attract / repel), or ()
  SETTINGS   {name: Setting}: its hyperparameters, which gin binds as build_model.<name>
  __init__   creates its own state (weights of this layer, checkpointed with the model)
  loss()     a pure function of the batch's outputs and that state (methods call losses.py)
  diagnostics()  figures of its state the monitor writes to TensorBoard (host side)

A method is a Keras layer only so that its state is tracked, checkpointed, mirrored and shown
by the model like any other weights; it is never called as a layer.
"""

import math
from typing import Any, NamedTuple, Tuple

import keras
import tensorflow as tf

from minc_tf.errors import real_in


class Setting(NamedTuple):
  """A method hyperparameter: its default, its (predicate, description) check, one line of doc."""
  default: Any
  check: Tuple[Any, str]
  doc: str


# Shared by MINC and Spectral Contrastive: one setting, one meaning.
MU = Setting(10.0, real_in(0, math.inf, low_open=True, optional=True),
             'output scale: the outputs are clipped radially to ||z||^2 <= mu and the loss is '
             'divided by mu (both terms); None: no clip, no division')


class Method(keras.layers.Layer):
  """Base of every method (see the module docstring for what a subclass states)."""

  NAME = None
  PREDICTOR = 'none'
  TARGET = False
  TARGET_OUTPUTS = True
  TERMS = ('attract', 'repel')
  SETTINGS = {}

  def __init__(self, projector_dim, has_target, **settings):
    super().__init__(name=self.NAME)
    unknown = sorted(set(settings) - set(self.SETTINGS))
    if unknown:
      raise ValueError(f'{self.NAME} has no settings {unknown}')
    self.projector_dim = projector_dim
    self.has_target = has_target
    for name, setting in self.SETTINGS.items():
      setattr(self, name, settings.get(name, setting.default))
    self.built = True

  def loss(self, z, q, t, update_state=True):
    """The method's loss on a (local) batch, global under a strategy: (loss, {term: value}).

    z: online projections, q: predictions (z where there is no predictor), t: target outputs
    (None unless TARGET_OUTPUTS), each [2n, k] float32 with view 1 in the first n rows.
    update_state=False leaves the method's state as it is (measurements, not training).
    """
    raise NotImplementedError

  def diagnostics(self, num_eigenvalues):  # pylint: disable=unused-argument
    """{tag: float} figures of the method's state for TensorBoard (none by default)."""
    return {}


def split(x):
  """(view 1 rows, view 2 rows) of a [2n, ...] tensor."""
  return tf.split(x, 2, axis=0)
