"""tf.distribute strategies, chosen by name (never by catching errors)."""

import os

from absl import logging
import tensorflow as tf

from minc_tf.errors import UserError

STRATEGIES = ('default', 'mirrored', 'multi_worker', 'tpu')


def host_has_nvidia_gpu():
  """Whether the NVIDIA driver shows a GPU on this host (whatever TensorFlow can see)."""
  return os.path.exists('/dev/nvidia0') or os.path.exists('/proc/driver/nvidia/gpus')


def get_strategy(name='default', tpu=None):
  """Returns the strategy `name`: default, mirrored (all local GPUs, else CPUs), multi_worker
  (MultiWorkerMirroredStrategy from TF_CONFIG) or tpu (`tpu`: a TPU name, or 'local' on a TPU VM).
  """
  if name == 'default':
    return tf.distribute.get_strategy()
  if name == 'mirrored':
    gpus = tf.config.list_logical_devices('GPU')
    if not gpus and host_has_nvidia_gpu():
      raise UserError(
          'This host has an NVIDIA GPU, but TensorFlow sees none (built with CUDA: '
          f'{tf.test.is_built_with_cuda()}): a CPU-only build such as tensorflow-cpu, or missing '
          "CUDA libraries. Fix: pip uninstall -y tensorflow-cpu && pip install -e '.[gpu]' "
          '(tensorflow[and-cuda]).')
    if not gpus:
      logging.warning('--strategy=mirrored: no GPU here; mirroring over the CPU devices.')
    devices = [d.name for d in (gpus or tf.config.list_logical_devices('CPU'))]
    return tf.distribute.MirroredStrategy(devices)
  if name == 'multi_worker':
    check_tf_config(os.environ.get('TF_CONFIG'))
    return tf.distribute.MultiWorkerMirroredStrategy(
        communication_options=multi_worker_communication())
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


def multi_worker_communication(gpus=None):
  """NCCL for the all-reduces where this host has GPUs (AUTO picks the gRPC ring, several
  times slower across GPU hosts: TensorFlow's multi-worker guide), AUTO elsewhere (CPU
  workers, where NCCL does not exist)."""
  gpus = tf.config.list_physical_devices('GPU') if gpus is None else gpus
  implementation = (tf.distribute.experimental.CommunicationImplementation.NCCL if gpus
                    else tf.distribute.experimental.CommunicationImplementation.AUTO)
  return tf.distribute.experimental.CommunicationOptions(implementation=implementation)


def check_tf_config(text):
  """Stops a multi-worker launch whose TF_CONFIG would fail deep inside TensorFlow (or, unset,
  silently train alone): JSON with a cluster of 'host:port' workers (and an optional chief) and
  a task naming one of them."""
  import json  # pylint: disable=g-import-not-at-top
  example = ('{"cluster": {"worker": ["host0:12345", "host1:12345"]}, '
             '"task": {"type": "worker", "index": 0}}')
  fix = f'Fix: export TF_CONFIG=\'{example}\' on every worker (its own index on each).'
  if not text:
    raise UserError(f'--strategy=multi_worker needs TF_CONFIG, which is unset. {fix}')
  try:
    config = json.loads(text)
  except ValueError as e:
    raise UserError(f'TF_CONFIG is not JSON ({e}). {fix}') from None
  cluster = config.get('cluster') if isinstance(config, dict) else None
  task = config.get('task') if isinstance(config, dict) else None
  if not isinstance(cluster, dict) or not cluster.get('worker') and not cluster.get('chief'):
    raise UserError(f'TF_CONFIG has no cluster of workers: {text[:200]}. {fix}')
  for kind, hosts in cluster.items():
    if not isinstance(hosts, list) or not all(
        isinstance(h, str) and h.rpartition(':')[2].isdigit() for h in hosts):
      raise UserError(f"TF_CONFIG's cluster {kind!r} must be a list of 'host:port' strings, not "
                      f'{hosts!r}. {fix}')
  if not isinstance(task, dict) or task.get('type') not in cluster:
    raise UserError(f"TF_CONFIG's task must name one of the cluster's kinds "
                    f'({", ".join(cluster)}), not {task!r}. {fix}')
  index = task.get('index', 0)
  if not isinstance(index, int) or not 0 <= index < len(cluster[task['type']]):
    raise UserError(f"TF_CONFIG's task index {index!r} is not one of the "
                    f"{len(cluster[task['type']])} {task['type']}s. {fix}")


def check_host_loop(strategy, steps_per_execution, setting):
  """Stops a host loop of several steps under a (MultiWorker)MirroredStrategy before any work:
  Keras 3's multi-step loop fails there at its first call ("You must feed a value for
  placeholder tensor 'while/cond/Placeholder'", keras-team/keras#19246; reproduced with this
  project's train step on 2 CPU devices). TPUStrategy and the default strategy run it."""
  mirrored = (tf.distribute.MirroredStrategy, tf.distribute.MultiWorkerMirroredStrategy)
  if steps_per_execution > 1 and isinstance(strategy, mirrored):
    raise UserError(
        f'{setting} = {steps_per_execution} under {type(strategy).__name__}: Keras 3 cannot run '
        'several steps per call under a mirrored strategy (keras-team/keras#19246). Fix: bind '
        f'{setting} = 1 (gin/gpu_cluster.gin does, for GPU hosts).')
