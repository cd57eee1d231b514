"""Self-supervised losses as pure functions of tensors.

Contract shared by every loss here:
  * Inputs are the rows this replica holds (its share of the global batch).
  * Under a tf.distribute strategy the value is the loss of the GLOBAL batch, identical on every
    replica: sums are all-reduced and pairwise terms see every replica's rows. Outside a strategy
    (or under the default one) the global batch is simply the batch given.
  * The caller divides the value by `num_replicas_in_sync` before taking gradients, because Keras
    optimizers SUM gradients over replicas. The all-reduces below are differentiable (their
    gradient is an all-reduce of the upstream gradients), which is what makes that division give
    exactly the single-device gradient of the global loss.

N is the global batch size and rows are indexed by i, j over the global batch.
"""

import tensorflow as tf


# --- Cross-replica helpers -------------------------------------------------------------------------


def _replica_context():
  """The replica context if we are inside a multi-replica step, else None."""
  ctx = tf.distribute.get_replica_context()
  if ctx is None or ctx.num_replicas_in_sync == 1:
    return None
  return ctx


def cross_replica_sum(x):
  """Sum of `x` over replicas (identity outside a multi-replica step). Differentiable."""
  ctx = _replica_context()
  return x if ctx is None else ctx.all_reduce(tf.distribute.ReduceOp.SUM, x)


def cross_replica_concat(x):
  """Concatenates `x` ([n, ...]) over replicas along axis 0, in replica order.

  An all_gather: each replica sends its n rows once (the one-hot all-reduce of the SimCLR TF2
  code sends a num-times larger, mostly-zero tensor both ways: 134 MB per step for Spectral's
  B = 4096 x 8192 on a GPU cluster). Its gradient (TensorFlow's custom gradient of all_gather)
  is the all-reduced upstream gradient sliced to this replica's rows, which is what makes the
  caller's division by num_replicas_in_sync exact; tests/test_losses.py checks both against
  one device. Shapes stay static for XLA.
  """
  ctx = _replica_context()
  if ctx is None:
    return x
  return ctx.all_gather(x, axis=0)


def replica_offset(local_n):
  """Global index of this replica's first row (0 outside a multi-replica step)."""
  ctx = _replica_context()
  if ctx is None:
    return tf.constant(0, tf.int32)
  return tf.cast(ctx.replica_id_in_sync_group, tf.int32) * tf.cast(local_n, tf.int32)


def global_batch_size(x):
  """N: the number of rows of `x` summed over replicas, in x's dtype."""
  return cross_replica_sum(tf.cast(tf.shape(x)[0], x.dtype))


def global_means(*per_row):
  """Means over the global batch of per-row quantities ([n] each), with ONE all-reduce.

  Packing the sums into one collective matters: the backward pass of several independent
  all-reduces may be scheduled in different orders on different replicas, and collectives
  matched out of order fail (or hang) under MirroredStrategy.
  """
  n_local = tf.cast(tf.shape(per_row[0])[0], per_row[0].dtype)
  sums = cross_replica_sum(tf.stack([tf.reduce_sum(r) for r in per_row] + [n_local]))
  means = tuple(sums[i] / sums[-1] for i in range(len(per_row)))
  return means if len(means) > 1 else means[0]


# --- Output scale control --------------------------------------------------------------------------


def radial_clip(z, mu):
  """Rescales each row of z with ||z_i|| > sqrt(mu) to norm sqrt(mu); shorter rows pass unchanged.

  z_i <- z_i * min(1, sqrt(mu) / ||z_i||). This is the clip of the Spectral Contrastive authors'
  code (not in their paper); `mu=None` disables it.
  """
  if mu is None:
    return z
  norm = tf.norm(z, axis=-1, keepdims=True)
  scale = tf.minimum(1.0, tf.sqrt(tf.cast(mu, z.dtype)) / tf.maximum(norm, 1e-12))
  return z * scale


# --- Second-moment summary -------------------------------------------------------------------------


