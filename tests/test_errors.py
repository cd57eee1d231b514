"""Bad input, through the real launch (main.main, in process): a clear message, exit 2, no
traceback, and a run dir left byte-identical where nothing should change; damage recovered,
never compounded. One tiny trained run dir is shared by every case (each works on a copy)."""

import glob
import json
import os
import shutil

import gin
import numpy as np
import pytest
import tensorflow as tf

from minc_tf import errors

from cli_cases import (EPOCHS, FINAL, STEPS, argv, cli, idx_dir, launch, results,  # noqa: F401
                       run_dir, snapshot, trained)


# --- Validation before work: (bindings, what the message must name) ----------------------------
BAD_SETTINGS = [
    (['run.epochs=0'], 'run.epochs = 0 is not allowed: it must be an integer >= 1'),
    (["run.mixed_precision='mixed_float16'"],
     "run.mixed_precision = 'mixed_float16' cannot train a run: its loss scaling skips steps "
     'without counting them'),
    (['run.steps_per_execution=2'], 'run.steps_per_execution = 2 does not divide the 3 steps '
     'of an epoch (Keras would run whole executions past the epoch\'s end). Fix: bind '
     'run.steps_per_execution to a divisor of 3 (e.g. 1 or 3)'),
    (['run.epochs=-1'], 'run.epochs = -1 is not allowed: it must be an integer >= 1'),
    (["run.epochs='ten'"], "run.epochs = 'ten' is not allowed: it must be an integer >= 1"),
    (['run.global_batch_size=0'], 'run.global_batch_size = 0 is not allowed'),
    (['run.global_batch_size=100000'],
     'run.global_batch_size = 100000 is more than the 256 training examples'),
    (['build_model.projector_dim=0'], 'build_model.projector_dim = 0 is not allowed'),
    (['build_optimizer.base_lr=-1'],
     'build_optimizer.base_lr = -1 is not allowed: it must be a number in (0, inf]'),
    (['build_model.summary_decay=1.5'],
     'build_model.summary_decay = 1.5 is not allowed: it must be a number in [0, 1)'),
    (['build_model.mu=0'], 'build_model.mu = 0 is not allowed: it must be a number in (0, inf] '
     'or None'),
    (['build_model.tau_base=1.0'], 'build_model.tau_base = 1.0 is not allowed'),
    (["build_model.method='mnic'"], "build_model.method = 'mnic' is not allowed: it must be one "
     "of 'minc', 'spectral'"),
    (['build_encoder.base_width=2.5'], 'build_encoder.base_width = 2.5 is not allowed'),
    (['run.keep_checkpoints=0'], 'run.keep_checkpoints = 0 is not allowed'),
    (["run.mixed_precision='fp16'"], "run.mixed_precision = 'fp16' is not allowed"),
    (['build_model.use_target=1'], 'build_model.use_target = 1 is not allowed: it must be one of '
     'None, True, False'),
    (['view_transforms.grayscale_prob=1.5'], 'view_transforms.grayscale_prob = 1.5 is not '
     'allowed: it must be a number in [0, 1]'),
    (['view_transforms.crop_area=(0.5, 0.2)'], 'view_transforms.crop_area = (0.5, 0.2) is not '
     'allowed: it must be a pair (a, b) with 0 < a <= b <= 1'),
    (['load_data.std=(0.0,)'], 'load_data.std = (0.0,) is not allowed'),
    (['linear_probe.epochs=0'], 'linear_probe.epochs = 0 is not allowed'),
    (['run.report_test=True'], 'run.report_test = True, but fashion_mnist has no test split '
     "apart from the one evaluation reads ('test'). Fix: bind load_data.validation_examples"),
    (['load_data.validation_examples=256'], 'load_data.validation_examples=256 leaves no '
     'training images'),
    (['knn_accuracy.k=0'], 'knn_accuracy.k = 0 is not allowed'),
    (['offline_linear_eval.momentum=1.0'], 'offline_linear_eval.momentum = 1.0 is not allowed'),
    (["run.export_formats=('pdf',)"], "run.export_formats = ('pdf',) is not allowed: it must "
     "be a list of distinct values out of 'onnx', 'litert', 'openvino' (or empty)"),
]


