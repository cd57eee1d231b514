"""The cases the golden pins record (make_pins.py writes them, tests/test_pins.py checks them).

Each case reaches the code only through surfaces that a behaviour-preserving change keeps:
build_model's gin names, Keras' fit(), the Checkpointer, ImageData's pipelines, the CLI and the
study's run directories. Every setting a case depends on is given explicitly, so that a changed
code default is not mistaken for a changed behaviour (and vice versa).
"""

import gzip
import json
import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

SHAPE = (8, 8, 1)
TINY = {'build_encoder.depth': 18, 'build_encoder.small_images': True,
        'build_encoder.stage_blocks': (1,), 'build_encoder.base_width': 4}
_MINC = dict(method='minc', predictor='none', use_target=False, mu=10.0, summary_decay=0.0,
             summary_source='target', summary_centered=False, lower_triangular=False,
             tau_base=0.9)
METHOD_CASES = {
    'minc': _MINC,
    'minc_decay': dict(_MINC, summary_decay=0.99),
    'minc_target': dict(_MINC, use_target=True, summary_decay=0.9),
    'minc_online_centered': dict(_MINC, use_target=True, summary_decay=0.9,
                                 summary_source='online', summary_centered=True),
    'minc_tril': dict(_MINC, lower_triangular=True),
    'minc_predictor_no_clip': dict(_MINC, predictor='mlp', mu=None),
    'spectral': dict(method='spectral', predictor='none', use_target=False, mu=10.0),
    'simclr': dict(method='simclr', predictor='none', use_target=False, temperature=0.2),
    'byol': dict(method='byol', predictor='mlp', use_target=True, tau_base=0.9),
    'linear_byol': dict(method='linear_byol', predictor='linear', use_target=True, tau_base=0.9),
    'simsiam': dict(method='simsiam', predictor='mlp', use_target=False),
}
CHECKPOINT_CASES = ('minc_target', 'byol')


def _batches(n=16, count=2, seed=1):
  rng = np.random.default_rng(seed)
  return [((rng.normal(size=(n,) + SHAPE).astype(np.float32),
            rng.normal(size=(n,) + SHAPE).astype(np.float32)),
           rng.integers(0, 3, size=n)) for _ in range(count)]


def tiny_model(kw, seed=0):
  import gin
  import keras
  from minc_tf import model as model_lib
  for k, v in TINY.items():
    gin.bind_parameter(k, v)
  keras.utils.set_random_seed(seed)
  return model_lib.build_model(SHAPE, num_classes=3, projector_hidden=(16,), projector_dim=8,
                               predictor_hidden=(16,), total_steps=10, **kw)


def trained_tiny_model(kw):
  """A tiny model of `kw` after two SGD steps on fixed data (Keras' fit, one step per batch),
  and the loss the first step logged."""
  import gin
  import keras
  import tensorflow as tf
  gin.clear_config()
  keras.backend.clear_session()
  model = tiny_model(kw)
  model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
  data = _batches()
  x1 = np.concatenate([b[0][0] for b in data])
  x2 = np.concatenate([b[0][1] for b in data])
  y = np.concatenate([b[1] for b in data])
  first = model.fit(tf.data.Dataset.from_tensor_slices(((x1[:16], x2[:16]), y[:16])).batch(16),
                    epochs=1, verbose=0, shuffle=False)
  model.fit(tf.data.Dataset.from_tensor_slices(((x1[16:], x2[16:]), y[16:])).batch(16),
            epochs=1, verbose=0, shuffle=False)
  return model, float(first.history['loss'][-1])


def variables_by_path(model):
  """{key: value} of every variable the model holds (weights, target, the method's state, BN
  statistics, probe) and of the optimizer (step and slots). A key is the owning network's name
  (build_model names them: encoder, target_encoder, projector, ...) and the variable's path
  inside it; the model's own variables are under 'model/', the optimizer's under
  'optimizer/<index>/'."""
  out = {}

  def put(key, v):
    assert key not in out, f'two variables with the key {key}'
    out[key] = np.asarray(v.numpy())

  owned = set()
  for layer in model.layers:
    for v in layer.weights:
      put(f'{layer.name}/{v.path}', v)
      owned.add(id(v))
  for v in model.weights:
    if id(v) not in owned:
      put(f'model/{v.path}', v)
  # Slot names repeat across networks (dense0_kernel_momentum); their order is the order of the
  # trained variables, which checkpoints also rely on, so the index is part of the key.
  optimizer = getattr(model, 'optimizer', None)
  for i, v in enumerate(optimizer.variables if optimizer is not None else ()):
    put(f'optimizer/{i:03d}/{v.path}', v)
  return out


