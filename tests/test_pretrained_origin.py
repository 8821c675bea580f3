"""Pretrained weights outside a checkout: saved_models/, the Keras cache, a
download origin (caps_zoo.pretrained_files), and the manifest of hashes."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

import caps_zoo
from caps_zoo import pretrained_files, registry
from caps_zoo import weights as weights_io

REPOSITORY = Path(__file__).resolve().parent.parent
# capsnet's are the shipped files used here (15 MB of weights).
MODEL, TAG = "capsnet", "mnist"
WEIGHTS, METADATA = f"{TAG}{weights_io.NPZ_SUFFIX}", f"{TAG}.json"


@pytest.fixture
def outside_a_checkout(tmp_path, monkeypatch):
    """An empty CAPS_ZOO_SAVED_MODELS, KERAS_HOME in a temp folder and a
    file:// origin that serves copies of capsnet's shipped files; returns
    ``(origin folder, cache folder)``."""
    shipped = registry.saved_models_dir() / MODEL
    origin = tmp_path / "origin"
    (origin / MODEL).mkdir(parents=True)
    for name in (WEIGHTS, METADATA):
        shutil.copy(shipped / name, origin / MODEL / name)
    (tmp_path / "empty_saved_models").mkdir()
    monkeypatch.setenv(pretrained_files.SAVED_MODELS_ENV, str(tmp_path / "empty_saved_models"))
    monkeypatch.setenv(pretrained_files.KERAS_HOME_ENV, str(tmp_path / "keras_home"))
    monkeypatch.setenv(pretrained_files.ORIGIN_ENV, origin.as_uri())
    return origin, tmp_path / "keras_home" / pretrained_files.CACHE_SUBDIR


def cached_files(cache):
    return sorted(path.relative_to(cache).as_posix() for path in cache.rglob("*") if path.is_file())


@pytest.fixture(scope="module")
def shipped_capsnet_weights():
    """capsnet's shipped weights as arrays, read from the checkout."""
    with np.load(REPOSITORY / "saved_models" / MODEL / WEIGHTS) as archive:
        return [archive[f"{index:04d}"] for index in range(len(archive.files) - 2)]


def test_download_lands_in_the_cache_and_is_reused(outside_a_checkout, shipped_capsnet_weights, capsys):
    origin, cache = outside_a_checkout
    model = caps_zoo.load(MODEL, weights=TAG)
    assert "Downloading data from " + (origin / MODEL / WEIGHTS).as_uri() in capsys.readouterr().out
    assert cached_files(cache) == [f"{MODEL}/{METADATA}", f"{MODEL}/{WEIGHTS}"]
    for variable, shipped in zip(model.weights, shipped_capsnet_weights):
        np.testing.assert_array_equal(variable.numpy(), shipped.astype(variable.dtype))
    assert caps_zoo.load_metadata(MODEL, TAG)["weights_sha256"] == pretrained_files.sha256_of(cache / MODEL / WEIGHTS)

    # Again with the origin gone: from the cache, nothing downloaded.
    shutil.rmtree(origin)
    again = caps_zoo.load(MODEL, weights=TAG)
    assert "Downloading" not in capsys.readouterr().out
    np.testing.assert_array_equal(again.weights[0].numpy(), model.weights[0].numpy())


def test_cache_alone_serves_without_an_origin(outside_a_checkout, monkeypatch):
    _, cache = outside_a_checkout
    pretrained_files.locate_pretrained(MODEL, TAG)  # downloads both files
    monkeypatch.delenv(pretrained_files.ORIGIN_ENV)
    weights_path, metadata_path = pretrained_files.locate_pretrained(MODEL, TAG)
    assert weights_path == cache / MODEL / WEIGHTS and metadata_path == cache / MODEL / METADATA


def test_a_cached_file_that_differs_is_downloaded_again(outside_a_checkout, monkeypatch):
    _, cache = outside_a_checkout
    (cache / MODEL).mkdir(parents=True)
    (cache / MODEL / WEIGHTS).write_bytes(b"an earlier release's weights")
    with monkeypatch.context() as offline:
        offline.delenv(pretrained_files.ORIGIN_ENV)
        with pytest.raises(FileNotFoundError, match="holds another file than the manifest's"):
            pretrained_files.locate(MODEL, WEIGHTS)
    path = pretrained_files.locate(MODEL, WEIGHTS)
    assert pretrained_files.sha256_of(path) == pretrained_files.manifest_entry(MODEL, WEIGHTS)["sha256"]
    assert cached_files(cache) == [f"{MODEL}/{WEIGHTS}"]  # no .part file left


