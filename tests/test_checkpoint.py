"""Reliability: real kills (SIGKILL, SIGTERM) and restarts, the NaN guard, corrupt-checkpoint
fallback, and determinism under a seed."""

import glob
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO
from minc_tf import checkpoint
from minc_tf import config
from minc_tf import model as model_lib
from minc_tf import optim
from helpers import write_idx
from helpers import free_ports

STEPS_PER_EPOCH, EPOCHS = 10, 3
PLANNED = STEPS_PER_EPOCH * EPOCHS


@pytest.fixture(scope='module')
def learnable_fmnist(tmp_path_factory):
  """Fake Fashion-MNIST whose classes are bright squares at different places: learnable."""
  root = tmp_path_factory.mktemp('fmnist')
  rng = np.random.default_rng(0)
  for split, n in (('train', 512), ('t10k', 128)):
    labels = rng.integers(0, 4, n)
    images = rng.integers(0, 60, (n, 28, 28))
    for i, label in enumerate(labels):
      r, c = divmod(int(label), 2)
      images[i, 4 + 12 * r:12 + 12 * r, 4 + 12 * c:12 + 12 * c] = 250
    write_idx(root / f'{split}-images-idx3-ubyte.gz', images)
    write_idx(root / f'{split}-labels-idx1-ubyte.gz', labels)
  return root


def bindings(idx_dir, extra=()):
  return ['--gin_file=gin/quickstart.gin',
          f"--gin_bindings=load_data.idx_dir='{idx_dir}'",
          '--gin_bindings=build_encoder.base_width=8',
          '--gin_bindings=run.global_batch_size=64',
          f'--gin_bindings=run.steps_per_epoch={STEPS_PER_EPOCH}',
          f'--gin_bindings=run.epochs={EPOCHS}',
          '--gin_bindings=run.checkpoint_every_steps=2',
          '--gin_bindings=run.keep_checkpoints=100',
          '--gin_bindings=run.tensorboard_update_freq=1',
          '--gin_bindings=run.verbose=0', '--mode=train'] + list(extra)


