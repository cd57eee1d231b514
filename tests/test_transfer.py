"""transfer.py end to end on small real data: a finished run's encoder evaluated and fine-tuned
on an image folder of other classes, image size and class count, through the CLI."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from cli_cases import argv, cli, idx_dir, launch, run_dir, trained  # noqa: F401
from minc_tf import transfer
from minc_tf.errors import UserError


def _folder(root, classes=3, per_class=12, size=20, channels=1):
  """Classes told apart by brightness (crops and flips keep it), at another size."""
  rng = np.random.default_rng(0)
  for c in range(classes):
    (root / f'class{c}').mkdir(parents=True)
    for i in range(per_class):
      level = 40 + 80 * c
      img = np.clip(level + 20 * rng.normal(size=(size, size, channels)), 0, 255).astype(np.uint8)
      (root / f'class{c}' / f'{i}.png').write_bytes(tf.io.encode_png(img).numpy())
  return root


def _args(source, model_dir, folder, *extra, mode='transfer'):
  return ['minc_tf', f'--mode={mode}', f'--source_dir={source}', f'--model_dir={model_dir}',
          "--gin_bindings=load_data.name='image_folder'",
          f"--gin_bindings=load_data.image_dir='{folder}'", '--gin_bindings=load_data.channels=1',
          '--gin_bindings=load_data.image_size=20', '--gin_bindings=load_data.eval_every=4',
          '--gin_bindings=offline_linear_eval.epochs=4',
          '--gin_bindings=offline_linear_eval.batch_size=8',
          '--gin_bindings=offline_linear_eval.base_learning_rate=20.0',
          '--gin_bindings=transfer.eval_batch_size=10', *extra]


def test_a_finished_encoder_transfers_to_other_classes_and_size(run_dir, tmp_path, cli):
  folder = _folder(tmp_path / 'images')
  code, out = cli(_args(run_dir, tmp_path / 'transfer', folder))
  assert code == 0, out[-2000:]
  with open(tmp_path / 'transfer' / 'results.json') as f:
    res = json.load(f)
  assert res['num_classes'] == 3 and res['image_size'] == 20 and res['source_step'] == 6
  assert res['feature_dim'] == 16  # the source encoder's (base width 4, 3 stages: 4 x 4)
  # Brightness classes: the transferred features separate them far above chance (33%).
  assert res['probe_top1'] >= 60 and res['knn_top1'] >= 60, res
  assert res['linear_eval_top1'] >= 60 and 'raw_pixel_top1' in res, res
  assert not any(n.startswith('backup_') for n in os.listdir(tmp_path / 'transfer'))  # removed
  # The source run is untouched (its own results, no transfer figures).
  with open(os.path.join(run_dir, 'results.json')) as f:
    assert 'source_dir' not in json.load(f)
  # Fine-tuning: the encoder trained end to end, a figure of its own (2 replicas: below).
  code, out = cli(_args(run_dir, tmp_path / 'tuned', folder, '--gin_bindings=fine_tune.epochs=8',
                        '--gin_bindings=fine_tune.batch_size=8',
                        '--gin_bindings=fine_tune.base_learning_rate=0.5',
                        '--gin_bindings=transfer.linear_eval=False', mode='fine_tune'))
  assert code == 0, out[-2000:]
  with open(tmp_path / 'tuned' / 'results.json') as f:
    tuned = json.load(f)
  assert tuned['finetune_top1'] >= 60 and 'linear_eval_top1' not in tuned, tuned
  # A bad fine-tuning setting stops before the evaluation starts.
  code, out = cli(_args(run_dir, tmp_path / 'bad', folder, '--gin_bindings=fine_tune.epochs=0',
                        mode='fine_tune'))
  assert code == 2 and 'fine_tune.epochs = 0' in out and not (tmp_path / 'bad').exists()


def test_transfer_refuses_what_cannot_work(run_dir, tmp_path, cli):
  folder = _folder(tmp_path / 'images')
  code, out = cli(_args(tmp_path / 'nothing', tmp_path / 'a', folder))
  assert code == 2 and 'has no exported encoder' in out and '--mode=export' in out
  code, out = cli(_args(run_dir, tmp_path / 'b', folder, '--gin_bindings=load_data.channels=3'))
  assert code == 2 and 'takes 1-channel images; this dataset has 3' in out
  code, out = cli(_args(run_dir, run_dir, folder))
  assert code == 2 and '--model_dir is the --source_dir' in out
  code, out = cli(['minc_tf', '--mode=transfer', f'--model_dir={tmp_path / "c"}'])
  assert code == 2 and 'needs --source_dir' in out
  assert not any(os.path.exists(tmp_path / d) for d in 'abc')


def test_the_exported_encoder_is_rebuilt_for_any_size_with_its_own_weights(run_dir):
  import keras
  encoder, mean, std, step = transfer.load_encoder(run_dir, 1)
  serving = keras.models.load_model(os.path.join(run_dir, 'export', 'encoder.keras'))
  images = np.random.default_rng(0).integers(0, 256, (4, 28, 28, 1)).astype(np.uint8)
  normalised = (images / 255.0 - np.asarray(mean)) / np.asarray(std)
  np.testing.assert_allclose(encoder(normalised.astype(np.float32), training=False),
                             serving(images), rtol=1e-4, atol=1e-5)
  assert encoder(np.zeros((2, 40, 36, 1), np.float32)).shape == (2, 16) and step == 6
  with pytest.raises(UserError, match='takes 1-channel images'):
    transfer.load_encoder(run_dir, 3)


def test_fine_tuning_trains_on_two_replicas(run_dir, tmp_path, mirrored):
  """transfer.run under the session's MirroredStrategy (a second one in the process would
  share its collective keys): the encoder is built in the strategy's scope and trains."""
  import gin
  from minc_tf import config
  from minc_tf import data as data_lib
  folder = _folder(tmp_path / 'images')
  config.parse_gin([], ["load_data.name = 'image_folder'", f"load_data.image_dir = '{folder}'",
                        'load_data.channels = 1', 'load_data.image_size = 20',
                        'load_data.eval_every = 4', 'fine_tune.epochs = 8',
                        'fine_tune.batch_size = 8', 'fine_tune.base_learning_rate = 0.5'])
  data = data_lib.load_data()
  res = transfer.run(str(tmp_path / 'tuned'), run_dir, mirrored, data,
                     eval_batch_size=10, baselines=False, linear_eval=False, fine_tuning=True)
  gin.clear_config()
  assert res['finetune_top1'] >= 60, res
  # The views were normalised as the encoder was trained, not with the folder's defaults.
  _, mean, std, _ = transfer.load_encoder(run_dir, 1)
  assert (data.mean, data.std) == (mean, std) and mean != (0.5,)


