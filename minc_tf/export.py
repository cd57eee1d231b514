"""Export of the encoder for downstream use, independent of minc_tf.

<export_dir>/ holds a SavedModel whose `serve` endpoint maps uint8 images [N, H, W, C] to float32
features [N, D] (scaling and normalisation inside), and <export_dir>/encoder.keras, the same
model as a Keras file, and export_info.json the training step it was taken at. Loading either
needs only TensorFlow / Keras.
"""

import json
import os
import shutil

import keras
import numpy as np
import tensorflow as tf


def serving_model(encoder, mean, std):
  """uint8 images -> normalised floats -> encoder features, built from stock Keras layers only."""
  image_shape = tuple(encoder.input_shape[1:])
  inputs = keras.Input(shape=image_shape, dtype='uint8', name='image')
  std = np.asarray(std, np.float32)
  mean = np.asarray(mean, np.float32)
  # (x / 255 - mean) / std as one affine map; Rescaling casts the uint8 input to float32.
  x = keras.layers.Rescaling(scale=(1.0 / (255.0 * std)).tolist(),
                             offset=(-mean / std).tolist(), name='normalize')(inputs)
  features = encoder(x, training=False)
  features = keras.layers.Activation('linear', dtype='float32', name='features')(features)
  return keras.Model(inputs, features, name='minc_tf_encoder')


INFO = 'export_info.json'


def exported_step(export_dir):
  """The training step of the encoder in export_dir (None: no export, or one without it)."""
  try:
    with tf.io.gfile.GFile(os.path.join(export_dir, INFO)) as f:
      return int(json.load(f)['step'])
  except (OSError, ValueError, KeyError, TypeError, tf.errors.OpError):
    return None


def export_encoder(encoder, mean, std, export_dir, step=None):
  """Writes the SavedModel, encoder.keras and export_info.json ({'step': step}) to export_dir,
  replacing it atomically."""
  model = serving_model(encoder, mean, std)
  tmp = export_dir.rstrip('/') + '.tmp'
  shutil.rmtree(tmp, ignore_errors=True)
  model.export(tmp, format='tf_saved_model', verbose=False)
  model.save(os.path.join(tmp, 'encoder.keras'))
  with tf.io.gfile.GFile(os.path.join(tmp, INFO), 'w') as f:
    json.dump({'step': step}, f)
  old = export_dir.rstrip('/') + '.old'
  if os.path.exists(export_dir):
    os.replace(export_dir, old)
  os.replace(tmp, export_dir)
  shutil.rmtree(old, ignore_errors=True)
  return export_dir
