"""One registry for every model of the zoo (in the manner of timm).

    @register_model(paper="deep-capsule-network.txt", pretrained=("mnist",))
    def capsnet(**overrides): ...

    caps_zoo.list_models("caps*")
    caps_zoo.create_model("capsnet", routing_iterations=(1,))   # random init
    caps_zoo.load("deep_capsnet")                                # pretrained

    caps_zoo.load("path/to/preset")                              # caps_zoo.export.save_preset

Pretrained weights live in ``saved_models/<model>/<tag>.weights.npz`` beside
``<tag>.json`` (the recipe command, data, epochs, wall time and measured
metrics). The folder is the repository's top-level ``saved_models`` (an
editable install or a checkout) or the one ``CAPS_ZOO_SAVED_MODELS`` names;
outside a checkout they come from the Keras cache or a download origin
(``caps_zoo.pretrained_files``).
"""

import dataclasses
import difflib
import fnmatch
import json
import os
from pathlib import Path

from caps_zoo import pretrained_files
from caps_zoo.files import sha256_of
from caps_zoo import weights as weights_io
# Where the checkout's pretrained files are (kept here too: tests and recipes use it).
from caps_zoo.pretrained_files import saved_models_dir

# The pretrained tag load() takes when none is given.
DEFAULT_WEIGHTS = "mnist"


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: callable
    paper: str
    pretrained: tuple
    description: str


_REGISTRY = {}


def register_model(paper, pretrained=(), name=None):
    """Register a builder ``fn(**overrides) -> keras.Model`` under its name."""

    def decorator(builder):
        model_name = name or builder.__name__
        if model_name in _REGISTRY:
            raise ValueError(f"Model '{model_name}' is registered twice.")
        description = next(iter((builder.__doc__ or "").strip().splitlines()), "")
        _REGISTRY[model_name] = ModelSpec(
            model_name, builder, paper, tuple(pretrained), description
        )
        return builder

    return decorator


def list_models(pattern=None, pretrained=False):
    """Sorted model names, optionally filtered by a glob ``pattern``."""
    names = sorted(_REGISTRY)
    if pattern:
        names = [n for n in names if fnmatch.fnmatch(n, pattern)]
    if pretrained:
        names = [n for n in names if _REGISTRY[n].pretrained]
    return names


def get_spec(name):
    if name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), _REGISTRY, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise KeyError(
            f"Unknown model '{name}'.{hint} Available: {', '.join(list_models())}."
        )
    return _REGISTRY[name]


@dataclasses.dataclass(frozen=True)
class BuildRecord:
    """What ``create_model`` built a model from: its registry name and the
    overrides it was given, so that ``caps_zoo.export.save_preset`` can
    write how to build it again (a renamed model, or one whose builder takes
    other arguments than its class, cannot be told from its config)."""

    name: str
    overrides: dict


def create_model(name, /, **overrides):
    """A freshly initialised, built model (``overrides`` may include ``name``)."""
    model = get_spec(name).builder(**overrides)
    model.build_record = BuildRecord(name, dict(overrides))
    return model


def _check_tag(spec, tag):
    if tag not in spec.pretrained:
        available = ", ".join(repr(t) for t in spec.pretrained) or "none"
        raise ValueError(
            f"Model '{spec.name}' has no pretrained weights '{tag}' (available: {available}). "
            "Pass weights=None for a random init or a path to a weights file."
        )


def pretrained_paths(name, tag):
    """``(weights_path, metadata_path)`` of a pretrained model in the
    checkout's ``saved_models/`` (where shipping writes; they may not exist
    outside a checkout: ``load`` also looks in the cache and downloads)."""
    _check_tag(get_spec(name), tag)
    folder = saved_models_dir() / name
    return (folder / f"{tag}{weights_io.NPZ_SUFFIX}",
            folder / f"{tag}{pretrained_files.METADATA_SUFFIX}")


def load_metadata(name, tag=DEFAULT_WEIGHTS):
    """The metadata dict shipped beside the pretrained weights (from
    ``saved_models/``, the Keras cache or the download origin)."""
    _check_tag(get_spec(name), tag)
    metadata_path = pretrained_files.locate(name, f"{tag}{pretrained_files.METADATA_SUFFIX}")
    with open(metadata_path) as handle:
        return json.load(handle)


