"""study.py: the gradient noise-to-signal measure, the variants, seeds and read-back of a study."""

import os
import types

import gin
import numpy as np
import tensorflow as tf

from minc_tf import config
from minc_tf import study
from minc_tf import tables
from helpers import batches, compile_model, tiny_model


def _repeat(data):
  (x1, x2), y = data[0]
  return tf.data.Dataset.from_tensors(((x1, x2), y)).repeat()


def test_noise_to_signal_is_zero_for_identical_batches_and_positive_otherwise():
  m = tiny_model('spectral')
  compile_model(m)
  assert study.gradient_noise_to_signal(m, _repeat(batches(n=8, count=1)), 4) < 1e-10
  data = batches(n=8, count=4)
  ds = tf.data.Dataset.from_generator(lambda: iter(data), output_signature=(
      (tf.TensorSpec((8, 8, 8, 1), tf.float32),) * 2, tf.TensorSpec((8,), tf.int64)))
  assert study.gradient_noise_to_signal(m, ds, 4) > 1e-3


def test_minc_noise_includes_the_summarys_own_batch_and_restores_it():
  """With summary decay 0 each measured batch's M is its own moment, as in training: the
  measure on a model whose stored M is arbitrary equals the one on a model that has no stored M
  yet (whose loss reads the batch's moment), and the stored M is put back. Holding M constant
  (summary_noise=False) measures something else."""
  data = batches(n=8, count=4)
  ds = tf.data.Dataset.from_generator(lambda: iter(data), output_signature=(
      (tf.TensorSpec((8, 8, 8, 1), tf.float32),) * 2, tf.TensorSpec((8,), tf.int64)))
  fresh = tiny_model('minc', summary_decay=0.0)
  trained = tiny_model('minc', summary_decay=0.0)
  for m in (fresh, trained):
    compile_model(m)
  stored = np.diag(np.linspace(1.0, 3.0, 8)).astype(np.float32)
  trained.method.summary.assign(stored)
  trained.method.summary_steps.assign(5.0)
  expected = study.gradient_noise_to_signal(fresh, ds, 4, summary_noise=False)
  np.testing.assert_allclose(study.gradient_noise_to_signal(trained, ds, 4), expected,
                             rtol=1e-5)
  np.testing.assert_array_equal(trained.method.summary.numpy(), stored)
  assert trained.method.summary_steps.numpy() == 5.0
  held = study.gradient_noise_to_signal(trained, ds, 4, summary_noise=False)
  assert abs(held - expected) > 1e-3 * expected


class _LinearModel:
  """A stand-in whose SSL loss sum(w * x1) has the gradient x1: batch b's gradient is known."""

  def __init__(self):
    self.w = tf.Variable(tf.zeros(2))
    self.encoder = types.SimpleNamespace(trainable_variables=[self.w])
    self.projector = types.SimpleNamespace(trainable_variables=[])
    self.method = types.SimpleNamespace(weights=[])

  def compute_ssl_loss(self, x1, x2, training=True, update_state=True):
    assert not update_state  # a model without a summary has none to take a batch in
    return tf.reduce_sum(self.w * x1), None, None, {}


def test_noise_to_signal_has_its_closed_form_value():
  """Gradients (1, 0), (3, 0), (2, 3) of the first 3 batches (a 4th is offered, not read):
  mean (2, 1), E||g - mean||^2 = (2 + 2 + 4) / 3, ||mean||^2 = 5, so the ratio is 8 / 15."""
  grads = [(1.0, 0.0), (3.0, 0.0), (2.0, 3.0), (100.0, 100.0)]
  ds = tf.data.Dataset.from_tensor_slices(
      ((np.array(grads, np.float32), np.zeros((4, 2), np.float32)), np.zeros(4, np.int64)))
  np.testing.assert_allclose(study.gradient_noise_to_signal(_LinearModel(), ds, 3), 8 / 15,
                             rtol=1e-6)


def test_minc_noise_measure_leaves_the_summary_untouched():
  m = tiny_model('minc')
  compile_model(m)
  before = m.method.summary.numpy().copy()
  study.gradient_noise_to_signal(m, _repeat(batches(n=8, count=1)), 2)
  np.testing.assert_array_equal(m.method.summary.numpy(), before)
  assert m.method.summary_steps.numpy() == 0


