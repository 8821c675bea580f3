import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import perturb_moving_statistics

from caps_zoo.layers.autoencoder_blocks import (
    AttentionBlock,
    ConvDecoder,
    ConvEncoder,
    Downsample,
    PatchDiscriminator,
    ResnetBlock,
    Upsample,
    num_groups,
)

SMALL = dict(channels=8, channel_multipliers=(1, 2), num_res_blocks=1)


def images(batch=2, size=32, channels=1, seed=0):
    return np.random.default_rng(seed).random((batch, size, size, channels)).astype("float32")


def randomize(layer, seed, scale=0.3):
    """Every weight of a built layer to random values (gammas around 1), so a
    reference comparison tests each of them, not their initial values."""
    rng = np.random.default_rng(seed)
    for variable in layer.weights:
        noise = rng.normal(0, scale, variable.shape)
        value = 1 + noise if variable.name == "gamma" else noise
        variable.assign(value.astype("float32"))


def np_group_norm(x, groups, gamma, beta, eps=1e-6):
    b, h, w, c = x.shape
    g = x.reshape(b, h, w, groups, c // groups)
    mean = g.mean(axis=(1, 2, 4), keepdims=True)
    var = g.var(axis=(1, 2, 4), keepdims=True)
    return ((g - mean) / np.sqrt(var + eps)).reshape(x.shape) * gamma + beta


def np_swish(x):
    return x / (1 + np.exp(-x))


def np_conv(x, conv, strides=1, padding="SAME"):
    kernel = conv.kernel.numpy().astype("float64")
    out = tf.nn.conv2d(x.astype("float64"), kernel, strides, padding).numpy()
    return out + conv.bias.numpy() if conv.use_bias else out


def np_norm(x, norm):
    return np_group_norm(x, norm.groups, norm.gamma.numpy(), norm.beta.numpy())


def test_num_groups_is_the_largest_divisor_up_to_32():
    expected = {1: 1, 7: 7, 8: 8, 32: 32, 33: 11, 40: 20, 48: 24, 64: 32, 96: 32, 100: 25}
    assert {c: num_groups(c) for c in expected} == expected
    norm = ConvEncoder(channels=12, channel_multipliers=(1, 4))  # 12 -> 12 groups, 48 -> 24
    norm.build((1, 8, 8, 1))
    assert norm.norm_out.groups == 24 and norm.down_blocks[0].norm2.groups == 12


def test_default_shapes_and_dtypes():
    x = images()
    encoder, decoder, discriminator = ConvEncoder(), ConvDecoder(), PatchDiscriminator()
    z = encoder(x)
    assert tuple(z.shape) == (2, 8, 8, 64) and z.dtype == "float32"
    y = decoder(z)
    assert tuple(y.shape) == (2, 32, 32, 1) and y.dtype == "float32"
    logits = discriminator(x)
    assert tuple(logits.shape) == (2, 6, 6, 1)  # as PatchDiscriminator's docstring says
    assert encoder.compute_output_shape((None, 32, 32, 1)) == (None, 8, 8, 64)
    assert decoder.compute_output_shape((None, 8, 8, 64)) == (None, 32, 32, 1)
    assert discriminator.compute_output_shape((None, 32, 32, 1)) == (None, 6, 6, 1)
    # The decoder takes any channel count in.
    assert tuple(ConvDecoder()(np.zeros((1, 8, 8, 5), "float32")).shape) == (1, 32, 32, 1)


@pytest.mark.parametrize(
    "kwargs, latent_size, encoder_blocks, decoder_blocks",
    [
        (dict(channel_multipliers=(1, 2)), 16, 2, 4),
        (dict(channel_multipliers=(1, 1, 2, 2)), 4, 4, 8),
        (dict(channel_multipliers=(2,), num_res_blocks=2), 32, 2, 3),
        (dict(channel_multipliers=(1, 2), num_res_blocks=2), 16, 4, 6),
    ],
)
def test_levels_and_blocks_change_shapes(kwargs, latent_size, encoder_blocks, decoder_blocks):
    config = dict(channels=4, **kwargs)
    encoder = ConvEncoder(latent_channels=3, **config)
    decoder = ConvDecoder(output_channels=2, **config)
    z = encoder(images(1))
    assert tuple(z.shape) == (1, latent_size, latent_size, 3)
    assert tuple(decoder(z).shape) == (1, 32, 32, 2)
    assert len(encoder.down_blocks) == encoder_blocks
    assert len(decoder.up_blocks) == decoder_blocks
    multipliers = config["channel_multipliers"]
    assert encoder.down_blocks[-1].out_channels == 4 * multipliers[-1]
    assert decoder.up_blocks[-1].out_channels == 4 * multipliers[0]
    assert len(encoder.downsamples) == len(decoder.upsamples) == len(multipliers) - 1


@pytest.mark.parametrize("num_layers, size", [(1, 14), (2, 6), (3, 2)])
def test_discriminator_patch_grid(num_layers, size):
    discriminator = PatchDiscriminator(channels=4, num_layers=num_layers)
    assert tuple(discriminator(images(1)).shape) == (1, size, size, 1)
    # Filters: channels * min(2**n, 8), then one logit channel.
    expected = [4 * min(2**n, 8) for n in range(num_layers + 1)] + [1]
    assert [conv.filters for conv in discriminator.convs] == expected
    assert [conv.strides for conv in discriminator.convs] == [(2, 2)] * num_layers + [(1, 1)] * 2


def test_bad_sizes_and_arguments_are_refused():
    with pytest.raises(ValueError, match=r"divisible by 2 \*\* \(levels - 1\) = 4.*got 30x30"):
        ConvEncoder(**dict(SMALL, channel_multipliers=(1, 2, 2)))(images(1, size=30))
    with pytest.raises(ValueError, match=r"attention_resolutions \(12,\).*\(32, 16\)"):
        ConvEncoder(attention_resolutions=(12,), **SMALL).build((None, 32, 32, 1))
    with pytest.raises(ValueError, match=r"attention_resolutions \(32,\).*\(16, 8\)"):
        ConvDecoder(attention_resolutions=(32,), **SMALL).build((None, 8, 8, 4))
    with pytest.raises(ValueError, match="known height, width and channels"):
        ConvEncoder(**SMALL).build((None, None, None, 1))
    with pytest.raises(ValueError, match=r"at least 12x12.*\(1, 8, 8, 1\)"):
        PatchDiscriminator(channels=4).build((1, 8, 8, 1))
    with pytest.raises(ValueError, match="rank|channels"):
        ResnetBlock(4).build((2, 8, 8))
    for make, message in [
        (lambda: ConvEncoder(channel_multipliers=()), "channel_multipliers must be a non-empty"),
        (lambda: ConvEncoder(channel_multipliers=(1, 0)), "channel_multipliers"),
        (lambda: ConvDecoder(num_res_blocks=0), "num_res_blocks must be an int >= 1, got 0"),
        (lambda: ConvDecoder(dropout=1.0), r"dropout must be a number in \[0, 1\)"),
        (lambda: ResnetBlock(0), "out_channels"),
        (lambda: PatchDiscriminator(num_layers=0), "num_layers"),
        (lambda: Downsample(with_conv="yes"), "with_conv must be True or False"),
    ]:
        with pytest.raises(ValueError, match=message):
            make()


@pytest.mark.parametrize("in_channels, out_channels", [(12, 40), (24, 24), (64, 64)])
def test_resnet_block_matches_numpy_reference(in_channels, out_channels):
    x = np.random.default_rng(1).normal(size=(2, 6, 5, in_channels)).astype("float32")
    block = ResnetBlock(out_channels)
    block.build(x.shape)
    randomize(block, seed=in_channels, scale=0.2)
    assert (block.nin_shortcut is not None) == (in_channels != out_channels)
    h = np_conv(np_swish(np_norm(x, block.norm1)), block.conv1)
    h = np_conv(np_swish(np_norm(h, block.norm2)), block.conv2)
    shortcut = x if block.nin_shortcut is None else np_conv(x, block.nin_shortcut)
    expected = shortcut + h
    np.testing.assert_allclose(block(x).numpy(), expected, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(block(x, training=True).numpy(), expected, atol=1e-5, rtol=1e-5)


def test_attention_block_matches_numpy_reference():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 4, 3, 16)).astype("float32")
    block = AttentionBlock()
    block.build(x.shape)
    randomize(block, seed=4, scale=0.3)
    h = np_norm(x, block.norm)
    b, height, width, c = x.shape
    q = np_conv(h, block.q).reshape(b, height * width, c)
    k = np_conv(h, block.k).reshape(b, height * width, c)
    v = np_conv(h, block.v).reshape(b, height * width, c)

    def attend(k):
        out = np.empty_like(v)
        for n in range(b):
            scores = q[n] @ k[n].T / np.sqrt(c)
            weights = np.exp(scores - scores.max(axis=1, keepdims=True))
            weights /= weights.sum(axis=1, keepdims=True)  # over keys j
            out[n] = weights @ v[n]
        return x + np_conv(out.reshape(x.shape), block.proj_out)

    np.testing.assert_allclose(block(x).numpy(), attend(k), atol=1e-5, rtol=1e-5)
    # The key bias is dead (see the module doc): without it, the same output.
    np.testing.assert_allclose(attend(k - block.k.bias.numpy()), attend(k), atol=1e-9)


