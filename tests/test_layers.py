import keras
import numpy as np
import pytest
import tensorflow as tf

from caps_zoo.layers import Length, Mask, PrimaryCaps, RoutingCaps, squash


def numpy_squash(s):
    norm = np.linalg.norm(s, axis=-1, keepdims=True)
    return (norm**2 / (1 + norm**2)) * s / np.maximum(norm, 1e-12)


def numpy_routing(u, kernel, num_capsules, capsule_dim, iterations):
    """Dynamic routing written out with loops, straight from Sabour et al."""
    batch, n_in, _ = u.shape
    w = kernel.reshape(n_in, kernel.shape[1], num_capsules, capsule_dim)
    v = np.zeros((batch, num_capsules, capsule_dim))
    for b in range(batch):
        u_hat = np.stack([[u[b, i] @ w[i, :, j, :] for j in range(num_capsules)] for i in range(n_in)])
        logits = np.zeros((n_in, num_capsules))
        for r in range(iterations):
            c = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)  # over parents j
            s = np.stack([sum(c[i, j] * u_hat[i, j] for i in range(n_in)) for j in range(num_capsules)])
            v[b] = numpy_squash(s)
            if r < iterations - 1:
                logits = logits + np.einsum("ijd,jd->ij", u_hat, v[b])
    return v


def test_squash_matches_formula():
    s = np.random.default_rng(0).normal(size=(4, 7, 5)).astype("float32")
    np.testing.assert_allclose(squash(s), numpy_squash(s), atol=1e-6)
    lengths = np.linalg.norm(squash(s), axis=-1)
    assert np.all(lengths < 1)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_squash_finite_value_and_gradient_at_zero(dtype):
    zeros = tf.zeros((3, 4, 8), dtype=dtype)
    with tf.GradientTape() as tape:
        tape.watch(zeros)
        out = squash(zeros)
        total = tf.reduce_sum(out)
    grad = tape.gradient(total, zeros)
    assert np.all(np.isfinite(tf.cast(out, "float32").numpy()))
    assert np.all(np.isfinite(tf.cast(grad, "float32").numpy()))
    np.testing.assert_array_equal(tf.cast(out, "float32").numpy(), 0.0)


@pytest.mark.parametrize("iterations", [1, 2, 3, 4])
def test_routing_matches_numpy_reference(iterations):
    rng = np.random.default_rng(iterations)
    u = rng.normal(size=(3, 6, 4)).astype("float32")
    layer = RoutingCaps(num_capsules=5, capsule_dim=3, routing_iterations=iterations)
    layer.build(u.shape)
    kernel = rng.normal(scale=0.5, size=layer.kernel.shape).astype("float32")
    layer.kernel.assign(kernel)
    expected = numpy_routing(u.astype("float64"), kernel.astype("float64"), 5, 3, iterations)
    np.testing.assert_allclose(layer(u).numpy(), expected, atol=1e-5)


def _routing_layer(rng, iterations, stop_gradient=False, shape=(3, 6, 4)):
    layer = RoutingCaps(5, 3, routing_iterations=iterations, stop_gradient_in_routing=stop_gradient)
    layer.build(shape)
    kernel = rng.normal(scale=0.5, size=layer.kernel.shape).astype("float32")
    layer.kernel.assign(kernel)
    return layer, kernel


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
@pytest.mark.parametrize("stop_gradient", [False, True])
@pytest.mark.parametrize("iterations", [1, 2, 3, 4])
def test_both_routing_paths_match_numpy_reference(iterations, stop_gradient, policy):
    # training=True runs the iterations as an XLA cluster, training=False as
    # plain ops (exports); both must be the same routing. Under
    # mixed_bfloat16 the layer computes in float32 throughout (predictions
    # included: see RoutingCaps.predictions), so the tolerance is float32's.
    keras.mixed_precision.set_global_policy(policy)
    rng = np.random.default_rng(10 * iterations + stop_gradient)
    u = rng.normal(size=(3, 6, 4)).astype("float32")
    layer, kernel = _routing_layer(rng, iterations, stop_gradient)
    expected = numpy_routing(u.astype("float64"), kernel.astype("float64"), 5, 3, iterations)
    for training in (False, True):
        out = layer(u, training=training)
        assert out.dtype == "float32"
        np.testing.assert_allclose(out.numpy(), expected, atol=1e-5)


