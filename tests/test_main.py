"""End to end: the launch (flags, gin, errors) and train.run on mock ImageNet (single device and
MirroredStrategy), on a slice of real Fashion-MNIST, and the exported encoder's round trip."""

import functools
import importlib.util
import json
import os
import subprocess
import sys

import gin
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from conftest import REPO
from minc_tf import data as data_lib
from minc_tf import config
from minc_tf import run_dir
from minc_tf import strategy as strategy_lib
from minc_tf import train
from minc_tf.errors import UserError
from helpers import TINY_IMAGENET, assert_accuracy_over

FMNIST = os.path.join(data_lib.FASHION_MNIST_DIR, 't10k-labels-idx1-ubyte.gz')


def cli(*args, timeout=300):
  env = dict(os.environ, PYTHONPATH=REPO)
  return subprocess.run([sys.executable, '-m', 'minc_tf.main', *args], capture_output=True,
                        text=True, timeout=timeout, cwd=REPO, env=env)


# BYOL (the target-network path, with the offline linear evaluation); MINC's run of the same
# path is test_monitor.py's events test, and every method's train step is checked in
# test_model.py (XLA, MirroredStrategy).
@pytest.mark.parametrize('method', ['byol'])
def test_mock_imagenet_end_to_end(tmp_path, method):
  config.parse_gin([f'gin/{method}.gin'], TINY_IMAGENET)
  with tfds.testing.mock_data(num_examples=64):
    results = train.run('train_and_eval', str(tmp_path), tf.distribute.get_strategy())
  assert results['steps'] == 4 and np.isfinite(results['final_loss'])
  assert_accuracy_over(results['probe_top1'], 16)  # run.eval_test_examples
  # JPEG crops through decode_and_crop; tested on the whole mock validation split.
  assert_accuracy_over(results['linear_eval_top1'], 64)
  assert os.path.exists(tmp_path / 'export' / 'saved_model.pb')
  assert os.path.exists(tmp_path / 'export' / 'encoder.keras')
  assert os.path.exists(tmp_path / run_dir.CHECKPOINT)
  assert json.loads((tmp_path / 'results.json').read_text())['method'] == method
  assert 'build_model.method' in (tmp_path / 'operative_config.gin').read_text()
  assert tf.io.gfile.glob(str(tmp_path / 'tensorboard' / 'train' / 'events.out.tfevents.*'))
  # Training changed what it should between the step-2 and step-4 checkpoints: the online
  # variables and, for BYOL, the EMA target.
  first, last = (tf.train.load_checkpoint(str(tmp_path / 'checkpoints' / f'ckpt-{s}'))
                 for s in (2, 4))
  names = [n for n, shape in first.get_variable_to_shape_map().items() if len(shape) == 4]
  moved = {n for n in names if not np.array_equal(first.get_tensor(n), last.get_tensor(n))}
  assert len(names) >= 5 and len(moved) == len(names), (names, moved)
  assert any('target_encoder' in n for n in moved) == (method == 'byol')


def test_mock_imagenet_under_mirrored_strategy_with_views_made_on_device(tmp_path, mirrored):
  config.parse_gin(['gin/minc.gin'], TINY_IMAGENET + ['run.augment_on_device = True'])
  with tfds.testing.mock_data(num_examples=64):
    results = train.run('train', str(tmp_path), mirrored)
  assert results['replicas'] == 2 and np.isfinite(results['final_loss'])


def test_a_multi_step_host_loop_under_a_mirrored_strategy_stops_before_any_work(tmp_path,
                                                                               mirrored):
  """Keras 3's multi-step loop fails at its first call under MirroredStrategy
  (keras-team/keras#19246): run() names the setting and the fix first, for the pretraining
  loop and for the linear evaluation's (which would otherwise fail after pretraining)."""
  for binding, name in [('run.steps_per_execution = 2', 'run.steps_per_execution'),
                        ('offline_linear_eval.steps_per_execution = 2',
                         'offline_linear_eval.steps_per_execution')]:
    gin.clear_config()
    config.parse_gin(['gin/minc.gin'], TINY_IMAGENET + [binding])
    with pytest.raises(UserError, match=rf'{name} = 2 under MirroredStrategy: .* Fix: bind '
                                        rf'{name} = 1'):
      train.run('train_and_eval', str(tmp_path / 'run'), mirrored)
    assert not (tmp_path / 'run').exists()
  # One step per call, and any loop off the mirrored strategies, pass the check.
  strategy_lib.check_host_loop(mirrored, 1, 'run.steps_per_execution')
  strategy_lib.check_host_loop(tf.distribute.get_strategy(), 52, 'run.steps_per_execution')


