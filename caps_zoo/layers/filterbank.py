"""DRAW's differentiable Gaussian attention: ``FilterbankRead`` and ``FilterbankWrite``.

Gregor et al. (2015), eqs. 19-29, restated in the DCRW paper (eqs. 13-23).
From the decoder state a dense layer gives ``(g~X, g~Y, log sigma^2, log
delta~, log gamma)``; an N x N grid of Gaussian filters centred at
``(gX, gY)`` with stride ``delta`` and variance ``sigma^2`` gives the
filterbank matrices ``F_X (N x A)`` and ``F_Y (N x B)`` (rows sum to one).

- read:  ``gamma * [F_Y x F_X^T, F_Y x^ F_X^T]``  (a glimpse of x and of the error image)
- write: ``1 / gamma * F_Y^T w F_X``                 (an N x N patch w placed on the canvas)

Pixel coordinates run 1..A and 1..B, so ``g~ = 0`` puts the window's centre
at ``(A + 1) / 2``, the image's centre, as the equations intend (0-based
coordinates would shift it by one pixel). Images are ``(batch, B, A, C)``:
height B, width A, C channels filtered alike.
"""

import keras
from keras import ops

NUM_WINDOW_PARAMS = 5  # g~X, g~Y, log sigma^2, log delta~, log gamma


def attention_window(raw_params, height, width, patch_size):
    """Map the dense layer's 5 outputs to the window, in pixels (eqs. 22-24 of DRAW).

    Returns a dict of ``(batch,)`` tensors: ``center_x``, ``center_y``
    (gX, gY), ``stride`` (delta), ``variance`` (sigma^2) and ``intensity``
    (gamma).
    """
    raw_params = ops.cast(raw_params, "float32")
    g_x, g_y, log_variance, log_stride, log_intensity = ops.unstack(raw_params, 5, axis=-1)
    # With N = 1 the stride is irrelevant (one filter); avoid dividing by 0.
    stride_scale = (max(height, width) - 1) / max(patch_size - 1, 1)
    return {
        "center_x": (width + 1) / 2 * (g_x + 1),
        "center_y": (height + 1) / 2 * (g_y + 1),
        "stride": stride_scale * ops.exp(log_stride),
        "variance": ops.exp(log_variance),
        "intensity": ops.exp(log_intensity),
    }


def window_box(window, patch_size):
    """The window's extent as ``(..., 4)``: x0, y0, x1, y1 in 0-based pixels.

    The box spans the first and last filter centres, ``g +- (N - 1) / 2 *
    delta`` (what the papers' figures draw).
    """
    half = (patch_size - 1) / 2 * window["stride"]
    # Filter centres are 1-based pixel coordinates; image arrays are 0-based.
    x, y = window["center_x"] - 1.0, window["center_y"] - 1.0
    return ops.stack([x - half, y - half, x + half, y + half], axis=-1)


def filterbank(center, stride, variance, patch_size, image_size):
    """``F[b, i, a]`` of eq. 25/26: shape ``(batch, patch_size, image_size)``.

    Row i is a Gaussian over pixels a = 1..image_size centred at
    ``mu_i = center + (i - N/2 - 0.5) * stride`` (i = 1..N), normalised to
    sum to one. The normalisation is a softmax over pixels: the same as
    dividing by the row sum, but a window far outside the image (every
    Gaussian value underflows to 0) still gives finite rows and gradients.
    """
    offsets = ops.arange(1, patch_size + 1, dtype="float32") - patch_size / 2 - 0.5
    means = center[:, None] + offsets[None, :] * stride[:, None]  # (b, N)
    pixels = ops.arange(1, image_size + 1, dtype="float32")
    logits = -ops.square(pixels[None, None, :] - means[:, :, None]) / (
        2.0 * variance[:, None, None]
    )
    return ops.softmax(logits, axis=-1)


def window_filterbanks(window, patch_size, height, width):
    """``(F_X (b, N, width), F_Y (b, N, height))`` of an ``attention_window``."""
    f_x = filterbank(window["center_x"], window["stride"], window["variance"], patch_size, width)
    f_y = filterbank(window["center_y"], window["stride"], window["variance"], patch_size, height)
    return f_x, f_y


def read_patch(images, f_x, f_y):
    """``F_Y x F_X^T`` per channel: ``(b, B, A, C)`` to ``(b, N, N, C)``."""
    rows = ops.einsum("biy,byxc->bixc", f_y, images)
    return ops.einsum("bixc,bjx->bijc", rows, f_x)


def write_patch(patch, f_x, f_y):
    """``F_Y^T w F_X`` per channel: ``(b, N, N, C)`` to ``(b, B, A, C)``."""
    rows = ops.einsum("biy,bijc->byjc", f_y, patch)
    return ops.einsum("byjc,bjx->byxc", rows, f_x)


def _window_dense(name):
    # float32 under mixed precision: exp() of its outputs sets the window.
    return keras.layers.Dense(NUM_WINDOW_PARAMS, dtype="float32", name=name)


