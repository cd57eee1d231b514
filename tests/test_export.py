"""export.py: the serving model takes uint8 images and normalises them itself; the export
directory is replaced atomically; Keras' other formats, loaded back with their own runtimes,
serve what the SavedModel serves. (The fresh-process round trip without minc_tf is in
test_main.py.)"""

import os
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from minc_tf import export
from minc_tf.errors import UserError
from cli_cases import argv, cli, idx_dir  # noqa: F401  (fixtures, by name)


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


# --- Keras' other formats (run.export_formats) -----------------------------------------------
MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
# Each format's runtime, which loads its file back: pip install 'minc_tf[export]' (the test
# extra has it); without it these tests skip.
RUNTIMES = {'onnx': 'onnxruntime', 'litert': 'ai_edge_litert.interpreter', 'openvino': 'openvino'}


def small_resnet():
  """networks' ResNet, small, with batch norm statistics of its own (the converters fold them
  into the convolutions: at their initial 0 and 1 a slip there would not show)."""
  from minc_tf import networks
  keras.utils.set_random_seed(0)
  encoder = networks.build_encoder((16, 16, 3), depth=18, small_images=True, stage_blocks=(1,),
                                   base_width=8)
  rng = np.random.default_rng(0)
  for layer in encoder.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      gamma, beta, mean, variance = layer.get_weights()
      layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.1, beta.shape),
                         rng.normal(0, 0.1, mean.shape), rng.uniform(0.5, 2, variance.shape)])
  return encoder


def session(name, path):
  """images -> features through the format's own runtime, from its file at `path`."""
  runtime = pytest.importorskip(RUNTIMES[name])
  if name == 'onnx':
    onnx = runtime.InferenceSession(path, providers=['CPUExecutionProvider'])
    return lambda images: onnx.run(None, {'image': images})[0]
  if name == 'openvino':
    compiled = runtime.Core().compile_model(path, 'CPU')
    return lambda images: compiled(images)[0]
  interpreter = runtime.Interpreter(model_path=path)

  def litert(images):  # its tensors are sized per call: any batch and image size
    (image,), (features,) = interpreter.get_input_details(), interpreter.get_output_details()
    interpreter.resize_tensor_input(image['index'], images.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(image['index'], images)
    interpreter.invoke()
    return interpreter.get_tensor(features['index'])
  return litert


def uint8_images(shape, seed):
  return np.random.default_rng(seed).integers(0, 256, size=shape).astype(np.uint8)


def assert_serves_the_same(run, served, images):
  """Float32 in both, in other kernels: the runtimes' convolutions (batch norm folded into
  them) sum in another order than TensorFlow's, a few float32 ulps of these features of up
  to 2 (measured: at most 1e-6 here in each runtime; 2e-5 on a ResNet-50 whose features
  reach 16). 1e-5 (+ 1e-5 relative) leaves a 10- to 30-fold margin; a 1% slip in the
  normalisation moves them by 0.018 (bench/mutants.py)."""
  got = run(images)
  assert got.dtype == np.float32 and got.shape == served.shape
  np.testing.assert_allclose(got, served, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('name', sorted(export.FORMATS))
def test_each_format_loaded_back_serves_what_the_saved_model_serves(tmp_path, name):
  for module in export.FORMATS[name].needs + (RUNTIMES[name],):
    pytest.importorskip(module)
  path = export.export_encoder(small_resnet(), MEAN, STD, str(tmp_path / 'export'), step=7,
                               formats=(name,))
  others = {f.file for n, f in export.FORMATS.items() if n != name}
  assert not others & set(os.listdir(path)) and export.exported_step(path) == 7
  run = session(name, os.path.join(path, export.FORMATS[name].file))
  loaded = tf.saved_model.load(path)  # held: its variables die with it
  # The training size, then another batch and image size: neither is fixed in the file.
  for images in (uint8_images((5, 16, 16, 3), 0), uint8_images((2, 20, 12, 3), 1)):
    assert_serves_the_same(run, loaded.serve(tf.constant(images)).numpy(), images)


def test_the_formats_reach_an_object_store_too(tmp_path):
  """The converters write local files only: on ram:// (gs://'s stand-in) they are copied over."""
  pytest.importorskip(RUNTIMES['litert'])
  target = f'ram://{tmp_path.name}/export'
  export.export_encoder(small_resnet(), MEAN, STD, target, formats=('litert',))
  local = str(tmp_path / 'encoder.tflite')
  tf.io.gfile.copy(f'{target}/encoder.tflite', local)
  loaded = tf.saved_model.load(target)
  images = uint8_images((3, 16, 16, 3), 2)
  assert_serves_the_same(session('litert', local), loaded.serve(tf.constant(images)).numpy(),
                         images)


def test_a_format_whose_converter_is_missing_stops_before_anything_is_written(tmp_path,
                                                                              monkeypatch):
  target = str(tmp_path / 'export')
  export.export_encoder(tiny_encoder(), (0.5,) * 3, (0.5,) * 3, target, step=3)
  before = sorted(os.listdir(target))
  monkeypatch.setitem(sys.modules, 'tf2onnx', None)  # `import tf2onnx` raises ImportError
  with pytest.raises(UserError) as raised:
    export.export_encoder(tiny_encoder(), (0.5,) * 3, (0.5,) * 3, target, step=4,
                          formats=('litert', 'onnx'))
  message = str(raised.value)
  assert "'onnx'" in message and 'the Python package tf2onnx' in message, message
  assert "Fix: pip install 'minc_tf[export]'" in message, message
  # The export of step 3 untouched, and no half-written one beside it.
  assert sorted(os.listdir(tmp_path)) == ['export'] and sorted(os.listdir(target)) == before
  assert export.exported_step(target) == 3


def test_a_run_refuses_a_missing_converter_before_it_trains(idx_dir, tmp_path, cli,
                                                            monkeypatch):
  monkeypatch.setitem(sys.modules, 'openvino', None)
  model_dir = tmp_path / 'run'
  code, out = cli(argv(str(model_dir), idx_dir,
                       "--gin_bindings=run.export_formats=('litert', 'openvino')", mode='train'))
  assert code == 2 and 'Traceback' not in out, out[-2000:]
  assert "run.export_formats asks for 'openvino'" in out and 'package openvino' in out
  assert "pip install 'minc_tf[export]'" in out
  assert not model_dir.exists()  # nothing trained, nothing written


def test_training_and_the_export_mode_write_the_formats_asked_for(idx_dir, tmp_path, cli):
  """run.export_formats reaches both exports (LiteRT: TensorFlow's converter, always here)."""
  model_dir = tmp_path / 'run'
  tflite = model_dir / 'export' / 'encoder.tflite'
  litert = "--gin_bindings=run.export_formats=('litert',)"
  code, out = cli(argv(str(model_dir), idx_dir, litert, mode='train'))
  assert code == 0 and tflite.exists(), out[-2000:]
  code, out = cli(argv(str(model_dir), idx_dir, mode='export'))
  assert code == 0 and not tflite.exists(), out[-2000:]  # the export replaced, without it
  code, out = cli(argv(str(model_dir), idx_dir, litert, mode='export'))
  assert code == 0 and tflite.exists(), out[-2000:]
