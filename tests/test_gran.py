"""GRAN (RecurrentAdversarialNetwork): the recurrence, losses, training, serialization."""

import json
import runpy
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import caps_zoo
from caps_zoo import data, losses, training
from conftest import Killed, perturb_moving_statistics

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


@pytest.fixture(scope="module")
def real_images(mnist_sample):
    """512 real MNIST test images in [0, 1] (shipped with the package)."""
    return mnist_sample[0][:512]


def make(name="gran3", **overrides):
    keras.utils.set_random_seed(0)
    return caps_zoo.create_model(name, **overrides)


def noise_for(model, n, steps=None, seed=0):
    shape = (n, *model.generator.noise_shape(steps))
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


@pytest.mark.parametrize("name, steps", [("gran1", 1), ("gran3", 3), ("gran5", 5)])
@pytest.mark.parametrize("noise_mode", ["once", "every_step"])
def test_shapes_for_every_t_and_noise_mode(name, steps, noise_mode):
    model = make(name, noise_mode=noise_mode)
    assert model.steps == steps
    expected_noise = (60,) if noise_mode == "once" else (steps, 60)
    assert model.generator.noise_shape() == expected_noise
    drawn = model.sample(4, seed=1)
    assert drawn["images"].shape == (4, 28, 28, 1)
    assert drawn["canvases"].shape == (steps, 4, 28, 28, 1)
    np.testing.assert_allclose(drawn["canvases"][-1], drawn["images"], atol=1e-6)
    assert 0 < drawn["images"].min() and drawn["images"].max() < 1  # a sigmoid
    assert model.discriminate(drawn["images"]).shape == (4,)


def test_sampling_may_run_more_steps_than_training():
    model = make("gran3")
    assert model.sample(2, steps=7)["canvases"].shape == (7, 2, 28, 28, 1)
    every = make("gran3", noise_mode="every_step")
    assert every.sample(2, steps=9)["canvases"].shape == (9, 2, 28, 28, 1)
    with pytest.raises(ValueError, match="no canvas encoder"):
        make("gran1").sample(2, steps=3)


