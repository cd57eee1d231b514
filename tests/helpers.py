"""What several test modules share: tiny models and batches, IDX files, free ports, the tiny
ImageNet bindings and TensorBoard readers. Test modules import from here, never from each
other. (tests/pins/pin_cases.py keeps its own copies on purpose: the pins' cases are frozen.)"""

import gzip
import socket

import gin
import keras
import numpy as np
import tensorflow as tf

from minc_tf import model as model_lib

SHAPE = (8, 8, 1)
TINY = {'build_encoder.depth': 18, 'build_encoder.small_images': True,
        'build_encoder.stage_blocks': (1,), 'build_encoder.base_width': 4}


def tiny_model(method='minc', sync_bn=False, seed=0, **kw):
  for k, v in TINY.items():
    gin.bind_parameter(k, v)
  keras.utils.set_random_seed(seed)
  m = model_lib.build_model(SHAPE, method=method, num_classes=3, projector_hidden=(16,),
                            projector_dim=8, predictor_hidden=(16,), total_steps=10,
                            sync_bn=sync_bn, **kw)
  return m


def batches(n=16, count=2, seed=1):
  rng = np.random.default_rng(seed)
  return [((rng.normal(size=(n,) + SHAPE).astype(np.float32),
            rng.normal(size=(n,) + SHAPE).astype(np.float32)),
           rng.integers(0, 3, size=n)) for _ in range(count)]


def dataset(data):
  x1 = np.concatenate([b[0][0] for b in data])
  x2 = np.concatenate([b[0][1] for b in data])
  y = np.concatenate([b[1] for b in data])
  return tf.data.Dataset.from_tensor_slices(((x1, x2), y)).batch(len(data[0][1]))


def compile_model(m, lr=0.1, jit_compile=False):
  m.compile(optimizer=keras.optimizers.SGD(lr, momentum=0.9), jit_compile=jit_compile)


def write_idx(path, array):
  header = bytes([0, 0, 8, array.ndim]) + b''.join(int(d).to_bytes(4, 'big') for d in array.shape)
  with gzip.open(path, 'wb') as f:
    f.write(header + array.astype(np.uint8).tobytes())


def free_ports(n):
  socks = [socket.socket() for _ in range(n)]
  for s in socks:
    s.bind(('localhost', 0))
  ports = [s.getsockname()[1] for s in socks]
  for s in socks:
    s.close()
  return ports


TINY_IMAGENET = [
    "build_encoder.depth = 18", "build_encoder.stage_blocks = (1, 1)",
    "build_encoder.base_width = 4", "build_model.projector_hidden = (16,)",
    "build_model.projector_dim = 8", "build_model.predictor_hidden = (16,)",
    "load_data.image_size = 32", "load_data.num_train = 64",
    "run.global_batch_size = 8", "run.epochs = 2", "run.steps_per_epoch = 2",
    "run.eval_batch_size = 16", "run.eval_train_examples = 32", "run.eval_test_examples = 16",
    "run.verbose = 0", "build_optimizer.warmup_epochs = 1", "run.steps_per_execution = 1",
    # The ImageNet configs run the BYOL linear evaluation; one short epoch here.
    "offline_linear_eval.epochs = 1", "offline_linear_eval.batch_size = 8",
    "offline_linear_eval.steps_per_epoch = 2", "offline_linear_eval.steps_per_execution = 1",
    "run.checkpoint_every_steps = 1",
]


def read_events(directory):
  """{run: {tag: [steps]}} and {run: {tag: [values]}} of every event file under `directory`,
  through TensorBoard's own reader (runs as TensorBoard names them: paths under directory)."""
  from tensorboard.backend.event_processing import event_multiplexer
  mux = event_multiplexer.EventMultiplexer(size_guidance={'tensors': 0, 'scalars': 0})
  mux.AddRunsFromDirectory(directory)
  mux.Reload()
  steps, events = {}, {}
  for run, tags in mux.Runs().items():
    for tag in tags['tensors']:
      events.setdefault(run, {})[tag] = mux.Tensors(run, tag)
      steps.setdefault(run, {})[tag] = [e.step for e in mux.Tensors(run, tag)]
  return steps, events, mux


def session_hparams(mux, run):
  """The HParams session start info of `run`, as {name: python value}."""
  from tensorboard.plugins.hparams import metadata
  content = mux.PluginRunToTagToContent(metadata.PLUGIN_NAME)[run][
      metadata.SESSION_START_INFO_TAG]
  info = metadata.parse_session_start_info_plugin_data(content)
  out = {}
  for name, value in info.hparams.items():
    kind = value.WhichOneof('kind')
    out[name] = getattr(value, kind)
  return out


def assert_accuracy_over(value, n):
  """value is a top-1 in percent over exactly n examples: k / n * 100 for an integer k."""
  assert 0.0 <= value <= 100.0, value
  count = value * n / 100.0
  assert abs(count - round(count)) < 1e-6, f'{value}% is not a count of {n} examples'
