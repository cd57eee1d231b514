"""SSLModel: XLA compilation of the train step, distributed == single-device training, the
target EMA, the summary statistic, and stability of MINC on the quickstart network."""

import math

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

from minc_tf import losses
from minc_tf import model as model_lib
from minc_tf import optim
from minc_tf import train  # noqa: F401  (registers the configurables quickstart.gin binds)
from minc_tf.errors import UserError

SHAPE = (8, 8, 1)
TINY = {'build_encoder.depth': 18, 'build_encoder.small_images': True,
        'build_encoder.stage_blocks': (1,), 'build_encoder.base_width': 4}


def tiny_model(method='minc', sync_bn=False, seed=0, **kw):
  for k, v in TINY.items():
    gin.bind_parameter(k, v)
  keras.utils.set_random_seed(seed)
  m = model_lib.build_model(SHAPE, method=method, num_classes=3, projector_hidden=(16,),
                            projector_dim=8, predictor_hidden=(16,), total_steps=10,
                            sync_bn=sync_bn, **kw)
  return m


def batches(n=16, count=2, seed=1):
  rng = np.random.default_rng(seed)
  return [((rng.normal(size=(n,) + SHAPE).astype(np.float32),
            rng.normal(size=(n,) + SHAPE).astype(np.float32)),
           rng.integers(0, 3, size=n)) for _ in range(count)]


def dataset(data):
  x1 = np.concatenate([b[0][0] for b in data])
  x2 = np.concatenate([b[0][1] for b in data])
  y = np.concatenate([b[1] for b in data])
  return tf.data.Dataset.from_tensor_slices(((x1, x2), y)).batch(len(data[0][1]))


def compile_model(m, lr=0.1, jit_compile=False):
  m.compile(optimizer=keras.optimizers.SGD(lr, momentum=0.9), jit_compile=jit_compile)


@pytest.mark.parametrize('method', model_lib.METHODS)
def test_train_step_compiles_with_xla(method):
  m = tiny_model(method)
  compile_model(m, jit_compile=True)
  history = m.fit(dataset(batches()), epochs=1, verbose=0)
  assert np.isfinite(history.history['loss'][-1])
  assert m.optimizer.iterations.numpy() == 2


@pytest.mark.parametrize('method', ['minc', 'spectral', 'byol'])
def test_mirrored_training_equals_single_device(mirrored, method):
  data = batches(n=16, count=2)
  single = tiny_model(method, sync_bn=False)
  compile_model(single)
  single.fit(dataset(data), epochs=1, verbose=0, shuffle=False)
  with mirrored.scope():
    dist = tiny_model(method, sync_bn=True)
    compile_model(dist)
  dist.fit(mirrored.experimental_distribute_dataset(dataset(data)), epochs=1, verbose=0,
           shuffle=False)
  for a, b in zip(single.weights, dist.weights):
    replicas = mirrored.experimental_local_results(b.value)
    for r in replicas:  # every replica holds the same value ...
      np.testing.assert_allclose(r.numpy(), replicas[0].numpy(), rtol=1e-6, atol=1e-7)
    # ... and it is the single-device one (weights, target, summary, BN statistics).
    np.testing.assert_allclose(replicas[0].numpy(), a.numpy(), rtol=1e-4, atol=1e-5,
                               err_msg=a.path)


def test_summary_is_bias_corrected_ema_of_target_second_moment():
  m = tiny_model('minc', summary_decay=0.9, use_target=True)
  compile_model(m, lr=0.0)  # weights stay put: the target outputs are reproducible.
  data = batches(n=16, count=2)
  expected = np.zeros((8, 8))
  for (x1, x2), _ in data:
    # Both views go through the network as one batch (shared BN batch statistics).
    both = losses.radial_clip(m.target_projector(
        m.target_encoder(np.concatenate([x1, x2]), training=True), training=True), 1.0).numpy()
    expected = 0.9 * expected + 0.1 * both.T @ both / len(both)
  m.fit(dataset(data), epochs=1, verbose=0)
  np.testing.assert_allclose(m.summary.numpy(), expected, rtol=1e-4, atol=1e-6)
  assert m.summary_steps.numpy() == 2


def test_target_follows_ema_schedule():
  m = tiny_model('byol', tau_base=0.9)
  compile_model(m, lr=0.05)
  target_before = [w.numpy() for w in m.target_encoder.trainable_weights]
  m.fit(dataset(batches(count=1)), epochs=1, verbose=0)
  tau = model_lib.target_tau(1, 10, 0.9).numpy()
  np.testing.assert_allclose(tau, 1 - 0.1 * (math.cos(math.pi / 10) + 1) / 2, rtol=1e-6)
  for before, t, o in zip(target_before, m.target_encoder.trainable_weights,
                          m.encoder.trainable_weights):
    np.testing.assert_allclose(t.numpy(), tau * before + (1 - tau) * o.numpy(), rtol=1e-5,
                               atol=1e-7)
  assert not any(w is v for w in m.target_encoder.weights for v in m.trainable_weights)


def test_unknown_method_is_rejected():
  with pytest.raises(UserError, match='unknown method'):
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
      losses_by_policy[policy] = m.fit(dataset(data), epochs=1, verbose=0).history['ssl_loss'][0]
      assert m.summary.dtype == 'float32'
      assert all(w.dtype == 'float32' for w in m.target_encoder.weights)
    finally:
      keras.mixed_precision.set_global_policy('float32')
  assert np.isfinite(losses_by_policy['mixed_bfloat16'])
  np.testing.assert_allclose(losses_by_policy['mixed_bfloat16'], losses_by_policy['float32'],
                             rtol=0.05, atol=0.02)


def test_steps_per_execution_runs_the_host_loop():
  m = tiny_model('minc')
  m.compile(optimizer=keras.optimizers.SGD(0.1), steps_per_execution=2)
  history = m.fit(dataset(batches(count=4)), epochs=1, verbose=0)
  assert m.optimizer.iterations.numpy() == 4 and m.summary_steps.numpy() == 4
  assert np.isfinite(history.history['loss'][-1])


def test_views_made_inside_the_train_step_compile_with_xla():
  from minc_tf import augment
  m = tiny_model('minc')
  _, v1, v2 = augment.view_transforms(SHAPE[0], blur_prob=(1.0, 0.1))
  m.device_views = augment.batch_views(v1, v2, (0.5,), (0.25,))
  compile_model(m, jit_compile=True)
  crops = [((np.clip(x1, 0, 1), np.clip(x2, 0, 1)), y) for (x1, x2), y in batches()]
  history = m.fit(dataset(crops), epochs=1, verbose=0)
  assert np.isfinite(history.history['loss'][-1]) and m.optimizer.iterations.numpy() == 2


def test_method_defaults_for_target_and_predictor():
  assert tiny_model('minc').target_encoder is None  # the ablation's best MINC variant
  assert tiny_model('minc').predictor is None
  assert tiny_model('byol').target_encoder is not None and tiny_model('byol').predictor
  assert tiny_model('simsiam').target_encoder is None and tiny_model('simsiam').predictor
  linear = tiny_model('linear_byol').predictor
  assert len([l for l in linear.layers if isinstance(l, keras.layers.Dense)]) == 1
