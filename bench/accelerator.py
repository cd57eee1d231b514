"""Train-step throughput of the shipped configs through the real train path, with and without
XLA, in true float32 and in bf16: the figures of bench/accelerator_check.sh.

  python bench/accelerator.py [--configs minc spectral supervised] [--xla 0 1]
                              [--precisions bf16 float32] [--batch 64] [--steps 10]
                              [--warmup 2] [--cell_limit 60] [--budget 480]
                              [--depth 50] [--image_size 224] [--binding 'gin binding' ...]
                              [--data_dir DIR]

The configs as shipped: minc = gin/minc.gin (no target network, batch summary), spectral =
gin/spectral.gin (its 8192-8192-8192 projector), supervised = gin/imagenet_base.gin's ResNet-50
with a linear head trained with cross-entropy (no gin file ships a supervised run, and train.run
has no supervised mode: it is Keras fit, with the shipped optimizer, on load_data's labelled
training views, linear_eval_dataset's random resized crops and flips, which transfer.fine_tune
trains on). minc and spectral go through train.run('train'), with its callbacks (checkpoint
guard, TensorBoard, Monitor) and its tf.data pipeline.

What the bench changes in the shipped configs, and why (all printed in the header):
  run.global_batch_size = --batch: 4096 does not fit one accelerator.
  run.epochs = 1, run.steps_per_epoch = --warmup + --steps: a run of exactly the timed steps.
  run.steps_per_execution = --steps_per_execution (1): the shipped 52 is the TPU host loop and
    would make every cell 52 steps long.
  run.feature_rank_images = 0: the probe at the run's start extracts features, not a train step.
  run.jit_compile and run.mixed_precision: the cell's.
  Without --data_dir, load_data.name stays 'imagenet2012' and TFDS is mocked
  (tfds.testing.mock_data) to serve synthetic JPEGs of ImageNet-like size from memory, so the
  same source, fused decode-and-crop and augmentation run as on ImageNet (not the TFRecord
  reads and parsing); load_data.num_train is their count.

Each cell (config, XLA, precision) runs in its own process, so that each starts with the
accelerator's memory free and its own TF32 and dtype-policy settings. float32 cells turn TF32
off (tf.config.experimental.enable_tensor_float_32_execution(False)): on Ampere and newer GPUs
TensorFlow's float32 default is TF32 matmuls and convolutions; bf16 cells keep the default for
what stays float32 (losses, the summary statistic). A cell trains warmup + steps
steps; the first `warmup` (tracing, compilation, the input pipeline's start) are not timed.
images/s counts the images through the encoder: 2B per SSL step (two views of B pairs), 2B
labelled images per supervised step. Each figure is printed as it is measured; then the ratios
xla/no-xla and bf16/float32, and each method's images/s over supervised's. A cell is stopped at
--cell_limit seconds (it then reports the steps it timed, if any), and none runs past --budget
seconds from the start. Exit status 1 when some cell gave no figure.
"""

import argparse
import contextlib
import glob
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

# Before TensorFlow is imported (here for the synthetic JPEGs, in each cell for the run).
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {'minc': 'gin/minc.gin', 'spectral': 'gin/spectral.gin',
           'supervised': 'gin/imagenet_base.gin'}
