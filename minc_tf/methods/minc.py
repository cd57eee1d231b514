"""MINC: Spectral Contrastive's objective with each point compared to a summary of the others.

L = E_i[ q1_i^T M q1_i - 2 q1_i . t2_i ] + (the same with the views swapped), divided by mu,
where M is the second moment of the (target) outputs. Its own state is the summary: an EMA of
the global batch moment, bias-corrected as Adam's moments are. What the paper leaves open (the
source of t and M, M's memory, the GHA form) is a setting here; docs/method.md says what is
reconstructed.
"""

import numpy as np
import tensorflow as tf

from minc_tf import losses
from minc_tf import spectrum
from minc_tf.errors import one_of, real_in
from minc_tf.methods import base


def bias_corrected(summary, steps, decay):
  """The EMA `summary` after `steps` updates from zero, corrected for its start: M / (1 - d^s).

  decay 0 needs no correction (the summary is the last batch's moment). Works on tensors and
  NumPy values alike (the monitor reads it on the host).
  """
  if decay <= 0:
    return summary
  return summary / (1.0 - decay ** steps)


class Minc(base.Method):
  """See the module docstring; losses.minc_loss has the formula and its gradient."""

  NAME = 'minc'
  SETTINGS = {
      'mu': base.MU,
      'summary_decay': base.Setting(0.99, real_in(0, 1, high_open=True),
                                    "EMA decay of the summary M per step; 0 uses the current "
                                    "batch's moment only"),
      'summary_source': base.Setting('target', one_of(('target', 'online')),
                                     "whose outputs feed M: the target's t, or sg(online z)"),
      'summary_centered': base.Setting(False, one_of((False, True)),
                                       "subtract the mean's outer product from M (a covariance)"),
      'lower_triangular': base.Setting(False, one_of((False, True)),
                                       "the GHA / Sanger form: feature a is pushed away only "
                                       "from features b <= a (ordered features)"),
  }

  def __init__(self, projector_dim, has_target, **settings):
    super().__init__(projector_dim, has_target, **settings)
    k = projector_dim
    # Every replica computes the same (all-reduced) update, so per-replica assignment keeps the
    # mirrored copies identical; autocast=False keeps the summary in float32 under bf16.
    self.summary = self.add_weight(shape=(k, k), initializer='zeros', trainable=False,
                                   autocast=False, name='summary')
    self.summary_steps = self.add_weight(shape=(), initializer='zeros', trainable=False,
                                         autocast=False, name='summary_steps')

  def summary_matrix(self, s1, s2, update=True):
    """Updates the EMA of the global second moment and returns its bias-corrected value.

    update=False reads the summary as it stands (the batch's own moment before any update), for
    measurements that must not change the model's state.
    """
    batch_moment = losses.batch_second_moment(s1, s2, centered=self.summary_centered)
    decay = self.summary_decay
    if not update:
      steps = self.summary_steps
      current = bias_corrected(self.summary, tf.maximum(steps, 1.0), decay)
      return tf.where(steps > 0, current, batch_moment)
    self.summary.assign(decay * self.summary + (1.0 - decay) * batch_moment)
    self.summary_steps.assign_add(1.0)
    return bias_corrected(self.summary, self.summary_steps, decay)

  def loss(self, z, q, t, update_state=True):
    # Scale control: the radial clip bounds ||z||^2 <= mu; without it the quadratic term lets
    # the outputs grow until the step diverges.
    q = losses.radial_clip(q, self.mu)
    t = losses.radial_clip(t, self.mu)
    src = t if self.summary_source == 'target' else tf.stop_gradient(
        losses.radial_clip(z, self.mu))
    m = self.summary_matrix(*base.split(src), update=update_state)
    q1, q2 = base.split(q)
    t1, t2 = base.split(t)
    loss, terms = losses.minc_loss(q1, q2, t1, t2, m, lower_triangular=self.lower_triangular,
                                   return_terms=True)
    scale = 1.0 if self.mu is None else self.mu
    return loss / scale, {name: v / scale for name, v in terms.items()}

  def diagnostics(self, num_eigenvalues):
    """The spectrum of the bias-corrected summary (none before its first step, or when a NaN
    step has left it non-finite: that is the guard's to report)."""
    steps = float(self.summary_steps.numpy())
    summary = self.summary.numpy().astype(np.float64)
    if steps <= 0 or not np.isfinite(summary).all():
      return {}
    summary = bias_corrected(summary, steps, self.summary_decay)
    eig = np.sort(np.linalg.eigvalsh((summary + summary.T) / 2))[::-1]
    out = {'summary/eigenvalue_effective_rank': spectrum.effective_rank(eig)}
    out.update({f'summary/eigenvalue_{i}': float(v) for i, v in enumerate(eig[:num_eigenvalues])})
    return out

  # Checkpoints written before methods/ existed held the summary as model/summary; Checkpointer
  # restores them through this map (new name under the model -> old name under the model).
  LEGACY_CHECKPOINT_NAMES = {'summary': 'summary', 'summary_steps': 'summary_steps'}
