"""DRAW and DCRW (RecurrentWriter): losses, drawing, training, serialization."""

import keras
import numpy as np
import pytest

import caps_zoo
from caps_zoo import data, losses

# Small T keeps graph tracing fast; the recurrence is the same for T = 64.
SMALL = {"draw": {"steps": 3}, "dcrw": {"steps": 3}, "dcrw_no_read_attention": {"steps": 3}}
WRITERS = list(SMALL)


@pytest.fixture(scope="module")
def binary_batch():
    """128 real MNIST test images, fixed binarization (what bounds are reported on)."""
    images, _ = data.load_arrays("mnist_sample", "test")
    return data.binarize_fixed((images[:128].astype("float32") / 255.0)[..., None])


def make(name, **overrides):
    keras.utils.set_random_seed(0)
    return caps_zoo.create_model(name, **{**SMALL[name], **overrides})


def test_kl_equals_its_closed_form():
    rng = np.random.default_rng(0)
    mean = rng.normal(size=(5, 7)).astype("float32")
    log_std = rng.normal(size=(5, 7)).astype("float32") * 0.5
    expected = 0.5 * np.sum(mean**2 + np.exp(2 * log_std) - 2 * log_std - 1, axis=-1)
    np.testing.assert_allclose(losses.gaussian_kl_nats(mean, log_std), expected, rtol=1e-5)
    assert np.allclose(losses.gaussian_kl_nats(np.zeros((2, 3)), np.zeros((2, 3))), 0.0)


def test_bernoulli_nll_equals_binary_cross_entropy():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(4, 6, 6, 1)).astype("float32") * 3
    images = (rng.random((4, 6, 6, 1)) > 0.5).astype("float32")
    probabilities = 1 / (1 + np.exp(-logits.astype("float64")))
    expected = -np.sum(
        images * np.log(probabilities) + (1 - images) * np.log(1 - probabilities), axis=(1, 2, 3)
    )
    np.testing.assert_allclose(losses.bernoulli_nll_nats(images, logits), expected, rtol=1e-5)


@pytest.mark.parametrize("name", WRITERS)
def test_outputs_and_sample_shapes(name, binary_batch):
    model = make(name)
    outputs = model(binary_batch[:4])
    assert outputs["reconstruction"].shape == (4, 28, 28, 1)
    assert outputs["latent_kl"].shape == (4,)
    assert np.all(np.asarray(outputs["latent_kl"]) >= 0)
    drawn = model.sample(5)
    assert drawn["images"].shape == (5, 28, 28, 1)
    assert drawn["canvases"].shape == (3, 5, 28, 28, 1)
    np.testing.assert_allclose(drawn["canvases"][-1], drawn["images"], atol=1e-6)
    assert drawn["write_windows"]["center_x"].shape == (3, 5)
    assert model.sample(2, steps=6)["canvases"].shape == (6, 2, 28, 28, 1)  # more steps than T


def test_dcrw_without_read_attention_encodes_once_and_samples_every_step(binary_batch):
    model = make("dcrw_no_read_attention")
    assert model.encode_once and not model.read_attention
    # One q(z | h_enc) for all steps: Lz is T times one step's KL.
    noise = np.zeros((2, 3, model.latent_dim), "float32")
    kl3 = model.reconstruct(binary_batch[:2], noise)["latent_kl"]
    clone = caps_zoo.create_model("dcrw_no_read_attention", steps=1)
    clone.set_weights(model.get_weights())
    kl1 = clone.reconstruct(binary_batch[:2], noise[:, :1])["latent_kl"]
    np.testing.assert_allclose(kl3, 3 * np.asarray(kl1), rtol=1e-5)


def test_draw_defaults_are_the_papers():
    model = caps_zoo.create_model("draw", steps=2)  # T = 64 by default; 2 to build fast
    assert caps_zoo.models.convolutional_recurrent_writer.DRAW_CONFIG["steps"] == 64
    assert (model.latent_dim, model.encoder_units, model.decoder_units) == (100, 256, 256)
    assert (model.read_size, model.write_size, model.encoder) == (2, 5, "lstm")
    dcrw = caps_zoo.create_model("dcrw", steps=2)
    assert (dcrw.read_size, dcrw.write_size, dcrw.encoder) == (7, 5, "cnn")


