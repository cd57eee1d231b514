"""The BYOL family: predictions regressed onto target outputs, no state of their own.

  byol         MLP predictor, EMA target (Grill et al. 2020)
  linear_byol  linear predictor, EMA target (Tian et al. 2021's analysis model)
  simsiam      MLP predictor, target = sg(online) (Chen & He 2021)
"""

from minc_tf import losses
from minc_tf.methods import base


class Byol(base.Method):
  """L = sum over both orders of ||q_i/|q_i| - t_j/|t_j|||^2 (losses.byol_loss)."""

  NAME = 'byol'
  PREDICTOR = 'mlp'
  TARGET = True
  TERMS = ()

  def loss(self, z, q, t, update_state=True):
    q1, q2 = base.split(q)
    t1, t2 = base.split(t)
    return losses.byol_loss(q1, q2, t1, t2), {}


class LinearByol(Byol):
  NAME = 'linear_byol'
  PREDICTOR = 'linear'


class SimSiam(Byol):
  NAME = 'simsiam'
  TARGET = False