def test_downsample_pads_bottom_right_then_strided_conv():
    x = np.random.default_rng(5).normal(size=(2, 32, 32, 3)).astype("float32")
    layer = Downsample()
    y = layer(x).numpy()
    assert y.shape == (2, 16, 16, 3)
    padded = np.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))  # torch pad (0, 1, 0, 1)
    np.testing.assert_allclose(y, np_conv(padded, layer.conv, 2, "VALID"), atol=1e-5)
    # The side matters: padding top/left instead gives other values.
    other = np.pad(x, ((0, 0), (1, 0), (1, 0), (0, 0)))
    assert not np.allclose(y, np_conv(other, layer.conv, 2, "VALID"), atol=1e-3)
    pooled = Downsample(with_conv=False)(x).numpy()
    np.testing.assert_allclose(pooled, x.reshape(2, 16, 2, 16, 2, 3).mean(axis=(2, 4)), atol=1e-6)


def test_upsample_is_nearest_then_conv():
    x = np.random.default_rng(6).normal(size=(2, 8, 8, 3)).astype("float32")
    nearest = np.repeat(np.repeat(x, 2, axis=1), 2, axis=2)
    np.testing.assert_array_equal(Upsample(with_conv=False)(x).numpy(), nearest)
    layer = Upsample()
    y = layer(x).numpy()
    assert y.shape == (2, 16, 16, 3)
    np.testing.assert_allclose(y, np_conv(nearest, layer.conv), atol=1e-5)


