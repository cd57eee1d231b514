"""monitor.py: the TensorBoard tags and curves read back from the files it writes."""

import glob
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from minc_tf import monitor
from helpers import batches, compile_model, dataset, tiny_model
from helpers import read_events, session_hparams


def read_tags(directory):
  tags = set()
  for path in glob.glob(os.path.join(directory, '**', 'events.out.tfevents.*'), recursive=True):
    for event in tf.compat.v1.train.summary_iterator(path):
      tags.update(v.tag for v in event.summary.value)
  return tags


def test_expected_tags_are_written(tmp_path):
  m = tiny_model('minc', use_target=True)
  compile_model(m, lr=0.01)
  (v1, v2), _ = batches(n=4, count=1)[0]
  cb = monitor.Monitor(str(tmp_path), global_batch_size=16, every_steps=1,
                       view_pairs=(v1, v2), config_text='run.epochs = 1', rank_images=v1,
                       curves_path=str(tmp_path / 'curves.json'))
  tb = keras.callbacks.TensorBoard(str(tmp_path), update_freq=1)
  m.fit(dataset(batches(count=3)), epochs=1, verbose=0, callbacks=[cb, tb])
  tags = read_tags(str(tmp_path))
  for tag in ('learning_rate', 'target_tau', 'images_per_s', 'summary/eigenvalue_effective_rank',
              'summary/eigenvalue_0', 'view_pairs', 'gin_config', 'epoch_loss',
              'epoch_loss', 'epoch_probe_loss', 'epoch_loss_attract', 'epoch_loss_repel', 'epoch_probe_train_acc',
              'epoch_feature_std', 'feature_effective_rank'):
    assert tag in tags, (tag, sorted(tags))
  assert any(t.startswith('encoder/') and t.endswith('/kernel') for t in tags)  # histograms


def test_curves_file_holds_the_run_and_survives_a_resume(tmp_path):
  m = tiny_model('minc')
  compile_model(m, lr=0.01)
  (v1, _), _ = batches(n=8, count=1)[0]
  path = str(tmp_path / 'curves.json')

  def fit(epochs, initial_epoch=0):
    cb = monitor.Monitor(str(tmp_path), 16, every_steps=1, rank_images=v1, curves_path=path,
                         histograms=False)
    m.fit(dataset(batches(count=2)), epochs=epochs, initial_epoch=initial_epoch, verbose=0,
          callbacks=[cb])
    with open(path) as f:
      return json.load(f)

  first = fit(1)
  assert [p[0] for p in first['feature_effective_rank']] == [0, 2]  # start and epoch end
  assert [p[0] for p in first['train/loss']] == [1, 2]
  attract = dict(first['train/loss_attract'])
  repel = dict(first['train/loss_repel'])
  for step, loss in first['train/loss']:
    np.testing.assert_allclose(attract[step] + repel[step], loss, rtol=1e-5)
  # The optimizer's step continues (2 -> 4); the curves keep the first run's points.
  second = fit(2, initial_epoch=1)
  assert [p[0] for p in second['train/loss']] == [1, 2, 3, 4]
  assert [p[0] for p in second['feature_effective_rank']] == [0, 2, 4]
  ranks = [v for _, v in second['feature_effective_rank']]
  assert all(1.0 <= r <= v1.shape[0] for r in ranks)


# Seven steps per call (the TPU host loop): callbacks see steps 7, 14, 21, 28 only, and the
# cadences (10 for TensorBoard and checkpoints, 9 for the feature rank) divide none of them. (A
# case of one step per call, an epoch of 3 steps at a cadence of 2, is the same code at its
# simplest; it was cut for suite time.)
CADENCES = {
    7: dict(bindings=['run.steps_per_epoch = 14', 'run.steps_per_execution = 7',
                      'run.tensorboard_update_freq = 10', 'run.feature_rank_every_steps = 9',
                      'run.checkpoint_every_steps = 10'],
            batch=[14, 21], epoch_end=[14, 28], rank=[0, 14, 21, 28], checkpoints=[14, 28]),
}


