import numpy as np
import pytest
import tensorflow as tf

from caps_zoo import losses


def test_margin_loss_hand_computed():
    lengths = np.array([[0.95, 0.05, 0.5], [0.3, 0.2, 0.0]], "float32")
    labels = np.array([0, 2])
    # Example 0: present class at 0.95 >= 0.9 -> 0; absent 0.05 <= 0.1 -> 0;
    #   absent 0.5 -> 0.5 * (0.5 - 0.1)^2 = 0.08.
    # Example 1: absent 0.3 -> 0.5 * 0.2^2 = 0.02; absent 0.2 -> 0.5 * 0.1^2
    #   = 0.005; present 0.0 -> (0.9 - 0)^2 = 0.81.
    np.testing.assert_allclose(
        losses.margin_loss(labels, lengths), [0.08, 0.835], rtol=1e-6, atol=1e-7
    )


def test_margin_loss_accepts_multi_hot_targets():
    lengths = np.array([[0.5, 0.5, 0.0]], "float32")
    targets = np.array([[1, 1, 0]], "float32")  # two digits present
    np.testing.assert_allclose(losses.margin_loss(targets, lengths), [2 * 0.4**2], rtol=1e-6)


def test_margin_loss_constants_are_the_papers():
    assert (losses.MARGIN_POSITIVE, losses.MARGIN_NEGATIVE, losses.DOWNWEIGHT_ABSENT) == (
        0.9,
        0.1,
        0.5,
    )


def test_reconstruction_squared_error_is_weighted_sum_of_squares():
    images = np.zeros((2, 2, 2, 1), "float32")
    recon = np.array([[1, 1, 0, 0], [0.5, 0, 0, 0]], "float32").reshape(2, 2, 2, 1)
    np.testing.assert_allclose(
        losses.reconstruction_squared_error(images, recon), [0.0005 * 2, 0.0005 * 0.25], rtol=1e-6
    )
    assert losses.RECONSTRUCTION_WEIGHT == pytest.approx(0.0005)


def test_margin_loss_label_shapes_agree():
    lengths = np.array([[0.95, 0.05, 0.5], [0.3, 0.2, 0.0]], "float32")
    by_id = losses.margin_loss(np.array([0, 2]), lengths)
    np.testing.assert_allclose(losses.margin_loss(np.array([[0], [2]]), lengths), by_id)
    np.testing.assert_allclose(losses.margin_loss(np.eye(3)[[0, 2]], lengths), by_id)
    with pytest.raises(ValueError, match=r"targets \(batch, 3\)"):
        losses.margin_loss(np.zeros((2, 4)), lengths)


def test_l1_and_gradient_difference_hand_computed():
    """One 2x2 image: x = [[0, 1], [1, 1]], x^ = [[0, 0], [1, 1]]."""
    x = np.array([[0.0, 1.0], [1.0, 1.0]], "float32").reshape(1, 2, 2, 1)
    x_hat = np.array([[0.0, 0.0], [1.0, 1.0]], "float32").reshape(1, 2, 2, 1)
    np.testing.assert_allclose(losses.l1_reconstruction(x, x_hat), [0.25])
    # dx: x [[1, 0], [0, 0]], x^ [[0, 0], [0, 0]]; dy: x [[1, 0], [0, 0]], x^ [[1, 1], [0, 0]]
    # |dx - dx^| + |dy - dy^| = [[1, 0], [0, 0]] + [[0, 1], [0, 0]]: mean 0.5.
    np.testing.assert_allclose(losses.gradient_difference(x, x_hat), [0.5])
    dy, dx = losses.image_gradients(x)
    expected_dy, expected_dx = tf.image.image_gradients(tf.constant(x))
    np.testing.assert_allclose(dy, expected_dy)
    np.testing.assert_allclose(dx, expected_dx)


def test_hinge_losses_hand_computed():
    real = np.array([[2.0, 0.5], [-1.0, 1.0]], "float32").reshape(2, 1, 2, 1)
    fake = np.array([[-2.0, 0.0], [1.0, -0.5]], "float32").reshape(2, 1, 2, 1)
    # example 0: relu(1 - real) = [0, 0.5] -> 0.25; relu(1 + fake) = [0, 1] -> 0.5
    # example 1: [2, 0] -> 1.0; [2, 0.5] -> 1.25
    np.testing.assert_allclose(losses.hinge_discriminator_loss(real, fake), [0.375, 1.125])
    np.testing.assert_allclose(losses.hinge_generator_loss(fake), [1.0, -0.25])


def test_adaptive_weight_hand_computed_and_detached():
    rec = tf.constant([3.0, 4.0])   # norm 5
    gan = tf.Variable([0.0, 2.0])   # norm 2
    with tf.GradientTape() as tape:
        weight = losses.adaptive_weight(rec, gan * 1.0, scale=0.8)
    np.testing.assert_allclose(weight, 0.8 * 5.0 / (2.0 + 1e-4), rtol=1e-6)
    assert tape.gradient(weight, gan) is None
    np.testing.assert_allclose(losses.adaptive_weight(rec, tf.zeros(2), scale=1.0), losses.ADAPTIVE_WEIGHT_MAX)


def test_a_user_model_compiled_with_zoo_losses_saves_and_loads(tmp_path):
    """A Functional model of zoo layers, compiled with margin_loss: .keras
    round trip without custom_objects, the same loss after loading."""
    import keras

    from caps_zoo import layers, losses as zoo_losses

    keras.utils.set_random_seed(0)
    images = keras.Input((28, 28, 1))
    features = keras.layers.Conv2D(16, 9, activation="relu")(images)
    capsules = layers.PrimaryCaps(num_capsule_types=4, capsule_dim=4, kernel_size=9, strides=2)(features)
    scores = layers.Length()(layers.RoutingCaps(10, 8)(capsules))
    model = keras.Model(images, scores)
    model.compile(optimizer="adam", loss=zoo_losses.margin_loss)
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(8, 28, 28, 1)).astype("float32")
    y = rng.integers(0, 10, size=(8,)).astype("int32")
    model.fit(x, y, epochs=1, verbose=0)
    path = tmp_path / "user_model.keras"
    model.save(path)
    again = keras.models.load_model(path)
    assert again.loss is not None
    np.testing.assert_allclose(again.evaluate(x, y, verbose=0), model.evaluate(x, y, verbose=0), rtol=1e-6)