def test_mnist_defaults_are_the_papers():
    model = make("gran3")
    generator = model.generator
    assert generator.filters == (80, 40) and generator.kernel_size == 5 and model.latent_dim == 60
    assert [conv.filters for conv in generator.decoder_convs] == [40, 1]
    assert generator.start_shape == (7, 7, 80)
    convs = [layer for layer in model.discriminator.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [(c.filters, c.kernel_size, c.strides) for c in convs] == [(40, (5, 5), (2, 2)), (80, (5, 5), (2, 2))]


def test_t1_is_a_single_decoder_pass():
    """GRAN1: C = sigmoid(f([tanh(W z + b), 0])), with no canvas encoder g."""
    model = make("gran1")
    generator = model.generator
    assert generator.encoder_dense is None and not generator.encoder_convs
    z = noise_for(model, 6)
    h_z = np.tanh(z @ generator.noise_projection.kernel.numpy() + generator.noise_projection.bias.numpy())
    assert generator.decoder_dense.kernel.shape == (60, 7 * 7 * 80)  # h_z alone: no h_c
    x = generator.decoder_dense(h_z)
    x = tf.reshape(x, (-1, 7, 7, 80))
    for conv, norm in zip(generator.decoder_convs, generator.decoder_norms[0]):
        x = conv(tf.nn.relu(norm(x, training=False)))
    np.testing.assert_allclose(model.generate(z), tf.sigmoid(x), atol=1e-6)


def test_canvas_is_the_sigmoid_of_the_summed_updates():
    """eq. 9, C = sigmoid(sum_t Delta C_t), with Delta C_t = f([h_z,t, g(Delta C_{t-1})])
    built step by step from the layers; the canvas sequence is its running sum."""
    model = make("gran3", noise_mode="every_step")
    perturb_moving_statistics(model)
    generator = model.generator
    z = noise_for(model, 3)
    total, h_c, update = 0.0, np.zeros((3, 60), "float32"), None
    for step in range(3):
        if step:
            h_c = generator._encode(update, step, training=False)
        update = generator._update(generator.noise_projection(z[:, step]), h_c, step, training=False)
        total = total + update
    drawn = generator(z, return_sequence=True)
    np.testing.assert_allclose(drawn["images"], tf.sigmoid(total), atol=1e-6)
    np.testing.assert_allclose(drawn["canvases"][-1], drawn["images"], atol=1e-6)


def test_each_update_reads_the_previous_one_through_g():
    """With noise at every step, z_1 reaches Delta C_2 only through
    h_c,2 = g(Delta C_1); z_3 changes nothing before step 3."""
    model = make("gran3", noise_mode="every_step")

    def updates(noise):
        canvases = model.generator(noise, return_sequence=True)["canvases"].numpy().astype("float64")
        logits = np.log(canvases / (1 - canvases))
        return np.diff(np.concatenate([np.zeros_like(logits[:1]), logits]), axis=0)

    z = noise_for(model, 3)
    base = updates(z)
    assert np.all(np.abs(base).reshape(3, -1).max(axis=1) > 1e-3)  # every step draws
    last = z.copy()
    last[:, 2] += 1.0
    changed = updates(last)
    np.testing.assert_allclose(changed[:2], base[:2], atol=1e-4)
    assert np.abs(changed[2] - base[2]).max() > 1e-3
    first = z.copy()
    first[:, 0] += 1.0
    # Small at a random init, but far above float32 rounding (~1e-7) ...
    assert np.abs(updates(first)[1] - base[1]).max() > 1e-5
    # ... and it is g's doing: with g's output fixed at 0, z_1 no longer reaches Delta C_2.
    dense = model.generator.encoder_dense
    dense.kernel.assign(np.zeros(dense.kernel.shape, "float32"))
    dense.bias.assign(np.zeros(dense.bias.shape, "float32"))
    base = updates(z)
    np.testing.assert_allclose(updates(first)[1], base[1], atol=1e-6)


def test_adversarial_losses_equal_their_closed_forms():
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(2, 16)).astype("float32") * 4
    d_real, d_fake = 1 / (1 + np.exp(-real.astype("float64"))), 1 / (1 + np.exp(-fake.astype("float64")))
    np.testing.assert_allclose(losses.discriminator_loss(real, fake),
                               -np.log(d_real) - np.log(1 - d_fake), rtol=1e-5)
    np.testing.assert_allclose(losses.generator_loss(fake), -np.log(d_fake), rtol=1e-5)
    # Finite where probabilities round to 0 or 1.
    assert np.isfinite(losses.discriminator_loss(np.array([-200.0]), np.array([200.0]))).all()


def test_a_short_real_data_run_moves_both_losses_and_both_networks(real_images):
    model = make("gran3")
    start_d = [v.numpy().copy() for v in model.discriminator.trainable_variables]
    start_g = [v.numpy().copy() for v in model.generator.trainable_variables]
    dataset = tf.data.Dataset.from_tensor_slices(real_images).batch(64)
    history = model.fit(dataset, epochs=3, verbose=0, shuffle=False).history
    # A random D starts at about 2 log 2 = 1.39 nats; it learns to tell real from G's.
    assert history["discriminator_loss"][0] < 1.6
    assert history["discriminator_loss"][-1] < history["discriminator_loss"][0] - 0.1
    assert history["real_accuracy"][-1] > 0.8 and history["fake_accuracy"][-1] > 0.8
    assert abs(history["generator_loss"][-1] - history["generator_loss"][0]) > 0.1
    steps = 3 * len(dataset)
    assert int(model.optimizer.iterations) == steps and int(model.discriminator_optimizer.iterations) == steps
    # Every variable of both networks moved (g included: T = 3 uses it).
    for before, variable in zip(start_d + start_g,
                                model.discriminator.trainable_variables + model.generator.trainable_variables):
        assert not np.allclose(before, variable.numpy()), variable.path


