"""MSE, PSNR and SSIM of reconstructions against NumPy references."""

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from caps_zoo import data
from caps_zoo.reconstruction_quality import reconstruction_quality


def numpy_ssim(a, b, size=11, sigma=1.5, k1=0.01, k2=0.03):
    """SSIM of two grey images (h, w) in [0, 1], Wang et al. 2004 with a
    Gaussian window over the valid positions, averaged."""
    coordinates = np.arange(size) - size // 2
    g = np.exp(-coordinates ** 2 / (2 * sigma ** 2))
    window = np.outer(g, g) / np.outer(g, g).sum()

    def filtered(x):
        return np.einsum("ijkl,kl->ij", sliding_window_view(x, (size, size)), window)

    c1, c2 = k1 ** 2, k2 ** 2
    mu_a, mu_b = filtered(a), filtered(b)
    var_a = filtered(a * a) - mu_a ** 2
    var_b = filtered(b * b) - mu_b ** 2
    cov = filtered(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return ssim_map.mean()


@pytest.fixture(scope="module")
def digits():
    images, _ = data.load_arrays("mnist_sample", "test")
    images = data.as_float_images(images[:40])
    rng = np.random.default_rng(0)
    blurred = np.clip(images + rng.normal(0, 0.1, images.shape), 0, 1).astype("float32")
    return images, blurred


def test_figures_match_numpy_per_image_then_averaged(digits):
    images, noisy = digits
    result = reconstruction_quality(images, noisy, batch_size=16)  # three batches, the last short
    a, b = images.astype("float64"), noisy.astype("float64")
    mse = ((a - b) ** 2).mean(axis=(1, 2, 3))
    assert result["n_images"] == 40
    assert result["mse"] == pytest.approx(mse.mean(), rel=1e-5)
    assert result["psnr_db"] == pytest.approx((10 * np.log10(1 / mse)).mean(), rel=1e-5)
    expected_ssim = np.mean([numpy_ssim(a[i, ..., 0], b[i, ..., 0]) for i in range(40)])
    assert result["ssim"] == pytest.approx(expected_ssim, abs=1e-4)
    assert 0 < result["ssim"] < 1
    # Batching does not change the figures.
    assert reconstruction_quality(images, noisy, batch_size=1000) == pytest.approx(result, rel=1e-6)


def test_a_perfect_reconstruction(digits):
    images, _ = digits
    result = reconstruction_quality(images, images)
    assert result["mse"] == 0 and result["psnr_db"] == float("inf") and result["ssim"] == pytest.approx(1.0)


@pytest.mark.parametrize("change, error, message", [
    (lambda x: x[..., 0], ValueError, "expected a non-empty batch"),
    (lambda x: (x * 255).astype("uint8"), TypeError, "expected float images"),
    (lambda x: x * 2 - 0.5, ValueError, "expected values in \\[0, 1\\]"),
    (lambda x: np.where(x > 0.5, np.nan, x), ValueError, "NaN or inf"),
    (lambda x: x[:5], ValueError, "the same shape"),
])
def test_bad_inputs_are_refused(digits, change, error, message):
    images, noisy = digits
    with pytest.raises(error, match=message):
        reconstruction_quality(images, change(noisy))
