"""Where pretrained files come from: a checkout, the Keras cache, a download.

Every shipped file (``saved_models/<model>/<tag>.weights.npz``, its metadata
``<tag>.json``, and the training log and figures beside them) is listed in
``caps_zoo/pretrained_manifest.json`` with its size and SHA-256. The manifest
is written from ``saved_models/`` by ``write_manifest()`` and kept true by
``tests/test_pretrained_origin.py``; it ships inside the package, the files
do not (a wheel holds no ``saved_models/``). A file is looked for in this
order:

1. ``saved_models/<model>/<file>``: the checkout's top-level folder, or the
   folder ``CAPS_ZOO_SAVED_MODELS`` names. Taken as it is (shipping writes
   there, before the manifest is rewritten); the registry still checks the
   weights against the SHA-256 their metadata states.
2. The Keras cache, ``$KERAS_HOME/caps_zoo/<model>/<file>`` (``~/.keras``
   without KERAS_HOME), what ``keras.utils.get_file(...,
   cache_subdir="caps_zoo/<model>")`` writes; used only if its SHA-256 is
   the manifest's (a file that differs is replaced by a download).
3. The download origin, ``$CAPS_ZOO_WEIGHTS_URL/<model>/<file>`` (the layout
   of ``saved_models/``), fetched by ``keras.utils.get_file`` into that cache
   and checked against the manifest's SHA-256. The project publishes no
   origin yet, so none is built in: without the variable this step is
   skipped, and the error says how to set it.
"""

import json
import os
import secrets
from pathlib import Path

import keras

from caps_zoo import weights as weights_io
from caps_zoo.files import sha256_of, write_json_atomically

SAVED_MODELS_ENV = "CAPS_ZOO_SAVED_MODELS"
ORIGIN_ENV = "CAPS_ZOO_WEIGHTS_URL"
KERAS_HOME_ENV = "KERAS_HOME"
CACHE_SUBDIR = "caps_zoo"
MANIFEST_PATH = Path(__file__).resolve().parent / "pretrained_manifest.json"
MANIFEST_FORMAT = 1
METADATA_SUFFIX = ".json"
# How a file of a tag is named: "<tag><suffix>"; what its role is.
ROLES = {weights_io.NPZ_SUFFIX: "weights", METADATA_SUFFIX: "metadata", ".log.csv": "log", ".png": "figure",
         ".gif": "figure"}
README_SECTION = 'README "Pretrained weights outside a checkout"'
WRITE_MANIFEST = 'python -c "from caps_zoo import pretrained_files; pretrained_files.write_manifest()"'