def batch_second_moment(t1, t2, centered=False):
  """Global second moment of the rows of both views: C = (1/2N) sum_i (t1_i t1_i^T + t2_i t2_i^T).

  With centered=True the outer product of the mean m = (1/2N) sum_i (t1_i + t2_i) is subtracted:
  C - m m^T. Rows are treated as constants (no gradient).
  """
  t = tf.stop_gradient(tf.concat([t1, t2], axis=0))
  k = tf.shape(t)[1]
  # Cross-replica: [t^T t | sum_i t_i | n] all-reduced in one collective, so every replica
  # holds the global moment.
  local = tf.concat([tf.matmul(t, t, transpose_a=True), tf.reduce_sum(t, axis=0)[None],
                     tf.fill([1, k], tf.cast(tf.shape(t)[0], t.dtype))], axis=0)
  total = cross_replica_sum(local)
  n = total[-1, 0]
  second = total[:k] / n
  if centered:
    mean = total[k] / n
    second -= mean[:, None] * mean[None, :]
  return second


# --- The losses --------------------------------------------------------------------------------------


def spectral_contrastive_loss(z1, z2, mu=1.0, return_terms=False):
  """Spectral Contrastive loss (HaoChen et al. 2021), as its authors' code computes it.

  z <- radial_clip(z, mu), then
    L = ( -(2/N) sum_i z1_i . z2_i  +  1/(N(N-1)) sum_{i != j} (z1_i . z2_j)^2 ) / mu.
  Both views get gradients (no stop-gradient).

  Cross-replica: each replica forms its local rows of z1 against the GLOBAL z2 (concatenated
  over replicas), and the partial sums are all-reduced; the original code computed the loss per
  GPU, which changes the estimator with the number of devices.
  """
  z1 = radial_clip(z1, mu)
  z2 = radial_clip(z2, mu)
  z2_all = cross_replica_concat(z2)
  n = tf.cast(tf.shape(z2_all)[0], z1.dtype)                                   # [N, k]
  dots = tf.matmul(z1, z2_all, transpose_b=True)                      # [n, N]
  diag = tf.one_hot(tf.range(tf.shape(z1)[0]) + replica_offset(tf.shape(z1)[0]),
                    tf.shape(z2_all)[0], dtype=dots.dtype)            # own positives, masked out
  # One all-reduce for both global sums: sum_i z1_i.z2_i and sum_{i != j} (z1_i.z2_j)^2.
  sums = cross_replica_sum(tf.stack([tf.reduce_sum(z1 * z2),
                                     tf.reduce_sum(tf.square(dots) * (1.0 - diag))]))
  mu = 1.0 if mu is None else mu
  attract = -2.0 * sums[0] / n / mu
  repel = sums[1] / (n * (n - 1.0)) / mu
  loss = attract + repel
  return (loss, _terms(attract, repel)) if return_terms else loss


def _terms(attract, repel):
  """The two terms of a loss, as constants (monitoring only)."""
  return {'attract': tf.stop_gradient(attract), 'repel': tf.stop_gradient(repel)}


def minc_loss(z1, z2, t1, t2, summary, lower_triangular=False, return_terms=False,
              preconditioner=None):
  """MINC: the Spectral Contrastive objective with the pairwise term replaced by a summary.

  z: online outputs; t: target outputs; M = `summary` (k x k). t and M are constants.
  Value (sum over the two views):
    L = mean_i[ -2 z1_i . t2_i + z1_i^T M z1_i ] + mean_i[ -2 z2_i . t1_i + z2_i^T M z2_i ].
  Gradient:
    dL/dz1_i = (2/N) (M' z1_i - t2_i),  M' = M, or tril(M) (diagonal included) when
    lower_triangular=True: the Generalized Hebbian (Sanger) form, in which feature a is
    normalised only against features b <= a, so features come out ordered by eigenvalue.

  The gradient is computed in closed form (a custom gradient) from the product z M that the
  value needs anyway, so a call costs two B.k^2 products (one with M' = tril(M)) and a few
  element-wise passes; autodiff of the value would add a product and a dozen passes over [B, k].
  See docs/method.md for why this is the Spectral Contrastive loss with E_j[(z_i.z_j)^2] =
  z_i^T C z_i (derived, not published).

  preconditioner: a constant k x k matrix P (symmetric): the gradient becomes
    dL/dz1_i = (2/N) P (M' z1_i - t2_i),
  e.g. P = (M + eps I)^-1, a normalised power-iteration step. Like tril(M), a P other than I
  makes the update the gradient of no scalar; the value returned stays the one above.

  return_terms=True returns (L, terms): terms['attract'] = -2 mean_i(z1_i.t2_i + z2_i.t1_i), the
  alignment term, and terms['repel'] = mean_i(z1_i^T M z1_i + z2_i^T M z2_i).
  """
  summary = tf.stop_gradient(tf.cast(summary, z1.dtype))
  if preconditioner is not None:
    preconditioner = tf.stop_gradient(tf.cast(preconditioner, z1.dtype))
  m_pull = tf.linalg.band_part(summary, -1, 0) if lower_triangular else None

  def view_rows(z, t):
    t = tf.stop_gradient(t)

    @tf.custom_gradient
    def rows(z):
      zm = tf.matmul(z, summary)
      value = tf.reduce_sum(z * (zm - 2.0 * t), axis=-1)      # z^T M z - 2 z.t per row

      def grad(upstream):
        # (M' z_i)_a = sum_b M'_ab z_ib, the rows of z @ M'^T; for M' = M (symmetric) that is
        # the z @ M of the value, reused.
        pull = tf.matmul(z, m_pull, transpose_b=True) if lower_triangular else zm
        step = pull - t
        if preconditioner is not None:  # rows of (P (M' z_i - t_i))^T = (M' z_i - t_i)^T P
          step = tf.matmul(step, preconditioner)
        return 2.0 * upstream[:, None] * step

      return value, grad

    return rows(z)

  rows = view_rows(z1, t2) + view_rows(z2, t1)
  if not return_terms:
    # Cross-replica: the mean over the global batch (one all-reduce of [sum, count]).
    return global_means(rows)
  align = -2.0 * tf.stop_gradient(tf.reduce_sum(z1 * t2, -1) + tf.reduce_sum(z2 * t1, -1))
  loss, attract = global_means(rows, align)  # both sums in the one all-reduce
  return loss, _terms(attract, loss - attract)


