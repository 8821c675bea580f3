"""The base classes of the zoo's models: one training step, written once.

Keras' trainer contract (the model owns ``train_step``, ``test_step`` and
the ``metrics`` property) with the zoo's conventions filled in:

- ``ZooModel``: what every zoo model declares instead of being probed for
  it: ``named_optimizers()`` (what the training callbacks schedule and
  ``BackupAndRestore`` saves) and ``serving_endpoints()`` (``caps_zoo.export``).
- ``GenerativeModel``: a mixin for models that draw from a prior:
  ``sample(n, steps=None, seed=None)`` returning numpy arrays with at least
  ``images``.
- ``LossTermsModel``: one network, one optimizer, a loss that is the batch
  mean of a sum of named per-example terms (CapsNet: margin + reconstruction
  squared error; the writers: Lx + Lz). The subclass says how to compute the
  terms (``forward_with_loss_terms``); the base unpacks the batch, refuses
  sample weights, scales the loss for the replica count, applies the
  gradients and tracks one mean per term plus their sum, ``loss``.
- ``AdversarialModel``: two networks trained in turn by two optimizers
  (``optimizer`` for the generator side, ``discriminator_optimizer``), each
  step on its own named terms, with both optimizers round-tripped by
  ``get_compile_config`` / ``compile_from_config``.

Why per-example terms: every term is tracked with ``keras.metrics.Mean``,
which sums totals and counts over replicas, so a MirroredStrategy run
reports the global batch mean, unscaled, while the optimizer (which sums
gradients over replicas) is given each replica's share, ``mean / replicas``.
"""

import keras
import tensorflow as tf
from keras import ops

from caps_zoo import checks, losses

TOTAL_LOSS = "loss"


def descend(optimizer, variables, compute_terms, weights=None):
    """One optimizer step on the batch mean of the summed loss terms.

    ``compute_terms()`` runs inside the gradient tape and returns ``(terms,
    extra)``: ``terms`` a dict of per-example losses ``(batch,)``, summed into
    the loss (times ``weights[name]``, default 1); ``extra`` anything the
    caller wants back (outputs, diagnostics). Returns ``(terms, extra)``.
    """
    with tf.GradientTape() as tape:
        terms, extra = compute_terms()
        loss = ops.mean(sum_terms(terms, weights))
        # The optimizer sums gradients over replicas, so each replica's
        # share of the global mean is its local mean / replica count.
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        scaled_loss = optimizer.scale_loss(loss / replicas)
    gradients = tape.gradient(scaled_loss, variables)
    optimizer.apply(gradients, variables)
    return terms, extra


def sum_terms(terms, weights=None):
    """The per-example sum of a dict of per-example loss terms, float32,
    each times ``weights[name]`` (default 1)."""
    weights = weights or {}
    values = [ops.cast(value, "float32") * weights.get(name, 1.0) for name, value in terms.items()]
    total = values[0]
    for value in values[1:]:
        total = total + value
    return total


class TermMeans:
    """One ``keras.metrics.Mean`` per declared name; ``update`` checks that a
    step returned exactly the declared names (a subclass that computes a
    term it did not declare, or forgets one, fails loudly at trace time)."""

    def __init__(self, names):
        if len(set(names)) != len(names):
            raise ValueError(f"metric names must be unique; got {names}.")
        self.names = tuple(names)
        self.means = {name: keras.metrics.Mean(name=name) for name in self.names}

    def update(self, values, names=None):
        expected = set(self.names if names is None else names)
        if set(values) != expected:
            raise ValueError(
                f"a step computed {sorted(values)}, but the model declares {sorted(expected)}."
            )
        for name, value in values.items():
            self.means[name].update_state(value)

    @property
    def metrics(self):
        return list(self.means.values())


