"""SSLModel: XLA compilation of the train step, distributed == single-device training, the
target EMA, the summary statistic, and stability of MINC on the quickstart network."""

import math

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

from minc_tf import methods
from minc_tf import model as model_lib
from minc_tf import optim
from minc_tf.errors import UserError
from helpers import SHAPE, batches, compile_model, dataset, tiny_model

@pytest.mark.parametrize('method', methods.names() + ('minc_with_target',))
def test_train_step_compiles_with_xla(method):
  kw = {'use_target': True, 'tau_base': 0.9} if method == 'minc_with_target' else {
      'tau_base': 0.9}
  m = tiny_model(method.replace('_with_target', ''), **kw)
  compile_model(m, lr=0.05, jit_compile=True)
  data = batches()
  before = [v.numpy() for v in m.online_variables]
  m.fit(dataset(data[:1]), epochs=1, verbose=0)
  target_before = _snapshot(m.target_pairs)
  history = m.fit(dataset(data[1:]), epochs=1, verbose=0)
  assert np.isfinite(history.history['loss'][-1])
  assert m.optimizer.iterations.numpy() == 2
  # The compiled step trained: the online variables moved, and the target, where there is
  # one, is the EMA of the online network after each step.
  changed = [not np.array_equal(b, v.numpy()) for b, v in zip(before, m.online_variables)]
  assert len(changed) > 10 and sum(changed) >= 0.9 * len(changed), changed
  if m.target_encoder is not None:
    _check_target_ema(m, target_before, [o.numpy() for _, o in m.target_pairs],
                      model_lib.target_tau(2, 10, 0.9).numpy())
  if m.method.name == 'minc':
    assert m.method.summary_steps.numpy() == 2 and np.abs(m.method.summary.numpy()).max() > 0


@pytest.mark.parametrize('method', methods.names())
def test_mirrored_training_equals_single_device(mirrored, method):
  # lr 0.02: at 0.1 two BYOL steps of this 8x8 net amplify a 1e-7 relative change of one input
  # into 2e-4 in a BN beta (measured), so reduction-order round-off alone would fail the test.
  data = batches(n=16, count=2)
  single = tiny_model(method, sync_bn=False)
  init = [w.numpy() for w in single.online_variables]
  compile_model(single, lr=0.02)
  single.fit(dataset(data), epochs=1, verbose=0, shuffle=False)
  with mirrored.scope():
    dist = tiny_model(method, sync_bn=True)
    compile_model(dist, lr=0.02)
  dist.fit(mirrored.experimental_distribute_dataset(dataset(data)), epochs=1, verbose=0,
           shuffle=False)
  # The two steps moved the weights far beyond the tolerance below.
  assert max(np.abs(w.numpy() - i).max() for w, i in zip(single.online_variables, init)) > 1e-2
  assert len(single.weights) == len(dist.weights) > 20
  for a, b in zip(single.weights, dist.weights):
    replicas = mirrored.experimental_local_results(b.value)
    for r in replicas:  # every replica holds the same value ...
      np.testing.assert_allclose(r.numpy(), replicas[0].numpy(), rtol=1e-6, atol=1e-7)
    # ... and it is the single-device one (weights, target, summary, BN statistics).
    np.testing.assert_allclose(replicas[0].numpy(), a.numpy(), rtol=1e-4, atol=1e-5,
                               err_msg=a.path)


def _np_minc(q, t, m):
  """MINC's value in NumPy (losses.minc_loss's formula), for the model's own outputs."""
  n = len(q) // 2
  q1, q2, t1, t2 = q[:n], q[n:], t[:n], t[n:]
  rows = lambda z, tt: np.sum(z * (z @ m - 2 * tt), axis=1)
  return np.mean(rows(q1, t2) + rows(q2, t1))


