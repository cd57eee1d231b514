"""Every private Keras / TensorFlow API the project relies on, in one place.

Each function here reaches below a public API because no public one does the job; each is
pinned by tests/test_keras_internals.py, which fails loudly (naming the function) when a new
Keras or TensorFlow changes what it relies on. setup.py bounds keras above until that test has
passed on the next version.
"""

import keras
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


def in_multi_worker_mode(strategy):
  """Whether `strategy` is a MultiWorkerMirroredStrategy spanning several workers.

  Private: MultiWorkerMirroredStrategy.extended._in_multi_worker_mode (TensorFlow).
  """
  if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return False
  return bool(strategy.extended._in_multi_worker_mode())  # pylint: disable=protected-access


class BuiltModel(keras.Model):
  """A keras.Model that skips Keras' symbolic build once it is built and compiled.

  Keras' TF trainer pulls (and drops) one batch to build the model symbolically, and under
  MultiWorkerMirroredStrategy its eager reduce of that nested batch fails. Once the model and
  optimizer are built (train.run builds both), there is nothing to build.

  Private: Model._maybe_symbolic_build (Keras).
  """

  def _maybe_symbolic_build(self, iterator=None, data_batch=None):
    if self.built and self.optimizer is not None and self.optimizer.built:
      return
    super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)


class StepTensorBoard(keras.callbacks.TensorBoard):
  """Keras' TensorBoard callback on the optimizer's step: batch and epoch scalars share one
  x-axis that continues across resumed runs.

  Keras counts batches from 0 in every fit() call, so a resumed run would draw its curve over
  the previous one, and it writes the epoch scalars at the epoch's index; the optimizer's step
  count is the true x-axis for both. Epoch scalars are written whatever the batch cadence
  (see monitor.writing).

  Private: TensorBoard._global_train_batch, _push_writer, _prev_summary_state,
  _log_epoch_metrics (Keras).
  """

  def on_train_begin(self, logs=None):
    super().on_train_begin(logs)
    self._global_train_batch = int(self.model.optimizer.iterations.numpy())

  def on_epoch_begin(self, epoch, logs=None):
    super().on_epoch_begin(epoch, logs)
    self._epoch_start = int(self.model.optimizer.iterations.numpy())

  def on_train_batch_begin(self, batch, logs=None):
    # Keras counts calls, one per execution of steps_per_execution steps: set the count so that
    # its increment lands on the step this execution ends at.
    self._global_train_batch = self._epoch_start + batch + self._steps_per_call() - 1
    super().on_train_batch_begin(batch, logs)

  def _steps_per_call(self):
    return int(getattr(self.model, 'steps_per_execution', 1) or 1)

  def _push_writer(self, writer, step):
    """Keras records at steps divisible by update_freq; an execution of several steps records
    when it crosses such a step (with steps_per_execution 7 and update_freq 10, steps 7, 14,
    21, 28 would never be divisible: it records at 14 and 21)."""
    if self.update_freq == 'epoch':
      return
    every, calls = self.update_freq, self._steps_per_call()
    context = (writer.as_default(step),
               self.summary.record_if(lambda: step // every > (step - calls) // every))
    self._prev_summary_state.append(context)
    context[0].__enter__()
    context[1].__enter__()

  def on_epoch_end(self, epoch, logs=None):
    with tf.summary.record_if(True):
      super().on_epoch_end(epoch, logs)

  def _log_epoch_metrics(self, epoch, logs):
    del epoch  # the epoch's last step instead
    super()._log_epoch_metrics(int(self.model.optimizer.iterations.numpy()), logs)


class preserved_global_seed:  # pylint: disable=invalid-name
  """A context in which building layers leaves Keras' random state as it found it:
  copying a model (export.float32_encoder) then changes no later random draw (the random-init
  baseline's encoder, built after the export, stays the one a seed gives). Keras has no public
  API for the generator's state."""

  def __enter__(self):
    import random  # pylint: disable=import-outside-toplevel
    from keras.src.random import seed_generator  # pylint: disable=import-outside-toplevel
    # Initializers without a seed draw theirs from Python's random (make_default_seed); other
    # draws go through the global SeedGenerator.
    self._python = random.getstate()
    self._generator = seed_generator.global_seed_generator()
    self._state = keras.ops.convert_to_numpy(self._generator.state.value).copy()
    return self

  def __exit__(self, *exc):
    import random  # pylint: disable=import-outside-toplevel
    random.setstate(self._python)
    self._generator.state.assign(self._state)
    return False
