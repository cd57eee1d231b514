"""run(): strategy -> data -> model -> fit -> checkpoint -> export -> evaluation -> results.json.

Every hyperparameter is a keyword argument of a gin-configurable function (this one, load_data,
build_model, build_encoder, build_optimizer, view_transforms, linear_probe); main.py only parses
flags and gin and calls run().
"""

import json
import os
import time

import gin
import keras
import numpy as np
import tensorflow as tf

from minc_tf import data as data_lib
from minc_tf import evaluate
from minc_tf import export as export_lib
from minc_tf import model as model_lib
from minc_tf import networks
from minc_tf import optim
from minc_tf.errors import UserError

MODES = ('train', 'eval', 'export', 'train_and_eval')
CHECKPOINT = 'checkpoint.weights.h5'


def _check_writable(model_dir):
  try:
    tf.io.gfile.makedirs(model_dir)
    probe = os.path.join(model_dir, '.write_test')
    with tf.io.gfile.GFile(probe, 'w') as f:
      f.write('ok')
    tf.io.gfile.remove(probe)
  except (OSError, tf.errors.OpError) as e:
    raise UserError(f'The model dir {model_dir} is not writable ({e.__class__.__name__}). Fix: '
                    'pass --model_dir=<a directory you can write>.') from None


def _save_checkpoint(model, model_dir):
  """Writes the weights to a temporary file, then renames: a crash never leaves a torn file."""
  path = os.path.join(model_dir, CHECKPOINT)
  tmp = path + '.tmp.weights.h5'
  model.save_weights(tmp)
  os.replace(tmp, path)
  return path


def _load_checkpoint(model, model_dir):
  path = os.path.join(model_dir, CHECKPOINT)
  if not os.path.exists(path):
    raise UserError(f'No checkpoint in {model_dir} ({CHECKPOINT} is missing). Fix: train first '
                    '(--mode=train) or point --model_dir at a trained run.')
  model.load_weights(path)


def _write_text(path, text):
  with tf.io.gfile.GFile(path, 'w') as f:
    f.write(text)