def test_study_runs_compare_in_the_hparams_dashboard(tmp_path):
  """Two variants of a real study: the study's root holds the HParams experiment (the settings
  the variants vary, the results figures as metrics) and each variant's session its values."""
  import tensorflow_datasets as tfds
  from tensorboard.plugins.hparams import metadata
  from minc_tf import config
  from helpers import TINY_IMAGENET
  from helpers import read_events, session_hparams
  config.parse_gin([], [
      'run_study.base_gin_files = ("gin/minc.gin",)',
      'run_study.common_bindings = %r' % (tuple(
          TINY_IMAGENET + ['run.epochs = 1', 'run.steps_per_epoch = 1',
                           'run.offline_linear_eval = False', 'run.baselines = False',
                           'run.knn = False', 'run.feature_rank_images = 16']),),
      'run_study.variants = {"decay 0": ["build_model.summary_decay = 0.0"], '
      '"grayscale 0.5, decay 0.5": ["view_transforms.grayscale_prob = 0.5", '
      '"build_model.summary_decay = 0.5"]}'])
  with tfds.testing.mock_data(num_examples=64):
    rows = study.run_study(str(tmp_path), tf.distribute.get_strategy())
  assert [r['variant'] for r in rows] == ['decay 0', 'grayscale 0.5, decay 0.5']
  _, _, mux = read_events(str(tmp_path))
  experiment = metadata.parse_experiment_plugin_data(
      mux.PluginRunToTagToContent(metadata.PLUGIN_NAME)['.'][metadata.EXPERIMENT_TAG])
  assert [h.name for h in experiment.hparam_infos] == ['build_model.summary_decay',
                                                       'view_transforms.grayscale_prob']
  assert 'results/probe_top1' in [m.name.tag for m in experiment.metric_infos]
  assert len({r['run'] for r in rows}) == 2
  sessions = [session_hparams(mux, f"{r['run']}/tensorboard/hparams") for r in rows]
  assert [s['build_model.summary_decay'] for s in sessions] == [0.0, 0.5]
  # Unbound in the first variant: its default, so the dashboard's column has no hole.
  assert [s['view_transforms.grayscale_prob'] for s in sessions] == [0.2, 0.5]
  for i, row in enumerate(rows):
    steps, events, _ = read_events(str(tmp_path / row['run'] / 'tensorboard'))
    value = float(tf.make_ndarray(events['hparams']['results/probe_top1'][-1].tensor_proto))
    np.testing.assert_allclose(value, row['probe_top1'], rtol=1e-6)


def test_a_stopped_variant_stops_the_study_and_the_flag_reaches_every_run(tmp_path, monkeypatch):
  """Ctrl-C or SIGTERM in variant 1 ends the study there (no half-trained row, no variant 2);
  --allow_config_change reaches each variant's train.run."""
  from minc_tf import config
  from minc_tf import train
  calls = []

  def fake_run(mode, model_dir, strategy, allow_config_change=False):
    calls.append((os.path.basename(model_dir), allow_config_change))
    done = {'probe_top1': 50.0, 'knn_top1': 50.0, 'feature_effective_rank': 1.0,
            'final_loss': 0.0, 'pretrain_wall_time_s': 1, 'images_per_s': 1}
    return {'preempted': 'SIGINT'} if len(calls) == 2 else done
  monkeypatch.setattr(train, 'run', fake_run)
  config.parse_gin([], ['run_study.variants = {"a": [], "b": [], "c": []}'])
  rows = study.run_study(str(tmp_path), tf.distribute.get_strategy(), allow_config_change=True)
  assert [r['variant'] for r in rows] == ['a']
  assert calls == [('seed0', True), ('seed0', True)]
  assert '| a |' in (tmp_path / 'ablation.md').read_text()


def _fake_runs(monkeypatch, probe):
  """train.run replaced: records (variant, run.seed, baselines, run.epochs, keep_checkpoints)
  and returns probe(variant, seed) as the probe figure; the variant is told by its binding
  (test variants: 'a' binds nothing, 'b' run.epochs = 3)."""
  import gin
  from minc_tf import train
  calls = []

  def fake_run(mode, model_dir, strategy, allow_config_change=False):
    seed = gin.get_bindings('run')['seed']
    bound = gin.get_bindings('run')
    variant = 'b' if bound.get('epochs') == 3 else 'a'
    calls.append((variant, seed, bound.get('baselines', True), bound.get('epochs', 1),
                  bound.get('keep_checkpoints', 3)))
    return {'probe_top1': probe(variant, seed), 'knn_top1': 50.0, 'eval_split': 'validation',
            'final_loss': 0.0, 'pretrain_wall_time_s': 1.0}
  monkeypatch.setattr(train, 'run', fake_run)
  return calls


