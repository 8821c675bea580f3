"""What the CV-VAE family does beyond the shared family checks: it learns on
real data, each GAN optimizer trains its own network alone, the adaptive
weight is VQGAN's, the discriminator waits for ``discriminator_start``, and
code usage is counted over the data."""

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


def _weights(variables):
    return [v.numpy().copy() for v in variables]


def _moved(before, variables):
    return [not np.array_equal(b, v.numpy()) for b, v in zip(before, variables)]


@pytest.mark.parametrize("frozen", ["optimizer", "discriminator_optimizer"])
def test_each_gan_optimizer_trains_its_own_network_alone(frozen, mnist_images):
    keras.utils.set_random_seed(2)
    model = caps_zoo.create_model("cvgan", discriminator_start=0, **SMALL)
    generator, discriminator = model.generator_variables(), model.discriminator_variables()
    assert {id(v) for v in generator}.isdisjoint({id(v) for v in discriminator})
    assert len(generator) + len(discriminator) == len(model.trainable_variables)
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
        g_terms, _ = waiting.generator_loss_terms(x, training=False)
        d_terms, _ = waiting.discriminator_loss_terms(x, training=False)
        started = step >= 2
        assert (np.abs(g_terms["generator_loss"]).max() > 0) == started
        assert (np.abs(d_terms["discriminator_loss"]).max() > 0) == started
        waiting.optimizer.iterations.assign_add(1)


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
