"""How close reconstructions are to their images: MSE, PSNR and SSIM, the
pixel figures of the CV-VAE comparison (issue 12's table).

    from caps_zoo.reconstruction_quality import reconstruction_quality

    reconstructions = model.reconstruct(images)           # clipped to [0, 1]
    reconstruction_quality(images, reconstructions)
    # {"mse": ..., "psnr_db": ..., "ssim": ..., "n_images": ...}

Each figure is computed per image and averaged over the images (so a
dataset's PSNR is the mean of per-image PSNRs, as ``tf.image.psnr`` gives
them, not the PSNR of the mean squared error). Images are grey levels in
[0, 1] (``max_val=1``). SSIM is ``tf.image.ssim``'s: an 11x11 Gaussian window
of sigma 1.5, k1 = 0.01, k2 = 0.03, over the valid positions only (on 28x28
images, the 18x18 windows whose centre lies at least 5 pixels from the
border), averaged over the window positions and the channels.

A perfect reconstruction has MSE 0, PSNR inf and SSIM 1; the PSNR of such
an image is inf, and so is the mean over images if any is perfect: a
dataset mean of inf says that some reconstruction was exact.
"""

import numpy as np
import tensorflow as tf

from caps_zoo import checks


def _checked(images, what):
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"{what}: expected a non-empty batch (n, height, width, channels); got shape "
                         f"{images.shape}.")
    if not np.issubdtype(images.dtype, np.floating):
        raise TypeError(f"{what}: expected float images with values in [0, 1]; got dtype {images.dtype}. "
                        "Convert with images.astype('float32') / 255.")
    if not np.isfinite(images).all():
        raise ValueError(f"{what}: the images hold NaN or inf.")
    low, high = float(images.min()), float(images.max())
    if low < 0 or high > 1:
        raise ValueError(f"{what}: expected values in [0, 1] (clip reconstructions, e.g. model.reconstruct); "
                         f"got min {low:.4g}, max {high:.4g}.")
    return images.astype(np.float32)


def reconstruction_quality(images, reconstructions, batch_size=1000):
    """``{"mse", "psnr_db", "ssim", "n_images"}``: per-image MSE, PSNR (dB)
    and SSIM of ``reconstructions`` against ``images``, averaged over the
    images (module docstring). Both are float ``(n, h, w, c)`` in [0, 1], of
    the same shape."""
    images = _checked(images, "images")
    reconstructions = _checked(reconstructions, "reconstructions")
    if images.shape != reconstructions.shape:
        raise ValueError(f"images and reconstructions must have the same shape; got {images.shape} and "
                         f"{reconstructions.shape}.")
    if min(images.shape[1:3]) < 11:
        raise ValueError(f"SSIM's 11x11 window needs images of at least 11x11; got {images.shape[1:3]}.")
    batch_size = checks.check_count("batch_size", batch_size)
    mse, psnr, ssim = [], [], []
    for start in range(0, len(images), batch_size):
        a = tf.constant(images[start:start + batch_size])
        b = tf.constant(reconstructions[start:start + batch_size])
        mse.append(tf.reduce_mean(tf.square(a - b), axis=(1, 2, 3)).numpy())
        psnr.append(tf.image.psnr(a, b, max_val=1.0).numpy())
        ssim.append(tf.image.ssim(a, b, max_val=1.0).numpy())
    return {"mse": float(np.mean(np.concatenate(mse), dtype=np.float64)),
            "psnr_db": float(np.mean(np.concatenate(psnr), dtype=np.float64)),
            "ssim": float(np.mean(np.concatenate(ssim), dtype=np.float64)),
            "n_images": int(len(images))}
