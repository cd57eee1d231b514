"""The process around a run: determinism, host memory, and where each worker writes.

Only train.run (and main, for determinism before the strategy exists) call these.
"""

import math
import os
import tempfile

from absl import logging
import gin
import tensorflow as tf

from minc_tf import evaluate
from minc_tf.errors import UserError


def set_up_determinism(deterministic, one_op_at_a_time=True):
  """What run.deterministic needs from TensorFlow, some of it before its runtime starts.

  Op determinism, and ONE inter-op thread (one_op_at_a_time): with several, independent ops of
  the train step run concurrently, and seeded CPU runs on a loaded machine came out different
  from step 2 on (measured; intra-op threads, the data pipeline and the order of gradients and
  updates were ruled out, docs/reproducibility.md). TensorFlow fixes the inter-op pool when its
  runtime starts, so main calls this before it builds the strategy; run() calls it again.
  Multi-replica strategies keep their inter-op pool (their collectives run side by side), so
  for them only op determinism is set.
  """
  if not deterministic:
    return
  tf.config.experimental.enable_op_determinism()
  if not one_op_at_a_time:
    return
  try:
    tf.config.threading.set_inter_op_parallelism_threads(1)
  except RuntimeError:  # the runtime has started: only the environment could have set it.
    if os.environ.get('TF_NUM_INTEROP_THREADS') != '1':
      raise UserError('run.deterministic=True needs TensorFlow to run one op at a time, which '
                      'is fixed when its runtime starts, and it has started already (run.'
                      'deterministic set outside the top-level gin config, or train.run called '
                      'from your own program). Fix: set TF_NUM_INTEROP_THREADS=1 in the '
                      'environment before launching.') from None


def deterministic_from_gin():
  """run.deterministic as bound in the parsed gin config (False when unbound)."""
  try:
    return bool(gin.query_parameter('run.deterministic'))
  except ValueError:
    return False


def check_host_memory(model, strategy, global_batch_size):
  """Stops a batch whose activations cannot fit in this host's memory before it is allocated
  (TensorFlow on CPU dies of it with a segfault, not an error). A lower bound: the float32
  outputs of every encoder and projector layer, kept for the backward pass, for both views of
  the host's share of the batch; accelerators report their own out-of-memory errors."""
  try:
    devices = strategy.extended.worker_devices
  except RuntimeError:  # the default strategy: one device, an accelerator when there is one
    accelerators = tf.config.list_logical_devices('GPU') + tf.config.list_logical_devices('TPU')
    devices = [accelerators[0].name if accelerators else 'CPU:0']
  if not all('CPU' in d.upper() for d in devices):
    return
  ram = host_ram()
  if ram is None:  # not a POSIX host: no estimate
    return
  per_example = sum(math.prod(d or 1 for d in layer.output.shape[1:])
                    for net in (model.encoder, model.projector) for layer in net.layers)
  host_batch = global_batch_size * len(devices) // strategy.num_replicas_in_sync
  need = 4 * per_example * 2 * host_batch
  if need > ram:
    raise UserError(f'run.global_batch_size = {global_batch_size} needs at least '
                    f'{need / 2 ** 30:.0f} GiB for its activations on this host, which has '
                    f'{ram / 2 ** 30:.0f} GiB of memory. Fix: lower run.global_batch_size to at '
                    f'most {max(int(global_batch_size * ram / need), 1)}, or use a smaller '
                    'encoder.')


# HBM per TensorFlow TPU device (a chip on v4 and later, a core on v2 / v3), by the prefix of
# the accelerator type a TPU VM sets in TPU_ACCELERATOR_TYPE (Cloud TPU documentation).
TPU_HBM_GIB = {'v2': 8, 'v3': 16, 'v4': 32, 'v5litepod': 16, 'v5e': 16, 'v5p': 95, 'v6e': 32}


def activation_values(model):
  """Layer-output values per image of the encoder and projector: what a training step keeps
  for its backward pass, before XLA's fusion and rematerialisation (bench/memory.py's count)."""
  return sum(math.prod(d or 1 for d in layer.output.shape[1:])
             for net in (model.encoder, model.projector) for layer in net.layers)


