"""SimCLR's NT-Xent loss (Chen et al. 2020): no target, no predictor, no state."""

import math

from minc_tf import losses
from minc_tf.errors import real_in
from minc_tf.methods import base


class SimCLR(base.Method):
  """Cross-entropy of each view's positive among all 2N - 1 others (losses.simclr_loss)."""

  NAME = 'simclr'
  TARGET_OUTPUTS = False
  SETTINGS = {'temperature': base.Setting(0.1, real_in(0, math.inf, low_open=True),
                                          "SimCLR's softmax temperature")}

  def loss(self, z, q, t, update_state=True):
    z1, z2 = base.split(z)
    return losses.simclr_loss(z1, z2, temperature=self.temperature, return_terms=True)