@pytest.mark.parametrize("damage", ["truncated", "one_byte_changed"])
def test_a_corrupt_download_is_refused_and_not_cached(outside_a_checkout, damage):
    origin, cache = outside_a_checkout
    served = origin / MODEL / WEIGHTS
    content = bytearray(served.read_bytes())
    if damage == "truncated":
        content = content[:5000]  # a download cut short
    else:
        content[len(content) // 2] ^= 0xFF
    served.write_bytes(bytes(content))
    with pytest.raises(weights_io.WeightsError) as error:
        caps_zoo.load(MODEL, weights=TAG)
    message = str(error.value)
    entry = pretrained_files.manifest_entry(MODEL, WEIGHTS)
    assert served.as_uri() in message and "is not the published" in message
    assert f"{len(content):,} bytes" in message and entry["sha256"] in message
    assert "Nothing was kept in the cache" in message
    assert cached_files(cache) == []  # not even the metadata: the weights come first


def assert_names_the_three_places(message, tried_url):
    assert str(Path(os.environ[pretrained_files.SAVED_MODELS_ENV]) / MODEL / WEIGHTS) in message
    assert str(pretrained_files.cache_path(MODEL, WEIGHTS)) in message
    for variable in ("CAPS_ZOO_SAVED_MODELS", "KERAS_HOME", "CAPS_ZOO_WEIGHTS_URL"):
        assert variable in message
    if tried_url:
        assert tried_url in message


def test_no_origin_configured_names_the_three_places(outside_a_checkout, monkeypatch):
    monkeypatch.delenv(pretrained_files.ORIGIN_ENV)
    with pytest.raises(FileNotFoundError) as error:
        caps_zoo.load(MODEL, weights=TAG)
    assert_names_the_three_places(str(error.value), tried_url=None)
    assert "none is configured: set CAPS_ZOO_WEIGHTS_URL" in str(error.value)


def test_a_file_missing_at_the_origin_names_the_three_places(outside_a_checkout):
    origin, cache = outside_a_checkout
    (origin / MODEL / WEIGHTS).unlink()
    with pytest.raises(FileNotFoundError) as error:
        caps_zoo.load(MODEL, weights=TAG)
    assert_names_the_three_places(str(error.value), tried_url=(origin / MODEL / WEIGHTS).as_uri())
    assert "failed" in str(error.value)
    assert cached_files(cache) == []


def test_a_file_the_manifest_does_not_list_is_not_downloaded(outside_a_checkout):
    with pytest.raises(FileNotFoundError, match="the manifest .* does not list 'capsnet/fashion.weights.npz'"):
        pretrained_files.locate(MODEL, "fashion.weights.npz")


def test_origin_without_folders_by_template(outside_a_checkout, monkeypatch):
    """A host without folders (e.g. release assets): {model} and {file} in the base URL."""
    origin, cache = outside_a_checkout
    flat = origin.parent / "flat"
    flat.mkdir()
    for name in (WEIGHTS, METADATA):
        shutil.copy(origin / MODEL / name, flat / f"{MODEL}--{name}")
    monkeypatch.setenv(pretrained_files.ORIGIN_ENV, flat.as_uri() + "/{model}--{file}")
    assert pretrained_files.origin_url(MODEL, WEIGHTS) == (flat / f"{MODEL}--{WEIGHTS}").as_uri()
    assert pretrained_files.locate(MODEL, METADATA) == cache / MODEL / METADATA


def test_the_checkout_comes_first(outside_a_checkout, monkeypatch):
    monkeypatch.delenv(pretrained_files.SAVED_MODELS_ENV)
    weights_path, metadata_path = pretrained_files.locate_pretrained(MODEL, TAG)
    assert weights_path == REPOSITORY / "saved_models" / MODEL / WEIGHTS
    assert metadata_path == REPOSITORY / "saved_models" / MODEL / METADATA


def test_manifest_is_true_to_saved_models():
    """Every hash recomputed from saved_models/: the manifest lists exactly
    its files of the registered tags, with their sizes and SHA-256s."""
    recorded = pretrained_files.load_manifest()
    recomputed = pretrained_files.build_manifest(REPOSITORY / "saved_models")
    stale = [entry for entry in recorded["files"] if entry not in recomputed["files"]]
    new = [entry for entry in recomputed["files"] if entry not in recorded["files"]]
    assert not stale and not new, (
        f"caps_zoo/pretrained_manifest.json is out of date (entries not in saved_models/: {stale}; "
        f"not in the manifest: {new}). Write it again: {pretrained_files.WRITE_MANIFEST}"
    )
    assert recorded == recomputed
    for model in caps_zoo.list_models(pretrained=True):
        for tag in registry.get_spec(model).pretrained:
            weights = pretrained_files.manifest_entry(model, f"{tag}{weights_io.NPZ_SUFFIX}")
            metadata = pretrained_files.manifest_entry(model, f"{tag}.json")
            assert weights["role"] == "weights" and metadata["role"] == "metadata", (model, tag)
            # The metadata's own record of its weights agrees with the manifest.
            stated = json.loads((REPOSITORY / "saved_models" / model / metadata["file"]).read_text())
            assert stated["weights_sha256"] == weights["sha256"], (model, tag)


def test_manifest_refuses_a_registered_tag_without_its_files(tmp_path):
    (tmp_path / MODEL).mkdir()
    shutil.copy(REPOSITORY / "saved_models" / MODEL / WEIGHTS, tmp_path / MODEL / WEIGHTS)
    with pytest.raises(FileNotFoundError, match=f"'{MODEL}' registers pretrained weights '{TAG}', but .* has no {METADATA}"):
        pretrained_files.build_manifest(tmp_path)


# -- a wheel, installed outside the checkout ----------------------------------------

def build_wheel(tmp_path):
    """The wheel of a copy of the checkout (a build in place would leave
    build/ and egg-info behind in it); saved_models/ is copied too, so that
    the check that the wheel leaves it out means something."""
    source = tmp_path / "source"
    shutil.copytree(REPOSITORY, source, ignore=shutil.ignore_patterns(
        ".git", "__pycache__", "*.egg-info", "build", "dist", "runs", "training_snapshots", "benchmarks"))
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    str(source), "-w", str(wheels)], check=True, cwd=tmp_path)
    (wheel,) = wheels.glob("caps_zoo-*.whl")
    return wheel


