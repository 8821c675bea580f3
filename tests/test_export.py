"""The export API: TF Serving's versioned layout, signatures, overwriting, the recipe.

That every model's exports give its Keras outputs is checked for every family
in test_model_families.py."""

import keras
import pytest
import tensorflow as tf

import caps_zoo
from caps_zoo import export

@pytest.fixture(scope="module", params=["capsnet"])
def case(request, tmp_path_factory):
    """A random-init model and its SavedModel."""
    keras.utils.set_random_seed(0)
    model = caps_zoo.create_model(request.param)
    root = tmp_path_factory.mktemp(request.param)
    return {
        "model": model,
        "export_dir": root / "serving",
        "version_dir": export.export_saved_model(model, root / "serving"),
    }


def test_saved_model_versioned_layout(case):
    version_dir = case["version_dir"]
    assert version_dir == case["export_dir"] / case["model"].name / "1"
    assert (version_dir / "saved_model.pb").is_file()
    assert (version_dir / "variables").is_dir()
    # Only the version is left: no staging directory for TF Serving to see.
    assert [p.name for p in version_dir.parent.iterdir()] == ["1"]


def test_saved_model_signatures(case):
    loaded = tf.saved_model.load(str(case["version_dir"]))
    assert {"classify", "serving_default"} <= set(loaded.signatures)
    _, inputs = loaded.signatures["classify"].structured_input_signature
    # Any shape is declared (a declared one would be trusted at run time);
    # the signature checks it is (batch, 28, 28, 1) and says so when not.
    assert inputs["images"].shape.rank is None
    assert inputs["images"].dtype == tf.float32
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"images must have shape \(batch, 28, 28, 1\)"):
        loaded.signatures["classify"](images=tf.zeros((2, 28, 28)))


def test_refuses_to_overwrite_a_version(case, tmp_path):
    model = case["model"]
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export.export_saved_model(model, case["export_dir"])
    version_dir = tmp_path / model.name / "1"
    version_dir.mkdir(parents=True)
    (version_dir / "stale.txt").write_text("old export")
    assert export.export_saved_model(model, tmp_path, overwrite=True) == version_dir
    assert (version_dir / "saved_model.pb").is_file()
    assert not (version_dir / "stale.txt").exists()


@pytest.mark.parametrize("version", [0, -1, 1.0, "1", True])
def test_rejects_a_bad_version(case, tmp_path, version):
    with pytest.raises(ValueError, match="positive int"):
        export.export_saved_model(case["model"], tmp_path, version=version)


def test_export_recipe_writes_and_checks_both(tmp_path, capsys, monkeypatch):
    import runpy
    import sys
    from pathlib import Path

    recipe = Path(__file__).resolve().parent.parent / "recipes" / "export_model.py"
    argv = [str(recipe), "--model", "capsnet", "--saved-model-dir", str(tmp_path / "serving"),
            "--tflite", str(tmp_path / "capsnet.tflite")]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(recipe), run_name="__main__")
    assert (tmp_path / "serving" / "capsnet" / "1" / "saved_model.pb").is_file()
    assert (tmp_path / "capsnet.tflite").is_file()
    printed = capsys.readouterr().out
    assert printed.count("wrote ") == 2
    # Its stages are announced (a minute of silence otherwise, for draw).
    for stage in ("loading capsnet", "tracing 1 endpoints into a SavedModel", "converting 'classify' to TFLite",
                  "checking the exports against Keras on 16 examples"):
        assert stage in printed, printed