@gin.configurable(denylist=['mode', 'model_dir', 'strategy'])
def run(mode, model_dir, strategy, global_batch_size=4096, epochs=300, steps_per_epoch=None,
        steps_per_execution=1, jit_compile=False, seed=None, verbose=1,
        eval_batch_size=512, eval_train_examples=None, eval_test_examples=None, baselines=True,
        knn=True,
        tensorboard_update_freq=100):
  """Runs one experiment in `model_dir` and returns the results dict.

  global_batch_size: across all replicas; must divide by strategy.num_replicas_in_sync.
  steps_per_epoch: default num_train // global_batch_size.
  steps_per_execution: train steps per host round trip (the TPU host loop).
  jit_compile: XLA-compile the train step (TPUs always do; off by default on CPU).
  eval_train_examples / eval_test_examples: caps on the examples the offline probe reads (None:
    all; for smoke tests).
  baselines: also probe a randomly initialised encoder and the raw pixels.
  """
  if mode not in MODES:
    raise UserError(f'Unknown --mode {mode!r}; choose one of {", ".join(MODES)}.')
  _check_writable(model_dir)
  if seed is not None:
    keras.utils.set_random_seed(seed)
  replicas = strategy.num_replicas_in_sync
  if global_batch_size % replicas:
    raise UserError(f'The global batch size {global_batch_size} does not divide by the '
                    f'{replicas} replicas of this strategy. Fix: bind '
                    f'run.global_batch_size to a multiple of {replicas}.')
  data = data_lib.load_data()
  steps_per_epoch = steps_per_epoch or data.num_train // global_batch_size
  if steps_per_epoch < 1:
    raise UserError(f'{data.name} has {data.num_train} training examples, fewer than one global '
                    f'batch of {global_batch_size}; lower run.global_batch_size.')
  total_steps = steps_per_epoch * epochs

  with strategy.scope():
    model = model_lib.build_model(data.image_shape, num_classes=data.num_classes,
                                  total_steps=total_steps, sync_bn=replicas > 1)
    optimizer = optim.build_optimizer(global_batch_size, steps_per_epoch, epochs)
    model.compile(optimizer=optimizer, jit_compile=jit_compile,
                  steps_per_execution=steps_per_execution)

  results = {'method': model.method, 'dataset': data.name, 'epochs': epochs,
             'batch_size': global_batch_size, 'steps': total_steps, 'replicas': replicas}
  if mode in ('train', 'train_and_eval'):
    _write_text(os.path.join(model_dir, 'config.gin'), gin.config_str())
    dataset = strategy.distribute_datasets_from_function(
        lambda ctx: data.pretrain_dataset(ctx.get_per_replica_batch_size(global_batch_size),
                                          ctx, seed=seed))
    callbacks = [
        keras.callbacks.BackupAndRestore(os.path.join(model_dir, 'backup')),
        keras.callbacks.TensorBoard(os.path.join(model_dir, 'tensorboard'),
                                    update_freq=tensorboard_update_freq),
    ]
    start = time.time()
    history = model.fit(dataset, epochs=epochs, steps_per_epoch=steps_per_epoch,
                        callbacks=callbacks, verbose=verbose)
    wall = time.time() - start
    results.update(pretrain_wall_time_s=round(wall, 1),
                   images_per_s=round(total_steps * global_batch_size / wall, 1),
                   final_loss=float(history.history['loss'][-1]))
    _save_checkpoint(model, model_dir)
    export_lib.export_encoder(model.encoder, data.mean, data.std,
                              os.path.join(model_dir, 'export'))
    _write_text(os.path.join(model_dir, 'operative_config.gin'), gin.operative_config_str())
  else:
    _load_checkpoint(model, model_dir)
    if mode == 'export':
      export_lib.export_encoder(model.encoder, data.mean, data.std,
                                os.path.join(model_dir, 'export'))

  if mode in ('eval', 'train_and_eval'):
    results.update(evaluate_encoders(model.encoder, data, eval_batch_size, eval_train_examples,
                                     eval_test_examples, baselines, knn))
  with tf.io.gfile.GFile(os.path.join(model_dir, 'results.json'), 'w') as f:
    json.dump(results, f, indent=2)
  return results


def evaluate_encoders(encoder, data, batch_size, max_train, max_test, baselines, knn):
  """Linear probe (and kNN) top-1 on frozen features, with the same-run baselines."""
  start = time.time()
  train_ds = data.eval_dataset(data.train_split, batch_size, limit=max_train)
  test_ds = data.eval_dataset(data.eval_split, batch_size, limit=max_test)
  out = {}

  def probe(name, enc):
    tr_x, tr_y = evaluate.extract_features(enc, train_ds)
    te_x, te_y = evaluate.extract_features(enc, test_ds)
    out[f'{name}_top1'] = evaluate.linear_probe(tr_x, tr_y, te_x, te_y, data.num_classes)
    if knn and name == 'probe':
      out['knn_top1'] = evaluate.knn_accuracy(tr_x, tr_y, te_x, te_y, data.num_classes)
    return tr_x

  feats = probe('probe', encoder)
  out['feature_dim'] = int(feats.shape[1])
  out['feature_effective_rank'] = float(effective_rank(feats))
  if baselines:
    probe('random_init', networks.build_encoder(data.image_shape, name='random_encoder'))
    pixels = keras.Sequential([keras.Input(data.image_shape), keras.layers.Flatten()])
    probe('raw_pixel', pixels)
  out['eval_wall_time_s'] = round(time.time() - start, 1)
  return out


def effective_rank(features):
  """exp(entropy) of the normalised singular values of the centred features (Roy & Vetterli)."""
  x = features - features.mean(0, keepdims=True)
  s = np.linalg.svd(x[:20000], compute_uv=False)
  p = s / max(s.sum(), 1e-12)
  p = p[p > 0]
  return float(np.exp(-np.sum(p * np.log(p))))
