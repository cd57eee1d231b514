"""Export of the encoder for downstream use, independent of minc_tf.

<export_dir>/ holds a SavedModel whose `serve` endpoint maps uint8 images [N, H, W, C] (any H and
W: the training size is not built in) to float32 features [N, D] (scaling and normalisation inside; float32 throughout, whatever precision the
encoder trained in), and <export_dir>/encoder.keras, the same
model as a Keras file, and export_info.json the training step it was taken at. Loading either
needs only TensorFlow / Keras.
"""

import json
import os
import shutil

import keras
import numpy as np
import tensorflow as tf

from minc_tf import files
from minc_tf import keras_internals


def float32_encoder(encoder, any_size=False):
  """`encoder` itself when it computes in float32 (and, with any_size, already takes images of
  any height and width), else a copy of it with the same layers and weights: in float32 (a model
  trained under mixed_bfloat16 would otherwise be exported in bf16, giving downstream users
  bf16 features and slow CPU inference) and, with any_size, for [N, None, None, C] images (the
  convolutions and the global pooling do not depend on the size)."""
  in_float32 = all(layer.dtype_policy.compute_dtype == 'float32' for layer in encoder.layers)
  sized = not any_size or tuple(encoder.input_shape[1:3]) == (None, None)
  if in_float32 and sized:
    return encoder

  def as_float32(layer):
    return layer.__class__.from_config(dict(layer.get_config(), dtype='float32'))

  inputs = keras.Input((None, None, encoder.input_shape[-1])) if any_size else None
  with keras_internals.preserved_global_seed():  # the copy's initial draws are overwritten
    copy = keras.models.clone_model(encoder, input_tensors=inputs,
                                    clone_function=None if in_float32 else as_float32)
  copy.set_weights([np.asarray(w, np.float32) for w in encoder.get_weights()])
  return copy


def serving_model(encoder, mean, std):
  """uint8 images -> normalised floats -> encoder features, built from stock Keras layers only.
  The images may be of any size (the encoder is rebuilt for it: float32_encoder)."""
  encoder = float32_encoder(encoder, any_size=True)
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
  replacing what was there.

  Local disks: written beside it and swapped in by directory renames, atomically. Object stores
  (gs://) and ram:// have no directory rename: the files are copied over one by one, with
  export_info.json removed first and written last, so an export without it is incomplete.
  """
  model = serving_model(encoder, mean, std)
  export_dir = export_dir.rstrip('/')
  parent, name = os.path.split(export_dir)
  # Not '<export_dir>.tmp' on remote filesystems: ram:// lists a directory's children by name
  # prefix, so export/ would list export.tmp's files as its own.
  tmp = export_dir + '.tmp' if '://' not in export_dir else os.path.join(parent, f'.tmp_{name}')
  if tf.io.gfile.exists(tmp):
    tf.io.gfile.rmtree(tmp)
  model.export(tmp, format='tf_saved_model', verbose=False)
  model.save(os.path.join(tmp, 'encoder.keras'))
  files.write(os.path.join(tmp, INFO), json.dumps({'step': step}))
  if '://' not in export_dir:
    old = export_dir + '.old'
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(export_dir):
      os.replace(export_dir, old)
    os.replace(tmp, export_dir)
    shutil.rmtree(old, ignore_errors=True)
    return export_dir
  if tf.io.gfile.exists(os.path.join(export_dir, INFO)):
    tf.io.gfile.remove(os.path.join(export_dir, INFO))
  written = [os.path.relpath(os.path.join(root, name), tmp)
             for root, _, names in tf.io.gfile.walk(tmp) for name in names]
  for rel in sorted(written, key=lambda r: r == INFO):  # the info file last
    tf.io.gfile.makedirs(os.path.dirname(os.path.join(export_dir, rel)))
    files.copy(os.path.join(tmp, rel), os.path.join(export_dir, rel))
  stale = [os.path.join(root, name) for root, _, names in tf.io.gfile.walk(export_dir)
           for name in names
           if os.path.relpath(os.path.join(root, name), export_dir) not in written]
  for path in stale:
    if tf.io.gfile.exists(path):
      tf.io.gfile.remove(path)
  tf.io.gfile.rmtree(tmp)
  return export_dir