class ZooModel(keras.Model):
    """What every zoo model declares (see the module docstring)."""

    # The values its images must hold (caps_zoo.checks): intensities, or
    # binarized images for the Bernoulli likelihoods (writers, RCN).
    IMAGE_VALUES = checks.UNIT
    # The registry name and overrides caps_zoo.create_model built it from
    # (registry.BuildRecord), which caps_zoo.export.save_preset writes; None
    # for a model made from its class or from a .keras file.
    build_record = None

    def named_optimizers(self):
        """``{compile argument: optimizer}`` of the compiled model."""
        return {"optimizer": self.optimizer}

    def serving_endpoints(self):
        """``{name: (function, input_signature)}`` for ``caps_zoo.export``."""
        raise NotImplementedError(f"{type(self).__name__} defines no serving endpoints.")

    def trained_variables(self):
        """What ``train_step``'s optimizers train: every trainable variable,
        unless a model holds a network trained apart (a prior fitted after
        training, ``GenerativeModel.fits_prior``)."""
        return self.trainable_variables

    def reason_not_selectable(self):
        """None if model selection (``caps_zoo.training.BestWeights``) may
        choose the weights as they are now, at the end of an epoch; else why
        not. Always None here; a GAN whose discriminator has not started yet
        is not yet the model its name promises (AdversarialAutoencoder)."""
        return None

    def current_weight_path(self, stored_path):
        """The variable path of today's model that a weights file written by
        an earlier version stored as ``stored_path`` (relative to the model).
        Identity unless a model's layers moved (see CapsuleNetwork)."""
        return stored_path

    def unpack_batch(self, data):
        """``(images, y)`` of a training or evaluation batch, the images
        checked in the graph (``caps_zoo.checks``: finite, within
        ``IMAGE_VALUES``); sample weights are refused, since every loss of the
        zoo is a plain batch mean of its terms."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if sample_weight is not None:
            raise ValueError(
                f"{type(self).__name__} does not support sample weights: its loss is the "
                "batch mean of its loss terms."
            )
        return self.checked_images(x), y

    def check_images(self, images):
        """``images``, or a clear error unless they are a float batch of
        ``image_shape`` with values in ``IMAGE_VALUES``. What the trace does
        not settle is left to the graph: a shape of unknown rank is checked
        there (``checks.assert_shape``), traced values are not checked here
        (``checked_images`` does, in the steps), so a model's call exports to
        TFLite without Assert ops."""
        values = self.IMAGE_VALUES
        expected = (None, *self.image_shape)
        images = checks.assert_shape(
            images, expected,
            f"{self.name} expects images of shape {checks.describe_shape(expected)} with values in {values}")
        dtype = keras.backend.standardize_dtype(images.dtype)
        if not dtype.startswith(("float", "bfloat")):
            raise TypeError(f"{self.name} expects float images with values in {values}; got dtype {dtype}. "
                            + checks.DTYPE_HINT[values])
        checks.check_image_values(images, values, f"{self.name}: images")
        return images

    def checked_images(self, images):
        """``images`` after ``check_images`` and in-graph checks of their
        values (the shape first: a value check of a batch of the wrong rank
        failed inside a reduction)."""
        return checks.assert_image_values(self.check_images(images), self.IMAGE_VALUES, f"{self.name}: images")

    def check_call_inputs(self, x):
        """``predict``'s inputs after in-graph checks: images by default
        (a generator whose call takes noise says otherwise)."""
        return self.checked_images(x)

    def predict_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        return self(self.check_call_inputs(x), training=False)


class GenerativeModel:
    """Mixin of the models that draw images from a prior."""

    @property
    def can_sample(self):
        """Whether this model's configuration has a prior to draw from (the
        CV-VAE family's: only where the bottleneck assigns discrete codes)."""
        return True

    @property
    def fits_prior(self):
        """Whether the prior is fitted in a stage after training,
        ``fit_prior(images, epochs=..., validation_images=...)`` (the CV-VAE
        family's PixelCNN over codes), rather than fixed by the model (the
        writers' and GRAN's Gaussian noise)."""
        return False

    def sample(self, n, steps=None, seed=None):
        """``n`` images from the prior: a dict of numpy arrays with ``images``."""
        raise NotImplementedError


class ClassAccuracy:
    """Mixin of the LossTermsModels whose ``outputs["scores"]`` are class
    scores (capsule lengths): they need labels, and track ``accuracy``.
    Call ``build_accuracy()`` in ``__init__``."""

    def build_accuracy(self):
        self.accuracy_tracker = keras.metrics.SparseCategoricalAccuracy(name="accuracy")

    def require_labels(self, labels):
        """``labels``, checked (class ids in range, or one-hot targets)."""
        if labels is None:
            raise ValueError(
                f"{self.name} trains and evaluates on (images, labels): its margin loss needs the "
                "class ids. For predictions on images alone use predict() or the model's call."
            )
        return checks.assert_class_ids(labels, self.num_classes, f"{self.name}: labels")

    @property
    def extra_metrics(self):
        return [self.accuracy_tracker]

    def update_extra_metrics(self, images, labels, outputs):
        self.accuracy_tracker.update_state(losses.class_ids(labels, self.num_classes), outputs["scores"])


