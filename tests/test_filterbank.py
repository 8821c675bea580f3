"""DRAW's Gaussian filterbank attention: FilterbankRead and FilterbankWrite."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from caps_zoo.layers import FilterbankRead, FilterbankWrite
from caps_zoo.layers import filterbank as fb

HEIGHT, WIDTH = 28, 28
STATE = 16  # decoder state size of these tests


def window_bias(patch_size, stride=1.0, variance=1e-4, intensity=1.0, center=(0.0, 0.0)):
    """Bias of the 5-unit window layer that, with a zero kernel, gives this window."""
    scale = (max(HEIGHT, WIDTH) - 1) / max(patch_size - 1, 1)
    return np.array(
        [center[0], center[1], np.log(variance), np.log(stride / scale), np.log(intensity)],
        dtype="float32",
    )


def fix_window(dense, bias):
    dense.set_weights([np.zeros_like(dense.kernel.numpy()), bias])


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    return rng.random((3, HEIGHT, WIDTH, 1), dtype=np.float32)


def test_filterbank_rows_sum_to_one():
    rng = np.random.default_rng(1)
    raw = rng.normal(size=(8, 5)).astype("float32") * 2
    window = fb.attention_window(raw, HEIGHT, WIDTH, patch_size=5)
    f_x, f_y = fb.window_filterbanks(window, 5, HEIGHT, WIDTH)
    assert f_x.shape == (8, 5, WIDTH) and f_y.shape == (8, 5, HEIGHT)
    np.testing.assert_allclose(np.sum(f_x, axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.sum(f_y, axis=-1), 1.0, atol=1e-5)
    assert np.all(np.asarray(f_x) >= 0)


def test_window_of_zero_params_is_centred_and_spans_the_image():
    window = fb.attention_window(np.zeros((1, 5), "float32"), HEIGHT, WIDTH, patch_size=5)
    assert float(window["center_x"][0]) == pytest.approx((WIDTH + 1) / 2)
    assert float(window["center_y"][0]) == pytest.approx((HEIGHT + 1) / 2)
    # stride (max(A, B) - 1) / (N - 1): the N filter centres run from pixel 1 to pixel 28
    assert float(window["stride"][0]) == pytest.approx((WIDTH - 1) / 4)
    assert float(window["intensity"][0]) == pytest.approx(1.0)


@pytest.mark.parametrize("read_size", [2, 4, 6])
def test_centred_stride_one_read_returns_the_centre_patch(images, read_size):
    layer = FilterbankRead(read_size)
    state = np.random.default_rng(2).normal(size=(3, STATE)).astype("float32")
    error = 1.0 - images
    layer(images, error, state)  # builds
    fix_window(layer.window_dense, window_bias(read_size))
    glimpse = np.asarray(layer(images, error, state))
    assert glimpse.shape == (3, read_size, read_size, 2)
    start = (HEIGHT - read_size) // 2
    centre = slice(start, start + read_size)
    np.testing.assert_allclose(glimpse[..., 0], images[:, centre, centre, 0], atol=1e-5)
    np.testing.assert_allclose(glimpse[..., 1], error[:, centre, centre, 0], atol=1e-5)


def test_read_is_scaled_by_intensity(images):
    layer = FilterbankRead(4)
    state = np.zeros((3, STATE), "float32")
    layer(images, images, state)
    fix_window(layer.window_dense, window_bias(4, intensity=1.0))
    plain = np.asarray(layer(images, images, state))
    fix_window(layer.window_dense, window_bias(4, intensity=2.5))
    np.testing.assert_allclose(np.asarray(layer(images, images, state)), 2.5 * plain, rtol=1e-5)


def test_centred_stride_one_write_places_the_patch_at_the_centre():
    size = 4
    layer = FilterbankWrite(size, image_shape=(HEIGHT, WIDTH, 1))
    state = np.random.default_rng(3).normal(size=(2, STATE)).astype("float32")
    layer(state)
    patch = np.arange(size * size, dtype="float32") / 10.0
    layer.patch_dense.set_weights([np.zeros_like(layer.patch_dense.kernel.numpy()), patch])
    fix_window(layer.window_dense, window_bias(size, intensity=2.0))
    canvas = np.asarray(layer(state))
    expected = np.zeros((HEIGHT, WIDTH), "float32")
    start = (HEIGHT - size) // 2
    expected[start : start + size, start : start + size] = patch.reshape(size, size) / 2.0
    for image in canvas:
        np.testing.assert_allclose(image[..., 0], expected, atol=1e-5)


@pytest.mark.parametrize("size", [1, 2, 5, 12])
@pytest.mark.parametrize("image_shape", [(28, 28, 1), (20, 32, 3)])
def test_read_and_write_shapes(size, image_shape):
    batch = 2
    images = np.random.default_rng(4).random((batch, *image_shape), dtype=np.float32)
    state = np.ones((batch, STATE), "float32")
    read = FilterbankRead(size)
    glimpse, window = read(images, images, state, return_window=True)
    assert glimpse.shape == (batch, size, size, 2 * image_shape[-1])
    assert read.compute_output_shape((batch, *image_shape)) == tuple(glimpse.shape)
    assert set(window) == {"center_x", "center_y", "stride", "variance", "intensity"}
    write = FilterbankWrite(size, image_shape=image_shape)
    update, window = write(state, return_window=True)
    assert update.shape == (batch, *image_shape)
    assert window["center_x"].shape == (batch,)
    assert np.all(np.isfinite(glimpse)) and np.all(np.isfinite(update))


def test_without_attention_read_is_the_whole_images_and_write_a_dense_canvas(images):
    read = FilterbankRead(2, attention=False)
    glimpse, window = read(images, 1.0 - images, None, return_window=True)
    assert window is None
    np.testing.assert_array_equal(glimpse, np.concatenate([images, 1.0 - images], axis=-1))
    write = FilterbankWrite(5, image_shape=(HEIGHT, WIDTH, 1), attention=False)
    assert write(np.ones((3, STATE), "float32")).shape == (3, HEIGHT, WIDTH, 1)
    assert write.window_dense is None


def test_window_far_outside_the_image_stays_finite(images):
    """Every Gaussian underflows there: the softmax normalisation keeps rows finite."""
    layer = FilterbankRead(3)
    state = tf.Variable(np.ones((3, STATE), "float32"))
    layer(images, images, state)
    fix_window(layer.window_dense, window_bias(3, variance=1e-3, center=(40.0, -40.0)))
    with tf.GradientTape() as tape:
        glimpse = layer(images, images, state)
        total = tf.reduce_sum(glimpse)
    gradients = tape.gradient(total, [state, *layer.trainable_variables])
    assert np.all(np.isfinite(glimpse))
    for gradient in gradients:
        assert np.all(np.isfinite(gradient))


def test_gradients_reach_the_window_and_the_patch():
    layer = FilterbankWrite(5, image_shape=(HEIGHT, WIDTH, 1))
    state = np.random.default_rng(5).normal(size=(4, STATE)).astype("float32")
    target = np.random.default_rng(6).random((4, HEIGHT, WIDTH, 1), dtype=np.float32)
    layer(state)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(layer(state) - target))
    gradients = tape.gradient(loss, layer.trainable_variables)
    assert len(gradients) == 4  # patch kernel + bias, window kernel + bias
    for variable, gradient in zip(layer.trainable_variables, gradients):
        assert np.all(np.isfinite(gradient)) and np.any(gradient != 0), variable.path


@pytest.mark.parametrize(
    "layer", [FilterbankRead(7, attention=True), FilterbankWrite(3, image_shape=(20, 32, 3), attention=False)]
)
def test_get_config_round_trip(layer):
    config = layer.get_config()
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(clone) is type(layer)
    assert clone.get_config() == config


def test_rejects_bad_sizes():
    with pytest.raises(ValueError, match="read_size"):
        FilterbankRead(0)
    with pytest.raises(ValueError, match="write_size"):
        FilterbankWrite(0)
    with pytest.raises(ValueError, match="image_shape"):
        FilterbankWrite(5, image_shape=(28, 28))


def test_window_box_spans_the_first_and_last_filter_centres():
    window = fb.attention_window(np.zeros((1, 5), "float32"), HEIGHT, WIDTH, patch_size=5)
    np.testing.assert_allclose(fb.window_box(window, 5)[0], [0, 0, WIDTH - 1, HEIGHT - 1], atol=1e-5)