def method_case(name, kw):
  model, loss = trained_tiny_model(kw)
  return variables_by_path(model), loss


def views_case():
  """Host views of the first seeded pretraining batch, the same batch's uint8 crops, and the
  accelerator's views of those crops (seed (0, 0)), on a 3-channel in-memory dataset with the
  BYOL view table (blur, solarize, colour)."""
  import tensorflow as tf
  from minc_tf import augment
  from minc_tf import data as data_lib
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (32, 20, 20, 3)).astype(np.uint8)
  labels = rng.integers(0, 4, 32).astype(np.int64)
  data = data_lib.ImageData('pins', 16, 3, 4, 32, augment.IMAGENET_MEAN, augment.IMAGENET_STD,
                            arrays={'train': (images, labels), 'validation': (images, labels)})
  (v1, v2), y = next(iter(data.pretrain_dataset(8, seed=0)))
  (c1, c2), _ = next(iter(data.pretrain_dataset(8, seed=0, crops_only=True)))
  _, view1, view2 = augment.view_transforms(16)
  d1, d2 = augment.batch_views(view1, view2, data.mean, data.std)(
      c1, c2, tf.constant([0, 0], tf.int64))
  (e, _), = data.eval_dataset('validation', 8).take(1).as_numpy_iterator()
  return {'host_view1': v1.numpy(), 'host_view2': v2.numpy(), 'labels': y.numpy(),
          'crop1': c1.numpy(), 'crop2': c2.numpy(), 'device_view1': d1.numpy(),
          'device_view2': d2.numpy(), 'eval_images': e}


def write_checkpoint_case(name, directory):
  """A training-state checkpoint of the tiny `name` model, as the Checkpointer writes it."""
  from minc_tf import checkpoint
  model, _ = trained_tiny_model(METHOD_CASES[name])
  ckpt = checkpoint.Checkpointer(model, directory, keep=1)
  ckpt.build_optimizer()
  ckpt.save()


def write_idx(path, array):
  header = bytes([0, 0, 8, array.ndim]) + b''.join(int(d).to_bytes(4, 'big') for d in array.shape)
  with gzip.open(path, 'wb') as f:
    f.write(header + array.astype(np.uint8).tobytes())


def write_fake_fmnist(root):
  """A learnable stand-in for Fashion-MNIST: bright squares whose place is the class."""
  os.makedirs(root, exist_ok=True)
  rng = np.random.default_rng(0)
  for split, n in (('train', 256), ('t10k', 64)):
    labels = rng.integers(0, 4, n)
    images = rng.integers(0, 60, (n, 28, 28))
    for i, label in enumerate(labels):
      r, c = divmod(int(label), 2)
      images[i, 4 + 12 * r:12 + 12 * r, 4 + 12 * c:12 + 12 * c] = 250
    write_idx(os.path.join(root, f'{split}-images-idx3-ubyte.gz'), images)
    write_idx(os.path.join(root, f'{split}-labels-idx1-ubyte.gz'), labels)


RUN_BINDINGS = [
    'build_encoder.base_width = 4', 'build_encoder.stage_blocks = (1, 1)',
    'build_model.projector_hidden = (32,)', 'build_model.projector_dim = 16',
    "build_model.method = 'minc'", "build_model.predictor = 'none'",
    'build_model.use_target = True', 'build_model.mu = 10.0', 'build_model.summary_decay = 0.9',
    "build_model.summary_source = 'target'", 'build_model.summary_centered = False',
    'build_model.lower_triangular = False', 'build_model.tau_base = 0.99',
    'run.global_batch_size = 32', 'run.steps_per_epoch = 4', 'run.epochs = 2',
    'run.seed = 0', 'run.deterministic = True', 'run.checkpoint_every_steps = 2',
    'run.keep_checkpoints = 10', 'run.verbose = 0', 'run.eval_batch_size = 64',
    'run.feature_rank_images = 64', 'run.tensorboard_update_freq = 2',
    'linear_probe.epochs = 5',
]
# results.json keys that measure time (not behaviour) or name files.
TIME_KEYS = ('pretrain_wall_time_s', 'images_per_s', 'eval_wall_time_s',
             'linear_eval_wall_time_s')


