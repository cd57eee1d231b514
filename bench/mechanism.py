"""The mechanism on real data (issue 25, item 4): which summary lowers MINC's gradient noise?

  python bench/mechanism.py --out=/tmp/mechanism        (from the repository root; ~30 min)

Trains one Spectral Contrastive run of the quickstart model (Fashion-MNIST, validation split
held out) with checkpoints at steps 100 and 500, then, at steps 0, 100 and 500 and for B in
{32, 256}, draws `--batches` batches of view pairs and computes on each, at the same weights and
from the same forward pass, the gradient w.r.t. the encoder and projector of:

  spectral        the Spectral Contrastive loss (its own pairwise summary)
  batch M         MINC with the batch's own second moment (what MINC at decay 0 trains with)
  oracle M        MINC with M from 8192 fresh views at the same weights (chunks of B, BatchNorm
                  in training mode as in a step)
  independent M   MINC with M from another batch of B pairs
  memory H=4096   MINC with a memory of 4096 pairs at fixed weights: B/H of this batch's
                  moment, the rest from other pairs (the oracle's pool). At fixed weights the
                  EMA and the queue of that horizon are this same estimator; they differ in
                  lag as the weights move, which a fixed-weight measurement cannot show.

and reports, per estimator: the noise-to-signal ratio tr(Cov) / ||E g||^2 with the unbiased
signal estimate ||mean||^2 - tr(Cov)/R, a 90% basic bootstrap interval over batches, and the
gradient noise scale in pairs, B_noise = B tr(Cov) / ||E g||^2 (McCandlish et al. 2018).
Writes <out>/mechanism.json (the raw figures) and prints the table docs/study_mechanism.md
quotes.
"""

import argparse
import json
import os
import subprocess
import sys

os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import gin  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from minc_tf import checkpoint  # noqa: E402
from minc_tf import config  # noqa: E402
from minc_tf import configurables  # noqa: E402,F401  (registers every gin configurable)
from minc_tf import data as data_lib  # noqa: E402
from minc_tf import losses  # noqa: E402
from minc_tf import model as model_lib  # noqa: E402
from minc_tf import optim  # noqa: E402

BINDINGS = ["build_model.method = 'spectral'", 'load_data.validation_examples = 10000',
            'run.steps_per_epoch = 500', 'run.epochs = 1', 'run.checkpoint_every_steps = 100',
            'run.keep_checkpoints = 10', 'run.verbose = 0', 'run.seed = 0']
HORIZON = 4096
ESTIMATORS = ('spectral', 'batch M', 'oracle M', 'independent M', f'memory H={HORIZON}')


def train(model_dir):
  if tf.io.gfile.exists(os.path.join(model_dir, 'results.json')):
    return
  args = [sys.executable, '-m', 'minc_tf.main', '--gin_file=gin/quickstart.gin',
          f'--model_dir={model_dir}', '--mode=train'] + [f'--gin_bindings={b}' for b in BINDINGS]
  subprocess.run(args, cwd=REPO, check=True)


def model_at(model_dir, step):
  gin.clear_config()
  keras.backend.clear_session()
  config.parse_gin(['gin/quickstart.gin'], BINDINGS)
  data = data_lib.load_data()
  keras.utils.set_random_seed(0)
  model = model_lib.build_model(data.image_shape, num_classes=data.num_classes, total_steps=500)
  model.compile(optimizer=optim.build_optimizer(256, 500, 1))
  ckpt = checkpoint.Checkpointer(model, os.path.join(model_dir, 'checkpoints'), keep=10)
  ckpt.build_optimizer()
  if step:
    path = [p for p in ckpt.paths if p.endswith(f'ckpt-{step}')]
    assert path, (step, ckpt.paths)
    ckpt.restore(path[0])
  return model, data


def projections(model, x):
  return tf.cast(model.projector(model.encoder(x, training=True), training=True), tf.float32)


