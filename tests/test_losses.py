"""losses.py against independent NumPy references, the MINC <-> Spectral gradient identity, a
toy spectral problem with a known eigenbasis, and equality of distributed and single-device
losses and gradients."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from minc_tf import losses
from conftest import run_distributed

RNG = np.random.default_rng(0)


# --- NumPy references (written from the formulas, sharing no code with losses.py) ----------------

def np_clip(z, mu):
  norm = np.linalg.norm(z, axis=1, keepdims=True)
  return np.where(norm > np.sqrt(mu), z * np.sqrt(mu) / norm, z)


def np_spectral(z1, z2, mu):
  z1, z2 = np_clip(z1, mu), np_clip(z2, mu)
  n = len(z1)
  pos = -2.0 / n * sum(z1[i] @ z2[i] for i in range(n))
  neg = sum((z1[i] @ z2[j]) ** 2 for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
  return (pos + neg) / mu


def np_spectral_grad_z1(z1, z2):
  """d/dz1_i of the unclipped loss (mu = 1): -(2/N) z2_i + 2/(N(N-1)) sum_{j!=i} (z1_i.z2_j) z2_j."""
  n = len(z1)
  g = np.zeros_like(z1)
  for i in range(n):
    g[i] = -2.0 / n * z2[i] + 2.0 / (n * (n - 1)) * sum(
        (z1[i] @ z2[j]) * z2[j] for j in range(n) if j != i)
  return g


def np_minc(z1, z2, t1, t2, m):
  return (np.mean([-2 * z1[i] @ t2[i] + z1[i] @ m @ z1[i] for i in range(len(z1))]) +
          np.mean([-2 * z2[i] @ t1[i] + z2[i] @ m @ z2[i] for i in range(len(z1))]))


def np_simclr(z1, z2, tau):
  u = np.concatenate([z1, z2])
  u = u / np.linalg.norm(u, axis=1, keepdims=True)
  n2 = len(u)
  n = n2 // 2
  total = 0.0
  for a in range(n2):
    pos = (a + n) % n2
    logits = np.array([u[a] @ u[b] / tau for b in range(n2) if b != a])
    total += -(u[a] @ u[pos] / tau) + np.log(np.sum(np.exp(logits)))
  return total / n2


def np_byol(p1, p2, t1, t2):
  def cos(a, b):
    return np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
  return np.mean(2 - 2 * cos(p1, t2)) + np.mean(2 - 2 * cos(p2, t1))


def numeric_grad(f, x, eps=1e-6):
  g = np.zeros_like(x)
  for idx in np.ndindex(*x.shape):
    d = np.zeros_like(x)
    d[idx] = eps
    g[idx] = (f(x + d) - f(x - d)) / (2 * eps)
  return g


def tf_value_and_grad(fn, *args):
  args = [tf.constant(a) for a in args]
  with tf.GradientTape() as tape:
    tape.watch(args)
    value = fn(*args)
  return value.numpy(), [g.numpy() if g is not None else None for g in tape.gradient(value, args)]


def data(n=6, k=4, scale=1.0):
  return [RNG.normal(size=(n, k)) * scale for _ in range(4)]


# --- values and gradients against NumPy ------------------------------------------------------------

@pytest.mark.parametrize('mu', [1.0, 100.0])
def test_spectral_value_and_grad(mu):
  z1, z2, _, _ = data()
  value, (g1, g2) = tf_value_and_grad(lambda a, b: losses.spectral_contrastive_loss(a, b, mu), z1, z2)
  np.testing.assert_allclose(value, np_spectral(z1, z2, mu), rtol=1e-10)
  np.testing.assert_allclose(g1, numeric_grad(lambda a: np_spectral(a, z2, mu), z1), atol=1e-6)
  np.testing.assert_allclose(g2, numeric_grad(lambda b: np_spectral(z1, b, mu), z2), atol=1e-6)


def test_radial_clip_bounds_norm_and_keeps_short_rows():
  z = np.array([[3.0, 4.0], [0.1, 0.2]])
  out = losses.radial_clip(tf.constant(z), 4.0).numpy()
  np.testing.assert_allclose(out, [[1.2, 1.6], [0.1, 0.2]], rtol=1e-12)


@pytest.mark.parametrize('lower_triangular', [False, True])
def test_minc_value_and_gradient_formula(lower_triangular):
  z1, z2, t1, t2 = data()
  a = RNG.normal(size=(4, 4))
  m = a @ a.T / 4
  value, (g1, g2, gt1, gt2, gm) = tf_value_and_grad(
      lambda *x: losses.minc_loss(*x, lower_triangular=lower_triangular), z1, z2, t1, t2, m)
  np.testing.assert_allclose(value, np_minc(z1, z2, t1, t2, m), rtol=1e-10)
  mg = np.tril(m) if lower_triangular else m
  n = len(z1)
  np.testing.assert_allclose(g1, 2 / n * (z1 @ mg.T - t2), rtol=1e-9, atol=1e-12)
  np.testing.assert_allclose(g2, 2 / n * (z2 @ mg.T - t1), rtol=1e-9, atol=1e-12)
  assert gt1 is None and gt2 is None and gm is None  # targets and summary are constants.


def test_simclr_value_and_grad():
  z1, z2, _, _ = data()
  value, (g1, _) = tf_value_and_grad(lambda a, b: losses.simclr_loss(a, b, 0.2), z1, z2)
  np.testing.assert_allclose(value, np_simclr(z1, z2, 0.2), rtol=1e-9)
  np.testing.assert_allclose(g1, numeric_grad(lambda a: np_simclr(a, z2, 0.2), z1), atol=1e-6)


def test_loss_terms_are_the_attract_and_repel_parts():
  z1, z2, t1, t2 = data()
  a = RNG.normal(size=(4, 4))
  m = a @ a.T / 4
  n = len(z1)
  c1, c2 = np_clip(z1, 30.0), np_clip(z2, 30.0)
  u1, u2 = (z / np.linalg.norm(z, axis=1, keepdims=True) for z in (z1, z2))
  cases = [  # (loss with terms, NumPy total, NumPy attract term)
      (lambda: losses.spectral_contrastive_loss(tf.constant(z1), tf.constant(z2), 30.0, True),
       np_spectral(z1, z2, 30.0), -2.0 / n * np.sum(c1 * c2) / 30.0),
      (lambda: losses.minc_loss(*map(tf.constant, (z1, z2, t1, t2, m)), return_terms=True),
       np_minc(z1, z2, t1, t2, m), -2.0 * np.mean(np.sum(z1 * t2 + z2 * t1, 1))),
      (lambda: losses.simclr_loss(tf.constant(z1), tf.constant(z2), 0.2, return_terms=True),
       np_simclr(z1, z2, 0.2), -np.mean(np.sum(u1 * u2, 1)) / 0.2),
  ]
  for fn, total, attract in cases:
    loss, terms = fn()
    np.testing.assert_allclose(loss.numpy(), total, rtol=1e-9)
    np.testing.assert_allclose(terms['attract'].numpy(), attract, rtol=1e-9)
    np.testing.assert_allclose(terms['repel'].numpy(), total - attract, rtol=1e-9, atol=1e-12)


def test_byol_value_and_grad():
  p1, p2, t1, t2 = data()
  value, (g1, _, gt1, _) = tf_value_and_grad(losses.byol_loss, p1, p2, t1, t2)
  np.testing.assert_allclose(value, np_byol(p1, p2, t1, t2), rtol=1e-10)
  np.testing.assert_allclose(g1, numeric_grad(lambda a: np_byol(a, p2, t1, t2), p1), atol=1e-6)
  assert gt1 is None


def test_batch_second_moment():
  t1, t2, _, _ = data()
  both = np.concatenate([t1, t2])
  np.testing.assert_allclose(losses.batch_second_moment(t1, t2).numpy(),
                             both.T @ both / len(both), rtol=1e-12)
  centred = np.cov(both.T, bias=True)
  np.testing.assert_allclose(losses.batch_second_moment(t1, t2, centered=True).numpy(),
                             centred, rtol=1e-9, atol=1e-12)


# --- the derivation ------------------------------------------------------------------------------

def test_minc_gradient_equals_spectral_gradient_with_leave_one_out_summary():
  """method.md 3.3: target = online and M = leave-one-out second moment of view 2 make the MINC
  gradient w.r.t. z1_i equal to mu times the Spectral Contrastive one (clip inactive)."""
  n, k, mu = 16, 5, 1e4
  z1, z2 = RNG.normal(size=(n, k)), RNG.normal(size=(n, k))
  _, (spec_g1, _) = tf_value_and_grad(lambda a, b: losses.spectral_contrastive_loss(a, b, mu), z1, z2)
  np.testing.assert_allclose(mu * spec_g1, np_spectral_grad_z1(z1, z2), rtol=1e-9)
  for i in range(n):
    others = np.delete(z2, i, axis=0)
    m_loo = others.T @ others / (n - 1)
    _, (g1,) = tf_value_and_grad(lambda a: losses.minc_loss(a, z2, z1, z2, m_loo), z1)
    np.testing.assert_allclose(g1[i], mu * spec_g1[i], rtol=1e-5)


def test_constant_output_is_a_saddle_not_a_minimum():
  """A collapsed output c (||c|| = 1) with the summary of its own outputs, M = c c^T, is a
  stationary point of MINC: every row's gradient (2/N)(M c - c) is zero and the value is
  -1 per view. It is not a minimum: adding a feature b_i = 0.3 s_i e_1 (s_i = +-1, shared by
  the two views of pair i, orthogonal to c) lowers the value at second order, by
  2 * 0.18 eps^2 (1 - mean(s)^2) for the two views (with t = z and M = the perturbed outputs'
  second moment). With any other summary (the EMA's history) the gradient at collapse is not
  zero."""
  n, k = 64, 4
  c = np.zeros(k)
  c[0] = 1.0
  collapsed = np.tile(c, (n, 1))
  value, (g1, g2) = tf_value_and_grad(
      lambda a, b: losses.minc_loss(a, b, collapsed, collapsed, collapsed.T @ collapsed / n),
      collapsed, collapsed)
  np.testing.assert_allclose(value, -2.0, atol=1e-12)
  assert np.abs(g1).max() < 1e-12 and np.abs(g2).max() < 1e-12

  shared = RNG.choice([-1.0, 1.0], size=n)
  bump = np.zeros((n, k))
  bump[:, 1] = 0.3 * shared

  def minc_at(eps):
    z = collapsed + eps * bump
    return losses.minc_loss(z, z, z, z, z.T @ z / n).numpy()

  for eps in (0.01, 0.05):
    drop = minc_at(0.0) - minc_at(eps)
    expected = 2 * 0.18 * eps ** 2 * (1 - shared.mean() ** 2)
    np.testing.assert_allclose(drop, expected, rtol=0.02)
  m_history = np.diag([0.6, 0.5, 0.3, 0.2]) + 0.1  # an EMA over earlier, diverse outputs.
  _, (g,) = tf_value_and_grad(lambda a: losses.minc_loss(a, a, collapsed, collapsed, m_history),
                              collapsed)
  assert np.abs(g).max() > 1e-3


def _toy_problem(n=8, k=3):
  """Positive pairs over n points with a known eigenbasis: uniform marginal, Walsh-Hadamard
  eigenvectors, eigenvalues 1 > 0.6 > 0.3 > 0.05 ...; P(a, b) = (1/n) sum_l lam_l v_l(a) v_l(b)."""
  h = np.array([[1.0]])
  while len(h) < n:
    h = np.block([[h, h], [h, -h]])
  v = h / np.sqrt(n)
  lam = np.array([1.0, 0.6, 0.3, 0.05, 0.02, 0.01, 0.01, 0.01])[:n]
  joint = (v * lam) @ v.T / n
  assert joint.min() >= 0 and np.isclose(joint.sum(), 1)
  return joint, v[:, :k], lam[:k]


def _train_toy(loss_name, lower_triangular=False, steps=3000, batch=1024, seed=0, init=0.1,
               lr=2.0):
  joint, _, _ = _toy_problem()
  n, k = len(joint), 3
  tf.random.set_seed(seed)
  w = tf.Variable(tf.random.normal([n, k], stddev=init, seed=seed))
  summary = tf.Variable(tf.zeros([k, k]))
  # A large step: Sanger's later features shed their early overlap with the leading ones at a
  # rate proportional to their own (small) squared norm.
  opt = keras.optimizers.SGD(keras.optimizers.schedules.CosineDecay(lr, steps, alpha=0.01))
  logits = tf.math.log(tf.constant(joint.reshape(1, -1), tf.float32))

  @tf.function
  def step():
    pair = tf.random.categorical(logits, batch)[0]
    a, b = pair // n, pair % n
    with tf.GradientTape() as tape:
      z1, z2 = tf.gather(w, a), tf.gather(w, b)
      if loss_name == 'spectral':
        loss = losses.spectral_contrastive_loss(z1, z2, mu=None)
      else:
        summary.assign(0.9 * summary + 0.1 * losses.batch_second_moment(z1, z2))
        loss = losses.minc_loss(z1, z2, tf.stop_gradient(z1), tf.stop_gradient(z2), summary,
                                lower_triangular=lower_triangular)
    opt.apply(tape.gradient(loss, [w]), [w])

  for _ in range(steps):
    step()
  # u_x = sqrt(p(x)) f(x): the rows of the weighted embedding (uniform marginal here).
  return w.numpy() / np.sqrt(n)


def _largest_principal_angle(a, b):
  qa, _ = np.linalg.qr(a)
  qb, _ = np.linalg.qr(b)
  s = np.linalg.svd(qa.T @ qb, compute_uv=False)
  return float(np.arccos(np.clip(s.min(), -1, 1)))


@pytest.mark.parametrize('loss_name,lower', [('spectral', False), ('minc', False), ('minc', True)])
def test_toy_spectral_problem_recovers_top_k_subspace(loss_name, lower):
  _, v_top, lam = _toy_problem()
  u = _train_toy(loss_name, lower)
  assert _largest_principal_angle(u, v_top) < 0.1
  # The optimum is scaled by sqrt(lambda): the singular values of U match.
  np.testing.assert_allclose(np.sort(np.linalg.svd(u, compute_uv=False))[::-1], np.sqrt(lam),
                             rtol=0.1)
  if lower:  # GHA / Sanger: feature a is the a-th eigenfunction itself, in order.
    for a in range(3):
      cos = abs(u[:, a] @ v_top[:, a]) / np.linalg.norm(u[:, a])
      assert np.arccos(min(cos, 1.0)) < 0.1, (a, cos)


# --- distributed equals single-device --------------------------------------------------------------

def _dist_vs_single(strategy, loss_fn, n=8, k=4):
  x = tf.constant(RNG.normal(size=(n, 3)), tf.float32)
  y = tf.constant(RNG.normal(size=(n, 3)), tf.float32)
  w_init = RNG.normal(size=(3, k)).astype(np.float32)

  def loss_and_grad(w, xs, ys, replicas):
    with tf.GradientTape() as tape:
      value = loss_fn(xs @ w, ys @ w)
      scaled = value / replicas
    return value, tape.gradient(scaled, w)

  w0 = tf.Variable(w_init)
  single_value, single_grad = loss_and_grad(w0, x, y, 1)
  with strategy.scope():
    w = tf.Variable(w_init)

  @tf.function
  def dist():
    def fn(xs, ys):
      return loss_and_grad(w, xs, ys, strategy.num_replicas_in_sync)
    values, grads = run_distributed(strategy, fn, x, y)
    # Keras' optimizer sums gradients over replicas; do the same.
    return strategy.experimental_local_results(values), strategy.reduce('SUM', grads, axis=None)

  values, grad = dist()
  for v in values:  # every replica holds the global loss.
    np.testing.assert_allclose(v.numpy(), single_value.numpy(), rtol=1e-5)
  np.testing.assert_allclose(grad.numpy(), single_grad.numpy(), rtol=1e-5, atol=1e-6)


_A = RNG.normal(size=(4, 4))
# A full symmetric summary: with a diagonal one tril(M) = M and the GHA branch is invisible.
SUMMARY = (_A @ _A.T / 4 + 0.1 * np.eye(4)).astype(np.float32)


@pytest.mark.parametrize('loss_fn', [
    lambda a, b: losses.spectral_contrastive_loss(a, b, mu=1.0),
    lambda a, b: losses.minc_loss(a, b, tf.stop_gradient(b), tf.stop_gradient(a), SUMMARY),
    lambda a, b: losses.minc_loss(a, b, tf.stop_gradient(b), tf.stop_gradient(a), SUMMARY, True),
    lambda a, b: losses.simclr_loss(a, b, 0.1),
    lambda a, b: losses.byol_loss(a, b, tf.stop_gradient(b) + 1.0, tf.stop_gradient(a)),
], ids=['spectral', 'minc', 'minc_lt', 'simclr', 'byol'])
def test_distributed_equals_single_device(mirrored, loss_fn):
  _dist_vs_single(mirrored, loss_fn)


def test_gha_gradient_differs_from_the_symmetric_one_on_this_summary():
  """Guards the distributed minc_lt case above: on SUMMARY the two gradients differ."""
  z = RNG.normal(size=(8, 4)).astype(np.float32)
  t = RNG.normal(size=(8, 4)).astype(np.float32)
  grads = [tf_value_and_grad(lambda a: losses.minc_loss(a, a, t, t, SUMMARY, lt), z)[1][0]
           for lt in (False, True)]
  assert np.abs(grads[0] - grads[1]).max() > 1e-2


@pytest.mark.parametrize('centered', [False, True])
def test_distributed_second_moment_is_the_global_one(mirrored, centered):
  """Each replica holds the second moment of the GLOBAL batch (both views), as NumPy gives it."""
  a = RNG.normal(size=(8, 4)).astype(np.float32) + 1.0
  b = RNG.normal(size=(8, 4)).astype(np.float32)
  both = np.concatenate([a, b]).astype(np.float64)
  expected = both.T @ both / len(both)
  if centered:
    mean = both.mean(0)
    expected -= np.outer(mean, mean)
  per_replica = run_distributed(
      mirrored, lambda x, y: losses.batch_second_moment(x, y, centered=centered), a, b)
  values = mirrored.experimental_local_results(per_replica)
  assert len(values) == 2
  for v in values:
    np.testing.assert_allclose(v.numpy(), expected, rtol=1e-5, atol=1e-6)
  half = np.concatenate([a[:4], b[:4]]).astype(np.float64)
  assert np.abs(half.T @ half / 8 - expected).max() > 0.05  # a local moment would differ