def run_case(model_dir, extra=()):
  """A seeded deterministic CLI run (oneDNN off) of the tiny MINC config with an EMA target
  and summary decay 0.9: (every variable of its last checkpoint, results.json without
  times, run_identity.json's settings)."""
  import tensorflow as tf
  data_dir = model_dir + '_fmnist'
  write_fake_fmnist(data_dir)
  env = dict(os.environ, PYTHONPATH=REPO, TF_ENABLE_ONEDNN_OPTS='0',
             TF_CPP_MIN_LOG_LEVEL='2')
  args = [sys.executable, '-m', 'minc_tf.main', '--gin_file=gin/quickstart.gin',
          f'--model_dir={model_dir}', f"--gin_bindings=load_data.idx_dir='{data_dir}'"]
  args += [f'--gin_bindings={b}' for b in RUN_BINDINGS + list(extra)]
  proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  if proc.returncode:
    raise RuntimeError(f'the pinned run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}')
  state = tf.train.get_checkpoint_state(os.path.join(model_dir, 'checkpoints'))
  reader = tf.train.load_checkpoint(state.model_checkpoint_path)
  values = {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
            if not k.startswith(('save_counter', '_CHECKPOINTABLE_OBJECT_GRAPH'))}
  with open(os.path.join(model_dir, 'results.json')) as f:
    results = {k: v for k, v in json.load(f).items() if k not in TIME_KEYS}
  with open(os.path.join(model_dir, 'run_identity.json')) as f:
    identity = json.load(f)['settings']
  return values, results, identity


STUDY_CONFIGS = ('gin/study_ablation.gin', 'gin/study_batch_sweep.gin',
                 'gin/study_width_sweep.gin', 'gin/study_methods.gin')


def study_hashes():
  """{study config: {'<label> seed=<s>': 'runs/<hash>/seed<s>'}} for every variant and seed the
  shipped study configs run (the methods study: its screen, and the finals at every rate of
  the grid, since which rate is final depends on the screen's results)."""
  import gin
  from minc_tf import config
  from minc_tf import configurables  # noqa: F401  (registers every gin configurable)
  from minc_tf import study
  out = {}
  for path in STUDY_CONFIGS:
    gin.clear_config()
    config.parse_gin([path], [])
    q = lambda name, default=None: gin.get_bindings('run_study').get(name, default)
    name, seeds = q('name'), list(q('seeds', (0,)))
    base = list(q('base_gin_files', ('gin/quickstart.gin',)))
    common = list(q('common_bindings', ()))
    if name == 'methods':
      plans = [(study._learning_rate_grid(q('methods'), q('learning_rates')), seeds[:1], [],
                False)]
      finals = {f'{label} (lr {lr:g}, final)': list(b) + [f'build_optimizer.base_lr = {lr!r}']
                for label, b in q('methods').items() for lr in q('learning_rates')}
      plans.append((finals, seeds, ['run.report_test = True'], True))
    else:
      variants = study.study_variants(name, q('variants'), q('batch_sizes', (64, 128, 256, 512)),
                                      q('widths', (64, 256, 1024, 2048)),
                                      q('sweep_batch_size', 64), q('minc_decays', (0.0, 0.99)),
                                      q('pretrain_pairs'))
      plans = [(variants, seeds, [], True)]
    dirs = {}
    for variants, plan_seeds, extra, baselines in plans:
      for seed in plan_seeds:
        for i, (label, bindings) in enumerate(variants.items()):
          first = baselines and i == 0
          full = common + list(bindings) + list(extra) + (
              [] if first else ['run.baselines = False']) + [f'run.seed = {seed}']
          gin.clear_config()
          config.parse_gin(base, full)
          configuration = study._run_configuration()
          # Study dirs made before issue 24 keep these names (study.legacy_run_name).
          dirs[f'{label} seed={seed}'] = study.legacy_run_name(configuration, seed)
    out[path] = dirs
  gin.clear_config()
  return out
