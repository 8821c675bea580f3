"""Preset folders: caps_zoo.export.save_preset writes one, caps_zoo.load(folder) rebuilds it."""

import json
from pathlib import Path

import numpy as np
import pytest

import caps_zoo
from caps_zoo import export
from caps_zoo import weights as weights_io

# A small capsnet: every part of capsnet's architecture (and overrides to
# record), built and saved in about a second.
SMALL_CAPSNET = dict(conv_filters=(32,), primary_capsule_types=4, decoder_units=(32, 64),
                     routing_iterations=(2,), name="small_capsnet")


@pytest.fixture(scope="module")
def small_capsnet():
    return caps_zoo.create_model("capsnet", **SMALL_CAPSNET)


@pytest.fixture
def preset(small_capsnet, tmp_path):
    return export.save_preset(small_capsnet, tmp_path / "preset", metadata={"trained_on": "nothing: random init"})


def edit_config(folder, **changes):
    config = json.loads((folder / export.PRESET_CONFIG).read_text())
    config.update(changes)
    (folder / export.PRESET_CONFIG).write_text(json.dumps(config))


def test_round_trip_gives_equal_weights_and_predictions(small_capsnet, preset, sample_batch):
    assert sorted(path.name for path in preset.iterdir()) == sorted(
        [export.PRESET_CONFIG, export.PRESET_WEIGHTS, export.PRESET_METADATA])
    config = json.loads((preset / export.PRESET_CONFIG).read_text())
    assert config["model"] == "capsnet"
    assert config["overrides"] == json.loads(json.dumps(SMALL_CAPSNET))
    metadata = json.loads((preset / export.PRESET_METADATA).read_text())
    assert metadata["trained_on"] == "nothing: random init"
    assert metadata["preset"]["parameters"] == small_capsnet.count_params()

    loaded = caps_zoo.load(preset)
    assert loaded.name == "small_capsnet" and loaded.get_config() == small_capsnet.get_config()
    for original, restored in zip(small_capsnet.weights, loaded.weights):
        np.testing.assert_array_equal(restored.numpy(), original.numpy())
    images, _ = sample_batch
    expected = small_capsnet.predict(images[:64], verbose=0)
    got = loaded.predict(images[:64], verbose=0)
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key], atol=1e-5, err_msg=key)
    # A preset of the loaded model records the same overrides.
    again = export.save_preset(loaded, preset.parent / "again")
    assert json.loads((again / export.PRESET_CONFIG).read_text())["overrides"] == config["overrides"]


def test_a_folder_by_name(small_capsnet, tmp_path, monkeypatch):
    """A string names a folder if it is no registry name and has a separator
    or names an existing folder; a folder called like a model needs the separator."""
    monkeypatch.chdir(tmp_path)
    export.save_preset(small_capsnet, "my_preset")
    export.save_preset(small_capsnet, "capsnet")
    for folder in ("my_preset", "./my_preset", str(tmp_path / "my_preset"), "./capsnet"):
        assert caps_zoo.load(folder).name == "small_capsnet", folder
    assert caps_zoo.load("capsnet", weights=None).name == "capsnet"  # the registry's


def test_a_builder_whose_arguments_are_not_its_config(tmp_path):
    """cvgan's builder takes the autoencoder's arguments flat and nests them
    in its class's config: the preset records the builder's arguments."""
    model = caps_zoo.create_model("cvgan", bottleneck_config={"num_parents": 8}, discriminator_start=5)
    folder = export.save_preset(model, tmp_path / "cvgan")
    loaded = caps_zoo.load(folder)
    assert loaded.get_config() == model.get_config()
    assert loaded.autoencoder_config["bottleneck_config"]["num_parents"] == 8
    for original, restored in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(restored.numpy(), original.numpy())


def test_overrides_that_change_no_variable_and_a_random_init(small_capsnet, preset):
    faster = caps_zoo.load(preset, routing_iterations=(1,), name="faster")
    assert faster.name == "faster" and [s.routing_iterations for s in faster.routing_stages] == [1]
    np.testing.assert_array_equal(faster.weights[0].numpy(), small_capsnet.weights[0].numpy())
    fresh = caps_zoo.load(preset, weights=None)
    assert fresh.get_config() == small_capsnet.get_config()
    assert not np.array_equal(fresh.weights[0].numpy(), small_capsnet.weights[0].numpy())


def test_float16_weights(small_capsnet, tmp_path):
    folder = export.save_preset(small_capsnet, tmp_path / "half", dtype="float16")
    loaded = caps_zoo.load(folder)
    np.testing.assert_array_equal(loaded.weights[0].numpy(),
                                  small_capsnet.weights[0].numpy().astype("float16").astype("float32"))


def test_a_folder_without_config_json(tmp_path):
    (tmp_path / "not_a_preset").mkdir()
    (tmp_path / "not_a_preset" / "model.weights.npz").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"is not a preset: it has no config.json \(it holds model.weights.npz\)"):
        caps_zoo.load(tmp_path / "not_a_preset")
    with pytest.raises(FileNotFoundError, match="No preset folder at"):
        caps_zoo.load(str(tmp_path / "missing"))
    with pytest.raises(NotADirectoryError, match=r"is a file, not a preset folder.*weights=path"):
        caps_zoo.load(tmp_path / "not_a_preset" / "model.weights.npz")


