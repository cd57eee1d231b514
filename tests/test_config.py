"""config.py: gin files and bindings, and the errors for typos and missing files."""

import gin
import pytest

from minc_tf import config
from minc_tf.errors import UserError


def test_shipped_configs_parse_and_bind():
  for name in ('minc', 'spectral', 'simclr', 'byol', 'linear_byol', 'simsiam', 'quickstart'):
    gin.clear_config()
    config.parse_gin([f'gin/{name}.gin'], [])
    method = gin.query_parameter('build_model.method')
    assert method == (name if name != 'quickstart' else 'minc')


def test_quickstart_configs_for_every_method():
  for name in ('spectral', 'simclr', 'byol', 'simsiam', 'linear_byol'):
    gin.clear_config()
    config.parse_gin([f'gin/quickstart_{name}.gin'], [])
    assert gin.query_parameter('build_model.method') == name
    assert gin.query_parameter('load_data.name') == 'fashion_mnist'


def test_imagenet_configs_follow_byol_300_epoch_table():
  config.parse_gin(['gin/minc.gin'], [])
  assert gin.query_parameter('run.global_batch_size') == 4096
  assert gin.query_parameter('build_optimizer.name') == 'lars'
  assert gin.query_parameter('build_encoder.depth') == 50
  assert gin.query_parameter('load_data.name') == 'imagenet2012'


def test_unknown_parameter_suggests_the_right_one():
  with pytest.raises(UserError, match="Did you mean summary_decay"):
    config.parse_gin([], ['build_model.sumary_decay = 0.5'])


def test_unknown_configurable_suggests_the_right_one():
  with pytest.raises(UserError, match='Did you mean build_optimizer'):
    config.parse_gin([], ['build_optimiser.name = "lars"'])


def test_missing_file_lists_the_shipped_ones():
  with pytest.raises(UserError, match='minc.gin'):
    config.parse_gin(['gin/mnic.gin'], [])


def test_every_study_config_and_every_variant_of_it_parses():
  """A typo in a study's variant would otherwise surface hours into the study."""
  import glob
  import os
  from minc_tf import study
  paths = sorted(p for p in glob.glob(os.path.join(config.GIN_DIR, 'study_*.gin'))
                 if not p.endswith('study_protocol.gin'))  # the studies' common base
  assert len(paths) >= 5
  for path in paths:
    gin.clear_config()
    config.parse_gin([path], [])
    settings = gin.get_bindings('run_study')
    name = settings.get('name', 'ablation')
    if name == 'methods':
      variants = study._learning_rate_grid(settings['methods'], settings['learning_rates'])
    elif name == 'variance':
      variants = {'minc': [], 'spectral': ["build_model.method = 'spectral'"]}
    else:
      variants = study.study_variants(name, **{k: settings[k] for k in (
          'variants', 'batch_sizes', 'widths', 'sweep_batch_size', 'minc_decays',
          'pretrain_pairs') if k in settings})
    assert variants, path
    for label, bindings in variants.items():
      gin.clear_config()
      config.parse_gin(list(settings['base_gin_files']),
                       list(settings.get('common_bindings', ())) + bindings + ['run.seed = 0'])
      # Every study reads the validation split, never the test set, to decide.
      assert gin.query_parameter('load_data.validation_examples') == 10000, (path, label)
      # Screens and sweeps decide: they never read the test split.
      assert not gin.get_bindings('run').get('report_test', False), (path, label)
