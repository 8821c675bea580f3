import subprocess
import sys

import numpy as np
import pytest

import caps_zoo
from caps_zoo import registry
from caps_zoo import weights as weights_io


@pytest.fixture(scope="module")
def capsnet():
    return caps_zoo.create_model("capsnet")


def test_a_plain_import_registers_every_layer_and_model_with_keras(tmp_path):
    """``keras.saving.load_model`` finds the zoo's classes after ``import
    caps_zoo`` alone, in a fresh process (the peers' "Unknown layer"): the
    package imports its layers and models, and so TensorFlow, on purpose;
    the recipes' options live in caps_zoo_options for that reason."""
    path = tmp_path / "capsnet.keras"
    caps_zoo.create_model("capsnet", conv_filters=[8], primary_capsule_types=4, decoder_units=[16, 16]).save(path)
    code = f"import caps_zoo, keras; print(type(keras.saving.load_model({str(path)!r})).__name__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "CapsuleNetwork"


def test_list_models_and_patterns():
    assert {"capsnet", "deep_capsnet"} <= set(caps_zoo.list_models())
    assert caps_zoo.list_models("deep*") == ["deep_capsnet"]
    assert "capsnet" in caps_zoo.list_models(pretrained=True)


def test_unknown_name_lists_close_matches():
    with pytest.raises(KeyError) as error:
        caps_zoo.load("deep_capnset")
    assert "Did you mean 'deep_capsnet'" in str(error.value)
    assert f"Available: {', '.join(caps_zoo.list_models())}." in str(error.value)


def test_unknown_pretrained_tag():
    with pytest.raises(ValueError, match="no pretrained weights 'imagenet'.*'mnist'"):
        caps_zoo.load("capsnet", weights="imagenet")


def test_create_with_overrides_and_bad_overrides():
    model = caps_zoo.create_model("deep_capsnet", routing_iterations=(1, 4), name="fast")
    assert [s.routing_iterations for s in model.routing_stages] == [1, 4]
    assert model.name == "fast"
    with pytest.raises(ValueError, match="one entry per routing stage"):
        caps_zoo.create_model("deep_capsnet", routing_iterations=(3,))


def test_npz_round_trip_float16(capsnet, tmp_path):
    path = weights_io.save_weights(capsnet, tmp_path / "m.weights.npz", dtype="float16")
    loaded = caps_zoo.load("capsnet", weights=str(path))
    for original, restored in zip(capsnet.weights, loaded.weights):
        np.testing.assert_allclose(
            restored.numpy(), original.numpy().astype("float16").astype("float32")
        )


def test_corrupt_weights_file_is_reported_and_model_unchanged(capsnet, tmp_path):
    path = tmp_path / "bad.weights.npz"
    good = weights_io.save_weights(capsnet, tmp_path / "good.weights.npz")
    with open(good, "rb") as handle:
        path.write_bytes(handle.read()[:5000])  # a truncated download
    before = [w.numpy().copy() for w in capsnet.weights]
    with pytest.raises(weights_io.WeightsError, match="corrupt"):
        weights_io.load_weights(capsnet, path)
    for value, variable in zip(before, capsnet.weights):
        np.testing.assert_array_equal(value, variable.numpy())


def test_mismatched_architecture_is_reported(capsnet, tmp_path):
    path = weights_io.save_weights(capsnet, tmp_path / "capsnet.weights.npz")
    with pytest.raises(weights_io.WeightsError, match="different architecture"):
        caps_zoo.load("deep_capsnet", weights=str(path))
    wide = caps_zoo.create_model("capsnet", decoder_units=(256, 1024))
    with pytest.raises(weights_io.WeightsError, match=r"shape .* needs"):
        weights_io.load_weights(wide, path)
    renamed = caps_zoo.load("capsnet", weights=str(path), name="renamed")  # names aside
    np.testing.assert_array_equal(renamed.weights[0].numpy(), capsnet.weights[0].numpy())


def test_reordered_variables_of_equal_shape_are_caught(capsnet, tmp_path):
    path = weights_io.save_weights(capsnet, tmp_path / "capsnet.weights.npz")
    with np.load(path) as archive:
        arrays = dict(archive)
    # A file written in another variable order: conv1/bias and
    # primary_caps/conv/bias are both (256,), so shapes alone would not tell.
    paths = arrays["__paths__"].copy()
    paths[[1, 3]] = paths[[3, 1]]
    arrays["__paths__"] = paths
    arrays["0001"], arrays["0003"] = arrays["0003"], arrays["0001"]
    np.savez(path, **arrays)
    with pytest.raises(weights_io.WeightsError, match="different architecture"):
        weights_io.load_weights(capsnet, path)


def test_missing_weights_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="No weights file"):
        caps_zoo.load("capsnet", weights=str(tmp_path / "none.weights.npz"))


def test_pretrained_files_are_where_the_registry_looks():
    for name in caps_zoo.list_models(pretrained=True):
        weights_path, metadata_path = registry.pretrained_paths(name, "mnist")
        assert weights_path.is_file(), weights_path
        assert metadata_path.is_file(), metadata_path


def test_weights_argument_of_the_wrong_type():
    with pytest.raises(TypeError, match="pretrained tag, a path or None"):
        caps_zoo.load("capsnet", weights=3)


def test_pretrained_weights_without_their_metadata_are_refused(scratch_saved_models):
    """A first shipping killed between its moves leaves weights without
    metadata: loaded, they would skip the SHA-256 check and the overrides
    they were trained with."""
    (scratch_saved_models / "capsnet" / "mnist.json").unlink()
    with pytest.raises(weights_io.WeightsError, match=r"has no metadata .* a first shipping was interrupted"):
        caps_zoo.load("capsnet")
