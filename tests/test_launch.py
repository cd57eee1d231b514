"""launch/: the scripts parse (bash -n), pass shellcheck where it is installed, and build a
valid TF_CONFIG for multi-worker runs."""

import glob
import json
import os
import shutil
import subprocess

import pytest

from conftest import REPO

SCRIPTS = sorted(glob.glob(os.path.join(REPO, 'launch', '*.sh')) +
                 glob.glob(os.path.join(REPO, 'bench', '*.sh')))


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
  # The GPU host loop after the experiment: one step per call (Keras' multi-step loop fails
  # under a mirrored strategy; strategy.check_host_loop), so a SIGTERM is acted on at the next
  # step.
  assert '--gin_file=gin/minc.gin --gin_file=gin/gpu_cluster.gin ' in out[1]
  import gin
  from minc_tf import config
  gin.clear_config()
  try:
    config.parse_gin(['gin/minc.gin', 'gin/gpu_cluster.gin'], [])
    run = gin.get_bindings('run')
    linear = gin.get_bindings('offline_linear_eval')
  finally:
    gin.clear_config()
  assert run['steps_per_execution'] == 1 and linear['steps_per_execution'] == 1


# A zone's TPU runtime images as `gcloud compute tpus tpu-vm versions list` names them: the TF
# names of Google's runtimes page and public launch scripts (2.18 is built per chip family:
# -v5p-and-below, -v5e-and-v6), with the JAX / PyTorch images beside them.
VERSIONS = os.path.join(REPO, 'tests', 'tpu_versions.txt')


def dry_run(script, *args, **env):
  """The commands `script` would run (DRY_RUN=1), each as its argv list."""
  import shlex
  env = dict(dict(os.environ, PROJECT='p', ZONE='z', TPU='minc-tpu', BUCKET='gs://b', RUN='r',
                  DRY_RUN='1', TPU_VERSIONS_FILE=VERSIONS), **env)
  out = subprocess.run(['bash', os.path.join(REPO, 'launch', script), *args], env=env,
                       capture_output=True, text=True, check=True).stdout
  return [shlex.split(line) for line in out.splitlines() if line.startswith(('gcloud', 'tens'))]


def remote(argv):
  """The command line a `gcloud ... ssh --command=...` runs on the TPU host, and the worker."""
  flags = dict(a[2:].split('=', 1) for a in argv if a.startswith('--') and '=' in a)
  return flags['command'], flags['worker']


@pytest.mark.parametrize('script,pod', [('tpu_vm.sh', False), ('tpu_pod.sh', True)])
def test_tpu_launch_runs_tensorflow_as_google_runs_it(script, pod):
  """A published TF runtime image of the supported TF version; the image's TensorFlow kept;
  one client on worker 0 (a pod: the TPU's name and TPU_LOAD_LIBRARY=0; a single host:
  --tpu=local and the PJRT environment of Google's CI)."""
  [create] = dry_run(script, 'create')
  image = ('tpu-vm-tf-2.18.0-pod-pjrt-v5p-and-below' if pod
           else 'tpu-vm-tf-2.18.0-pjrt-v5p-and-below')
  assert create[:5] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'create']
  assert f'--version={image}' in create
  assert f'--accelerator-type={"v4-32" if pod else "v4-8"}' in create
  # The source: this working tree's HEAD copied over, or a git URL the user names.
  scp, install = dry_run(script, 'install')
  assert scp[:5] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'scp'] and '--worker=0' in scp
  command, worker = remote(install)
  assert worker == '0' and command.startswith('rm -rf minc_tf && tar xzf minc_tf.tar.gz && ')
  # No TensorFlow of its own: every installed package but Keras constrains pip (TensorFlow,
  # libtpu and their numpy, protobuf, ...), then TF is checked.
  assert ("python3 -m pip list --format=freeze | grep -viE '^keras==' > ~/image_packages.txt"
          in command)
  assert 'python3 -m pip install -e . -c ~/image_packages.txt' in command
  assert 'tf.__version__ == "2.18.0"' in command and 'tensorflow-tpu==' not in command
  [install] = dry_run(script, 'install', REPO='https://example.org/me/minc_tf.git')
  command, _ = remote(install)
  assert command.startswith('(git clone https://example.org/me/minc_tf.git minc_tf || '
                            '(cd minc_tf && git pull)) && cd minc_tf && python3 -m pip list')
  [train] = dry_run(script, 'train', '--gin_bindings=run.epochs=1')
  command, worker = remote(train)
  assert worker == '0'
  assert '--strategy=tpu' in command and '--model_dir=gs://b/runs/r' in command
  # The slice's own gin file (a batch that fits), after the experiment's.
  topology = 'gin/tpu_v4_32.gin' if pod else 'gin/tpu_v4_8.gin'
  assert f'--gin_file=gin/minc.gin --gin_file={topology} ' in command
  assert '--gin_bindings=run.epochs=1' in command
  assert f'TPU_ACCELERATOR_TYPE={"v4-32" if pod else "v4-8"} ' in command  # the HBM check
  assert '> ~/train_r.log' in command  # outside the source tree a reinstall replaces
  pjrt = ('NEXT_PLUGGABLE_DEVICE_USE_C_API=true '
          'TF_PLUGGABLE_DEVICE_LIBRARY_PATH=/lib/libtpu.so ')
  if pod:
    assert '--tpu=minc-tpu' in command and 'TPU_LOAD_LIBRARY=0 ' in command
    assert 'NEXT_PLUGGABLE' not in command
  else:
    assert '--tpu=local' in command and 'TPU_LOAD_LIBRARY' not in command and pjrt in command
  [board] = dry_run(script, 'tensorboard')
  assert board == ['tensorboard', '--logdir', 'gs://b/runs']
  [delete] = dry_run(script, 'delete')
  assert delete[4] == 'delete' and '--quiet' in delete


