"""Convolutional encoder, decoder and patch discriminator of taming-transformers'
VQGAN (Esser, Rombach & Ommer 2021, "Taming Transformers for High-Resolution
Image Synthesis"), at a small size for 28x28 grey images padded to 32x32.

The zoo's VQ-VAE, VQGAN, CV-VAE and CVGAN share these blocks and differ only
in their bottleneck, so that a comparison between them measures the
bottleneck. The blocks follow taming's ``taming/modules/diffusionmodules/
model.py`` (``ResnetBlock``, ``AttnBlock``, ``Downsample``, ``Upsample``,
``Encoder``, ``Decoder``) and ``taming/modules/discriminator/model.py``
(``NLayerDiscriminator``), in NHWC instead of PyTorch's NCHW:

- ``ResnetBlock``: GroupNorm, swish, 3x3 conv, GroupNorm, swish, dropout,
  3x3 conv, plus a 1x1 "nin" shortcut when the channel count changes.
- ``AttentionBlock``: single-head self-attention over the h*w positions.
- ``Downsample`` (pad bottom/right by one, 3x3 stride-2 valid conv) and
  ``Upsample`` (nearest 2x, 3x3 conv).
- ``ConvEncoder`` / ``ConvDecoder``: ``conv_in``, one level of ResnetBlocks
  per channel multiplier with a resampling between levels, a middle
  ResnetBlock-Attention-ResnetBlock, and GroupNorm, swish, ``conv_out``.
- ``PatchDiscriminator``: pix2pix's PatchGAN, one logit per image patch.

The parameters are taming's, including a few whose gradient is identically
zero, kept so that the architecture stays taming's (and its parameter
count, for comparisons); they never change an output, so training them is
harmless, but a weight decay shrinks them to no effect:

- every ``AttentionBlock``'s key bias: ``q_i . (k_j + b)`` adds ``q_i . b``
  to all logits of query ``i``, which the softmax over ``j`` cancels;
- a per-channel bias added to a map whose every consumer is a GroupNorm
  with one channel per group (32 or fewer channels, see ``num_groups``),
  which subtracts each channel's own mean: ``conv1``'s bias in a
  ``ResnetBlock`` of <= 32 output channels, and with the defaults the biases
  of ``conv2`` and ``nin_shortcut`` at the decoder's first level (32
  channels), whose sum reaches only GroupNorms. Taming's ``ch=128`` has 4
  channels per group and none of these.

Initialisation: the encoder and decoder convolutions use PyTorch's default
``Conv2d`` kernel initialisation, which taming keeps (uniform with bound
``1 / sqrt(fan_in)``, i.e. ``VarianceScaling(1/3, "fan_in", "uniform")``),
whose kernels are sqrt(3) times smaller than Keras' Glorot default for a
3x3 convolution keeping its channel count. Biases start at zero (PyTorch draws them uniformly). The
discriminator follows taming's ``weights_init``: kernels N(0, 0.02),
BatchNorm gamma N(1, 0.02), beta 0.

Dtypes: every block computes in its dtype policy's compute dtype (passed
down to every sub-layer). GroupNorm and BatchNorm compute their statistics
in float32 under a mixed policy (Keras upcasts them), and so do the
attention scores and their softmax (cheap at these map sizes; bfloat16's
8-bit mantissa would blur the logits). ``ConvEncoder``, ``ConvDecoder`` and
``PatchDiscriminator`` return float32: their outputs are what the
bottlenecks and the losses see. The inner blocks return the compute dtype.

Sub-layers whose configuration the constructor arguments fix are created in
``__init__``; those that depend on the input (a normalization or convolution
sized by the incoming channel count, an attention block placed by the
incoming resolution) are created in ``build``, so that a ``build(input_shape)``
(which a ``.keras`` load replays from the saved build config) creates every
weight before the values are loaded.
"""

import keras
from keras import ops

from caps_zoo import checks

MAX_GROUPS = 32  # taming's Normalize: GroupNorm(num_groups=32)
GROUP_NORM_EPSILON = 1e-6  # taming's Normalize: eps=1e-6
LEAKY_SLOPE = 0.2  # NLayerDiscriminator's LeakyReLU(0.2)




def _check_positive_int(name, value):
    if not checks.is_integer(value) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}.")
    return int(value)


