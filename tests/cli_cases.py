"""The CLI's shared cases for the bad-input and fault tests (test_errors.py, test_faults.py): a
tiny Fashion-MNIST stand-in, the command line of a tiny run, one finished run copied per test,
and the CLI's main run in this process.

A module of fixtures, imported by name by the test modules that use them (pytest finds
fixtures in a test module's namespace), so that each module trains the finished run once.
"""

import glob
import hashlib
import json
import os
import shutil

import gin
import numpy as np
import pytest

from minc_tf import main as main_lib
from helpers import write_idx

STEPS, EPOCHS = 3, 2
FINAL = STEPS * EPOCHS


@pytest.fixture(scope='session')
def idx_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp('idx')
  rng = np.random.default_rng(0)
  for split, n in (('train', 256), ('t10k', 64)):
    write_idx(root / f'{split}-images-idx3-ubyte.gz', rng.integers(0, 256, (n, 28, 28)))
    write_idx(root / f'{split}-labels-idx1-ubyte.gz', rng.integers(0, 10, n))
  return root


def argv(model_dir, idx, *extra, mode='train_and_eval'):
  return ['minc_tf', f'--model_dir={model_dir}', '--gin_file=gin/quickstart.gin',
          f"--gin_bindings=load_data.idx_dir='{idx}'",
          '--gin_bindings=build_encoder.base_width=4', '--gin_bindings=run.global_batch_size=32',
          f'--gin_bindings=run.steps_per_epoch={STEPS}', f'--gin_bindings=run.epochs={EPOCHS}',
          f'--gin_bindings=run.checkpoint_every_steps={STEPS}', '--gin_bindings=run.verbose=0',
          '--gin_bindings=run.eval_train_examples=128', '--gin_bindings=run.eval_test_examples=64',
          '--gin_bindings=run.baselines=False', '--gin_bindings=run.feature_rank_images=64',
          f'--mode={mode}', *extra]


def launch(args, capsys, caplog=None):
  """Runs the CLI's main in this process: (exit code, what it printed and logged)."""
  gin.clear_config()
  main_lib.FLAGS.unparse_flags()
  main_lib.FLAGS(args)
  code = 0
  try:
    main_lib.main([])
  except SystemExit as e:
    code = e.code
  finally:
    gin.clear_config()
  out = capsys.readouterr()
  logged = caplog.text if caplog is not None else ''
  if caplog is not None:
    caplog.clear()
  return code, out.out + out.err + logged


@pytest.fixture
def cli(capsys, caplog):
  caplog.set_level('WARNING')
  return lambda args: launch(args, capsys, caplog)


def snapshot(model_dir):
  """{relative path: sha256} of every file under model_dir."""
  out = {}
  for path in glob.glob(os.path.join(model_dir, '**'), recursive=True):
    if os.path.isfile(path):
      with open(path, 'rb') as f:
        out[os.path.relpath(path, model_dir)] = hashlib.sha256(f.read()).hexdigest()
  return out


@pytest.fixture(scope='session')
def trained(tmp_path_factory, idx_dir):
  """A finished tiny train_and_eval run: checkpoints at steps 3 and 6, results, export."""
  model_dir = str(tmp_path_factory.mktemp('trained') / 'run')

  class _Capsys:  # module-scoped fixtures cannot use capsys
    @staticmethod
    def readouterr():
      return type('O', (), {'out': '', 'err': ''})()

  code, _ = launch(argv(model_dir, idx_dir), _Capsys)
  assert code == 0
  return model_dir


@pytest.fixture
def run_dir(trained, tmp_path):
  path = str(tmp_path / 'run')
  shutil.copytree(trained, path)
  return path


def results(model_dir):
  with open(os.path.join(model_dir, 'results.json')) as f:
    return json.load(f)
