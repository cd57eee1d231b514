"""catalog.py: every setting listed with its default, allowed values and doc; the resolved
config of a command; main's --list_settings and --print_config run nothing."""

import os
import subprocess
import sys

import gin

from conftest import REPO
from minc_tf import catalog
from minc_tf import config
from minc_tf import gin_internals


def test_every_parameter_of_every_configurable_is_listed_with_a_doc_line():
  entries = catalog.entries()
  keys = [e['key'] for e in entries]
  assert len(keys) > 100 and len(set(keys)) == len(keys)
  for selector in catalog.SELECTORS:
    listed = {k.split('.', 1)[1] for k in keys if k.startswith(selector + '.')}
    params = set(gin_internals.defaults(selector)) - catalog._NOT_SETTINGS
    assert listed == params and listed, selector
  undocumented = [e['key'] for e in entries if not e['doc']]
  assert undocumented == [], f'add a "param: ..." line to their docstrings: {undocumented}'
  by_key = {e['key']: e for e in entries}
  # The allowed values come from the checks that enforce them.
  assert by_key['run.global_batch_size']['allowed'] == 'an integer >= 1'
  assert by_key['view_transforms.hue']['allowed'] == 'a number in [0, 0.5]'
  assert by_key['linear_probe.l2']['allowed'] == 'a number in [0, inf]'
  assert by_key['load_data.channels']['allowed'] == 'one of 1, 3'
  # A check naming a module's constant (train.EXPORT_FORMATS) is read too.
  assert by_key['run.export_formats']['allowed'] == (
      "a list of distinct values out of 'onnx', 'litert', 'openvino' (or empty)")
  assert by_key['build_model.mu']['default'] == 10.0 and '(minc, spectral)' in by_key[
      'build_model.mu']['doc']
  assert sum(1 for e in entries if e['allowed']) > 70
  text = catalog.list_text()
  assert "  build_model.summary_memory = 'ema'  [one of 'ema', 'queue']" in text


def test_the_resolved_config_marks_what_the_command_binds():
  config.parse_gin(['gin/quickstart.gin'], ['run.epochs = 7'])
  text = catalog.resolved_text()
  assert 'run.epochs = 7  # bound' in text and "load_data.name = 'fashion_mnist'  # bound" in text
  assert 'run.steps_per_execution = 1\n' in text  # a default, not marked
  assert len(text.splitlines()) > 100
  # A macro shows its value (and its name), not the unresolved reference.
  gin.clear_config()
  config.parse_gin(['gin/minc.gin'], [])
  text = catalog.resolved_text()
  assert 'run.epochs = 300  # bound, %EPOCHS' in text and '%EPOCHS  #' not in text


def test_list_and_print_flags_exit_0_and_touch_no_model_dir(tmp_path):
  for flag in ('--list_settings', '--print_config'):
    proc = subprocess.run([sys.executable, '-m', 'minc_tf.main', flag,
                           '--gin_file=gin/quickstart.gin', f'--model_dir={tmp_path / "run"}'],
                          capture_output=True, text=True, cwd=REPO, timeout=300,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'build_model.mu = 10.0' in proc.stdout
    assert not (tmp_path / 'run').exists()