def saved_models_dir():
    """The checkout's ``saved_models/`` (beside the package), or ``$CAPS_ZOO_SAVED_MODELS``."""
    env = os.environ.get(SAVED_MODELS_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "saved_models"


def keras_cache_dir():
    """Keras' cache folder: ``$KERAS_HOME``, else ``~/.keras`` (``/tmp/.keras``
    where the home folder is not writable, as Keras does).

    Read at every call: Keras reads KERAS_HOME once, at import, so a process
    that sets it later (a notebook, a test) would otherwise download to one
    place and be told of another."""
    home = os.environ.get(KERAS_HOME_ENV)
    if home:
        return Path(home)
    base = Path.home()
    if not os.access(base, os.W_OK):
        base = Path("/tmp")
    return base / ".keras"


def cache_path(model, file_name):
    """Where the Keras cache holds ``file_name`` of ``model``."""
    return keras_cache_dir() / CACHE_SUBDIR / model / file_name


def origin_url(model, file_name):
    """The URL ``file_name`` of ``model`` is downloaded from, or None when
    ``CAPS_ZOO_WEIGHTS_URL`` is not set.

    ``<base>/<model>/<file>`` (the layout of ``saved_models/``); a base that
    holds ``{model}`` and ``{file}`` is filled in instead, for hosts without
    folders, such as a release's flat list of assets (``<base>/{model}.{file}``)."""
    base = os.environ.get(ORIGIN_ENV)
    if not base:
        return None
    if "{file}" in base:
        return base.format(model=model, file=file_name)
    return f"{base.rstrip('/')}/{model}/{file_name}"


def role_of(file_name, tag):
    """``weights``, ``metadata``, ``log``, ``figure`` or ``other``, from the
    part of ``file_name`` after ``<tag>``."""
    suffix = file_name[len(tag):]
    for ending, role in ROLES.items():
        if suffix == ending or (role == "figure" and suffix.endswith(ending)):
            return role
    return "other"


# -- the manifest ---------------------------------------------------------------

def build_manifest(folder=None):
    """The manifest of ``folder`` (default: ``saved_models_dir()``): every
    file of every registered pretrained tag, with its size and SHA-256.

    Raises ``FileNotFoundError`` if a registered tag lacks its weights or
    metadata: the manifest lists what ships, and a tag ships both."""
    from caps_zoo import registry  # here: the registry imports this module

    folder = Path(folder or saved_models_dir())
    files = []
    for model in registry.list_models(pretrained=True):
        for tag in registry.get_spec(model).pretrained:
            model_dir = folder / model
            names = sorted(path.name for path in model_dir.glob(f"{tag}.*") if path.is_file())
            missing = [name for name in (tag + weights_io.NPZ_SUFFIX, tag + METADATA_SUFFIX)
                       if name not in names]
            if missing:
                raise FileNotFoundError(
                    f"'{model}' registers pretrained weights '{tag}', but '{model_dir}' has no "
                    f"{' or '.join(missing)}: ship them (recipes/ship_weights.py) before writing the manifest."
                )
            for name in names:
                path = model_dir / name
                files.append({"model": model, "tag": tag, "file": name, "role": role_of(name, tag),
                              "size": path.stat().st_size, "sha256": sha256_of(path)})
    return {
        "about": "Every pretrained file of caps_zoo, written from saved_models/ by "
                 "caps_zoo.pretrained_files.write_manifest(); do not edit. Downloads are checked "
                 "against these SHA-256s.",
        "format": MANIFEST_FORMAT,
        "layout": f"${ORIGIN_ENV}/<model>/<file>",
        "files": files,
    }


def write_manifest(folder=None, path=MANIFEST_PATH):
    """Write ``build_manifest(folder)`` to ``path`` (the packaged manifest); returns ``path``."""
    write_json_atomically(path, build_manifest(folder), indent=1)
    return Path(path)


def load_manifest(path=MANIFEST_PATH):
    manifest = json.loads(Path(path).read_text())
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"'{path}' is a manifest of format {manifest.get('format')!r}; this caps_zoo "
                         f"reads format {MANIFEST_FORMAT}.")
    return manifest


def manifest_entry(model, file_name):
    """The manifest's record of ``file_name`` of ``model``, or None."""
    for entry in load_manifest()["files"]:
        if entry["model"] == model and entry["file"] == file_name:
            return entry
    return None


# -- finding a file ---------------------------------------------------------------

def _not_found(model, file_name, why_not_cached, why_not_downloaded):
    local = saved_models_dir() / model / file_name
    # A metadata file there without its weights is not used (locate_pretrained).
    why_not_local = "is not used without the weights beside it" if local.is_file() else "does not exist"
    return FileNotFoundError(
        f"Pretrained file '{file_name}' of '{model}' is in none of the three places caps_zoo looks:\n"
        f"  1. saved_models: '{local}' {why_not_local} (a checkout's "
        f"saved_models/; set {SAVED_MODELS_ENV} to a copy of that folder);\n"
        f"  2. the Keras cache: '{cache_path(model, file_name)}' {why_not_cached} (set {KERAS_HOME_ENV} "
        "to use another cache);\n"
        f"  3. the download origin: {why_not_downloaded}\n"
        f"See the {README_SECTION}."
    )


def _cached(model, file_name, entry):
    """The cached copy if it is the manifest's file, else None and why not.
    A cached file that differs (an earlier release's, or edited by hand) is
    left alone: a download replaces it."""
    path = cache_path(model, file_name)
    if not path.is_file():
        return None, "does not exist"
    if sha256_of(path) == entry["sha256"]:
        return path, None
    return None, "holds another file than the manifest's (SHA-256 differs: an earlier release's, or edited)"


