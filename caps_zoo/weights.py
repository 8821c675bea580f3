"""Weights files: a compact npz (optionally float16) plus Keras' own formats.

The npz stores a model's variables in ``model.weights`` order with their
paths, so a mismatch (another architecture, a truncated file) is reported by
name and shape instead of a bare Keras error.
"""

import os
import zipfile

import numpy as np


class WeightsError(ValueError):
    """A weights file is unreadable or does not fit the model."""


NPZ_SUFFIX = ".weights.npz"
# 2: paths stored without the model's name, and checked on load; files
# without __format__ (1) are checked by shape only.
FORMAT_VERSION = 2


def _relative_path(path):
    """A variable's path without the model's name ("capsnet/conv1/kernel" ->
    "conv1/kernel"), so that renamed models still match."""
    return path.split("/", 1)[-1]


def save_weights(model, path, dtype="float32"):
    """Write ``model``'s variables to ``path`` (``.weights.npz``).

    ``dtype="float16"`` halves the file; floating variables are cast back to
    their own dtype on load.
    """
    path = os.fspath(path)
    if not path.endswith(NPZ_SUFFIX):
        raise ValueError(f"weights path must end with '{NPZ_SUFFIX}', got '{path}'.")
    arrays = {}
    for index, variable in enumerate(model.weights):
        value = np.asarray(variable.numpy())
        if np.issubdtype(value.dtype, np.floating):
            if np.abs(value).max(initial=0) > np.finfo(dtype).max:
                raise ValueError(f"{variable.path} overflows {dtype}; save in float32.")
            value = value.astype(dtype)
        arrays[f"{index:04d}"] = value
    paths = np.array([_relative_path(variable.path) for variable in model.weights])
    tmp_path = path[: -len(NPZ_SUFFIX)] + ".tmp.npz"
    np.savez_compressed(tmp_path, __paths__=paths, __format__=np.array(FORMAT_VERSION), **arrays)
    os.replace(tmp_path, path)  # never leave a half-written file at `path`
    return path


def _current_path_function(model):
    """How the zoo's model maps paths of files from its earlier versions
    (``ZooModel.current_weight_path``); identity for other Keras models."""
    from caps_zoo.models.base import ZooModel  # here: models import this module

    if isinstance(model, ZooModel):
        return model.current_weight_path
    return lambda path: path


def load_weights(model, path):
    """Load ``.weights.npz`` (ours) or ``.weights.h5`` / ``.keras`` (Keras).

    An npz that does not fit raises ``WeightsError`` before any variable is
    assigned, so the model is left as it was (Keras' formats give no such
    guarantee).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No weights file at '{path}'.")
    if not path.endswith(NPZ_SUFFIX):
        try:
            model.load_weights(path)
        except Exception as error:  # Keras raises several types here
            raise WeightsError(
                f"Could not load Keras weights '{path}' into {model.name}: {error}"
            ) from error
        return model
    try:
        with np.load(path, allow_pickle=False) as archive:
            stored = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise WeightsError(
            f"Weights file '{path}' is corrupt or not an npz archive ({error}). "
            "Re-download or re-export it."
        ) from error
    stored_paths = list(stored.pop("__paths__", []))
    check_paths = int(stored.pop("__format__", 1)) >= 2
    current_path = _current_path_function(model)
    if len(stored) != len(model.weights):
        raise WeightsError(
            f"Weights file '{path}' holds {len(stored)} variables, {model.name} has "
            f"{len(model.weights)}: it was saved from a different architecture."
        )
    values = []
    for index, variable in enumerate(model.weights):
        value = stored[f"{index:04d}"]
        name = str(stored_paths[index]) if index < len(stored_paths) else f"#{index}"
        if check_paths and current_path(name) != _relative_path(variable.path):
            raise WeightsError(
                f"Weights file '{path}': variable #{index} is {name}, {model.name} expects "
                f"{_relative_path(variable.path)}: it was saved from a different architecture."
            )
        if tuple(value.shape) != tuple(variable.shape):
            raise WeightsError(
                f"Weights file '{path}': variable {name} has shape {value.shape}, "
                f"{model.name}'s {variable.path} needs {tuple(variable.shape)}: "
                "it was saved from a different architecture or configuration."
            )
        values.append(value.astype(variable.dtype))
    # Assign only once everything checked out: a failed load leaves the
    # model as it was.
    for variable, value in zip(model.weights, values):
        variable.assign(value)
    return model