def _check_dropout(dropout):
    if not checks.is_real(dropout) or not 0 <= dropout < 1:
        raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}.")
    return float(dropout)


def _check_int_tuple(name, values, allow_empty):
    try:
        values = tuple(values)
    except TypeError:
        values = None
    if (
        values is None
        or (not values and not allow_empty)
        or not all(checks.is_integer(v) and v >= 1 for v in values)
    ):
        what = "a tuple" if allow_empty else "a non-empty tuple"
        raise ValueError(f"{name} must be {what} of ints >= 1, got {values!r}.")
    return tuple(int(v) for v in values)


def _check_maps(layer, shape, what="feature maps", spatial=False):
    """Rank 4 with a known channel count (and height and width if ``spatial``)."""
    shape = tuple(shape)
    if (
        len(shape) != 4
        or shape[-1] is None
        or (spatial and (shape[1] is None or shape[2] is None))
    ):
        known = "known height, width and channels" if spatial else "a known channel count"
        raise ValueError(
            f"{layer.__class__.__name__} '{layer.name}' expects {what} "
            f"(batch, height, width, channels) with {known}, got shape {shape}."
        )
    return shape


def num_groups(channels, max_groups=MAX_GROUPS):
    """GroupNorm's group count for ``channels``: the largest divisor <= 32.

    Taming always uses 32 groups, which needs a multiple of 32 channels; the
    small channel counts of this zoo (e.g. 8, 48) are not, and Keras'
    ``GroupNormalization`` needs ``channels % groups == 0``. The largest
    divisor keeps groups as small as taming's where it can (one channel per
    group at 32 or fewer channels: instance normalization, taming's limit of
    ``groups = channels``), e.g. 64 -> 32, 48 -> 24, 40 -> 20, 7 -> 7.
    """
    channels = _check_positive_int("channels", channels)
    return max(g for g in range(1, min(max_groups, channels) + 1) if channels % g == 0)


def _group_norm(channels, dtype, name):
    return keras.layers.GroupNormalization(
        groups=num_groups(channels), epsilon=GROUP_NORM_EPSILON, dtype=dtype, name=name
    )


def _torch_default_kernel_init():
    # PyTorch's Conv2d default (kaiming_uniform with a = sqrt(5)): uniform in
    # +-1/sqrt(fan_in). A new instance per layer: each draws its own values.
    return keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform")


def _conv(filters, kernel_size, dtype, name, strides=1, padding="same", use_bias=True):
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        use_bias=use_bias,
        kernel_initializer=_torch_default_kernel_init(),
        bias_initializer="zeros",
        dtype=dtype,
        name=name,
    )


def _check_attention_resolutions(layer, resolutions):
    """Refuse resolutions no level reaches: taming would silently add no attention."""
    missing = sorted(set(layer.attention_resolutions) - set(resolutions))
    if missing:
        raise ValueError(
            f"{layer.__class__.__name__} '{layer.name}': attention_resolutions "
            f"{layer.attention_resolutions} names {tuple(missing)}, which no level reaches; "
            f"with this input its levels run at resolutions {tuple(resolutions)} "
            "(a level's resolution is its height)."
        )