def _names_a_folder(name):
    """Whether ``load``'s first argument is a preset folder rather than a
    registry name: a path object, or a string that is no registry name and
    has a separator or names an existing folder (a folder called like a
    model, e.g. ./capsnet, needs the separator)."""
    if isinstance(name, os.PathLike):
        return True
    return isinstance(name, str) and name not in _REGISTRY and (
        os.sep in name or "/" in name or os.path.isdir(name))


def load(name, /, weights=DEFAULT_WEIGHTS, **overrides):
    """Build ``name`` and load ``weights``: a pretrained tag, a path, or None.

    With a pretrained tag, the ``model_overrides`` recorded in its metadata
    (the configuration it was trained with) are applied first; explicit
    ``overrides`` win. Its files come from ``saved_models/``, the Keras cache
    or the download origin (``caps_zoo.pretrained_files``).

    ``name`` may also be a preset folder (``caps_zoo.export.save_preset``):
    the model it records, with its own weights (``weights`` left at its
    default), or with a random init (``weights=None``).
    """
    if _names_a_folder(name):
        from caps_zoo import export  # here: export imports this module

        if weights is not None and weights != DEFAULT_WEIGHTS:
            raise ValueError(
                f"'{name}' is a preset folder, which holds its own weights ({export.PRESET_WEIGHTS}); "
                f"weights={weights!r} conflicts with them. Leave weights out, pass weights=None for "
                "its architecture with a random init, or load another file into it with "
                "caps_zoo.weights.load_weights(model, path)."
            )
        return export.load_preset(name, with_weights=weights is not None, **overrides)
    spec = get_spec(name)
    if weights is None:
        path = None
    elif isinstance(weights, str) and weights in spec.pretrained:
        path, metadata_path = pretrained_files.locate_pretrained(name, weights)
        metadata = json.loads(metadata_path.read_text()) if metadata_path.is_file() else {}
        # The configuration the weights were trained with; explicit overrides win.
        overrides = {**metadata.get("model_overrides", {}), **overrides}
        if not metadata_path.is_file():
            raise weights_io.WeightsError(
                f"'{path}' has no metadata '{metadata_path}' (the configuration it was trained with "
                "and its SHA-256): a first shipping was interrupted, or the file was copied alone. "
                "Ship it again (recipes/ship_weights.py), or load the file by its path "
                "(weights='<path>')."
            )
        expected = metadata.get("weights_sha256")
        if expected and sha256_of(path) != expected:
            raise weights_io.WeightsError(
                f"'{path}' is not the file its metadata '{metadata_path}' describes (SHA-256 "
                "differs): the weights were replaced without their metadata, or shipping was "
                "interrupted. Ship them again (recipes/ship_weights.py --replace)."
            )
    elif isinstance(weights, (str, os.PathLike)) and (
        os.path.exists(weights)
        or os.sep in str(weights)
        or str(weights).endswith((".npz", ".h5", ".keras"))
    ):
        path = Path(weights)  # a missing file is reported by load_weights
    elif isinstance(weights, str):
        _check_tag(spec, weights)  # raises, naming the available tags
    else:
        raise TypeError(f"weights must be a pretrained tag, a path or None; got {weights!r}.")
    model = create_model(name, **overrides)
    if path is not None:
        weights_io.load_weights(model, path)
    return model


def save_pretrained(model, name, tag, dtype="float16"):
    """Write ``saved_models/<name>/<tag>.weights.npz`` (float16 by default)."""
    weights_path, _ = pretrained_paths(name, tag)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    return weights_io.save_weights(model, weights_path, dtype=dtype)


def write_metadata(name, tag, metadata):
    """Write ``saved_models/<name>/<tag>.json`` beside the weights."""
    _, metadata_path = pretrained_paths(name, tag)
    metadata_path.write_text(json.dumps({"model": name, **metadata}, indent=2) + "\n")
    return metadata_path
