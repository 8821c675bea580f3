"""The PixelCNN prior over code maps (caps_zoo.models.code_prior): the masks
and the causality of the whole network, its NLL against NumPy, that it
learns a known distribution of maps and samples it back, seeded sampling,
the refusals of bad codes, and its configs, .keras file and serving export;
and the Gaussian prior over parent poses against NumPy."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import caps_zoo
from caps_zoo import export
from caps_zoo.models.code_prior import CodePrior, GaussianPrior, MaskedConv2D, causal_mask

# The learned distribution: every row is constant, code 1 with p = 0.75 and
# code 3 otherwise, rows independent. Its entropy: 8 rows x H(0.75).
P_ONE = 0.75
ROW_ENTROPY = -(P_ONE * np.log(P_ONE) + (1 - P_ONE) * np.log(1 - P_ONE))
NUM_CODES = 4


def constant_rows(n, rng):
    rows = np.where(rng.random((n, 8)) < P_ONE, 1, 3).astype("int32")
    return np.repeat(rows[:, :, None], 8, axis=2)


def small_prior(num_codes=6, **kwargs):
    return CodePrior(num_codes, **{"filters": 8, "num_layers": 1, "kernel_size": 3, **kwargs})


@pytest.fixture(scope="module")
def trained():
    """A small prior fitted (traced steps, 384 of batch 32) on constant rows."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    prior = CodePrior(NUM_CODES, filters=32, num_layers=2, kernel_size=3, name="row_prior")
    prior.compile(optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(3e-3, 384)))
    history = prior.fit(constant_rows(4096, rng), batch_size=32, epochs=3, verbose=0)
    return {"prior": prior, "history": history.history, "test": constant_rows(512, rng)}


# -- the masks ---------------------------------------------------------------------


def test_masks_cover_the_taps_before_the_centre_in_raster_order():
    before = np.array([[1, 1, 1, 1, 1],
                       [1, 1, 1, 1, 1],
                       [1, 1, 0, 0, 0],
                       [0, 0, 0, 0, 0],
                       [0, 0, 0, 0, 0]], np.float32)
    centre = np.zeros((5, 5), np.float32)
    centre[2, 2] = 1
    np.testing.assert_array_equal(causal_mask(5, "A"), before)
    np.testing.assert_array_equal(causal_mask(5, "B"), before + centre)
    np.testing.assert_array_equal(MaskedConv2D(4, 5, "A").mask, before)
    np.testing.assert_array_equal(MaskedConv2D(4, 5, "B").mask, before + centre)
    # A rectangular kernel: the centre row and column are its own.
    np.testing.assert_array_equal(causal_mask((3, 5), "B"), [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [0, 0, 0, 0, 0]])
    with pytest.raises(ValueError, match=r"mask_type must be one of \('A', 'B'\); got 'C'"):
        MaskedConv2D(4, 5, "C")
    with pytest.raises(ValueError, match="kernel_size must be an odd int"):
        MaskedConv2D(4, 4, "A")
    with pytest.raises(ValueError, match="has no tap left"):
        MaskedConv2D(4, 1, "A")


def test_masked_taps_get_no_gradient_and_loaded_weights_do_not_leak():
    layer = MaskedConv2D(3, 5, "A")
    layer.build((None, 6, 6, 2))
    rng = np.random.default_rng(0)
    # Weights as a file could hold them: every tap non-zero.
    full = rng.normal(size=(5, 5, 2, 3)).astype("float32")
    layer.kernel.assign(full)
    inputs = tf.constant(rng.normal(size=(2, 6, 6, 2)).astype("float32"))
    masked = full * causal_mask(5, "A")[:, :, None, None]
    expected = tf.nn.conv2d(inputs, masked, 1, "SAME") + layer.bias
    np.testing.assert_allclose(layer(inputs), expected, atol=1e-5)
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(layer(inputs) ** 2)
    gradient = tape.gradient(total, layer.kernel).numpy()
    assert np.all(gradient[causal_mask(5, "A") == 0] == 0)
    assert np.all(np.abs(gradient[causal_mask(5, "A") == 1]).sum(axis=(-1, -2)) > 0)


