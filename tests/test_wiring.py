"""Wiring: every setting reaches the number it changes, and each network feeds what it should.

The model's own training loss and gradient, for every method and each of its settings, equal
a reference written here in plain TensorFlow from the paper-level formulas (independent of
losses.py and methods/), computed from the model's own networks. Then: the probe's gradient
never reaches the encoder; the target's outputs come from the target network; each view gets
its own transform on the host and on the device; evaluation features are the encoder's in
inference mode. bench/mutants.py plants wiring bugs and checks these tests catch them.
"""

import numpy as np
import pytest
import tensorflow as tf

from minc_tf import augment
from minc_tf import data as data_lib
from minc_tf import evaluate
from minc_tf import methods
from minc_tf import optim
from helpers import SHAPE, batches, compile_model, tiny_model

_MINC = dict(mu=10.0, summary_decay=0.0, summary_source='target', summary_centered=False,
             lower_triangular=False, use_target=False, predictor='none')
CASES = {  # name: (method, build_model settings)
    'minc': ('minc', _MINC),
    'minc mu=None': ('minc', dict(_MINC, mu=None)),
    'minc mu=2': ('minc', dict(_MINC, mu=2.0)),
    'minc decay=0.9 (with history)': ('minc', dict(_MINC, summary_decay=0.9)),
    'minc online source': ('minc', dict(_MINC, summary_source='online', use_target=True)),
    'minc centered': ('minc', dict(_MINC, summary_centered=True)),
    'minc lower_triangular': ('minc', dict(_MINC, lower_triangular=True)),
    'minc target': ('minc', dict(_MINC, use_target=True)),
    'minc predictor': ('minc', dict(_MINC, predictor='mlp')),
    'spectral mu=1': ('spectral', dict(mu=1.0)),
    'spectral mu=10': ('spectral', dict(mu=10.0)),
    'simclr t=0.1': ('simclr', dict(temperature=0.1)),
    'simclr t=0.5': ('simclr', dict(temperature=0.5)),
    'byol': ('byol', {}),
    'linear_byol': ('linear_byol', {}),
    'simsiam': ('simsiam', {}),
}


# Settings whose wiring is checked against a reference elsewhere (the reference above covers
# the EMA per step and the batch summary): each with the test that does.
ELSEWHERE = {
    'summary_horizon': 'test_methods.py::test_the_ema_horizon_is_a_number_of_pairs',
    'summary_memory': 'test_methods.py::test_the_queue_holds_the_last_h_pairs',
    'summary_moment': 'test_methods.py::test_minc_gradient_readings_equal_their_numpy_formula',
    'precondition_power': 'test_methods.py::test_minc_gradient_readings_equal_their_numpy_formula',
    'precondition_eps': 'test_methods.py::test_minc_gradient_readings_equal_their_numpy_formula',
}


def test_every_registered_method_and_setting_has_a_wiring_case():
  assert {m for m, _ in CASES.values()} == set(methods.names())
  for name in methods.names():
    for setting, declared in methods.get(name).SETTINGS.items():
      varied = {kw.get(setting, declared.default) for m, kw in CASES.values() if m == name}
      assert len(varied) > 1 or setting in ELSEWHERE, (name, setting)


def _clip(z, mu):
  if mu is None:
    return z
  norm = tf.sqrt(tf.reduce_sum(z * z, -1, keepdims=True))
  return z * tf.minimum(1.0, np.sqrt(mu) / tf.maximum(norm, 1e-12))


