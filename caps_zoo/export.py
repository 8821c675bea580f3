"""Export a zoo model for serving: a TF Serving SavedModel and a LiteRT flatbuffer.

    version_dir = caps_zoo.export.export_saved_model(model, "exports")   # exports/capsnet/1
    classify = caps_zoo.export.load_saved_model_signature(version_dir)
    outputs = classify(images=images)

    caps_zoo.export.export_tflite(model, "capsnet.tflite")
    outputs = caps_zoo.export.tflite_predict("capsnet.tflite", images)

Both artifacts hold one function, ``classify``: float32 images
``(batch, height, width, channels)`` in [0, 1] (named ``images``) to
``{"scores", "poses", "reconstruction", "classes"}``, the model's own outputs
plus ``classes``, the int64 argmax of ``scores``. The batch size is dynamic in
both (any batch >= 1).
"""

import numbers
import os
import shutil
import tempfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

SIGNATURE = "classify"


def _classify_fn(model):
    """The serving function: ``model(images)`` plus the predicted classes."""

    def classify(images):
        outputs = dict(model(images, training=False))
        outputs["classes"] = tf.argmax(outputs["scores"], axis=-1, output_type=tf.int64)
        return outputs

    return classify


def _write_saved_model(model, directory):
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        SIGNATURE,
        _classify_fn(model),
        input_signature=[
            tf.TensorSpec([None, *model.image_shape], tf.float32, name="images")
        ],
    )
    # The first endpoint is also written as "serving_default" (TF Serving's
    # default signature), the same concrete function.
    archive.write_out(str(directory), verbose=False)


def export_saved_model(model, directory, version=1, overwrite=False):
    """Write ``model`` as ``<directory>/<model.name>/<version>/`` (TF Serving's layout).

    Signatures ``classify`` and ``serving_default`` (the same function).
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


def load_saved_model_signature(version_dir, name=SIGNATURE):
    """The signature ``name`` of a SavedModel, called as ``fn(images=...)``.

    Returns a dict of tensors.
    """
    loaded = tf.saved_model.load(str(version_dir))
    if name not in loaded.signatures:
        raise KeyError(
            f"No signature '{name}' in '{version_dir}'; it has {sorted(loaded.signatures)}."
        )
    return loaded.signatures[name]


def export_tflite(model, path):
    """Write ``model``'s ``classify`` function as a float32 LiteRT flatbuffer.

    Builtin ops only. The input keeps a dynamic batch (shape signature
    ``[-1, height, width, channels]``): ``tflite_predict`` resizes it to the
    batch given, so any batch >= 1 works. Returns ``path``.
    """
    # Converted from the SavedModel that ExportArchive writes, not from a
    # concrete function: from_concrete_functions(..., model) does not freeze
    # a Keras 3 model's variables (the flatbuffer comes out without weights).
    with tempfile.TemporaryDirectory() as saved_model_dir:
        _write_saved_model(model, saved_model_dir)
        converter = tf.lite.TFLiteConverter.from_saved_model(
            saved_model_dir, signature_keys=[SIGNATURE]
        )
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        flatbuffer = converter.convert()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(flatbuffer)
    return path


def tflite_predict(path, images, signature=SIGNATURE):
    """Run a flatbuffer from ``export_tflite`` on ``images``; numpy outputs by name."""
    # Imported here: LiteRT is needed only to run flatbuffers, not to import caps_zoo.
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path)).get_signature_runner(signature)
    # The signature runner resizes the dynamic batch dimension to the input's.
    return runner(images=np.asarray(images, dtype=np.float32))