def test_logits_depend_on_the_codes_before_each_position_alone():
    """Every position of the default depth (4 mask-B blocks, 5x5): its
    logits do not move when its own code or any later one changes, and do
    when the code to its left or above it changes."""
    keras.utils.set_random_seed(4)
    num_codes, (height, width) = 5, (8, 8)
    prior = CodePrior(num_codes, filters=16)
    rng = np.random.default_rng(1)
    base = rng.integers(0, num_codes, (2, height, width)).astype("int32")
    later, left, above = [], [], []
    for index in range(height * width):
        row, column = divmod(index, width)
        changed = base.copy().reshape(2, -1)
        # Every code from this position on changes (to another code).
        shift = rng.integers(1, num_codes, changed[:, index:].shape)
        changed[:, index:] = (changed[:, index:] + shift) % num_codes
        later.append(changed.reshape(base.shape))
        for neighbours, (i, j) in ((left, (row, column - 1)), (above, (row - 1, column))):
            neighbour = base.copy()
            if i >= 0 and j >= 0:
                neighbour[:, i, j] = (neighbour[:, i, j] + 1) % num_codes
            neighbours.append(neighbour)
    base_logits = prior(base).numpy()
    logits = {name: prior(np.concatenate(maps)).numpy().reshape(-1, 2, height, width, num_codes)
              for name, maps in (("later", later), ("left", left), ("above", above))}
    for index in range(height * width):
        row, column = divmod(index, width)
        here = base_logits[:, row, column]

        def moved(name):
            return np.abs(logits[name][index][:, row, column] - here).max()

        # Not exactly 0: oneDNN's Winograd convolutions round masked taps' zeros.
        assert moved("later") < 1e-5, (row, column, moved("later"))
        if column > 0:
            assert moved("left") > 1e-4, (row, column)
        if row > 0:
            assert moved("above") > 1e-4, (row, column)


# -- the likelihood ----------------------------------------------------------------


def test_code_nll_is_the_cross_entropy_summed_over_positions():
    keras.utils.set_random_seed(5)
    prior = small_prior(num_codes=6)
    codes = np.random.default_rng(2).integers(0, 6, (3, 8, 8)).astype("int32")
    outputs, terms = prior.forward_with_loss_terms(tf.constant(codes), None, training=False)
    assert set(terms) == {"code_nll"} and terms["code_nll"].shape == (3,)
    logits = prior(codes).numpy().astype("float64")
    np.testing.assert_array_equal(outputs["logits"], logits.astype("float32"))
    log_softmax = logits - logits.max(-1, keepdims=True)
    log_softmax -= np.log(np.exp(log_softmax).sum(-1, keepdims=True))
    expected = -np.take_along_axis(log_softmax, codes[..., None], -1)[..., 0].sum(axis=(1, 2))
    np.testing.assert_allclose(terms["code_nll"], expected, rtol=1e-5)
    np.testing.assert_allclose(prior.log_likelihood(codes), -expected, rtol=1e-5)
    np.testing.assert_allclose(prior.log_likelihood(codes, batch_size=2), -expected, rtol=1e-5)
    # evaluate: the batch mean, through the shared test step.
    prior.compile(optimizer="adam")
    result = prior.evaluate(codes, batch_size=3, verbose=0, return_dict=True)
    assert result["code_nll"] == pytest.approx(expected.mean(), rel=1e-5)
    assert result["loss"] == pytest.approx(expected.mean(), rel=1e-5)


def test_fit_learns_constant_rows_and_samples_them(trained):
    prior, test = trained["prior"], trained["test"]
    nll = trained["history"]["code_nll"]
    assert nll[-1] < nll[0], nll
    held_out = -prior.log_likelihood(test).mean()
    uniform = 64 * np.log(NUM_CODES)
    # The optimum is 8 x H(0.75) = 4.50 nats; uniform is 88.7.
    assert held_out < 8 * ROW_ENTROPY + 1.0, held_out
    assert held_out < 0.1 * uniform
    maps = prior.sample(200, seed=0)
    assert maps.shape == (200, 8, 8) and maps.dtype == np.int32
    constant = (maps == maps[:, :, :1]).all(axis=(1, 2)).mean()
    assert constant > 0.9, constant
    frequency = (maps[:, :, 0] == 1).mean()
    assert abs(frequency - P_ONE) < 0.1, frequency
    # A low temperature samples the mode: code 1 everywhere.
    assert np.all(prior.sample(20, seed=1, temperature=0.02) == 1)


# -- sampling ---------------------------------------------------------------------------