@keras.saving.register_keras_serializable(package="caps_zoo")
class ResnetBlock(keras.layers.Layer):
    """Taming's pre-activation residual block (no timestep embedding).

    ``h = conv3x3(swish(norm1(x)))``, ``h = conv3x3(dropout(swish(norm2(h))))``,
    output ``shortcut(x) + h``, where ``shortcut`` is a 1x1 convolution
    (``nin_shortcut``) when the input's channel count differs from
    ``out_channels`` and the identity otherwise. Input ``(batch, height,
    width, in_channels)``, output ``(batch, height, width, out_channels)``.
    Both convolutions are 3x3, stride 1, zero padding 1 ("same").

    Args:
        out_channels: channels of the output.
        dropout: rate of the dropout before ``conv2`` (active only with
            ``training=True``).
    """

    def __init__(self, out_channels, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.out_channels = _check_positive_int("out_channels", out_channels)
        self.dropout = _check_dropout(dropout)
        self.conv1 = _conv(self.out_channels, 3, self.dtype_policy, "conv1")
        self.norm2 = _group_norm(self.out_channels, self.dtype_policy, "norm2")
        self.dropout_layer = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy,
                                                  name="dropout")
        self.conv2 = _conv(self.out_channels, 3, self.dtype_policy, "conv2")

    def build(self, input_shape):
        input_shape = _check_maps(self, input_shape)
        # norm1 and the shortcut are sized by the incoming channel count,
        # known only here.
        self.in_channels = int(input_shape[-1])
        self.norm1 = _group_norm(self.in_channels, self.dtype_policy, "norm1")
        self.norm1.build(input_shape)
        self.conv1.build(input_shape)
        output_shape = self.compute_output_shape(input_shape)
        self.norm2.build(output_shape)
        self.conv2.build(output_shape)
        if self.in_channels != self.out_channels:
            self.nin_shortcut = _conv(self.out_channels, 1, self.dtype_policy, "nin_shortcut")
            self.nin_shortcut.build(input_shape)
        else:
            self.nin_shortcut = None

    def call(self, inputs, training=None):
        h = self.conv1(ops.silu(self.norm1(inputs)))
        h = self.conv2(self.dropout_layer(ops.silu(self.norm2(h)), training=training))
        shortcut = inputs if self.nin_shortcut is None else self.nin_shortcut(inputs)
        return shortcut + h

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.out_channels,)

    def get_config(self):
        config = super().get_config()
        config.update(out_channels=self.out_channels, dropout=self.dropout)
        return config


@keras.saving.register_keras_serializable(package="caps_zoo")
class AttentionBlock(keras.layers.Layer):
    """Taming's ``AttnBlock``: single-head self-attention over all positions.

    ``h = norm(x)``; ``q, k, v`` are 1x1 convolutions of ``h`` with the
    input's channel count ``c``; every position ``i`` attends to every
    position ``j`` of the ``height * width`` map with weights
    ``softmax_j(q_i . k_j / sqrt(c))``; the attended values go through a 1x1
    ``proj_out`` and are added to ``x``. Shape-preserving.

    The key projection's bias is taming's but dead (the softmax cancels it;
    see the module doc). The scores and their softmax are computed in
    float32 under every policy.
    """

    def build(self, input_shape):
        input_shape = _check_maps(self, input_shape)
        # All four projections and the norm are sized by the input channels.
        self.channels = int(input_shape[-1])
        self.norm = _group_norm(self.channels, self.dtype_policy, "norm")
        self.q = _conv(self.channels, 1, self.dtype_policy, "q")
        self.k = _conv(self.channels, 1, self.dtype_policy, "k")
        self.v = _conv(self.channels, 1, self.dtype_policy, "v")
        self.proj_out = _conv(self.channels, 1, self.dtype_policy, "proj_out")
        for layer in (self.norm, self.q, self.k, self.v, self.proj_out):
            layer.build(input_shape)

    def call(self, inputs):
        h = self.norm(inputs)
        _, height, width, channels = ops.shape(inputs)
        positions = height * width

        def flat(tensor):  # (b, h, w, c) -> (b, h*w, c)
            return ops.reshape(tensor, (-1, positions, channels))

        q = ops.cast(flat(self.q(h)), "float32")
        k = ops.cast(flat(self.k(h)), "float32")
        v = flat(self.v(h))
        scores = ops.matmul(q, ops.transpose(k, (0, 2, 1))) * (self.channels ** -0.5)
        weights = ops.cast(ops.softmax(scores, axis=-1), v.dtype)  # over keys j
        attended = ops.reshape(ops.matmul(weights, v), (-1, height, width, channels))
        return inputs + self.proj_out(attended)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)