@pytest.mark.slow
def test_a_wheel_installed_outside_the_checkout_downloads_its_weights(tmp_path):
    wheel = build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert "caps_zoo/pretrained_manifest.json" in names
    assert "caps_zoo/data/mnist_test_sample.npz" in names
    assert not [name for name in names if "saved_models" in name or name.endswith(weights_io.NPZ_SUFFIX)]

    # TensorFlow and the rest come from this interpreter's site-packages.
    # The editable caps_zoo there is a meta-path finder that sys.meta_path
    # consults after the path finder, so the venv's own copy is found first:
    # asserted below through caps_zoo.__file__.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    python = venv / "bin" / "python"
    # --ignore-installed: the editable install of the same version would
    # otherwise count as installed, and nothing outside the venv is touched.
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--ignore-installed",
                    "--no-index", str(wheel)], check=True)

    origin = tmp_path / "origin"
    (origin / MODEL).mkdir(parents=True)
    for name in (WEIGHTS, METADATA):
        shutil.copy(REPOSITORY / "saved_models" / MODEL / name, origin / MODEL / name)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", pretrained_files.SAVED_MODELS_ENV)}
    env.update({pretrained_files.ORIGIN_ENV: origin.as_uri(), pretrained_files.KERAS_HOME_ENV: str(tmp_path / "keras")})
    script = textwrap.dedent(f"""
        import json, sys
        from pathlib import Path
        import caps_zoo
        assert Path(caps_zoo.__file__).resolve().is_relative_to(Path({str(venv)!r}).resolve()), caps_zoo.__file__
        from caps_zoo import pretrained_files
        assert not pretrained_files.saved_models_dir().exists(), pretrained_files.saved_models_dir()
        model = caps_zoo.load({MODEL!r}, weights={TAG!r})
        images = caps_zoo.data.load("mnist_sample", "test", batch_size=250, limit=250)
        accuracy = model.evaluate(images, return_dict=True, verbose=0)["accuracy"]
        print(json.dumps({{"file": caps_zoo.__file__, "accuracy": accuracy,
                          "weights": str(pretrained_files.locate({MODEL!r}, {WEIGHTS!r}))}}))
    """)
    result = subprocess.run([str(python), "-c", script], cwd=work, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["weights"] == str(tmp_path / "keras" / pretrained_files.CACHE_SUBDIR / MODEL / WEIGHTS)
    assert report["accuracy"] > 0.97  # the shipped model (99.5% on the 1,000 sample images), not a random one
