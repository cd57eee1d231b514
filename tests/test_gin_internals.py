"""gin_internals.py: each private gin API it relies on still gives what it promises."""

import gin

from minc_tf import config
from minc_tf import gin_internals
from minc_tf import model as model_lib
from minc_tf import monitor


def test_configurables_lists_the_registered_ones():
  names = {s.split('.')[-1] for s in gin_internals.configurables()}
  assert {'run', 'build_model', 'load_data', 'build_encoder', 'build_optimizer',
          'view_transforms', 'run_study'} <= names
  assert gin_internals.configurable('build_model') is not None
  assert gin_internals.configurable('no_such_thing') is None


def test_defaults_read_the_signature_including_the_method_settings():
  d = gin_internals.defaults('build_model')
  assert d['projector_dim'] == 256 and d['mu'] == 10.0 and d['temperature'] == 0.1
  assert 'image_shape' not in d  # no default
  assert gin_internals.defaults('no_such_thing') == {}


def test_bound_and_operative_values():
  config.parse_gin([], ['build_model.projector_dim = 8', 'build_encoder.base_width = 4',
                        'build_encoder.depth = 18', 'build_encoder.small_images = True'])
  bound = {monitor.binding_key(k): v for k, v in gin_internals.bound_values().items()}
  assert bound['build_model.projector_dim'] == 8 and 'build_model.mu' not in bound
  model_lib.build_model((8, 8, 1), projector_hidden=(8,))
  operative = {monitor.binding_key(k): v for k, v in gin_internals.operative_values().items()}
  assert operative['build_model.projector_dim'] == 8
  assert operative['build_model.mu'] == 10.0  # a default: operative, not bound
  gin.clear_config()
  assert gin_internals.bound_values() == {}
