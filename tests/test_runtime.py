"""runtime.py: the evaluation's host memory, counted and checked before pretraining."""

import gin
import numpy as np
import pytest

from minc_tf import data as data_lib
from minc_tf import runtime
from minc_tf.errors import UserError


def test_evaluation_bytes_count_features_copies_knn_and_the_baselines():
  # 64 features, 1000 training and 200 held-out images: the probe's features and standardised
  # copies 4 * 64 * (2 * 1000 + 2 * 200); kNN 8 * 50 * 1000 (similarities and top-k of a
  # chunk of 50 queries); with baselines the training features stay while the larger of the
  # random encoder's (64) and the raw pixels' (100 per image) probes runs.
  base = 4 * 64 * 2400
  assert runtime.evaluation_bytes(64, 1000, 200, 100, False, 0) == base
  assert runtime.evaluation_bytes(64, 1000, 200, 100, False, 50) == base + 400000
  assert runtime.evaluation_bytes(64, 1000, 200, 100, True, 0) == (
      base + 4 * 64 * 1000 + 4 * 100 * 2400)
  assert runtime.evaluation_bytes(64, 1000, 200, 0, True, 0) == 2 * base + 4 * 64 * 1000


def _data(n_train=300, n_test=100):
  rng = np.random.default_rng(0)
  arrays = {s: (rng.integers(0, 255, (n, 8, 8, 1)).astype(np.uint8), rng.integers(0, 2, n))
            for s, n in (('train', n_train), ('test', n_test))}
  return data_lib.ImageData('tiny', 8, 1, 2, n_train, (0.5,), (0.25,), arrays=arrays,
                            eval_split='test')


def test_an_evaluation_beyond_the_host_memory_is_refused_with_a_cap_that_fits(monkeypatch):
  gin.clear_config()
  data = _data()
  # 300 training and 100 held-out images of 16 features, 64 pixels, kNN chunk 1024 (default).
  need = runtime.evaluation_bytes(16, 300, 100, 64, True, 1024)
  monkeypatch.setattr(runtime, 'host_ram', lambda: need)
  runtime.check_evaluation_memory(16, data, None, None, True, True, False)  # just fits
  monkeypatch.setattr(runtime, 'host_ram', lambda: need - 1)
  with pytest.raises(UserError, match=r'300 training and 100 held-out images, 16 features '
                                      r'each, and their raw pixels.*run.eval_train_examples'):
    runtime.check_evaluation_memory(16, data, None, None, True, True, False)
  # The caps the message names are what the count reads.
  capped = runtime.evaluation_bytes(16, 100, 50, 64, True, 1024)
  monkeypatch.setattr(runtime, 'host_ram', lambda: capped)
  runtime.check_evaluation_memory(16, data, 100, 50, True, True, False)
  with pytest.raises(UserError):
    runtime.check_evaluation_memory(16, data, 101, 50, True, True, False)
  # kNN's bound chunk is read from gin.
  gin.parse_config('knn_accuracy.chunk = 1')
  runtime.check_evaluation_memory(16, data, 101, 50, True, True, False)
  gin.clear_config()


def test_largest_fitting_batch_is_a_power_of_two_per_replica():
  # 1000 values per view, 2 bytes, 2 views: 4000 bytes per image; 1e6 bytes -> 250 -> 128.
  assert runtime.largest_fitting_batch(1000, 2, 1e6, 4) == 4 * 128
  assert runtime.largest_fitting_batch(1000, 2, 10, 4) == 4  # at least one image each


def test_each_tpu_slice_config_fits_and_the_recipe_batch_is_refused_on_a_v4_8():
  """Every gin/tpu_*.gin on gin/minc.gin: its batch passes the HBM check of its slice and its
  host loop divides the epoch; B = 4096 on a v4-8 (1024 images per chip, ~144 GiB) stops
  with the batch that fits."""
  import glob
  import os
  import types
  import keras
  from minc_tf import config
  from minc_tf import model as model_lib
  from conftest import REPO
  config.parse_gin(['gin/minc.gin'], [])
  keras.mixed_precision.set_global_policy('mixed_bfloat16')
  model = model_lib.build_model((224, 224, 3), num_classes=1000)
  files = sorted(glob.glob(os.path.join(REPO, 'gin', 'tpu_*.gin')))
  assert len(files) == 3
  devices = {'v4_8': 4, 'v4_32': 16, 'v5litepod_64': 64}
  for path in files:
    name = os.path.basename(path)[4:-4]
    gin.clear_config()
    config.parse_gin(['gin/minc.gin', path], [])
    run = gin.get_bindings('run')
    strategy = types.SimpleNamespace(num_replicas_in_sync=devices[name])
    runtime.check_accelerator_memory(model, strategy, run['global_batch_size'],
                                     run['mixed_precision'], name.replace('_', '-'))
    assert (1281167 // run['global_batch_size']) % run['steps_per_execution'] == 0, name
    # Twice the batch would not fit by the same count: each file takes the largest that does.
    with pytest.raises(UserError):
      runtime.check_accelerator_memory(model, strategy, 2 * run['global_batch_size'],
                                       run['mixed_precision'], name.replace('_', '-'))
  with pytest.raises(UserError, match=r'1024 images .* 4 TPU devices of this v4-8: about 144 '
                                      r'GiB .* 32 GiB .* run.global_batch_size = 512'):
    runtime.check_accelerator_memory(model, types.SimpleNamespace(num_replicas_in_sync=4), 4096,
                                     'mixed_bfloat16', 'v4-8')
  # Off the TPU: nothing is checked.
  runtime.check_accelerator_memory(model, types.SimpleNamespace(num_replicas_in_sync=1), 4096,
                                   None, '')
  gin.clear_config()
