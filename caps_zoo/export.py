"""Export a zoo model for serving: a TF Serving SavedModel and a LiteRT flatbuffer.

    version_dir = caps_zoo.export.export_saved_model(model, "exports")   # exports/capsnet/1
    classify = caps_zoo.export.load_saved_model_signature(version_dir)
    outputs = classify(images=images)

    caps_zoo.export.export_tflite(model, "capsnet.tflite")
    outputs = caps_zoo.export.tflite_predict("capsnet.tflite", images)

Every model names its serving functions in ``model.serving_endpoints()``:
``{name: (function, input_signature)}``, the first being the default.

- Capsule networks: ``classify``, float32 images ``(batch, height, width,
  channels)`` in [0, 1] (named ``images``) to ``{"scores", "poses",
  "reconstruction", "classes"}`` (``classes``: the int64 argmax of ``scores``;
  for pair models, ``digits_per_image=2``, the two longest classes ``(batch, 2)``).
- GRAN: ``generate``, prior noise ``(batch, latent_dim)`` (noise drawn once) or
  ``(batch, T, latent_dim)`` (at every step) to ``{"images"}``; and
  ``discriminate``, ``images`` to ``{"probability_real"}``.
- Recurrent writers (DRAW, DCRW): ``generate``, prior noise ``(batch, T,
  latent_dim)`` (named ``noise``) to ``{"images"}``; and ``reconstruct``,
  ``images`` and posterior ``noise`` to ``{"reconstruction",
  "canvas_logits", "latent_kl"}``. Noise is an input so that a served model
  is deterministic and testable; draw it from N(0, I).

The SavedModel holds every endpoint plus ``serving_default`` (the first);
the flatbuffer holds one (the first unless named). Batch sizes are dynamic.

Served inputs are checked in the graph, so that one malformed request gets
an error back (``InvalidArgumentError``; TF Serving answers INVALID_ARGUMENT)
instead of reaching a convolution that aborts the whole server: the shape
(rank and every dimension but the batch), finite values, and ``images``
within the model's ``IMAGE_VALUES`` ([0, 1]; {0, 1} for DRAW, DCRW, RCN). For that the SavedModel's signatures declare inputs of
any shape (``saved_model_cli show`` lists them as unknown rank): a declared
shape is taken on trust at run time, so the checks could not see a wrong
one. The shapes each input must have are listed above and stated in every
error. ``tflite_predict`` makes the same checks before the interpreter runs.
"""

import numbers
import os
import shutil
import tempfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from caps_zoo import checks


def default_signature(model):
    """The name of ``model``'s first serving endpoint (e.g. ``classify``)."""
    return next(iter(model.serving_endpoints()))


def _checked_input(spec, tensor, image_values):
    """``tensor`` after in-graph checks of ``spec``'s shape and of its values
    (``caps_zoo.checks``: ``images`` within ``image_values``, the rest finite)."""
    tensor = checks.assert_shape(
        tensor, spec.shape.as_list(), f"{spec.name} must have shape {checks.describe_shape(spec.shape.as_list())}")
    if spec.name == "images":
        return checks.assert_image_values(tensor, image_values, spec.name)
    return checks.assert_finite(tensor, spec.name)


def _served(function, input_signature, image_values):
    """The endpoint as a SavedModel serves it: inputs of any shape, checked."""

    def serve(*tensors):
        return function(*[_checked_input(spec, tensor, image_values)
                          for spec, tensor in zip(input_signature, tensors)])

    return serve, [tf.TensorSpec(None, spec.dtype, name=spec.name) for spec in input_signature]


def _write_saved_model(model, directory, names=None, checked=True):
    archive = keras.export.ExportArchive()
    archive.track(model)
    endpoints = model.serving_endpoints()
    for name in names or endpoints:
        if name not in endpoints:
            raise KeyError(f"{model.name} has no serving endpoint '{name}'; it has {sorted(endpoints)}.")
        function, input_signature = endpoints[name]
        if checked:
            function, input_signature = _served(function, input_signature, model.IMAGE_VALUES)
        archive.add_endpoint(name, function, input_signature=input_signature)
    # The first endpoint is also written as "serving_default" (TF Serving's
    # default signature), the same concrete function.
    archive.write_out(str(directory), verbose=False)


