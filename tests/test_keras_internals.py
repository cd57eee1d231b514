"""keras_internals.py: each private Keras / TensorFlow API it relies on still does its job.

When a new Keras or TensorFlow fails one of these, the named function needs attention before
setup.py's upper bound on keras is raised.
"""

import keras
import tensorflow as tf

from minc_tf import keras_internals
from helpers import compile_model, tiny_model


def test_the_private_names_exist():
  for cls, names in ((keras.callbacks.TensorBoard, ('_push_writer', '_log_epoch_metrics')),
                     (keras.Model, ('_maybe_symbolic_build',)),
                     (tf.distribute.MultiWorkerMirroredStrategy, ())):
    missing = [n for n in names if not hasattr(cls, n)]
    assert not missing, f'keras_internals relies on {cls.__name__}.{missing}'
  tb = keras.callbacks.TensorBoard('/tmp/unused')
  assert hasattr(tb, '_prev_summary_state') and hasattr(tb, '_global_train_batch')


def test_checkpoint_children_name_the_checkpoint_keys(tmp_path):
  m = tiny_model('minc')
  children = keras_internals.checkpoint_children(m)
  assert {'encoder', 'projector', 'method', 'probe'} <= set(children)
  path = tf.train.Checkpoint(model=m).save(str(tmp_path / 'ckpt'))
  keys = {k.split('/')[1] for k, _ in tf.train.list_variables(path) if k.startswith('model/')}
  assert keys and keys <= set(children)


def test_a_checkpoint_view_restores_a_renamed_child(tmp_path):
  """Written with a variable under one name, read back through a view that puts today's
  variable in its place, every object matched."""
  old = tf.train.Checkpoint(model=tf.train.Checkpoint(w=tf.Variable(3.0), v=tf.Variable(1.0)))
  path = old.save(str(tmp_path / 'old'))
  new = tf.Module()
  new.v = tf.Variable(0.0)
  new.moved = tf.Module()
  new.moved.w = tf.Variable(0.0)
  view = keras_internals.checkpoint_view(new, {'moved': None, 'w': new.moved.w})
  tf.train.Checkpoint(model=view).restore(path).assert_existing_objects_matched()
  assert float(new.moved.w.numpy()) == 3.0 and float(new.v.numpy()) == 1.0


def test_a_built_model_skips_the_symbolic_build(mirrored):
  """Under a strategy Keras' build pulls a batch from fit()'s epoch iterator; a built and
  compiled BuiltModel does not (the pull is what fails under MultiWorkerMirroredStrategy)."""
  with mirrored.scope():
    m = tiny_model('spectral')
    compile_model(m)
    m.optimizer.build(m.online_variables)
  pulled = []

  def epochs():  # Keras' TF epoch iterator yields (epoch, step, iterator)
    pulled.append(1)
    yield 0, 0, iter([None])

  m._maybe_symbolic_build(iterator=epochs(), data_batch=None)
  assert not pulled


def test_the_multi_worker_mode_probe_exists():
  from tensorflow.python.distribute import collective_all_reduce_strategy as collective
  assert hasattr(collective.CollectiveAllReduceExtended, '_in_multi_worker_mode')


def test_multi_worker_mode_is_false_off_a_cluster(mirrored):
  assert not keras_internals.in_multi_worker_mode(mirrored)
  assert not keras_internals.in_multi_worker_mode(tf.distribute.get_strategy())


def test_building_inside_preserved_global_seed_changes_no_later_draw():
  import numpy as np
  from minc_tf import keras_internals

  def layer_weights():
    layer = keras.layers.Dense(3)
    layer.build((None, 2))
    return layer.kernel.numpy()

  keras.utils.set_random_seed(5)
  expected = layer_weights()
  keras.utils.set_random_seed(5)
  with keras_internals.preserved_global_seed():
    layer_weights()
  after = layer_weights()
  np.testing.assert_array_equal(after, expected)  # as if nothing had been built inside
  keras.utils.set_random_seed(5)
  layer_weights()
  assert not np.array_equal(layer_weights(), expected)  # without it, the next draw moves on
