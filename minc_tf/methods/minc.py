"""MINC: Spectral Contrastive's objective with each point compared to a summary of the others.

L = E_i[ q1_i^T M q1_i - 2 q1_i . t2_i ] + (the same with the views swapped), divided by mu,
where M is the second moment of the (target) outputs. Its own state is the summary: an EMA of
the global batch moment, bias-corrected as Adam's moments are. What the paper leaves open (the
source of t and M, M's memory, the GHA form) is a setting here; docs/method.md says what is
reconstructed.
"""

import math

import numpy as np
import tensorflow as tf

from minc_tf import losses
from minc_tf import spectrum
from minc_tf.errors import UserError
from minc_tf.errors import int_at_least, one_of, real_in
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
      'summary_decay': base.Setting(0.0, real_in(0, 1, high_open=True),
                                    "EMA decay of the summary M per step; 0 uses the current "
                                    "batch's moment only"),
      'summary_source': base.Setting('target', one_of(('target', 'online')),
                                     "whose outputs feed M: the target's t, or sg(online z)"),
      'summary_centered': base.Setting(False, one_of((False, True)),
                                       "subtract the mean's outer product from M (a covariance)"),
      'lower_triangular': base.Setting(False, one_of((False, True)),
                                       "the GHA / Sanger form: feature a is pushed away only "
                                       "from features b <= a (ordered features)"),
      'summary_memory': base.Setting('ema', one_of(('ema', 'queue')),
                                     "how M remembers earlier steps: an EMA of the batch "
                                     "moments, or the moment of a queue of the last "
                                     "summary_horizon pairs' outputs (low lag)"),
      'summary_horizon': base.Setting(None, int_at_least(1, optional=True),
                                      "M's memory in pairs seen: the EMA decays by 1 - B/H per "
                                      "step of global batch B (the batch alone from B >= H; "
                                      "replaces summary_decay), the queue holds the newest 2H "
                                      "outputs (H pairs when B divides H); None: "
                                      "summary_decay per step (EMA only)"),
      'summary_moment': base.Setting('second', one_of(('second', 'cross')),
                                     "M is the second moment of both views' outputs, or the "
                                     "symmetrised cross-view moment K = (t1 t2^T + t2 t1^T) / 2 "
                                     "(with lower_triangular: Sanger's rule literally)"),
      'precondition_power': base.Setting(0, one_of((-1, 0, 1)),
                                         "p of the preconditioned step (M + eps I)^p (M z - t): "
                                         "0 MINC's own, -1 a normalised power-iteration step"),
      'precondition_eps': base.Setting(1e-3, real_in(0, math.inf, low_open=True),
                                       "eps of the preconditioner (M + eps I)^p, relative to "
                                       "M's mean eigenvalue"),
  }

  def __init__(self, projector_dim, has_target, **settings):
    super().__init__(projector_dim, has_target, **settings)
    if self.summary_memory == 'queue' and self.summary_horizon is None:
      raise UserError("build_model.summary_memory = 'queue' needs the queue's length. Fix: "
                      'bind build_model.summary_horizon to a number of pairs (e.g. 4096).')
    if self.summary_centered and self.summary_moment == 'cross':
      raise UserError("build_model.summary_centered applies to the second moment, not to "
                      "summary_moment = 'cross'. Fix: unbind one of them.")
    if self.summary_memory == 'queue' and self.summary_moment == 'cross':
      raise UserError("build_model.summary_moment = 'cross' pairs each image's two views, "
                      'which the queue does not keep. Fix: use the EMA '
                      "(build_model.summary_memory = 'ema') for the cross-view moment.")
    k = projector_dim
    # Every replica computes the same (all-reduced) update, so per-replica assignment keeps the
    # mirrored copies identical; autocast=False keeps the summary in float32 under bf16.
    self.summary = self.add_weight(shape=(k, k), initializer='zeros', trainable=False,
                                   autocast=False, name='summary')
    self.summary_steps = self.add_weight(shape=(), initializer='zeros', trainable=False,
                                         autocast=False, name='summary_steps')
    if self.summary_horizon is not None and self.summary_memory == 'ema':
      # The EMA of 1s under the same decays: the bias correction for a decay that is a tensor
      # (it follows the global batch).
      self.summary_weight = self.add_weight(shape=(), initializer='zeros', trainable=False,
                                            autocast=False, name='summary_weight')
    if self.summary_memory == 'queue':
      # The last H pairs' outputs (both views: 2H rows), newest first, and how many are filled.
      self.queue = self.add_weight(shape=(2 * self.summary_horizon, k), initializer='zeros',
                                   trainable=False, autocast=False, name='queue')
      self.queue_rows = self.add_weight(shape=(), initializer='zeros', trainable=False,
                                        autocast=False, name='queue_rows')

  def _moment(self, s1, s2):
    """The global batch's moment of the summary's kind (an all-reduce)."""
    if self.summary_moment == 'cross':
      t1, t2 = tf.stop_gradient(s1), tf.stop_gradient(s2)
      n = losses.global_batch_size(t1)
      cross = losses.cross_replica_sum(tf.matmul(t1, t2, transpose_a=True)) / n
      return (cross + tf.transpose(cross)) / 2.0
    return losses.batch_second_moment(s1, s2, centered=self.summary_centered)

  def _queue_matrix(self, s1, s2, update):
    """The moment of the newest max(H, B) pairs: this batch's (gathered from every replica,
    so every replica holds the same queue) and the queue's."""
    # Each view gathered on its own: the rows then come in the single-device order (all of view
    # 1, then all of view 2), so a queue that drops its oldest rows drops the same ones.
    rows = tf.stop_gradient(tf.concat([losses.cross_replica_concat(s1),
                                       losses.cross_replica_concat(s2)], 0))
    buf = tf.concat([rows, self.queue], 0)
    new = tf.shape(rows)[0]
    count = tf.minimum(tf.cast(new, tf.float32) + self.queue_rows,
                       tf.cast(tf.maximum(2 * self.summary_horizon, new), tf.float32))
    valid = tf.cast(tf.range(tf.shape(buf)[0]) < tf.cast(count, tf.int32), buf.dtype)[:, None]
    moment = tf.matmul(buf * valid, buf, transpose_a=True) / count
    if self.summary_centered:
      mean = tf.reduce_sum(buf * valid, 0) / count
      moment -= mean[:, None] * mean[None, :]
    if update:
      self.queue.assign(buf[:2 * self.summary_horizon])
      self.queue_rows.assign(tf.minimum(count, 2.0 * self.summary_horizon))
      self.summary.assign(moment)  # what the monitor and a resumed run read
      self.summary_steps.assign_add(1.0)
    return moment

  def summary_matrix(self, s1, s2, update=True):
    """Updates the summary (EMA or queue) with the global batch and returns M.

    update=False reads the summary as it stands (the batch's own moment before any update), for
    measurements that must not change the model's state.
    """
    if self.summary_memory == 'queue':
      return self._queue_matrix(s1, s2, update)
    batch_moment = self._moment(s1, s2)
    if self.summary_horizon is not None:
      n = losses.global_batch_size(s1)
      decay = tf.maximum(0.0, 1.0 - n / float(self.summary_horizon))
      if not update:
        current = self.summary / tf.maximum(self.summary_weight, 1e-12)
        return tf.where(self.summary_steps > 0, current, batch_moment)
      self.summary.assign(decay * self.summary + (1.0 - decay) * batch_moment)
      self.summary_weight.assign(decay * self.summary_weight + (1.0 - decay))
      self.summary_steps.assign_add(1.0)
      return self.summary / self.summary_weight
    decay = self.summary_decay
    if not update:
      steps = self.summary_steps
      current = bias_corrected(self.summary, tf.maximum(steps, 1.0), decay)
      return tf.where(steps > 0, current, batch_moment)
    self.summary.assign(decay * self.summary + (1.0 - decay) * batch_moment)
    self.summary_steps.assign_add(1.0)
    return bias_corrected(self.summary, self.summary_steps, decay)

  def preconditioner(self, m):
    """(M + eps I)^p for precondition_power p (None for p = 0), eps relative to M's mean
    eigenvalue; M is symmetric, so through its eigendecomposition."""
    p = self.precondition_power
    if p == 0:
      return None
    k = tf.shape(m)[0]
    eps = self.precondition_eps * tf.maximum(tf.linalg.trace(m) / tf.cast(k, m.dtype), 1e-12)
    values, vectors = tf.linalg.eigh((m + tf.transpose(m)) / 2.0)
    values = tf.maximum(values, 0.0) + eps
    return tf.matmul(vectors * tf.pow(values, float(p))[None, :], vectors, transpose_b=True)

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
                                   return_terms=True, preconditioner=self.preconditioner(m))
    scale = 1.0 if self.mu is None else self.mu
    return loss / scale, {name: v / scale for name, v in terms.items()}

  def diagnostics(self, num_eigenvalues):
    """The spectrum of the bias-corrected summary (none before its first step, or when a NaN
    step has left it non-finite: that is the guard's to report)."""
    steps = float(self.summary_steps.numpy())
    summary = self.summary.numpy().astype(np.float64)
    if steps <= 0 or not np.isfinite(summary).all():
      return {}
    if self.summary_memory == 'queue':
      pass  # the queue's moment itself
    elif self.summary_horizon is not None:
      summary /= max(float(self.summary_weight.numpy()), 1e-12)
    else:
      summary = bias_corrected(summary, steps, self.summary_decay)
    eig = np.sort(np.linalg.eigvalsh((summary + summary.T) / 2))[::-1]
    out = {'summary/eigenvalue_effective_rank': spectrum.effective_rank(eig)}
    out.update({f'summary/eigenvalue_{i}': float(v) for i, v in enumerate(eig[:num_eigenvalues])})
    return out

  # Checkpoints written before methods/ existed held the summary as model/summary; Checkpointer
  # restores them through this map (new name under the model -> old name under the model).
  LEGACY_CHECKPOINT_NAMES = {'summary': 'summary', 'summary_steps': 'summary_steps'}
