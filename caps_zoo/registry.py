"""One registry for every model of the zoo (in the manner of timm).

    @register_model(paper="deep-capsule-network.txt", pretrained=("mnist",))
    def capsnet(**overrides): ...

    caps_zoo.list_models("caps*")
    caps_zoo.create_model("capsnet", routing_iterations=(1,))   # random init
    caps_zoo.load("deep_capsnet")                                # pretrained

Pretrained weights live in ``saved_models/<model>/<tag>.weights.npz`` beside
``<tag>.json`` (the recipe command, data, epochs, wall time and measured
metrics). The folder is the repository's top-level ``saved_models`` (an
editable install or a checkout) or the one ``CAPS_ZOO_SAVED_MODELS`` names.
"""

import dataclasses
import difflib
import fnmatch
import hashlib
import json
import os
from pathlib import Path

from caps_zoo import weights as weights_io


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


def create_model(name, /, **overrides):
    """A freshly initialised, built model (``overrides`` may include ``name``)."""
    return get_spec(name).builder(**overrides)


def saved_models_dir():
    env = os.environ.get("CAPS_ZOO_SAVED_MODELS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "saved_models"


def pretrained_paths(name, tag):
    """``(weights_path, metadata_path)`` of a shipped pretrained model."""
    spec = get_spec(name)
    if tag not in spec.pretrained:
        available = ", ".join(repr(t) for t in spec.pretrained) or "none"
        raise ValueError(
            f"Model '{name}' has no pretrained weights '{tag}' (available: {available}). "
            "Pass weights=None for a random init or a path to a weights file."
        )
    folder = saved_models_dir() / name
    return folder / f"{tag}{weights_io.NPZ_SUFFIX}", folder / f"{tag}.json"


def load_metadata(name, tag="mnist"):
    """The metadata dict shipped beside the pretrained weights."""
    _, metadata_path = pretrained_paths(name, tag)
    with open(metadata_path) as handle:
        return json.load(handle)


def load(name, /, weights="mnist", **overrides):
    """Build ``name`` and load ``weights``: a pretrained tag, a path, or None.

    With a pretrained tag, the ``model_overrides`` recorded in its metadata
    (the configuration it was trained with) are applied first; explicit
    ``overrides`` win.
    """
    spec = get_spec(name)
    if weights is None:
        path = None
    elif isinstance(weights, str) and weights in spec.pretrained:
        path, metadata_path = pretrained_paths(name, weights)
        metadata = json.loads(metadata_path.read_text()) if metadata_path.is_file() else {}
        # The configuration the weights were trained with; explicit overrides win.
        overrides = {**metadata.get("model_overrides", {}), **overrides}
        if not path.is_file():
            raise FileNotFoundError(
                f"Pretrained weights for '{name}' ('{weights}') are not at '{path}'. "
                "They ship in the repository's saved_models/ folder: install caps_zoo "
                "from a checkout (pip install -e .) or set CAPS_ZOO_SAVED_MODELS to "
                "a copy of that folder."
            )
        if not metadata_path.is_file():
            raise weights_io.WeightsError(
                f"'{path}' has no metadata '{metadata_path}' (the configuration it was trained with "
                "and its SHA-256): a first shipping was interrupted, or the file was copied alone. "
                "Ship it again (recipes/ship_weights.py), or load the file by its path "
                "(weights='<path>')."
            )
        expected = metadata.get("weights_sha256")
        if expected and hashlib.sha256(path.read_bytes()).hexdigest() != expected:
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
        pretrained_paths(name, weights)  # raises, naming the available tags
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
