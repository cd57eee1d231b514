"""launch/: the scripts parse (bash -n), pass shellcheck where it is installed, and build a
valid TF_CONFIG for multi-worker runs."""

import glob
import json
import os
import shutil
import subprocess

import pytest

from conftest import REPO

SCRIPTS = sorted(glob.glob(os.path.join(REPO, 'launch', '*.sh')))


def test_there_are_launch_scripts_for_tpu_vm_pod_and_gpu_cluster():
  names = {os.path.basename(s) for s in SCRIPTS}
  assert {'tpu_vm.sh', 'tpu_pod.sh', 'gpu_multi_worker.sh'} <= names


@pytest.mark.parametrize('script', SCRIPTS, ids=os.path.basename)
def test_bash_syntax(script):
  subprocess.run(['bash', '-n', script], check=True)


@pytest.mark.skipif(shutil.which('shellcheck') is None, reason='shellcheck not installed')
def test_shellcheck_clean():
  proc = subprocess.run(['shellcheck', *SCRIPTS], capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout


def test_gpu_multi_worker_builds_tf_config(tmp_path):
  fake_python = tmp_path / 'python3'
  fake_python.write_text('#!/usr/bin/env bash\necho "$TF_CONFIG"\necho "$@"\n')
  fake_python.chmod(0o755)
  env = dict(os.environ, PATH=f'{tmp_path}:{os.environ["PATH"]}', HOSTS='h0:2222,h1:2222',
             INDEX='1', MODEL_DIR='gs://b/run', DATA_DIR='gs://b/tfds')
  out = subprocess.run(['bash', os.path.join(REPO, 'launch', 'gpu_multi_worker.sh'),
                        '--gin_bindings=run.epochs=1'], env=env, capture_output=True, text=True,
                       check=True).stdout.splitlines()
  config = json.loads(out[0])
  assert config == {'cluster': {'worker': ['h0:2222', 'h1:2222']},
                    'task': {'type': 'worker', 'index': 1}}
  assert '--strategy=multi_worker' in out[1] and '--model_dir=gs://b/run' in out[1]
  assert '--gin_bindings=run.epochs=1' in out[1]