def test_discriminator_initialisation_as_taming():
    discriminator = PatchDiscriminator()
    discriminator.build((None, 32, 32, 1))
    for conv in discriminator.convs:
        kernel = conv.kernel.numpy()
        assert abs(kernel.std() - 0.02) < 0.002, conv.name
        assert abs(kernel.mean()) < 0.002, conv.name
    # Bias only on the first and the last convolution (the others feed a BatchNorm).
    assert [conv.use_bias for conv in discriminator.convs] == [True, False, False, True]
    for conv in (discriminator.convs[0], discriminator.convs[-1]):
        np.testing.assert_array_equal(conv.bias.numpy(), 0.0)
    gammas = np.concatenate([norm.gamma.numpy() for norm in discriminator.norms])
    assert abs(gammas.mean() - 1) < 0.005 and 0.015 < gammas.std() < 0.025
    for norm in discriminator.norms:
        np.testing.assert_array_equal(norm.beta.numpy(), 0.0)
        assert norm.momentum == 0.9 and norm.epsilon == 1e-5  # torch's 0.1, 1e-5


def test_discriminator_batch_norm_uses_batch_statistics_only_in_training():
    x = images(4, seed=7)
    discriminator = PatchDiscriminator(channels=8)
    inference = discriminator(x, training=False).numpy()
    # Inference (moving statistics): an image's logits do not depend on the
    # batch it is in.
    np.testing.assert_allclose(discriminator(x[:2], training=False).numpy(), inference[:2],
                               atol=1e-5)
    # Training (batch statistics): they do, and differ from inference's.
    training = discriminator(x, training=True).numpy()
    assert not np.allclose(inference, training, atol=1e-4)
    assert not np.allclose(discriminator(x[:2], training=True).numpy(), training[:2], atol=1e-4)
    # Training calls moved the moving mean off its initial 0.
    assert np.abs(discriminator.norms[0].moving_mean.numpy()).max() > 0


