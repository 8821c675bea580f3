"""VQ-VAE bottleneck (VectorQuantizer) and dataset-wide code usage (CodeUsage)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from caps_zoo import training
from caps_zoo.layers.code_usage import CodeUsage, code_statistics
from caps_zoo.layers.vector_quantizer import VectorQuantizer


def _layer(codebook, input_shape, **kwargs):
    """A built layer whose codebook is ``codebook`` (under EMA, with the EMA
    sums matching it, as a fresh layer's do)."""
    codebook = np.asarray(codebook, "float32")
    layer = VectorQuantizer(codebook.shape[0], codebook.shape[1], **kwargs)
    layer.build(input_shape)
    _set_codebook(layer, codebook)
    return layer


def _set_codebook(layer, codebook):
    layer.codebook.assign(codebook)
    if layer.use_ema:
        layer.ema_code_sum.assign(codebook * layer.ema_cluster_size.numpy()[:, None])


def numpy_nearest(z, codebook):
    """Nearest codes by explicit differences (not the |z|^2 - 2z.e + |e|^2 expansion)."""
    distances = ((z[..., None, :] - codebook) ** 2).sum(-1)  # (b, h, w, K)
    return distances.argmin(-1)


def numpy_ema(codebook, cluster_size, code_sum, z, decay, eps):
    """One EMA step of the VQ-VAE paper's appendix, with Sonnet's Laplace smoothing."""
    flat = z.reshape(-1, codebook.shape[1]).astype("float64")
    codes = numpy_nearest(flat, codebook.astype("float64"))
    onehot = np.eye(len(codebook))[codes]
    n = decay * cluster_size + (1 - decay) * onehot.sum(0)
    m = decay * code_sum + (1 - decay) * onehot.T @ flat
    total = n.sum()
    smoothed = (n + eps) / (total + len(codebook) * eps) * total
    return m / smoothed[:, None], n, m


def mirrored():
    assert len(tf.config.list_logical_devices("CPU")) == 2, "conftest.py splits the CPU in two"
    strategy = training.make_strategy("mirrored")  # one per process (collective keys)
    assert strategy.num_replicas_in_sync == 2
    return strategy


# -- the forward pass ------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_nearest_code_quantized_and_assignment_match_numpy(policy):
    keras.mixed_precision.set_global_policy(policy)
    rng = np.random.default_rng(0)
    z = rng.normal(size=(2, 3, 3, 4)).astype("float32")
    codebook = rng.normal(size=(5, 4)).astype("float32")
    out = _layer(codebook, z.shape)(z)
    expected = numpy_nearest(z.astype("float64"), codebook.astype("float64"))
    assert len(np.unique(expected)) > 2  # a real choice among the codes
    assert out["codes"].dtype == "int32" and out["codes"].shape == (2, 3, 3)
    np.testing.assert_array_equal(out["codes"], expected)
    # float32 under mixed_bfloat16 too: the distances are not rounded to bfloat16.
    for key in ("quantized", "assignment", "commitment_loss", "codebook_loss"):
        assert out[key].dtype == "float32", key
    np.testing.assert_allclose(out["quantized"], codebook[expected], atol=1e-6)
    np.testing.assert_array_equal(out["assignment"], np.eye(5)[expected])


def test_symbolic_call_gives_the_output_spec():
    inputs = keras.Input((6, 5, 3))
    out = VectorQuantizer(7, 3)(inputs)
    assert {key: (value.shape, value.dtype) for key, value in out.items()} == {
        "quantized": ((None, 6, 5, 3), "float32"),
        "codes": ((None, 6, 5), "int32"),
        "assignment": ((None, 6, 5, 7), "float32"),
        "commitment_loss": ((None,), "float32"),
        "codebook_loss": ((None,), "float32"),
    }
    assert VectorQuantizer(7, 3).loss_term_names == ("commitment_loss", "codebook_loss")


@pytest.mark.parametrize("beta", [0.25, 2.0])
def test_loss_terms_on_a_hand_computed_case(beta):
    # 1-D codes 0.4 and -3.0; two examples of a 1 x 2 map.
    # Example 0: z = 1.0 -> 0.4 (error 0.6), z = 0.0 -> 0.4 (error -0.4):
    #   mean squared error (0.36 + 0.16) / 2 = 0.26.
    # Example 1: z = -2.0 -> -3.0 (error 1.0), z = -3.0 -> -3.0 (error 0):
    #   mean squared error (1.0 + 0.0) / 2 = 0.5.
    # beta multiplies the commitment term only (VQGAN's swap would put it on
    # the codebook term): 0.25 -> 0.065 and 0.125; 2.0 -> 0.52 and 1.0.
    z = np.array([1.0, 0.0, -2.0, -3.0], "float32").reshape(2, 1, 2, 1)
    layer = _layer([[0.4], [-3.0]], z.shape, commitment_weight=beta)
    out = layer(z)
    np.testing.assert_array_equal(out["codes"], [[[0, 0]], [[1, 1]]])
    np.testing.assert_allclose(out["codebook_loss"], [0.26, 0.5], rtol=1e-6)
    np.testing.assert_allclose(out["commitment_loss"], [beta * 0.26, beta * 0.5], rtol=1e-6)
    if beta == 0.25:
        np.testing.assert_allclose(out["commitment_loss"], [0.065, 0.125], rtol=1e-6)
    # The task's one-position case: z = 1.0, e = 0.4: 0.25 * 0.36 = 0.09 and 0.36.
    one = _layer([[0.4]], (1, 1, 1, 1))(np.ones((1, 1, 1, 1), "float32"))
    np.testing.assert_allclose(one["commitment_loss"], [0.09], rtol=1e-6)
    np.testing.assert_allclose(one["codebook_loss"], [0.36], rtol=1e-6)
    # Under EMA the codebook is not learned by a loss: its term is zero.
    ema = _layer([[0.4], [-3.0]], z.shape, ema_decay=0.99)(z)
    np.testing.assert_array_equal(ema["codebook_loss"], [0.0, 0.0])
    np.testing.assert_allclose(ema["commitment_loss"], [0.065, 0.125], rtol=1e-6)


def test_straight_through_and_loss_gradients():
    rng = np.random.default_rng(1)
    z = tf.constant(rng.normal(size=(2, 3, 3, 4)).astype("float32"))
    codebook = rng.normal(size=(5, 4)).astype("float32")
    weights = tf.constant(rng.normal(size=(2, 3, 3, 4)).astype("float32"))
    layer = _layer(codebook, z.shape, commitment_weight=0.25)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(z)
        out = layer(z)
        decoder_term = tf.reduce_sum(out["quantized"] * weights)
        commitment = tf.reduce_sum(out["commitment_loss"])
        codebook_term = tf.reduce_sum(out["codebook_loss"])

    def gradients(target):  # dense, zeros where unconnected
        grads = tape.gradient(target, [z, layer.codebook])
        return [0.0 if g is None else tf.convert_to_tensor(g).numpy() for g in grads]

    st_z, st_codebook = gradients(decoder_term)
    commit_z, commit_codebook = gradients(commitment)
    cb_z, cb_codebook = gradients(codebook_term)

    # Straight through: the decoder's gradient reaches z_e unchanged, and
    # not the codebook.
    np.testing.assert_array_equal(st_z, weights)
    np.testing.assert_array_equal(st_codebook, 0.0)
    # Each loss moves one side only.
    np.testing.assert_array_equal(commit_codebook, 0.0)
    np.testing.assert_array_equal(cb_z, 0.0)
    # ... by the derivatives of its mean over (h, w, d) = 36 values.
    e = codebook[out["codes"].numpy()]
    np.testing.assert_allclose(commit_z, 0.25 * 2 * (z.numpy() - e) / 36, atol=1e-7)
    expected = np.zeros_like(codebook)
    np.add.at(expected, out["codes"].numpy().ravel(), (2 * (e - z.numpy()) / 36).reshape(-1, 4))
    np.testing.assert_allclose(cb_codebook, expected, atol=1e-7)
    assert np.abs(expected).sum() > 0


# -- EMA ----------------------------------------------------------------------------


def test_ema_update_matches_numpy_and_only_in_training():
    rng = np.random.default_rng(2)
    z = rng.normal(size=(2, 3, 3, 4)).astype("float32")
    codebook = rng.normal(size=(6, 4)).astype("float32")
    layer = _layer(codebook, z.shape, ema_decay=0.9, ema_epsilon=0.01)  # visible smoothing
    assert not layer.codebook.trainable and layer.trainable_weights == []
    assert {v.name for v in layer.non_trainable_weights} == {
        "codebook", "ema_cluster_size", "ema_code_sum"
    }

    before = [v.numpy().copy() for v in layer.non_trainable_weights]
    for flag in (False, None):
        layer(z, training=flag)
    for variable, value in zip(layer.non_trainable_weights, before):
        np.testing.assert_array_equal(variable.numpy(), value)

    out = layer(z, training=True)
    new_codebook, cluster_size, code_sum = numpy_ema(
        codebook, np.ones(6), codebook.astype("float64"), z, 0.9, 0.01
    )
    np.testing.assert_allclose(layer.ema_cluster_size, cluster_size, atol=1e-6)
    np.testing.assert_allclose(layer.ema_code_sum, code_sum, atol=1e-6)
    np.testing.assert_allclose(layer.codebook, new_codebook, atol=1e-5)
    assert np.abs(new_codebook - codebook).max() > 0.05  # the update is visible
    # The call itself quantized with the codebook it started with.
    np.testing.assert_allclose(out["quantized"], codebook[numpy_nearest(z, codebook)], atol=1e-6)


def test_fresh_ema_layer_keeps_unchosen_codes_in_place():
    # Cluster sizes start at 1 and sums at the codebook: a code no vector
    # chooses only moves by the Laplace smoothing, not to 0 or to e / eps.
    layer = VectorQuantizer(8, 3, ema_decay=0.9, seed=3)
    z = np.zeros((1, 1, 1, 3), "float32")
    layer.build(z.shape)
    initial = layer.codebook.numpy()
    np.testing.assert_array_equal(layer.ema_code_sum, initial)
    np.testing.assert_array_equal(layer.ema_cluster_size, np.ones(8))
    chosen = int(layer(z)["codes"].numpy().ravel()[0])
    layer(z, training=True)
    unchosen = np.arange(8) != chosen
    np.testing.assert_allclose(layer.codebook.numpy()[unchosen], initial[unchosen], rtol=0.2)


# -- dead-code restarts ------------------------------------------------------------------


@pytest.mark.parametrize("ema_decay", [None, 0.99])
def test_dead_code_restarts_onto_a_batch_vector(ema_decay):
    # Three codes at the centres of three clusters of six vectors each, a
    # fourth far from every vector: it never wins, its usage decays below the
    # threshold (0.24 < 1/4) and it is moved onto one of the batch's vectors.
    rng = np.random.default_rng(4)
    centres = np.array([[-3.0, 0.0], [0.0, 3.0], [3.0, 0.0]])
    z = (np.repeat(centres, 6, axis=0) + rng.normal(scale=0.3, size=(18, 2))).astype("float32")
    z = z.reshape(2, 3, 3, 2)
    vectors = z.reshape(-1, 2)
    codebook = np.concatenate([centres, [[100.0, 100.0]]]).astype("float32")

    def run(restart, calls=8):
        layer = _layer(
            codebook, z.shape, ema_decay=ema_decay, restart_dead_codes=restart,
            dead_code_threshold=0.24, seed=1,
        )
        history = []
        for _ in range(calls):
            layer(z, training=True)
            history.append(layer.codebook.numpy().copy())
        return layer, history

    layer, history = run(restart=True)
    moved = [np.abs(cb[3] - codebook[3]).max() > 1 for cb in history]
    assert any(moved), "the dead code was never restarted"
    first = moved.index(True)
    distance = np.abs(vectors - history[first][3]).max(axis=1).min()
    assert distance < 1e-6  # exactly one of the batch's vectors
    if ema_decay is None:  # the live codes were not touched
        np.testing.assert_array_equal(history[-1][:3], codebook[:3])
    assert 3 in layer(z)["codes"].numpy()  # the restarted code now wins vectors
    # An empty batch (a replica's shard of a short last batch) restarts nothing.
    before = layer.codebook.numpy()
    layer(z[:0], training=True)
    if ema_decay is None:
        np.testing.assert_array_equal(layer.codebook, before)

    _, history = run(restart=False)
    assert np.abs(vectors[:, None] - history[-1][3]).max(-1).min() > 50  # still dead


# -- MirroredStrategy --------------------------------------------------------------------


def _replica_values(variable):
    return [component.numpy() for component in variable.value.values]


def test_mirrored_ema_update_equals_the_single_device_update():
    strategy = mirrored()
    rng = np.random.default_rng(5)
    z = rng.normal(size=(4, 3, 3, 4)).astype("float32")
    codebook = rng.normal(size=(6, 4)).astype("float32")
    single = _layer(codebook, z.shape, ema_decay=0.9)
    single_codes = [
        single(z, training=True)["codes"].numpy(),
        single(z[::-1], training=True)["codes"].numpy(),  # reads the first step's EMA state
    ]
    with strategy.scope():
        distributed = _layer(codebook, z.shape, ema_decay=0.9)
        usage = CodeUsage(6)

    def shard(order):
        data = z if order == 1 else z[::-1]
        # Replica r gets examples 2r and 2r + 1 of the global batch of 4.
        return strategy.experimental_distribute_values_from_function(
            lambda context: data[2 * context.replica_id_in_sync_group:][:2]
        )

    @tf.function
    def step(batch):
        def replica_step(x):
            codes = distributed(x, training=True)["codes"]
            usage.update_state(codes)
            return codes
        return strategy.run(replica_step, args=(batch,))

    for order, expected in zip((1, -1), single_codes):
        codes = strategy.experimental_local_results(step(shard(order)))
        np.testing.assert_array_equal(np.concatenate(codes), expected)
    for name in ("codebook", "ema_cluster_size", "ema_code_sum"):
        expected = getattr(single, name).numpy()
        for value in _replica_values(getattr(distributed, name)):
            np.testing.assert_allclose(value, expected, atol=1e-5, err_msg=name)
    assert np.abs(single.codebook.numpy() - codebook).max() > 0.05
    # The metric's histogram sums the replicas': both global batches' codes.
    expected_counts = np.bincount(np.concatenate(single_codes).ravel(), minlength=6)
    np.testing.assert_array_equal(usage.counts.numpy(), expected_counts)
    expected_result = code_statistics(expected_counts)
    assert {k: float(v) for k, v in usage.result().items()} == pytest.approx(expected_result)


def test_mirrored_restart_keeps_the_replicas_codebooks_identical():
    # Each replica draws its restart vector from its own shard of the batch;
    # the codebook's ONLY_FIRST_REPLICA aggregation applies the first
    # replica's on both, so the mirrors never diverge.
    strategy = mirrored()
    rng = np.random.default_rng(6)
    z = rng.normal(size=(4, 2, 2, 2)).astype("float32")
    codebook = np.array([[0.0, 0.0], [100.0, 100.0]], "float32")
    with strategy.scope():
        layer = _layer(codebook, z.shape, restart_dead_codes=True, dead_code_threshold=0.49)
    batch = strategy.experimental_distribute_values_from_function(
        lambda context: z[2 * context.replica_id_in_sync_group:][:2]
    )

    @tf.function
    def step(x):
        strategy.run(lambda shard: layer(shard, training=True)["codes"], args=(x,))

    for _ in range(3):  # usage 0.5 * 0.99^t < 0.49 from the third call
        step(batch)
    first, second = _replica_values(layer.codebook)
    np.testing.assert_array_equal(first, second)
    restarted = first[1]
    assert np.abs(z[:2].reshape(-1, 2) - restarted).max(axis=1).min() < 1e-6  # replica 0's
    np.testing.assert_array_equal(*_replica_values(layer.code_usage_ema))


# -- CodeUsage ---------------------------------------------------------------------------


def test_code_usage_accumulates_over_batches_and_resets():
    # codes [0, 0, 1] then [1, 2, 2] (any int dtype, any shape): counts [2, 2, 2, 0].
    usage = CodeUsage(4)
    usage.update_state(np.array([0, 0, 1]))
    usage.update_state(tf.constant([[1], [2], [2]], "int64"))
    np.testing.assert_array_equal(usage.counts, [2, 2, 2, 0])
    result = {key: float(value) for key, value in usage.result().items()}
    assert result == pytest.approx({"code_perplexity": 3.0, "codes_used": 0.75}, rel=1e-6)
    assert code_statistics([2, 2, 2, 0]) == pytest.approx(result, rel=1e-6)
    usage.reset_state()
    np.testing.assert_array_equal(usage.counts, 0)
    # The empty histogram: 0 for both (perplexity <= codes used), no NaN.
    assert {key: float(value) for key, value in usage.result().items()} == {
        "code_perplexity": 0.0, "codes_used": 0.0
    }
    assert code_statistics([0, 0, 0]) == {"code_perplexity": 0.0, "codes_used": 0.0}


def test_code_usage_counts_the_dataset_not_each_batch():
    # Two batches each using 2 of 4 codes equally: per-batch perplexity 2,
    # the dataset's 4.
    usage = CodeUsage(4)
    for batch in ([0, 0, 1, 1], [2, 2, 3, 3]):
        assert code_statistics(np.bincount(batch, minlength=4))["code_perplexity"] == (
            pytest.approx(2.0)
        )
        usage.update_state(np.array(batch).reshape(2, 2))
    assert float(usage.result()["code_perplexity"]) == pytest.approx(4.0, rel=1e-6)
    assert float(usage.result()["codes_used"]) == 1.0
    counts = np.array([5, 1, 0, 3, 1])
    p = counts / counts.sum()
    entropy = -(p[p > 0] * np.log(p[p > 0])).sum()
    assert code_statistics(counts)["code_perplexity"] == pytest.approx(np.exp(entropy))


def test_code_usage_refuses_ids_out_of_range():
    usage = CodeUsage(4)
    with pytest.raises(ValueError, match=r"ids in \[0, 4\), got ids from 0 to 4"):
        usage.update_state(np.array([0, 4]))
    with pytest.raises(ValueError, match=r"ids in \[0, 4\), got ids from -1 to 1"):
        usage.update_state(np.array([[-1, 1]]))
    with pytest.raises(ValueError, match="integer code ids, got dtype float32"):
        usage.update_state(np.array([0.0, 1.0], "float32"))
    np.testing.assert_array_equal(usage.counts, 0)  # nothing was counted
    graph_update = tf.function(usage.update_state)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"ids in \[0, 4\)"):
        graph_update(tf.constant([1, 7]))
    graph_update(tf.constant([1, 3]))
    np.testing.assert_array_equal(usage.counts, [0, 1, 0, 1])
    with pytest.raises(ValueError, match="num_codes must be an int >= 1, got 0"):
        CodeUsage(0)