def test_summary_is_bias_corrected_ema_of_target_second_moment():
  m = tiny_model('minc', summary_decay=0.9, use_target=True, mu=None)
  compile_model(m, lr=0.0)  # weights stay put: the target outputs are reproducible.
  data = batches(n=16, count=2)

  def target_out(x1, x2):
    # Both views go through the network as one batch (shared BN batch statistics).
    return m.target_projector(m.target_encoder(np.concatenate([x1, x2]), training=True),
                              training=True).numpy().astype(np.float64)

  (x1, x2), _ = data[0]
  moment = [target_out(*d[0]).T @ target_out(*d[0]) / 32 for d in data]
  # Step 1 through the model itself: with the bias correction the loss uses M = C_1 exactly
  # (0.1 C_1 / (1 - 0.9)); without it, 0.1 C_1.
  loss, _, _, _ = m.compute_ssl_loss(x1, x2, training=True)
  t = target_out(x1, x2)
  np.testing.assert_allclose(loss.numpy(), _np_minc(t, t, moment[0]), rtol=1e-4)
  assert abs(_np_minc(t, t, moment[0]) - _np_minc(t, t, 0.1 * moment[0])) > 1e-2
  np.testing.assert_allclose(m.method.summary.numpy(), 0.1 * moment[0], rtol=1e-4, atol=1e-6)

  m2 = tiny_model('minc', summary_decay=0.9, use_target=True, mu=None)
  compile_model(m2, lr=0.0)
  m2.fit(dataset(data), epochs=1, verbose=0)
  raw = 0.9 * 0.1 * moment[0] + 0.1 * moment[1]
  np.testing.assert_allclose(m2.method.summary.numpy(), raw, rtol=1e-4, atol=1e-6)
  assert m2.method.summary_steps.numpy() == 2
  # update=False reads the corrected matrix raw / (1 - 0.9^2) and leaves the state alone.
  loss, _, _, _ = m2.compute_ssl_loss(x1, x2, training=True, update_state=False)
  np.testing.assert_allclose(loss.numpy(), _np_minc(t, t, raw / (1 - 0.81)), rtol=1e-4)
  np.testing.assert_allclose(m2.method.summary.numpy(), raw, rtol=1e-4, atol=1e-6)
  assert m2.method.summary_steps.numpy() == 2
  # Before any update, update=False uses the batch's own moment.
  m3 = tiny_model('minc', summary_decay=0.9, use_target=True, mu=None)
  loss, _, _, _ = m3.compute_ssl_loss(x1, x2, training=True, update_state=False)
  np.testing.assert_allclose(loss.numpy(), _np_minc(t, t, moment[0]), rtol=1e-4)


def _snapshot(pairs):
  return [(t.numpy(), o.numpy()) for t, o in pairs]


def _check_target_ema(m, before, after_online, tau, single=True):
  """Every target variable equals tau * before + (1 - tau) * online after the step."""
  assert len(m.target_pairs) == len(m.encoder.trainable_weights +
                                    m.projector.trainable_weights) > 10
  moved = 0
  for (t, o), (t0, _), o1 in zip(m.target_pairs, before, after_online):
    value = t.numpy() if single else replicas(t)[0]
    np.testing.assert_allclose(value, tau * t0 + (1 - tau) * o1, rtol=1e-5, atol=1e-6,
                               err_msg=t.path)
    moved += not np.array_equal(value, t0)
  # The step moved the online network away from the target, so the target moved (a frozen
  # target would pass the formula only where online == target).
  assert moved >= len(m.target_pairs) // 2, moved


@pytest.mark.parametrize('method,kw', [('byol', {}), ('linear_byol', {}),
                                       ('minc', {'use_target': True})])
def test_target_is_the_ema_of_online_after_each_step(method, kw):
  # Under XLA: test_train_step_compiles_with_xla checks the same formula.
  m = tiny_model(method, tau_base=0.9, **kw)
  compile_model(m, lr=0.05)
  data = batches(count=3)
  # Step 1 from the identical init (online == target), then steps 2 and 3 from a target that
  # already lags: each step's update is checked against the state before it.
  m.fit(dataset(data[:1]), epochs=1, verbose=0)
  for step in (2, 3):
    before = _snapshot(m.target_pairs)
    m.fit(dataset(data[step - 1:step]), epochs=1, verbose=0)
    tau = model_lib.target_tau(step, 10, 0.9).numpy()
    _check_target_ema(m, before, [o.numpy() for _, o in m.target_pairs], tau)
  np.testing.assert_allclose(model_lib.target_tau(1, 10, 0.9).numpy(),
                             1 - 0.1 * (math.cos(math.pi / 10) + 1) / 2, rtol=1e-6)


def replicas(variable):
  """The per-replica copies of a Keras variable created under MirroredStrategy."""
  return [r.numpy() for r in variable.value.values]