def test_batch_not_divisible_by_replicas_is_a_clear_error(tmp_path, mirrored):
  config.parse_gin(['gin/minc.gin'], TINY_IMAGENET + ['run.global_batch_size = 7'])
  with pytest.raises(UserError, match='multiple of 2'):
    train.run('train', str(tmp_path), mirrored)


@pytest.mark.skipif(not os.path.exists(FMNIST), reason='needs apt-get install dataset-fashion-mnist')
def test_quickstart_on_a_slice_of_fashion_mnist_and_export_round_trip(tmp_path, monkeypatch):
  """The whole run with its model dir on ram:// (TensorFlow's in-memory filesystem, the offline
  stand-in for gs://): train, checkpoint, rerun (resume), eval, export, results, plot; nothing
  may appear on the local disk."""
  model_dir = f'ram://{tmp_path.name}/run'
  local_before = sorted(os.listdir(REPO)), sorted(os.listdir(tmp_path))
  config.parse_gin(['gin/quickstart.gin'], [
      'run.steps_per_epoch = 3', 'run.epochs = 1', 'run.eval_train_examples = 2000',
      'run.eval_test_examples = 500', 'run.verbose = 0', 'build_encoder.base_width = 8'])
  results = train.run('train_and_eval', model_dir, tf.distribute.get_strategy())
  for key in ('probe_top1', 'random_init_top1', 'raw_pixel_top1', 'knn_top1',
              'pretrain_wall_time_s', 'images_per_s', 'final_loss_attract', 'final_loss_repel'):
    assert key in results, key
  assert results['raw_pixel_top1'] > 60  # real images: the raw-pixel probe is well above chance.
  with tf.io.gfile.GFile(f'{model_dir}/results.json') as f:
    assert json.load(f)['probe_top1'] == results['probe_top1']
  # Feature rank at the start and at the end of the epoch, on the test images.
  assert [p[0] for p in results['feature_effective_rank_curve']] == [0, 3]
  if importlib.util.find_spec('matplotlib'):  # the optional plot extra (installed by CI)
    assert results['plot'] == 'training.png'
    with tf.io.gfile.GFile(f'{model_dir}/training.png', 'rb') as f:
      assert f.read()[:4] == b'\x89PNG'

  # Rerunning the finished run trains nothing and keeps what its training measured.
  gin.clear_config()
  config.parse_gin(['gin/quickstart.gin'], [
      'run.steps_per_epoch = 3', 'run.epochs = 1', 'run.verbose = 0',
      'build_encoder.base_width = 8'])
  rerun = train.run('train', model_dir, tf.distribute.get_strategy())
  for key in ('pretrain_wall_time_s', 'images_per_s', 'resumed_from_step', 'final_loss',
              'probe_top1'):
    assert rerun[key] == results[key], key

  # --mode=eval on the trained dir: the step it read, the training figures kept; a final
  # configuration's figures on validation with the test split's beside them, the BYOL linear
  # evaluation's included.
  gin.clear_config()
  config.parse_gin(['gin/quickstart.gin'], [
      'run.epochs = 5', 'run.eval_train_examples = 1000', 'run.eval_test_examples = 200',
      'run.baselines = False', 'run.knn = False', 'run.verbose = 0',
      'build_encoder.base_width = 8', 'load_data.validation_examples = 10000',
      'run.report_test = True', 'run.offline_linear_eval = True'])
  linear_eval, splits = train.evaluate.offline_linear_eval, []

  @functools.wraps(linear_eval)  # its settings are checked against its signature
  def spy(*args, **kwargs):  # the real one runs in test_mock_imagenet_end_to_end
    splits.append(kwargs.get('splits'))
    return [11.0, 22.0]
  monkeypatch.setattr(train.evaluate, 'offline_linear_eval', spy)
  train.run('eval', model_dir, tf.distribute.get_strategy())
  with tf.io.gfile.GFile(f'{model_dir}/results.json') as f:
    evaluated = json.load(f)
  assert evaluated['eval_split'] == 'validation' and splits == [['validation', 'test']]
  assert_accuracy_over(evaluated['probe_top1'], 200)  # run.eval_test_examples of each split
  assert_accuracy_over(evaluated['test_probe_top1'], 200)
  assert (evaluated['linear_eval_top1'], evaluated['test_linear_eval_top1']) == (11.0, 22.0)
  assert evaluated['eval_checkpoint_step'] == 3
  assert evaluated['epochs'] == 1 and evaluated['steps'] == 3  # the trained run's, not 5
  assert evaluated['pretrain_wall_time_s'] == results['pretrain_wall_time_s']
  assert evaluated['knn_top1'] == results['knn_top1']  # run.knn = False: training's kept

  for name in ('checkpoint.weights.h5', 'export/saved_model.pb', 'export/encoder.keras',
               'export/export_info.json', 'checkpoints/checkpoint', 'run_identity.json',
               'tensorboard/hparams', 'curves.json'):
    assert tf.io.gfile.exists(f'{model_dir}/{name}'), name
  assert (sorted(os.listdir(REPO)), sorted(os.listdir(tmp_path))) == local_before
  # Served from ram:// in this process, and after a copy to disk in a fresh process with no
  # minc_tf on its path: the same features.
  for root, _, names in tf.io.gfile.walk(f'{model_dir}/export'):
    local = os.path.join(tmp_path, 'export', os.path.relpath(root, f'{model_dir}/export'))
    os.makedirs(local, exist_ok=True)
    for name in names:
      tf.io.gfile.copy(f'{root}/{name}', os.path.join(local, name))
  images = data_lib.load_data().arrays('test')[0][:16]
  np.save(tmp_path / 'images.npy', images)
  script = (
      'import sys\n'
      'sys.modules["minc_tf"] = None  # any import of minc_tf now fails\n'
      'import numpy as np, tensorflow as tf\n'
      f'm = tf.saved_model.load({str(tmp_path / "export")!r})\n'
      f'x = np.load({str(tmp_path / "images.npy")!r})\n'
      f'np.save({str(tmp_path / "served.npy")!r}, m.serve(tf.constant(x)).numpy())\n'
      'import keras\n'
      f'k = keras.saving.load_model({str(tmp_path / "export" / "encoder.keras")!r})\n'
      f'np.save({str(tmp_path / "keras.npy")!r}, k.predict(x, verbose=0))\n')
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  proc = subprocess.run([sys.executable, '-c', script], cwd=str(tmp_path), env=env, timeout=300,
                        capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-3000:]
  served = np.load(tmp_path / 'served.npy')
  assert served.dtype == np.float32 and served.shape == (16, results['feature_dim'])
  # The in-memory encoder: the checkpoint loaded into a freshly built model.
  gin.clear_config()
  config.parse_gin(['gin/quickstart.gin'], ['build_encoder.base_width = 8', 'run.verbose = 0'])
  data = data_lib.load_data()
  from minc_tf import model as model_lib
  model = model_lib.build_model(data.image_shape, num_classes=10)
  model.load_weights(f'{model_dir}/{run_dir.CHECKPOINT}')
  x = (images.astype(np.float32) / 255.0 - data.mean[0]) / data.std[0]
  expected = model.encoder(x, training=False).numpy()
  np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.load(tmp_path / 'keras.npy'), expected, rtol=1e-5, atol=1e-5)
  loaded = tf.saved_model.load(f'{model_dir}/export')  # referenced: it owns the variables
  in_memory = loaded.serve(tf.constant(images)).numpy()
  np.testing.assert_allclose(in_memory, expected, rtol=1e-5, atol=1e-5)


