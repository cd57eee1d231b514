"""Every private Keras / TensorFlow API the project relies on, in one place.

Each function here reaches below a public API because no public one does the job; each is
pinned by tests/test_keras_internals.py, which fails loudly (naming the function) when a new
Keras or TensorFlow changes what it relies on. setup.py bounds keras above until that test has
passed on the next version.
"""

import tensorflow as tf


def checkpoint_children(trackable):
  """{name: child} of the object-based checkpoint graph under `trackable` (a Keras model or
  layer on the TensorFlow backend): the names its checkpoint keys use (model/<name>/...).

  Private: Trackable._trackable_children (TensorFlow), which Keras 3's TF layers override.
  """
  return dict(trackable._trackable_children('checkpoint'))  # pylint: disable=protected-access


def checkpoint_view(trackable, changes):
  """A checkpoint object with `trackable`'s children, changed by `changes` ({name: object, or
  None to leave the child out}): restoring through it reads a checkpoint whose graph had the
  changed children (an object that has since moved or been renamed)."""
  children = checkpoint_children(trackable)
  for name, obj in changes.items():
    children.pop(name, None)
    if obj is not None:
      children[name] = obj
  view = tf.train.Checkpoint()
  for name, child in children.items():
    setattr(view, name, child)
  return view
