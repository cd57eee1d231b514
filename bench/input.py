"""Two-view input throughput on real JPEGs: fused decode_and_crop vs decode-then-crop.

  pip install scikit-image   # only for its bundled photos
  python bench/input.py [--files 64] [--size 224] [--seconds 10] [--sides 300 500]

Makes JPEGs of ImageNet-like sizes (longest side 300-500 px) from scikit-image's real photos,
then measures two-view pairs/s on one core (private thread pool of 1) for:
  fused:            two crop windows, each decoded alone with tf.image.decode_and_crop_jpeg;
  decode-then-crop: the whole JPEG decoded once, both windows cropped from it;
  decode-per-view:  the whole JPEG decoded for each view (what a naive per-view map does);
each for two workloads: `crops` (decode, crop, bicubic resize: what the host does when the
views are finished on the device, run.augment_on_device=True, the TPU set-up) and `views` (the
full BYOL views on the host: + flip, colour, grayscale, blur, solarize). Beside them, the
pairs/s the ResNet-50 MINC train step consumes on this machine.
"""

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import gin  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from minc_tf import augment  # noqa: E402
from minc_tf import model as model_lib  # noqa: E402

PHOTOS = ('astronaut', 'coffee', 'chelsea', 'rocket', 'immunohistochemistry',
          'hubble_deep_field', 'retina')


def make_jpegs(directory, count, sides=(300, 500), seed=0):
  import skimage.data
  rng = np.random.default_rng(seed)
  photos = [getattr(skimage.data, name)()[..., :3] for name in PHOTOS]
  paths = []
  for i in range(count):
    photo = photos[i % len(photos)]
    side = int(rng.integers(sides[0], sides[1] + 1))
    h, w = photo.shape[:2]
    scale = side / max(h, w)
    image = tf.image.resize(photo, [max(int(h * scale), 1), max(int(w * scale), 1)],
                            antialias=True)
    data = tf.io.encode_jpeg(tf.cast(tf.clip_by_value(image, 0, 255), tf.uint8), quality=90)
    path = os.path.join(directory, f'{i}.jpg')
    tf.io.write_file(path, data)
    paths.append(path)
  return paths


def pipeline(paths, mode, size, threads, workload='views'):
  crop, view1, view2 = augment.view_transforms(size)

  def two_views(index, encoded):
    rng = augment.Rng(tf.stack([tf.constant(0, tf.int64), index]))
    if mode == 'fused':
      shape = tf.image.extract_jpeg_shape(encoded)
      crops = [crop(tf.image.decode_and_crop_jpeg(
          encoded, tf.stack(crop.window(shape[0], shape[1], rng)), channels=3), rng,
                    cropped=True) for _ in range(2)]
    elif mode == 'decode_then_crop':
      image = tf.io.decode_jpeg(encoded, channels=3)
      crops = [crop(image, rng), crop(image, rng)]
    else:
      crops = [crop(tf.io.decode_jpeg(encoded, channels=3), rng) for _ in range(2)]
    if workload == 'crops':
      return crops[0], crops[1]
    return view1(crops[0], rng), view2(crops[1], rng)

  files = [tf.io.read_file(p) for p in paths]
  ds = tf.data.Dataset.from_tensor_slices(tf.stack(files)).repeat().enumerate()
  ds = ds.map(two_views, num_parallel_calls=threads).batch(32)
  options = tf.data.Options()
  options.threading.private_threadpool_size = threads
  return ds.with_options(options)


def pairs_per_second(it, seconds):
  next(it)  # warm up
  start, pairs = time.perf_counter(), 0
  while time.perf_counter() - start < seconds:
    next(it)
    pairs += 32
  return pairs / (time.perf_counter() - start)


