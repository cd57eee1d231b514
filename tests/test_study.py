"""study.py: the gradient noise-to-signal measure and the tables it writes."""

import importlib.util
import os
import types

import numpy as np
import tensorflow as tf

from minc_tf import study
from test_model import batches, compile_model, tiny_model


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


class _LinearModel:
  """A stand-in whose SSL loss sum(w * x1) has the gradient x1: batch b's gradient is known."""

  def __init__(self):
    self.w = tf.Variable(tf.zeros(2))
    self.encoder = types.SimpleNamespace(trainable_variables=[self.w])
    self.projector = types.SimpleNamespace(trainable_variables=[])

  def compute_ssl_loss(self, x1, x2, training=True, update_summary=True):
    assert not update_summary  # the measure must not move MINC's summary
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
  before = m.summary.numpy().copy()
  study.gradient_noise_to_signal(m, _repeat(batches(n=8, count=1)), 2)
  np.testing.assert_array_equal(m.summary.numpy(), before)
  assert m.summary_steps.numpy() == 0


def test_tables(tmp_path):
  rows = [{'variant': 'a', 'probe_top1': 80.0, 'knn_top1': 79.0, 'feature_effective_rank': 20.0,
           'final_loss': -1.0, 'pretrain_wall_time_s': 10, 'images_per_s': 5,
           'random_init_top1': 70.0, 'raw_pixel_top1': 84.0}]
  docs = tmp_path / 'docs'
  docs.mkdir()
  study._write(str(tmp_path / 'run'), 'ablation', rows, str(docs / 'table.md'), 'run.epochs = 1\n')
  text = (tmp_path / 'run' / 'ablation.md').read_text()
  assert '| a | 80.00 | 79.00 | 20.0 |' in text and 'raw pixels 84.00' in text
  assert (docs / 'table.md').read_text() == text
  if importlib.util.find_spec('matplotlib'):  # drawn once, the same PNG beside both tables
    png = (tmp_path / 'run' / 'ablation.png').read_bytes()
    assert png[:4] == b'\x89PNG' and (docs / 'table.png').read_bytes() == png
  # On a remote filesystem (ram://, the stand-in for gs://) nothing lands on the local disk.
  study._write('ram://tables/run', 'ablation', rows, None, 'run.epochs = 1\n')
  assert tf.io.gfile.exists('ram://tables/run/ablation.md')
  if importlib.util.find_spec('matplotlib'):
    assert tf.io.gfile.exists('ram://tables/run/ablation.png')
  assert not os.path.exists('ram:')
  var = [{'method': m, 'stage': 'init', 'batch_size': 64, 'noise_to_signal': v}
         for m, v in (('minc', 2.0), ('spectral', 4.0))]
  study._write_variance(str(tmp_path), var, None)
  assert '| init | 64 | 2 | 4 | 0.50 |' in (tmp_path / 'variance.md').read_text()


def test_study_runs_compare_in_the_hparams_dashboard(tmp_path):
  """Two variants of a real study: the study's root holds the HParams experiment (the settings
  the variants vary, the results figures as metrics) and each variant's session its values."""
  import tensorflow_datasets as tfds
  from tensorboard.plugins.hparams import metadata
  from minc_tf import config
  from test_main import TINY_IMAGENET
  from test_monitor import read_events, session_hparams
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
  sessions = [session_hparams(mux, f'variant{i}/tensorboard/hparams') for i in range(2)]
  assert [s['build_model.summary_decay'] for s in sessions] == [0.0, 0.5]
  # Unbound in the first variant: its default, so the dashboard's column has no hole.
  assert [s['view_transforms.grayscale_prob'] for s in sessions] == [0.2, 0.5]
  for i, row in enumerate(rows):
    steps, events, _ = read_events(str(tmp_path / f'variant{i}' / 'tensorboard'))
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
  assert calls == [('variant0', True), ('variant1', True)]
  assert '| a |' in (tmp_path / 'ablation.md').read_text()
