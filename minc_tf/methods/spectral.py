"""Spectral Contrastive loss (HaoChen et al. 2021): no target, no predictor, no state."""

from minc_tf import losses
from minc_tf.methods import base


class Spectral(base.Method):
  """L = -2 E[z1 . z2] + E_{i != j}[(z1_i . z2_j)^2] / mu (losses.spectral_contrastive_loss)."""

  NAME = 'spectral'
  TARGET_OUTPUTS = False
  SETTINGS = {'mu': base.MU}

  def loss(self, z, q, t, update_state=True):
    z1, z2 = base.split(z)
    return losses.spectral_contrastive_loss(z1, z2, mu=self.mu, return_terms=True)