@keras.saving.register_keras_serializable(package="caps_zoo")
class Downsample(keras.layers.Layer):
    """Halve the resolution: taming's ``Downsample``.

    ``with_conv=True``: zero-pad the bottom and the right by one (PyTorch's
    ``pad=(0, 1, 0, 1)``), then a 3x3 stride-2 valid convolution with the
    input's channel count, so an even size halves exactly (32 -> 16) and the
    kernel's taps start at the top-left pixel. ``with_conv=False``: 2x2
    average pooling. Output ``(batch, (height - 2) // 2 + 1, ...)`` with the
    convolution, ``height // 2`` without; both ``height / 2`` for even sizes.
    """

    def __init__(self, with_conv=True, **kwargs):
        super().__init__(**kwargs)
        if with_conv not in (True, False):
            raise ValueError(f"with_conv must be True or False, got {with_conv!r}.")
        self.with_conv = bool(with_conv)
        if self.with_conv:
            self.pad = keras.layers.ZeroPadding2D(((0, 1), (0, 1)), dtype=self.dtype_policy,
                                                  name="pad")
        else:
            self.pool = keras.layers.AveragePooling2D(2, 2, dtype=self.dtype_policy, name="pool")

    def build(self, input_shape):
        input_shape = _check_maps(self, input_shape)
        if self.with_conv:
            # Sized by the incoming channel count, known only here.
            self.conv = _conv(int(input_shape[-1]), 3, self.dtype_policy, "conv", strides=2,
                              padding="valid")
            self.conv.build(self.pad.compute_output_shape(input_shape))

    def call(self, inputs):
        if self.with_conv:
            return self.conv(self.pad(inputs))
        return self.pool(inputs)

    def compute_output_shape(self, input_shape):
        def half(size):
            if size is None:
                return None
            return (size - 2) // 2 + 1 if self.with_conv else size // 2

        return (input_shape[0], half(input_shape[1]), half(input_shape[2]), input_shape[3])

    def get_config(self):
        config = super().get_config()
        config.update(with_conv=self.with_conv)
        return config


@keras.saving.register_keras_serializable(package="caps_zoo")
class Upsample(keras.layers.Layer):
    """Double the resolution: taming's ``Upsample``.

    Nearest-neighbour 2x (every pixel becomes a 2x2 block), then, with
    ``with_conv=True``, a 3x3 "same" convolution with the input's channel
    count, which smooths the blocks.
    """

    def __init__(self, with_conv=True, **kwargs):
        super().__init__(**kwargs)
        if with_conv not in (True, False):
            raise ValueError(f"with_conv must be True or False, got {with_conv!r}.")
        self.with_conv = bool(with_conv)
        self.upsampling = keras.layers.UpSampling2D(2, interpolation="nearest",
                                                    dtype=self.dtype_policy, name="upsampling")

    def build(self, input_shape):
        input_shape = _check_maps(self, input_shape)
        if self.with_conv:
            # Sized by the incoming channel count, known only here.
            self.conv = _conv(int(input_shape[-1]), 3, self.dtype_policy, "conv")
            self.conv.build(self.compute_output_shape(input_shape))

    def call(self, inputs):
        upsampled = self.upsampling(inputs)
        return self.conv(upsampled) if self.with_conv else upsampled

    def compute_output_shape(self, input_shape):
        def double(size):
            return None if size is None else 2 * size

        return (input_shape[0], double(input_shape[1]), double(input_shape[2]), input_shape[3])

    def get_config(self):
        config = super().get_config()
        config.update(with_conv=self.with_conv)
        return config


class _LevelsMixin:
    """Argument checks and config shared by ``ConvEncoder`` and ``ConvDecoder``."""

    def _set_levels(self, channels, channel_multipliers, num_res_blocks,
                    attention_resolutions, dropout):
        self.channels = _check_positive_int("channels", channels)
        self.channel_multipliers = _check_int_tuple(
            "channel_multipliers", channel_multipliers, allow_empty=False
        )
        self.num_res_blocks = _check_positive_int("num_res_blocks", num_res_blocks)
        self.attention_resolutions = _check_int_tuple(
            "attention_resolutions", attention_resolutions, allow_empty=True
        )
        self.dropout = _check_dropout(dropout)

    @property
    def num_levels(self):
        return len(self.channel_multipliers)

    @property
    def scale_factor(self):
        """How much the encoder shrinks (and the decoder grows) each side."""
        return 2 ** (self.num_levels - 1)

    def level_channels(self, level):
        return self.channels * self.channel_multipliers[level]

    def _levels_config(self):
        return dict(
            channels=self.channels,
            channel_multipliers=self.channel_multipliers,
            num_res_blocks=self.num_res_blocks,
            attention_resolutions=self.attention_resolutions,
            dropout=self.dropout,
        )