class LossTermsModel(ZooModel):
    """One network, one optimizer, a loss made of named per-example terms.

    Subclasses set ``LOSS_TERMS`` (the names, in the order they are logged;
    or pass ``loss_terms``)
    and implement ``forward_with_loss_terms(x, y, training) -> (outputs,
    terms)``. Each term is logged as computed; ``loss`` is their sum, each
    times its ``loss_term_weights()`` entry (default 1). Metrics that are not
    losses (accuracy) come from ``extra_metrics`` / ``update_extra_metrics``.
    """

    LOSS_TERMS = ()

    def __init__(self, loss_terms=None, **kwargs):
        """``loss_terms``: the names when they depend on the constructor's
        arguments (a bottleneck with or without terms of its own); default
        ``LOSS_TERMS``. Either way ``self.loss_terms`` holds them."""
        super().__init__(**kwargs)
        self.loss_terms = tuple(self.LOSS_TERMS if loss_terms is None else loss_terms)
        if TOTAL_LOSS in self.loss_terms or not self.loss_terms:
            raise ValueError(f"{type(self).__name__} must name its loss terms (not '{TOTAL_LOSS}').")
        self.loss_means = TermMeans((TOTAL_LOSS, *self.loss_terms))

    def compile(self, optimizer="rmsprop", **kwargs):
        super().compile(optimizer=optimizer, **kwargs)
        if self.built:
            # The optimizer's slots now, not in the first traced step: a first
            # fit refused while tracing (images of the wrong shape) left the
            # step traced once, and every later fit failed with "Creating
            # variables on a non-first call to a function decorated with
            # tf.function". Under a tf.distribute strategy they are made in
            # its scope too, not in a replica context.
            self.optimizer.build(self.trained_variables())

    def compile_from_config(self, config):
        # Keras skips a custom compile() on load; this one restores the
        # optimizer (its slots then load from the file) and the rest.
        self.compile(**keras.saving.deserialize_keras_object(config))

    def forward_with_loss_terms(self, x, y, training):
        raise NotImplementedError

    def loss_term_weights(self):
        """``{term: weight}`` of the terms not summed with weight 1."""
        return {}

    @property
    def extra_metrics(self):
        return []

    def update_extra_metrics(self, x, y, outputs):
        """Called after every train and test step with the step's outputs."""

    @property
    def metrics(self):
        # The model's own losses and metrics; compile(loss=, metrics=) are
        # not used by train_step.
        return [*self.loss_means.metrics, *self.extra_metrics]

    def _update_metrics(self, x, y, outputs, terms):
        self.loss_means.update({TOTAL_LOSS: sum_terms(terms, self.loss_term_weights()), **terms})
        self.update_extra_metrics(x, y, outputs)
        return {metric.name: metric.result() for metric in self.metrics}

    def train_step(self, data):
        x, y = self.unpack_batch(data)

        def compute_terms():
            outputs, terms = self.forward_with_loss_terms(x, y, training=True)
            return terms, outputs

        terms, outputs = descend(
            self.optimizer, self.trained_variables(), compute_terms, self.loss_term_weights()
        )
        return self._update_metrics(x, y, outputs, terms)

    def test_step(self, data):
        x, y = self.unpack_batch(data)
        outputs, terms = self.forward_with_loss_terms(x, y, training=False)
        return self._update_metrics(x, y, outputs, terms)


