import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import caps_zoo
from caps_zoo.layers.capsule import SQUASH_EPSILON
from caps_zoo.models import CapsuleNetwork

MODELS = ["capsnet", "deep_capsnet"]


@pytest.fixture(scope="module", params=MODELS)
def model(request):
    keras.utils.set_random_seed(0)
    return caps_zoo.create_model(request.param)


def test_architecture_sizes():
    capsnet = caps_zoo.create_model("capsnet")
    assert capsnet.count_params() == 8_215_568  # Sabour et al.'s 8.2M with decoder
    assert capsnet.primary_caps.compute_output_shape((None, 20, 20, 256)) == (None, 1152, 8)
    deep = caps_zoo.create_model("deep_capsnet")
    assert [c.filters for c in deep.convs] == [512, 256]
    assert [c.kernel_size for c in deep.convs] == [(9, 9), (5, 5)]
    assert [(s.num_capsules, s.capsule_dim, s.routing_iterations) for s in deep.routing_stages] == [
        (16, 12, 2),
        (10, 16, 3),
    ]


def test_outputs_from_images_alone(model, sample_batch):
    images = sample_batch[0][:4]
    outputs = model.predict(images, verbose=0)
    assert outputs["scores"].shape == (4, 10)
    assert outputs["poses"].shape == (4, 10, 16)
    assert outputs["reconstruction"].shape == (4, 28, 28, 1)
    np.testing.assert_allclose(
        outputs["scores"], np.linalg.norm(outputs["poses"], axis=-1), atol=1e-4
    )
    assert np.all((outputs["reconstruction"] >= 0) & (outputs["reconstruction"] <= 1))


def test_bad_inputs_are_explained(model):
    with pytest.raises(ValueError, match=r"expects images of shape \(batch, 28, 28, 1\)"):
        model(np.zeros((2, 28, 28), "float32"))
    with pytest.raises(TypeError, match=r"float images with values in \[0, 1\]; got dtype uint8"):
        model(np.zeros((2, 28, 28, 1), "uint8"))


def test_every_weight_gets_a_gradient(model, sample_batch):
    images, labels = sample_batch[0][:8], sample_batch[1][:8]
    with tf.GradientTape() as tape:
        _, margin, reconstruction = model._forward_with_losses(images, labels, training=True)
        loss = tf.reduce_mean(margin + reconstruction)
    gradients = tape.gradient(loss, model.trainable_variables)
    for variable, gradient in zip(model.trainable_variables, gradients):
        assert gradient is not None, variable.path
        assert np.all(np.isfinite(gradient)), variable.path
        assert np.abs(gradient).sum() > 0, variable.path


def test_keras_file_round_trip(model, sample_batch, tmp_path):
    path = tmp_path / f"{model.name}.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    assert isinstance(restored, CapsuleNetwork)
    assert restored.get_config() == model.get_config()
    images = sample_batch[0][:8]
    expected, actual = model(images), restored(images)
    for key in expected:
        np.testing.assert_allclose(actual[key], expected[key], atol=1e-5)
    json.dumps(model.get_config())  # the config is plain JSON


def test_loss_falls_on_real_mnist(model, sample_batch):
    """A few epochs on 256 real MNIST images: the loss must fall clearly."""
    keras.utils.set_random_seed(1)
    fresh = caps_zoo.create_model(model.name)
    fresh.compile(optimizer=keras.optimizers.Adam(1e-3))
    images, labels = sample_batch
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(64)
    history = fresh.fit(dataset, epochs=6, verbose=0, shuffle=False)
    loss = history.history["loss"]
    assert loss[-1] < 0.6 * loss[0], loss
    assert history.history["accuracy"][-1] > 0.5


def test_mixed_bfloat16_scores_are_float32_lengths(model, sample_batch):
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    mixed = caps_zoo.create_model(model.name)
    mixed.set_weights(model.get_weights())
    outputs = mixed.predict(sample_batch[0][:8], verbose=0)
    assert outputs["scores"].dtype == np.float32 and outputs["poses"].dtype == np.float32
    # Length is sqrt(|v|^2 + eps); bfloat16 rounding would be off by ~1e-2 relative.
    expected = np.sqrt(np.sum(np.square(outputs["poses"]), axis=-1) + SQUASH_EPSILON)
    np.testing.assert_allclose(outputs["scores"], expected, rtol=1e-5)


def test_one_hot_labels_train_like_class_ids(model, sample_batch):
    images, labels = sample_batch[0][:16], sample_batch[1][:16]
    by_id = model.evaluate(images, labels, return_dict=True, verbose=0)
    one_hot = np.eye(10, dtype="float32")[labels]
    by_one_hot = model.evaluate(images, one_hot, return_dict=True, verbose=0)
    for key in by_id:
        assert by_one_hot[key] == pytest.approx(by_id[key], rel=1e-5), key


def test_sample_weights_are_refused(model, sample_batch):
    images, labels = sample_batch[0][:4], sample_batch[1][:4]
    with pytest.raises(ValueError, match="does not support sample weights"):
        model.test_on_batch(images, labels, sample_weight=np.ones(4, "float32"))


def test_routing_iterations_validation():
    with pytest.raises(ValueError, match="routing_iterations must be >= 1"):
        caps_zoo.create_model("capsnet", routing_iterations=(0,))