def test_missing_imagenet_names_data_dir_and_fix(tmp_path):
  empty = tmp_path / 'tfds'
  empty.mkdir()
  proc = cli('--gin_file=gin/minc.gin', f'--model_dir={tmp_path / "run"}',
             f"--gin_bindings=load_data.data_dir='{empty}'")
  assert proc.returncode == 2
  assert str(empty) in proc.stderr and 'downloads/manual' in proc.stderr
  assert 'tfds build imagenet2012' in proc.stderr and 'Traceback' not in proc.stderr


def test_gin_typo_is_answered_with_a_suggestion(tmp_path):
  proc = cli('--gin_file=gin/quickstart.gin', f'--model_dir={tmp_path}',
             '--gin_bindings=run.global_batch_sise=64')
  assert proc.returncode == 2
  assert 'global_batch_sise' in proc.stderr and 'global_batch_size' in proc.stderr
  assert 'Traceback' not in proc.stderr


def test_missing_gin_file_is_a_clear_error(tmp_path):
  proc = cli('--gin_file=gin/nope.gin', f'--model_dir={tmp_path}')
  assert proc.returncode == 2 and 'gin/nope.gin does not exist' in proc.stderr
  assert 'minc.gin' in proc.stderr and 'Traceback' not in proc.stderr


def test_eval_without_checkpoint_is_a_clear_error(tmp_path):
  proc = cli('--gin_file=gin/quickstart.gin', f'--model_dir={tmp_path}', '--mode=eval')
  assert proc.returncode == 2 and 'No checkpoint in' in proc.stderr
  assert 'train first' in proc.stderr
  assert 'Traceback' not in proc.stderr