def test_each_optimizer_trains_only_its_network(real_images):
    model = make("gran1")
    model.compile(optimizer=keras.optimizers.Adam(0.0), discriminator_optimizer=keras.optimizers.Adam(1e-3))
    generator_before = [v.numpy().copy() for v in model.generator.trainable_variables]
    discriminator_before = [v.numpy().copy() for v in model.discriminator.trainable_variables]
    model.fit(real_images[:128], epochs=1, batch_size=64, verbose=0)
    for before, variable in zip(generator_before, model.generator.trainable_variables):
        np.testing.assert_array_equal(before, variable.numpy())
    assert any(not np.allclose(b, v.numpy()) for b, v in zip(discriminator_before,
                                                             model.discriminator.trainable_variables))
    # And the converse: D frozen, G moves.
    model.compile(optimizer=keras.optimizers.Adam(1e-3), discriminator_optimizer=keras.optimizers.Adam(0.0))
    discriminator_before = [v.numpy().copy() for v in model.discriminator.trainable_variables]
    model.fit(real_images[:128], epochs=1, batch_size=64, verbose=0)
    for before, variable in zip(discriminator_before, model.discriminator.trainable_variables):
        np.testing.assert_array_equal(before, variable.numpy())
    assert any(not np.allclose(b, v.numpy()) for b, v in zip(generator_before, model.generator.trainable_variables))


def test_every_replica_draws_its_own_noise():
    """A SeedGenerator is copied to every replica; its noise must not be."""
    from caps_zoo.models.builder import replica_normal

    strategy = training.make_strategy("mirrored")
    with strategy.scope():
        seed = keras.random.SeedGenerator(3)
    values = strategy.experimental_local_results(strategy.run(lambda: replica_normal((4, 5), seed)))
    assert len(values) == 2 and np.abs(values[0].numpy() - values[1].numpy()).max() > 0.1
    again = strategy.experimental_local_results(strategy.run(lambda: replica_normal((4, 5), seed)))
    assert np.abs(again[0].numpy() - values[0].numpy()).max() > 0.1  # new noise every call


def test_training_options_that_do_not_fit_the_model_are_refused():
    with pytest.raises(ValueError, match="discriminator_learning_rate is for adversarial models"):
        training.build_model(training.TrainConfig(model="capsnet", discriminator_learning_rate=1e-4))
    with pytest.raises(ValueError, match="sample_grids needs a generator"):
        training.build_model(training.TrainConfig(model="capsnet", sample_grids=True))
    # A GAN always gets a discriminator optimizer from the config (default: G's rate).
    model = training.build_model(training.TrainConfig(model="gran1", learning_rate=3e-4, adam_beta_1=0.5))
    assert model.discriminator_optimizer.learning_rate.numpy() == pytest.approx(3e-4)
    assert model.discriminator_optimizer.beta_1 == pytest.approx(0.5)


def test_bad_inputs_say_what_was_expected():
    model = make("gran3")
    with pytest.raises(ValueError, match=r"takes noise of shape \(batch, 60\)"):
        model.generate(np.zeros((2, 3, 60), "float32"))
    every = make("gran3", noise_mode="every_step")
    with pytest.raises(ValueError, match=r"\(batch, steps, 60\)"):
        every.generate(np.zeros((2, 60), "float32"))
    with pytest.raises(ValueError, match=r"expects images of shape \(batch, 28, 28, 1\)"):
        model.discriminate(np.zeros((2, 28, 28), "float32"))
    with pytest.raises(TypeError, match="float images"):
        model.discriminate(np.zeros((2, 28, 28, 1), "uint8"))
    with pytest.raises(ValueError, match="noise_mode must be one of"):
        caps_zoo.create_model("gran3", noise_mode="sometimes")
    with pytest.raises(ValueError, match="divisible by"):
        caps_zoo.create_model("gran3", image_shape=(30, 30, 1))


