"""SavedModel and TFLite exports give the Keras model's outputs on real MNIST images."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import caps_zoo
from caps_zoo import export

ATOL = 1e-5
FLOAT_OUTPUTS = ("scores", "poses", "reconstruction")


@pytest.fixture(scope="module", params=["capsnet", "deep_capsnet"])
def case(request, tmp_path_factory):
    """A random-init model, 8 real MNIST test images, its outputs and both exports."""
    keras.utils.set_random_seed(0)
    model = caps_zoo.create_model(request.param)
    images, _ = next(iter(caps_zoo.data.load("mnist_sample", "test", batch_size=8)))
    images = images.numpy()
    expected = {name: value.numpy() for name, value in model(images).items()}
    root = tmp_path_factory.mktemp(request.param)
    return {
        "model": model,
        "images": images,
        "expected": expected,
        "export_dir": root / "serving",
        "version_dir": export.export_saved_model(model, root / "serving"),
        "tflite": export.export_tflite(model, root / f"{request.param}.tflite"),
    }


def assert_matches_keras(outputs, expected):
    for name in FLOAT_OUTPUTS:
        np.testing.assert_allclose(
            np.asarray(outputs[name]), expected[name], atol=ATOL, rtol=0, err_msg=name
        )
    classes = np.asarray(outputs["classes"])
    assert classes.dtype == np.int64
    np.testing.assert_array_equal(classes, np.argmax(expected["scores"], axis=-1))


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
    assert inputs["images"].shape.as_list() == [None, 28, 28, 1]
    assert inputs["images"].dtype == tf.float32


def test_saved_model_matches_keras(case):
    classify = export.load_saved_model_signature(case["version_dir"])
    outputs = classify(images=tf.constant(case["images"]))
    assert set(outputs) == set(FLOAT_OUTPUTS) | {"classes"}
    assert_matches_keras(outputs, case["expected"])
    serving_default = export.load_saved_model_signature(case["version_dir"], "serving_default")
    assert_matches_keras(serving_default(images=tf.constant(case["images"])), case["expected"])


@pytest.mark.parametrize("batch", [1, 8])
def test_tflite_matches_keras(case, batch):
    outputs = export.tflite_predict(case["tflite"], case["images"][:batch])
    expected = {name: value[:batch] for name, value in case["expected"].items()}
    assert_matches_keras(outputs, expected)


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
    assert capsys.readouterr().out.count("wrote ") == 2


# -- the recurrent writers: generate and reconstruct, with fixed noise ----------


@pytest.fixture(scope="module", params=["draw", "dcrw"])
def writer_case(request, tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = caps_zoo.create_model(request.param, steps=3)
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((5, model.steps, model.latent_dim), dtype=np.float32)
    images, _ = caps_zoo.data.load_arrays("mnist_sample", "test")
    images = caps_zoo.data.binarize_fixed((images[:5].astype("float32") / 255.0)[..., None])
    root = tmp_path_factory.mktemp(request.param)
    return {
        "model": model,
        "noise": noise,
        "images": images,
        "version_dir": export.export_saved_model(model, root / "serving"),
        "tflite": export.export_tflite(model, root / f"{request.param}.tflite"),
    }


def test_writer_saved_model_generate_and_reconstruct_match_keras(writer_case):
    model, noise, images = writer_case["model"], writer_case["noise"], writer_case["images"]
    loaded = tf.saved_model.load(str(writer_case["version_dir"]))
    assert {"generate", "reconstruct", "serving_default"} <= set(loaded.signatures)
    generate = export.load_saved_model_signature(writer_case["version_dir"], "generate")
    np.testing.assert_allclose(generate(noise=tf.constant(noise))["images"], model.generate(noise),
                               atol=ATOL, rtol=0)
    reconstruct = export.load_saved_model_signature(writer_case["version_dir"], "reconstruct")
    outputs = reconstruct(images=tf.constant(images), noise=tf.constant(noise))
    canvas, latent_kl = model.reconstruct(images, noise)
    np.testing.assert_allclose(outputs["canvas_logits"], canvas, atol=ATOL, rtol=0)
    np.testing.assert_allclose(outputs["reconstruction"], tf.sigmoid(canvas), atol=ATOL, rtol=0)
    np.testing.assert_allclose(outputs["latent_kl"], latent_kl, atol=1e-4, rtol=1e-6)


@pytest.mark.parametrize("batch", [1, 5])
def test_writer_tflite_generator_matches_keras(writer_case, batch):
    noise = writer_case["noise"][:batch]
    outputs = export.tflite_predict(writer_case["tflite"], noise=noise)
    np.testing.assert_allclose(outputs["images"], writer_case["model"].generate(noise), atol=ATOL, rtol=0)


# -- GRAN: generate (and discriminate) with fixed noise ---------------------------


@pytest.fixture(scope="module", params=["once", "every_step"])
def gran_case(request, tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = caps_zoo.create_model("gran3", noise_mode=request.param)
    rng = np.random.default_rng(0)
    # Batch-norm statistics away from 0 and 1: an export that lost them would show.
    for variable in model.non_trainable_variables:
        if "moving_" in variable.path:
            variable.assign(rng.uniform(0.5, 1.5, variable.shape).astype("float32"))
    noise = rng.standard_normal((5, *model.generator.noise_shape()), dtype=np.float32)
    images, _ = caps_zoo.data.load_arrays("mnist_sample", "test")
    root = tmp_path_factory.mktemp(f"gran_{request.param}")
    return {
        "model": model,
        "noise": noise,
        "images": (images[:5].astype("float32") / 255.0)[..., None],
        "version_dir": export.export_saved_model(model, root / "serving"),
        "tflite": export.export_tflite(model, root / "gran3.tflite"),
    }


def test_gran_saved_model_generate_and_discriminate_match_keras(gran_case):
    model, noise, images = gran_case["model"], gran_case["noise"], gran_case["images"]
    loaded = tf.saved_model.load(str(gran_case["version_dir"]))
    assert {"generate", "discriminate", "serving_default"} <= set(loaded.signatures)
    for name in ("generate", "serving_default"):
        generate = export.load_saved_model_signature(gran_case["version_dir"], name)
        np.testing.assert_allclose(generate(noise=tf.constant(noise))["images"], model.generate(noise),
                                   atol=ATOL, rtol=0)
    discriminate = export.load_saved_model_signature(gran_case["version_dir"], "discriminate")
    np.testing.assert_allclose(discriminate(images=tf.constant(images))["probability_real"],
                               model.discriminate(images), atol=ATOL, rtol=0)


@pytest.mark.parametrize("batch", [1, 5])
def test_gran_tflite_generator_matches_keras(gran_case, batch):
    noise = gran_case["noise"][:batch]
    outputs = export.tflite_predict(gran_case["tflite"], noise=noise)
    np.testing.assert_allclose(outputs["images"], gran_case["model"].generate(noise), atol=ATOL, rtol=0)