def export_saved_model(model, directory, version=1, overwrite=False):
    """Write ``model`` as ``<directory>/<model.name>/<version>/`` (TF Serving's layout).

    Signatures: the model's ``serving_endpoints`` and ``serving_default`` (the first).
    Raises ``FileExistsError`` if that version exists, unless ``overwrite``.
    Returns the version directory.
    """
    if isinstance(version, bool) or not isinstance(version, numbers.Integral) or version < 1:
        raise ValueError(f"version must be a positive int, got {version!r}.")
    model_dir = Path(directory) / model.name
    version_dir = model_dir / str(int(version))
    if version_dir.exists() and not overwrite:
        raise FileExistsError(
            f"'{version_dir}' already exists; pass overwrite=True to replace it, "
            "or export a new version."
        )
    model_dir.mkdir(parents=True, exist_ok=True)
    # Written beside the version, then renamed: TF Serving polls the model
    # directory and must never see a half-written numeric version (it ignores
    # names that are not numbers).
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{version_dir.name}-", dir=model_dir))
    try:
        _write_saved_model(model, staging)
        if version_dir.exists():
            shutil.rmtree(version_dir)
        os.replace(staging, version_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return version_dir


def load_saved_model_signature(version_dir, name="serving_default"):
    """The signature ``name`` of a SavedModel, called with named inputs
    (``fn(images=...)``); returns a dict of tensors."""
    loaded = tf.saved_model.load(str(version_dir))
    if name not in loaded.signatures:
        raise KeyError(
            f"No signature '{name}' in '{version_dir}'; it has {sorted(loaded.signatures)}."
        )
    return loaded.signatures[name]


def export_tflite(model, path, signature=None):
    """Write one serving endpoint (default: the first) as a float32 LiteRT flatbuffer.

    Builtin ops only. Inputs keep a dynamic batch: ``tflite_predict``
    resizes them to the batch given, so any batch >= 1 works. Returns ``path``.
    """
    signature = signature or default_signature(model)
    # Converted from the SavedModel that ExportArchive writes, not from a
    # concrete function: from_concrete_functions(..., model) does not freeze
    # a Keras 3 model's variables (the flatbuffer comes out without weights).
    with tempfile.TemporaryDirectory() as saved_model_dir:
        # Unchecked: LiteRT's builtin ops have no Assert, and its interpreter
        # holds static shapes (tflite_predict checks the inputs instead).
        _write_saved_model(model, saved_model_dir, names=[signature], checked=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(
            saved_model_dir, signature_keys=[signature]
        )
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        flatbuffer = converter.convert()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(flatbuffer)
    return path


def tflite_predict(path, images=None, signature=None, **inputs):
    """Run a flatbuffer from ``export_tflite``; numpy outputs by name.

    Inputs by name (``images=``, ``noise=``); ``signature`` defaults to the
    file's only one.
    """
    # Imported here: LiteRT is needed only to run flatbuffers, not to import caps_zoo.
    from ai_edge_litert.interpreter import Interpreter

    if images is not None:
        inputs["images"] = images
    interpreter = Interpreter(model_path=str(path))
    if signature is None:
        signature = next(iter(interpreter.get_signature_list()))
    runner = interpreter.get_signature_runner(signature)
    details = runner.get_input_details()
    if set(inputs) != set(details):
        raise TypeError(f"{signature} takes the inputs {sorted(details)}; got {sorted(inputs)}.")
    arrays = {}
    for name, value in inputs.items():
        expected = [None if size < 0 else int(size) for size in details[name]["shape_signature"]]
        array = np.asarray(value)
        if not np.issubdtype(array.dtype, np.floating):
            raise TypeError(f"{name} must be float32; got dtype {array.dtype}.")
        if array.ndim != len(expected) or any(
                size is not None and size != got for size, got in zip(expected, array.shape)):
            raise ValueError(f"{name} must have shape {checks.describe_shape(expected)}; got shape {array.shape}.")
        # The flatbuffer does not know its model: images are checked as
        # intensities in [0, 1] (binarize them for the Bernoulli models).
        if name == "images":
            checks.check_image_values(array, checks.UNIT, name)
        else:
            checks.check_finite(array, name)
        arrays[name] = array.astype(np.float32)
    # The signature runner resizes the dynamic batch dimension to the inputs'.
    return runner(**arrays)