def _numeric_gradient(function, array, step=1e-6):
    grad = np.zeros_like(array)
    for index in np.ndindex(array.shape):
        plus, minus = array.copy(), array.copy()
        plus[index] += step
        minus[index] -= step
        grad[index] = (function(plus) - function(minus)) / (2 * step)
    return grad


@pytest.mark.parametrize("training", [False, True])
def test_routing_gradients_match_numpy_finite_differences(training):
    # Gradient of sum(v * weights) w.r.t. the kernel and the input capsules,
    # through every iteration (no stop-gradient), against central finite
    # differences of the float64 NumPy reference.
    rng = np.random.default_rng(5)
    shape = (2, 4, 3)
    u = rng.normal(size=shape)
    layer, kernel = _routing_layer(rng, 3, shape=shape)
    weights = rng.normal(size=(2, 5, 3))

    def loss(u_, kernel_):
        return float((numpy_routing(u_, kernel_, 5, 3, 3) * weights).sum())

    u_tensor = tf.constant(u.astype("float32"))
    with tf.GradientTape() as tape:
        tape.watch(u_tensor)
        total = tf.reduce_sum(layer(u_tensor, training=training) * weights.astype("float32"))
    grad_u, grad_kernel = tape.gradient(total, [u_tensor, layer.kernel])
    kernel64 = kernel.astype("float64")
    np.testing.assert_allclose(grad_u, _numeric_gradient(lambda a: loss(a, kernel64), u), atol=2e-4)
    np.testing.assert_allclose(
        grad_kernel, _numeric_gradient(lambda k: loss(u, k), kernel64), atol=2e-4
    )


@pytest.mark.parametrize("stop_gradient", [False, True])
def test_xla_training_path_has_the_plain_paths_gradients(stop_gradient):
    rng = np.random.default_rng(6)
    u = tf.constant(rng.normal(size=(3, 6, 4)).astype("float32"))
    layer, _ = _routing_layer(rng, 3, stop_gradient)
    gradients = []
    for training in (False, True):
        with tf.GradientTape() as tape:
            tape.watch(u)
            total = tf.reduce_sum(layer(u, training=training) * tf.range(1.0, 4.0))
        gradients.append(tape.gradient(total, [u, layer.kernel]))
    for plain, xla in zip(*gradients):
        assert np.abs(plain).sum() > 0
        np.testing.assert_allclose(xla, plain, rtol=1e-5, atol=1e-6)


def test_routing_softmax_is_over_parents_not_children():
    # With a single input capsule, softmax over parents lets the outputs
    # differ by agreement; softmax over children (the common bug) gives
    # c = 1 for every parent, so routing would change nothing.
    rng = np.random.default_rng(1)
    u = rng.normal(size=(2, 1, 4)).astype("float32")
    one = RoutingCaps(3, 2, routing_iterations=1)
    three = RoutingCaps(3, 2, routing_iterations=3)
    one.build(u.shape)
    three.build(u.shape)
    kernel = rng.normal(size=one.kernel.shape).astype("float32")
    one.kernel.assign(kernel)
    three.kernel.assign(kernel)
    np.testing.assert_allclose(three(u), numpy_routing(u, kernel, 3, 2, 3), atol=1e-5)
    assert not np.allclose(one(u), three(u), atol=1e-3)


