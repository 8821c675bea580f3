"""RCN (RecurrentCapsuleNetwork): shapes, its margin term, gradients into the
capsule encoder, training on real data. Round trips, exports, mirrored loss
and every-variable gradients are in test_model_families.py."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import caps_zoo
from caps_zoo import data, losses


@pytest.fixture(scope="module")
def labelled_binary():
    """128 real MNIST test images (fixed binarization) and their labels."""
    images, labels = data.load_arrays("mnist_sample", "test")
    images = data.binarize_fixed((images[:128].astype("float32") / 255.0)[..., None])
    return images, labels[:128].astype("int32")


def make(**overrides):
    keras.utils.set_random_seed(0)
    return caps_zoo.create_model("rcn", **{"steps": 2, **overrides})


@pytest.mark.parametrize("steps", [1, 3])
def test_shapes_for_several_t(steps, labelled_binary):
    images = labelled_binary[0][:4]
    model = make(steps=steps)
    outputs = model(images)
    assert outputs["scores"].shape == (4, 10) and outputs["poses"].shape == (4, 10, 16)
    assert outputs["reconstruction"].shape == (4, 28, 28, 1)
    assert outputs["latent_kl"].shape == (4,) and np.all(np.asarray(outputs["latent_kl"]) >= 0)
    drawn = model.sample(3)
    assert drawn["canvases"].shape == (steps, 3, 28, 28, 1)
    assert drawn["write_boxes"].shape == (steps, 3, 4)
    np.testing.assert_allclose(drawn["canvases"][-1], drawn["images"], atol=1e-6)
    assert model.sample(2, steps=steps + 2)["canvases"].shape == (steps + 2, 2, 28, 28, 1)
    classified = model.classify(images)
    assert classified["classes"].dtype == tf.int64
    # The capsule encoder is deterministic: classify gives call's scores.
    np.testing.assert_allclose(classified["scores"], outputs["scores"], atol=1e-6)


def test_defaults_are_what_the_docstring_says():
    model = caps_zoo.create_model("rcn")
    encoder = model.capsule_encoder
    assert [c.filters for c in encoder.convs] == [256] and encoder.convs[0].kernel_size == (5, 5)
    assert encoder.primary_caps.conv.filters == 128  # the paper's second 5x5 convolution
    assert encoder.primary_caps.conv.kernel_size == (5, 5)
    assert encoder.compute_output_shape((None, 28, 28, 1)) == (None, 10, 16)
    assert encoder.primary_caps.compute_output_shape((None, 24, 24, 256)) == (None, 1600, 8)
    decoder = model.capsule_decoder
    assert [c.filters for c in decoder.convs] == [128, 256]  # the paper's deconvolutions
    assert tuple(decoder.feature_shape((None, 3, 3, 32))) == (None, 7, 7, 256)
    assert decoder.primary_caps.compute_output_shape((None, 7, 7, 256)) == (None, 72, 8)
    assert (model.steps, model.latent_dim, model.encoder_units, model.decoder_units) == (10, 100, 256, 256)
    assert model.loss_term_weights() == {"margin_loss": 100.0}
    assert model.decoder_cell.kernel.shape[0] == 160 + 100  # decoder capsules and z_t
    literal = caps_zoo.create_model("rcn", decoder_reads_z=False, steps=1)
    assert literal.decoder_cell.kernel.shape[0] == 160  # the capsules alone


def test_capsules_reach_the_decoder_lstm_at_initialisation():
    """z must get through the per-step capsule decoder with a usable signal:
    with a 1x1 map and Keras' he_normal on the transposed convolutions the
    capsules had length 0.007 and training lost z (posterior collapse)."""
    model = make()
    z = keras.random.normal((256, model.latent_dim), seed=0)
    with tf.GradientTape() as tape:
        tape.watch(z)
        decoder_input = model.decoder_step_input(z, training=False)
        np.testing.assert_array_equal(decoder_input[:, 160:], z)  # z_t itself, beside the capsules
        capsules = tf.reshape(decoder_input[:, :160], (256, 10, 16))
        lengths = tf.norm(capsules, axis=-1)
        total = tf.reduce_sum(lengths)
    assert 0.05 < float(tf.reduce_mean(lengths)) < 0.9
    assert float(tf.reduce_mean(tf.math.reduce_std(lengths, axis=0))) > 0.01  # depends on z
    assert float(tf.reduce_mean(tf.abs(tape.gradient(total, z)))) > 1e-2


def test_transposed_convolutions_keep_the_signal_scale():
    """He initialisation by the real fan-in of a transposed convolution's
    outputs (k*k*inputs), not Keras' reading of it (k*k*filters: 8x too
    small a variance for 16 inputs and 128 filters)."""
    from caps_zoo.layers import CapsuleStack

    stack = CapsuleStack(conv_filters=(128,), conv_kernel_sizes=(3,), conv_transpose=True,
                         primary_kernel_size=3, routing_capsules=((4, 4),))
    x = keras.random.normal((8, 24, 24, 16), seed=1)
    stack.build(x.shape)
    h = stack.convs[0](x)[:, 2:-2, 2:-2]  # outputs that see a full k x k window
    # He keeps E[h^2] = E[x^2] through the ReLU.
    ratio = float(tf.reduce_mean(tf.square(h))) / float(tf.reduce_mean(tf.square(x)))
    assert 0.7 < ratio < 1.4, ratio


def test_margin_term_is_the_capsule_loss_of_the_encoder_capsules(labelled_binary):
    images, labels = labelled_binary[0][:8], labelled_binary[1][:8]
    model = make()
    outputs, terms = model.forward_with_loss_terms(images, labels, training=False)
    lengths = np.linalg.norm(np.asarray(outputs["poses"], "float64"), axis=-1)
    targets = np.eye(10)[labels]
    expected = np.sum(targets * np.maximum(0, 0.9 - lengths) ** 2
                      + 0.5 * (1 - targets) * np.maximum(0, lengths - 0.1) ** 2, axis=-1)
    np.testing.assert_allclose(terms["margin_loss"], expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(terms["reconstruction_nll"],
                               losses.bernoulli_nll_nats(images, outputs["canvas_logits"]), rtol=1e-6)
    results = model.evaluate(images, labels, return_dict=True, verbose=0)
    assert results["loss"] == pytest.approx(
        100.0 * results["margin_loss"] + results["reconstruction_nll"] + results["latent_kl"], rel=1e-4)


def test_both_terms_train_the_capsule_encoder(labelled_binary):
    images, labels = labelled_binary[0][:8], labelled_binary[1][:8]
    model = make()
    variables = model.capsule_encoder.trainable_variables
    with tf.GradientTape(persistent=True) as tape:
        _, terms = model.forward_with_loss_terms(images, labels, training=True)
        margin = tf.reduce_mean(terms["margin_loss"])
        bound = tf.reduce_mean(terms["reconstruction_nll"] + terms["latent_kl"])
    for name, loss in (("margin", margin), ("bound", bound)):
        gradients = tape.gradient(loss, variables)
        for variable, gradient in zip(variables, gradients):
            assert gradient is not None and np.any(np.asarray(gradient) != 0), (name, variable.path)


def test_without_read_images_the_encoder_reads_capsules_and_h_dec_only(labelled_binary):
    model = make(read_images=False)
    assert model.reader is None
    # Encoder LSTM input: 10 x 16 capsules + 256 decoder units.
    assert model.encoder_cell.kernel.shape[0] == 160 + 256
    with_reading = make()
    assert with_reading.encoder_cell.kernel.shape[0] == 160 + 2 * 5 * 5 + 256
    model.train_on_batch(labelled_binary[0][:16], labelled_binary[1][:16])


def test_loss_falls_on_real_data(labelled_binary):
    model = make()
    images, labels = labelled_binary[0][:64], labelled_binary[1][:64]
    before = model.evaluate(images, labels, batch_size=64, return_dict=True, verbose=0)
    model.fit(images, labels, epochs=6, batch_size=16, verbose=0, shuffle=False)
    after = model.evaluate(images, labels, batch_size=64, return_dict=True, verbose=0)
    assert after["reconstruction_nll"] < 0.8 * before["reconstruction_nll"]
    assert after["margin_loss"] < 0.8 * before["margin_loss"]
    assert after["accuracy"] > before["accuracy"]


def test_bad_inputs_say_what_was_expected(labelled_binary):
    model = make()
    images = labelled_binary[0][:2]
    with pytest.raises(ValueError, match="needs the class ids"):
        model.train_on_batch(images)
    with pytest.raises(TypeError, match="binarize"):
        model.classify(np.zeros((2, 28, 28, 1), "uint8"))
    with pytest.raises(ValueError, match=r"\(batch, 28, 28, 1\)"):
        model.classify(np.zeros((2, 28, 28), "float32"))
    with pytest.raises(ValueError, match="margin_weight"):
        caps_zoo.create_model("rcn", margin_weight=-1.0)


@pytest.mark.slow  # 47 s; validation selection and shipping also run in test_model_selection
def test_rcn_recipe_trains_selects_on_validation_and_ships(tiny_mnist, scratch_saved_models, tmp_path,
                                                           monkeypatch, capsys):
    import json
    import runpy
    import sys
    from pathlib import Path

    recipes = Path(__file__).resolve().parent.parent / "recipes"
    run_dir = tmp_path / "run"
    argv = [str(recipes / "train_rcn.py"), "--steps", "2", "--epochs", "2", "--batch-size", "32",
            "--validation", "--validation-size", "64", "--output-dir", str(run_dir), "--verbose", "0"]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(argv[0], run_name="__main__")
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"] == "rcn" and config["binarize"] == "stochastic"
    assert (run_dir / "best.weights.npz").is_file()
    assert sorted(p.name for p in (run_dir / "samples").iterdir()) == ["epoch_001.png", "epoch_002.png"]
    log = (run_dir / "log.csv").read_text().splitlines()
    for column in ("margin_loss", "reconstruction_nll", "latent_kl", "accuracy", "val_accuracy"):
        assert column in log[0].split(","), column

    # RCN declares no pretrained tag until its weights ship: declare one here.
    import dataclasses

    from caps_zoo import registry
    spec = registry.get_spec("rcn")
    monkeypatch.setitem(registry._REGISTRY, "rcn", dataclasses.replace(spec, pretrained=("mnist",)))
    ship = recipes / "ship_weights.py"
    monkeypatch.setattr(sys, "argv", [str(ship), "--run-dir", str(run_dir), "--command", "test",
                                      "--select", "validation", "--frechet-samples", "200"])
    runpy.run_path(str(ship), run_name="__main__")
    metadata = json.loads((scratch_saved_models / "rcn" / "mnist.json").read_text())
    assert metadata["selected_on"].startswith("validation")
    for key in ("test_accuracy", "test_margin_loss", "test_reconstruction_nll", "test_latent_kl"):
        assert key in metadata, key
    assert (scratch_saved_models / "rcn" / "mnist.drawing.png").stat().st_size > 5000
    model = caps_zoo.load("rcn", weights=str(scratch_saved_models / "rcn" / "mnist.weights.npz"), steps=2)
    assert model.steps == 2


@pytest.mark.parametrize("name, parameters", [("rcn", 4_805_067), ("rcn_no_write_attention", 4_998_845)])
def test_parameter_counts_in_the_readme(name, parameters):
    assert caps_zoo.create_model(name).count_params() == parameters