PRECISIONS = {'float32': None, 'bf16': 'mixed_bfloat16'}
MOCK_CLASSES = 1000  # imagenet2012's label space, so the online probe's head is ImageNet's
# Seconds a cell keeps for printing its figure before its limit: the parent kills it then.
MARGIN_S = 3.0
RESULT, FIRST_STEP = '@result ', '@first_step '


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--configs', nargs='+', default=list(CONFIGS), metavar='CONFIG',
                      help=f'of {", ".join(CONFIGS)}')
  parser.add_argument('--xla', nargs='+', type=int, default=[0, 1], choices=[0, 1])
  parser.add_argument('--precisions', nargs='+', default=['bf16', 'float32'],
                      choices=list(PRECISIONS))
  parser.add_argument('--batch', type=int, default=64, help='B: pairs per SSL step')
  parser.add_argument('--steps', type=int, default=10, help='timed steps per cell')
  parser.add_argument('--warmup', type=int, default=2,
                      help='untimed steps first (the first traces and compiles)')
  parser.add_argument('--steps_per_execution', type=int, default=1)
  parser.add_argument('--cell_limit', type=float, default=60.0, help='seconds per cell')
  parser.add_argument('--budget', type=float, default=480.0,
                      help='seconds for all cells; none runs past it')
  parser.add_argument('--depth', type=int, help='build_encoder.depth (shipped: 50)')
  parser.add_argument('--image_size', type=int, help='load_data.image_size (shipped: 224)')
  parser.add_argument('--binding', action='append', default=[],
                      help='an extra gin binding for every cell (e.g. smaller nets for tests)')
  parser.add_argument('--data_dir', help='TFDS data dir holding imagenet2012 (default: '
                      'synthetic JPEGs through a mocked TFDS)')
  parser.add_argument('--synthetic_images', type=int, default=512)
  parser.add_argument('--jpeg_size', default='500x375', help='WxH of the synthetic JPEGs')
  parser.add_argument('--work_dir', help='for the JPEGs, runs and logs (default: a new '
                      'temporary dir, removed at the end unless a cell gave no figure)')
  # Internal: one cell, run by the parent in its own process.
  parser.add_argument('--cell', help=argparse.SUPPRESS)
  parser.add_argument('--model_dir', help=argparse.SUPPRESS)
  parser.add_argument('--jpeg_dir', help=argparse.SUPPRESS)
  parser.add_argument('--deadline', type=float, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  unknown = [c for c in args.configs if c not in CONFIGS]
  if unknown:
    parser.error(f'unknown config {", ".join(map(repr, unknown))}: the shipped configs are '
                 f'{", ".join(CONFIGS)}')
  for name in ('batch', 'steps', 'warmup', 'steps_per_execution', 'synthetic_images'):
    if getattr(args, name) < 1:
      parser.error(f'--{name} must be at least 1')
  k = args.steps_per_execution
  if args.steps % k or args.warmup % k:
    parser.error(f'--steps and --warmup must be multiples of --steps_per_execution ({k}): '
                 'callbacks see only the end of each execution')
  try:
    args.jpeg_wh = tuple(int(v) for v in args.jpeg_size.lower().split('x'))
    assert len(args.jpeg_wh) == 2 and min(args.jpeg_wh) >= 1
  except (ValueError, AssertionError):
    parser.error(f'--jpeg_size {args.jpeg_size!r}: expected WxH, e.g. 500x375')
  return args


def label(config, xla, precision):
  return f'{config} xla={xla} {precision}'


def bindings(args, xla, precision, num_images):
  """The bench's gin bindings over the shipped config (see the module docstring)."""
  out = [f'run.global_batch_size = {args.batch}', 'run.epochs = 1',
         f'run.steps_per_epoch = {args.warmup + args.steps}',
         f'run.steps_per_execution = {args.steps_per_execution}',
         'run.feature_rank_images = 0', 'run.verbose = 0',
         f'run.jit_compile = {bool(xla)}',
         f'run.mixed_precision = {PRECISIONS[precision]!r}']
  if args.depth:
    out.append(f'build_encoder.depth = {args.depth}')
  if args.image_size:
    out.append(f'load_data.image_size = {args.image_size}')
  if args.data_dir:
    out.append(f'load_data.data_dir = {args.data_dir!r}')
  else:
    out.append(f'load_data.num_train = {num_images}')
  return out + args.binding


# --- the parent: synthetic data, one process per cell, the figures as they come -------------

def write_jpegs(directory, count, width, height, grain=0.07, chunk=64):
  """`count` JPEGs (quality 90) of smooth colour fields with grain: about the bytes per pixel of
  photos (noise alone would be several times larger and slower to decode). Mean KB returned."""
  import numpy as np
  import tensorflow as tf
  tf.config.set_visible_devices([], 'GPU')  # the cells need the whole accelerator
  rng = np.random.default_rng(0)
  pad = 64  # one grain field, shifted per image: drawing one each would cost more than encoding
  noise = rng.normal(0.0, grain, (height + pad, width + pad, 3)).astype(np.float32)
  os.makedirs(directory)
  total = 0
  for first in range(0, count, chunk):
    n = min(chunk, count - first)
    coarse = rng.random((n, max(height // 40, 2), max(width // 40, 2), 3), np.float32)
    fields = tf.image.resize(coarse, (height, width), method='bicubic').numpy()
    for i in range(n):
      dy, dx = rng.integers(0, pad, 2)
      image = np.clip((fields[i] + noise[dy:dy + height, dx:dx + width]) * 255.0, 0, 255)
      data = tf.io.encode_jpeg(image.astype(np.uint8), quality=90).numpy()
      with open(os.path.join(directory, f'{first + i:05d}.jpg'), 'wb') as f:
        f.write(data)
      total += len(data)
  return total / count / 1024


def run_cell(args, cell, jpeg_dir, model_dir, limit, log_path):
  """Runs one cell in a child process for at most `limit` seconds; its result dict, or a dict
  with 'error' saying how it ended without a figure."""
  start = time.time()
  argv = [sys.executable, os.path.abspath(__file__), '--cell', cell, '--model_dir', model_dir,
          '--deadline', str(start + limit - MARGIN_S), *sys.argv[1:]]
  if jpeg_dir:
    argv += ['--jpeg_dir', jpeg_dir]
  env = dict(os.environ, PYTHONUNBUFFERED='1')
  with open(log_path, 'w') as log:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, text=True, cwd=REPO,
                            env=env)
    lines = queue.Queue()

    def read():
      for line in proc.stdout:
        lines.put(line)
      lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    result, first_step = None, None
    while True:
      try:
        line = lines.get(timeout=max(start + limit - time.time(), 0.01))
      except queue.Empty:
        proc.kill()  # not SIGTERM: the run's guard would write a checkpoint first
        proc.wait()
        phase = (f'after the first step ({first_step:.1f} s), before a timed one'
                 if first_step is not None else 'building, compiling or in the first step')
        return {'error': f'time limit {limit:.0f} s reached {phase}'}
      if line is None:
        break
      if line.startswith(FIRST_STEP):
        first_step = float(line[len(FIRST_STEP):])
      elif line.startswith(RESULT):
        result = json.loads(line[len(RESULT):])
    code = proc.wait()
  if result is not None:
    result['cell_s'] = time.time() - start
    return result
  with open(log_path) as f:
    lines = [t for t in f.read().splitlines() if t.strip()] or ['no output']
  # The exception's own line, not what gin or TensorFlow append after it.
  errors = [t for t in lines if re.match(r'[\w.]*(Error|Exception)\b', t)]
  return {'error': f'exit {code}: {(errors or lines)[-1][:300]} (log: {log_path})'}


def describe(result):
  if 'error' in result:
    return f'no figure ({result["error"]})'
  partial = (f', stopped by the time limit after {result["timed_steps"]} timed steps'
             if result['partial'] else '')
  return (f'{result["images_per_s"]:.1f} images/s (step {result["step_s"]:.3f} s over '
          f'{result["timed_steps"]} steps; first step {result["first_step_s"]:.1f} s; '
          f'cell {result["cell_s"]:.0f} s{partial})')


def print_ratios(args, figures):
  """Side by side, as ratios of images/s (above 1: faster): what XLA and bf16 buy each config,
  and each method against supervised training at the same images per step."""
  def ratio(a, b):
    return f'{a / b:8.2f}' if a and b else f'{"-":>8}'

  def ips(c, x, p):
    return figures.get((c, x, p), {}).get('images_per_s')

  print(f'\nratios of images/s  {"xla=1 / xla=0":>17}  {"bf16 / float32":>17}')
  print(f'{"":20}{"float32":>8} {"bf16":>8}  {"xla=0":>8} {"xla=1":>8}')
  for c in args.configs:
    print(f'  {c:<18}{ratio(ips(c, 1, "float32"), ips(c, 0, "float32"))} '
          f'{ratio(ips(c, 1, "bf16"), ips(c, 0, "bf16"))}  '
          f'{ratio(ips(c, 0, "bf16"), ips(c, 0, "float32"))} '
          f'{ratio(ips(c, 1, "bf16"), ips(c, 1, "float32"))}')
  methods = [c for c in args.configs if c != 'supervised']
  if 'supervised' in args.configs and methods:
    cells = [(x, p) for p in args.precisions for x in args.xla]
    print('\nimages/s / supervised\'s (below 1: the method\'s step is slower)')
    print(f'{"":20}' + ' '.join(f'{f"xla={x} {p}":>13}' for x, p in cells))
    for c in methods:
      print(f'  {c:<18}' + ' '.join(
          f'{ratio(ips(c, x, p), ips("supervised", x, p)):>13}' for x, p in cells))


def main_parent(args):
  budget_end = time.time() + args.budget
  own = not args.work_dir
  work = tempfile.mkdtemp(prefix='minc_accelerator_') if own else args.work_dir
  os.makedirs(work, exist_ok=True)
  try:
    jpeg_dir, count = None, 0
    if args.data_dir:
      data = f'imagenet2012 from {args.data_dir}'
    else:
      jpeg_dir = os.path.join(work, 'jpegs')
      count = max(args.synthetic_images, 2 * args.batch)
      kb = write_jpegs(jpeg_dir, count, *args.jpeg_wh)
      data = (f'{count} synthetic {args.jpeg_size} JPEGs ({kb:.0f} KB mean) served as '
              'imagenet2012 by a mocked TFDS')
    print(f'accelerator bench: {", ".join(args.configs)} as shipped, '
          f'{args.steps} timed steps after {args.warmup} per cell, B = {args.batch} pairs '
          f'(2B = {2 * args.batch} images per step), {os.cpu_count()} host cores; data: {data}')
    print('bench bindings: ' + '; '.join(
        b for b in bindings(args, 'X', 'float32', count)
        if not b.startswith(('run.jit_compile', 'run.mixed_precision'))) +
        f'; cell limit {args.cell_limit:.0f} s, budget {args.budget:.0f} s', flush=True)
    figures, device, failed = {}, None, 0
    for precision in args.precisions:
      for xla in args.xla:
        for config in args.configs:
          name = label(config, xla, precision)
          remaining = budget_end - time.time()
          if remaining < min(args.cell_limit, 15.0):
            print(f'{name}: skipped (the budget of {args.budget:.0f} s is spent)', flush=True)
            failed += 1
            continue
          cell = f'{config}:{xla}:{precision}'
          result = run_cell(args, cell, jpeg_dir, os.path.join(work, cell.replace(':', '_')),
                            min(args.cell_limit, remaining),
                            os.path.join(work, cell.replace(':', '_') + '.log'))
          if 'error' in result:
            failed += 1
          else:
            figures[(config, xla, precision)] = result
          if result.get('device') and result['device'] != device:
            device = result['device']
            print(f'device: {device}')
          print(f'{name}: {describe(result)}', flush=True)
    print_ratios(args, figures)
    if failed:
      print(f'{failed} cell(s) gave no figure; logs in {work}', flush=True)
      own = False  # kept for reading
    return 1 if failed else 0
  finally:
    if own:
      shutil.rmtree(work, ignore_errors=True)


# --- a cell: one training run in this process ----------------------------------------------

def main_cell(args):
  config, xla, precision = args.cell.split(':')
  xla = int(xla)
  sys.path.insert(0, REPO)
  import keras
  import tensorflow as tf
  if precision == 'float32':
    tf.config.experimental.enable_tensor_float_32_execution(False)
  from minc_tf import config as config_lib
  from minc_tf import configurables  # noqa: F401  (registers every gin configurable)
  from minc_tf import data as data_lib
  from minc_tf import networks
  from minc_tf import optim
  from minc_tf import runtime
  from minc_tf import train

  paths = sorted(glob.glob(os.path.join(args.jpeg_dir, '*.jpg'))) if args.jpeg_dir else []
  config_lib.parse_gin([CONFIGS[config]], bindings(args, xla, precision, len(paths)))
  images_per_step = 2 * args.batch
  gpus = tf.config.list_physical_devices('GPU')
  device = (tf.config.experimental.get_device_details(gpus[0]).get('device_name', 'GPU')
            if gpus else 'CPU')

  class Timer(keras.callbacks.Callback):
    """Times the steps after the warm-up; prints the figure and ends the process at once (the
    run's closing checkpoint and export are no train step: for Spectral's head, gigabytes)."""

    def __init__(self):
      super().__init__()
      self.begin = self.first = self.t0 = self.d0 = None

    def on_train_begin(self, logs=None):
      self.begin = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
      # Waits for the step's updates: reading a variable queues behind them on the device.
      self.model.trainable_weights[-1].numpy()
      now, done = time.perf_counter(), batch + 1
      if self.first is None:
        self.first = now - self.begin
        print(f'{FIRST_STEP}{self.first:.3f}', flush=True)
      if self.t0 is None:
        if done >= args.warmup:
          self.t0, self.d0 = now, done
        return
      timed = done - self.d0
      step_s = (now - self.t0) / timed
      out_of_time = (args.deadline is not None and
                     time.time() + step_s * args.steps_per_execution > args.deadline)
      if done >= args.warmup + args.steps or out_of_time:
        print(RESULT + json.dumps({
            'config': config, 'xla': xla, 'precision': precision, 'device': device,
            'images_per_s': images_per_step / step_s, 'step_s': step_s, 'timed_steps': timed,
            'first_step_s': self.first, 'partial': done < args.warmup + args.steps}), flush=True)
        sys.stderr.flush()
        os._exit(0)

  timer = Timer()
  with mocked_imagenet(paths) if paths else contextlib.nullcontext():
    if config == 'supervised':
      data = data_lib.load_data()
      keras.mixed_precision.set_global_policy(PRECISIONS[precision] or 'float32')
      inputs = keras.Input(data.image_shape)
      encoder = networks.build_encoder(data.image_shape)
      logits = keras.layers.Dense(data.num_classes, dtype='float32')(encoder(inputs))
      model = keras.Model(inputs, logits)
      steps = args.warmup + args.steps
      model.compile(optimizer=optim.build_optimizer(images_per_step, steps, 1),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                    jit_compile=bool(xla), steps_per_execution=args.steps_per_execution)
      model.fit(data.linear_eval_dataset(images_per_step, seed=0), epochs=1,
                steps_per_epoch=steps, verbose=0, callbacks=[timer])
    else:
      fit_from = train._fit_from  # run()'s fit: the timer joins its callbacks, last

      def timed_fit_from(model, dataset_from, start_step, steps_per_epoch, epochs, callbacks,
                         verbose, guard):
        return fit_from(model, dataset_from, start_step, steps_per_epoch, epochs,
                        callbacks + [timer], verbose, guard)

      train._fit_from = timed_fit_from
      runtime.set_up_determinism(runtime.deterministic_from_gin(), one_op_at_a_time=True)
      train.run('train', args.model_dir, tf.distribute.get_strategy())
  print('the run ended before its timed steps', file=sys.stderr)
  return 1


def mocked_imagenet(paths):
  """TFDS mocked to serve these JPEG files as imagenet2012 (encoded, as its records hold them),
  with labels drawn from its 1000 classes."""
  import numpy as np
  import tensorflow as tf
  import tensorflow_datasets as tfds
  blobs = []
  for path in paths:
    with open(path, 'rb') as f:
      blobs.append(f.read())
  labels = np.random.default_rng(0).integers(0, MOCK_CLASSES, len(blobs))

  def as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False):
    del self, split, decoders, read_config, shuffle_files
    return tf.data.Dataset.from_tensor_slices({'image': blobs, 'label': labels})

  return tfds.testing.mock_data(as_dataset_fn=as_dataset)


def main():
  args = parse_args()
  sys.exit(main_cell(args) if args.cell else main_parent(args))


if __name__ == '__main__':
  main()