def simclr_loss(z1, z2, temperature=0.1, return_terms=False):
  """NT-Xent (SimCLR) with l2-normalised rows and negatives from the global batch.

  With u the 2N normalised rows of both views and s_ab = u_a . u_b / temperature,
    L = (1/2N) sum_a -log( exp(s_a,pos(a)) / sum_{b != a} exp(s_ab) ),
  so each anchor has 1 positive and 2N - 2 negatives.

  Cross-replica: local anchors are scored against the global keys (both views concatenated over
  replicas), and the per-anchor losses are averaged over the global batch.

  return_terms=True returns (L, terms): terms['attract'] = -mean_a s_a,pos(a) and terms['repel']
  = mean_a log sum_{b != a} exp(s_ab) (Wang & Isola's alignment and uniformity parts).
  """
  u1 = tf.math.l2_normalize(z1, axis=-1)
  u2 = tf.math.l2_normalize(z2, axis=-1)
  n_local = tf.shape(u1)[0]
  k1 = cross_replica_concat(u1)
  k2 = cross_replica_concat(u2)
  n_global = tf.shape(k1)[0]
  keys = tf.concat([k1, k2], axis=0)                                     # [2N, k]
  idx = tf.range(n_local) + replica_offset(n_local)                    # global row of each anchor
  self_mask = tf.one_hot(idx, 2 * n_global, dtype=u1.dtype)
  self_mask_2 = tf.one_hot(idx + n_global, 2 * n_global, dtype=u1.dtype)

  def anchor_losses(anchors, self_m, pos_m):
    logits = tf.matmul(anchors, keys, transpose_b=True) / temperature
    logits -= 1e9 * self_m
    return tf.nn.softmax_cross_entropy_with_logits(labels=pos_m, logits=logits)

  per_row = tf.concat([anchor_losses(u1, self_mask, self_mask_2),
                       anchor_losses(u2, self_mask_2, self_mask)], axis=0)
  if not return_terms:
    return global_means(per_row)
  pos = tf.stop_gradient(tf.reduce_sum(u1 * u2, -1)) / temperature
  loss, attract = global_means(per_row, -tf.concat([pos, pos], axis=0))
  return loss, _terms(attract, loss - attract)


def byol_loss(p1, p2, t1, t2):
  """BYOL regression loss, symmetrised:  L = mean_i(2 - 2 cos(p1_i, t2_i)) + mean_i(2 - 2 cos(p2_i, t1_i)).

  p: predictor outputs of the online network; t: target projections (constants). SimSiam and
  LinearBYOL use this loss with their own networks.
  """
  def term(p, t):
    p = tf.math.l2_normalize(p, axis=-1)
    t = tf.math.l2_normalize(tf.stop_gradient(t), axis=-1)
    return 2.0 - 2.0 * tf.reduce_sum(p * t, axis=-1)

  return global_means(term(p1, t2) + term(p2, t1))
