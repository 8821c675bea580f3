"""CapsuleQuantizer against NumPy references of both modes (the paper's
routing and the public code's computation)."""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from caps_zoo.layers.capsule_quantizer import CapsuleQuantizer, agreement_routing


def numpy_squash(s, axis=-1):
    squared = np.sum(s ** 2, axis=axis, keepdims=True)
    return squared / (1 + squared) * s / np.sqrt(squared + 1e-7)


def numpy_softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def numpy_routing(u_hat, iterations, softmax_over, shared_logits, elementwise):
    """Loop-by-loop routing over ``u_hat`` (b, i, j, d), written from the
    descriptions (Sabour et al.; the public code's DigitCaps.forward)."""
    b, i, j, d = u_hat.shape
    logits = np.zeros((1 if shared_logits else b, i, j))
    for iteration in range(iterations):
        coupling = np.broadcast_to(numpy_softmax(logits, 2 if softmax_over == "parents" else 1), (b, i, j))
        s = np.zeros((b, j, d))
        for example, child, parent in itertools.product(range(b), range(i), range(j)):
            s[example, parent] += coupling[example, child, parent] * u_hat[example, child, parent]
        v = numpy_squash(s[..., None], axis=-1)[..., 0] if elementwise else numpy_squash(s)
        if iteration < iterations - 1:
            agreement = np.einsum("bijd,bjd->bij", u_hat, v)
            logits = logits + (agreement.mean(0, keepdims=True) if shared_logits else agreement)
    return v, coupling


@pytest.mark.parametrize("softmax_over,shared_logits,elementwise", [
    ("parents", False, False), ("inputs", True, True), ("inputs", False, False), ("parents", True, True)])
@pytest.mark.parametrize("iterations", [1, 3])
def test_agreement_routing_matches_numpy(softmax_over, shared_logits, elementwise, iterations):
    u_hat = np.random.default_rng(0).normal(size=(3, 5, 4, 2)).astype("float32")
    parents, coupling = agreement_routing(tf.constant(u_hat), iterations, softmax_over, shared_logits, elementwise)
    expected_parents, expected_coupling = numpy_routing(u_hat.astype("float64"), iterations, softmax_over,
                                                        shared_logits, elementwise)
    np.testing.assert_allclose(parents, expected_parents, atol=1e-5)
    np.testing.assert_allclose(coupling, expected_coupling, atol=1e-6)
    axis = 2 if softmax_over == "parents" else 1
    np.testing.assert_allclose(np.sum(coupling, axis=axis), 1.0, atol=1e-6)


@pytest.mark.parametrize("assignment", ["hard", "soft"])
def test_routing_mode_clusters_positions_onto_parents_like_numpy(assignment):
    rng = np.random.default_rng(1)
    features = rng.normal(size=(2, 3, 3, 4)).astype("float32")
    layer = CapsuleQuantizer(num_parents=5, parent_dim=3, assignment=assignment)
    out = layer(features)
    kernel = layer.kernel.numpy().astype("float64")
    inputs = numpy_squash(features.reshape(2, 9, 4).astype("float64"))
    u_hat = np.einsum("bic,jcd->bijd", inputs, kernel)
    parents, coupling = numpy_routing(u_hat, 3, "parents", False, False)
    codes = coupling.argmax(-1)
    if assignment == "hard":
        expected = parents[np.arange(2)[:, None], codes]
    else:
        expected = np.einsum("bij,bjd->bid", coupling, parents)
    np.testing.assert_allclose(out["quantized"], expected.reshape(2, 3, 3, 3), atol=1e-5)
    np.testing.assert_array_equal(out["codes"], codes.reshape(2, 3, 3))
    assert out["codes"].dtype == tf.int32
    np.testing.assert_allclose(out["assignment"], coupling.reshape(2, 3, 3, 5), atol=1e-6)
    np.testing.assert_allclose(out["parents"], parents, atol=1e-5)
    assert layer.loss_term_names == () and layer.num_codes == 5 and layer.has_codes


