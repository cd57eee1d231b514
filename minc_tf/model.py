"""The self-supervised Keras model: online / target networks, the method, train_step.

One class serves every method, so that MINC and its baselines share the encoder, the input
pipeline, the optimizer and the probe, and differ only where the method does (methods/):

  method        online                       target                  loss (methods/<file>)
  minc          encoder+projector(+pred.)    EMA copy (or sg online)  minc.py, summary M
  spectral      encoder+projector            none                    spectral.py
  simclr        encoder+projector            none                    simclr.py
  byol          encoder+projector+MLP pred.  EMA copy                byol.py
  linear_byol   encoder+projector+lin. pred. EMA copy                byol.py
  simsiam       encoder+projector+MLP pred.  sg(online)              byol.py

The model owns all state a checkpoint needs: online and target weights, the method's own state
(MINC's summary and its step count), the optimizer.
"""

import inspect
import math

import gin
import keras
import tensorflow as tf

from minc_tf import keras_internals
from minc_tf import losses
from minc_tf import methods
from minc_tf import networks
from minc_tf import optim
from minc_tf.errors import int_at_least, one_of, real_in, require


def target_tau(step, total_steps, tau_base):
  """BYOL's EMA schedule: tau_k = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2."""
  frac = tf.minimum(tf.cast(step, tf.float32) / float(max(total_steps, 1)), 1.0)
  return 1.0 - (1.0 - tau_base) * (tf.cos(math.pi * frac) + 1.0) / 2.0