def test_code_usage_reports_its_keys_in_model_metrics():
    class Quantize(keras.Model):
        def __init__(self):
            super().__init__()
            self.quantizer = VectorQuantizer(3, 2)
            self.usage = CodeUsage(3)

        def call(self, x, training=None):
            out = self.quantizer(x, training=training)
            self.usage.update_state(out["codes"])
            return out["quantized"]

    model = Quantize()
    model.compile(loss="mse")
    z = np.random.default_rng(7).normal(size=(4, 2, 2, 2)).astype("float32")
    logs = model.evaluate(z, z, batch_size=2, verbose=0, return_dict=True)
    codes = model.quantizer(z)["codes"].numpy().ravel()
    expected = code_statistics(np.bincount(codes, minlength=3))
    assert logs["code_perplexity"] == pytest.approx(expected["code_perplexity"], rel=1e-5)
    assert logs["codes_used"] == pytest.approx(expected["codes_used"])


# -- arguments, config, saving -----------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_codes=0), "num_codes must be an int >= 1, got 0"),
        (dict(code_dim=2.5), "code_dim must be an int >= 1, got 2.5"),
        (dict(commitment_weight=-0.1), "commitment_weight must be a number >= 0, got -0.1"),
        (dict(ema_decay=1.0), r"ema_decay must be None .* in \(0, 1\), e.g. 0.99; got 1.0"),
        (dict(ema_decay=0), r"ema_decay must be None .*; got 0"),
        (dict(ema_epsilon=0.0), "ema_epsilon must be a number > 0, got 0.0"),
        (dict(restart_dead_codes="yes"), "restart_dead_codes must be True or False, got 'yes'"),
        (dict(dead_code_threshold=1.5), r"dead_code_threshold must be a number in \(0, 1\)"),
        (
            dict(num_codes=8, restart_dead_codes=True, dead_code_threshold=0.2),
            r"dead_code_threshold must be below 1 / num_codes = 0.125 .* got 0.2",
        ),
        (dict(seed="a"), "seed must be None or an int, got 'a'"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        VectorQuantizer(**kwargs)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match=r"width, code_dim=4\), got shape \(2, 3, 4\)"):
        VectorQuantizer(5, 4)(np.zeros((2, 3, 4), "float32"))
    with pytest.raises(ValueError, match=r"code_dim=4\), got shape \(2, 3, 3, 6\)"):
        VectorQuantizer(5, 4)(np.zeros((2, 3, 3, 6), "float32"))
    with pytest.raises(ValueError, match=r"code_dim=4\), got shape \(None, 3, 3, 2\)"):
        VectorQuantizer(5, 4)(keras.Input((3, 3, 2)))
    built = _layer(np.zeros((5, 4)), (2, 3, 3, 4))
    with pytest.raises(ValueError, match=r"code_dim=4\), got shape \(2, 3, 3, 3\)"):
        built(np.zeros((2, 3, 3, 3), "float32"))