def test_another_tools_config_json_is_not_taken_for_a_preset(tmp_path):
    (tmp_path / "keras_hub").mkdir()
    (tmp_path / "keras_hub" / "config.json").write_text(json.dumps({"module": "keras_hub.src", "class_name": "X"}))
    with pytest.raises(ValueError, match="not a caps_zoo preset's config.*keras-hub"):
        caps_zoo.load(tmp_path / "keras_hub")


def test_an_unknown_model_name_lists_close_matches(preset):
    edit_config(preset, model="capnset")
    with pytest.raises(KeyError) as error:
        caps_zoo.load(preset)
    assert "config.json' names a model this caps_zoo does not have" in str(error.value)
    assert "Did you mean 'capsnet'" in str(error.value)


def test_corrupt_weights_are_refused(preset):
    weights = preset / export.PRESET_WEIGHTS
    content = bytearray(weights.read_bytes())
    content[len(content) // 2] ^= 0xFF
    weights.write_bytes(bytes(content))
    with pytest.raises(weights_io.WeightsError, match="is not the weights file .* records \\(SHA-256 differs\\)"):
        caps_zoo.load(preset)


@pytest.mark.parametrize("name", ["../outside.weights.npz", "/tmp/outside.weights.npz", "sub/x.weights.npz"])
def test_weights_outside_the_preset_folder_are_refused(preset, name):
    """A preset from elsewhere cannot make load() read a file outside its folder."""
    edit_config(preset, weights=name)
    with pytest.raises(ValueError, match="expected the name of a file inside the preset folder"):
        caps_zoo.load(preset)


def test_overrides_that_conflict_with_the_weights(preset):
    with pytest.raises(weights_io.WeightsError,
                       match=r"The overrides \{'decoder_units': \(64, 64\)\} conflict with preset .* do not fit"):
        caps_zoo.load(preset, decoder_units=(64, 64))
    with pytest.raises(ValueError, match=r"holds its own weights \(model.weights.npz\); weights='fashion_mnist' conflicts"):
        caps_zoo.load(preset, weights="fashion_mnist")


def test_changed_defaults_are_caught(preset):
    """Routing iterations hold no variable: a caps_zoo whose default changed
    would load the weights into another model without the config check."""
    config = json.loads((preset / export.PRESET_CONFIG).read_text())
    config["config"]["routing_iterations"] = [3]
    (preset / export.PRESET_CONFIG).write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"builds differently .*routing_iterations: saved \[3\], rebuilt \[2\]"):
        caps_zoo.load(preset)


def test_a_newer_format_or_a_config_cut_short_is_refused(preset):
    config = json.loads((preset / export.PRESET_CONFIG).read_text())
    edit_config(preset, format_version=2)
    with pytest.raises(ValueError, match="format version 2; this caps_zoo reads version 1"):
        caps_zoo.load(preset)
    del config["weights_sha256"]
    (preset / export.PRESET_CONFIG).write_text(json.dumps(config))
    with pytest.raises(ValueError, match="config.json' lacks weights_sha256"):
        caps_zoo.load(preset)
    (preset / export.PRESET_CONFIG).write_text(json.dumps(config)[:40])
    with pytest.raises(ValueError, match="config.json' is not valid JSON"):
        caps_zoo.load(preset)


def test_save_preset_refusals(small_capsnet, preset, tmp_path):
    with pytest.raises(FileExistsError, match="already holds a preset; pass overwrite=True"):
        export.save_preset(small_capsnet, preset)
    assert export.save_preset(small_capsnet, preset, overwrite=True) == preset
    (tmp_path / "own_files").mkdir()
    (tmp_path / "own_files" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a preset, so it is not replaced"):
        export.save_preset(small_capsnet, tmp_path / "own_files", overwrite=True)
    assert (tmp_path / "own_files" / "notes.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="metadata\\['preset'\\] is written by save_preset"):
        export.save_preset(small_capsnet, tmp_path / "p1", metadata={"preset": 1})
    with pytest.raises(TypeError, match="metadata must be JSON-serializable"):
        export.save_preset(small_capsnet, tmp_path / "p2", metadata={"when": object()})
    unregistered = type(small_capsnet).from_config(small_capsnet.get_config())
    with pytest.raises(ValueError, match="was not built by caps_zoo.create_model"):
        export.save_preset(unregistered, tmp_path / "p3")
    assert not [path.name for path in tmp_path.iterdir() if path.name.startswith(".tmp-")]


def test_an_overwrite_cut_short_keeps_the_old_preset(small_capsnet, preset, monkeypatch):
    """The old folder is renamed aside before the new one moves in and deleted
    only after: a failure (a kill) between the two leaves the old preset,
    whole, under a hidden name beside it; a finished overwrite leaves nothing else."""
    import os

    before = (preset / export.PRESET_CONFIG).read_text()
    real_replace = os.replace

    def failing_move_in(source, target):
        if Path(target) == preset:  # the new folder's move into place
            raise OSError("killed")
        return real_replace(source, target)

    monkeypatch.setattr(export.os, "replace", failing_move_in)
    with pytest.raises(OSError, match="killed"):
        export.save_preset(small_capsnet, preset, overwrite=True)
    monkeypatch.setattr(export.os, "replace", real_replace)
    (kept,) = [path for path in preset.parent.iterdir() if path.name.startswith(".old-preset-")]
    assert (kept / export.PRESET_CONFIG).read_text() == before
    assert caps_zoo.load(kept).count_params() == small_capsnet.count_params()

    export.save_preset(small_capsnet, preset, overwrite=True)
    leftovers = {path.name for path in preset.parent.iterdir()} - {"preset", kept.name}
    assert not leftovers, leftovers