class SSLModel(keras_internals.BuiltModel):
  """Two-view self-supervised model with a custom train_step (see the module docstring).

  Data: train batches are ((view1, view2), labels) with labels used only by the online linear
  probe (pass -1 labels, or num_classes=0, to train without one); eval batches are
  (image, label) and measure the probe.
  """

  def __init__(self, encoder, projector, method, predictor=None, target_encoder=None,
               target_projector=None, num_classes=0, tau_base=0.99, total_steps=1, **kwargs):
    super().__init__(**kwargs)
    self.method = method
    self.encoder = encoder
    self.projector = projector
    self.predictor = predictor
    self.target_encoder = target_encoder
    self.target_projector = target_projector
    # (target, online) variable pairs the EMA update moves. The target stays a trainable *layer*
    # (Keras 3 runs the BatchNorm of a frozen layer in inference mode, and BYOL's target
    # normalises with the batch's statistics) but its variables are marked non-trainable, so
    # neither the optimizer nor its slots ever see them.
    self.target_pairs = []
    if target_encoder is not None:
      self.target_pairs = (pair_variables(target_encoder, encoder) +
                           pair_variables(target_projector, projector))
      for v in target_encoder.weights + target_projector.weights:
        v.trainable = False
    self.tau_base = tau_base
    self.total_steps = total_steps
    self.num_classes = num_classes
    self.probe = keras.layers.Dense(num_classes, name='probe') if num_classes else None
    # augment.batch_views(...) when the views are made on the accelerator (run.augment_on_device).
    self.device_views = None

    # `loss` is the method's loss alone; the probe's cross-entropy is logged beside it (its
    # gradient reaches only the probe, through stop_gradient features).
    self.loss_tracker = keras.metrics.Mean(name='loss')
    self.probe_loss_tracker = keras.metrics.Mean(name='probe_loss')
    # The online probe trains on the augmented views: this is a training accuracy on augmented
    # crops, not a held-out figure (evaluate.py measures those).
    self.probe_acc = keras.metrics.SparseCategoricalAccuracy(name='probe_train_acc')
    self.feature_std = keras.metrics.Mean(name='feature_std')
    # The loss split into the terms the method names (attract / repel for the contrastive
    # family; BYOL-type losses have a single term).
    self.term_trackers = {name: keras.metrics.Mean(name=f'loss_{name}') for name in method.TERMS}

  @property
  def metrics(self):
    m = [self.loss_tracker, self.feature_std]
    m += list(self.term_trackers.values())
    if self.probe is not None:
      m += [self.probe_loss_tracker, self.probe_acc]
    return m

  @property
  def online_variables(self):
    """What the optimizer trains: online encoder, projector, predictor and probe."""
    nets = [self.encoder, self.projector, self.predictor, self.probe]
    return [v for net in nets if net is not None for v in net.trainable_weights]

  def call(self, images, training=False):
    """Encoder features (what the probe and the exported model see)."""
    return self.encoder(images, training=training)

  def build_all(self):
    """Creates every variable (probe, optimizer slots need shapes before a checkpoint loads)."""
    if self.probe is not None:
      self.probe.build((None, self.encoder.output_shape[-1]))
    self.built = True

  # --- the method's loss -----------------------------------------------------------------------

  def _online(self, x, training):
    h = self.encoder(x, training=training)
    z = self.projector(h, training=training)
    q = self.predictor(z, training=training) if self.predictor is not None else z
    return h, z, q

  def _target(self, x, z):
    if self.target_encoder is None:
      return tf.stop_gradient(z)
    return tf.stop_gradient(
        self.target_projector(self.target_encoder(x, training=True), training=True))

  def compute_ssl_loss(self, x1, x2, training=True, update_state=True):
    """The method's loss on one (local) batch of view pairs; global under a strategy.

    Returns (loss, features of view 1, projections of view 1, {term name: value}).
    update_state=False leaves the method's own state (MINC's summary) as it is.
    """
    n = tf.shape(x1)[0]
    x = tf.concat([x1, x2], axis=0)
    h, z, q = self._online(x, training)
    z = tf.cast(z, tf.float32)
    q = tf.cast(q, tf.float32)
    t = tf.cast(self._target(x, z), tf.float32) if self.method.TARGET_OUTPUTS else None
    loss, terms = self.method.loss(z, q, t, update_state=update_state)
    return loss, h[:n], z[:n], terms

  # --- Keras hooks -----------------------------------------------------------------------------

  def train_step(self, data):
    (x1, x2), labels = data
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    if self.device_views is not None:  # the input pipeline sent crops only
      replica = tf.distribute.get_replica_context().replica_id_in_sync_group
      seed = tf.stack([tf.cast(self.optimizer.iterations, tf.int64),
                       tf.cast(replica, tf.int64)])
      x1, x2 = self.device_views(x1, x2, seed)
    with tf.GradientTape() as tape:
      ssl_loss, h1, z1, terms = self.compute_ssl_loss(x1, x2, training=True)
      total = ssl_loss
      if self.probe is not None:
        probe_loss, logits = self._probe_loss(h1, labels)
        total += probe_loss
      # Keras sums gradients over replicas and every loss above is already global.
      # scale_loss multiplies by the loss scale under mixed_float16 (compile() then wraps the
      # optimizer in a LossScaleOptimizer, whose apply() divides it out); else it is identity.
      scaled = self.optimizer.scale_loss(total / replicas)
    variables = self.online_variables
    grads = tape.gradient(scaled, variables)
    self.optimizer.apply(grads, variables)
    self._update_target()
    self.loss_tracker.update_state(ssl_loss)
    for name, value in terms.items():
      self.term_trackers[name].update_state(value)
    self.feature_std.update_state(
        tf.reduce_mean(tf.math.reduce_std(tf.math.l2_normalize(z1, axis=-1), axis=0)))
    if self.probe is not None:
      self.probe_loss_tracker.update_state(probe_loss)
      self.probe_acc.update_state(tf.maximum(labels, 0), logits,
                                  sample_weight=tf.cast(labels >= 0, tf.float32))
    logs = {m.name: m.result() for m in self.metrics}
    if keras_internals.in_multi_worker_mode(tf.distribute.get_strategy()):
      # Keras reduces multi-worker step outputs with reduce(MEAN, v, axis=0), which fails on
      # scalars; a leading axis of 1 makes that reduction return the scalar.
      logs = {k: v[None] for k, v in logs.items()}
    return logs

  def _probe_loss(self, h, labels):
    logits = tf.cast(self.probe(tf.stop_gradient(h)), tf.float32)
    valid = tf.cast(labels >= 0, tf.float32)
    xent = tf.nn.sparse_softmax_cross_entropy_with_logits(tf.maximum(labels, 0), logits)
    sums = losses.cross_replica_sum(tf.stack([tf.reduce_sum(xent * valid), tf.reduce_sum(valid)]))
    return sums[0] / tf.maximum(sums[1], 1.0), logits

  def _update_target(self):
    """target <- tau target + (1 - tau) online, after the step (BYOL's order and schedule).

    tau uses the step count after this step's update, so step k (1-based) applies tau_k.
    """
    if not self.target_pairs:
      return
    tau = target_tau(self.optimizer.iterations, self.total_steps, self.tau_base)
    # Replica-local assignment: the online weights are identical on every replica after the
    # all-reduced update, so the targets stay identical too.
    for t, o in self.target_pairs:
      t.assign(tau * t + (1.0 - tau) * tf.cast(o, t.dtype))

  def test_step(self, data):
    images, labels = data
    if self.probe is not None:
      logits = self.probe(self.encoder(images, training=False))
      self.probe_acc.update_state(labels, logits)
    return {'probe_acc': self.probe_acc.result()} if self.probe is not None else {}


def pair_variables(target, online):
  """[(target variable, online variable)] for every variable `online` trains.

  Pairs by variable path inside the network (layer, then variable name: the two networks come
  from one builder) and checks shapes, so a structural mismatch fails here rather than as a
  silent mis-pairing.
  """
  by_path = {v.path: v for v in target.weights}
  if len(by_path) != len(target.weights):
    raise ValueError(f'{target.name} has two variables with the same path')
  pairs = []
  for o in online.trainable_weights:
    t = by_path.get(o.path)
    if t is None or tuple(t.shape) != tuple(o.shape):
      raise ValueError(f'{target.name} has no variable matching {o.path} {tuple(o.shape)}')
    pairs.append((t, o))
  return pairs