def test_seeds_give_mean_and_std_and_a_finished_run_is_read_back(tmp_path, monkeypatch):
  """Every variant at every seed, baselines once per seed, the table's mean +- sample std; a
  rerun trains nothing unless a run's bindings changed."""
  import gin
  import pytest
  from minc_tf import config
  probes = {('a', 0): 70.0, ('a', 1): 72.0, ('a', 2): 77.0,
            ('b', 0): 60.0, ('b', 1): 61.0, ('b', 2): 62.0}
  calls = _fake_runs(monkeypatch, lambda v, s: probes[(v, s)])
  settings = ['run_study.variants = {"a": [], "b": ["run.epochs = 3"]}',
              'run_study.seeds = (0, 1, 2)']
  config.parse_gin([], settings)
  rows = study.run_study(str(tmp_path), tf.distribute.get_strategy())
  assert [c[:3] for c in calls] == [
      (v, s, v == 'a') for s in (0, 1, 2) for v in 'ab']
  table = (tmp_path / 'ablation.md').read_text()
  mean, std = np.mean([70, 72, 77]), np.std([70, 72, 77], ddof=1)
  assert f'| a | 3 | {mean:.2f} +- {std:.2f} | 50.00 +- 0.00 |' in table
  assert '| b | 3 | 61.00 +- 1.00 |' in table
  # b - a seed by seed: -10, -11, -15.
  diffs = [-10.0, -11.0, -15.0]
  assert f'| {np.mean(diffs):.2f} +- {np.std(diffs, ddof=1):.2f} |' in table.split('| b |')[1]
  assert [e['probe_top1'] for e in tables.summarize(rows)] == [
      pytest.approx((mean, std)), pytest.approx((61.0, 1.0))]
  calls.clear()
  gin.clear_config()  # a new command starts afresh
  config.parse_gin([], settings)
  assert study.run_study(str(tmp_path), tf.distribute.get_strategy()) == rows
  assert calls == []
  gin.clear_config()
  config.parse_gin([], settings + ['run_study.common_bindings = ("run.epochs = 5",)'])
  study.run_study(str(tmp_path), tf.distribute.get_strategy())
  # a's configuration changed: rerun; b's did not (its own run.epochs = 3 comes after the
  # common binding): read back.
  assert [(c[0], c[3]) for c in calls] == [('a', 5)] * 3


def test_a_seed_on_the_command_line_is_honoured_and_its_bindings_apply_to_every_run(
    tmp_path, monkeypatch):
  """run.seed=5 on the command line (parsed by main before the study) replaces the study's
  seeds; the command line's other bindings reach every run; one that a variant sets itself is
  refused (the rows would be mislabelled)."""
  import gin
  import pytest
  from minc_tf import config
  from minc_tf.errors import UserError
  calls = _fake_runs(monkeypatch, lambda v, s: 50.0)
  study_settings = ['run_study.variants = {"a": [], "b": ["run.epochs = 3"]}',
                    'run_study.seeds = (0, 1, 2)']
  cli = ['run.seed = 5', 'run.keep_checkpoints = 4']
  config.parse_gin([], study_settings + cli)
  rows = study.run_study(str(tmp_path), tf.distribute.get_strategy(), command_line=([], cli))
  assert [c[:4] for c in calls] == [('a', 5, True, 2), ('b', 5, False, 3)]  # quickstart: 2
  assert [r['seed'] for r in rows] == [5, 5]
  assert [r['run'].endswith('/seed5') for r in rows] == [True, True]
  assert len(list((tmp_path / rows[1]['run']).glob('study_run_*.json'))) == 1
  assert all(k == 4 for k in [c[4] for c in calls])
  gin.clear_config()
  config.parse_gin([], study_settings + ['run.epochs = 4'])
  with pytest.raises(UserError, match=r'The command line sets run.epochs, which the variants '
                                      r"of study 'ablation' set themselves"):
    study.run_study(str(tmp_path), tf.distribute.get_strategy(),
                    command_line=([], ['run.epochs = 4']))
  # The same from a command-line gin file (main parsed it before the study).
  extra = tmp_path / 'extra.gin'
  extra.write_text('run.epochs = 4\n')
  gin.clear_config()
  config.parse_gin([str(extra)], study_settings)
  with pytest.raises(UserError, match='The command line sets run.epochs'):
    study.run_study(str(tmp_path), tf.distribute.get_strategy(),
                    command_line=([str(extra)], []))


