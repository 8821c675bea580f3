"""The one way the registered builders make a model."""

import keras


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
