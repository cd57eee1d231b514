"""Export of the encoder for downstream use, independent of minc_tf.

<export_dir>/ holds a SavedModel whose `serve` endpoint maps uint8 images [N, H, W, C] (any H and
W: the training size is not built in) to float32 features [N, D] (scaling and normalisation inside; float32 throughout, whatever precision the
encoder trained in), and <export_dir>/encoder.keras, the same
model as a Keras file, and export_info.json the training step it was taken at. Loading either
needs only TensorFlow / Keras.

On request (run.export_formats), Keras' other formats of the same model lie beside them:
encoder.onnx (ONNX, for ONNX Runtime), encoder.tflite (LiteRT, formerly TensorFlow Lite) and
encoder.xml with its weights encoder.bin (OpenVINO IR). Each has the SavedModel's one input,
'image', uint8 [N, H, W, C], and its one output, float32 features [N, D]. N, H and W stay
dynamic in all three, as in the SavedModel, rather than fixed at the training size: the
convolutions and the global pooling take any size, and a downstream task's images are often
larger. (LiteRT: resize_tensor_input to the batch's shape, then allocate_tensors, before each
new size.) LiteRT is written by TensorFlow's own converter; ONNX needs tf2onnx and OpenVINO
needs openvino and scipy: pip install 'minc_tf[export]', which also brings ONNX Runtime and
the LiteRT interpreter to load the files with.
"""

import contextlib
import importlib
import json
import os
import shutil
import tempfile
import typing

import keras
import numpy as np
import tensorflow as tf

from minc_tf import files
from minc_tf import keras_internals
from minc_tf.errors import UserError, require, subset_of


class Format(typing.NamedTuple):
  file: str  # in export_dir
  needs: tuple  # the modules its converter imports, each from the pip package of its name


# Keras' other export formats on the TensorFlow backend (its "torch" format needs the PyTorch
# backend), written beside the SavedModel on request.
FORMATS = {
    'onnx': Format('encoder.onnx', ('tf2onnx', 'onnx')),
    'litert': Format('encoder.tflite', ()),  # TensorFlow's own TFLite converter
    # Its weights in encoder.bin beside it; Keras' converter imports its OpenVINO backend,
    # which imports scipy.
    'openvino': Format('encoder.xml', ('openvino', 'scipy')),
}
INSTALL = "pip install 'minc_tf[export]'"


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


def normalizer(mean, std):
  """uint8 images -> (x / 255 - mean) / std in float32, as one affine Rescaling layer named
  'normalize' (transfer.load_encoder reads the statistics back from it). float32 whatever the
  global policy: the statistics are not rounded to bf16."""
  std = np.asarray(std, np.float32)
  mean = np.asarray(mean, np.float32)
  return keras.layers.Rescaling(scale=(1.0 / (255.0 * std)).tolist(),
                                offset=(-mean / std).tolist(), dtype='float32', name='normalize')


def serving_model(encoder, mean, std):
  """uint8 images -> normalised floats -> encoder features, built from stock Keras layers only.
  The images may be of any size (the encoder is rebuilt for it: float32_encoder)."""
  encoder = float32_encoder(encoder, any_size=True)
  image_shape = tuple(encoder.input_shape[1:])
  inputs = keras.Input(shape=image_shape, dtype='uint8', name='image')
  x = normalizer(mean, std)(inputs)
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


def check_formats(formats):
  """Raises a UserError naming the fix for `formats` (run.export_formats) unless each is one of
  FORMATS and the modules its converter needs import here; train.run calls it before any
  work, export_encoder before it writes anything. Imported, not only looked up: a broken
  install fails here too, not after training."""
  require('run.export_formats', formats, subset_of(FORMATS))
  for name in formats:
    for module in FORMATS[name].needs:
      try:
        importlib.import_module(module)
      except ImportError as e:
        raise UserError(
            f'run.export_formats asks for {name!r}, whose converter needs the Python package '
            f'{module}, which does not import here ({e}). Fix: {INSTALL} (or pip install '
            f'{module}), or drop {name!r} from run.export_formats.') from None


@contextlib.contextmanager
def _local(directory):
  """A local directory whose files end up in `directory`: itself on a local disk; on object
  stores (gs://, ram://) a temporary one, copied over after: the ONNX, LiteRT and OpenVINO
  converters write through local file APIs only."""
  if '://' not in directory:
    yield directory
    return
  with tempfile.TemporaryDirectory() as local:
    yield local
    for name in os.listdir(local):
      files.copy(os.path.join(local, name), os.path.join(directory, name))


def _write_formats(model, formats, directory):
  """FORMATS' files of `model` in `directory`, each with the SavedModel's input: uint8 images
  'image' of any batch, height and width. Stated, not inferred: Keras' ONNX export infers no
  signature from a model that was never called, and the serving model is built, not called."""
  if not formats:
    return
  image = tf.TensorSpec((None, None, None, model.input_shape[-1]), tf.uint8, name='image')
  with _local(directory) as local:
    for name in formats:
      model.export(os.path.join(local, FORMATS[name].file), format=name, verbose=False,
                   input_signature=[image])


def export_encoder(encoder, mean, std, export_dir, step=None, formats=()):
  """Writes the SavedModel, encoder.keras, export_info.json ({'step': step}) and the files of
  `formats` (FORMATS' names) to export_dir, replacing what was there.

  Local disks: written beside it and swapped in by directory renames, atomically. Object stores
  (gs://) and ram:// have no directory rename: the files are copied over one by one, with
  export_info.json removed first and written last, so an export without it is incomplete.
  """
  check_formats(formats)
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
  _write_formats(model, formats, tmp)
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
