"""Export a zoo model: a TF Serving SavedModel, a LiteRT flatbuffer, a preset folder.

    version_dir = caps_zoo.export.export_saved_model(model, "exports")   # exports/capsnet/1
    classify = caps_zoo.export.load_saved_model_signature(version_dir)
    outputs = classify(images=images)

    caps_zoo.export.export_tflite(model, "capsnet.tflite")
    outputs = caps_zoo.export.tflite_predict("capsnet.tflite", images)

    caps_zoo.export.save_preset(model, "presets/my_capsnet")   # config.json, model.weights.npz, metadata.json
    model = caps_zoo.load("presets/my_capsnet")                # anywhere caps_zoo is installed

A preset (in the manner of keras-hub's preset folders) is what the zoo
needs to build the model again and load its weights: no serving graph, no
TensorFlow version tied to it. ``config.json`` holds the registry name and
the overrides the model was built with, ``model.weights.npz`` the weights
(their SHA-256 in ``config.json``), ``metadata.json`` what the caller adds.

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

import json
import numbers
import os
import shutil
import tempfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import caps_zoo
from caps_zoo import checks, pretrained_files, registry
from caps_zoo import _quiet_start
from caps_zoo.files import sha256_of
from caps_zoo import weights as weights_io
from caps_zoo.models.base import ZooModel


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
        _replace_folder(staging, version_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return version_dir


def _replace_folder(staging, target):
    """Put the finished folder ``staging`` at ``target``. An old ``target``
    is renamed aside first and deleted only once the new one is in place, so
    that a kill at any moment leaves the old folder or the new one (the old
    one possibly under a hidden ``.old-`` name beside it), never neither."""
    old = None
    if target.exists():
        old = target.with_name(f".old-{target.name}-{os.getpid()}")
        os.replace(target, old)
    os.replace(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


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
    with _quiet_start.filtered_stderr():  # LiteRT's "Created ... XNNPACK delegate" notice
        return _tflite_predict(path, images, signature, **inputs)


def _tflite_predict(path, images, signature, **inputs):
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


# -- presets -----------------------------------------------------------------------

PRESET_CONFIG = "config.json"
PRESET_WEIGHTS = "model.weights.npz"
PRESET_METADATA = "metadata.json"
PRESET_FORMAT = "caps_zoo.preset"
PRESET_FORMAT_VERSION = 1
# What load_preset reads from config.json (beside the format).
PRESET_CONFIG_KEYS = ("model", "overrides", "config", "weights", "weights_sha256")
# What save_preset adds to metadata.json, under this one key.
PRESET_METADATA_KEY = "preset"
# Config entries that say how a model runs, not what it is: a preset saved
# under one dtype policy loads under another (load() under mixed_bfloat16).
RUNTIME_CONFIG_KEYS = ("dtype", "trainable")


def _json_form(value, what):
    """``value`` as JSON reads it back (tuples as lists), or a clear error."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as error:
        raise TypeError(f"{what} must be JSON-serializable to be written in a preset: {error}.") from error


def _architecture(config):
    return {key: value for key, value in config.items() if key not in RUNTIME_CONFIG_KEYS}


def _prepare_folder(path, overwrite):
    """Refuse to replace what is not ours to replace: an existing preset
    without ``overwrite``, and any other non-empty folder or file at all."""
    if not path.exists():
        return
    if not path.is_dir():
        raise FileExistsError(f"'{path}' is a file; a preset is a folder. Choose another path.")
    if not any(path.iterdir()):
        return
    if not (path / PRESET_CONFIG).is_file():
        raise FileExistsError(
            f"'{path}' is a folder that holds files but no {PRESET_CONFIG}: not a preset, so it is not "
            "replaced (even with overwrite=True). Choose an empty or new folder."
        )
    if not overwrite:
        raise FileExistsError(f"'{path}' already holds a preset; pass overwrite=True to replace it.")


