"""methods/: the registry, the contract every method keeps, and what a new method costs.

Every test here iterates over the registry, so a method added there is checked without a line
of test code; test_model.py's XLA and mirrored tests do the same.
"""

import io
import contextlib

import gin
import numpy as np
import pytest
import tensorflow as tf

from minc_tf import config
from minc_tf import losses
from minc_tf import methods
from minc_tf import model as model_lib
from minc_tf.errors import UserError
from minc_tf.methods import base
from helpers import batches, compile_model, dataset, tiny_model

NAMES = methods.names()


def test_the_registry_holds_the_six_methods():
  assert NAMES == ('minc', 'spectral', 'simclr', 'byol', 'linear_byol', 'simsiam')
  assert sorted(methods.settings()) == [
      'lower_triangular', 'mu', 'precondition_eps', 'precondition_power', 'summary_centered',
      'summary_decay', 'summary_horizon', 'summary_memory', 'summary_moment', 'summary_source',
      'temperature']


def test_every_setting_has_a_valid_default_a_check_and_a_doc():
  declared = methods.settings()
  assert declared
  for name, setting in declared.items():
    predicate, description = setting.check
    assert predicate(setting.default), name
    assert description and len(setting.doc) > 10, name


@pytest.mark.parametrize('name', sorted(methods.settings()))
def test_gin_takes_each_setting_as_a_build_model_binding(name):
  value = methods.settings()[name].default
  config.parse_gin([], [f'build_model.{name} = {value!r}'])
  assert gin.query_parameter(f'build_model.{name}') == value


def test_gin_rejects_a_misspelt_setting():
  with pytest.raises(UserError, match='summary_decay'):
    config.parse_gin([], ['build_model.sumary_decay = 0.5'])


def test_a_setting_out_of_its_range_is_refused_for_every_method():
  with pytest.raises(UserError, match=r'build_model.temperature = -1 is not allowed'):
    model_lib.build_model((8, 8, 1), method='byol', temperature=-1)


@pytest.mark.parametrize('name', NAMES)
def test_every_method_keeps_the_contract(name):
  cls = methods.get(name)
  m = tiny_model(name, tau_base=0.9)
  assert isinstance(m.method, base.Method) and m.method.name == name
  assert (m.target_encoder is not None) == cls.TARGET
  assert (m.predictor is not None) == (cls.PREDICTOR != 'none')
  for setting in cls.SETTINGS:  # every setting it declares reached it
    assert getattr(m.method, setting) == methods.settings()[setting].default
  (x1, x2), _ = batches(count=1)[0]
  loss, h1, z1, terms = m.compute_ssl_loss(x1, x2)
  assert np.isfinite(loss.numpy()) and loss.shape == ()
  assert h1.shape[0] == z1.shape[0] == len(x1)
  assert sorted(terms) == sorted(cls.TERMS)
  if terms:  # the terms add up to the loss
    np.testing.assert_allclose(sum(v.numpy() for v in terms.values()), loss.numpy(),
                               rtol=1e-5, atol=1e-6)
  # Only MINC has state of its own; it is the method's, not the model's.
  assert bool(m.method.weights) == (name == 'minc')
  # keras.Model.summary() is not shadowed (the summary used to be a model attribute).
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    m.summary()
  assert 'encoder' in out.getvalue()


def test_a_non_minc_checkpoint_carries_no_summary(tmp_path):
  m = tiny_model('spectral')
  compile_model(m)
  m.optimizer.build(m.online_variables)
  path = tf.train.Checkpoint(model=m).save(str(tmp_path / 'ckpt'))
  keys = [k for k, _ in tf.train.list_variables(path)]
  assert len(keys) > 20 and not [k for k in keys if 'summary' in k]
  m2 = tiny_model('minc')
  compile_model(m2)
  m2.optimizer.build(m2.online_variables)
  path = tf.train.Checkpoint(model=m2).save(str(tmp_path / 'minc'))
  assert 'model/method/summary/.ATTRIBUTES/VARIABLE_VALUE' in dict(tf.train.list_variables(path))


class _Alignment(base.Method):
  """A test double: the whole file a new method needs (plus one registry line)."""

  NAME = 'alignment_only'
  TARGET = True
  TERMS = ('attract',)
  SETTINGS = {'mu': base.MU}

  def loss(self, z, q, t, update_state=True):
    q1, q2 = base.split(q)
    t1, t2 = base.split(t)
    attract = -2.0 * losses.global_means(tf.reduce_sum(q1 * t2, -1) + tf.reduce_sum(q2 * t1, -1))
    return attract / self.mu, {'attract': attract / self.mu}


@pytest.fixture
def registered_double():
  methods.register(_Alignment)
  yield _Alignment
  del methods.REGISTRY[_Alignment.NAME]


