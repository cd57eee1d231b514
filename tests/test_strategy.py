"""strategy.py: selection by name, clear errors, and MultiWorkerMirroredStrategy for real."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from minc_tf import strategy as strategy_lib
from minc_tf.errors import UserError
from helpers import free_ports

HERE = os.path.dirname(os.path.abspath(__file__))


def test_default_and_mirrored():
  assert strategy_lib.get_strategy('default').num_replicas_in_sync == 1
  assert strategy_lib.get_strategy('mirrored').num_replicas_in_sync == 2  # 2 logical CPUs


def test_mirrored_on_a_gpu_host_with_a_cpu_only_tensorflow_is_an_error(monkeypatch):
  """tensorflow-cpu on a GPU host used to mirror over the CPU without a word."""
  monkeypatch.setattr(strategy_lib, 'host_has_nvidia_gpu', lambda: True)
  with pytest.raises(UserError, match=r"TensorFlow sees none .* pip install -e '.\[gpu\]'"):
    strategy_lib.get_strategy('mirrored')


def test_tpu_without_name_and_unknown_strategy_are_clear_errors():
  with pytest.raises(UserError, match='--tpu'):
    strategy_lib.get_strategy('tpu')
  with pytest.raises(UserError, match='Unknown --strategy'):
    strategy_lib.get_strategy('horovod')


def test_two_workers_train_like_one_process_on_the_same_global_batches(tmp_path):
  job = os.path.join(HERE, 'multi_worker_job.py')
  env = {k: v for k, v in os.environ.items() if k != 'TF_CONFIG'}
  subprocess.run([sys.executable, job, str(tmp_path / 'single.npz')], check=True, env=env,
                 timeout=300)
  cluster = {'worker': [f'localhost:{p}' for p in free_ports(2)]}
  procs = []
  for i in range(2):
    wenv = dict(env, TF_CONFIG=json.dumps({'cluster': cluster,
                                            'task': {'type': 'worker', 'index': i}}))
    procs.append(subprocess.Popen([sys.executable, job, str(tmp_path / f'worker{i}.npz')],
                                  env=wenv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
  for p in procs:
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out.decode()[-3000:]
  single = np.load(tmp_path / 'single.npz')
  w0, w1 = np.load(tmp_path / 'worker0.npz'), np.load(tmp_path / 'worker1.npz')
  assert len(single.files) == len(w0.files) > 10
  for name in single.files:
    np.testing.assert_array_equal(w0[name], w1[name])  # the workers agree exactly ...
    np.testing.assert_allclose(w0[name], single[name], rtol=1e-4, atol=1e-5)  # ... with one process.


@pytest.mark.parametrize('text, message', [
    (None, 'TF_CONFIG, which is unset'),
    ('{"cluster": ', 'TF_CONFIG is not JSON'),
    ('{"task": {"type": "worker", "index": 0}}', 'no cluster of workers'),
    ('{"cluster": {"worker": ["host0"]}, "task": {"type": "worker", "index": 0}}',
     "list of 'host:port' strings"),
    ('{"cluster": {"worker": ["h:1", "h:2"]}, "task": {"type": "ps", "index": 0}}',
     "task must name one of the cluster's kinds"),
    ('{"cluster": {"worker": ["h:1", "h:2"]}, "task": {"type": "worker", "index": 2}}',
     'task index 2 is not one of the 2 workers'),
])
def test_a_bad_tf_config_is_refused_with_the_fix(text, message):
  with pytest.raises(UserError, match=message) as e:
    strategy_lib.check_tf_config(text)
  assert 'export TF_CONFIG=' in str(e.value)


def test_a_good_tf_config_passes():
  strategy_lib.check_tf_config(json.dumps({'cluster': {'chief': ['h:1'], 'worker': ['h:2']},
                                           'task': {'type': 'chief', 'index': 0}}))


def test_multi_worker_all_reduces_use_nccl_where_there_are_gpus():
  import tensorflow as tf
  impl = tf.distribute.experimental.CommunicationImplementation
  assert strategy_lib.multi_worker_communication(gpus=['GPU:0']).implementation == impl.NCCL
  assert strategy_lib.multi_worker_communication(gpus=[]).implementation == impl.AUTO
  assert strategy_lib.multi_worker_communication().implementation == impl.AUTO  # this CPU host