@keras.saving.register_keras_serializable(package="caps_zoo")
class ConvEncoder(_LevelsMixin, keras.layers.Layer):
    """Taming's VQGAN ``Encoder`` (without ``double_z``: no VAE here).

    ``conv_in`` (3x3, to ``channels``); for each level ``i``:
    ``num_res_blocks`` ``ResnetBlock`` s to ``channels * channel_multipliers[i]``
    (each followed by an ``AttentionBlock`` if the level's resolution is in
    ``attention_resolutions``), then a ``Downsample`` except after the last
    level; middle ``ResnetBlock``, ``AttentionBlock``, ``ResnetBlock``; end
    GroupNorm, swish, ``conv_out`` (3x3, to ``latent_channels``, linear).

    Input ``(batch, height, width, channels_in)`` with height and width
    divisible by ``2 ** (levels - 1)``; output ``(batch, height / 2 **
    (levels - 1), width / 2 ** (levels - 1), latent_channels)``, float32.
    Defaults: ``(b, 32, 32, 1) -> (b, 8, 8, 64)``.

    Args:
        channels: channels of ``conv_in`` and of the first level (taming's
            ``ch``).
        channel_multipliers: one per level (taming's ``ch_mult``).
        num_res_blocks: ``ResnetBlock`` s per level, >= 1.
        latent_channels: channels of the output (taming's ``z_channels``).
        attention_resolutions: resolutions (map heights) after whose blocks
            an ``AttentionBlock`` goes (taming's ``attn_resolutions``); the
            middle always has one. A resolution no level reaches is refused
            at build.
        dropout: of every ``ResnetBlock``.
    """

    def __init__(
        self,
        channels=32,
        channel_multipliers=(1, 2, 2),
        num_res_blocks=1,
        latent_channels=64,
        attention_resolutions=(),
        dropout=0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._set_levels(channels, channel_multipliers, num_res_blocks,
                         attention_resolutions, dropout)
        self.latent_channels = _check_positive_int("latent_channels", latent_channels)
        dtype = self.dtype_policy
        self.conv_in = _conv(self.channels, 3, dtype, "conv_in")
        # Flat, in call order: level i's blocks are
        # down_blocks[i * num_res_blocks:(i + 1) * num_res_blocks].
        self.down_blocks = [
            ResnetBlock(self.level_channels(i), self.dropout, dtype=dtype,
                        name=f"down{i}_block{j}")
            for i in range(self.num_levels)
            for j in range(self.num_res_blocks)
        ]
        self.downsamples = [
            Downsample(dtype=dtype, name=f"down{i}_downsample") for i in range(self.num_levels - 1)
        ]
        middle = self.level_channels(-1)
        self.mid_block1 = ResnetBlock(middle, self.dropout, dtype=dtype, name="mid_block1")
        self.mid_attention = AttentionBlock(dtype=dtype, name="mid_attention")
        self.mid_block2 = ResnetBlock(middle, self.dropout, dtype=dtype, name="mid_block2")
        self.norm_out = _group_norm(middle, dtype, "norm_out")
        self.conv_out = _conv(self.latent_channels, 3, dtype, "conv_out")

    def level_resolutions(self, height):
        """The map height at each level for an input of ``height``."""
        return tuple(height // 2**i for i in range(self.num_levels))

    def build(self, input_shape):
        input_shape = _check_maps(self, input_shape, "images", spatial=True)
        height, width = input_shape[1], input_shape[2]
        if height % self.scale_factor or width % self.scale_factor:
            raise ValueError(
                f"ConvEncoder '{self.name}' expects a height and width divisible by "
                f"2 ** (levels - 1) = {self.scale_factor} (channel_multipliers "
                f"{self.channel_multipliers}: {self.num_levels} levels, a halving between "
                f"each two), got {height}x{width}; pad the images (28 -> 32 for MNIST)."
            )
        resolutions = self.level_resolutions(height)
        _check_attention_resolutions(self, resolutions)
        # Attention blocks are placed by resolution, known only here; slots
        # are (level, block) pairs, in call order.
        self.down_attentions = []
        slots = []
        shape = input_shape
        self.conv_in.build(shape)
        shape = self.conv_in.compute_output_shape(shape)
        for i in range(self.num_levels):
            for j in range(self.num_res_blocks):
                block = self.down_blocks[i * self.num_res_blocks + j]
                block.build(shape)
                shape = block.compute_output_shape(shape)
                if resolutions[i] in self.attention_resolutions:
                    attention = AttentionBlock(dtype=self.dtype_policy,
                                               name=f"down{i}_attention{j}")
                    attention.build(shape)
                    self.down_attentions.append(attention)
                    slots.append(f"{i}/{j}")
            if i < self.num_levels - 1:
                self.downsamples[i].build(shape)
                shape = self.downsamples[i].compute_output_shape(shape)
        self._attention_slots = "|".join(slots)  # a str: no state to track
        for layer in (self.mid_block1, self.mid_attention, self.mid_block2, self.norm_out):
            layer.build(shape)
        self.conv_out.build(shape)

    def call(self, inputs, training=None):
        slots = self._attention_slots.split("|")
        attentions = iter(self.down_attentions)
        h = self.conv_in(inputs)
        for i in range(self.num_levels):
            for j in range(self.num_res_blocks):
                h = self.down_blocks[i * self.num_res_blocks + j](h, training=training)
                if f"{i}/{j}" in slots:
                    h = next(attentions)(h)
            if i < self.num_levels - 1:
                h = self.downsamples[i](h)
        h = self.mid_block1(h, training=training)
        h = self.mid_attention(h)
        h = self.mid_block2(h, training=training)
        h = self.conv_out(ops.silu(self.norm_out(h)))
        return ops.cast(h, "float32")

    def compute_output_shape(self, input_shape):
        def shrink(size):
            return None if size is None else size // self.scale_factor

        return (input_shape[0], shrink(input_shape[1]), shrink(input_shape[2]),
                self.latent_channels)

    def compute_output_spec(self, inputs, training=None):
        return keras.KerasTensor(self.compute_output_shape(inputs.shape), dtype="float32")

    def get_config(self):
        config = super().get_config()
        config.update(self._levels_config(), latent_channels=self.latent_channels)
        return config


@keras.saving.register_keras_serializable(package="caps_zoo")
class ConvDecoder(_LevelsMixin, keras.layers.Layer):
    """Taming's VQGAN ``Decoder``, the mirror of ``ConvEncoder``.

    ``conv_in`` (3x3, from whatever channels come in to ``channels *
    channel_multipliers[-1]``); middle ``ResnetBlock``, ``AttentionBlock``,
    ``ResnetBlock``; for each level ``i`` from the last to the first:
    ``num_res_blocks + 1`` ``ResnetBlock`` s to ``channels *
    channel_multipliers[i]`` (attention as in ``ConvEncoder``), then an
    ``Upsample`` except at level 0; end GroupNorm, swish, ``conv_out`` (3x3,
    to ``output_channels``, linear: no activation, as taming, so the models
    choose the likelihood).

    Input ``(batch, height, width, any)``; output ``(batch, height * 2 **
    (levels - 1), width * 2 ** (levels - 1), output_channels)``, float32.
    Defaults: ``(b, 8, 8, c) -> (b, 32, 32, 1)``.

    ``last_layer`` is ``conv_out``: VQGAN's adaptive weight
    ``|grad_nll| / (|grad_gan| + 1e-4)`` takes both gradients with respect to
    ``last_layer.kernel``.

    Args: as ``ConvEncoder``'s, with ``output_channels`` (taming's
    ``out_ch``) for ``latent_channels``; the resolutions of
    ``attention_resolutions`` are map heights inside the decoder (the input's
    at the last level, the output's at level 0).
    """

    def __init__(
        self,
        channels=32,
        channel_multipliers=(1, 2, 2),
        num_res_blocks=1,
        output_channels=1,
        attention_resolutions=(),
        dropout=0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._set_levels(channels, channel_multipliers, num_res_blocks,
                         attention_resolutions, dropout)
        self.output_channels = _check_positive_int("output_channels", output_channels)
        dtype = self.dtype_policy
        middle = self.level_channels(-1)
        self.conv_in = _conv(middle, 3, dtype, "conv_in")
        self.mid_block1 = ResnetBlock(middle, self.dropout, dtype=dtype, name="mid_block1")
        self.mid_attention = AttentionBlock(dtype=dtype, name="mid_attention")
        self.mid_block2 = ResnetBlock(middle, self.dropout, dtype=dtype, name="mid_block2")
        # Flat, in call order (last level first), named by level as taming's
        # up[i_level]: the k-th level run is level L-1-k.
        self.up_blocks = [
            ResnetBlock(self.level_channels(i), self.dropout, dtype=dtype, name=f"up{i}_block{j}")
            for i in reversed(range(self.num_levels))
            for j in range(self.num_res_blocks + 1)
        ]
        self.upsamples = [
            Upsample(dtype=dtype, name=f"up{i}_upsample")
            for i in reversed(range(1, self.num_levels))
        ]
        self.norm_out = _group_norm(self.level_channels(0), dtype, "norm_out")
        self.conv_out = _conv(self.output_channels, 3, dtype, "conv_out")

    @property
    def last_layer(self):
        """The output convolution, whose kernel VQGAN's adaptive weight uses."""
        return self.conv_out

    def level_resolutions(self, height):
        """The map height at each level (index = level) for an input of ``height``."""
        return tuple(height * 2 ** (self.num_levels - 1 - i) for i in range(self.num_levels))

    def _blocks_of(self, run):
        per = self.num_res_blocks + 1
        return self.up_blocks[run * per:(run + 1) * per]

    def build(self, input_shape):
        input_shape = _check_maps(self, input_shape, "latent maps", spatial=True)
        resolutions = self.level_resolutions(input_shape[1])
        _check_attention_resolutions(self, resolutions)
        shape = input_shape
        self.conv_in.build(shape)
        shape = self.conv_in.compute_output_shape(shape)
        for layer in (self.mid_block1, self.mid_attention, self.mid_block2):
            layer.build(shape)
        # Attention blocks are placed by resolution, known only here.
        self.up_attentions = []
        slots = []
        for run, i in enumerate(reversed(range(self.num_levels))):
            for j, block in enumerate(self._blocks_of(run)):
                block.build(shape)
                shape = block.compute_output_shape(shape)
                if resolutions[i] in self.attention_resolutions:
                    attention = AttentionBlock(dtype=self.dtype_policy, name=f"up{i}_attention{j}")
                    attention.build(shape)
                    self.up_attentions.append(attention)
                    slots.append(f"{i}/{j}")
            if i > 0:
                self.upsamples[run].build(shape)
                shape = self.upsamples[run].compute_output_shape(shape)
        self._attention_slots = "|".join(slots)  # a str: no state to track
        self.norm_out.build(shape)
        self.conv_out.build(shape)

    def call(self, inputs, training=None):
        slots = self._attention_slots.split("|")
        attentions = iter(self.up_attentions)
        h = self.conv_in(inputs)
        h = self.mid_block1(h, training=training)
        h = self.mid_attention(h)
        h = self.mid_block2(h, training=training)
        for run, i in enumerate(reversed(range(self.num_levels))):
            for j, block in enumerate(self._blocks_of(run)):
                h = block(h, training=training)
                if f"{i}/{j}" in slots:
                    h = next(attentions)(h)
            if i > 0:
                h = self.upsamples[run](h)
        h = self.conv_out(ops.silu(self.norm_out(h)))
        return ops.cast(h, "float32")

    def compute_output_shape(self, input_shape):
        def grow(size):
            return None if size is None else size * self.scale_factor

        return (input_shape[0], grow(input_shape[1]), grow(input_shape[2]), self.output_channels)

    def compute_output_spec(self, inputs, training=None):
        return keras.KerasTensor(self.compute_output_shape(inputs.shape), dtype="float32")

    def get_config(self):
        config = super().get_config()
        config.update(self._levels_config(), output_channels=self.output_channels)
        return config


@keras.saving.register_keras_serializable(package="caps_zoo")
class PatchDiscriminator(keras.layers.Layer):
    """Taming's ``NLayerDiscriminator``: pix2pix's PatchGAN, logits per patch.

    4x4 convolutions, each after a zero padding of 1 on every side (PyTorch's
    ``padding=1``; Keras' "same" would pad a stride-2 4x4 kernel
    asymmetrically):

    1. to ``channels``, stride 2, LeakyReLU(0.2);
    2. for ``n = 1 .. num_layers - 1``: to ``channels * min(2**n, 8)``,
       stride 2, BatchNorm, LeakyReLU(0.2);
    3. to ``channels * min(2**num_layers, 8)``, stride 1, BatchNorm,
       LeakyReLU(0.2);
    4. to 1 channel, stride 1: one logit per patch (no sigmoid).

    A stride-2 step maps a size ``s`` to ``s // 2``, a stride-1 step to
    ``s - 1``, so the output is ``(batch, height // 2**num_layers - 2, width
    // 2**num_layers - 2, 1)``, float32. For a 32x32 input: 6x6 logits with
    the default ``num_layers=2`` (each seeing a 34x34 window of the padded
    image: nearly all of it), 14x14 with ``num_layers=1`` (16x16 windows),
    2x2 with ``num_layers=3`` (taming's default, 70x70 windows, made for
    256x256 images). An input too small for one logit is refused at build.

    Initialisation as taming's ``weights_init``: kernels N(0, 0.02), BatchNorm
    gamma N(1, 0.02) and beta 0; biases 0. The convolutions before a
    BatchNorm have no bias (it would subtract it). BatchNorm uses PyTorch's
    momentum 0.1 (Keras ``momentum=0.9``) and epsilon 1e-5, and the batch's
    statistics only with ``training=True``. Keras also switches BatchNorm to
    its moving statistics when the layer is frozen (``trainable = False``):
    to keep taming's generator step (batch statistics), leave the layer
    trainable and take that step's gradients only for the generator's
    weights.

    Args:
        channels: of the first convolution (taming's ``ndf``).
        num_layers: stride-2 convolutions (taming's ``n_layers``), >= 1.
    """

    def __init__(self, channels=64, num_layers=2, **kwargs):
        super().__init__(**kwargs)
        self.channels = _check_positive_int("channels", channels)
        self.num_layers = _check_positive_int("num_layers", num_layers)
        dtype = self.dtype_policy
        filters = [self.channels * min(2**n, 8) for n in range(self.num_layers + 1)] + [1]
        strides = [2] * self.num_layers + [1, 1]
        last = len(filters) - 1
        self.pads = [
            keras.layers.ZeroPadding2D(1, dtype=dtype, name=f"pad{index}")
            for index in range(len(filters))
        ]
        self.convs = [
            keras.layers.Conv2D(
                f, 4, strides=s, padding="valid",
                use_bias=index in (0, last),  # the others feed a BatchNorm
                kernel_initializer=keras.initializers.RandomNormal(0.0, 0.02),
                bias_initializer="zeros", dtype=dtype, name=f"conv{index}",
            )
            for index, (f, s) in enumerate(zip(filters, strides))
        ]
        self.norms = [
            keras.layers.BatchNormalization(
                momentum=0.9, epsilon=1e-5,
                gamma_initializer=keras.initializers.RandomNormal(1.0, 0.02),
                beta_initializer="zeros", dtype=dtype, name=f"norm{index}",
            )
            for index in range(1, last)
        ]

    def build(self, input_shape):
        input_shape = _check_maps(self, input_shape, "images")
        output_shape = self.compute_output_shape(input_shape)
        if any(size is not None and size < 1 for size in output_shape[1:3]):
            minimum = 3 * 2**self.num_layers
            raise ValueError(
                f"PatchDiscriminator '{self.name}' with num_layers={self.num_layers} needs "
                f"images of at least {minimum}x{minimum} (one logit), got shape "
                f"{tuple(input_shape)}."
            )
        shape = input_shape
        for index, (pad, conv) in enumerate(zip(self.pads, self.convs)):
            shape = pad.compute_output_shape(shape)
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
            if 0 < index < len(self.convs) - 1:
                self.norms[index - 1].build(shape)

    def call(self, inputs, training=None):
        h = inputs
        last = len(self.convs) - 1
        for index, (pad, conv) in enumerate(zip(self.pads, self.convs)):
            h = conv(pad(h))
            if index == last:
                break
            if index > 0:
                h = self.norms[index - 1](h, training=training)
            h = ops.leaky_relu(h, LEAKY_SLOPE)
        return ops.cast(h, "float32")

    def compute_output_shape(self, input_shape):
        def patches(size):
            if size is None:
                return None
            return size // 2**self.num_layers - 2

        return (input_shape[0], patches(input_shape[1]), patches(input_shape[2]), 1)

    def compute_output_spec(self, inputs, training=None):
        return keras.KerasTensor(self.compute_output_shape(inputs.shape), dtype="float32")

    def get_config(self):
        config = super().get_config()
        config.update(channels=self.channels, num_layers=self.num_layers)
        return config