def test_a_new_method_is_one_class_and_one_registry_line(registered_double):
  """The double trains under XLA with its own target and shared setting."""
  m = tiny_model('alignment_only', mu=2.0, tau_base=0.9)
  assert m.method.name == 'alignment_only' and m.method.mu == 2.0
  assert m.target_encoder is not None
  compile_model(m, lr=0.05, jit_compile=True)
  history = m.fit(dataset(batches()), epochs=1, verbose=0)
  assert np.isfinite(history.history['loss'][-1])
  assert sorted(history.history) == ['feature_std', 'loss', 'loss_attract', 'probe_loss',
                                     'probe_train_acc']


def test_registering_a_setting_under_a_taken_name_is_refused():
  class Clash(base.Method):
    NAME = 'clash'
    SETTINGS = {'mu': base.Setting(2.0, base.MU.check, 'another mu')}
  with pytest.raises(ValueError, match="declares its own 'mu'"):
    methods.register(Clash)
  assert 'clash' not in methods.REGISTRY


# --- MINC's summary options (issue 25: memory in pairs, the queue, the other readings) --------

def _minc_outputs(seed=0, n=6, k=4):
  rng = np.random.default_rng(seed)
  z = rng.normal(size=(2 * n, k)).astype(np.float32)
  t = (z + 0.3 * rng.normal(size=z.shape)).astype(np.float32)
  return z, t


@pytest.mark.parametrize('power', [-1, 1])
@pytest.mark.parametrize('moment_kind', ['second', 'cross'])
@pytest.mark.parametrize('tril', [False, True])
def test_minc_gradient_readings_equal_their_numpy_formula(power, moment_kind, tril):
  """(M + eps I)^p (M' z - t) with M the second moment or the symmetrised cross-view moment K
  (with tril, Sanger's rule with K as normaliser), against NumPy."""
  from minc_tf.methods import minc as minc_lib
  z, t = _minc_outputs()
  n, k = len(z) // 2, z.shape[1]
  m = minc_lib.Minc(k, False, mu=None, summary_decay=0.0, summary_moment=moment_kind,
                    lower_triangular=tril, precondition_power=power, precondition_eps=0.1)
  zv = tf.Variable(z)
  with tf.GradientTape() as tape:
    loss, _ = m.loss(zv, zv, tf.constant(t))
  grad = tape.gradient(loss, zv).numpy()
  t1, t2 = t[:n].astype(np.float64), t[n:].astype(np.float64)
  if moment_kind == 'second':
    mm = np.concatenate([t1, t2]).T @ np.concatenate([t1, t2]) / (2 * n)
  else:
    c = t1.T @ t2 / n
    mm = (c + c.T) / 2
  vals, vecs = np.linalg.eigh(mm)
  eps = 0.1 * np.trace(mm) / k
  p = vecs @ np.diag((np.maximum(vals, 0) + eps) ** power) @ vecs.T
  pull = np.tril(mm) if tril else mm
  z64 = z.astype(np.float64)
  other = np.concatenate([t2, t1])  # each view's positive is the other view's target
  want = (2.0 / n) * ((z64 @ pull.T) - other) @ p
  np.testing.assert_allclose(grad, want, rtol=2e-4, atol=1e-5)
  # The value logged is MINC's own objective with M (not a surrogate of the preconditioned step).
  value = sum(np.mean(np.sum(za * (za @ mm - 2 * tb), -1))
              for za, tb in ((z64[:n], t2), (z64[n:], t1)))
  np.testing.assert_allclose(loss.numpy(), value, rtol=1e-4)


OTHER_VALUES = {'mu': 3.0, 'temperature': 0.7, 'summary_decay': 0.5, 'summary_source': 'online',
                'summary_centered': True, 'lower_triangular': True, 'summary_memory': 'queue',
                'summary_horizon': 64, 'summary_moment': 'cross', 'precondition_power': -1,
                'precondition_eps': 0.2}


@pytest.mark.parametrize('name', sorted(methods.settings()))
def test_a_bound_setting_reaches_its_method(name):
  assert sorted(OTHER_VALUES) == sorted(methods.settings())
  owner = next(m for m in NAMES if name in methods.get(m).SETTINGS)
  extra = {'summary_horizon': 64} if name == 'summary_memory' else {}
  if name == 'summary_moment':
    extra = {}
  config.parse_gin([], [f'build_model.{name} = {OTHER_VALUES[name]!r}'] +
                   [f'build_model.{k} = {v!r}' for k, v in extra.items()])
  m = model_lib.build_model((8, 8, 1), method=owner, projector_hidden=(8,), projector_dim=4)
  assert getattr(m.method, name) == OTHER_VALUES[name] != methods.settings()[name].default


