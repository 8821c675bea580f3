"""``image_size=``: one size for every image, only when it is asked for.

Without ``image_size`` no dataset's images are resized or cropped. With
``image_size=(height, width)`` every image is first cropped centrally to the
largest box of that aspect ratio (so nothing is stretched: a 178x218 CelebA
image loses rows at the top and bottom for a square size), then resized to
the size (bilinear, antialiased when shrinking), rounded back to uint8 0-255.
The channels stay as they are.
"""

import numpy as np
import tensorflow as tf

from caps_zoo import checks

# Images resized per pass over an in-memory array: bounds the float32
# intermediates (4,096 images of 64x64x3 are 200 MB).
_CHUNK = 4096


def check_image_size(image_size):
    """``(height, width)`` as ints, or a ValueError unless two integers >= 1 (or None)."""
    if image_size is None:
        return None
    if (isinstance(image_size, (str, bytes)) or len(np.shape(image_size)) != 1
            or len(image_size) != 2 or not all(checks.is_integer(side) and side >= 1 for side in image_size)):
        raise ValueError(f"image_size must be None or (height, width), two integers >= 1; got {image_size!r}.")
    return int(image_size[0]), int(image_size[1])


def resize(images, image_size):
    """uint8 images ``(h, w, c)`` or ``(n, h, w, c)`` (a tensor; the shape may be
    dynamic) centrally cropped to the aspect ratio of ``image_size``, resized
    to it, as uint8."""
    height, width = image_size
    shape = tf.shape(images)
    source_height, source_width = shape[-3], shape[-2]
    # The largest box of the target's aspect ratio inside the image.
    scale = tf.minimum(tf.cast(source_height, tf.float64) / height, tf.cast(source_width, tf.float64) / width)
    crop_height = tf.clip_by_value(tf.cast(tf.round(height * scale), tf.int32), 1, source_height)
    crop_width = tf.clip_by_value(tf.cast(tf.round(width * scale), tf.int32), 1, source_width)
    cropped = tf.image.crop_to_bounding_box(images, (source_height - crop_height) // 2,
                                            (source_width - crop_width) // 2, crop_height, crop_width)
    resized = tf.image.resize(cropped, (height, width), method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


def resize_arrays(images, image_size):
    """uint8 numpy images ``(n, h, w)`` or ``(n, h, w, c)`` resized as
    ``resize`` does, in the same layout (single-channel images stay
    ``(n, h, w)``); returned as they are when ``image_size`` is None."""
    image_size = check_image_size(image_size)
    if image_size is None:
        return images
    grey = images.ndim == 3
    stacked = images[..., None] if grey else images
    chunks = [resize(tf.constant(stacked[start:start + _CHUNK]), image_size).numpy()
              for start in range(0, len(stacked), _CHUNK)]
    resized = (np.concatenate(chunks) if chunks
               else np.zeros((0, *image_size, stacked.shape[-1]), np.uint8))
    return resized[..., 0] if grey else resized


# ITU-R 601 luma, as tf.image.rgb_to_grayscale weighs the channels.
LUMA_WEIGHTS = (0.2989, 0.5870, 0.1140)


def convert_channels(images, channels):
    """Float images ``(n, h, w, c)`` with ``channels`` channels: grey to
    colour repeats the channel (what a colour model trained elsewhere sees of
    MNIST), colour to grey takes the luma (``tf.image.rgb_to_grayscale``'s
    weights); None, or the channels they have, leaves them as they are."""
    if channels is None:
        return images
    if channels not in (1, 3):
        raise ValueError(f"channels must be None, 1 (grey) or 3 (colour); got {channels!r}.")
    have = images.shape[-1]
    if have == channels:
        return images
    if have == 1:
        return np.repeat(images, 3, axis=-1)
    if have == 3:
        return (images @ np.asarray(LUMA_WEIGHTS, dtype=images.dtype))[..., None]
    raise ValueError(f"cannot convert images of {have} channels to {channels}: expected 1 or 3 channels.")