def launch_error(script, *args, **env):
  """(exit status, stderr) of a DRY_RUN of `script` expected to stop."""
  env = dict(dict(os.environ, PROJECT='p', ZONE='z', TPU='t', BUCKET='gs://b', DRY_RUN='1',
                  TPU_VERSIONS_FILE=VERSIONS), **env)
  proc = subprocess.run(['bash', os.path.join(REPO, 'launch', script), *args], env=env,
                        capture_output=True, text=True)
  assert not proc.stdout.startswith('gcloud'), proc.stdout  # nothing was created
  return proc.returncode, proc.stderr


def test_tpu_create_takes_a_published_image_or_stops_naming_them():
  def image(**env):
    [create] = dry_run('tpu_vm.sh', 'create', **env)
    return [a.split('=', 1)[1] for a in create if a.startswith('--version=')][0]
  # The chip family picks 2.18's build; versions without families have one image each.
  assert image(ACCELERATOR='v5litepod-8') == 'tpu-vm-tf-2.18.0-pjrt-v5e-and-v6'
  assert image(ACCELERATOR='v5litepod-64', POD='1') == 'tpu-vm-tf-2.18.0-pod-pjrt-v5e-and-v6'
  assert image(TF_VERSION='2.17.0') == 'tpu-vm-tf-2.17.0-pjrt'
  assert image(TF_VERSION='2.17.0', POD='1') == 'tpu-vm-tf-2.17.0-pod-pjrt'
  assert image(VERSION='tpu-vm-tf-2.16.1-pjrt') == 'tpu-vm-tf-2.16.1-pjrt'
  # TensorFlow 2.20 has a tensorflow-tpu wheel but no published image here.
  status, err = launch_error('tpu_vm.sh', 'create', TF_VERSION='2.20.0')
  assert status == 2 and 'No TensorFlow 2.20.0 TPU image for v4-8 is published in zone z' in err
  assert 'tpu-vm-tf-2.18.0-pjrt-v5e-and-v6' in err and 'tpu-ubuntu2204-base' not in err
  assert 'Fix: set TF_VERSION to one of them' in err
  status, err = launch_error('tpu_vm.sh', 'create', VERSION='tpu-vm-tf-2.20.0-pjrt')
  assert status == 2 and 'tpu-vm-tf-2.20.0-pjrt is not published in zone z' in err
  # Trillium gets the v5e-and-v6 image, with a warning that nothing here is tested on it.
  env = dict(os.environ, PROJECT='p', ZONE='z', TPU='t', BUCKET='gs://b', DRY_RUN='1',
             TPU_VERSIONS_FILE=VERSIONS, ACCELERATOR='v6e-8')
  proc = subprocess.run(['bash', os.path.join(REPO, 'launch', 'tpu_vm.sh'), 'create'], env=env,
                        capture_output=True, text=True, check=True)
  assert '--version=tpu-vm-tf-2.18.0-pjrt-v5e-and-v6' in proc.stdout
  assert 'v6e-8 (v6e) is untested' in proc.stderr and 'smoke' in proc.stderr, proc.stderr
  assert 'untested' not in launch_error('tpu_vm.sh', 'create', TF_VERSION='2.20.0')[1]
  empty = os.devnull
  status, err = launch_error('tpu_vm.sh', 'create', TPU_VERSIONS_FILE=empty)
  assert status == 2 and 'Could not list the TPU runtime images of zone z' in err