@pytest.mark.parametrize("name", ["draw", "dcrw"])
def test_loss_falls_on_a_small_real_batch(name, binary_batch):
    model = make(name)
    before = model.evaluate(binary_batch, batch_size=128, return_dict=True, verbose=0)
    history = model.fit(binary_batch, epochs=25, batch_size=128, verbose=0, shuffle=False)
    after = model.evaluate(binary_batch, batch_size=128, return_dict=True, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert set(after) == {"loss", "reconstruction_nll", "latent_kl"}
    assert after["loss"] == pytest.approx(after["reconstruction_nll"] + after["latent_kl"], rel=1e-4)
    assert after["loss"] < 0.75 * before["loss"]


def test_bad_inputs_say_what_was_expected():
    model = make("dcrw")
    with pytest.raises(ValueError, match=r"\(batch, 28, 28, 1\)"):
        model(np.zeros((2, 28, 28), "float32"))
    with pytest.raises(TypeError, match="binarize"):
        model(np.zeros((2, 28, 28, 1), "uint8"))
    with pytest.raises(ValueError, match=r"noise must be \(n, steps, 100\)"):
        model.generate(np.zeros((2, 3, 7), "float32"))
    with pytest.raises(ValueError, match="encoder"):
        caps_zoo.create_model("draw", encoder="gru")


def test_draw_recipe_trains_and_ships(tiny_mnist, scratch_saved_models, tmp_path, monkeypatch, capsys):
    import json
    import runpy
    import sys
    from pathlib import Path

    recipes = Path(__file__).resolve().parent.parent / "recipes"
    run_dir = tmp_path / "run"

    def recipe(epochs):
        argv = [str(recipes / "train_draw.py"), "--model", "dcrw", "--steps", "2", "--epochs", str(epochs),
                "--batch-size", "50", "--output-dir", str(run_dir), "--verbose", "0"]
        monkeypatch.setattr(sys, "argv", argv)
        runpy.run_path(argv[0], run_name="__main__")

    recipe(1)
    config = json.loads((run_dir / "config.json").read_text())
    assert config["binarize"] == "stochastic" and config["model_overrides"] == {"steps": 2}
    assert json.loads((run_dir / "metrics.json").read_text())["test"]["loss"] > 0
    assert '"latent_kl"' in capsys.readouterr().out

    ship = recipes / "ship_weights.py"
    monkeypatch.setattr(sys, "argv", [str(ship), "--run-dir", str(run_dir), "--command", "test",
                                      "--frechet-samples", "300"])
    runpy.run_path(str(ship), run_name="__main__")
    metadata = caps_zoo.load_metadata("dcrw")
    assert metadata["frechet"]["n_generated"] == 300 and metadata["frechet"]["frechet_distance"] > 0
    assert (tmp_path / "saved_models" / "dcrw" / "mnist.nearest_neighbours.png").stat().st_size > 5000
    assert metadata["model_overrides"] == {"steps": 2}
    assert "binarized 'fixed'" in metadata["data"]
    assert metadata["test_loss"] == pytest.approx(
        metadata["test_reconstruction_nll"] + metadata["test_latent_kl"], rel=1e-4)
    model = caps_zoo.load("dcrw")
    assert model.steps == 2
    bound = model.evaluate(data.load("mnist_sample", "test", binarize="fixed"), return_dict=True,
                           verbose=0)["loss"]
    assert bound == pytest.approx(metadata["sample_loss"], abs=2.0)  # z is sampled: a noisy bound


@pytest.mark.parametrize(
    "name, parameters", [("draw", 959_467), ("dcrw", 457_867), ("dcrw_no_read_attention", 1_019_494)]
)
def test_parameter_counts_in_the_readme(name, parameters):
    assert caps_zoo.create_model(name, steps=1).count_params() == parameters