@keras.saving.register_keras_serializable(package="caps_zoo")
class FilterbankRead(keras.layers.Layer):
    """DRAW's read: a glimpse of the image and of the error image.

    ``call(images, error_images, decoder_state)`` returns ``(batch, N, N, 2C)``
    with attention (``gamma * [F_Y x F_X^T, F_Y x^ F_X^T]``, the window
    computed from ``decoder_state``), or ``(batch, B, A, 2C)`` without it
    (``[x, x^]``, the whole images; ``decoder_state`` is then unused).
    Flatten it for a dense encoder; a convolutional encoder takes it as is.
    With ``return_window=True`` it also returns the ``attention_window`` dict
    (None without attention).

    Args:
        read_size: N, the glimpse's side in filters.
        attention: False reads the whole images.
    """

    def __init__(self, read_size=2, attention=True, **kwargs):
        super().__init__(**kwargs)
        if int(read_size) < 1:
            raise ValueError(f"read_size must be >= 1, got {read_size}.")
        self.read_size = int(read_size)
        self.attention = bool(attention)
        self.window_dense = _window_dense("read_window") if self.attention else None

    def build(self, images_shape, error_images_shape=None, decoder_state_shape=None):
        if len(images_shape) != 4:
            raise ValueError(
                f"FilterbankRead expects images (batch, height, width, channels); got {images_shape}."
            )
        if self.attention:
            self.window_dense.build(decoder_state_shape)
        self.built = True

    def compute_output_shape(self, images_shape, error_images_shape=None, decoder_state_shape=None):
        channels = 2 * images_shape[-1]
        if self.attention:
            return (images_shape[0], self.read_size, self.read_size, channels)
        return (*images_shape[:3], channels)

    def call(self, images, error_images, decoder_state=None, return_window=False):
        if not self.attention:
            glimpse = ops.concatenate([images, error_images], axis=-1)
            return (glimpse, None) if return_window else glimpse
        height, width = images.shape[1], images.shape[2]
        window = attention_window(
            self.window_dense(decoder_state), height, width, self.read_size
        )
        f_x, f_y = window_filterbanks(window, self.read_size, height, width)
        glimpse = ops.concatenate(
            [read_patch(images, f_x, f_y), read_patch(error_images, f_x, f_y)], axis=-1
        )
        glimpse = window["intensity"][:, None, None, None] * glimpse
        return (glimpse, window) if return_window else glimpse

    def get_config(self):
        config = super().get_config()
        config.update(read_size=self.read_size, attention=self.attention)
        return config


@keras.saving.register_keras_serializable(package="caps_zoo")
class FilterbankWrite(keras.layers.Layer):
    """DRAW's write: what the decoder adds to the canvas at one step.

    ``call(decoder_state)`` returns ``(batch, B, A, C)``. With attention a
    dense layer gives an N x N x C patch ``w`` that is placed by the window
    (``1 / gamma * F_Y^T w F_X``); without it, a dense layer gives the whole
    image. With ``return_window=True`` it also returns the
    ``attention_window`` dict (None without attention).

    Args:
        write_size: N, the written patch's side.
        image_shape: ``(B, A, C)`` of the canvas.
        attention: False writes the whole canvas through a dense layer.
    """

    def __init__(self, write_size=5, image_shape=(28, 28, 1), attention=True, **kwargs):
        super().__init__(**kwargs)
        if int(write_size) < 1:
            raise ValueError(f"write_size must be >= 1, got {write_size}.")
        self.write_size = int(write_size)
        self.image_shape = tuple(int(v) for v in image_shape)
        if len(self.image_shape) != 3:
            raise ValueError(f"image_shape must be (height, width, channels); got {image_shape}.")
        self.attention = bool(attention)
        height, width, channels = self.image_shape
        patch_units = (
            self.write_size * self.write_size * channels if self.attention else height * width * channels
        )
        self.patch_dense = keras.layers.Dense(patch_units, dtype="float32", name="write_patch")
        self.window_dense = _window_dense("write_window") if self.attention else None

    def build(self, decoder_state_shape):
        self.patch_dense.build(decoder_state_shape)
        if self.attention:
            self.window_dense.build(decoder_state_shape)
        self.built = True

    def compute_output_shape(self, decoder_state_shape):
        return (decoder_state_shape[0], *self.image_shape)

    def call(self, decoder_state, return_window=False):
        height, width, channels = self.image_shape
        patch = self.patch_dense(decoder_state)
        if not self.attention:
            canvas_update = ops.reshape(patch, (-1, height, width, channels))
            return (canvas_update, None) if return_window else canvas_update
        patch = ops.reshape(patch, (-1, self.write_size, self.write_size, channels))
        window = attention_window(self.window_dense(decoder_state), height, width, self.write_size)
        f_x, f_y = window_filterbanks(window, self.write_size, height, width)
        canvas_update = write_patch(patch, f_x, f_y) / window["intensity"][:, None, None, None]
        return (canvas_update, window) if return_window else canvas_update

    def get_config(self):
        config = super().get_config()
        config.update(
            write_size=self.write_size, image_shape=self.image_shape, attention=self.attention
        )
        return config