def test_dropout_follows_training():
    encoder = ConvEncoder(dropout=0.5, **SMALL)
    x = images(1, seed=8)
    first, second = encoder(x, training=False).numpy(), encoder(x, training=False).numpy()
    np.testing.assert_array_equal(first, second)
    assert not np.allclose(encoder(x, training=True).numpy(), first, atol=1e-4)


def dead_biases(encoder, decoder):
    """The parameters whose gradient is identically zero (module doc): every
    attention key bias; conv1's bias where norm2 has one channel per group;
    with the defaults, the conv2 and nin_shortcut biases of the decoder's
    level 0 (32 channels), whose sum reaches only such GroupNorms."""
    blocks = encoder.down_blocks + decoder.up_blocks + [
        layer.mid_block1 for layer in (encoder, decoder)] + [
        layer.mid_block2 for layer in (encoder, decoder)]
    dead = [block.conv1.bias for block in blocks if block.out_channels <= 32]
    attentions = encoder.down_attentions + decoder.up_attentions + [
        encoder.mid_attention, decoder.mid_attention]
    dead += [attention.k.bias for attention in attentions]
    level0 = [block for block in decoder.up_blocks if block.name.startswith("up0_")]
    dead += [block.conv2.bias for block in level0] + [level0[0].nin_shortcut.bias]
    return {id(variable) for variable in dead}


def test_every_weight_gets_a_gradient_and_last_layer_is_the_output_conv():
    keras.utils.set_random_seed(9)
    x = images(2, seed=9)
    # The defaults, with attention in the levels at 16x16 as well as in the middles.
    encoder = ConvEncoder(attention_resolutions=(16,))
    decoder = ConvDecoder(attention_resolutions=(16,))
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.abs(decoder(encoder(x, training=True), training=True) - x))
    variables = encoder.trainable_weights + decoder.trainable_weights
    # One after the encoder's 16x16 block, two after the decoder's (num_res_blocks + 1).
    assert (len(encoder.down_attentions), len(decoder.up_attentions)) == (1, 2)
    dead = dead_biases(encoder, decoder)
    assert len(dead) == 3 + 5 + 3  # conv1 (down0, up0 x2), 5 attentions, level 0 of the decoder
    grads = tape.gradient(loss, variables)
    for variable, grad in zip(variables, grads):
        assert grad is not None, variable.path
        grad = np.abs(grad.numpy())
        assert np.all(np.isfinite(grad)), variable.path
        # Live gradients measured >= 1e-4 here, dead ones (rounding) <= 1e-7.
        if id(variable) in dead:
            assert grad.max() < 1e-6, variable.path
        else:
            assert grad.max() > 1e-5, variable.path
    # last_layer is conv_out, and nothing follows it: with a zero kernel the
    # output is its bias everywhere.
    last = decoder.last_layer
    assert last is decoder.conv_out and isinstance(last, keras.layers.Conv2D)
    assert tuple(last.kernel.shape) == (3, 3, 32, 1)
    assert any(v is last.kernel for v in decoder.trainable_weights)
    last.kernel.assign(np.zeros(last.kernel.shape, "float32"))
    last.bias.assign([0.25])
    np.testing.assert_allclose(decoder(encoder(x)).numpy(), 0.25, atol=1e-7)