@pytest.mark.parametrize('bindings,message', BAD_SETTINGS,
                         ids=[b[0] for b, _ in BAD_SETTINGS])
def test_bad_setting_stops_before_work(run_dir, idx_dir, tmp_path, cli, bindings, message):
  """In a trained run dir nothing changes; a fresh one is not even created."""
  before = snapshot(run_dir)
  for model_dir in (run_dir, str(tmp_path / 'new')):
    code, out = cli(argv(model_dir, idx_dir, *[f'--gin_bindings={b}' for b in bindings]))
    assert code == 2 and message in out, out[-2000:]
    assert 'Fix: bind' in out and 'Traceback' not in out
  assert snapshot(run_dir) == before
  assert not os.path.exists(tmp_path / 'new')


@pytest.mark.parametrize('check,good,bad', [
    (errors.int_at_least(1), [1, 7, np.int64(3)], [0, -1, 1.0, True, 'ten', None]),
    (errors.int_at_least(1, optional=True), [None, 2], [0, 'x']),
    (errors.real_in(0, 1, high_open=True), [0, 0.5, 0.999], [1, 1.5, -0.1, float('nan'), '0.5']),
    (errors.real_in(0, float('inf'), low_open=True, optional=True), [None, 1e-9, 3],
     [0, -1, False]),
    (errors.one_of((None, 'a')), [None, 'a'], ['b', 0]),
    (errors.subset_of(('a', 'b')), [(), ['a'], ('b', 'a')],
     ['a', ('a', 'a'), ('c',), (1,), (None,), None]),
])
def test_checks_accept_their_range_and_nothing_else(check, good, bad):
  for value in good:
    errors.require('x.y', value, check)
  for value in bad:
    with pytest.raises(errors.UserError, match=r'x\.y = .* is not allowed: it must be'):
      errors.require('x.y', value, check)


# --- A run dir has one identity -----------------------------------------------------------------
@pytest.mark.parametrize('binding,named', [
    ('build_encoder.base_width=8', 'build_encoder.base_width: 4 -> 8'),
    ("build_model.method='byol'", "build_model.method: 'minc' -> 'byol'"),
    ('build_optimizer.base_lr=0.002', 'build_optimizer.base_lr: 0.001 -> 0.002'),
    ('run.epochs=3', 'run.epochs: 2 -> 3'),
])
def test_rerun_with_another_configuration_touches_nothing(run_dir, idx_dir, cli, binding,
                                                           named):
  before = snapshot(run_dir)
  code, out = cli(argv(run_dir, idx_dir, f'--gin_bindings={binding}'))
  assert code == 2 and 'holds a run of another configuration' in out and named in out, out[-3000:]
  assert '--allow_config_change' in out and 'Traceback' not in out
  assert snapshot(run_dir) == before


def test_eval_of_another_architecture_is_refused_but_other_eval_settings_are_fine(
    run_dir, idx_dir, cli):
  before = snapshot(run_dir)
  code, out = cli(argv(run_dir, idx_dir, '--gin_bindings=build_encoder.base_width=8',
                          mode='export'))
  assert code == 2 and 'build_encoder.base_width: 4 -> 8' in out, out[-2000:]
  assert snapshot(run_dir) == before
  # A different schedule or eval budget is no reason to refuse an evaluation.
  code, out = cli(argv(run_dir, idx_dir, '--gin_bindings=run.epochs=5',
                          '--gin_bindings=run.knn=False', mode='eval'))
  assert code == 0, out[-2000:]
  assert results(run_dir)['eval_checkpoint_step'] == FINAL