def save_preset(model, path, metadata=None, dtype="float32", overwrite=False):
    """Write ``model`` as a preset folder ``path``, which ``caps_zoo.load(path)`` rebuilds.

    - ``config.json``: the registry name and the overrides the model was
      built with (``caps_zoo.create_model(name, **overrides)`` builds it
      again), its ``get_config()`` (compared with the rebuilt model's on
      load), and the weights file's name, dtype and SHA-256;
    - ``model.weights.npz``: its variables (``caps_zoo.weights.save_weights``,
      float32 by default; ``dtype="float16"`` halves the file);
    - ``metadata.json``: ``metadata`` (any JSON dict: where the weights come
      from, how they were measured) and, under ``"preset"``, what wrote it.

    ``model`` must come from ``caps_zoo.create_model`` or ``caps_zoo.load``,
    which record its registry name and overrides. The files are written to
    a staging folder beside ``path`` and renamed into place, so a failed save
    leaves no half preset. An existing preset is replaced only with
    ``overwrite``. Returns ``path``.
    """
    if not isinstance(model, ZooModel):
        raise TypeError(f"save_preset takes a caps_zoo model; got {type(model).__name__}.")
    record = model.build_record
    if record is None:
        raise ValueError(
            f"{model.name} was not built by caps_zoo.create_model or caps_zoo.load, so its registry name "
            "and overrides are unknown (a model made from its class or read from a .keras file). Build it "
            "with caps_zoo.create_model(name, **overrides), copy the weights over "
            "(model.set_weights(other.get_weights())) and save that."
        )
    metadata = dict(metadata or {})
    if PRESET_METADATA_KEY in metadata:
        raise ValueError(f"metadata['{PRESET_METADATA_KEY}'] is written by save_preset; use another key.")
    config = {
        "format": PRESET_FORMAT,
        "format_version": PRESET_FORMAT_VERSION,
        "model": record.name,
        "overrides": _json_form(record.overrides, f"The overrides {model.name} was built with"),
        "config": _json_form(model.get_config(), f"{model.name}.get_config()"),
        "weights": PRESET_WEIGHTS,
        "weights_dtype": dtype,
    }
    metadata = {
        **_json_form(metadata, "metadata"),
        PRESET_METADATA_KEY: {
            "model": record.name,
            "parameters": int(model.count_params()),
            "versions": {"caps_zoo": caps_zoo.__version__, "keras": keras.__version__,
                         "tensorflow": tf.__version__},
        },
    }
    path = Path(path)
    _prepare_folder(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{path.name}-", dir=path.parent))
    try:
        weights_io.save_weights(model, staging / PRESET_WEIGHTS, dtype=dtype)
        config["weights_sha256"] = sha256_of(staging / PRESET_WEIGHTS)
        (staging / PRESET_METADATA).write_text(json.dumps(metadata, indent=2) + "\n")
        (staging / PRESET_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        _replace_folder(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def read_preset_config(folder):
    """The checked ``config.json`` of the preset folder ``folder``."""
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"No preset folder at '{folder}'.")
    if not folder.is_dir():
        raise NotADirectoryError(
            f"'{folder}' is a file, not a preset folder: caps_zoo.load takes a registry name or a preset "
            "folder; a weights file loads with caps_zoo.load('<model>', weights=path)."
        )
    config_path = folder / PRESET_CONFIG
    if not config_path.is_file():
        held = sorted(entry.name for entry in folder.iterdir())
        raise FileNotFoundError(
            f"'{folder}' is not a preset: it has no {PRESET_CONFIG} (it holds "
            f"{', '.join(held) if held else 'nothing'}). caps_zoo.export.save_preset(model, folder) "
            f"writes one: {PRESET_CONFIG}, {PRESET_WEIGHTS} and {PRESET_METADATA}."
        )
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"'{config_path}' is not valid JSON ({error}).") from error
    if not isinstance(config, dict) or config.get("format") != PRESET_FORMAT:
        found = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise ValueError(
            f"'{config_path}' is not a caps_zoo preset's config (its format is {found!r}, expected "
            f"{PRESET_FORMAT!r}): a folder written by another tool (keras-hub writes a config.json too)."
        )
    if config.get("format_version") != PRESET_FORMAT_VERSION:
        raise ValueError(
            f"'{config_path}' is a preset of format version {config.get('format_version')!r}; this caps_zoo "
            f"reads version {PRESET_FORMAT_VERSION}. Load it with the caps_zoo that wrote it "
            f"({PRESET_METADATA} says which, under '{PRESET_METADATA_KEY}')."
        )
    missing = [key for key in PRESET_CONFIG_KEYS if key not in config]
    if missing:
        raise ValueError(f"'{config_path}' lacks {', '.join(missing)}: written by hand, or cut short? "
                         "Save the preset again (caps_zoo.export.save_preset).")
    try:
        registry.get_spec(config["model"])
    except KeyError as error:
        raise KeyError(f"'{config_path}' names a model this caps_zoo does not have: {error.args[0]}") from error
    return config


def load_preset(folder, /, with_weights=True, **overrides):
    """The model the preset folder ``folder`` records (``save_preset``), with
    its weights (or a random init: ``with_weights=False``).

    ``overrides`` go on top of the recorded ones, as in ``caps_zoo.load``:
    ones that change no variable (``name``, routing iterations) are fine; one
    that changes the architecture makes the weights not fit, and is reported
    as such. Without overrides the rebuilt model's config must equal the
    recorded one: a caps_zoo whose defaults changed would otherwise build
    another model, and a change that holds no variable (routing
    iterations) would pass the weights' checks unseen.
    """
    folder = Path(folder)
    config = read_preset_config(folder)
    recorded = config["overrides"]
    model = registry.create_model(config["model"], **{**recorded, **overrides})
    if not overrides:
        rebuilt = _architecture(_json_form(model.get_config(), f"{model.name}.get_config()"))
        saved = _architecture(config["config"])
        differing = sorted(key for key in saved.keys() | rebuilt.keys() if saved.get(key) != rebuilt.get(key))
        if differing:
            details = "; ".join(f"{key}: saved {saved.get(key)!r}, rebuilt {rebuilt.get(key)!r}"
                                for key in differing)
            raise ValueError(
                f"'{folder / PRESET_CONFIG}' records a '{config['model']}' that this caps_zoo builds "
                f"differently from the same overrides ({details}): its defaults changed since the preset "
                f"was saved ({PRESET_METADATA} names that version). Pass the saved values as overrides "
                "to build the recorded model."
            )
    if not with_weights:
        return model
    # A bare file name inside the folder: a preset from elsewhere (the Hub,
    # Kaggle) must not make load() read a file outside it ('../', '/').
    if not isinstance(config["weights"], str) or Path(config["weights"]).name != config["weights"]:
        raise ValueError(f"'{folder / PRESET_CONFIG}' names its weights {config['weights']!r}: expected the "
                         f"name of a file inside the preset folder, such as '{PRESET_WEIGHTS}'.")
    weights_path = folder / config["weights"]
    if not weights_path.is_file():
        raise FileNotFoundError(f"Preset '{folder}' has no weights file '{config['weights']}'.")
    if sha256_of(weights_path) != config["weights_sha256"]:
        raise weights_io.WeightsError(
            f"'{weights_path}' is not the weights file '{folder / PRESET_CONFIG}' records (SHA-256 differs): "
            "a copy or download cut short, or the file was replaced. Copy the preset folder again."
        )
    try:
        weights_io.load_weights(model, weights_path)
    except weights_io.WeightsError as error:
        if not overrides:
            raise
        raise weights_io.WeightsError(
            f"The overrides {overrides} conflict with preset '{folder}': they build a "
            f"'{config['model']}' its weights do not fit (it was saved with the overrides {recorded}). "
            f"Keep to overrides that change no variable, or pass weights=None for a random init. {error}"
        ) from error
    return model
