"""tf.distribute strategies, chosen by name (never by catching errors)."""

import tensorflow as tf

from minc_tf.errors import UserError

STRATEGIES = ('default', 'mirrored', 'multi_worker', 'tpu')


def get_strategy(name='default', tpu=None):
  """Returns the strategy `name`: default, mirrored (all local GPUs, else CPUs), multi_worker
  (MultiWorkerMirroredStrategy from TF_CONFIG) or tpu (`tpu`: a TPU name, or 'local' on a TPU VM).
  """
  if name == 'default':
    return tf.distribute.get_strategy()
  if name == 'mirrored':
    gpus = tf.config.list_logical_devices('GPU')
    devices = [d.name for d in (gpus or tf.config.list_logical_devices('CPU'))]
    return tf.distribute.MirroredStrategy(devices)
  if name == 'multi_worker':
    return tf.distribute.MultiWorkerMirroredStrategy()
  if name == 'tpu':
    if not tpu:
      raise UserError("--strategy=tpu needs --tpu: the TPU's name, or 'local' on a TPU VM.")
    try:
      resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
      tf.config.experimental_connect_to_cluster(resolver)
      tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, tf.errors.OpError) as e:
      raise UserError(f'Could not reach the TPU {tpu!r} ({e}). Fix: run on a Cloud TPU VM with '
                      "--tpu=local, or pass the TPU's name and zone-visible credentials.") from None
    return tf.distribute.TPUStrategy(resolver)
  raise UserError(f'Unknown --strategy {name!r}; choose one of {", ".join(STRATEGIES)}.')
