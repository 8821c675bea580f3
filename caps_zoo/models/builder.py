"""What the zoo's models share: how registered builders make them, and
per-replica noise."""

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