def _reference(m, method, kw, x1, x2, prior):
  """(loss, loss whose gradient is the method's) from the model's networks and the formulas."""
  n = len(x1)
  x = tf.concat([x1, x2], 0)
  z = m.projector(m.encoder(x, training=True), training=True)
  q = m.predictor(z, training=True) if m.predictor is not None else z
  if m.target_encoder is not None:
    t = tf.stop_gradient(m.target_projector(m.target_encoder(x, training=True), training=True))
  else:
    t = tf.stop_gradient(z)
  z1, z2 = z[:n], z[n:]
  if method == 'spectral':
    mu = kw['mu']
    c1, c2 = _clip(z1, mu), _clip(z2, mu)
    dots = tf.matmul(c1, c2, transpose_b=True)
    off = tf.reduce_sum(tf.square(dots)) - tf.reduce_sum(tf.square(tf.linalg.diag_part(dots)))
    loss = (-2.0 * tf.reduce_mean(tf.reduce_sum(c1 * c2, -1)) + off / (n * (n - 1))) / mu
    return loss, loss
  if method == 'simclr':
    u = tf.math.l2_normalize(z, -1)
    logits = tf.matmul(u, u, transpose_b=True) / kw['temperature'] - 1e9 * tf.eye(2 * n)
    positive = tf.concat([tf.range(n, 2 * n), tf.range(n)], 0)
    loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(positive, logits))
    return loss, loss
  if method in ('byol', 'linear_byol', 'simsiam'):
    cos = lambda a, b: tf.reduce_sum(tf.math.l2_normalize(a, -1) * tf.math.l2_normalize(b, -1),
                                     -1)
    loss = tf.reduce_mean(2 - 2 * cos(q[:n], t[n:])) + tf.reduce_mean(2 - 2 * cos(q[n:], t[:n]))
    return loss, loss
  mu = kw['mu']
  qc, tc = _clip(q, mu), _clip(t, mu)
  src = tc if kw['summary_source'] == 'target' else tf.stop_gradient(_clip(z, mu))
  moment = tf.matmul(src, src, transpose_a=True) / (2 * n)
  if kw['summary_centered']:
    mean = tf.reduce_mean(src, 0)
    moment -= mean[:, None] * mean[None, :]
  d = kw['summary_decay']
  if d > 0:
    summary, steps = prior
    moment = (d * summary + (1 - d) * moment) / (1 - d ** (steps + 1))
  moment = tf.stop_gradient(moment)
  pull = tf.linalg.band_part(moment, -1, 0) if kw['lower_triangular'] else moment
  scale = 1.0 if mu is None else mu
  value = surrogate = 0.0
  for qa, tb in ((qc[:n], tc[n:]), (qc[n:], tc[:n])):
    value += tf.reduce_mean(tf.reduce_sum(qa * (qa @ moment - 2 * tb), -1))
    # d/dq of 2 q . sg(q M'^T) is 2 M' q: the GHA gradient (M' = tril(M)), M's when M' = M.
    surrogate += tf.reduce_mean(tf.reduce_sum(
        2 * qa * tf.stop_gradient(qa @ tf.transpose(pull)) - 2 * qa * tb, -1))
  return value / scale, surrogate / scale


def _perturb_target(m, seed=3):
  rng = np.random.default_rng(seed)
  for t, _ in m.target_pairs:
    t.assign(t + 0.05 * rng.normal(size=t.shape).astype(np.float32))


@pytest.mark.parametrize('case', sorted(CASES))
def test_the_models_loss_and_gradient_equal_the_formula(case):
  method, kw = CASES[case]
  m = tiny_model(method, tau_base=0.9, **kw)
  if m.target_encoder is not None:
    _perturb_target(m)  # else the target equals the online network and would hide a swap
  prior = None
  if method == 'minc':
    prior = (np.diag(np.linspace(0.5, 2.0, 8)).astype(np.float32), 3.0)
    m.method.summary.assign(prior[0])
    m.method.summary_steps.assign(prior[1])
  (x1, x2), _ = batches(count=1)[0]
  variables = m.online_variables
  assert len(variables) > 10
  with tf.GradientTape(persistent=True) as tape:
    if prior is not None:  # the reference reads the prior state, the model updates it
      ref, surrogate = _reference(m, method, dict(CASES[case][1]), x1, x2, prior)
    else:
      ref, surrogate = _reference(m, method, kw, x1, x2, prior)
    loss, _, _, _ = m.compute_ssl_loss(x1, x2, training=True)
  np.testing.assert_allclose(loss.numpy(), ref.numpy(), rtol=2e-5, atol=1e-6, err_msg=case)
  got = tape.gradient(loss, variables)
  want = tape.gradient(surrogate, variables)
  trained = [v.path for v, g in zip(variables, want) if g is not None]
  assert len(trained) > 10, trained  # the reference reaches the networks it should
  for v, g, w in zip(variables, got, want):
    if w is None:  # the probe: no part of the SSL loss
      assert g is None or not np.any(g.numpy()), v.path
      continue
    np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-4, atol=1e-6,
                               err_msg=f'{case}: {v.path}')
  if method == 'minc':  # the state moved as a training step moves it
    assert m.method.summary_steps.numpy() == prior[1] + 1
    assert not np.allclose(m.method.summary.numpy(), prior[0])


def test_a_preset_sets_the_target_schedule():
  for preset in (100, 300, 1000):
    m = tiny_model('byol', byol_preset=preset)
    assert m.tau_base == optim.preset(preset)[2]
  assert tiny_model('byol', tau_base=0.9).tau_base == 0.9


@pytest.mark.parametrize('method', ['minc', 'byol'])
def test_the_probe_never_trains_the_encoder(method):
  """Two trainings from one initialisation on the same views, with different labels: the
  encoder, projector (and target) come out identical; the probes differ."""
  data = batches(count=1)
  out = []
  for labels in (data[0][1], (data[0][1] + 1) % 3):
    m = tiny_model(method, tau_base=0.9)
    compile_model(m, lr=0.1)
    ds = tf.data.Dataset.from_tensors((data[0][0], labels))
    m.fit(ds, epochs=1, verbose=0)
    out.append(m)
  a, b = out
  nets = [n for n in ('encoder', 'projector', 'predictor', 'target_encoder')
          if getattr(a, n) is not None]
  for name in nets:
    for va, vb in zip(getattr(a, name).weights, getattr(b, name).weights):
      np.testing.assert_array_equal(va.numpy(), vb.numpy(), err_msg=f'{name}: {va.path}')
  assert not np.allclose(a.probe.weights[0].numpy(), b.probe.weights[0].numpy())


