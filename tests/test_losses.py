import numpy as np
import pytest

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