def test_allowed_config_change_continues_and_is_recorded(run_dir, idx_dir, cli):
  code, out = cli(argv(run_dir, idx_dir, '--gin_bindings=run.epochs=3',
                          '--allow_config_change', mode='train'))
  assert code == 0, out[-2000:]
  assert results(run_dir)['final_step'] == 3 * STEPS
  assert results(run_dir)['resumed_from_step'] == FINAL
  with open(os.path.join(run_dir, 'run_identity.json')) as f:
    identity = json.load(f)
  assert identity['settings']['run.epochs'] == 3
  assert [h['run.epochs'] for h in identity['history']] == [2]


def test_identity_binds_only_once_something_was_trained(run_dir, idx_dir, tmp_path, cli):
  """A first run that died before its first checkpoint recorded an identity: a rerun with other
  settings is its own first run. A damaged record is rewritten, not left to switch checks off."""
  fresh = tmp_path / 'fresh'
  fresh.mkdir()
  shutil.copy(os.path.join(run_dir, 'run_identity.json'), fresh)
  code, out = cli(argv(str(fresh), idx_dir, '--gin_bindings=run.epochs=1',
                       '--gin_bindings=run.steps_per_epoch=1', mode='train'))
  assert code == 0, out[-2000:]
  with open(fresh / 'run_identity.json') as f:
    assert json.load(f)['settings']['run.epochs'] == 1
  path = os.path.join(run_dir, 'run_identity.json')
  with open(path) as f:
    recorded = json.load(f)['settings']
  with open(path, 'w') as f:
    f.write('{"settings": {"build_model.me')
  code, out = cli(argv(run_dir, idx_dir, mode='train'))
  assert code == 0 and 'is damaged; it will be rewritten' in out, out[-2000:]
  with open(path) as f:
    assert json.load(f)['settings'] == recorded
  code, out = cli(argv(run_dir, idx_dir, '--gin_bindings=build_encoder.base_width=8'))
  assert code == 2 and 'build_encoder.base_width: 4 -> 8' in out


def test_checkpoint_of_another_model_is_not_treated_as_damage(run_dir, idx_dir, cli):
  """Without the identity file (a run dir from before it existed) the restore itself must tell
  a misfit from damage: a readable checkpoint that does not fit stops the run."""
  os.remove(os.path.join(run_dir, 'run_identity.json'))
  before = snapshot(run_dir)
  code, out = cli(argv(run_dir, idx_dir, '--gin_bindings=build_encoder.base_width=8'))
  assert code == 2 and 'is readable but does not fit the model' in out, out[-2000:]
  assert snapshot(run_dir) == before


# --- Damage is recovered, never compounded -------------------------------------------------------
def test_damaged_index_is_rebuilt_from_the_checkpoint_files(run_dir, idx_dir, cli):
  index = os.path.join(run_dir, 'checkpoints', 'checkpoint')
  with open(index, 'w') as f:
    f.write('model_checkpoint_path: "ckpt-6"\nall_model_ch')  # torn mid-write
  ckpt_files = {k: v for k, v in snapshot(run_dir).items() if 'ckpt-' in k}
  code, out = cli(argv(run_dir, idx_dir, '--gin_bindings=run.knn=False', mode='eval'))
  assert code == 0, out[-2000:]
  assert 'Rebuilding the checkpoint index' in out
  assert results(run_dir)['eval_checkpoint_step'] == FINAL
  assert glob.glob(index + '.damaged-*')  # set aside, not deleted
  assert {k: v for k, v in snapshot(run_dir).items() if 'ckpt-' in k} == ckpt_files
  # A missing index: a rerun of the finished run resumes at its last step and trains nothing
  # (before the fix it trained from step 0 over the finished run).
  os.remove(index)
  trained = results(run_dir)
  code, out = cli(argv(run_dir, idx_dir, mode='train'))
  assert code == 0, out[-2000:]
  assert results(run_dir)['final_step'] == FINAL
  assert results(run_dir)['pretrain_wall_time_s'] == trained['pretrain_wall_time_s']
  assert {k: v for k, v in snapshot(run_dir).items() if 'ckpt-' in k} == ckpt_files


def tear_newest(run_dir):
  for path in glob.glob(os.path.join(run_dir, 'checkpoints', f'ckpt-{FINAL}.data-*')):
    with open(path, 'r+b') as f:
      f.truncate(16)