class OptimizerSteps(keras.callbacks.Callback):
    """Records both optimizers' step counts when training ends."""

    def on_train_end(self, logs=None):
        self.steps = (int(self.model.optimizer.iterations), int(self.model.discriminator_optimizer.iterations))


def test_a_killed_gan_run_resumes_with_both_optimizers(tiny_mnist, kill_at_epoch, tmp_path):
    config = training.TrainConfig(
        model="gran1", epochs=2, batch_size=64, output_dir=str(tmp_path / "run"), shift_pixels=0,
        learning_rate=2e-4, discriminator_learning_rate=1e-4, adam_beta_1=0.5, verbose=0,
    )
    with pytest.raises(Killed):
        training.train(config, callbacks=[kill_at_epoch(1)])
    steps = OptimizerSteps()
    training.train(config, callbacks=[steps])
    # 256 images in batches of 64: 4 steps an epoch; the backup restored both optimizers.
    assert steps.steps == (8, 8)
    log = (tmp_path / "run" / "log.csv").read_text().splitlines()
    header, rows = log[0].split(","), [line.split(",") for line in log[1:]]
    assert [row[0] for row in rows] == ["0", "1"]
    for epoch, row in enumerate(rows):  # both decay by TrainConfig's 0.9 per epoch
        assert float(row[header.index("learning_rate")]) == pytest.approx(2e-4 * 0.9**epoch)
        assert float(row[header.index("discriminator_learning_rate")]) == pytest.approx(1e-4 * 0.9**epoch)


def test_gran_recipe_trains_measures_and_ships(tiny_mnist, scratch_saved_models, tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    argv = [str(RECIPES / "train_gran.py"), "--model", "gran3", "--noise-mode", "every_step",
            "--epochs", "1", "--batch-size", "64", "--frechet-samples", "300",
            "--output-dir", str(run_dir), "--verbose", "0"]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(argv[0], run_name="__main__")
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model_overrides"] == {"noise_mode": "every_step"}
    assert config["adam_beta_1"] == 0.5 and config["shift_pixels"] == 0
    assert (run_dir / "samples" / "epoch_001.png").stat().st_size > 5000
    results = json.loads((run_dir / "metrics.json").read_text())
    assert set(results["test"]) == {"loss", "discriminator_loss", "generator_loss", "real_accuracy", "fake_accuracy"}
    assert results["frechet"]["n_generated"] == 300 and results["frechet"]["frechet_distance"] > 0
    assert "capsnet" in results["frechet"]["feature_classifier"]
    assert '"frechet_distance"' in capsys.readouterr().out

    ship = RECIPES / "ship_weights.py"
    monkeypatch.setattr(sys, "argv", [str(ship), "--run-dir", str(run_dir), "--command", "test",
                                      "--frechet-samples", "300"])
    runpy.run_path(str(ship), run_name="__main__")
    metadata = json.loads((tmp_path / "saved_models" / "gran3" / "mnist.json").read_text())
    assert metadata["model_overrides"] == {"noise_mode": "every_step"}
    assert 0 <= metadata["sample_real_accuracy"] <= 1 and metadata["frechet"]["frechet_distance"] > 0
    for figure in ("samples", "nearest_neighbours"):
        assert (tmp_path / "saved_models" / "gran3" / f"mnist.{figure}.png").stat().st_size > 5000
    model = caps_zoo.load("gran3")  # the shipped tag, with the run's noise mode from its metadata
    assert model.noise_mode == "every_step"
    real = model.evaluate(data.load("mnist_sample", "test", batch_size=250), return_dict=True, verbose=0)
    assert real["real_accuracy"] == pytest.approx(metadata["sample_real_accuracy"], abs=2e-3)


@pytest.mark.parametrize("name, parameters", [("gran1", 405_622), ("gran3", 959_002), ("gran5", 960_922)])
def test_parameter_counts_in_the_readme(name, parameters):
    assert caps_zoo.create_model(name).count_params() == parameters
