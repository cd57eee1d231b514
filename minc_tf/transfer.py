"""Transfer: a finished run's encoder on another labelled dataset, frozen or fine-tuned.

  python -m minc_tf.main --mode=transfer --source_dir=/tmp/minc_quickstart \
      --model_dir=/tmp/transfer --gin_bindings="load_data.name='image_folder'" \
      --gin_bindings="load_data.image_dir='/data/flowers'"

The encoder comes from <source_dir>/export/encoder.keras (what any user of the export gets),
rebuilt for images of any size (its convolutions and global pooling do not depend on it), with
the source's input normalisation (the one it was trained with) replacing the target dataset's.
It is evaluated as a finished run is (evaluate.evaluate_encoders: linear probe and kNN on frozen
features with the random-init and raw-pixel baselines, and the BYOL linear evaluation), and,
with fine_tune, trained end to end with a new linear head (fine_tune's settings). The source's
online probe (its classes) is never read. The long phases resume after a stop
(<model_dir>/backup_linear_eval_*, backup_finetune_*); the probe and kNN, minutes, run again.
"""

import os
import tempfile
import time

import gin
import keras
import numpy as np
import tensorflow as tf

from minc_tf import evaluate
from minc_tf import export
from minc_tf import run_dir
from minc_tf import runtime
from minc_tf.errors import UserError, int_at_least, real_in, require


def load_encoder(source_dir, channels):
  """(encoder accepting [N, H, W, channels] images of any H, W, mean, std, step) from the
  export of the run in `source_dir`."""
  path = os.path.join(source_dir, 'export', 'encoder.keras')
  if not tf.io.gfile.exists(path):
    raise UserError(f'{source_dir} has no exported encoder ({path}). Fix: point --source_dir '
                    'at a finished minc_tf run (rerun its training command to finish it, or '
                    f'run --mode=export --model_dir={source_dir}).')
  local = path
  if '://' in path:  # Keras loads local files: copy a gs:// export first
    local = os.path.join(tempfile.mkdtemp(prefix='minc_tf_transfer_'), 'encoder.keras')
    tf.io.gfile.copy(path, local, overwrite=True)
  serving = keras.models.load_model(local)
  inner = next(layer for layer in serving.layers if isinstance(layer, keras.Model))
  source_channels = inner.input_shape[-1]
  if source_channels != channels:
    raise UserError(f'The encoder of {source_dir} takes {source_channels}-channel images; '
                    f'this dataset has {channels}. Fix: for an image folder bind '
                    f'load_data.channels = {source_channels} (its images are converted); a '
                    'TFDS dataset has its own channel count: transfer an encoder trained on '
                    'images like these.')
  encoder = export.float32_encoder(inner, any_size=True)  # exports before this one: fixed size
  norm = serving.get_layer('normalize')
  # Rescaling(scale=1 / (255 std), offset=-mean / std): the source's normalisation.
  std = 1.0 / (255.0 * np.asarray(norm.scale, np.float64))
  mean = -np.asarray(norm.offset, np.float64) * std
  return encoder, tuple(mean.tolist()), tuple(std.tolist()), export.exported_step(
      os.path.dirname(path))


def check_fine_tune(epochs, batch_size, base_learning_rate, momentum, weight_decay):
  for name, value, check in (('epochs', epochs, int_at_least(1)),
                             ('batch_size', batch_size, int_at_least(1)),
                             ('base_learning_rate', base_learning_rate,
                              real_in(0, float('inf'), low_open=True)),
                             ('momentum', momentum, real_in(0, 1, high_open=True)),
                             ('weight_decay', weight_decay, real_in(0, float('inf')))):
    require(f'fine_tune.{name}', value, check)


@gin.configurable(denylist=['encoder', 'data', 'strategy', 'backup_dir'])
def fine_tune(encoder, data, strategy, epochs=30, batch_size=256, base_learning_rate=0.01,
              momentum=0.9, weight_decay=0.0, backup_dir=None):
  """Top-1 (%) on the evaluation split of the encoder trained end to end with a new linear
  head: SGD with Nesterov momentum, lr base_learning_rate x batch_size / 256 cosine-decayed,
  on the linear evaluation's crops and flips (evaluate.offline_linear_eval with the encoder
  trainable). The encoder passed in is changed (a copy of the export, not the export).
  epochs / batch_size: the fine-tuning's length in epochs of the training split, and its batch.
  base_learning_rate / momentum / weight_decay: its SGD (lr at batch 256; decoupled decay).
  """
  check_fine_tune(epochs, batch_size, base_learning_rate, momentum, weight_decay)
  return evaluate.offline_linear_eval(
      encoder, data, strategy, epochs=epochs, batch_size=batch_size,
      base_learning_rate=base_learning_rate, momentum=momentum, weight_decay=weight_decay,
      backup_dir=backup_dir, trainable=True)