def test_torn_newest_checkpoint_never_costs_the_finished_run(run_dir, idx_dir, cli):
  tear_newest(run_dir)
  before = snapshot(run_dir)
  # Training from the older checkpoint would overwrite the finished run's files: refused.
  code, out = cli(argv(run_dir, idx_dir, mode='train'))
  assert code == 2 and f'finished at step {FINAL}' in out and f'ckpt-{FINAL} unreadable' in out
  assert snapshot(run_dir) == before
  # Export would replace the step-6 export with the step-3 encoder: refused.
  code, out = cli(argv(run_dir, idx_dir, mode='export'))
  assert code == 2 and f'holds the encoder of step {FINAL}' in out, out[-2000:]
  assert snapshot(run_dir) == before
  # Evaluation falls back, says so, and replaces the step-6 figures rather than mixing them.
  code, out = cli(argv(run_dir, idx_dir, '--gin_bindings=run.knn=False', mode='eval'))
  assert code == 0, out[-2000:]
  assert 'could not be loaded' in out
  evaluated = results(run_dir)
  assert evaluated['eval_step'] == STEPS and evaluated['eval_checkpoint_step'] == STEPS
  assert f'ckpt-{FINAL} unreadable' in evaluated['eval_note']
  assert 'knn_top1' not in evaluated  # step 6's kNN figure is not kept beside step 3's probe
  assert evaluated['final_step'] == FINAL  # what training did is kept
  # Without the newer export in the way, export falls back too, and records the step it used.
  shutil.rmtree(os.path.join(run_dir, 'export'))
  code, out = cli(argv(run_dir, idx_dir, mode='export'))
  assert code == 0, out[-2000:]
  assert results(run_dir)['export_checkpoint_step'] == STEPS
  assert f'ckpt-{FINAL} unreadable' in results(run_dir)['export_note']
  with open(os.path.join(run_dir, 'export', 'export_info.json')) as f:
    assert json.load(f) == {'step': STEPS}


def test_torn_newest_checkpoint_of_an_unfinished_run_resumes_from_the_previous(run_dir, idx_dir,
                                                                              cli):
  """A run preempted at step 6 whose last checkpoint was torn: it resumes from step 3, says so,
  and finishes at the planned step."""
  tear_newest(run_dir)
  with open(os.path.join(run_dir, 'results.json'), 'w') as f:
    json.dump({'final_step': FINAL, 'preempted': 'SIGTERM'}, f)
  shutil.rmtree(os.path.join(run_dir, 'export'))  # a preempted run has exported nothing
  os.remove(os.path.join(run_dir, 'checkpoint.weights.h5'))
  code, out = cli(argv(run_dir, idx_dir, mode='train'))
  assert code == 0, out[-2000:]
  assert f'ckpt-{FINAL} could not be loaded' in out
  done = results(run_dir)
  assert done['resumed_from_step'] == STEPS and done['final_step'] == FINAL
  assert 'preempted' not in done


def test_a_run_stopped_on_its_last_step_is_finished_by_its_rerun(run_dir, idx_dir, cli):
  """SIGTERM during the last step saved the planned final step: the rerun trains nothing and
  must not carry 'preempted' on (a study would stop at that variant on every rerun)."""
  stopped = dict(results(run_dir), preempted='SIGTERM')
  with open(os.path.join(run_dir, 'results.json'), 'w') as f:
    json.dump(stopped, f)
  code, out = cli(argv(run_dir, idx_dir, '--gin_bindings=run.knn=False', mode='train'))
  assert code == 0, out[-2000:]
  assert 'preempted' not in results(run_dir) and results(run_dir)['final_step'] == FINAL