def largest_fitting_batch(values_per_image, value_bytes, budget_bytes, replicas):
  """The largest global batch, a power of two times the replicas, whose two views per image fit
  `budget_bytes` per replica (at least the replicas: one image each)."""
  per_replica = max(int(budget_bytes // (2 * values_per_image * value_bytes)), 1)
  return replicas * 2 ** int(math.log2(per_replica))


def check_accelerator_memory(model, strategy, global_batch_size, mixed_precision,
                             accelerator_type=None):
  """Stops, before the step is compiled, a global batch whose per-replica activations (both
  views, layer outputs in the compute dtype) exceed a TPU device's HBM, naming the largest
  batch that fits. An estimate, not XLA's own count: it can be off either way by a small
  factor, so it refuses only what it counts as over the whole HBM. Off the TPU (no
  TPU_ACCELERATOR_TYPE), nothing is checked: GPUs report their own out-of-memory at the first
  step, before any work is lost."""
  accelerator_type = accelerator_type or os.environ.get('TPU_ACCELERATOR_TYPE', '')
  kind = accelerator_type.split('-')[0].lower()
  if kind not in TPU_HBM_GIB:
    if isinstance(strategy, tf.distribute.TPUStrategy):
      logging.warning('TPU_ACCELERATOR_TYPE is %r: the batch is not checked against the '
                      "TPU's memory (export TPU_ACCELERATOR_TYPE=v4-8 or the like; "
                      'launch/tpu_vm.sh does).', accelerator_type)
    return
  hbm = TPU_HBM_GIB[kind] * 2 ** 30
  value_bytes = 2 if mixed_precision in ('mixed_bfloat16', 'mixed_float16') else 4
  values = activation_values(model)
  replicas = strategy.num_replicas_in_sync
  need = 2 * values * value_bytes * global_batch_size / replicas
  if need > hbm:
    fits = largest_fitting_batch(values, value_bytes, hbm, replicas)
    raise UserError(
        f'run.global_batch_size = {global_batch_size} puts {global_batch_size // replicas} '
        f'images (two views each) on each of the {replicas} TPU devices of this '
        f'{accelerator_type}: about {need / 2 ** 30:.0f} GiB of activations '
        f'({"bf16" if value_bytes == 2 else "float32"}) against {TPU_HBM_GIB[kind]} GiB of '
        f'HBM per device. Fix: the gin file for this slice (gin/tpu_*.gin; docs/scaling.md), '
        f'or run.global_batch_size = {fits} or lower, or more chips.')


def host_ram():
  """This host's physical memory in bytes, None where the OS does not say."""
  try:
    return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
  except (ValueError, OSError, AttributeError):
    return None


def evaluation_bytes(feature_dim, num_train, num_held_out, pixels, baselines, knn_chunk):
  """Host bytes the frozen-feature evaluation holds at its peak (float32): the encoder's
  training features (kept while the baselines run) and the probe's standardised copy, the
  held-out features, kNN's similarities of one chunk of queries, and, with baselines, the same
  for the raw pixels (pixels values per image; 0 when they are not probed)."""
  def probe(dim):
    return 4 * dim * (2 * num_train + 2 * num_held_out)
  need = probe(feature_dim) + (8 * knn_chunk * num_train if knn_chunk else 0)
  if baselines:
    need += 4 * feature_dim * num_train + max(probe(feature_dim), probe(pixels))
  return need


def check_evaluation_memory(feature_dim, data, max_train, max_test, baselines, knn,
                            report_test):
  """Stops, before pretraining, a run whose evaluation could not fit in this host's memory
  (it would die after the whole pretraining, TensorFlow on CPU with a segfault)."""
  ram = host_ram()
  if ram is None:
    return
  def size(split, cap):
    n = data.source.epoch_size(split, None) if split else 0
    return min(n or 0, cap or math.inf)
  num_train = size(data.train_split, max_train) or min(data.num_train, max_train or math.inf)
  held = size(data.eval_split, max_test) + (size(data.test_split, max_test) if report_test else 0)
  pixels = math.prod(data.image_shape)
  pixels = pixels if pixels <= evaluate.RAW_PIXEL_MAX_FEATURES else 0
  chunk = evaluate.settings('knn_accuracy')['chunk'] if knn else 0
  need = evaluation_bytes(feature_dim, num_train, held, pixels, baselines, chunk)
  if need > ram:
    raise UserError(
        f'The evaluation would hold about {need / 2 ** 30:.1f} GiB of features ({num_train} '
        f'training and {held} held-out images, {feature_dim} features each'
        f'{", and their raw pixels" if baselines and pixels else ""}) on a host with '
        f'{ram / 2 ** 30:.1f} GiB, after the whole pretraining. Fix: bind '
        'run.eval_train_examples to a cap (e.g. '
        f'{max(int(num_train * ram / need / 2), 1)}), run.baselines = False, or evaluate on a '
        'larger host (--mode=eval on the finished model dir).')


def worker_dir(strategy, model_dir):
  """model_dir for the chief (and every single-client strategy); a private temporary directory
  for the other workers of a multi-worker run."""
  if strategy.extended.should_checkpoint:
    return model_dir
  resolver = strategy.cluster_resolver
  return tempfile.mkdtemp(prefix=f'minc_tf_{resolver.task_type}{resolver.task_id}_')