def measure(model, data, batch, batches, seed):
  variables = model.encoder.trainable_variables + model.projector.trainable_variables
  stream = iter(data.pretrain_dataset(batch, seed=seed))
  oracle_views = []
  while sum(len(x1) for x1, _ in oracle_views) < 4096:  # 8192 views
    (x1, x2), _ = next(stream)
    oracle_views.append((x1, x2))
  w = batch / HORIZON

  @tf.function
  def all_grads(x1, x2, oracle, independent):
    """Every estimator's gradient from one forward pass (compiled: eager is 10x slower)."""
    with tf.GradientTape(persistent=True) as tape:
      z = projections(model, tf.concat([x1, x2], 0))
      z1, z2 = tf.split(z, 2)
      c1, c2 = losses.radial_clip(z1, 10.0), losses.radial_clip(z2, 10.0)
      own = losses.batch_second_moment(c1, c2)
      summaries = [own, oracle, independent, w * own + (1 - w) * oracle]
      values = [losses.spectral_contrastive_loss(z1, z2, mu=10.0)] + [
          losses.minc_loss(c1, c2, tf.stop_gradient(c1), tf.stop_gradient(c2), m) / 10.0
          for m in summaries]
    out = [tf.concat([tf.reshape(g, [-1]) for g in tape.gradient(v, variables)], 0)
           for v in values]
    del tape
    return out

  @tf.function
  def clipped_moment(x1, x2):
    z = losses.radial_clip(projections(model, tf.concat([x1, x2], 0)), 10.0)
    return tf.matmul(z, z, transpose_a=True) / tf.cast(tf.shape(z)[0], tf.float32)

  oracle = tf.add_n([clipped_moment(a, b) for a, b in oracle_views]) / len(oracle_views)
  grads = {name: [] for name in ESTIMATORS}
  for _ in range(batches):
    (x1, x2), _ = next(stream)
    (y1, y2), _ = next(stream)
    for name, g in zip(ESTIMATORS, all_grads(x1, x2, oracle, clipped_moment(y1, y2))):
      grads[name].append(g.numpy().astype(np.float64))
  return {name: np.stack(v) for name, v in grads.items()}


def figures(g, batch, rng, resamples=1000):
  """Noise-to-signal of the [R, P] gradients g, from their Gram matrix (a resample of batches
  is a vector of counts c: sum of squares c . diag(G), squared mean c^T G c / R^2)."""
  r = len(g)
  gram = g @ g.T

  def ratio(counts):
    mean_sq = counts @ gram @ counts / r ** 2
    cov = (counts @ np.diag(gram) - r * mean_sq) / (r - 1)
    signal = mean_sq - cov / r
    return (cov / signal if signal > 0 else np.inf), cov, signal

  nsr, cov, signal = ratio(np.ones(r))
  boot = [ratio(np.bincount(rng.integers(0, r, r), minlength=r).astype(np.float64))[0]
          for _ in range(resamples)]
  # The basic (reverse-percentile) interval: a resample's duplicates shrink its covariance, so
  # the plain percentiles sit below the estimate; reflecting them about it corrects that bias.
  q5, q95 = np.percentile(boot, [5, 95])
  lo, hi = 2 * nsr - q95, 2 * nsr - q5
  return {'noise_to_signal': float(nsr), 'interval_90': [float(lo), float(hi)],
          'noise_scale_pairs': float(batch * nsr), 'trace_cov': float(cov),
          'signal': float(signal), 'batches': r}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', default='/tmp/minc_tf_mechanism')
  parser.add_argument('--batches', type=int, default=128)
  parser.add_argument('--steps', type=int, nargs='*', default=[0, 100, 500])
  parser.add_argument('--batch_sizes', type=int, nargs='*', default=[32, 256])
  args = parser.parse_args()
  run = os.path.join(args.out, 'spectral_run')
  rng = np.random.default_rng(0)
  os.makedirs(args.out, exist_ok=True)
  record_path = os.path.join(args.out, 'mechanism.json')
  record = json.load(open(record_path)) if os.path.exists(record_path) else {}
  for step in args.steps:
    if step:  # step 0 is the run's initialisation (the same seed), before any training
      train(run)
    model, data = model_at(run, step)
    for batch in args.batch_sizes:
      key = f'step={step} B={batch}'
      if key in record:
        continue
      g = measure(model, data, batch, args.batches, seed=1000 + step + batch)
      record[key] = {name: figures(v, batch, rng) for name, v in g.items()}
      with open(record_path, 'w') as f:
        json.dump(record, f, indent=1)
      print(key, '  '.join(f"{n}: {v['noise_to_signal']:.3g} [{v['interval_90'][0]:.3g}, "
                            f"{v['interval_90'][1]:.3g}]" for n, v in record[key].items()),
            flush=True)
  print('\n| step | B | ' + ' | '.join(ESTIMATORS) + ' |')
  print('|---|---|' + '---|' * len(ESTIMATORS))
  for key, row in record.items():
    step, batch = (part.split('=')[1] for part in key.split())
    print(f'| {step} | {batch} | ' + ' | '.join(
        f"{row[n]['noise_to_signal']:.3g} [{row[n]['interval_90'][0]:.3g}, "
        f"{row[n]['interval_90'][1]:.3g}]; {row[n]['noise_scale_pairs']:.0f} pairs"
        for n in ESTIMATORS) + ' |')


if __name__ == '__main__':
  main()