def test_sample_is_seeded_in_range_and_refuses_bad_arguments(capsys):
    keras.utils.set_random_seed(6)
    prior = small_prior(num_codes=6)
    first = prior.sample(4, seed=3)
    assert first.shape == (4, 8, 8) and first.dtype == np.int32
    assert first.min() >= 0 and first.max() < 6
    np.testing.assert_array_equal(prior.sample(4, seed=3), first)
    assert not np.array_equal(prior.sample(4, seed=4), first)
    # A SeedGenerator is advanced by the draws: its next maps are new ones.
    generator = keras.random.SeedGenerator(3)
    assert not np.array_equal(prior.sample(4, seed=generator), prior.sample(4, seed=generator))
    capsys.readouterr()
    prior.sample(1, seed=0, verbose=1)
    assert "64/64" in capsys.readouterr().out
    for n in (0, -1, 2.5, True, "3"):
        with pytest.raises(ValueError, match="n must be an integer >= 1"):
            prior.sample(n)
    for temperature in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
            prior.sample(1, temperature=temperature)
    with pytest.raises(ValueError, match="seed must be an int"):
        prior.sample(1, seed="0")


# -- bad inputs ---------------------------------------------------------------------------


def test_bad_codes_are_refused_eagerly_and_in_the_steps():
    prior = small_prior(num_codes=6, name="prior")
    prior.compile(optimizer="adam")
    good = np.zeros((4, 8, 8), "int32")
    values = r"prior: codes must be code ids in \[0, 5\]"
    dtype = r"prior: codes must be integer code ids in \[0, 5\]; got dtype float32"
    # The batch is 4 eagerly, None (unknown) in a traced step.
    shape = r"prior expects code maps of shape \(batch, 8, 8\) with ids in \[0, 5\]; got shape \((4|None), 7, 7\)"
    for call in (prior, prior.log_likelihood, lambda codes: prior.forward_with_loss_terms(codes, None, False)):
        with pytest.raises(ValueError, match=dtype):
            call(good.astype("float32"))
        with pytest.raises(ValueError, match=shape):
            call(good[:, :7, :7])
        for bad, low, high in ((6, 0, 6), (-1, -1, 0)):
            codes = good.copy()
            codes[1, 2, 3] = bad
            with pytest.raises(ValueError, match=rf"{values}; got min {low}, max {high}"):
                call(codes)
    # In the traced steps: dtype and shape at trace time, values in the graph.
    with pytest.raises(ValueError, match=dtype):
        prior.evaluate(good.astype("float32"), verbose=0)
    with pytest.raises(ValueError, match=shape):
        prior.evaluate(good[:, :7, :7], verbose=0)
    codes = good.copy()
    codes[3, 7, 7] = 6
    with pytest.raises(tf.errors.InvalidArgumentError, match=values + "; got min"):
        prior.evaluate(codes, batch_size=4, verbose=0)
    with pytest.raises(tf.errors.InvalidArgumentError, match=values + "; got min"):
        prior.predict(codes, batch_size=4, verbose=0)
    with pytest.raises(ValueError, match="code maps alone"):
        prior.fit(good, good, verbose=0)
    # (fit(x, None, sample_weight=...) drops the weights before the step.)
    with pytest.raises(ValueError, match="does not support sample weights"):
        prior.train_step((tf.constant(good), None, tf.ones(4)))
    # A refused first fit leaves the model trainable (its optimizer was
    # built at compile, not in the step that failed).
    codes_dataset = tf.data.Dataset.from_tensor_slices(good).batch(4)
    assert prior.fit(codes_dataset, shuffle=False, verbose=0).history["code_nll"][0] > 0


def test_bad_constructor_arguments_are_refused():
    for kwargs, message in (({"num_codes": 0}, "num_codes must be an int >= 1"),
                            ({"num_codes": 4, "kernel_size": 4}, "kernel_size must be an odd int >= 3"),
                            ({"num_codes": 4, "kernel_size": 1}, "kernel_size must be an odd int >= 3"),
                            ({"num_codes": 4, "map_shape": (8,)}, r"map_shape must be \(height, width\)"),
                            ({"num_codes": 4, "num_layers": -1}, "num_layers must be an int >= 0")):
        with pytest.raises(ValueError, match=message):
            CodePrior(**kwargs)


# -- configs, files and serving -------------------------------------------------------------


