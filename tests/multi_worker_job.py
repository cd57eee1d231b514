"""One worker of the multi-worker test (test_strategy.py), or the single-process reference.

  python multi_worker_job.py OUT.npz            single process, default strategy
  TF_CONFIG=... python multi_worker_job.py OUT.npz   one MultiWorkerMirroredStrategy worker
"""

import os
import sys

os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import gin  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from minc_tf import model as model_lib  # noqa: E402
from minc_tf import strategy as strategy_lib  # noqa: E402

GLOBAL_BATCH, STEPS, SHAPE = 16, 3, (8, 8, 1)


def global_batches():
  rng = np.random.default_rng(7)
  x1 = rng.normal(size=(GLOBAL_BATCH * STEPS,) + SHAPE).astype(np.float32)
  x2 = rng.normal(size=(GLOBAL_BATCH * STEPS,) + SHAPE).astype(np.float32)
  y = rng.integers(0, 3, size=GLOBAL_BATCH * STEPS)
  return x1, x2, y


def main(out):
  multi = 'TF_CONFIG' in os.environ
  strategy = strategy_lib.get_strategy('multi_worker' if multi else 'default')
  for k, v in {'build_encoder.depth': 18, 'build_encoder.small_images': True,
               'build_encoder.stage_blocks': (1,), 'build_encoder.base_width': 4}.items():
    gin.bind_parameter(k, v)
  keras.utils.set_random_seed(0)
  with strategy.scope():
    model = model_lib.build_model(SHAPE, method='minc', num_classes=3, projector_hidden=(16,),
                                  projector_dim=8, total_steps=STEPS,
                                  sync_bn=strategy.num_replicas_in_sync > 1)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    model.optimizer.build(model.online_variables)
  x1, x2, y = global_batches()

  def dataset_fn(ctx):
    # Rows [i*n, (i+1)*n) of every global batch go to input pipeline i.
    n = ctx.get_per_replica_batch_size(GLOBAL_BATCH)
    ds = tf.data.Dataset.from_tensor_slices(((x1, x2), y)).batch(GLOBAL_BATCH)
    return ds.map(lambda v, l: ((v[0][ctx.input_pipeline_id * n:(ctx.input_pipeline_id + 1) * n],
                                 v[1][ctx.input_pipeline_id * n:(ctx.input_pipeline_id + 1) * n]),
                                l[ctx.input_pipeline_id * n:(ctx.input_pipeline_id + 1) * n]))

  ds = strategy.distribute_datasets_from_function(dataset_fn)
  model.fit(ds, epochs=1, steps_per_epoch=STEPS, verbose=0)
  np.savez(out, *[w.numpy() for w in model.weights])


if __name__ == '__main__':
  main(sys.argv[1])