def test_smoke_runs_the_recipe_small_on_one_host_under_its_own_name():
  [train] = dry_run('tpu_vm.sh', 'smoke', RUN='')
  command, _ = remote(train)
  assert '--gin_file=gin/minc.gin --gin_file=gin/smoke_tpu.gin ' in command
  assert '--model_dir=gs://b/runs/smoke_minc_v4-8 ' in command  # never the real run's dir
  status, err = launch_error('tpu_pod.sh', 'smoke')
  assert status == 2 and 'smoke runs on a single host' in err
  # Its settings: B = 256 for 100 steps, host loops that divide their steps, and the batch
  # passes the HBM check of a v4-8 (runtime.check_accelerator_memory on the real model).
  import gin
  import keras
  import types
  from minc_tf import config
  from minc_tf import model as model_lib
  from minc_tf import runtime
  gin.clear_config()
  config.parse_gin(['gin/minc.gin', 'gin/smoke_tpu.gin'], [])
  run = gin.get_bindings('run')
  linear = gin.get_bindings('offline_linear_eval')
  assert (run['global_batch_size'], run['epochs'], run['steps_per_epoch']) == (256, 1, 100)
  assert run['steps_per_epoch'] % run['steps_per_execution'] == 0
  assert run['steps_per_epoch'] > run['checkpoint_every_steps']  # a resumable checkpoint
  assert linear['steps_per_epoch'] % linear['steps_per_execution'] == 0
  keras.mixed_precision.set_global_policy(run['mixed_precision'])
  try:
    model = model_lib.build_model((224, 224, 3), num_classes=1000)
    runtime.check_accelerator_memory(model, types.SimpleNamespace(num_replicas_in_sync=4),
                                     run['global_batch_size'], run['mixed_precision'], 'v4-8')
  finally:
    keras.mixed_precision.set_global_policy('float32')
    gin.clear_config()


def test_tpu_install_matches_the_packaged_tpu_extra():
  """The launch's TF version, setup.py's tpu extra (for images without TensorFlow: its
  tensorflow-tpu pins libtpu exactly) and the supported range name one version."""
  with open(os.path.join(REPO, 'setup.py')) as f:
    setup_py = f.read()
  assert "'tpu': ['tensorflow-tpu==2.18.0']" in setup_py
  assert "TF_RANGE = '>=2.18,<2.22'" in setup_py
  _, install = dry_run('tpu_vm.sh', 'install')
  assert 'tf.__version__ == "2.18.0"' in remote(install)[0]


def test_a_rerun_of_the_same_command_names_the_same_run_and_a_slice_without_gin_stops():
  names = set()
  for _ in range(2):
    [train] = dry_run('tpu_vm.sh', 'train', RUN='')
    names.add(remote(train)[0].split('--model_dir=')[1].split()[0])
  assert names == {'gs://b/runs/minc_v4-8'}
  env = dict(os.environ, PROJECT='p', ZONE='z', TPU='t', BUCKET='gs://b', DRY_RUN='1',
             ACCELERATOR='v4-2048')
  proc = subprocess.run(['bash', os.path.join(REPO, 'launch', 'tpu_vm.sh'), 'train'], env=env,
                        capture_output=True, text=True)
  assert proc.returncode == 2 and 'No gin/tpu_v4_2048.gin for ACCELERATOR=v4-2048' in proc.stderr
  # Only training needs it: create, tensorboard and delete work for any slice.
  [delete] = dry_run('tpu_vm.sh', 'delete', ACCELERATOR='v4-2048')
  assert delete[4] == 'delete'


def test_accelerator_check_stops_at_once_without_a_gpu(tmp_path):
  """An nvidia-smi that finds no GPU (as on a host without one, whatever this one has): a
  message and exit 3 before anything is installed."""
  fake = tmp_path / 'nvidia-smi'
  fake.write_text('#!/bin/sh\necho "NVIDIA-SMI has failed" >&2\nexit 9\n')
  fake.chmod(0o755)
  env = dict(os.environ, PATH=f'{tmp_path}:{os.environ["PATH"]}', VENV=str(tmp_path / 'venv'))
  proc = subprocess.run(['bash', os.path.join(REPO, 'bench', 'accelerator_check.sh')], env=env,
                        capture_output=True, text=True, timeout=30)
  assert proc.returncode == 3 and 'no NVIDIA GPU here' in proc.stderr, proc.stderr
  assert not (tmp_path / 'venv').exists()
