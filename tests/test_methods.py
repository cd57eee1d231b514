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
  assert sorted(methods.settings()) == ['lower_triangular', 'mu', 'summary_centered',
                                        'summary_decay', 'summary_source', 'temperature']


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