def build_model(image_shape, method='minc', num_classes=0, projector_hidden=(4096,),
                projector_dim=256, predictor='none', predictor_hidden=(4096,), use_target=None,
                tau_base=0.99, total_steps=1, sync_bn=False, byol_preset=None, **settings):
  """Builds the SSL model for `method` (call inside strategy.scope()).

  predictor: 'none', 'mlp' (hidden predictor_hidden -> projector_dim) or 'linear'.
    Left 'none', the method's default (methods/: byol/simsiam 'mlp', linear_byol 'linear').
  use_target: EMA target network on/off; None means the method's default (on for byol and
    linear_byol; off for the rest, MINC included: chosen when the ablation's target was frozen
    by a since-fixed bug, see docs/method.md for the live-target rerun). A method without a
    target that reads target outputs uses sg(online outputs).
  tau_base: target EMA base rate of BYOL's cosine schedule over total_steps; byol_preset (100,
    300 or 1000 epochs) takes it from BYOL's table instead.
  **settings: the methods' own settings (methods.settings(); each method's SETTINGS with its
    default, range and doc), bound in gin as build_model.<name> like the rest; a method reads
    its own and the others keep their defaults.
  method: the loss: one of the registered methods (minc, spectral, simclr, byol, linear_byol,
    simsiam).
  projector_hidden: widths of the projector MLP's hidden layers (each with BatchNorm and ReLU).
  projector_dim: the projector's output width k (the embedding the loss sees).
  predictor_hidden: widths of the MLP predictor's hidden layers.
  byol_preset: 'byol' sets BYOL's published projector, predictor and target settings (None: each
    as bound).
  """
  if byol_preset is not None:
    tau_base = optim.preset(byol_preset)[2]
  require('build_model.method', method, one_of(methods.names()))
  declared = methods.settings()
  unknown = sorted(set(settings) - set(declared))
  if unknown:
    raise TypeError(f'build_model() got unexpected keyword arguments {unknown}')
  for name, setting in declared.items():
    require(f'build_model.{name}', settings.get(name, setting.default), setting.check)
  widths = (lambda v: isinstance(v, (list, tuple)) and all(int_at_least(1)[0](w) for w in v),
            'a list of integers >= 1')
  require('build_model.projector_hidden', projector_hidden, widths)
  require('build_model.projector_dim', projector_dim, int_at_least(1))
  require('build_model.predictor', predictor, one_of(('none', 'mlp', 'linear')))
  require('build_model.predictor_hidden', predictor_hidden, widths)
  require('build_model.use_target', use_target, one_of((None, True, False)))
  # tau = 1 would freeze the target at its initialisation.
  require('build_model.tau_base', tau_base, real_in(0, 1, high_open=True))
  cls = methods.get(method)
  if predictor == 'none':
    predictor = cls.PREDICTOR
  if use_target is None:
    use_target = cls.TARGET

  def online_and_target(prefix):
    encoder = networks.build_encoder(image_shape, sync_bn=sync_bn, name=f'{prefix}encoder')
    projector = networks.build_mlp(encoder.output_shape[-1], projector_hidden, projector_dim,
                                   sync_bn=sync_bn, name=f'{prefix}projector')
    return encoder, projector

  encoder, projector = online_and_target('')
  target_encoder = target_projector = None
  if use_target:
    target_encoder, target_projector = online_and_target('target_')
    target_encoder.set_weights(encoder.get_weights())
    target_projector.set_weights(projector.get_weights())
  pred = None
  if predictor != 'none':
    hidden = predictor_hidden if predictor == 'mlp' else ()
    pred = networks.build_mlp(projector_dim, hidden, projector_dim, sync_bn=sync_bn,
                              name='predictor')
  own = {name: settings.get(name, declared[name].default) for name in cls.SETTINGS}
  model = SSLModel(encoder, projector, cls(projector_dim, use_target, **own), pred,
                   target_encoder, target_projector, num_classes=num_classes, tau_base=tau_base,
                   total_steps=total_steps)
  model.build_all()
  return model


def _with_method_settings(fn):
  """fn whose signature also names every method's settings (keyword-only, with defaults), so
  that gin accepts build_model.<setting> for those and still rejects a typo; gin passes only
  the bound ones, and build_model fills in the rest from the same table."""
  sig = inspect.signature(fn)
  params = [p for p in sig.parameters.values() if p.kind != p.VAR_KEYWORD]
  params += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=s.default)
             for name, s in methods.settings().items()]
  fn.__signature__ = sig.replace(parameters=params)
  return fn


build_model = gin.configurable('build_model')(_with_method_settings(build_model))