class AdversarialModel(ZooModel):
    """Two networks trained in turn, each by its own optimizer.

    Every ``train_step`` runs one discriminator step, then one generator
    step. Subclasses set the names of each step's loss terms and
    diagnostics (per-example values that are tracked but not minimised,
    such as D's accuracy), and implement:

    - ``generator_variables()`` / ``discriminator_variables()``: what each
      optimizer trains;
    - ``discriminator_loss_terms(x, training)`` and
      ``generator_loss_terms(x, training)``, each ``-> (terms, diagnostics)``
      (two dicts of per-example values);
    - ``default_optimizer()`` / ``default_discriminator_optimizer()``.

    ``compile(optimizer=..., discriminator_optimizer=...)``; both survive a
    ``.keras`` round trip.

    Logs a mean per term and diagnostic, and ``loss``: the sum of what the
    two steps minimise (the discriminator's terms plus the generator's). It
    does not rank generators (the two losses trade against each other); it
    is there so that Keras' callbacks with their default monitor
    (``EarlyStopping``, ``ModelCheckpoint(save_best_only=True)``,
    ``ReduceLROnPlateau``: ``val_loss``) find the metric they watch instead
    of warning every epoch and never acting.
    """

    DISCRIMINATOR_TERMS = ()
    DISCRIMINATOR_DIAGNOSTICS = ()
    GENERATOR_TERMS = ()
    GENERATOR_DIAGNOSTICS = ()

    def __init__(self, generator_terms=None, **kwargs):
        """``generator_terms``: the generator step's names when they depend
        on the constructor's arguments; default ``GENERATOR_TERMS``."""
        super().__init__(**kwargs)
        self.generator_terms = tuple(self.GENERATOR_TERMS if generator_terms is None else generator_terms)
        if not self.DISCRIMINATOR_TERMS or not self.generator_terms:
            raise ValueError(f"{type(self).__name__} must name the loss terms of both steps.")
        self.discriminator_optimizer = None
        self.step_means = TermMeans(
            (TOTAL_LOSS, *self.DISCRIMINATOR_TERMS, *self.generator_terms,
             *self.DISCRIMINATOR_DIAGNOSTICS, *self.GENERATOR_DIAGNOSTICS)
        )

    # -- what subclasses provide ------------------------------------------------

    def generator_variables(self):
        raise NotImplementedError

    def discriminator_variables(self):
        raise NotImplementedError

    def discriminator_loss_terms(self, x, training):
        raise NotImplementedError

    def generator_loss_terms(self, x, training):
        raise NotImplementedError

    def default_optimizer(self):
        return keras.optimizers.Adam(1e-3)

    def default_discriminator_optimizer(self):
        return keras.optimizers.Adam(1e-3)

    # -- compiling ----------------------------------------------------------------

    def compile(self, optimizer=None, discriminator_optimizer=None, **kwargs):
        super().compile(optimizer=optimizer or self.default_optimizer(), **kwargs)
        self.discriminator_optimizer = keras.optimizers.get(
            discriminator_optimizer or self.default_discriminator_optimizer()
        )
        # Keras' compile wraps ``optimizer`` in a LossScaleOptimizer under
        # mixed_float16 (float16 gradients underflow without loss scaling);
        # the second optimizer needs the same, or D's small gradients vanish.
        if (kwargs.get("auto_scale_loss", True) and self.dtype_policy.name == "mixed_float16"
                and not isinstance(self.discriminator_optimizer, keras.optimizers.LossScaleOptimizer)):
            self.discriminator_optimizer = keras.optimizers.LossScaleOptimizer(
                self.discriminator_optimizer, name="discriminator_loss_scale_optimizer")
        if self.built:
            # Slots now: under a tf.distribute strategy they must be made
            # in its scope (here), not in a replica context (train_step).
            self.optimizer.build(self.generator_variables())
            self.discriminator_optimizer.build(self.discriminator_variables())

    def named_optimizers(self):
        return {"optimizer": self.optimizer, "discriminator_optimizer": self.discriminator_optimizer}

    def trained_variables(self):
        return [*self.generator_variables(), *self.discriminator_variables()]

    def get_compile_config(self):
        config = super().get_compile_config() or {}
        if self.discriminator_optimizer is not None:
            config["discriminator_optimizer"] = keras.saving.serialize_keras_object(
                self.discriminator_optimizer
            )
        return config

    def compile_from_config(self, config):
        # Keras skips a custom compile() on load; this one restores both
        # optimizers and the rest of the compile arguments.
        config = dict(config)
        discriminator = config.pop("discriminator_optimizer", None)
        config = keras.saving.deserialize_keras_object(config)
        if discriminator is not None:
            discriminator = keras.saving.deserialize_keras_object(discriminator)
        self.compile(discriminator_optimizer=discriminator, **config)

    # -- the steps ----------------------------------------------------------------

    @property
    def extra_metrics(self):
        """Metrics beyond the steps' means, as ``LossTermsModel``'s (the
        CV-VAE GANs' code usage); a subclass updates them in its loss terms."""
        return []

    @property
    def metrics(self):
        return [*self.step_means.metrics, *self.extra_metrics]

    def _result(self):
        return {metric.name: metric.result() for metric in self.metrics}

    def train_step(self, data):
        x, _ = self.unpack_batch(data)
        d_terms, d_diagnostics = descend(
            self.discriminator_optimizer, self.discriminator_variables(),
            lambda: self.discriminator_loss_terms(x, training=True),
        )
        g_terms, g_diagnostics = descend(
            self.optimizer, self.generator_variables(),
            lambda: self.generator_loss_terms(x, training=True),
        )
        return self._track(d_terms, g_terms, d_diagnostics, g_diagnostics)

    def test_step(self, data):
        x, _ = self.unpack_batch(data)
        d_terms, d_diagnostics = self.discriminator_loss_terms(x, training=False)
        g_terms, g_diagnostics = self.generator_loss_terms(x, training=False)
        return self._track(d_terms, g_terms, d_diagnostics, g_diagnostics)

    def _track(self, d_terms, g_terms, d_diagnostics, g_diagnostics):
        total = sum_terms(d_terms) + sum_terms(g_terms)
        self.step_means.update({TOTAL_LOSS: total, **d_terms, **g_terms, **d_diagnostics, **g_diagnostics})
        return self._result()