def start(model_dir, idx_dir, extra=(), onednn=True):
  # oneDNN kernels are not bit-reproducible: the determinism tests turn them off.
  env = dict(os.environ, PYTHONPATH=REPO, TF_ENABLE_ONEDNN_OPTS='1' if onednn else '0')
  return subprocess.Popen([sys.executable, '-m', 'minc_tf.main', f'--model_dir={model_dir}',
                           *bindings(idx_dir, extra)], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def checkpoint_steps(model_dir):
  return sorted(int(p.split('ckpt-')[1].split('.')[0])
                for p in glob.glob(os.path.join(model_dir, 'checkpoints', 'ckpt-*.index')))


def batch_losses(model_dir):
  """{step: loss} from the TensorBoard batch-level scalars of every run in model_dir."""
  out = {}
  for path in glob.glob(os.path.join(model_dir, 'tensorboard', 'train', 'events.out.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      for v in event.summary.value:
        if v.tag == 'batch_loss':
          out[event.step] = float(tf.make_ndarray(v.tensor))
  return out


def kill_at_random_step(model_dir, idx_dir, sig, rng):
  done = checkpoint_steps(model_dir)
  target = rng.randint((done[-1] if done else 0) + 2, PLANNED - 4)
  proc = start(model_dir, idx_dir)
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    steps = checkpoint_steps(model_dir)
    if steps and steps[-1] >= target:
      break
    time.sleep(0.02)
  assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
  proc.send_signal(sig)
  out, _ = proc.communicate(timeout=120)
  return proc.returncode, out.decode()


# SIGKILL's resume is checked bit for bit in test_interrupted_runs_resume_bit_for_bit (a
# SIGKILL first here too was cut for suite time); SIGTERM's CLI resume in the two-worker test.
def test_ctrl_c_then_rerun_resumes_and_finishes_at_planned_step(tmp_path, learnable_fmnist):
  rng = random.Random(0)
  model_dir = str(tmp_path / 'run')
  code, out = kill_at_random_step(model_dir, learnable_fmnist, signal.SIGINT, rng)
  # Ctrl-C: saved at the end of the current step, a clean exit.
  assert code == 0 and 'Traceback' not in out, out[-2000:]
  results = json.load(open(os.path.join(model_dir, 'results.json')))
  assert results['preempted'] == 'SIGINT'
  assert results['final_step'] == checkpoint_steps(model_dir)[-1]
  proc = start(model_dir, learnable_fmnist)
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 0, out.decode()[-3000:]
  results = json.load(open(os.path.join(model_dir, 'results.json')))
  assert results['final_step'] == PLANNED and results['resumed_from_step'] > 0
  assert 'preempted' not in results

  # Every checkpoint on disk loads, with every object matched, and holds its own step.
  config.parse_gin(['gin/quickstart.gin'], ['build_encoder.base_width = 8'])
  model = model_lib.build_model((28, 28, 1), num_classes=10)
  model.compile(optimizer=optim.build_optimizer(64, STEPS_PER_EPOCH, EPOCHS))
  ckpt = checkpoint.Checkpointer(model, os.path.join(model_dir, 'checkpoints'))
  assert len(ckpt.paths) == len(checkpoint_steps(model_dir)) >= 4
  for path in ckpt.paths:
    assert ckpt.restore(path) == int(path.split('ckpt-')[1])

  # The loss curve continues: each resumed run starts near where the previous one stopped,
  # well below the first steps' loss.
  losses = batch_losses(model_dir)
  assert max(losses) == PLANNED
  first = np.mean([losses[s] for s in (1, 2) if s in losses])
  last = losses[PLANNED]
  assert last < first - 0.05, (first, last)


def run_cli(model_dir, idx_dir, extra=(), timeout=300, onednn=True):
  proc = start(model_dir, idx_dir, extra, onednn)
  out, _ = proc.communicate(timeout=timeout)
  return proc.returncode, out.decode()


def newest_checkpoint_value(model_dir, name):
  newest = f'ckpt-{checkpoint_steps(model_dir)[-1]}'
  return tf.train.load_checkpoint(os.path.join(model_dir, 'checkpoints', newest)).get_tensor(name)


def test_unwritable_model_dir_is_a_clear_error(tmp_path, learnable_fmnist):
  blocker = tmp_path / 'a_file'
  blocker.write_text('x')
  code, out = run_cli(str(blocker / 'run'), learnable_fmnist)
  assert code == 2 and 'is not writable' in out and 'Traceback' not in out


# --- Reproducibility: seeded runs and resumes, bit for bit -------------------------------------
# The quickstart's batch and width: on smaller ones the nondeterminism these tests guard
# against (concurrent ops, docs/reproducibility.md) did not show within 30 steps. MINC with its
# EMA target and an EMA summary, so that every kind of state is compared.
DET_STEPS, DET_EVERY = 7, 3  # the guard saves at 3, 6, 7 (epoch end), 10, 13, 14
DET_PLANNED = 2 * DET_STEPS
SEEDED = ['--gin_bindings=run.seed=7', '--gin_bindings=run.deterministic=True',
          '--gin_bindings=build_model.use_target=True',
          '--gin_bindings=build_model.summary_decay=0.99',
          '--gin_bindings=run.global_batch_size=256', '--gin_bindings=build_encoder.base_width=16',
          f'--gin_bindings=run.steps_per_epoch={DET_STEPS}', '--gin_bindings=run.epochs=2',
          f'--gin_bindings=run.checkpoint_every_steps={DET_EVERY}',
          '--gin_bindings=run.tensorboard_update_freq=100']


def start_seeded(model_dir, idx_dir, extra=()):
  return start(model_dir, idx_dir, SEEDED + list(extra), onednn=False)


def finish(proc, what='', timeout=600):
  out, _ = proc.communicate(timeout=timeout)
  assert proc.returncode == 0, (what, out.decode()[-3000:])


def training_state(model_dir):
  """Every variable of the newest checkpoint: weights, target, summary, BN statistics,
  optimizer slots and step, data seed."""
  newest = os.path.join(model_dir, 'checkpoints', f'ckpt-{checkpoint_steps(model_dir)[-1]}')
  reader = tf.train.load_checkpoint(newest)
  return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def assert_bit_identical(a, b, what=''):
  assert a.keys() == b.keys() and len(a) > 100
  # save_counter counts this directory's saves, not training: an interrupted run saved more.
  differ = [name for name in a if not np.array_equal(a[name], b[name]) and
            not name.startswith('save_counter')]
  assert not differ, f'{what}: {len(differ)} of {len(a)} variables differ, e.g. {differ[:3]}'


@pytest.fixture(scope='module')
def seeded_runs(tmp_path_factory, learnable_fmnist):
  """Three uninterrupted seeded runs side by side, so that each has other CPU-heavy work beside
  it, as on a shared machine (a second group of two, run until 2026-11-29, is cut for suite
  time: with the inter-op fix removed this group's run 1 already differed, 167 of 180
  variables). Their final training states."""
  root = tmp_path_factory.mktemp('seeded')
  dirs = [str(root / f'run{i}') for i in range(3)]
  procs = [start_seeded(d, learnable_fmnist) for d in dirs]
  states = []
  for d, proc in zip(dirs, procs):
    finish(proc, d)
    assert checkpoint_steps(d)[-1] == DET_PLANNED
    states.append(training_state(d))
  return states


def test_seeded_runs_are_bit_identical_while_other_work_runs(seeded_runs):
  assert len(seeded_runs) == 3
  # The state compared holds the target network, the summary and the optimizer's slots.
  names = list(seeded_runs[0])
  assert any('target_encoder' in n for n in names) and any('summary' in n for n in names)
  for i, state in enumerate(seeded_runs[1:], 1):
    assert_bit_identical(seeded_runs[0], state, f'run {i}')
  # What is compared trained: the step count is the planned one.
  assert int(seeded_runs[0]['optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE']) == DET_PLANNED


def recorded_steps(model_dir):
  """Checkpoint steps in the manager's `checkpoint` index (written after the files)."""
  state = tf.train.get_checkpoint_state(os.path.join(model_dir, 'checkpoints'))
  return [int(p.split('ckpt-')[1]) for p in state.all_model_checkpoint_paths] if state else []


def test_interrupted_runs_resume_bit_for_bit(tmp_path, learnable_fmnist, seeded_runs):
  """Two interruptions, run side by side, each resumed into epoch 2; each run ends with every
  variable equal to the uninterrupted runs': a SIGKILL after a periodic checkpoint of epoch 1
  (a resume mid-epoch), and a resume exactly at the epoch boundary (only epoch-end
  checkpoints: killed once step 7 is saved; checkpointing less often must not change what is
  trained)."""
  epoch_end_only = ['--gin_bindings=run.checkpoint_every_steps=1000']
  # (A SIGTERM between checkpoints, resumed bit for bit, was a third case until 2026-11-29:
  # cut for suite time. SIGTERM saves at the end of its step: test_ctrl_c_saves_at_the_end...,
  # test_guard_acts_once_per_execution...; its CLI resume: the two-worker test.)
  cases = {'sigkill': ([], DET_EVERY, signal.SIGKILL),
           'epoch_boundary': (epoch_end_only, DET_STEPS, signal.SIGKILL)}
  dirs = {name: str(tmp_path / name) for name in cases}
  procs = {name: start_seeded(dirs[name], learnable_fmnist, extra)
           for name, (extra, _, _) in cases.items()}
  pending, deadline = set(cases), time.time() + 300
  while pending:  # each signalled as soon as its checkpoint is recorded
    for name in sorted(pending):
      _, step, sig = cases[name]
      assert procs[name].poll() is None and time.time() < deadline, name
      if step in recorded_steps(dirs[name]):
        procs[name].send_signal(sig)
        pending.remove(name)
    time.sleep(0.01)
  for name, proc in procs.items():
    out, _ = proc.communicate(timeout=600)
    expected = -signal.SIGKILL if cases[name][2] == signal.SIGKILL else 0
    assert proc.returncode == expected, (name, out.decode()[-3000:])
  stopped = {name: recorded_steps(d)[-1] for name, d in dirs.items()}
  assert stopped['sigkill'] == DET_EVERY, stopped
  assert recorded_steps(dirs['epoch_boundary']) == [DET_STEPS]
  procs = {name: start_seeded(dirs[name], learnable_fmnist, cases[name][0]) for name in cases}
  for name, proc in procs.items():
    finish(proc, name)
    results = json.load(open(os.path.join(dirs[name], 'results.json')))
    assert results['resumed_from_step'] == stopped[name] and results['final_step'] == \
        DET_PLANNED, (name, results)
    assert_bit_identical(seeded_runs[0], training_state(dirs[name]), name)


def test_deterministic_needs_one_inter_op_thread_once_tensorflow_has_started():
  """train.run called from a program whose TensorFlow already runs: a clear error, unless the
  environment set one inter-op thread."""
  code = ('import tensorflow as tf; tf.constant(1.0) + 1.0\n'
          'from minc_tf import runtime\n'
          'from minc_tf.errors import UserError\n'
          'try:\n  runtime.set_up_determinism(True)\nexcept UserError as e:\n  print("ERR", e)\n'
          'else:\n  print("OK", tf.config.threading.get_inter_op_parallelism_threads())\n')
  outputs = {}
  for env_value in (None, '1'):
    env = {k: v for k, v in os.environ.items() if k != 'TF_NUM_INTEROP_THREADS'}
    if env_value:
      env['TF_NUM_INTEROP_THREADS'] = env_value
    env['PYTHONPATH'] = REPO
    out = subprocess.run([sys.executable, '-c', code], env=env, cwd=REPO, capture_output=True,
                         text=True, timeout=120).stdout
    outputs[env_value] = out
  assert 'ERR' in outputs[None] and 'TF_NUM_INTEROP_THREADS=1' in outputs[None], outputs
  assert 'OK' in outputs['1'], outputs


def test_ctrl_c_saves_at_the_end_of_the_step_and_stops(tmp_path):
  import keras
  from helpers import batches, compile_model, dataset, tiny_model
  m = tiny_model('minc')
  compile_model(m)
  ckpt = checkpoint.Checkpointer(m, str(tmp_path / 'checkpoints'))
  ckpt.build_optimizer()
  guard = checkpoint.TrainingGuard(ckpt, every_steps=1000, every_secs=None)

  class CtrlC(keras.callbacks.Callback):
    def on_train_batch_begin(self, batch, logs=None):
      if batch == 2:  # during the third step
        os.kill(os.getpid(), signal.SIGINT)

  missed = []  # a Ctrl-C the guard did not take (instead of a KeyboardInterrupt in pytest)

  def outside(signum, frame):
    missed.append(signum)
  before = signal.signal(signal.SIGINT, outside)
  try:
    m.fit(dataset(batches(count=6)), epochs=1, callbacks=[CtrlC(), guard], verbose=0)
    assert signal.getsignal(signal.SIGINT) is outside  # the handler before fit is back
  finally:
    signal.signal(signal.SIGINT, before)
  assert not missed and guard.preempted == 'SIGINT'
  assert ckpt.step == 3 and checkpoint_steps(str(tmp_path)) == [3]


def test_guard_acts_once_per_execution_of_seven_steps(tmp_path):
  """steps_per_execution = 7 (callbacks see steps 7, 14, 21, 28) and cadences 7 does not
  divide: checkpoints once 10 steps have passed (14; 21 is 7 after it; 28 ends the epoch); a
  Ctrl-C as the second execution (steps 8-14) starts saves at its end, 14; a non-finite loss at
  step 10 stops at 14 with no checkpoint after the one at 7."""
  import keras
  from helpers import batches, dataset, tiny_model

  def fit(name, every, data, hook=None):
    m = tiny_model('minc')
    m.compile(optimizer=keras.optimizers.SGD(0.01), steps_per_execution=7)
    ckpt = checkpoint.Checkpointer(m, str(tmp_path / name / 'checkpoints'), keep=10)
    ckpt.build_optimizer()
    guard = checkpoint.TrainingGuard(ckpt, every_steps=every, every_secs=None)
    with guard.catching_signals():
      m.fit(dataset(data).repeat(), steps_per_epoch=14, epochs=2, verbose=0,
            callbacks=[guard] + ([hook] if hook else []))
    return guard, checkpoint_steps(str(tmp_path / name)), ckpt.step

  guard, saved, step = fit('cadence', 10, batches(count=4))
  assert saved == [14, 28] and step == 28 and guard.preempted is None

  class CtrlC(keras.callbacks.Callback):
    def on_train_batch_begin(self, batch, logs=None):
      if batch == 7:  # the second execution: steps 8-14
        os.kill(os.getpid(), signal.SIGINT)

  guard, saved, step = fit('ctrl_c', 1000, batches(count=4), CtrlC())
  assert guard.preempted == 'SIGINT' and saved == [14] and step == 14

  data = batches(count=28)
  data[9][0][0][:] = np.inf  # step 10's first views
  guard, saved, step = fit('nan', 5, data)
  assert guard.diverged_at == 14 and saved == [7], (guard.diverged_at, saved)


def test_cluster_signal_all_reduce_and_no_clock_cadence(mirrored, monkeypatch):
  """ClusterSignal's all-reduce over MirroredStrategy's 2 replicas in one process (the two-
  worker CLI test runs it across processes): the signal reported is the answer, nothing when
  none. A guard over a cluster refuses a cadence in seconds (each worker has its own clock)."""
  agree = checkpoint.ClusterSignal(mirrored).agree
  assert agree(None) is None
  assert agree(signal.SIGINT) == signal.SIGINT and agree(signal.SIGTERM) == signal.SIGTERM
  monkeypatch.setattr(checkpoint, 'in_cluster', lambda strategy: True)
  with pytest.raises(ValueError, match='every_secs'):
    checkpoint.TrainingGuard(None, every_secs=600, strategy=mirrored)
  assert checkpoint.TrainingGuard(None, every_secs=None, strategy=mirrored)._cluster is not None


def test_checkpoints_every_so_many_seconds(tmp_path):
  from helpers import batches, compile_model, dataset, tiny_model
  m = tiny_model('spectral')
  compile_model(m)
  ckpt = checkpoint.Checkpointer(m, str(tmp_path / 'checkpoints'), keep=10)
  ckpt.build_optimizer()
  guard = checkpoint.TrainingGuard(ckpt, every_steps=None, every_secs=1e-9)
  m.fit(dataset(batches(count=4)), epochs=1, callbacks=[guard], verbose=0)
  assert checkpoint_steps(str(tmp_path)) == [1, 2, 3, 4]


# --- Multi-worker: the real CLI, two processes on localhost -----------------------------------
def start_workers(model_dir, idx_dir, extra, tmp, logs, model_dirs=None):
  """Both workers of a two-worker MultiWorkerMirroredStrategy cluster; worker 0 is the chief.
  TMPDIR is theirs, to see what the other worker leaves behind; their output goes to files
  (a full pipe would block a worker)."""
  cluster = {'worker': [f'localhost:{p}' for p in free_ports(2)]}
  procs = []
  for i in range(2):
    env = dict(os.environ, PYTHONPATH=REPO, TMPDIR=str(tmp), TF_CONFIG=json.dumps(
        {'cluster': cluster, 'task': {'type': 'worker', 'index': i}}))
    own_dir = (model_dirs or [model_dir] * 2)[i]
    with open(logs / f'worker{i}.log', 'w') as log:
      procs.append(subprocess.Popen(
          [sys.executable, '-m', 'minc_tf.main', f'--model_dir={own_dir}',
           '--strategy=multi_worker', *bindings(idx_dir, extra)],
          cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
  return procs


def finish_workers(procs, logs, timeout=300, check=True):
  deadline = time.time() + timeout
  for p in procs:
    try:
      p.wait(timeout=max(deadline - time.time(), 0.1))
    except subprocess.TimeoutExpired:
      p.kill()
      p.wait()
  outs = [(logs / f'worker{i}.log').read_text() for i in range(len(procs))]
  for p, out in zip(procs, outs):
    assert not check or (p.returncode == 0 and 'Traceback' not in out), out[-3000:]
  return outs


def saves(out):
  """(directory, step) of each checkpoint a worker saved, from its log."""
  return [(os.path.dirname(os.path.dirname(path)), int(step))
          for path, step in re.findall(r'Saved checkpoint (\S*ckpt-(\d+))', out)]


def test_two_workers_stop_together_on_one_sigterm_and_keep_one_set_of_files(
    tmp_path, learnable_fmnist):
  """`--strategy=multi_worker` in two processes: a SIGTERM to the non-chief worker makes both
  save the same step and exit 0; the rerun ends at the planned step; `--mode=eval` reads the
  checkpoint. Only the chief writes the model dir; the other worker's saves go to a private
  directory it removes."""
  model_dir, tmp, logs = tmp_path / 'run', tmp_path / 'tmp', tmp_path
  tmp.mkdir()
  # Its own plan: 2 epochs of 10 steps (a resume then runs both of _fit_from's fit() calls).
  plan = ['--gin_bindings=run.epochs=2']
  procs = start_workers(model_dir, learnable_fmnist, plan, tmp, logs)
  deadline = time.time() + 240
  while not [s for s in checkpoint_steps(model_dir) if s >= 4]:
    if time.time() > deadline or any(p.poll() is not None for p in procs):
      finish_workers(procs, logs, timeout=1)  # names the worker that failed
      pytest.fail('no checkpoint of step 4 or later')
    time.sleep(0.05)
  procs[1].send_signal(signal.SIGTERM)
  outs = finish_workers(procs, logs)
  stopped = checkpoint_steps(model_dir)[-1]
  assert stopped < STEPS_PER_EPOCH  # stopped in epoch 1: the rerun finishes it, then epoch 2
  # Each worker's last save is of the step the chief's newest checkpoint holds; the chief's
  # saves went to the model dir, the other worker's elsewhere.
  chief, other = saves(outs[0]), saves(outs[1])
  assert chief and len(chief) == len(other), (chief, other)
  assert chief[-1] == (str(model_dir), stopped), chief
  assert other[-1][1] == stopped and all(d != str(model_dir) for d, _ in other), other
  results = json.load(open(model_dir / 'results.json'))
  assert results['preempted'] == 'SIGTERM on another worker' and results['final_step'] == stopped
  assert results['replicas'] == 2
  assert not os.listdir(tmp), os.listdir(tmp)  # the non-chief's directory is gone

  # A model dir the workers see differently (local disks, not shared storage): both stop.
  procs = start_workers(model_dir, learnable_fmnist, plan, tmp, logs,
                        model_dirs=[model_dir, tmp_path / 'elsewhere'])
  for p, out in zip(procs, finish_workers(procs, logs, check=False)):
    assert p.returncode == 2 and 'see different checkpoints' in out, out[-2000:]
  assert checkpoint_steps(model_dir)[-1] == stopped

  finish_workers(start_workers(model_dir, learnable_fmnist, plan, tmp, logs), logs)
  results = json.load(open(model_dir / 'results.json'))
  assert results['final_step'] == 2 * STEPS_PER_EPOCH and results['resumed_from_step'] == stopped
  assert 'preempted' not in results
  with open(model_dir / 'export' / 'export_info.json') as f:
    assert json.load(f)['step'] == 2 * STEPS_PER_EPOCH
  assert sorted(os.listdir(model_dir)) == sorted([
      'checkpoints', 'checkpoint.weights.h5', 'config.gin', 'curves.json', 'export',
      'operative_config.gin', 'results.json', 'run_identity.json', 'tensorboard',
      'training.png'])
  assert not os.listdir(tmp), os.listdir(tmp)

  # Evaluated by both workers (features extracted on both replicas), as one process does.
  evaluation = plan + ['--mode=eval', '--gin_bindings=run.eval_train_examples=256',
                             '--gin_bindings=run.eval_test_examples=128',
                             '--gin_bindings=run.baselines=False']
  finish_workers(start_workers(model_dir, learnable_fmnist, evaluation, tmp, logs), logs)
  results = json.load(open(model_dir / 'results.json'))
  assert results['eval_step'] == 2 * STEPS_PER_EPOCH and results['replicas'] == 2
  assert not os.listdir(tmp), os.listdir(tmp)
  code, out = run_cli(model_dir, learnable_fmnist, evaluation)
  assert code == 0, out[-3000:]
  single = json.load(open(model_dir / 'results.json'))
  assert single['replicas'] == 1
  for name in ('probe_top1', 'knn_top1', 'feature_effective_rank'):
    assert results[name] == pytest.approx(single[name], rel=1e-4), name