def test_sweep_cells_train_the_same_pairs_at_every_batch_size():
  """A sweep's cell: MINC at each decay and Spectral, the steps set so every run sees the same
  number of view pairs."""
  variants = study._sweep('width', (2048,), (0.0, 0.99), 25600, batch_size=64)
  assert variants['minc decay=0.99 k=2048'] == [
      "build_model.method = 'minc'", 'build_model.summary_decay = 0.99',
      'run.global_batch_size = 64', 'build_model.projector_dim = 2048',
      'run.steps_per_epoch = 400']
  assert variants['spectral k=2048'][0] == "build_model.method = 'spectral'"
  assert study._sweep('batch', (32,), (0.0,), 25600)['spectral B=32'][1:] == [
      'run.global_batch_size = 32', 'run.steps_per_epoch = 800']


def test_methods_study_screens_learning_rates_then_runs_finals_with_the_test_split(
    tmp_path, monkeypatch):
  """The screen runs every (method, lr) at the first seed; each method's final runs at the lr
  with the best validation probe, at every seed, with run.report_test on."""
  import gin
  from minc_tf import config
  from minc_tf import train
  calls = []
  best = {'a': 2e-3, 'b': 5e-4}

  def fake_run(mode, model_dir, strategy, allow_config_change=False):
    lr = gin.get_bindings('build_optimizer')['base_lr']
    method = gin.get_bindings('build_model')['method']
    calls.append((method, lr, gin.get_bindings('run')['seed'],
                  gin.get_bindings('run').get('report_test', False)))
    return {'probe_top1': 80.0 if lr == best[method] else 70.0 + lr * 1000}
  monkeypatch.setattr(train, 'run', fake_run)
  config.parse_gin([], ['run_study.name = "methods"', 'run_study.seeds = (0, 1)',
                        'run_study.learning_rates = (5e-4, 1e-3, 2e-3)',
                        'run_study.methods = {"A": ["build_model.method = \'a\'"], '
                        '"B": ["build_model.method = \'b\'"]}'])
  rows = study.run_study(str(tmp_path), tf.distribute.get_strategy())
  screen = [(m, lr, 0, False) for m in 'ab' for lr in (5e-4, 1e-3, 2e-3)]
  finals = [(m, best[m], s, True) for s in (0, 1) for m in 'ab']
  assert calls == screen + finals
  assert [r['variant'] for r in rows[-2:]] == ['A (lr 0.002, final)', 'B (lr 0.0005, final)']
  # The seed-0 finals train what the screen's winners trained: the same directory (train.run
  # finds them trained and only evaluates), with a record each.
  run = {(r['variant'], r['seed']): r['run'] for r in rows}
  assert run[('A (lr 0.002, final)', 0)] == run[('A lr=0.002', 0)]
  assert run[('A (lr 0.002, final)', 1)] != run[('A lr=0.002', 0)]
  assert len(list((tmp_path / run[('A lr=0.002', 0)]).glob('study_run_*.json'))) == 2


def _run_name(bindings, seed=0, model_dir=None):
  gin.clear_config()
  config.parse_gin(['gin/quickstart.gin'], bindings)
  return study.run_name(study._run_configuration(), seed, model_dir)


def test_a_run_dir_is_named_by_the_settings_that_define_the_run(tmp_path):
  """The same table as the identity (schema.defines_run): evaluation and data-location
  settings do not rename a run, defining ones do, and restating a default does not."""
  base = _run_name([])
  assert base.startswith('runs/') and base.endswith('/seed0')
  for same in (['run.knn = False'], ['linear_probe.epochs = 3'], ['run.verbose = 0'],
               ["load_data.idx_dir = '/elsewhere'"], ['run.report_test = True'],
               ["build_model.summary_source = 'target'"]):  # the code default
    assert _run_name(same) == base, same
  for other in (['build_model.mu = 3.0'], ['run.global_batch_size = 64'],
                ['build_optimizer.base_lr = 0.5'], ['view_transforms.flip_prob = 0.0']):
    assert _run_name(other) != base, other
  assert _run_name([], seed=1) == base.replace('seed0', 'seed1')