def _download(model, file_name, entry, url):
    """``url`` fetched into the Keras cache by ``keras.utils.get_file`` and
    checked against ``entry``'s SHA-256, or None and why the fetch failed.

    Fetched under a name of its own, then renamed into place once checked:
    the cache never holds a file that failed the check or is half written,
    and two processes fetching at once (test workers) do not write into one
    file. A process killed mid-download leaves its hidden ``.part`` file."""
    target = cache_path(model, file_name)
    # get_file falls back to /tmp/.keras when the cache folder is not
    # writable, and a folder that does not exist yet is not: made first, the
    # file lands where cache_path() says.
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.parent / f".{file_name}.{os.getpid()}-{secrets.token_hex(4)}.part"
    try:
        keras.utils.get_file(fname=part.name, origin=url, file_hash=entry["sha256"], hash_algorithm="sha256",
                             cache_dir=str(keras_cache_dir()), cache_subdir=f"{CACHE_SUBDIR}/{model}")
    # get_file raises a bare Exception when the fetch fails (removing the
    # partial file), and ValueError when the fetched file's hash differs
    # (leaving it in place).
    except Exception as error:
        if not part.is_file():
            return None, (f"fetching '{url}' failed ({error}); {ORIGIN_ENV} names the origin, set it "
                          "to one that serves the file.")
        size, sha256 = part.stat().st_size, sha256_of(part)
        part.unlink()
        raise weights_io.WeightsError(
            f"'{url}' is not the published '{file_name}' of '{model}': {size:,} bytes with SHA-256 "
            f"{sha256}, the manifest ({MANIFEST_PATH.name}) lists {entry['size']:,} bytes with SHA-256 "
            f"{entry['sha256']}. A download cut short, or a mirror ({ORIGIN_ENV}) that holds other files. "
            f"Nothing was kept in the cache ('{target.parent}'); load again to retry."
        ) from error
    os.replace(part, target)
    return target, None


def locate(model, file_name):
    """The path of ``file_name`` of ``model`` (e.g. ``mnist.weights.npz``):
    ``saved_models/``, else the Keras cache, else downloaded (module docstring).

    Raises ``FileNotFoundError`` naming all three places when it is in none,
    ``caps_zoo.weights.WeightsError`` when a download is not the manifest's file."""
    local = saved_models_dir() / model / file_name
    if local.is_file():
        return local
    return _cached_or_downloaded(model, file_name)


def _cached_or_downloaded(model, file_name):
    """Steps 2 and 3 of the module docstring."""
    entry = manifest_entry(model, file_name)
    if entry is None:
        raise _not_found(model, file_name, "was not looked for",
                         f"none: the manifest ({MANIFEST_PATH}) does not list '{model}/{file_name}', so no "
                         "SHA-256 would check a download. A file shipped since the manifest was written: "
                         f"write it again ({WRITE_MANIFEST}) from the saved_models/ that holds the file.")
    path, why_not_cached = _cached(model, file_name, entry)
    if path is not None:
        return path
    url = origin_url(model, file_name)
    if url is None:
        raise _not_found(model, file_name, why_not_cached,
                         f"none is configured: set {ORIGIN_ENV} to a base URL that serves "
                         f"<base>/{model}/{file_name}: a mirror's http(s) URL, or a copy of saved_models/ as "
                         f"{ORIGIN_ENV}=file:///path/to/saved_models (the project publishes no origin "
                         "of its own yet).")
    path, why_not_downloaded = _download(model, file_name, entry, url)
    if path is None:
        raise _not_found(model, file_name, why_not_cached, why_not_downloaded)
    return path


def locate_pretrained(model, tag):
    """``(weights_path, metadata_path)`` of the pretrained ``tag`` of ``model``.

    Both come from the same place: from ``saved_models/`` when it holds the
    weights (the metadata path there may not exist: a shipping interrupted
    between its moves, which the registry reports), else from the cache or
    the origin (weights first, so that a failed weights download leaves no
    metadata behind either)."""
    weights_name, metadata_name = tag + weights_io.NPZ_SUFFIX, tag + METADATA_SUFFIX
    local = saved_models_dir() / model
    if (local / weights_name).is_file():
        return local / weights_name, local / metadata_name
    return _cached_or_downloaded(model, weights_name), _cached_or_downloaded(model, metadata_name)
