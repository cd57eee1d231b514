"""run_dir.py: the identity record tolerates growth, damaged JSON is set aside, not lost."""

import json
import os

import pytest

from minc_tf import configurables  # noqa: F401  (defaults come from the registered signatures)
from minc_tf import run_dir
from minc_tf import schema
from minc_tf.errors import UserError

NOW = {'build_model.method': 'minc', 'build_model.mu': 10.0, 'build_model.summary_decay': 0.0,
       'build_encoder.depth': 18, 'run.global_batch_size': 32}


def _trained_dir(tmp_path, recorded):
  (tmp_path / 'results.json').write_text('{"final_step": 4}')
  (tmp_path / run_dir.IDENTITY).write_text(json.dumps({'settings': recorded, 'history': []}))
  return str(tmp_path)


def test_a_record_written_before_a_setting_existed_still_resumes(tmp_path):
  """The record predates summary_decay (missing from it); today's value is the code default,
  so the run is the same run."""
  assert 0.0 in run_dir.default_values('build_model.summary_decay')
  old = {k: v for k, v in NOW.items() if k != 'build_model.summary_decay'}
  assert run_dir.check_identity(_trained_dir(tmp_path, old), 'train', False, NOW) is False


def test_an_unseeded_record_of_earlier_code_still_resumes(tmp_path):
  """Records hold run()'s own settings as JSON values: an unseeded run's "run.seed": null."""
  old = dict(NOW, **{'run.seed': None, 'run.steps_per_epoch': 3})
  now = run_dir.json.loads(run_dir.json.dumps(dict(old)))
  assert run_dir.check_identity(_trained_dir(tmp_path, old), 'train', False, now) is False
  import gin
  from minc_tf import config
  config.parse_gin(['gin/quickstart.gin'], [])
  from minc_tf import model as model_lib  # noqa: F401
  identity = run_dir.run_identity(seed=None, epochs=2)
  gin.clear_config()
  assert identity['run.seed'] is None and identity['run.epochs'] == 2


def test_a_setting_missing_from_the_record_at_another_value_is_a_change(tmp_path):
  old = {k: v for k, v in NOW.items() if k != 'build_model.summary_decay'}
  now = dict(NOW, **{'build_model.summary_decay': 0.5})
  with pytest.raises(UserError, match=r"build_model.summary_decay: '\(unset\)' -> 0.5"):
    run_dir.check_identity(_trained_dir(tmp_path, old), 'train', False, now)


def test_a_changed_recorded_setting_is_refused_and_nothing_is_written(tmp_path):
  path = _trained_dir(tmp_path, NOW)
  before = sorted(os.listdir(path)), (tmp_path / run_dir.IDENTITY).read_bytes()
  with pytest.raises(UserError, match=r'build_model.mu: 10.0 -> 3.0.*--allow_config_change'):
    run_dir.check_identity(path, 'train', False, dict(NOW, **{'build_model.mu': 3.0}))
  assert (sorted(os.listdir(path)), (tmp_path / run_dir.IDENTITY).read_bytes()) == before
  # Allowed: training re-records it.
  assert run_dir.check_identity(path, 'train', True, dict(NOW, **{'build_model.mu': 3.0}))


def test_evaluation_compares_only_what_shapes_the_variables(tmp_path):
  path = _trained_dir(tmp_path, NOW)
  assert run_dir.check_identity(path, 'eval', False, dict(NOW, **{'build_model.mu': 3.0})) \
      is False
  with pytest.raises(UserError, match='build_model.method'):
    run_dir.check_identity(path, 'eval', False, dict(NOW, **{'build_model.method': 'byol'}))


def test_a_setting_without_a_default_counts_when_missing():
  assert run_dir.identity_changes({}, {'run.no_such_setting': 1}) == [
      "run.no_such_setting: '(unset)' -> 1"]


def test_damaged_json_is_set_aside_by_the_chief_only(tmp_path):
  path = tmp_path / 'results.json'
  path.write_text('{"final_step": 4')  # truncated
  assert run_dir.read_results(str(tmp_path), chief=False) == {}
  assert path.exists()
  assert run_dir.read_results(str(tmp_path), chief=True) == {}
  aside = [n for n in os.listdir(tmp_path) if n.startswith('results.json.damaged-')]
  assert not path.exists() and len(aside) == 1
  assert (tmp_path / aside[0]).read_text() == '{"final_step": 4'
  path.write_text('[1, 2]')  # JSON, but not an object
  assert run_dir.read_json(str(path)) is None


def test_the_identity_keeps_its_history(tmp_path):
  run_dir.write_identity(str(tmp_path), {'a': 1})
  run_dir.write_identity(str(tmp_path), {'a': 2})
  record = json.loads((tmp_path / run_dir.IDENTITY).read_text())
  assert record == {'settings': {'a': 2}, 'history': [{'a': 1}]}


@pytest.mark.parametrize('key, defining', [
    ('build_model.mu', True), ('run.global_batch_size', True), ('run.seed', True),
    ('load_data.name', True), ('load_data.data_dir', False), ('run.knn', False),
    ('run.verbose', False), ('linear_probe.epochs', False), ('run.report_test', False)])