def test_routing_gradients_flow_and_stop_gradient_option():
    rng = np.random.default_rng(2)
    u = tf.constant(rng.normal(size=(2, 6, 4)).astype("float32"))

    def kernel_gradient(stop):
        layer = RoutingCaps(4, 3, routing_iterations=3, stop_gradient_in_routing=stop)
        layer.build(u.shape)
        layer.kernel.assign(kernel)
        with tf.GradientTape() as tape:
            out = layer(u)
            loss = tf.reduce_sum(out * tf.range(1.0, 4.0))
        return out, tape.gradient(loss, layer.kernel)

    kernel = rng.normal(size=(6, 4, 12)).astype("float32")
    out_full, grad_full = kernel_gradient(False)
    out_stop, grad_stop = kernel_gradient(True)
    np.testing.assert_allclose(out_full, out_stop, atol=1e-6)  # same forward pass
    assert np.all(np.isfinite(grad_full)) and np.abs(grad_full).sum() > 0
    assert np.abs(grad_stop).sum() > 0
    assert not np.allclose(grad_full, grad_stop)  # earlier iterations are cut


def test_routing_rejects_bad_arguments_and_shapes():
    with pytest.raises(ValueError, match="routing_iterations must be >= 1"):
        RoutingCaps(10, 16, routing_iterations=0)
    with pytest.raises(ValueError, match="rank 3"):
        RoutingCaps(10, 16)(np.zeros((2, 8), "float32"))


def test_primary_caps_shape_order_and_squash():
    layer = PrimaryCaps(num_capsule_types=4, capsule_dim=8, kernel_size=9, strides=2)
    images = np.random.default_rng(3).random((2, 20, 20, 16)).astype("float32")
    capsules = layer(images)
    assert capsules.shape == (2, 6 * 6 * 4, 8)
    features = layer.conv(images).numpy()
    np.testing.assert_allclose(capsules, numpy_squash(features.reshape(2, -1, 8)), atol=1e-5)


def numpy_valid_conv_kernel_gradient(x, upstream, kernel_size, strides):
    """dL/dW of a VALID NHWC convolution, window by window."""
    (kh, kw), (sh, sw) = kernel_size, strides
    grad = np.zeros((kh, kw, x.shape[-1], upstream.shape[-1]))
    for y in range(upstream.shape[1]):
        for x_ in range(upstream.shape[2]):
            window = x[:, y * sh : y * sh + kh, x_ * sw : x_ * sw + kw, :]  # (b, kh, kw, ci)
            grad += np.einsum("bhwc,bo->hwco", window, upstream[:, y, x_, :])
    return grad


