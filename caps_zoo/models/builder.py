"""The one way the registered builders make a model."""

import keras


def build_compiled(model_class, name, defaults, overrides):
    """``model_class(**defaults, **overrides)``, built and compiled.

    ``overrides`` may rename the model (``name=``). Compiled with Adam, like
    keras-hub's task models: ``evaluate()`` and ``fit()`` work at once;
    compile again to change the optimizer.
    """
    overrides = dict(overrides)
    model = model_class(name=overrides.pop("name", name), **{**defaults, **overrides})
    model.build()
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    return model
