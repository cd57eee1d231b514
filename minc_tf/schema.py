"""The facts on disk, each stated once: which settings define a run, and the result keys.

A model dir's run_identity.json, a study's run directory names and TensorBoard's HParams read
the settings from here; results.json, the HParams metrics and the study tables read the
result keys from here.
"""

from typing import NamedTuple

import numpy as np

# --- What defines a run ---------------------------------------------------------------------
# What a model dir trains: method, architecture, data, views, optimizer and schedule, batch,
# seed and numerics. A rerun with other values would be another run in the same dir (identity)
# and is another run of a study (its run directory).
DEFINING_PREFIXES = ('build_model.', 'build_encoder.', 'build_optimizer.', 'view_transforms.',
                     'load_data.')
DEFINING_RUN = ('run.global_batch_size', 'run.epochs', 'run.steps_per_epoch', 'run.seed',
                'run.augment_on_device', 'run.mixed_precision', 'run.sync_bn')
# Where the data lies, how it is read, and what is evaluated on: not what the run trains.
NOT_DEFINING = ('load_data.data_dir', 'load_data.idx_dir', 'load_data.image_dir',
                'load_data.cache', 'load_data.on_corrupt', 'load_data.eval_split',
                'load_data.eval_every')
# Code defaults changed after study run dirs were first named (study.run_name): a run is named
# against the default it had then, so a run binding the new default keeps its old name and an
# unbound one, which now trains the new value, gets a new name. (The code defaults now equal
# the shipped gin files' values: gin/quickstart.gin, gin/minc.gin.)
NAMING_DEFAULTS = {'build_model.mu': 1.0, 'build_model.summary_decay': 0.99}
# What shapes the checkpoint's variables: all an eval or export must agree with.
ARCHITECTURE = ('build_model.method', 'build_model.projector_hidden', 'build_model.projector_dim',
                'build_model.predictor', 'build_model.predictor_hidden', 'build_model.use_target',
                'build_model.summary_memory', 'build_model.summary_horizon', 'build_encoder.')


def defines_run(key):
  """Whether the setting `key` ('selector.param') is part of what a run trains."""
  if key in DEFINING_RUN:
    return True
  return key.startswith(DEFINING_PREFIXES) and key not in NOT_DEFINING


def record_value(value):
  """A setting's value as records store it (JSON, HParams): bool, int, float or str as they
  are, NumPy scalars as Python ones, anything else (tuples, None, dicts) as its repr."""
  if isinstance(value, np.generic):
    value = value.item()
  return value if isinstance(value, (bool, int, float, str)) else repr(value)


# --- Result keys ----------------------------------------------------------------------------
class Result(NamedTuple):
  key: str
  header: str = None      # its column in a study's table (mean +- std over seeds), if any
  evaluation: bool = False  # a figure of one checkpoint's evaluation (replaced by a new one)
  hparam: bool = False    # a metric in TensorBoard's HParams dashboard


RESULTS = (
    Result('probe_top1', 'probe top-1', evaluation=True, hparam=True),
    Result('knn_top1', 'kNN top-1', evaluation=True, hparam=True),
    Result('test_probe_top1', 'test probe top-1', evaluation=True),
    Result('test_knn_top1', 'test kNN top-1', evaluation=True),
    Result('linear_eval_top1', 'linear eval top-1', evaluation=True, hparam=True),
    Result('test_linear_eval_top1', 'test linear eval top-1', evaluation=True),
    Result('finetune_top1', 'fine-tune top-1', evaluation=True),
    Result('feature_effective_rank', 'feature eff. rank', evaluation=True, hparam=True),
    Result('val_objective', 'val. Spectral objective', evaluation=True, hparam=True),
    Result('val_objective_clipped', 'val. objective (clip mu)', evaluation=True, hparam=True),
    Result('val_objective_pairs', evaluation=True),
    Result('final_loss', 'final loss', hparam=True),
    Result('pretrain_wall_time_s', 'pretrain s', hparam=True),
    Result('random_init_top1', evaluation=True, hparam=True),
    Result('raw_pixel_top1', evaluation=True, hparam=True),
    Result('final_probe_train_acc', hparam=True),
    Result('test_random_init_top1', evaluation=True),
    Result('test_raw_pixel_top1', evaluation=True),
    Result('feature_dim', evaluation=True),
    Result('eval_wall_time_s', evaluation=True),
    Result('linear_eval_wall_time_s', evaluation=True),
    Result('eval_step', evaluation=True),
    Result('eval_split', evaluation=True),
)
EVAL_KEYS = tuple(r.key for r in RESULTS if r.evaluation)
HPARAM_METRICS = tuple(r.key for r in RESULTS if r.hparam)
COLUMNS = tuple((r.key, r.header) for r in RESULTS if r.header)