def test_nan_names_the_kept_checkpoint_and_the_way_on(run_dir, idx_dir, cli):
  """A normalisation mean of 3e38 overflows every input to -inf from the first step of the
  continued run (step 7): training stops before saving, the message names the checkpoint it
  kept and that rerunning as is would diverge again."""
  ckpts = {k: v for k, v in snapshot(run_dir).items() if 'checkpoints' in k}
  code, out = cli(argv(run_dir, idx_dir, '--gin_bindings=run.epochs=3', '--allow_config_change',
                       '--gin_bindings=load_data.mean=(3e38,)', mode='train'))
  assert code == 2 and f'NaN or infinite at step {FINAL + 1}' in out, out[-2000:]
  assert f'ckpt-{FINAL}, was kept' in out and 'would diverge again' in out
  assert 'Traceback' not in out
  assert {k: v for k, v in snapshot(run_dir).items() if 'checkpoints' in k} == ckpts


def test_all_checkpoints_damaged_stops_and_names_them(run_dir, idx_dir, cli):
  for path in glob.glob(os.path.join(run_dir, 'checkpoints', 'ckpt-*.data-*')):
    with open(path, 'r+b') as f:
      f.truncate(16)
  os.remove(os.path.join(run_dir, 'results.json'))  # the restore must stop it, not this guard
  before = snapshot(run_dir)
  code, out = cli(argv(run_dir, idx_dir, mode='train'))
  assert code == 2 and 'No checkpoint in' in out and 'ckpt-3:' in out and 'ckpt-6:' in out
  assert snapshot(run_dir) == before


@pytest.mark.parametrize('mode', ['train', 'eval', 'export'])
def test_truncated_results_are_set_aside(run_dir, idx_dir, cli, mode):
  path = os.path.join(run_dir, 'results.json')
  with open(path, 'r+b') as f:
    f.truncate(40)
  with open(path, 'rb') as f:
    torn = f.read()
  code, out = cli(argv(run_dir, idx_dir, '--gin_bindings=run.knn=False', mode=mode))
  assert code == 0, out[-2000:]
  assert 'set aside' in out
  aside = glob.glob(path + '.damaged-*')
  assert len(aside) == 1 and open(aside[0], 'rb').read() == torn
  assert results(run_dir)[f'{mode}_checkpoint_step' if mode != 'train' else 'final_step'] == FINAL


# --- Data and launch errors name the file ----------------------------------------------------------
def test_truncated_idx_gzip_names_the_file(run_dir, idx_dir, tmp_path, cli):
  bad = tmp_path / 'idx'
  shutil.copytree(idx_dir, bad)
  path = bad / 'train-images-idx3-ubyte.gz'
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])
  code, out = cli(argv(str(tmp_path / 'new'), bad))
  assert code == 2 and f'{path} is damaged' in out and 'Traceback' not in out, out[-2000:]


def test_explicit_idx_dir_without_the_files_never_downloads(tmp_path, cli):
  (tmp_path / 'idx').mkdir()
  (tmp_path / 'idx' / 'train-images.gz').write_bytes(b'')
  code, out = cli(argv(str(tmp_path / 'new'), tmp_path / 'idx'))
  assert code == 2 and 'lacks train-images-idx3-ubyte.gz' in out, out[-2000:]
  assert 'it holds train-images.gz' in out and 'downloading' not in out


def test_gin_file_naming_a_directory(tmp_path, cli):
  code, out = cli(['minc_tf', f'--model_dir={tmp_path}', '--gin_file=gin'])
  assert code == 2 and '--gin_file=gin is a directory' in out


def test_activations_beyond_the_host_memory_are_refused_before_allocation():
  from minc_tf import model as model_lib
  from minc_tf import runtime
  gin.parse_config_files_and_bindings(['gin/quickstart.gin'], ['build_encoder.base_width = 4'])
  model = model_lib.build_model((28, 28, 1), num_classes=10)
  strategy = tf.distribute.get_strategy()
  runtime.check_host_memory(model, strategy, 256)  # the quickstart's batch fits
  with pytest.raises(errors.UserError, match=r'run.global_batch_size = 100000000 needs at least '
                                             r'\d+ GiB .* which has \d+ GiB of memory'):
    runtime.check_host_memory(model, strategy, 10 ** 8)