@pytest.mark.parametrize('method', ['byol', 'minc'])
def test_the_target_outputs_come_from_the_target_network(method):
  kw = {'use_target': True} if method == 'minc' else {}
  m = tiny_model(method, tau_base=0.9, **kw)
  (x1, x2), _ = batches(count=1)[0]
  before = m.compute_ssl_loss(x1, x2, training=True, update_state=False)[0].numpy()
  _perturb_target(m)
  after = m.compute_ssl_loss(x1, x2, training=True, update_state=False)[0].numpy()
  assert abs(after - before) > 1e-4 * max(1.0, abs(before)), (before, after)


def _views_data():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (16, 12, 12, 3)).astype(np.uint8)
  labels = rng.integers(0, 2, 16).astype(np.int64)
  return data_lib.ImageData('wiring', 12, 3, 2, 16, augment.IMAGENET_MEAN, augment.IMAGENET_STD,
                            arrays={'train': (images, labels), 'validation': (images, labels)})


@pytest.mark.parametrize('solarized', [0, 1])
def test_each_view_gets_its_own_transform_on_the_host_and_on_the_device(solarized):
  """Every random step off but solarize, which is on for one view only: that view, and only
  it, is the solarized crop, on both paths."""
  probs = [0.0, 0.0]
  probs[solarized] = 1.0
  views = augment.view_transforms(12, flip_prob=0.0, jitter_prob=0.0, grayscale_prob=0.0,
                                  blur_prob=(0.0, 0.0), solarize_prob=tuple(probs))
  d = _views_data()
  (h1, h2), _ = next(iter(d.pretrain_dataset(8, seed=0, views=views)))
  (c1, c2), _ = next(iter(d.pretrain_dataset(8, seed=0, views=views, crops_only=True)))
  dev = augment.batch_views(views[1], views[2], d.mean, d.std)(c1, c2, tf.constant([0, 0],
                                                                                   tf.int64))
  for k, (host, crop, device) in enumerate(zip((h1, h2), (c1, c2), dev)):
    x = tf.cast(crop, tf.float32) / 255.0
    want = augment.normalize(tf.where(x < 0.5, x, 1.0 - x) if k == solarized else x, d.mean,
                             d.std).numpy()
    other = augment.normalize(tf.where(x < 0.5, x, 1.0 - x) if k != solarized else x, d.mean,
                              d.std).numpy()
    tol = 1.0 / 255 / min(d.std) + 1e-5  # the crops were rounded to uint8
    for name, got in (('host', host.numpy()), ('device', device.numpy())):
      assert np.abs(got - want).max() <= tol, (name, k)
      assert np.abs(got - other).max() > 10 * tol, (name, k)


def test_evaluation_features_are_the_encoders_in_inference_mode():
  """With BatchNorm statistics moved by training, the features evaluation extracts are the
  encoder's inference-mode outputs, not its training-mode ones."""
  m = tiny_model('spectral', mu=1.0)
  compile_model(m, lr=0.1)
  m.fit(tf.data.Dataset.from_tensors(batches(count=1)[0]).repeat(3), epochs=1, verbose=0)
  assert any('moving_mean' in v.path for v in m.encoder.weights)
  images = np.random.default_rng(5).normal(size=(12,) + SHAPE).astype(np.float32)
  ds = tf.data.Dataset.from_tensor_slices((images, np.zeros(12, np.int64))).batch(6)
  feats, _ = evaluate.extract_features(m.encoder, ds)
  inference = m.encoder(images, training=False).numpy()
  training = m.encoder(images, training=True).numpy()
  np.testing.assert_allclose(feats, inference, rtol=1e-5, atol=1e-6)
  assert np.abs(inference - training).max() > 1e-2


@pytest.mark.parametrize('method', ['minc', 'spectral', 'simclr'])
def test_the_logged_terms_add_up_to_the_logged_loss(method):
  m = tiny_model(method, tau_base=0.9)
  compile_model(m, lr=0.05)
  history = m.fit(tf.data.Dataset.from_tensors(batches(count=1)[0]).repeat(2), epochs=1,
                  verbose=0).history
  total = history['loss_attract'][-1] + history['loss_repel'][-1]
  assert abs(history['loss_attract'][-1]) > 1e-3
  np.testing.assert_allclose(total, history['loss'][-1], rtol=1e-5, atol=1e-6)
