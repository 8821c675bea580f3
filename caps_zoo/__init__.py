"""caps_zoo: capsule networks and recurrent canvas generators for Keras 3."""

__version__ = "0.1.0"

import importlib.util  # noqa: E402
import os  # noqa: E402

# TensorFlow's C++ start-up chatter (INFO/WARNING) hides the zoo's own
# output; a value the user set is kept.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Nothing is imported here: ``import caps_zoo`` (and so every caps_zoo
# module's import) costs no TensorFlow, and a recipe's --help answers at once
# (issue 15). The names below are imported on first use (PEP 562). TF 2.21
# ignores TF_CPP_MIN_LOG_LEVEL for its start-up lines: every module that
# imports TensorFlow first imports caps_zoo._quiet_tensorflow, which hides them.
_SUBMODULES = ("data", "export", "layers", "losses", "metrics", "models")
_REGISTRY_FUNCTIONS = ("create_model", "list_models", "load", "load_metadata")

__all__ = [
    "create_model",
    "data",
    "export",
    "layers",
    "list_models",
    "load",
    "load_metadata",
    "losses",
    "metrics",
    "models",
]


def __getattr__(name):
    if name in _REGISTRY_FUNCTIONS:
        # The registry fills itself (imports caps_zoo.models) before a lookup.
        value = getattr(importlib.import_module("caps_zoo.registry"), name)
    elif name in _SUBMODULES or (not name.startswith("_")
                                 and importlib.util.find_spec(f"caps_zoo.{name}") is not None):
        # Any submodule (caps_zoo.training, caps_zoo.weights, ...), as when
        # this module imported them all.
        value = importlib.import_module(f"caps_zoo.{name}")
    else:
        raise AttributeError(f"module 'caps_zoo' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted({*globals(), *__all__})