def test_a_finished_encoder_transfers_to_a_tfds_dataset(run_dir, tmp_path):
  """The TFDS path of transfer (a dataset by name: here TFDS' mock of mnist, PNG-encoded
  28 x 28 x 1, 10 classes, random labels): every phase runs on the TFDS source and reports
  figures of its split; the example counts are the mock's."""
  import gin
  import tensorflow_datasets as tfds
  from minc_tf import config
  from minc_tf import data as data_lib
  config.parse_gin([], ["load_data.name = 'mnist'", 'load_data.image_size = 28',
                        "load_data.eval_split = 'test'", 'load_data.num_train = 40',
                        'offline_linear_eval.epochs = 1', 'offline_linear_eval.batch_size = 8',
                        'offline_linear_eval.steps_per_epoch = 2'])
  try:
    with tfds.testing.mock_data(num_examples=40):
      data = data_lib.load_data()
      res = transfer.run(str(tmp_path / 'tfds'), run_dir, tf.distribute.get_strategy(), data,
                         eval_batch_size=16, baselines=False)
  finally:
    gin.clear_config()
  assert res['num_classes'] == 10 and res['image_size'] == 28 and res['feature_dim'] == 16
  for key in ('probe_top1', 'knn_top1', 'linear_eval_top1'):
    assert 0.0 <= res[key] <= 100.0, res  # chance-level: the mock's labels are random
    # Scored on the mock's 40 test images: every figure is a whole number of them.
    assert abs(res[key] * 40 / 100 - round(res[key] * 40 / 100)) < 1e-6, (key, res[key])
  assert os.path.exists(tmp_path / 'tfds' / 'results.json')
