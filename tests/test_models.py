"""CapsNet and the Deep Capsule Network (CapsuleNetwork): architecture, outputs, training.

The checks every model shares (round trips, gradients, mirrored loss) are in
test_model_families.py."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import caps_zoo
from caps_zoo.layers.capsule import SQUASH_EPSILON

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


@pytest.mark.parametrize("name", ["capsnet", pytest.param("deep_capsnet", marks=pytest.mark.slow)])
def test_loss_falls_on_real_mnist(name, sample_batch):
    """Six epochs on 128 real MNIST images: the loss must fall clearly."""
    keras.utils.set_random_seed(1)
    fresh = caps_zoo.create_model(name)
    fresh.compile(optimizer=keras.optimizers.Adam(1e-3))
    # 24 steps of 32 (the loss falls to about 0.3x, accuracy about 0.8, for
    # seeds 1 and 2) cost half as much as 24 steps of 64 did.
    images, labels = sample_batch[0][:128], sample_batch[1][:128]
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(32)
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


def test_routing_iterations_validation():
    with pytest.raises(ValueError, match="routing_iterations must be >= 1"):
        caps_zoo.create_model("capsnet", routing_iterations=(0,))


def test_classify_endpoint_gives_int64_argmax_classes(model, sample_batch):
    classify, _ = model.serving_endpoints()["classify"]
    outputs = classify(tf.constant(sample_batch[0][:8]))
    assert outputs["classes"].dtype == tf.int64
    np.testing.assert_array_equal(outputs["classes"], np.argmax(outputs["scores"], axis=-1))


def test_evaluate_without_labels_says_what_is_missing(model, sample_batch):
    with pytest.raises(ValueError, match="needs the class ids"):
        model.evaluate(sample_batch[0][:4], verbose=0)  # was an AttributeError from inside the loss