def test_target_ema_under_mirrored_strategy(mirrored):
  with mirrored.scope():
    m = tiny_model('byol', tau_base=0.9, sync_bn=True)
    compile_model(m, lr=0.05)
  data = batches(count=2)
  m.fit(mirrored.experimental_distribute_dataset(dataset(data[:1])), epochs=1, verbose=0)
  before = [(replicas(t)[0], None) for t, _ in m.target_pairs]
  m.fit(mirrored.experimental_distribute_dataset(dataset(data[1:])), epochs=1, verbose=0)
  tau = model_lib.target_tau(2, 10, 0.9).numpy()
  _check_target_ema(m, before, [replicas(o)[0] for _, o in m.target_pairs], tau, single=False)
  for t, _ in m.target_pairs:  # both replicas hold the same target
    copies = replicas(t)
    assert len(copies) == 2
    np.testing.assert_array_equal(copies[0], copies[1])


def test_target_is_excluded_from_the_optimizer_and_normalises_with_batch_statistics():
  m = tiny_model('byol')
  compile_model(m)
  target = {id(v) for v in m.target_encoder.weights + m.target_projector.weights}
  assert target and not target & {id(v) for v in m.trainable_variables}
  # The same variables in the same order: checkpoints store optimizer slots by position.
  assert [id(v) for v in m.trainable_variables] == [id(v) for v in m.online_variables]
  m.fit(dataset(batches(count=1)), epochs=1, verbose=0)
  # No slots for the target: exactly the slots an optimizer of the online variables has.
  alone = keras.optimizers.SGD(0.1, momentum=0.9)
  alone.build(m.online_variables)
  assert [tuple(v.shape) for v in m.optimizer.variables] == [
      tuple(v.shape) for v in alone.variables]
  assert len(m.optimizer.variables) > len(m.online_variables)
  # BYOL's target normalises with the batch's statistics: its output on a batch equals the
  # online network's at identical weights in training mode, not its inference-mode output.
  m2 = tiny_model('byol')
  x = np.concatenate(batches(count=1)[0][0])
  t = m2.target_projector(m2.target_encoder(x, training=True), training=True).numpy()
  o = m2.projector(m2.encoder(x, training=True), training=True).numpy()
  inference = m2.projector(m2.encoder(x, training=False), training=False).numpy()
  np.testing.assert_allclose(t, o, rtol=1e-5, atol=1e-6)
  assert np.abs(t - inference).max() > 1e-2


def test_unknown_method_is_rejected():
  with pytest.raises(UserError, match="build_model.method = 'mnic' is not allowed"):
    model_lib.build_model(SHAPE, method='mnic')


def test_minc_stays_finite_on_quickstart_network_for_200_steps():
  gin.parse_config_file('gin/quickstart.gin')
  keras.utils.set_random_seed(0)
  m = model_lib.build_model((28, 28, 1), num_classes=10, total_steps=200)
  m.compile(optimizer=optim.build_optimizer(32, 200, 1))
  rng = np.random.default_rng(0)
  base = rng.random((32, 28, 28, 1)).astype(np.float32)
  data = [((base + 0.1 * rng.normal(size=base.shape).astype(np.float32),
            base + 0.1 * rng.normal(size=base.shape).astype(np.float32)),
           rng.integers(0, 10, 32)) for _ in range(4)]
  ds = dataset(data).repeat()
  history = m.fit(ds, steps_per_epoch=200, epochs=1, verbose=0)
  assert np.isfinite(history.history['loss'][-1])
  assert all(np.isfinite(w.numpy()).all() for w in m.weights)


def test_mixed_bfloat16_step_is_close_to_float32():
  data = batches(n=16, count=1)
  losses_by_policy = {}
  for policy in ('float32', 'mixed_bfloat16'):
    keras.mixed_precision.set_global_policy(policy)
    try:
      m = tiny_model('minc', use_target=True)
      compile_model(m, lr=0.0)
      losses_by_policy[policy] = m.fit(dataset(data), epochs=1, verbose=0).history['loss'][0]
      assert m.method.summary.dtype == 'float32'
      assert all(w.dtype == 'float32' for w in m.target_encoder.weights)
    finally:
      keras.mixed_precision.set_global_policy('float32')
  assert np.isfinite(losses_by_policy['mixed_bfloat16'])
  np.testing.assert_allclose(losses_by_policy['mixed_bfloat16'], losses_by_policy['float32'],
                             rtol=0.05, atol=0.02)


