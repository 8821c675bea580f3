"""caps_zoo.checks: one wording for bad inputs, in Python and in the graph,
and the metrics and plots that use it."""

import numpy as np
import pytest
import tensorflow as tf

from caps_zoo import checks, metrics, plots

IMAGES = np.random.default_rng(0).uniform(0, 1, (6, 28, 28, 1)).astype("float32")
NAN = np.where(IMAGES > 0.9, np.nan, IMAGES).astype("float32")


@pytest.mark.parametrize("images, error, message", [
    (IMAGES[..., 0], ValueError, r"expected a batch of images \(n, height, width, channels\)"),
    (IMAGES[:0], ValueError, "expected at least one image; got none"),
    ((IMAGES * 255).astype("uint8"), TypeError, r"got dtype uint8. Convert with images.astype\('float32'\) / 255"),
    (IMAGES * 255, ValueError, r"must hold values in \[0, 1\]; got min 0.0\d*, max 254.\d+ \(scaled to \[0, 255\]"),
    (NAN, ValueError, r"must hold finite values in \[0, 1\]; got NaN or inf \(at \d+ of 4704 values\)"),
])
def test_image_arrays_are_checked_with_what_was_expected_and_what_came(images, error, message):
    with pytest.raises(error, match=message):
        checks.check_image_array(images, "x")


def test_binary_images_must_be_binary():
    with pytest.raises(ValueError, match=r"must hold values in \{0, 1\} \(binarized"):
        checks.check_image_array(IMAGES, "x", allowed=checks.BINARY)
    checks.check_image_array(np.round(IMAGES), "x", allowed=checks.BINARY)


@pytest.mark.parametrize("call", [
    lambda bad: metrics.frechet_classifier_distance(bad, IMAGES),
    lambda bad: metrics.nearest_neighbours(bad, IMAGES, k=1),
    lambda bad: plots.image_grid(bad),
])
def test_metrics_and_plots_refuse_images_they_cannot_score(call):
    # [0, 255] images scored a better Frechet distance than any GAN's, and a
    # diverged generator's NaN images still got one.
    with pytest.raises(ValueError, match=r"must hold values in \[0, 1\]"):
        call(IMAGES * 255)
    with pytest.raises(ValueError, match="must hold finite values"):
        call(NAN)


def test_in_graph_checks_pass_good_inputs_through_and_stop_bad_ones():
    step = tf.function(lambda x: checks.assert_image_values(x, checks.UNIT, "x") * 2)
    np.testing.assert_allclose(step(IMAGES), IMAGES * 2)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"x must hold values in \[0, 1\]"):
        step(IMAGES * 255)
    ids = tf.function(lambda y: checks.assert_class_ids(y, 10, "y"))
    np.testing.assert_array_equal(ids(np.array([0, 9, 3])), [0, 9, 3])
    np.testing.assert_array_equal(ids(np.array([0.0, 9.0])), [0.0, 9.0])  # whole floats are ids
    for bad in (np.array([10]), np.array([-1]), np.array([2.5])):
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"y must be class ids, integers in \[0, 9\]"):
            ids(bad)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"one-hot targets must hold values in \[0, 1\]"):
        ids(np.full((2, 10), 2.0, "float32"))
    with pytest.raises(TypeError, match="got dtype bool"):
        checks.assert_class_ids(np.array([True]), 10)


@pytest.mark.parametrize("traced_shape", [[None, 28, 28, 1], [2, 28, 28, None], [None, None, None, None], None])
def test_assert_shape_checks_in_the_graph_what_the_trace_leaves_open(traced_shape):
    """A wrong shape is refused whatever the trace knows of it. With an
    EnsureShape after the Assert, grappler folded tf.shape(x) to the expected
    shape, so the check passed and TensorFlow's own error came instead."""
    expected = [None, 28, 28, 1]

    @tf.function(input_signature=[tf.TensorSpec(traced_shape, tf.float32)])
    def checked(x):
        y = checks.assert_shape(x, expected, "x must have shape (batch, 28, 28, 1)")
        assert y.shape.as_list() == expected  # what the next layers see
        return y

    good = np.random.default_rng(0).random((2, 28, 28, 1), dtype=np.float32)
    np.testing.assert_array_equal(checked(good).numpy(), good)
    for bad in (good[..., 0], np.repeat(good, 3, axis=-1), good[:, None], good[:, :27]):
        if traced_shape is not None and not checks.shape_matches(tf.TensorShape(traced_shape), bad.shape):
            continue  # the signature itself refuses it
        with pytest.raises(tf.errors.InvalidArgumentError,
                           match=r"x must have shape \(batch, 28, 28, 1\); got shape\] \[" + " ".join(map(str, bad.shape))):
            checked(bad)


def test_assert_shape_refuses_a_known_wrong_shape_while_tracing():
    with pytest.raises(ValueError, match=r"want \(batch, 4\); got shape \(None, 5\)\."):
        tf.function(lambda x: checks.assert_shape(x, [None, 4], "want (batch, 4)")).get_concrete_function(
            tf.TensorSpec([None, 5]))