@pytest.mark.parametrize(
    "make",
    [
        lambda: VectorQuantizer(),
        lambda: VectorQuantizer(16, 3, commitment_weight=0.5, name="vq", seed=4),
        lambda: VectorQuantizer(16, 3, ema_decay=0.95, ema_epsilon=1e-4),
        lambda: VectorQuantizer(16, 3, ema_decay=0.99, restart_dead_codes=True,
                                dead_code_threshold=1e-2),
        lambda: CodeUsage(12, name="usage"),
    ],
    ids=["default", "loss", "ema", "ema_restart", "code_usage"],
)
def test_config_round_trip(make):
    obj = make()
    config = obj.get_config()
    assert type(obj).from_config(config).get_config() == config
    serialized = keras.saving.serialize_keras_object(obj)
    assert serialized["registered_name"].startswith("caps_zoo>")
    assert type(keras.saving.deserialize_keras_object(serialized)) is type(obj)


@pytest.mark.parametrize("ema_decay", [None, 0.9])
def test_functional_model_keras_round_trip(tmp_path, ema_decay):
    inputs = keras.Input((3, 3, 4))
    outputs = VectorQuantizer(
        6, 4, ema_decay=ema_decay, restart_dead_codes=True, dead_code_threshold=0.1,
        name="vq",
    )(inputs)
    model = keras.Model(inputs, outputs)
    z = np.random.default_rng(8).normal(size=(2, 3, 3, 4)).astype("float32")
    for _ in range(2):
        model(z, training=True)  # move the EMA / usage state off its initial values
    layer = model.get_layer("vq")
    names = {"codebook", "ema_cluster_size", "ema_code_sum"} if ema_decay else {
        "codebook", "code_usage_ema"
    }
    state = {v.name: v.numpy() for v in layer.weights}
    assert set(state) == names
    assert not np.allclose(state["ema_cluster_size" if ema_decay else "code_usage_ema"],
                           1.0 if ema_decay else 1 / 6)
    path = tmp_path / "vq.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    for name, value in state.items():
        np.testing.assert_array_equal(getattr(restored.get_layer("vq"), name), value)
    expected, actual = model(z), restored(z)
    assert set(actual) == set(expected)
    for key in expected:
        np.testing.assert_allclose(actual[key], expected[key], atol=1e-5, err_msg=key)


def test_lookup_of_the_codes_is_the_quantized_map():
    rng = np.random.default_rng(4)
    z = rng.normal(size=(2, 3, 3, 4)).astype("float32")
    codebook = rng.normal(size=(5, 4)).astype("float32")
    layer = _layer(codebook, z.shape)
    out = layer(z)
    assert not layer.codes_need_parents
    np.testing.assert_array_equal(layer.lookup(out["codes"]), out["quantized"])
    np.testing.assert_array_equal(layer.lookup(np.array([[[4]]])), codebook[None, None, [4]])
    with pytest.raises(ValueError, match="decodes alone"):
        layer.lookup(out["codes"], parents=np.zeros((2, 5, 4)))
