"""What the CV-VAE family does beyond the shared family checks: it learns on
real data, each GAN optimizer trains its own network alone, the adaptive
weight is VQGAN's, the discriminator waits for ``discriminator_start``,
code usage is counted over the data, and the models with codes sample from
a prior fitted after training (the others say why they cannot)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import caps_zoo
from caps_zoo import data, losses
from caps_zoo.layers import code_statistics

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "train_cvgan.py"
SMALL = {"encoder_config": {"channels": 8, "channel_multipliers": (1, 2)},
         "decoder_config": {"channels": 8, "channel_multipliers": (1, 2)}}


@pytest.fixture(scope="module")
def mnist_images():
    images, _ = data.load_arrays("mnist_sample", "test")
    return (images[:128].astype("float32") / 255.0)[..., None]


def test_cv_vae_reconstruction_loss_falls_on_real_digits(mnist_images):
    keras.utils.set_random_seed(1)
    model = caps_zoo.create_model("cv_vae", **SMALL)
    model.compile(optimizer=keras.optimizers.Adam(2e-3))
    before = model.evaluate(mnist_images, batch_size=64, verbose=0, return_dict=True)
    model.fit(mnist_images, epochs=3, batch_size=16, verbose=0)  # 24 steps: 0.26-0.30x on seeds 1, 2
    after = model.evaluate(mnist_images, batch_size=64, verbose=0, return_dict=True)
    assert after["l1_loss"] < 0.6 * before["l1_loss"], (before, after)
    assert after["gradient_difference_loss"] < before["gradient_difference_loss"]
    # Usage is counted over the whole evaluation, and agrees with the codes.
    codes = model.predict(mnist_images, batch_size=64, verbose=0)["codes"]
    expected = code_statistics(np.bincount(codes.ravel(), minlength=model.bottleneck.num_codes))
    assert after["code_perplexity"] == pytest.approx(expected["code_perplexity"], rel=1e-5)
    assert after["codes_used"] == pytest.approx(expected["codes_used"])


@pytest.mark.parametrize("name", ["cvgan", "vqgan"])
def test_gans_count_code_usage_over_the_whole_evaluation(name, mnist_images):
    # The table's codes used and perplexity of a GAN: its evaluate, as its
    # autoencoder's, counts every batch (two here), not the last one.
    model = caps_zoo.create_model(name, **SMALL)
    result = model.evaluate(mnist_images, batch_size=64, verbose=0, return_dict=True)
    codes = model.autoencoder.predict(mnist_images, batch_size=64, verbose=0)["codes"]
    expected = code_statistics(np.bincount(codes.ravel(), minlength=model.autoencoder.bottleneck.num_codes))
    assert result["code_perplexity"] == pytest.approx(expected["code_perplexity"], rel=1e-5)
    assert result["codes_used"] == pytest.approx(expected["codes_used"])
    again = model.evaluate(mnist_images[:64], batch_size=64, verbose=0, return_dict=True)  # reset between calls
    first = code_statistics(np.bincount(codes[:64].ravel(), minlength=model.autoencoder.bottleneck.num_codes))
    assert again["code_perplexity"] == pytest.approx(first["code_perplexity"], rel=1e-5)


def _weights(variables):
    return [v.numpy().copy() for v in variables]


def _moved(before, variables):
    return [not np.array_equal(b, v.numpy()) for b, v in zip(before, variables)]


@pytest.mark.parametrize("frozen", ["optimizer", "discriminator_optimizer"])
def test_each_gan_optimizer_trains_its_own_network_alone(frozen, mnist_images):
    keras.utils.set_random_seed(2)
    model = caps_zoo.create_model("cvgan", discriminator_start=0, **SMALL)
    generator, discriminator = model.generator_variables(), model.discriminator_variables()
    prior = model.autoencoder.prior.trainable_variables  # fitted apart, after training (fit_prior)
    assert {id(v) for v in generator}.isdisjoint({id(v) for v in discriminator})
    assert {id(v) for v in generator + discriminator}.isdisjoint({id(v) for v in prior})
    assert len(generator) + len(discriminator) + len(prior) == len(model.trainable_variables)
    # The capsule layer's weights are the generator's (the public code's
    # optimizer left them out).
    assert any("bottleneck" in v.path for v in generator)
    rates = {"optimizer": 1e-3, "discriminator_optimizer": 1e-3, frozen: 0.0}
    model.compile(optimizer=keras.optimizers.SGD(rates["optimizer"]),
                  discriminator_optimizer=keras.optimizers.SGD(rates["discriminator_optimizer"]))
    g_before, d_before = _weights(generator), _weights(discriminator)
    model.train_step(tf.constant(mnist_images[:8]))  # eager: tracing the step costs ~20 s
    g_moved, d_moved = _moved(g_before, generator), _moved(d_before, discriminator)
    if frozen == "optimizer":
        assert not any(g_moved) and any(d_moved)
    else:
        assert not any(d_moved) and any(g_moved)


def test_adaptive_weight_is_vqgans_and_waits_for_the_discriminator(mnist_images):
    keras.utils.set_random_seed(3)
    model = caps_zoo.create_model("cvgan", discriminator_start=0, **SMALL)
    x = tf.constant(mnist_images[:8])
    terms, diagnostics = model.generator_loss_terms(x, training=False)
    kernel = model.autoencoder.decoder.last_layer.kernel
    with tf.GradientTape(persistent=True) as tape:
        reconstruction = model(x, training=False)["reconstruction"]
        l1 = tf.reduce_mean(tf.abs(x - reconstruction))
        gan = -tf.reduce_mean(model.discriminator(reconstruction, training=False))
    expected = 0.8 * tf.norm(tape.gradient(l1, kernel)) / (tf.norm(tape.gradient(gan, kernel)) + 1e-4)
    np.testing.assert_allclose(diagnostics["adaptive_weight"], np.full(8, expected.numpy()), rtol=1e-5)
    np.testing.assert_allclose(np.mean(terms["generator_loss"]), expected.numpy() * gan.numpy(), rtol=1e-4)
    np.testing.assert_allclose(terms["l1_loss"], losses.l1_reconstruction(x, reconstruction), rtol=1e-6)

    waiting = caps_zoo.create_model("cvgan", discriminator_start=2, **SMALL)
    for step in range(3):
        # Training waits for the generator's steps; an evaluation counts
        # the GAN terms at any step (a model loaded from a weights file has
        # 0 steps and must not report them as 0).
        for training, counted in ((True, step >= 2), (False, True)):
            g_terms, _ = waiting.generator_loss_terms(x, training=training)
            d_terms, _ = waiting.discriminator_loss_terms(x, training=training)
            assert (np.abs(g_terms["generator_loss"]).max() > 0) == counted
            assert (np.abs(d_terms["discriminator_loss"]).max() > 0) == counted
        waiting.optimizer.iterations.assign_add(1)


def test_a_gan_loaded_from_weights_evaluates_its_gan_terms(mnist_images, tmp_path):
    keras.utils.set_random_seed(5)
    model = caps_zoo.create_model("cvgan", discriminator_start=1, **SMALL)
    model.compile()
    model.fit(mnist_images[:64], epochs=1, batch_size=16, verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 4
    path = caps_zoo.weights.save_weights(model, str(tmp_path / "cvgan.weights.npz"))
    loaded = caps_zoo.load("cvgan", weights=path, discriminator_start=1, **SMALL)
    loaded.compile()
    assert int(loaded.optimizer.iterations.numpy()) == 0
    expected = model.evaluate(mnist_images[:32], batch_size=16, verbose=0, return_dict=True)
    measured = loaded.evaluate(mnist_images[:32], batch_size=16, verbose=0, return_dict=True)
    assert abs(measured["discriminator_loss"]) > 0 and abs(measured["generator_loss"]) > 0
    for name in ("loss", "discriminator_loss", "generator_loss", "l1_loss"):
        np.testing.assert_allclose(measured[name], expected[name], rtol=1e-4, err_msg=name)


# About 90 s each on this project's CPUs: the default run keeps the capsule
# case (the code prior and the pose Gaussian); the VQ case, the code prior
# alone, runs with -m slow.
@pytest.mark.parametrize("name", [pytest.param("vq_vae", marks=pytest.mark.slow), "cv_vae"])
def test_fit_prior_then_sample_decodes_codes_and_survives_a_round_trip(name, mnist_images, tmp_path):
    keras.utils.set_random_seed(4)
    model = caps_zoo.create_model(name, **SMALL)
    model.compile(optimizer=keras.optimizers.Adam(2e-3))
    assert model.can_sample
    with pytest.raises(ValueError, match="has not been fitted: call fit_prior"):
        model.sample(2)
    # Training the autoencoder leaves the prior alone.
    prior_before = _weights(model.prior.trainable_variables)
    others = model.trained_variables()
    others_before = _weights(others)
    model.fit(mnist_images, epochs=1, batch_size=32, verbose=0)
    assert not any(_moved(prior_before, model.prior.trainable_variables))
    assert any(_moved(others_before, others))
    # The code maps (and parents) of images decode to their reconstructions.
    encoded = model.encode_codes(mnist_images[:16], batch_size=8)
    assert encoded["codes"].shape == (16, *model.code_map_shape) and ("parents" in encoded) == (name == "cv_vae")
    np.testing.assert_allclose(model.decode_codes(**encoded), model.clipped_reconstruction(mnist_images[:16]),
                               atol=1e-5)

    history = model.fit_prior(mnist_images, epochs=3, batch_size=32, validation_images=mnist_images[:32],
                              verbose=0).history
    assert history["code_nll"][-1] < history["code_nll"][0] and "val_code_nll" in history
    samples = model.sample(6, seed=0)
    assert samples["images"].shape == (6, 28, 28, 1) and samples["codes"].shape == (6, *model.code_map_shape)
    assert samples["images"].min() >= 0 and samples["images"].max() <= 1
    np.testing.assert_array_equal(model.sample(6, seed=0)["images"], samples["images"])
    if name == "vq_vae":  # one codebook for every image: the codes alone decode
        np.testing.assert_allclose(model.decode_codes(samples["codes"]), samples["images"], atol=1e-6)
    else:  # the poses come from the fitted Gaussian: mean and spread of the training parents
        np.testing.assert_allclose(model.pose_prior.mean.numpy(),
                                   model.encode_codes(mnist_images)["parents"].reshape(128, -1).mean(0),
                                   atol=1e-5)

    model.save(tmp_path / "model.keras")
    restored = keras.saving.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(restored.sample(6, seed=0)["images"], samples["images"], atol=1e-5)


@pytest.mark.parametrize("name", ["continuous_ae", "cv_vae_reference"])
def test_models_without_codes_say_why_they_cannot_sample(name, mnist_images):
    model = caps_zoo.create_model(name, **SMALL)
    assert not model.can_sample and model.prior is None
    for call in (lambda: model.sample(2), lambda: model.fit_prior(mnist_images),
                 lambda: model.encode_codes(mnist_images)):
        with pytest.raises(ValueError, match="assigns no discrete codes"):
            call()
    with pytest.raises(ValueError, match="prior_config is for bottlenecks with codes"):
        caps_zoo.create_model(name, prior_config={"filters": 8}, **SMALL)


def test_bad_family_arguments_are_refused():
    with pytest.raises(ValueError, match="bottleneck must be one of"):
        caps_zoo.create_model("cv_vae", bottleneck="gumbel")
    with pytest.raises(ValueError, match="the continuous bottleneck takes no arguments"):
        caps_zoo.create_model("continuous_ae", bottleneck_config={"num_codes": 4})
    with pytest.raises(ValueError, match="discriminator_start must be >= 0"):
        caps_zoo.create_model("cvgan", discriminator_start=-1, **SMALL)
    with pytest.raises(ValueError, match="padded_size must exceed the image by an even number"):
        caps_zoo.create_model("cv_vae", padded_size=31)


def _recipe(*argv):
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, str(RECIPE), *argv], capture_output=True, text=True,
                          env=environment, timeout=1200)


def test_recipe_refuses_discriminator_start_for_an_autoencoder(tmp_path):
    result = _recipe("--model", "cv_vae", "--discriminator-start", "5", "--output-dir", str(tmp_path / "run"))
    assert result.returncode != 0
    assert "--discriminator-start is for the GANs (cvgan, vqgan), not cv_vae." in result.stderr
    assert not (tmp_path / "run").exists()


def test_recipe_trains_with_tamings_adam_betas():
    import runpy

    from caps_zoo import training

    recipe = runpy.run_path(str(RECIPE))  # its functions, without running main
    args = recipe["parse_args"](["--model", "cv_vae"])
    config = training.config_from_args(args)
    assert (config.adam_beta_1, config.adam_beta_2) == (0.5, 0.9)
    optimizer = training.build_model(config).optimizer
    assert (float(optimizer.beta_1), float(optimizer.beta_2)) == (0.5, 0.9)


@pytest.mark.slow
def test_recipe_trains_a_gan_and_selects_on_validation_l1(tmp_path):
    run = tmp_path / "cvgan"
    result = _recipe("--model", "cvgan", "--discriminator-start", "1", "--validation", "--validation-size", "64",
                     "--train-limit", "64", "--batch-size", "32", "--epochs", "1", "--verbose", "2",
                     "--output-dir", str(run))
    assert result.returncode == 0, result.stderr[-2000:]
    best = json.loads((run / "best.json").read_text())
    assert best["metric"] == "val_l1_loss"
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 < metrics["validation"]["l1_loss"] < 1


@pytest.mark.slow
def test_shipping_a_vq_vae_fits_its_prior_and_the_shipped_model_samples(tiny_mnist, scratch_saved_models,
                                                                        tmp_path, monkeypatch, capsys):
    import dataclasses
    import runpy

    from caps_zoo import registry
    run = tmp_path / "vq_vae"
    monkeypatch.setattr(sys, "argv", [str(RECIPE), "--model", "vq_vae", "--validation", "--validation-size",
                                      "64", "--batch-size", "64", "--epochs", "1", "--verbose", "0",
                                      "--output-dir", str(run)])
    runpy.run_path(str(RECIPE), run_name="__main__")
    # No pretrained tag is declared until weights ship: declare one here.
    spec = registry.get_spec("vq_vae")
    monkeypatch.setitem(registry._REGISTRY, "vq_vae", dataclasses.replace(spec, pretrained=("mnist",)))
    ship = RECIPE.parent / "ship_weights.py"
    monkeypatch.setattr(sys, "argv", [str(ship), "--run-dir", str(run), "--command", "test",
                                      "--prior-epochs", "2", "--frechet-samples", "64"])
    runpy.run_path(str(ship), run_name="__main__")
    metadata = json.loads((scratch_saved_models / "vq_vae" / "mnist.json").read_text())
    prior = metadata["prior"]
    assert prior["epochs"] == 2 and prior["train_images"] == 192
    assert len(prior["code_nll_per_epoch"]) == len(prior["validation_code_nll_per_epoch"]) == 2
    assert metadata["frechet"]["n_generated"] == 64 and metadata["frechet"]["frechet_distance"] > 0
    assert (scratch_saved_models / "vq_vae" / "mnist.samples.png").stat().st_size > 5000
    quality = metadata["test_reconstruction"]
    assert 0 < quality["mse"] < 1 and quality["psnr_db"] > 0 and -1 < quality["ssim"] <= 1
    assert quality["n_images"] == 128 and quality["frechet"]["frechet_distance"] > 0
    for figure in ("reconstructions", "codes"):
        assert (scratch_saved_models / "vq_vae" / f"mnist.{figure}.png").stat().st_size > 5000
    assert metadata["parameters"] == caps_zoo.create_model("vq_vae").count_params()
    model = caps_zoo.load("vq_vae")
    samples = model.sample(4, seed=0)["images"]  # the prior shipped inside the weights
    assert samples.shape == (4, 28, 28, 1) and np.isfinite(samples).all()

    # Measured again with the shipped prior kept: the same prior, not refitted.
    again = [str(ship), "--run-dir", str(run), "--command", "test", "--frechet-samples", "64", "--keep-prior"]
    monkeypatch.setattr(sys, "argv", again)
    with pytest.raises(SystemExit):  # refused without --replace: nothing is measured
        runpy.run_path(str(ship), run_name="__main__")
    assert "Pass --replace" in capsys.readouterr().err
    monkeypatch.setattr(sys, "argv", [*again, "--replace"])
    runpy.run_path(str(ship), run_name="__main__")
    remeasured = json.loads((scratch_saved_models / "vq_vae" / "mnist.json").read_text())
    assert remeasured["prior"]["code_nll_per_epoch"] == prior["code_nll_per_epoch"]
    assert "not refitted" in remeasured["prior"]["kept"]
    assert remeasured["test_l1_loss"] == pytest.approx(metadata["test_l1_loss"], abs=1e-6)
    kept = caps_zoo.load("vq_vae")
    assert any(variable is kept.prior_fitted for variable in kept.prior_variables())
    for before, after in zip(model.prior_variables(), kept.prior_variables()):
        np.testing.assert_array_equal(before.numpy(), after.numpy())
    # A shipped prior fitted on another network's codes is refused before
    # anything is replaced (here the run's selected weights changed since).
    from caps_zoo.files import sha256_of
    variable = kept.trained_variables()[0]
    variable.assign(variable + 1.0)
    caps_zoo.weights.save_weights(kept, str(run / "best.weights.npz"))
    best = json.loads((run / "best.json").read_text())
    (run / "best.json").write_text(json.dumps({**best, "weights_sha256": sha256_of(run / "best.weights.npz")}))
    capsys.readouterr()
    with pytest.raises(SystemExit):
        runpy.run_path(str(ship), run_name="__main__")
    assert "was not shipped from this run" in capsys.readouterr().err
    assert json.loads((scratch_saved_models / "vq_vae" / "mnist.json").read_text()) == remeasured