def _one_step_delta(policy, method='minc'):
  keras.mixed_precision.set_global_policy(policy)
  try:
    m = tiny_model(method)
    optimizer = keras.optimizers.SGD(0.1)
    if policy == 'mixed_float16':
      # What compile() would wrap it in, with a scale at which this first step's fp16
      # gradients stay finite (at the default 2^15 the step is skipped and the scale halved).
      optimizer = keras.optimizers.LossScaleOptimizer(optimizer, initial_scale=2.0 ** 8)
    m.compile(optimizer=optimizer)
    before = [v.numpy().astype(np.float64) for v in m.online_variables]
    m.fit(dataset(batches(n=16, count=1)), epochs=1, verbose=0)
    return m, [v.numpy().astype(np.float64) - b for v, b in zip(m.online_variables, before)]
  finally:
    keras.mixed_precision.set_global_policy('float32')


def test_compile_wraps_the_optimizer_under_mixed_float16():
  keras.mixed_precision.set_global_policy('mixed_float16')
  try:
    m = tiny_model('minc')
    compile_model(m)
  finally:
    keras.mixed_precision.set_global_policy('float32')
  assert isinstance(m.optimizer, keras.optimizers.LossScaleOptimizer)


def test_mixed_float16_step_moves_the_weights_like_float32():
  _, ref = _one_step_delta('float32')
  m, half = _one_step_delta('mixed_float16')
  # train_step must scale the loss, or every update comes out divided by the loss scale.
  assert isinstance(m.optimizer, keras.optimizers.LossScaleOptimizer)
  assert m.optimizer.iterations.numpy() == 1
  assert len(ref) == len(half) > 10
  ref_all, half_all = np.concatenate([d.ravel() for d in ref]), np.concatenate(
      [d.ravel() for d in half])
  assert np.linalg.norm(ref_all) > 1e-3
  rel = np.linalg.norm(half_all - ref_all) / np.linalg.norm(ref_all)
  assert rel < 0.05, rel


def test_steps_per_execution_runs_the_host_loop():
  m = tiny_model('minc')
  m.compile(optimizer=keras.optimizers.SGD(0.1), steps_per_execution=2)
  history = m.fit(dataset(batches(count=4)), epochs=1, verbose=0)
  assert m.optimizer.iterations.numpy() == 4 and m.method.summary_steps.numpy() == 4
  assert np.isfinite(history.history['loss'][-1])


def test_views_made_inside_the_train_step_compile_with_xla():
  from minc_tf import augment
  m = tiny_model('minc')
  _, v1, v2 = augment.view_transforms(SHAPE[0], blur_prob=(1.0, 0.1))
  m.device_views = augment.batch_views(v1, v2, (0.5,), (0.25,))
  compile_model(m, jit_compile=True)
  crops = [((np.clip(x1, 0, 1), np.clip(x2, 0, 1)), y) for (x1, x2), y in batches()]
  before = [v.numpy() for v in m.online_variables]
  history = m.fit(dataset(crops), epochs=1, verbose=0)
  assert np.isfinite(history.history['loss'][-1]) and m.optimizer.iterations.numpy() == 2
  assert sum(not np.array_equal(b, v.numpy()) for b, v in zip(before, m.online_variables)) > 10
  # The views are made: view 1 is always blurred, so it is never the normalised crop, and
  # another (step, replica) seed gives other views.
  (x1, x2), _ = crops[0]
  a1, a2 = m.device_views(tf.constant(x1), tf.constant(x2), tf.constant([0, 0], tf.int64))
  b1, _ = m.device_views(tf.constant(x1), tf.constant(x2), tf.constant([1, 0], tf.int64))
  plain = (x1 - 0.5) / 0.25
  assert np.abs(a1.numpy() - plain).max(axis=(1, 2, 3)).min() > 1e-3
  assert np.abs(a1.numpy() - b1.numpy()).max() > 1e-2


def test_method_defaults_for_target_and_predictor():
  assert tiny_model('minc').target_encoder is None  # the ablation's best MINC variant
  assert tiny_model('minc').predictor is None
  assert tiny_model('byol').target_encoder is not None and tiny_model('byol').predictor
  assert tiny_model('simsiam').target_encoder is None and tiny_model('simsiam').predictor
  linear = tiny_model('linear_byol').predictor
  assert len([l for l in linear.layers if isinstance(l, keras.layers.Dense)]) == 1