def test_hard_assignment_is_straight_through():
    """Forward: the assigned parent. Backward: the soft assignment's gradient."""
    features = tf.constant(np.random.default_rng(2).normal(size=(2, 2, 3, 4)).astype("float32"))
    hard = CapsuleQuantizer(num_parents=3, parent_dim=2, assignment="hard")
    soft = CapsuleQuantizer(num_parents=3, parent_dim=2, assignment="soft")
    hard(features), soft(features)
    soft.kernel.assign(hard.kernel)
    weights = tf.constant(np.random.default_rng(3).normal(size=(2, 2, 3, 2)).astype("float32"))
    gradients = []
    for layer in (hard, soft):
        with tf.GradientTape() as tape:
            tape.watch(features)
            loss = tf.reduce_sum(layer(features)["quantized"] * weights)
        gradients.append(tape.gradient(loss, [features, layer.kernel]))
    for got, expected in zip(*gradients):
        assert np.all(np.isfinite(got)) and np.abs(got).max() > 0
        np.testing.assert_allclose(got, expected, atol=1e-6)
    parents = hard(features)["parents"].numpy()
    codes = hard(features)["codes"].numpy().reshape(2, 6)
    np.testing.assert_allclose(hard(features)["quantized"].numpy().reshape(2, 6, 2),
                               parents[np.arange(2)[:, None], codes], atol=1e-6)


def numpy_reference_mode(layer, features):
    """The public code's CapsuleQuantizer forward, step by step: 16 separate
    convolutions stacked into capsules of 16 components, one weight per input
    capsule, routing over inputs with batch-shared logits and an elementwise
    squash, then |c_i u_hat_i| per input capsule, upsampled."""
    kernel = layer.primary.kernel.numpy()
    bias = layer.primary.bias.numpy()
    padded = np.pad(features, ((0, 0), (2, 2), (2, 2), (0, 0)))
    dim, channels = layer.primary_capsule_dim, layer.primary_channels
    convolutions = []
    for k in range(dim):  # conv k owns filters [k * channels, (k + 1) * channels)
        part = slice(k * channels, (k + 1) * channels)
        convolutions.append(tf.nn.conv2d(padded, kernel[..., part], 2, "VALID").numpy() + bias[part])
    stacked = np.stack(convolutions, axis=-1)  # (b, gh, gw, channels, dim)
    b, gh, gw = stacked.shape[:3]
    capsules = numpy_squash(stacked.reshape(b, gh * gw * channels, dim).astype("float64"))
    u_hat = np.einsum("bic,ijcd->bijd", capsules, layer.kernel.numpy().astype("float64"))
    _, coupling = numpy_routing(u_hat, 3, "inputs", True, True)
    magnitude = np.sqrt(np.sum((coupling[..., None] * u_hat) ** 2, axis=(2, 3)))
    upsampled = layer.upsample(magnitude.reshape(b, gh, gw, channels).astype("float32")).numpy()
    return upsampled[:, 1:-1, 1:-1]


