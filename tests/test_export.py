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
  # Any image size: the encoder's convolutions and pooling at 12 x 10, in the SavedModel and
  # in encoder.keras alike.
  other = np.random.default_rng(1).integers(0, 256, size=(2, 12, 10, 3)).astype(np.uint8)
  normalised = ((other / 255.0 - np.array(mean)) / np.array(std)).astype(np.float32)
  conv, pool = encoder.layers
  expected = pool(conv(normalised)).numpy()
  np.testing.assert_allclose(loaded.serve(tf.constant(other)).numpy(), expected, rtol=1e-5,
                             atol=1e-6)
  keras_file = keras.models.load_model(os.path.join(path, 'encoder.keras'))
  np.testing.assert_allclose(keras_file(other), expected, rtol=1e-5, atol=1e-6)


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


def test_an_encoder_trained_in_bfloat16_is_exported_in_float32(tmp_path):
  from minc_tf import networks
  keras.mixed_precision.set_global_policy('mixed_bfloat16')
  try:
    keras.utils.set_random_seed(0)
    encoder = networks.build_encoder((16, 16, 3), depth=18, small_images=True,
                                     stage_blocks=(1,), base_width=8)
    assert encoder.layers[1].dtype_policy.compute_dtype == 'bfloat16'
  finally:
    keras.mixed_precision.set_global_policy('float32')
  images = np.random.default_rng(0).integers(0, 256, size=(4, 16, 16, 3)).astype(np.uint8)
  x = (images / 255.0 - 0.5) / 0.25
  path = export.export_encoder(encoder, (0.5,) * 3, (0.25,) * 3, str(tmp_path / 'export'))
  loaded = tf.saved_model.load(path)
  served = loaded.serve(tf.constant(images)).numpy()
  want = export.float32_encoder(encoder)(x.astype(np.float32), training=False).numpy()
  bf16 = np.asarray(encoder(x.astype(np.float32), training=False), np.float32)
  assert all(layer.dtype_policy.compute_dtype == 'float32'
             for layer in keras.models.load_model(f'{path}/encoder.keras').layers[2].layers)
  np.testing.assert_allclose(served, want, rtol=1e-5, atol=1e-5)
  assert np.abs(served - bf16).max() > 1e-3  # bf16 rounding, which the export no longer has