def check_source(source_dir, model_dir):
  """Before any data is read: a source is named, it is not the results' dir, and it holds an
  export."""
  if not source_dir:
    raise UserError('--mode=transfer needs --source_dir, the finished run whose encoder to '
                    'transfer. Fix: add --source_dir=<its --model_dir>.')
  if os.path.abspath(source_dir) == os.path.abspath(model_dir):
    raise UserError('--model_dir is the --source_dir: transfer results would mix with the '
                    'run\'s own. Fix: give --model_dir a new directory.')
  if not tf.io.gfile.exists(os.path.join(source_dir, 'export', 'encoder.keras')):
    load_encoder(source_dir, None)  # its error names the fix


@gin.configurable('transfer', denylist=['model_dir', 'source_dir', 'strategy', 'data',
                                         'fine_tuning', 'reuse_model_dir'])
def run(model_dir, source_dir, strategy, data, eval_batch_size=512, eval_train_examples=None,
        eval_test_examples=None, baselines=True, knn=True, linear_eval=True, fine_tuning=False,
        reuse_model_dir=False):
  """Evaluates (and with fine_tuning, main's --mode=fine_tune, fine-tunes) the encoder of
  `source_dir` on `data`; writes <model_dir>/results.json and returns the results.

  eval_batch_size: images per batch of feature extraction.
  eval_train_examples / eval_test_examples: caps on the images the probe and kNN read (None:
    all).
  baselines: also probe a random-init encoder of the same architecture and the raw pixels.
  knn: also score weighted kNN on the frozen features.
  linear_eval: also run the BYOL linear evaluation (offline_linear_eval's settings).
  """
  check_source(source_dir, model_dir)
  if data.num_classes < 2:
    raise UserError(f'{data.name} has {data.num_classes} labelled classes: a transfer '
                    'evaluation needs at least two. Fix: use labelled images '
                    '(<dir>/<class>/<image>), or a TFDS dataset with labels.')
  # Every setting before any work (a bad one would otherwise stop it after the long phases).
  require('transfer.eval_batch_size', eval_batch_size, int_at_least(1))
  for name, value in (('eval_train_examples', eval_train_examples),
                      ('eval_test_examples', eval_test_examples)):
    require(f'transfer.{name}', value, int_at_least(1, optional=True))
  evaluate.check_settings()
  if fine_tuning:
    tuned = evaluate.settings_of(fine_tune)
    check_fine_tune(*(tuned[k] for k in ('epochs', 'batch_size', 'base_learning_rate',
                                         'momentum', 'weight_decay')))
  with strategy.scope():  # its variables on the strategy's devices (fine-tuning trains them)
    encoder, mean, std, step = load_encoder(source_dir, data.image_shape[-1])
  data.mean, data.std = mean, std  # the encoder's own normalisation, not the target's
  runtime.check_evaluation_memory(encoder.output_shape[-1], data, eval_train_examples,
                                  eval_test_examples, baselines, knn, False)
  # A multi-worker run: every worker computes (collectives), the chief alone writes model_dir.
  chief = strategy.extended.should_checkpoint
  if chief:
    run_dir.claim(model_dir, reuse=reuse_model_dir)
    tf.io.gfile.makedirs(model_dir)
  out_dir = runtime.worker_dir(strategy, model_dir)
  lock = run_dir.Lock(model_dir) if chief else None
  if lock is not None:
    lock.acquire()
  try:
    start = time.time()
    results = {'source_dir': source_dir, 'source_step': step, 'dataset': data.name,
               'image_size': data.image_shape[0], 'num_classes': data.num_classes}
    results.update(evaluate.evaluate_encoders(
        encoder, data, eval_batch_size, eval_train_examples, eval_test_examples, baselines,
        knn, strategy, linear_eval=linear_eval,
        linear_eval_backup=os.path.join(out_dir, 'backup_linear_eval')))
    if fine_tuning:
      results['finetune_top1'] = fine_tune(encoder, data, strategy,
                                           backup_dir=os.path.join(out_dir, 'backup_finetune'))
    results['transfer_wall_time_s'] = round(time.time() - start, 1)
    run_dir.write_results(out_dir, results, step, session=False, hparams=False)
    return results
  finally:
    if lock is not None:
      lock.release()