def test_reference_mode_is_the_public_codes_computation():
    features = np.random.default_rng(4).normal(size=(2, 8, 8, 6)).astype("float32")
    layer = CapsuleQuantizer(mode="reference", primary_capsule_dim=4, primary_channels=3, parent_dim=5)
    out = layer(features)
    assert layer.primary_grid == (5, 5) and layer.kernel.shape == (75, 1, 4, 5)
    assert out["quantized"].shape == (2, 8, 8, 6) and not layer.has_codes
    np.testing.assert_allclose(out["quantized"], numpy_reference_mode(layer, features), atol=1e-5)
    # Softmax over the 75 inputs, one set of logits for the batch.
    np.testing.assert_allclose(np.sum(out["coupling"], axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(out["coupling"][0], out["coupling"][1])


def test_untrained_capsules_keep_their_weights_out_of_the_gradient():
    """trainable_capsules=False: the reference's capsules, which its optimizer
    never saw; only the transposed convolution trains."""
    frozen = CapsuleQuantizer(mode="reference", primary_capsule_dim=4, primary_channels=3, parent_dim=5,
                              trainable_capsules=False)
    frozen(np.zeros((1, 8, 8, 6), "float32"))
    assert {w.path.split("/")[-1] for w in frozen.trainable_weights} == {"kernel", "bias"}
    assert all("upsample" in w.path for w in frozen.trainable_weights)
    assert any("primary" in w.path for w in frozen.non_trainable_weights)
    trained = CapsuleQuantizer(mode="reference", primary_capsule_dim=4, primary_channels=3, parent_dim=5)
    features = tf.constant(np.random.default_rng(5).normal(size=(2, 8, 8, 6)).astype("float32"))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(trained(features)["quantized"] ** 2)
    gradients = tape.gradient(loss, trained.trainable_weights)
    assert len(gradients) == 5  # primary conv (2), capsule kernel, upsample (2)
    assert all(g is not None and np.abs(g.numpy()).max() > 0 for g in gradients)


def test_bad_arguments_and_inputs_are_refused():
    for kwargs, message in [({"mode": "vq"}, "mode must be one of"),
                            ({"assignment": "gumbel"}, "assignment must be one of"),
                            ({"num_parents": 0}, "num_parents must be >= 1"),
                            ({"routing_iterations": 0}, "routing_iterations must be >= 1"),
                            ({"softmax_over": "batch"}, "softmax_over must be one of")]:
        with pytest.raises(ValueError, match=message):
            CapsuleQuantizer(**kwargs)
    with pytest.raises(ValueError, match=r"expects a feature map \(batch, height, width, channels\)"):
        CapsuleQuantizer()(np.zeros((2, 9, 4), "float32"))
    with pytest.raises(ValueError, match="cannot bring a 7x7 map back"):
        CapsuleQuantizer(mode="reference")(np.zeros((1, 7, 7, 4), "float32"))


@pytest.mark.parametrize("kwargs", [{}, {"mode": "reference", "primary_capsule_dim": 4, "primary_channels": 3,
                                         "trainable_capsules": False}], ids=["routing", "reference"])
def test_config_and_keras_round_trip(kwargs, tmp_path):
    layer = CapsuleQuantizer(**kwargs)
    config = layer.get_config()
    assert CapsuleQuantizer.from_config(config).get_config() == config
    assert keras.saving.serialize_keras_object(layer)["registered_name"] == "caps_zoo>CapsuleQuantizer"
    inputs = keras.Input((8, 8, 6))
    model = keras.Model(inputs, CapsuleQuantizer(**kwargs)(inputs)["quantized"])
    x = np.random.default_rng(6).normal(size=(2, 8, 8, 6)).astype("float32")
    model.save(tmp_path / "quantizer.keras")
    restored = keras.saving.load_model(tmp_path / "quantizer.keras")
    np.testing.assert_allclose(restored(x), model(x), atol=1e-5)
    assert len(restored.trainable_weights) == len(model.trainable_weights)


def test_lookup_of_the_codes_and_parents_is_the_hard_assignment():
    """What sampling decodes: a code map and the parents it indexes give
    routing mode's quantized map exactly; codes alone are refused."""
    features = np.random.default_rng(3).normal(size=(2, 3, 3, 4)).astype("float32")
    layer = CapsuleQuantizer(num_parents=5, parent_dim=3)
    out = layer(features)
    assert layer.codes_need_parents
    np.testing.assert_allclose(layer.lookup(out["codes"], out["parents"]), out["quantized"], atol=1e-6)
    with pytest.raises(ValueError, match="only with the parents"):
        layer.lookup(out["codes"], None)
    reference = CapsuleQuantizer(mode="reference")
    reference(np.zeros((1, 8, 8, 4), "float32"))
    with pytest.raises(ValueError, match="assigns no codes"):
        reference.lookup(out["codes"], out["parents"])
