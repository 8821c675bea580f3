"""Training throughput and inference latency of the capsule models on this machine.

    PYTHONPATH=. python benchmarks/benchmark_capsnet.py --json capsnet_bench.json

For every model x precision it runs one fresh subprocess (the precision policy
is global, and each run should start with its own memory) that measures:

- training: images/second of the full custom ``train_step`` (forward, margin
  and reconstruction losses, decoder, gradients, Adam update) in graph mode,
  without XLA, on one synthetic batch held in memory;
- inference: median / p90 latency of a ``tf.function`` of the model call (or
  ``predict_on_batch`` with ``--infer-api predict_on_batch``) at batch 1 and
  at the training batch size, and images/second at the latter;
- numerics: whether losses, weights and outputs stay finite, and how far the
  class scores of the freshly initialised model are from float32's;
- the floor: the model's PrimaryCaps convolution alone (the step's largest
  op), forward and backward, in the same process and precision, so that the
  training figure can be read as a fraction of it (see ``primary_conv_floor``).

See benchmarks/README.md for how to read the table.
"""

import sys

import _harness

MODELS = ("capsnet", "deep_capsnet")
INFER_APIS = ("function", "predict_on_batch")


def parse_args(argv=None):
    # 10 steps and 10 calls: the peer (../shared/peer-bench) times 10 steps,
    # and on a CPU without bfloat16 instructions a bfloat16 step takes ~20 s.
    parser = _harness.benchmark_parser(
        __doc__.splitlines()[0], MODELS, batch_size=128,
        batch_help="training batch and the large inference batch",
        train_steps=10, infer_repeats=10,
    )
    parser.add_argument("--infer-api", choices=INFER_APIS, default="function")
    # A choice, not a store_true flag: the parent forwards every option to its
    # children as "--name value".
    parser.add_argument(
        "--routing-stop-gradient", choices=("off", "on"), default="off",
        help="build the models with stop_gradient_in_routing (see RoutingCaps); default off, as shipped",
    )
    return _harness.parse_benchmark_args(parser, argv)


# -- child: one model x precision -------------------------------------------


def primary_conv_floor(model, batch, repeats, warmup):
    """Seconds per call of the PrimaryCaps convolution alone, forward and
    backward (input and kernel gradients), on the input it sees in the model.

    The loss is a sum of squares: with a loss linear in the output (a plain
    sum, as in ``../shared/peer-bench/tf_conv_floor.py``) the gradients do
    not depend on the forward result and TensorFlow prunes the forward
    convolution, so such a "forward + backward" figure times the backward
    pass alone. Both are returned: ``{"forward_backward_s", "backward_only_s"}``,
    with ``zoo_forward_backward_s``, the same convolution as PrimaryCaps
    computes it in training (its kernel gradient is a convolution of its own:
    ``caps_zoo.layers.capsule.strided_conv2d``), so training may beat the
    plain-TensorFlow floor.
    """
    import numpy as np
    import tensorflow as tf

    conv = model.primary_caps.conv
    feature_shape = (None,) + tuple(model.image_shape)
    for layer in model.convs:
        feature_shape = layer.compute_output_shape(feature_shape)
    features = tf.Variable(
        tf.cast(tf.random.uniform((batch,) + tuple(feature_shape[1:])), conv.compute_dtype)
    )

    def step(square, zoo):
        with tf.GradientTape() as tape:
            convolved = model.primary_caps.convolve(features, training=True) if zoo else conv(features)
            out = tf.cast(convolved, "float32")
            loss = tf.reduce_sum(tf.square(out) if square else out)
        gradients = tape.gradient(loss, [features, *conv.trainable_variables])
        return tf.add_n([tf.reduce_sum(tf.cast(g, "float32")) for g in gradients])

    timings = {}
    for name, square, zoo in (
        ("forward_backward_s", True, False),
        ("backward_only_s", False, False),
        # The same convolution as the zoo trains it (PrimaryCaps.convolve:
        # the kernel gradient as a convolution of its own), for comparison.
        ("zoo_forward_backward_s", True, True),
    ):
        function = tf.function(lambda square=square, zoo=zoo: step(square, zoo), jit_compile=False)
        for _ in range(warmup):
            function().numpy()
        timings[name] = float(np.median(_harness.timed_calls(lambda: function().numpy(), repeats)))
    return timings