def decode_ms(paths, seconds, rounds):
  """ms per JPEG: the whole image decoded vs one random crop window (area U(0.08, 1), as a view)
  decoded with decode_and_crop_jpeg: the only step where the two paths differ."""
  files = [tf.io.read_file(p) for p in paths]
  crop, _, _ = augment.view_transforms(224)
  windows = []
  for i, f in enumerate(files):
    shape = tf.image.extract_jpeg_shape(f)
    rng = augment.Rng(tf.constant([1, i], tf.int64))
    windows.append(tf.stack(crop.window(shape[0], shape[1], rng)))
  decode = {'whole': tf.function(lambda f, w: tf.io.decode_jpeg(f, channels=3)),
            'window': tf.function(lambda f, w: tf.image.decode_and_crop_jpeg(f, w, channels=3))}
  best = {}
  for _ in range(rounds):
    for name, fn in decode.items():
      start = time.perf_counter()
      n = 0
      while time.perf_counter() - start < seconds / rounds / 2:
        for f, w in zip(files, windows):
          fn(f, w)
        n += len(files)
      ms = 1e3 * (time.perf_counter() - start) / n
      best[name] = min(best.get(name, ms), ms)
  return best


def train_step_images_per_second(size, batch, steps=2):
  gin.bind_parameter('build_encoder.depth', 50)
  keras.utils.set_random_seed(0)
  m = model_lib.build_model((size, size, 3), method='minc', num_classes=0, total_steps=100)
  m.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
  x = tf.random.uniform((batch, size, size, 3))
  ds = tf.data.Dataset.from_tensors(((x, x), tf.zeros([batch], tf.int64))).repeat()
  m.fit(ds, steps_per_epoch=1, epochs=1, verbose=0)
  start = time.perf_counter()
  m.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
  return steps * batch / (time.perf_counter() - start)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--files', type=int, default=64)
  parser.add_argument('--size', type=int, default=224)
  parser.add_argument('--seconds', type=float, default=10.0)
  parser.add_argument('--sides', type=int, nargs=2, default=[300, 500],
                      help='range of the longest side of the JPEGs, px')
  parser.add_argument('--train_batch', type=int, default=16, help='pairs per train step')
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--skip_train_step', action='store_true')
  args = parser.parse_args()
  modes = ('fused', 'decode_then_crop', 'decode_per_view')
  workloads = ('crops', 'views')
  with tempfile.TemporaryDirectory() as tmp:
    paths = make_jpegs(tmp, args.files, args.sides)
    sizes = [tf.image.extract_jpeg_shape(tf.io.read_file(p)).numpy()[:2] for p in paths]
    kb = np.mean([os.path.getsize(p) for p in paths]) / 1024
    print(f'{len(paths)} JPEGs from scikit-image photos, {min(map(min, sizes))}-'
          f'{max(map(max, sizes))} px, {kb:.0f} KB mean; outputs {args.size} px; pairs/s/core')
    # Interleaved rounds, median per cell: a drift in the machine's speed (other jobs, clock)
    # then hits every mode alike instead of the one measured last.
    samples = {(m, w): [] for m in modes for w in workloads}
    pipes = {(m, w): iter(pipeline(paths, m, args.size, 1, w)) for m in modes for w in workloads}
    for _ in range(args.rounds):
      for key, it in pipes.items():
        samples[key].append(pairs_per_second(it, args.seconds / args.rounds))
    rates = {key: float(np.median(v)) for key, v in samples.items()}
    print(f'  {"":<17} {"crops (device views)":>21} {"views (host views)":>19}'
          f'   (median of {args.rounds} interleaved rounds)')
    for mode in modes:
      print(f'  {mode:<17} {rates[mode, "crops"]:21.1f} {rates[mode, "views"]:19.1f}')
    dec = decode_ms(paths, args.seconds, args.rounds)
    print(f'  decode alone, ms per JPEG (best round): whole {dec["whole"]:.2f}, one view\'s '
          f'window {dec["window"]:.2f} (x{dec["whole"] / dec["window"]:.2f})')
  for other in modes[1:]:
    print(f'  fused / {other:<16} ' + ' '.join(
        f'{rates["fused", w] / rates[other, w]:>{21 if w == "crops" else 19}.2f}'
        for w in workloads) + '   (target >= 1.5)')
  if args.skip_train_step:
    return
  consumed = train_step_images_per_second(args.size, args.train_batch)
  print(f'  ResNet-50 MINC train step consumes {consumed:.1f} pairs/s on this machine '
        f'(batch {args.train_batch} pairs, {os.cpu_count()} cores): the input needs '
        f'{consumed / rates["fused", "views"]:.2f} cores to keep up')


if __name__ == '__main__':
  main()
