"""Faults and bad input end to end, through the CLI (issue 28): a model dir is claimed and
locked, a divergence keeps a sane checkpoint and its fix works when followed, results.json
stays true after a crash, a full disk and flag errors exit 2, input is checked before work.

Each test says what the user did, and checks the exit code, the message and what was left on
disk (cli_cases.snapshot: every file's hash).
"""

import os
import shutil

import numpy as np
import pytest

from conftest import REPO
from minc_tf import main as main_lib
from cli_cases import (EPOCHS, FINAL, STEPS, argv, cli, idx_dir, results,  # noqa: F401
                       run_dir, snapshot, trained)
from helpers import write_idx


# --- A model dir is claimed and locked (issue 28) ----------------------------------------------

def test_an_empty_model_dir_flag_is_refused(idx_dir, cli):
  code, out = cli(argv('', idx_dir))
  assert code == 2 and '--model_dir is empty' in out and 'Traceback' not in out


def test_a_directory_of_other_files_is_never_trained_into(idx_dir, tmp_path, cli):
  (tmp_path / 'notes.txt').write_text('mine')
  (tmp_path / 'results.json.bak').write_text('{}')
  before = snapshot(str(tmp_path))
  code, out = cli(argv(str(tmp_path), idx_dir))
  assert code == 2 and 'not a minc_tf run' in out and '--reuse_model_dir' in out
  assert snapshot(str(tmp_path)) == before
  code, out = cli(argv(str(tmp_path), idx_dir, '--reuse_model_dir',
                       '--gin_bindings=run.epochs=1', mode='train'))
  assert code == 0, out[-2000:]
  assert (tmp_path / 'notes.txt').read_text() == 'mine' and (tmp_path / 'results.json').exists()