@pytest.mark.parametrize('steps_per_execution', sorted(CADENCES))
def test_every_summary_reaches_the_event_files_at_its_step(tmp_path, steps_per_execution):
  """A real run with 7 steps per call: Keras' callback recorded only at steps divisible by the
  cadence (10), which no step it sees is, and epoch-end summaries at steps off the cadence (14)
  were dropped. Every tag the README lists, at every step it belongs to."""
  import tensorflow_datasets as tfds
  from minc_tf import config
  from minc_tf import train
  from helpers import TINY_IMAGENET
  case = CADENCES[steps_per_execution]
  config.parse_gin(['gin/minc.gin'], TINY_IMAGENET + case['bindings'] + [
      'run.epochs = 2', 'run.keep_checkpoints = 10', 'run.offline_linear_eval = False', 'run.baselines = False',
      'build_model.use_target = True', 'build_model.summary_decay = 0.9'])
  with tfds.testing.mock_data(num_examples=64):
    results = train.run('train_and_eval', str(tmp_path), tf.distribute.get_strategy())
  steps, events, mux = read_events(str(tmp_path / 'tensorboard'))
  batch, epoch_end, rank = case['batch'], case['epoch_end'], case['rank']
  saved = sorted(int(p.split('ckpt-')[1].split('.')[0])
                 for p in tf.io.gfile.glob(str(tmp_path / 'checkpoints' / 'ckpt-*.index')))
  assert saved == case['checkpoints']
  train_run, mon = steps['train'], steps['monitor']
  for name in ('loss', 'loss_attract', 'loss_repel', 'probe_loss', 'probe_train_acc',
               'feature_std'):
    assert train_run[f'batch_{name}'] == batch, name
    assert train_run[f'epoch_{name}'] == epoch_end, name  # on the optimizer's step
  assert train_run['epoch_learning_rate'] == epoch_end
  for tag in ('learning_rate', 'target_tau', 'images_per_s', 'summary/eigenvalue_effective_rank',
              'summary/eigenvalue_0', 'summary/eigenvalue_7'):
    assert mon[tag] == batch, (tag, mon.get(tag))
  assert mon['feature_effective_rank'] == rank
  assert mon['view_pairs'] == [0] and mon['gin_config'] == [0]
  histograms = [t for t in mon if t.startswith(('encoder/', 'projector/'))]
  assert sum(t.startswith('encoder/') and t.endswith('kernel') for t in histograms) >= 5, mon
  assert 'projector/dense0/kernel' in histograms, sorted(histograms)
  for tag in histograms:
    assert mon[tag] == epoch_end, tag
  # Values, not just steps: the epoch loss is what fit() reported, the rank what curves.json has.
  epoch_loss = [float(tf.make_ndarray(e.tensor_proto)) for e in events['train']['epoch_loss']]
  np.testing.assert_allclose(epoch_loss[-1], results['final_loss'], rtol=1e-6)
  ranks = [float(tf.make_ndarray(e.tensor_proto))
           for e in events['monitor']['feature_effective_rank']]
  np.testing.assert_allclose(ranks, [v for _, v in results['feature_effective_rank_curve']],
                             rtol=1e-6)
  # HParams: the run's settings and its results figures, read back as the dashboard does.
  hparams = session_hparams(mux, 'hparams')
  assert hparams['build_model.method'] == 'minc'
  assert hparams['run.global_batch_size'] == 8 and hparams['build_model.summary_decay'] == 0.9
  assert hparams['build_model.use_target'] is True
  assert steps['hparams']['results/probe_top1'] == [epoch_end[-1]]
  probe = float(tf.make_ndarray(events['hparams']['results/probe_top1'][0].tensor_proto))
  np.testing.assert_allclose(probe, results['probe_top1'], rtol=1e-6)


