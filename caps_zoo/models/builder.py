"""What the zoo's models share: how registered builders make them, the
check of the images they are given (in the wording of ``caps_zoo.checks``)
and per-replica noise."""

import keras
import tensorflow as tf

from caps_zoo import checks


def build_compiled(model_class, name, defaults, overrides, optimizer=None):
    """``model_class(**defaults, **overrides)``, built and compiled.

    ``overrides`` may rename the model (``name=``). Compiled with
    ``optimizer`` (default Adam(1e-3)), like keras-hub's task models:
    ``evaluate()`` and ``fit()`` work at once; compile again to change it.
    """
    overrides = dict(overrides)
    model = model_class(name=overrides.pop("name", name), **{**defaults, **overrides})
    model.build()
    model.compile(optimizer=optimizer or keras.optimizers.Adam(1e-3))
    return model


def check_images(model, images):
    """Raise a clear error unless ``images`` is a float batch of
    ``model.image_shape`` with values in ``model.IMAGE_VALUES`` (the values
    are checked when ``images`` are concrete: in a traced step
    ``ZooModel``'s in-graph checks do it)."""
    values = model.IMAGE_VALUES
    if len(images.shape) != 4 or tuple(images.shape[1:]) != model.image_shape:
        raise ValueError(
            f"{model.name} expects images of shape (batch, {', '.join(map(str, model.image_shape))}) "
            f"with values in {values}; got shape {tuple(images.shape)}."
        )
    dtype = keras.backend.standardize_dtype(images.dtype)
    if not dtype.startswith(("float", "bfloat")):
        raise TypeError(f"{model.name} expects float images with values in {values}; got dtype {dtype}. "
                        + checks.DTYPE_HINT[values])
    checks.check_image_values(images, values, f"{model.name}: images")


def replica_normal(shape, seed_generator):
    """N(0, 1) noise of ``shape`` from ``seed_generator``, different on every replica.

    Under a tf.distribute strategy each replica holds a copy of a
    SeedGenerator's state and advances it in step with the others, so
    ``keras.random.normal(seed=generator)`` draws the same noise on all of
    them (duplicate samples in every global batch). The replica's id offsets
    the seed's first half (the generator advances the second).
    """
    seed = tf.cast(seed_generator.next(), tf.int64)
    context = tf.distribute.get_replica_context()
    replica = 0 if context is None else context.replica_id_in_sync_group
    seed = seed + tf.stack([tf.cast(replica, tf.int64), tf.constant(0, tf.int64)])
    return tf.random.stateless_normal(shape, seed=seed)