@pytest.mark.parametrize(
    "make",
    [
        lambda: ResnetBlock(16, dropout=0.1, name="r"),
        lambda: AttentionBlock(name="a"),
        lambda: Downsample(),
        lambda: Downsample(with_conv=False),
        lambda: Upsample(with_conv=False),
        lambda: ConvEncoder(),
        lambda: ConvEncoder(channels=8, channel_multipliers=[1, 4], num_res_blocks=2,
                            latent_channels=5, attention_resolutions=[16], dropout=0.2),
        lambda: ConvDecoder(),
        lambda: ConvDecoder(channels=8, channel_multipliers=(1, 4), num_res_blocks=2,
                            output_channels=3, attention_resolutions=(16,), dropout=0.2),
        lambda: PatchDiscriminator(channels=16, num_layers=3),
    ],
    ids=["resnet", "attention", "down", "down_pool", "up", "encoder", "encoder_custom",
         "decoder", "decoder_custom", "discriminator"],
)
def test_config_round_trip(make):
    layer = make()
    config = layer.get_config()
    assert type(layer).from_config(config).get_config() == config
    serialized = keras.saving.serialize_keras_object(layer)
    assert serialized["registered_name"].startswith("caps_zoo>")
    assert type(keras.saving.deserialize_keras_object(serialized)) is type(layer)


def test_encoder_decoder_keras_round_trip(tmp_path):
    config = dict(channels=8, channel_multipliers=(1, 2, 2), attention_resolutions=(16,))
    inputs = keras.Input((32, 32, 1))
    latents = ConvEncoder(latent_channels=4, **config, name="encoder")(inputs)
    outputs = ConvDecoder(**config, name="decoder")(latents)
    model = keras.Model(inputs, outputs)
    x = images(2, seed=10)
    path = tmp_path / "autoencoder.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    assert len(restored.get_layer("encoder").down_attentions) == 1
    assert len(restored.weights) == len(model.weights)
    for original, loaded in zip(model.weights, restored.weights):
        assert original.path == loaded.path
    np.testing.assert_allclose(restored(x).numpy(), model(x).numpy(), atol=1e-5)


def test_discriminator_keras_round_trip(tmp_path):
    inputs = keras.Input((32, 32, 1))
    model = keras.Model(inputs, PatchDiscriminator(channels=8, name="discriminator")(inputs))
    perturb_moving_statistics(model)
    x = images(2, seed=11)
    path = tmp_path / "discriminator.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_allclose(restored(x, training=False).numpy(),
                               model(x, training=False).numpy(), atol=1e-5)


def test_mixed_bfloat16_runs_with_float32_outputs():
    x = images(2, seed=12)
    reference_encoder, reference_decoder = ConvEncoder(**SMALL), ConvDecoder(**SMALL)
    expected = reference_decoder(reference_encoder(x)).numpy()
    try:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
        encoder, decoder = ConvEncoder(**SMALL), ConvDecoder(**SMALL)
        discriminator = PatchDiscriminator(channels=8)
        z = encoder(x, training=True)
        y = decoder(z, training=True)
        logits = discriminator(y, training=True)
        assert encoder.down_blocks[0].conv1.compute_dtype == "bfloat16"
        assert decoder.last_layer.kernel.dtype == "float32"
        for output in (z, y, logits):
            assert output.dtype == "float32"
            assert np.all(np.isfinite(output.numpy()))
        # The same weights compute the same function, to bfloat16's precision.
        encoder.set_weights(reference_encoder.get_weights())
        decoder.set_weights(reference_decoder.get_weights())
        actual = decoder(encoder(x)).numpy()
        relative = np.linalg.norm(actual - expected) / np.linalg.norm(expected)
        assert relative < 0.05, relative
    finally:
        keras.mixed_precision.set_global_policy("float32")