def test_a_study_dir_made_before_the_rule_keeps_its_runs(tmp_path):
  gin.clear_config()
  config.parse_gin(['gin/quickstart.gin'], [])
  configuration = study._run_configuration()
  legacy = study.legacy_run_name(configuration, 0)
  assert study.run_name(configuration, 0, str(tmp_path)) != legacy
  os.makedirs(tmp_path / legacy)
  assert study.run_name(configuration, 0, str(tmp_path)) == legacy


def test_a_macro_that_sets_a_defining_value_names_the_run():
  with_macro = lambda epochs: _run_name([f'EPOCHS = {epochs}', 'run.epochs = %EPOCHS'])  # noqa
  assert with_macro(100) != with_macro(300)
  assert with_macro(100) == with_macro(100)


def test_outcome_study_screens_on_the_objective_extends_a_winning_top_then_runs_every_cell(
    tmp_path, monkeypatch):
  """Each arm is screened at the screen batch on the lowest val_objective (a best rate at the
  top of the grid adds its double, up to max_learning_rate), then runs at its rate at every
  batch size and seed with run.report_test on; the registered contrast is in the table."""
  from minc_tf import train
  calls = []
  best = {'spectral': 2e-3, 'minc': 8e-3}  # minc's optimum lies above its grid

  def fake_run(mode, model_dir, strategy, allow_config_change=False):
    lr = gin.get_bindings('build_optimizer')['base_lr']
    method = gin.get_bindings('build_model')['method']
    b = gin.get_bindings('run')['global_batch_size']
    calls.append((method, lr, b, gin.get_bindings('run')['seed'],
                  gin.get_bindings('run').get('report_test', False)))
    return {'val_objective_clipped': abs(np.log2(lr / best[method])) + (
        16 / b if method == 'spectral' else 0.0), 'probe_top1': 70.0}
  monkeypatch.setattr(train, 'run', fake_run)
  config.parse_gin([], ['run_study.name = "outcome"', 'run_study.seeds = (0, 1)',
                        'run_study.learning_rates = (1e-3, 2e-3, 4e-3)',
                        'run_study.batch_sizes = (16, 256)', 'run_study.screen_batch_size = 64',
                        'run_study.max_learning_rate = 1e-2',
                        'run_study.methods = {"S": ["build_model.method = \'spectral\'"], '
                        '"M": ["build_model.method = \'minc\'"]}'])
  rows = study.run_study(str(tmp_path), tf.distribute.get_strategy())
  screen = [('spectral', lr, 64, 0, False) for lr in (1e-3, 2e-3, 4e-3)] + [
      ('minc', lr, 64, 0, False) for lr in (1e-3, 2e-3, 4e-3, 8e-3)]  # 1.6e-2 > the cap
  finals = [(m, best[m], b, s, True) for s in (0, 1) for m in ('spectral', 'minc')
            for b in (16, 256)]
  assert calls == screen + finals
  table = (tmp_path / 'outcome.md').read_text()
  # Spectral loses 16/16 - 16/256 = 0.9375 of objective per seed, MINC nothing: Delta > 0 on
  # both seeds with no spread.
  assert '| M | 2 | 0.0000 +- 0.0000 | 0.9375 +- 0.0000 |' in table and 'supported' in table
  assert [r['variant'] for r in rows[-2:]] == ['M B=16 (lr 0.008)', 'M B=256 (lr 0.008)']


def test_a_changed_code_default_names_runs_by_what_they_train():
  """mu's and summary_decay's code defaults became the shipped values (10, 0): a run binding
  the new value keeps the name it had when it differed from the default, and an unbound one
  (which now trains that value too) shares it; binding the old default names the other run."""
  gin.clear_config()
  config.parse_gin([], [])  # nothing bound: the code defaults
  unbound = study.run_name(study._run_configuration(), 0)
  gin.clear_config()
  config.parse_gin([], ['build_model.mu = 10.0', 'build_model.summary_decay = 0.0'])
  assert study.run_name(study._run_configuration(), 0) == unbound
  gin.clear_config()
  config.parse_gin([], ['build_model.mu = 1.0', 'build_model.summary_decay = 0.99'])
  old_defaults = study.run_name(study._run_configuration(), 0)
  assert old_defaults != unbound
  # The old defaults' name is the one every run had before: only the other settings in it.
  gin.clear_config()
  config.parse_gin([], ["build_model.summary_source = 'target'"])  # restates a default
  restated = study.run_name(study._run_configuration(), 0)
  assert restated == unbound