def measure(args, model_name, precision):
    _harness.import_repository()
    import keras
    import numpy as np
    import tensorflow as tf

    import caps_zoo

    keras.mixed_precision.set_global_policy(precision)
    # Same seed in every child: all precisions start from the same float32
    # weights, so their initial scores can be compared in the parent.
    keras.utils.set_random_seed(args.seed)
    model = caps_zoo.create_model(
        model_name, stop_gradient_in_routing=args.routing_stop_gradient == "on"
    )
    # jit_compile=False explicitly: XLA is far slower for this model on CPU.
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=False)
    model.optimizer.build(model.trainable_variables)
    initial_checksum = float(sum(np.abs(w).astype("float64").sum() for w in model.get_weights()))

    rng = np.random.default_rng(args.seed)
    height, width, channels = model.image_shape
    batch = args.batch_size
    # Synthetic data, converted to tensors once: the input pipeline is not measured.
    images = tf.constant(rng.random((batch, height, width, channels), dtype=np.float32))
    labels = tf.constant(rng.integers(0, model.num_classes, size=batch, dtype=np.int32))

    if args.infer_api == "function":
        call = tf.function(lambda x: model(x, training=False), jit_compile=False)

        def infer(x):
            # .numpy() waits for the result and matches what predict_on_batch returns.
            return {key: value.numpy() for key, value in call(x).items()}
    else:
        infer = model.predict_on_batch

    outputs_finite = True

    def check_outputs(outputs):
        nonlocal outputs_finite
        outputs_finite &= all(bool(np.isfinite(v).all()) for v in outputs.values())

    # Scores of the untrained model, before any update (also warms up the trace).
    initial_scores = infer(images)["scores"]
    check_outputs({"scores": initial_scores})

    # -- training: Keras's own compiled step function (the one fit runs),
    # called on the in-memory batch without fit's per-epoch overhead.
    model.make_train_function()
    losses = []

    def train_step():
        logs = model.train_function([(images, labels)])
        losses.append(float(logs["loss"]))  # float() also waits for the step

    for _ in range(args.warmup_steps):
        train_step()
    step_seconds = _harness.timed_calls(train_step, args.train_steps)
    weights_finite = all(bool(np.isfinite(w).all()) for w in model.get_weights())

    # -- inference, with the trained weights (speed does not depend on them).
    inference = {}
    for infer_batch in sorted({1, batch}):
        x = images[:infer_batch]
        for _ in range(args.warmup_steps):
            check_outputs(infer(x))
        inference[str(infer_batch)] = _harness.timed_summary(
            lambda: infer(x), args.infer_repeats, infer_batch, check_outputs
        )

    median_step_ms, p90_step_ms, train_images_per_second = _harness.timing_summary(
        step_seconds, batch
    )
    floor = primary_conv_floor(model, batch, max(3, args.train_steps // 2), args.warmup_steps)
    floor["images_per_second"] = batch / floor["forward_backward_s"]
    floor["zoo_images_per_second"] = batch / floor["zoo_forward_backward_s"]
    # Of the floor's rate, the share training reaches (1.0: every other op free).
    floor["training_fraction"] = train_images_per_second / floor["images_per_second"]
    return {
        "model": model_name,
        "precision": precision,
        "parameters": int(model.count_params()),
        "batch_size": batch,
        "train": {
            "steps": args.train_steps,
            "images_per_second": train_images_per_second,
            "median_step_ms": median_step_ms,
            "p90_step_ms": p90_step_ms,
        },
        "primary_conv_floor": floor,
        "inference": inference,
        "infer_api": args.infer_api,
        "finite": {
            # Keras's logged loss is the running mean, so one NaN step shows here.
            "train_loss": bool(np.isfinite(losses).all()),
            "weights_after_training": weights_finite,
            "outputs": outputs_finite,
        },
        "final_train_loss": losses[-1],
        "initial_weights_checksum": initial_checksum,
        "initial_scores": initial_scores.astype("float64").round(7).tolist(),
        **_harness.runtime_info(),
    }


# -- parent: compare the precisions, then the table --------------------------


def compare_to_float32(results):
    """Per result: max |score - float32 score| on the initial weights, and argmax agreement."""
    import numpy as np

    for result, ref in _harness.float32_references(results):
        if ref is not None:
            scores, ref_scores = np.asarray(result["initial_scores"]), np.asarray(ref["initial_scores"])
            result["vs_float32"] = {
                "max_abs_score_diff": float(np.abs(scores - ref_scores).max()),
                "argmax_agreement": float((scores.argmax(-1) == ref_scores.argmax(-1)).mean()),
            }
        else:
            result["vs_float32"] = None
    for result in results:
        del result["initial_scores"]  # bulky; only needed for this comparison


def summarize(results, args):
    """The table, and a line with the versions and settings."""
    batch = args.batch_size
    headers = [
        "model", "precision", f"train img/s (b{batch})", "step ms med",
        "PrimaryCaps conv floor img/s", "of floor", "zoo's conv img/s",
        "infer b1 ms med/p90", f"infer b{batch} ms med/p90", f"infer img/s (b{batch})",
        "finite", "max|Δscore| vs fp32",
    ]
    rows = []
    for r in results:
        if "error" in r:
            rows.append(_harness.failed_row(r, len(headers)))
            continue
        small, large = r["inference"]["1"], r["inference"][str(batch)]
        diff = r["vs_float32"]
        rows.append([
            r["model"],
            r["precision"],
            f"{r['train']['images_per_second']:.1f}",
            f"{r['train']['median_step_ms']:.0f}",
            f"{r['primary_conv_floor']['images_per_second']:.1f}",
            f"{r['primary_conv_floor']['training_fraction']:.0%}",
            f"{r['primary_conv_floor']['zoo_images_per_second']:.1f}",
            f"{small['median_ms']:.1f} / {small['p90_ms']:.1f}",
            f"{large['median_ms']:.0f} / {large['p90_ms']:.0f}",
            f"{large['images_per_second']:.1f}",
            _harness.finite_cell(r["finite"]),
            "n/a" if diff is None else f"{diff['max_abs_score_diff']:.2e}",
        ])
    return _harness.table_with_note(headers, rows, results, args, f"{args.infer_repeats} inference calls per batch size ({args.infer_api})")


def main(argv=None):
    return _harness.run_benchmark(
        __file__, parse_args(argv), measure, summarize, compare=compare_to_float32
    )


if __name__ == "__main__":
    sys.exit(main())
