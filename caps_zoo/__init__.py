"""caps_zoo: capsule networks and recurrent canvas generators for Keras 3."""

__version__ = "0.1.0"

import os  # noqa: E402

# TensorFlow's C++ start-up chatter (INFO/WARNING) hides the zoo's own
# output; a value the user set is kept.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# TF 2.21 ignores that variable for its start-up lines; see _quiet_start.
from caps_zoo._quiet_start import import_tensorflow  # noqa: E402

import_tensorflow()

from caps_zoo import data, layers, losses, models  # noqa: E402  (models fill the registry)
from caps_zoo import export, metrics  # noqa: E402
from caps_zoo.registry import create_model, list_models, load, load_metadata  # noqa: E402

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
