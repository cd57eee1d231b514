"""export.py: the serving model takes uint8 images and normalises them itself; the export
directory is replaced atomically. (The fresh-process round trip without minc_tf is in
test_main.py.)"""

import os

import keras
import numpy as np
import tensorflow as tf

from minc_tf import export


def tiny_encoder():
  keras.utils.set_random_seed(0)
  return keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3),
                           keras.layers.GlobalAveragePooling2D()])


def test_serve_takes_uint8_and_normalises(tmp_path):
  encoder = tiny_encoder()
  mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
  path = export.export_encoder(encoder, mean, std, str(tmp_path / 'export'))
  images = np.random.default_rng(0).integers(0, 256, size=(5, 8, 8, 3)).astype(np.uint8)
  loaded = tf.saved_model.load(path)  # held: its variables die with it
  served = loaded.serve(tf.constant(images)).numpy()
  expected = encoder((images / 255.0 - np.array(mean)) / np.array(std)).numpy()
  assert served.dtype == np.float32 and served.shape == (5, 4)
  np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-6)


def test_export_replaces_the_directory_atomically(tmp_path):
  target = str(tmp_path / 'export')
  first, second = tiny_encoder(), tiny_encoder()
  for w in second.weights:  # another encoder: the export must serve its outputs
    w.assign(w + 0.5)
  images = np.random.default_rng(1).integers(0, 256, size=(3, 8, 8, 3)).astype(np.uint8)
  export.export_encoder(first, (0.5,) * 3, (0.5,) * 3, target)
  export.export_encoder(second, (0.5,) * 3, (0.5,) * 3, target)
  loaded = tf.saved_model.load(target)  # held: its variables die with it
  served = loaded.serve(tf.constant(images)).numpy()
  want = second((images / 255.0 - 0.5) / 0.5).numpy()
  np.testing.assert_allclose(served, want, rtol=1e-5, atol=1e-6)
  assert np.abs(want - first((images / 255.0 - 0.5) / 0.5).numpy()).max() > 1e-3
  assert sorted(os.listdir(tmp_path)) == ['export']  # no .tmp or .old left behind
  assert os.path.exists(os.path.join(target, 'encoder.keras'))
