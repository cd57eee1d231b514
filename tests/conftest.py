"""Test setup: oneDNN on, and two logical CPUs so MirroredStrategy runs two replicas here.

Logical devices must be configured before TensorFlow runs any op, hence at import time.
"""

import os
import sys

os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# Image-folder manifests (sources.manifest_path) in a private directory, not the user's cache.
os.environ.setdefault('MINC_TF_CACHE', __import__('tempfile').mkdtemp(prefix='minc_tf_cache_'))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import gin  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices('CPU')
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])

# After the devices are configured (an import must not start the runtime first).
from minc_tf import configurables  # noqa: E402,F401  (every gin configurable, as main has them)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _clean_gin():
  # Also Keras' global dtype policy: a run of an ImageNet config sets mixed_bfloat16, which
  # would leak into the next test's models.
  import keras
  gin.clear_config()
  keras.mixed_precision.set_global_policy('float32')
  yield
  gin.clear_config()
  keras.mixed_precision.set_global_policy('float32')


@pytest.fixture(scope='session')
def mirrored():
  # One strategy per process: collective instance keys of several live MirroredStrategy
  # objects can collide and mismatch shapes across tests.
  return tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])


def run_distributed(strategy, fn, *global_args):
  """Splits each [N, ...] arg in halves, runs fn per replica, returns per-replica outputs."""
  n = strategy.num_replicas_in_sync

  def value_fn(ctx):
    i = ctx.replica_id_in_sync_group
    return tuple(tf.split(a, n)[i] for a in global_args)

  args = strategy.experimental_distribute_values_from_function(value_fn)
  return strategy.run(fn, args=args)