def test_get_config_round_trips():
    layer = MaskedConv2D(5, (3, 5), "B", kernel_initializer="he_normal", name="masked")
    config = layer.get_config()
    rebuilt = MaskedConv2D.from_config(config)
    assert rebuilt.get_config() == config
    np.testing.assert_array_equal(rebuilt.mask, layer.mask)
    prior = CodePrior(7, map_shape=(4, 6), filters=8, num_layers=2, kernel_size=3, name="prior")
    config = prior.get_config()
    assert {key: config[key] for key in ("num_codes", "map_shape", "filters", "num_layers", "kernel_size")} == {
        "num_codes": 7, "map_shape": (4, 6), "filters": 8, "num_layers": 2, "kernel_size": 3}
    rebuilt = CodePrior.from_config(config)
    assert rebuilt.get_config() == config
    assert [v.shape for v in rebuilt.weights] == [v.shape for v in prior.weights]
    assert rebuilt(np.zeros((2, 4, 6), "int32")).shape == (2, 4, 6, 7)
    # Fitted per autoencoder: no model of the zoo's registry.
    assert not any("prior" in name for name in caps_zoo.list_models())


def test_keras_file_round_trip_keeps_logits_and_samples(trained, tmp_path):
    prior, test = trained["prior"], trained["test"][:64]
    path = tmp_path / "prior.keras"
    prior.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, CodePrior) and loaded.get_config() == prior.get_config()
    np.testing.assert_allclose(loaded(test), prior(test), atol=1e-5)
    # Compiled from the file: the optimizer and its state came back.
    assert int(loaded.optimizer.iterations) == int(prior.optimizer.iterations) == 384
    np.testing.assert_allclose(loaded.optimizer.variables[-1], prior.optimizer.variables[-1])
    np.testing.assert_array_equal(loaded.sample(8, seed=2), prior.sample(8, seed=2))


def test_serving_endpoint_returns_the_logits_and_checks_the_codes(tmp_path):
    keras.utils.set_random_seed(7)
    prior = small_prior(num_codes=6, name="prior")
    endpoints = prior.serving_endpoints()
    assert list(endpoints) == ["code_logits"]
    codes = np.random.default_rng(3).integers(0, 6, (3, 8, 8)).astype("int32")
    serve = export.load_saved_model_signature(export.export_saved_model(prior, tmp_path), "code_logits")
    np.testing.assert_allclose(serve(codes=tf.constant(codes))["logits"], prior(codes), atol=1e-5)
    codes[0, 0, 0] = 6
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"codes must be code ids in \[0, 5\]"):
        serve(codes=tf.constant(codes))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"codes must have shape \(batch, 8, 8\)"):
        serve(codes=tf.zeros((3, 7, 8), tf.int32))


def test_gaussian_prior_fits_numpy_moments_and_samples_them(tmp_path):
    rng = np.random.default_rng(5)
    mixing = rng.normal(size=(3, 3))
    vectors = rng.normal(size=(4000, 3)) @ mixing.T + np.array([1.0, -2.0, 0.5])
    prior = GaussianPrior(3, name="poses")
    prior.fit(vectors)
    np.testing.assert_allclose(prior.mean.numpy(), vectors.mean(0), atol=1e-5)
    scale = prior.scale_tril.numpy().astype("float64")
    # The factor of NumPy's covariance (plus the stated jitter on the diagonal).
    covariance = np.cov(vectors, rowvar=False)
    np.testing.assert_allclose(scale @ scale.T, covariance, rtol=1e-4, atol=1e-4)
    assert np.allclose(scale, np.tril(scale))
    draws = prior.sample(20000, seed=keras.random.SeedGenerator(1)).numpy()
    np.testing.assert_allclose(draws.mean(0), vectors.mean(0), atol=0.1)
    np.testing.assert_allclose(np.cov(draws, rowvar=False), covariance, atol=0.25)
    # Weights and config survive a round trip; bad inputs are refused.
    restored = GaussianPrior.from_config(prior.get_config())
    restored.set_weights(prior.get_weights())
    np.testing.assert_array_equal(restored.sample(4, seed=3), prior.sample(4, seed=3))
    for bad, message in ((vectors[:1], "n >= 2"), (vectors[:, :2], "n >= 2, 3"),
                         (np.full((3, 3), np.nan), "NaN")):
        with pytest.raises(ValueError, match=message):
            prior.fit(bad)
    with pytest.raises(ValueError, match="dim must be"):
        GaussianPrior(0)