def test_a_second_training_of_the_same_dir_stops_while_the_first_runs(idx_dir, tmp_path):
  """Two real processes: the second exits 2 naming the first's pid; the first finishes."""
  import subprocess
  import sys
  import time
  model_dir = str(tmp_path / 'run')
  env = dict(os.environ, PYTHONPATH=REPO)
  args = [sys.executable, '-m', 'minc_tf.main'] + argv(model_dir, idx_dir, mode='train')[1:]
  # Long enough (36 steps) that it still runs when the second reaches the lock.
  first = subprocess.Popen(args + ['--gin_bindings=run.epochs=12'], cwd=REPO, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  lock = os.path.join(model_dir, '.minc_tf.lock')
  deadline = time.time() + 240
  while not os.path.exists(lock) and first.poll() is None and time.time() < deadline:
    time.sleep(0.2)
  assert os.path.exists(lock), first.communicate()[0][-2000:]
  second = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  out = second.stdout + second.stderr
  assert second.returncode == 2, out[-2000:]
  assert 'being trained by another process' in out and f'pid {first.pid}' in out
  assert first.wait(timeout=600) == 0, first.communicate()[0][-2000:]
  assert not os.path.exists(lock) and results(model_dir)['final_step'] == 12 * STEPS


def test_a_study_in_a_directory_of_other_files_is_refused(tmp_path, cli):
  (tmp_path / 'notes.txt').write_text('mine')
  code, out = cli(['minc_tf', f'--model_dir={tmp_path}', '--gin_file=gin/study_ablation.gin',
                   '--mode=study'])
  assert code == 2 and 'not a minc_tf run' in out and sorted(os.listdir(tmp_path)) == [
      'notes.txt']


def test_an_eval_of_a_dir_being_trained_is_refused(run_dir, idx_dir, cli):
  import json as json_lib
  import time
  with open(os.path.join(run_dir, '.minc_tf.lock'), 'w') as f:  # a live training elsewhere
    json_lib.dump({'host': 'trainer-host', 'pid': 7, 'token': 't', 'heartbeat': time.time()}, f)
  before = snapshot(run_dir)
  code, out = cli(argv(run_dir, idx_dir, mode='eval'))
  assert code == 2 and 'host trainer-host, pid 7' in out, out[-1500:]
  assert snapshot(run_dir) == before


def test_flag_errors_exit_2(capsys):
  with pytest.raises(SystemExit) as e:
    main_lib._parse_flags(['minc_tf', '--no_such_flag=1'])
  assert e.value.code == 2
  assert 'no_such_flag' in capsys.readouterr().err


# --- Divergence that can be recovered ---------------------------------------------------------

def test_blown_up_weights_are_never_checkpointed_and_the_fix_works(run_dir, idx_dir, cli):
  """A huge learning rate in the continued run: the weights blow up while MINC's clipped loss
  stays finite. No checkpoint of them is written; following the message's fix (a sane lr with
  --allow_config_change) resumes from the last sane checkpoint and finishes."""
  ckpts = {k: v for k, v in snapshot(run_dir).items() if 'checkpoints' in k}
  code, out = cli(argv(run_dir, idx_dir, '--gin_bindings=run.epochs=4', '--allow_config_change',
                       '--gin_bindings=build_optimizer.base_lr=1e6',
                       '--gin_bindings=build_optimizer.warmup_epochs=0', mode='train'))
  assert code == 2, out[-2000:]
  assert 'The weights blew up' in out and f'ckpt-{FINAL}, was kept' in out, out[-2000:]
  assert 'Fix: lower the learning rate' in out and 'Traceback' not in out
  assert {k: v for k, v in snapshot(run_dir).items() if 'checkpoints' in k} == ckpts
  # Following the fix.
  code, out = cli(argv(run_dir, idx_dir, '--gin_bindings=run.epochs=4', '--allow_config_change',
                       mode='train'))
  assert code == 0, out[-2000:]
  done = results(run_dir)
  assert done['final_step'] == 4 * STEPS and done['resumed_from_step'] == FINAL
  assert np.isfinite(done['final_loss'])
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  reader = tf.train.load_checkpoint(os.path.join(run_dir, 'checkpoints'))
  norms = [np.abs(reader.get_tensor(k)).max() for k in reader.get_variable_to_shape_map()
           if 'encoder/' in k and k.endswith('VARIABLE_VALUE')]
  assert norms and max(norms) < 1e3


# --- results.json always true -----------------------------------------------------------------

def test_a_run_finished_after_a_crash_in_export_reports_its_training(idx_dir, tmp_path, cli,
                                                                     monkeypatch):
  from minc_tf import export as export_lib
  model_dir = str(tmp_path / 'run')
  real = export_lib.export_encoder

  def crash(*args, **kwargs):
    raise RuntimeError('the export crashed')

  monkeypatch.setattr(export_lib, 'export_encoder', crash)
  with pytest.raises(RuntimeError, match='the export crashed'):
    cli(argv(model_dir, idx_dir, mode='train'))
  before = results(model_dir)
  assert before['final_step'] == FINAL and before['pretrain_wall_time_s'] > 0
  monkeypatch.setattr(export_lib, 'export_encoder', real)
  code, out = cli(argv(model_dir, idx_dir, mode='train'))
  assert code == 0, out[-2000:]
  after = results(model_dir)
  for key in ('pretrain_wall_time_s', 'images_per_s', 'final_loss', 'resumed_from_step'):
    assert after[key] == before[key], key
  assert after['images_per_s'] > 0 and os.path.exists(os.path.join(model_dir, 'export'))


def test_deleted_checkpoints_are_named_not_told_to_train_first(run_dir, idx_dir, cli):
  shutil.rmtree(os.path.join(run_dir, 'checkpoints'))
  for mode in ('eval', 'export'):
    code, out = cli(argv(run_dir, idx_dir, mode=mode))
    assert code == 2 and 'checkpoints are gone' in out and 'train first' not in out, out[-1500:]
  code, out = cli(argv(run_dir, idx_dir, mode='train'))
  assert code == 2 and 'would overwrite the finished run' in out


def test_a_full_disk_stops_with_exit_2_and_the_run_resumes(run_dir, idx_dir, cli, monkeypatch):
  import errno
  from minc_tf import checkpoint as checkpoint_lib
  real = checkpoint_lib.Checkpointer.save

  def full(self):
    raise OSError(errno.ENOSPC, 'No space left on device')

  monkeypatch.setattr(checkpoint_lib.Checkpointer, 'save', full)
  code, out = cli(argv(run_dir, idx_dir, '--gin_bindings=run.epochs=3', '--allow_config_change',
                       mode='train'))
  assert code == 2 and 'is full' in out and 'rerun the same command' in out, out[-2000:]
  assert 'Traceback' not in out
  monkeypatch.setattr(checkpoint_lib.Checkpointer, 'save', real)
  code, out = cli(argv(run_dir, idx_dir, '--gin_bindings=run.epochs=3', '--allow_config_change',
                       mode='train'))
  assert code == 0 and results(run_dir)['final_step'] == 3 * STEPS, out[-2000:]


# --- Input checked before work starts ---------------------------------------------------------

def test_idx_files_whose_counts_disagree_stop_before_pretraining(tmp_path, cli):
  rng = np.random.default_rng(0)
  for split, n in (('train', 256), ('t10k', 64)):
    write_idx(tmp_path / f'{split}-images-idx3-ubyte.gz', rng.integers(0, 256, (n, 28, 28)))
    write_idx(tmp_path / f'{split}-labels-idx1-ubyte.gz', rng.integers(0, 10, n - 1))
  model_dir = tmp_path / 'run'
  code, out = cli(argv(str(model_dir), tmp_path))
  assert code == 2 and 'files disagree' in out and '(255,)' in out, out[-1500:]
  assert not (model_dir / 'checkpoints').exists()


def test_a_one_class_folder_is_not_evaluated(tmp_path, cli):
  folder = tmp_path / 'images' / 'cats'
  folder.mkdir(parents=True)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  for i in range(12):
    png = tf.io.encode_png(np.full((16, 16, 3), i * 20, np.uint8)).numpy()
    (folder / f'{i}.png').write_bytes(png)
  args = ['minc_tf', f'--model_dir={tmp_path / "run"}', '--gin_file=gin/quickstart.gin',
          "--gin_bindings=load_data.name='image_folder'",
          f"--gin_bindings=load_data.image_dir='{tmp_path / 'images'}'",
          '--gin_bindings=load_data.channels=3', '--gin_bindings=run.global_batch_size=4']
  code, out = cli(args)
  assert code == 2 and 'has 1 class' in out and '--mode=train' in out, out[-1500:]


def test_a_flat_folder_pretrains_and_its_evaluation_asks_for_labels(tmp_path, cli):
  folder = tmp_path / 'images'
  folder.mkdir()
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  for i in range(12):
    png = tf.io.encode_png(np.full((16, 16, 3), i * 20, np.uint8)).numpy()
    (folder / f'{i}.png').write_bytes(png)
  args = ['minc_tf', '--gin_file=gin/quickstart.gin',
          "--gin_bindings=load_data.name='image_folder'",
          f"--gin_bindings=load_data.image_dir='{folder}'", '--gin_bindings=load_data.channels=3',
          '--gin_bindings=run.global_batch_size=4', '--gin_bindings=run.epochs=1',
          '--gin_bindings=build_encoder.base_width=4']
  code, out = cli(args + [f'--model_dir={tmp_path / "run"}'])
  assert code == 2 and 'has no labels' in out and '--mode=train' in out, out[-1500:]
  assert not (tmp_path / 'run').exists()
  code, out = cli(args + [f'--model_dir={tmp_path / "pretrained"}', '--mode=train'])
  assert code == 0, out[-1500:]
  assert (tmp_path / 'pretrained' / 'export').is_dir()


def test_the_image_folder_config_pretrains_and_evaluates_a_labelled_folder(tmp_path, cli):
  """gin/image_folder.gin as the README gives it, on a 2-class folder of RGB images of
  several sizes: a run that finishes with a probe figure."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  for c, level in (('dark', 60), ('light', 190)):
    (tmp_path / 'images' / c).mkdir(parents=True)
    for i in range(20):
      size = (48 + i, 70 - i, 3)
      img = np.clip(level + 20 * rng.normal(size=size), 0, 255).astype(np.uint8)
      (tmp_path / 'images' / c / f'{i}.jpg').write_bytes(tf.io.encode_jpeg(img).numpy())
  args = ['minc_tf', '--gin_file=gin/image_folder.gin', f'--model_dir={tmp_path / "run"}',
          f"--gin_bindings=load_data.image_dir='{tmp_path / 'images'}'",
          '--gin_bindings=load_data.image_size=32', '--gin_bindings=build_encoder.base_width=4',
          '--gin_bindings=run.global_batch_size=12', '--gin_bindings=run.epochs=1',
          '--gin_bindings=run.eval_batch_size=8', '--gin_bindings=run.verbose=0']
  code, out = cli(args)
  assert code == 0, out[-2000:]
  res = results(tmp_path / 'run')
  assert res['dataset'] == 'image_folder' and res['steps'] == 3  # 36 training images / 12
  assert 'probe_top1' in res and 'raw_pixel_top1' in res


@pytest.mark.parametrize('binding,replicas,expected', [
    (None, 'mirrored', True), (None, 'default', False), ('run.sync_bn=False', 'mirrored', False)])
def test_sync_bn_is_a_setting_that_reaches_the_model(idx_dir, tmp_path, cli, monkeypatch,
                                                     binding, replicas, expected):
  from minc_tf import model as model_lib
  from minc_tf.errors import UserError
  seen = {}

  def capture(*args, **kwargs):
    seen['sync_bn'] = kwargs['sync_bn']
    raise UserError('stop here')
  monkeypatch.setattr(model_lib, 'build_model', capture)
  extra = [f'--strategy={replicas}'] + ([f'--gin_bindings={binding}'] if binding else [])
  code, out = cli(argv(str(tmp_path / 'run'), idx_dir, *extra))
  assert code == 2 and 'stop here' in out and seen == {'sync_bn': expected}, out[-1500:]


def test_the_objective_and_evaluation_memory_settings_reach_their_code(idx_dir, tmp_path, cli,
                                                                       monkeypatch):  # noqa: F811
  """run.objective_pairs and the method's mu reach evaluate.spectral_objective; the evaluation's
  memory check runs before pretraining (nothing trained when it refuses)."""
  from minc_tf import evaluate
  seen = {}
  real = evaluate.spectral_objective

  def spy(encoder, projector, data, pairs, batch_size, strategy=None, mu=None):
    seen.update(pairs=pairs, mu=mu)
    return real(encoder, projector, data, pairs, batch_size, strategy, mu)
  monkeypatch.setattr(evaluate, 'spectral_objective', spy)
  code, out = cli(argv(str(tmp_path / 'run'), idx_dir, '--gin_bindings=run.objective_pairs=32',
                       '--gin_bindings=build_model.mu=3.0'))
  assert code == 0, out[-2000:]
  assert seen == {'pairs': 32, 'mu': 3.0}
  res = results(tmp_path / 'run')
  assert res['val_objective_pairs'] == 32 and 'val_objective_clipped' in res
  # kNN's similarities of a 1e9-query chunk against 128 images: about 1 TB.
  code, out = cli(argv(str(tmp_path / 'small'), idx_dir, '--gin_bindings=knn_accuracy.chunk=1000000000'))
  assert code == 2 and 'The evaluation would hold about' in out, out[-2000:]
  assert not (tmp_path / 'small' / 'checkpoints').exists()