def test_one_table_says_what_defines_a_run(key, defining):
  assert schema.defines_run(key) is defining


# --- claim and lock ----------------------------------------------------------------------------

def test_an_unset_model_dir_is_refused():
  for value in ('', '   '):
    with pytest.raises(UserError, match='--model_dir is empty'):
      run_dir.claim(value)


def test_a_directory_of_other_files_is_refused_unless_reused(tmp_path):
  (tmp_path / 'thesis.tex').write_text('years of work')
  with pytest.raises(UserError, match=r'not a minc_tf run \(thesis.tex\).*--reuse_model_dir'):
    run_dir.claim(str(tmp_path))
  run_dir.claim(str(tmp_path), reuse=True)
  assert (tmp_path / 'thesis.tex').read_text() == 'years of work'


def test_our_own_empty_or_new_dirs_are_claimed(tmp_path):
  run_dir.claim(str(tmp_path / 'new'))
  run_dir.claim(str(tmp_path))  # empty
  (tmp_path / '.write_test-1-abc').write_text('')  # hidden files are not someone's data
  run_dir.claim(str(tmp_path))
  for name in ('results.json', 'checkpoints', 'runs'):
    d = tmp_path / name.replace('.', '_')
    d.mkdir()
    (d / name).mkdir() if name != 'results.json' else (d / name).write_text('{}')
    (d / 'notes.txt').write_text('mine')
    run_dir.claim(str(d))


def test_a_second_lock_names_the_holder_and_a_released_one_is_free(tmp_path):
  held = run_dir.Lock(str(tmp_path)).acquire()
  record = json.loads((tmp_path / run_dir.LOCK).read_text())
  assert record['pid'] == os.getpid() and record['host']
  with pytest.raises(UserError, match=rf"pid {os.getpid()}.*being trained|being trained.*pid "
                                      rf"{os.getpid()}"):
    run_dir.Lock(str(tmp_path)).acquire()
  held.release()
  assert not (tmp_path / run_dir.LOCK).exists()
  run_dir.Lock(str(tmp_path)).acquire().release()


def test_a_stale_lock_is_taken_over(tmp_path, caplog):
  import socket
  import subprocess
  import sys
  gone = subprocess.Popen([sys.executable, '-c', 'pass'])
  gone.wait()
  import time
  (tmp_path / run_dir.LOCK).write_text(json.dumps(
      {'host': socket.gethostname(), 'pid': gone.pid, 'token': 'x', 'heartbeat': time.time()}))
  lock = run_dir.Lock(str(tmp_path)).acquire()
  assert 'its process is gone' in caplog.text
  lock.release()
  # This process's pid, but a token it never held: a restarted container's earlier life.
  (tmp_path / run_dir.LOCK).write_text(json.dumps(
      {'host': socket.gethostname(), 'pid': os.getpid(), 'token': 'old', 'heartbeat': time.time()}))
  run_dir.Lock(str(tmp_path)).acquire().release()
  assert 'an earlier life of this pid' in caplog.text
  # A half-written (unreadable) lock younger than a heartbeat is held, an old one is not.
  (tmp_path / run_dir.LOCK).write_text('{"host": "h')
  with pytest.raises(UserError, match='unreadable lock'):
    run_dir.Lock(str(tmp_path)).acquire()
  run_dir.Lock(str(tmp_path), heartbeat_s=0.0).acquire().release()
  # Another host's holder: fresh is held, an old heartbeat is stale.
  (tmp_path / run_dir.LOCK).write_text(json.dumps(
      {'host': 'elsewhere', 'pid': 1, 'token': 'y', 'heartbeat': time.time()}))
  with pytest.raises(UserError, match='host elsewhere, pid 1'):
    run_dir.Lock(str(tmp_path)).acquire()
  (tmp_path / run_dir.LOCK).write_text(json.dumps(
      {'host': 'elsewhere', 'pid': 1, 'token': 'y', 'heartbeat': time.time() - 3600}))
  run_dir.Lock(str(tmp_path), stale_s=600).acquire().release()


def test_the_lock_works_on_a_remote_path():
  import tensorflow as tf
  path = 'ram://lock_test/run'
  tf.io.gfile.makedirs(path)
  lock = run_dir.Lock(path).acquire()
  assert tf.io.gfile.exists(f'{path}/{run_dir.LOCK}')
  with pytest.raises(UserError, match='being trained by another process'):
    run_dir.Lock(path).acquire()
  lock.release()
  assert not tf.io.gfile.exists(f'{path}/{run_dir.LOCK}')


def test_the_heartbeat_refreshes_the_lock(tmp_path):
  import time
  lock = run_dir.Lock(str(tmp_path), heartbeat_s=0.05).acquire()
  first = json.loads((tmp_path / run_dir.LOCK).read_text())['heartbeat']
  time.sleep(0.3)
  assert json.loads((tmp_path / run_dir.LOCK).read_text())['heartbeat'] > first
  lock.release()