def test_the_ema_horizon_is_a_number_of_pairs():
  """decay = 1 - B/H per step: at B = 4 pairs and H = 32, 0.875; the bias correction is exact."""
  from minc_tf.methods import minc as minc_lib
  m = minc_lib.Minc(4, False, mu=None, summary_horizon=32)
  moments = []
  for seed in range(3):
    z, t = _minc_outputs(seed, n=4)
    m.summary_matrix(tf.constant(t[:4]), tf.constant(t[4:]))
    moments.append(t.astype(np.float64).T @ t / 8)
  d = 0.875
  ema = sum((1 - d) * d ** (2 - i) * mm for i, mm in enumerate(moments))
  np.testing.assert_allclose(m.summary_matrix(tf.constant(t[:4]), tf.constant(t[4:]),
                                              update=False).numpy(),
                             ema / (1 - d ** 3), rtol=1e-5)
  big = minc_lib.Minc(4, False, mu=None, summary_horizon=4)  # B >= H: the batch alone
  np.testing.assert_allclose(big.summary_matrix(tf.constant(t[:4]), tf.constant(t[4:])).numpy(),
                             moments[-1], rtol=1e-5)


def test_the_queue_holds_the_last_h_pairs():
  from minc_tf.methods import minc as minc_lib
  q = minc_lib.Minc(4, False, mu=None, summary_memory='queue', summary_horizon=6)
  rows = []
  for seed in range(4):  # 4 pairs a step: 8, then 12 (full), then the newest 12 rows
    _, t = _minc_outputs(seed, n=4)
    got = q.summary_matrix(tf.constant(t[:4]), tf.constant(t[4:])).numpy()
    rows = list(t) + rows
    kept = np.array(rows[:max(12, 8)], np.float64)
    np.testing.assert_allclose(got, kept.T @ kept / len(kept), rtol=1e-5, atol=1e-6)
  assert q.queue_rows.numpy() == 12


def test_the_queue_needs_a_horizon_and_no_cross_moment():
  with pytest.raises(UserError, match='summary_horizon'):
    tiny_model('minc', summary_memory='queue')
  with pytest.raises(UserError, match="summary_moment = 'cross'"):
    tiny_model('minc', summary_memory='queue', summary_horizon=8, summary_moment='cross')


@pytest.mark.parametrize('memory', [{'summary_memory': 'queue', 'summary_horizon': 24},
                                    {'summary_horizon': 48}])
def test_minc_memories_mirrored_equal_single_device(mirrored, memory):
  """Two replicas (each half the batch) hold the same queue / EMA as one device: the batch's
  outputs are gathered from (all-reduced over) every replica."""
  data = batches(n=16, count=3)
  single = tiny_model('minc', mu=10.0, **memory)
  compile_model(single, lr=0.02)
  single.fit(dataset(data), epochs=1, verbose=0, shuffle=False)
  with mirrored.scope():
    dist = tiny_model('minc', mu=10.0, sync_bn=True, **memory)
    compile_model(dist, lr=0.02)
  dist.fit(mirrored.experimental_distribute_dataset(dataset(data)), epochs=1, verbose=0,
           shuffle=False)
  state = [v for v in single.method.weights]
  assert len(state) >= 3
  for a, b in zip(single.method.weights, dist.method.weights):
    for r in mirrored.experimental_local_results(b.value):
      np.testing.assert_allclose(r.numpy(), a.numpy(), rtol=1e-4, atol=1e-5, err_msg=a.path)
  assert np.abs(single.method.weights[0].numpy()).max() > 0


def test_the_queue_resumes_exactly(tmp_path):
  """Two steps, a checkpoint, a restore into a fresh model and a third step give the state of
  three uninterrupted steps."""
  from minc_tf import checkpoint
  data = batches(n=16, count=3)
  kw = dict(mu=10.0, summary_memory='queue', summary_horizon=24)
  straight = tiny_model('minc', **kw)
  compile_model(straight, lr=0.02)
  straight.fit(dataset(data), epochs=1, verbose=0, shuffle=False)
  first = tiny_model('minc', **kw)
  compile_model(first, lr=0.02)
  first.fit(dataset(data[:2]), epochs=1, verbose=0, shuffle=False)
  ckpt = checkpoint.Checkpointer(first, str(tmp_path), keep=1)
  ckpt.build_optimizer()
  ckpt.save()
  resumed = tiny_model('minc', seed=3, **kw)
  compile_model(resumed, lr=0.02)
  assert checkpoint.Checkpointer(resumed, str(tmp_path), keep=1).restore_latest(required=True) == 2
  np.testing.assert_array_equal(resumed.method.queue.numpy(), first.method.queue.numpy())
  resumed.fit(dataset(data[2:]), epochs=1, verbose=0, shuffle=False)
  for a, b in zip(straight.weights, resumed.weights):
    np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.path)