@pytest.mark.parametrize(
    "size, kernel, strides",
    [((20, 20), (9, 9), (2, 2)), ((17, 13), (3, 3), (2, 3)), ((16, 16), (5, 5), (2, 2))],
)
def test_strided_conv2d_gradients_match_numpy_and_tensorflow(size, kernel, strides):
    from caps_zoo.layers.capsule import strided_conv2d

    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(size=(3, *size, 4)).astype("float32"))
    w = tf.constant(rng.normal(size=(*kernel, 4, 5)).astype("float32"))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([x, w])
        ours = strided_conv2d(x, w, strides)
        plain = tf.nn.conv2d(x, w, [1, *strides, 1], "VALID")
        # sin: the upstream gradient depends on the output (not a plain sum).
        ours_loss, plain_loss = tf.reduce_sum(tf.sin(ours)), tf.reduce_sum(tf.sin(plain))
    np.testing.assert_array_equal(ours, plain)
    ours_dx, ours_dw = tape.gradient(ours_loss, [x, w])
    plain_dx, plain_dw = tape.gradient(plain_loss, [x, w])
    np.testing.assert_array_equal(ours_dx, plain_dx)
    reference = numpy_valid_conv_kernel_gradient(
        x.numpy().astype("float64"), np.cos(plain.numpy()).astype("float64"), kernel, strides
    )
    # (17, 13) with stride 3 leaves a column no window reads: it gets no gradient.
    np.testing.assert_allclose(ours_dw, reference, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ours_dw, plain_dw, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_primary_caps_trains_the_convolution_it_infers_with(policy):
    """training=True computes the kernel gradient its own way
    (strided_conv2d); outputs and gradients are the Keras layer's."""
    keras.mixed_precision.set_global_policy(policy)
    try:
        layer = PrimaryCaps(num_capsule_types=4, capsule_dim=6, kernel_size=5, strides=2)
        x = tf.constant(np.random.default_rng(2).normal(size=(3, 16, 16, 8)).astype("float32"))
        results = []
        from caps_zoo.layers.capsule import _kernel_gradient_as_convolution

        layer.build(x.shape)
        assert _kernel_gradient_as_convolution(layer.conv)  # the path under test is taken
        for training in (True, False):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = tf.reduce_sum(tf.sin(layer(x, training=training) * 3.0))
            results.append((loss, *tape.gradient(loss, [x, *layer.trainable_variables])))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    # bfloat16: the bias gradient sums 108 bfloat16 terms (8-bit mantissa)
    # in another order; 2.5% of the largest seen.
    tolerance = 1e-5 if policy == "float32" else 5e-2
    for ours, plain in zip(*results):
        scale = float(tf.reduce_max(tf.abs(tf.cast(plain, "float32"))))
        np.testing.assert_allclose(
            tf.cast(ours, "float32"), tf.cast(plain, "float32"), atol=tolerance * max(scale, 1.0)
        )


def test_length_and_mask():
    capsules = np.zeros((2, 3, 2), "float32")
    capsules[0, 1] = [3, 4]
    capsules[0, 2] = [0.1, 0]
    capsules[1, 0] = [1, 0]
    capsules[1, 2] = [0, 2]
    np.testing.assert_allclose(Length()(capsules), [[0, 5, 0.1], [1, 0, 2]], atol=1e-3)
    by_length = Mask()(capsules).numpy()
    np.testing.assert_array_equal(by_length, [[0, 0, 3, 4, 0, 0], [0, 0, 0, 0, 0, 2]])
    by_label = Mask()(capsules, np.array([2, 0])).numpy()
    np.testing.assert_allclose(by_label, [[0, 0, 0, 0, 0.1, 0], [1, 0, 0, 0, 0, 0]])
    np.testing.assert_allclose(Mask()(capsules, np.array([[2], [0]])), by_label)
    np.testing.assert_allclose(Mask()(capsules, np.eye(3)[[2, 0]]), by_label)
    two_digits = Mask()(capsules, np.array([[0, 1, 1], [0, 0, 0]], "float32")).numpy()
    np.testing.assert_allclose(two_digits, [[0, 0, 3, 4, 0.1, 0], [0, 0, 0, 0, 0, 0]])


def test_class_capsules_stay_float32_under_mixed_bfloat16():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    capsules = np.random.default_rng(5).normal(size=(2, 7, 4)).astype("float32")
    routed = RoutingCaps(3, 5, routing_iterations=2)(capsules)
    assert routed.dtype == "float32"
    lengths = Length()(routed)
    assert lengths.dtype == "float32"
    np.testing.assert_allclose(lengths, np.linalg.norm(routed, axis=-1), atol=1e-6)
    assert Mask()(routed).dtype == "float32"


@pytest.mark.parametrize(
    "layer",
    [
        PrimaryCaps(16, 4, kernel_size=3, strides=1, name="p"),
        RoutingCaps(5, 6, routing_iterations=2, stop_gradient_in_routing=True, init_scale=0.3),
        RoutingCaps(5, 6, kernel_initializer="glorot_uniform"),
        Length(),
        Mask(),
    ],
    ids=lambda layer: type(layer).__name__,
)
def test_layer_config_round_trip(layer):
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    serialized = keras.saving.serialize_keras_object(layer)
    assert serialized["registered_name"].startswith("caps_zoo>")


def test_functional_model_keras_round_trip(tmp_path):
    inputs = keras.Input((12, 12, 1))
    capsules = PrimaryCaps(4, 4, kernel_size=3, strides=2)(inputs)
    digits = RoutingCaps(3, 5, routing_iterations=2)(capsules)
    outputs = [Length()(digits), Mask()(digits)]
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(4).random((3, 12, 12, 1)).astype("float32")
    path = tmp_path / "tiny.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    for expected, actual in zip(model(x), restored(x)):
        np.testing.assert_allclose(actual, expected, atol=1e-5)
