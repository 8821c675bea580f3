"""Training throughput and sampling latency of the recurrent writers (DRAW, DCRW).

    PYTHONPATH=. python benchmarks/benchmark_writers.py --json writers_bench.json

For every model x precision it runs one fresh subprocess (see _harness.py)
that measures:

- training: images/second of the full custom ``train_step`` (T steps of
  read, encoder, posterior, decoder LSTM and write; Bernoulli and KL losses;
  gradients through the whole recurrence; Adam with the recipe's gradient
  clipping) in graph mode, without XLA, on one synthetic binary batch held
  in memory;
- sampling: median / p90 latency of ``model.generate(noise)`` (prior noise to
  images: T decoder and write steps) as a ``tf.function``, for n = 1 and
  n = 64 images per call, and images/second at the largest n;
- numerics: whether the losses, the weights and the sampled images stay
  finite, and how far the loss of the freshly initialised model is from
  float32's.

See benchmarks/README.md for how to read the table.
"""

import sys
import time

import _harness

MODELS = ("draw", "dcrw")
SAMPLE_SIZES = (1, 64)
LOSS_NAMES = ("loss", "reconstruction_nll", "latent_kl")
CLIP_NORM = 5.0  # recipes/train_draw.py's global gradient-norm clipping


def parse_args(argv=None):
    parser = _harness.benchmark_parser(
        __doc__.splitlines()[0], MODELS, batch_size=100,
        infer_help="timed generate calls per number of images",
    )
    parser.add_argument("--sample-sizes", nargs="+", type=int, default=list(SAMPLE_SIZES),
                        help="images per generate call (default 1 64)")
    parser.add_argument("--steps", type=int,
                        help="override T (default: the model's; draw 64, dcrw 10)")
    parser.add_argument("--clip-norm", type=float, default=CLIP_NORM,
                        help=f"Adam's global_clipnorm, as in training (default {CLIP_NORM})")
    args = _harness.parse_benchmark_args(parser, argv)
    if min(args.sample_sizes) < 1 or (args.steps is not None and args.steps < 1):
        parser.error("--sample-sizes and --steps must be >= 1")
    args.sample_sizes = sorted(set(args.sample_sizes))
    return args


# -- child: one model x precision -------------------------------------------


def measure(args, model_name, precision):
    _harness.import_repository()
    import keras
    import numpy as np
    import tensorflow as tf

    import caps_zoo

    keras.mixed_precision.set_global_policy(precision)
    # Same seed in every child: all precisions start from the same float32
    # weights and draw the same posterior noise, so their first losses can be
    # compared in the parent.
    keras.utils.set_random_seed(args.seed)
    overrides = {} if args.steps is None else {"steps": args.steps}
    model = caps_zoo.create_model(model_name, **overrides)
    # As recipes/train_draw.py compiles it. jit_compile=False explicitly: it is
    # what "auto" gives on a CPU-only machine, i.e. what training runs.
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3, global_clipnorm=args.clip_norm), jit_compile=False
    )
    model.optimizer.build(model.trainable_variables)
    initial_checksum = float(sum(np.abs(w).astype("float64").sum() for w in model.get_weights()))

    rng = np.random.default_rng(args.seed)
    batch = args.batch_size
    # Binary images, as the Bernoulli likelihood expects; converted to a
    # tensor once: the input pipeline is not measured. Which pixels are on
    # does not change the amount of work.
    images = tf.constant((rng.random((batch, *model.image_shape)) < 0.5).astype(np.float32))

    # -- training: Keras's own compiled step function (the one fit runs),
    # called on the in-memory batch without fit's per-epoch overhead.
    model.make_train_function()
    losses = {name: [] for name in LOSS_NAMES}

    def train_step():
        logs = model.train_function([images])
        for name in LOSS_NAMES:
            losses[name].append(float(logs[name]))  # float() also waits for the step

    started = time.perf_counter()
    train_step()  # traces the unrolled T-step graph and its gradient
    first_step_seconds = time.perf_counter() - started
    # The first step's loss is the initial weights' (the update comes after).
    initial_loss = losses["loss"][0]
    for _ in range(args.warmup_steps - 1):
        train_step()
    step_seconds = _harness.timed_calls(train_step, args.train_steps)
    weights_finite = all(bool(np.isfinite(w).all()) for w in model.get_weights())

    # -- sampling, with the trained weights (speed does not depend on them).
    # One trace for every n, with the signature of the exported "generate"
    # endpoint: noise (n, T, latent_dim) float32.
    noise_spec = tf.TensorSpec([None, model.steps, model.latent_dim], tf.float32)
    generate = tf.function(model.generate, input_signature=[noise_spec], jit_compile=False)
    images_finite = True

    def check_images(drawn):
        nonlocal images_finite
        images_finite &= bool(np.isfinite(drawn).all())

    sampling = {}
    for n in args.sample_sizes:
        noise_shape = (n, model.steps, model.latent_dim)
        noise = tf.constant(rng.standard_normal(noise_shape, dtype=np.float32))
        started = time.perf_counter()
        check_images(generate(noise).numpy())  # .numpy() waits for the result
        first_call_seconds = time.perf_counter() - started  # with the trace, for the first n
        for _ in range(args.warmup_steps - 1):
            check_images(generate(noise).numpy())
        sampling[str(n)] = {
            **_harness.timed_summary(
                lambda: generate(noise).numpy(),  # .numpy() waits for the result
                args.infer_repeats, n, check_images,
            ),
            "first_call_seconds": first_call_seconds,
        }

    median_step_ms, p90_step_ms, train_images_per_second = _harness.timing_summary(
        step_seconds, batch
    )
    return {
        "model": model_name,
        "precision": precision,
        "parameters": int(model.count_params()),
        "drawing_steps": model.steps,
        "latent_dim": model.latent_dim,
        "batch_size": batch,
        "train": {
            "steps": args.train_steps,
            "images_per_second": train_images_per_second,
            "median_step_ms": median_step_ms,
            "p90_step_ms": p90_step_ms,
            "first_step_seconds": first_step_seconds,  # tracing the graph, then one step
        },
        "sampling": sampling,
        "finite": {
            # Keras's logged losses are running means, so one NaN step shows here.
            **{f"train_{name}": bool(np.isfinite(values).all()) for name, values in losses.items()},
            "weights_after_training": weights_finite,
            "sampled_images": images_finite,
        },
        "initial_loss": initial_loss,
        "final_train_losses": {name: values[-1] for name, values in losses.items()},
        "initial_weights_checksum": initial_checksum,
        **_harness.runtime_info(),
    }


# -- parent: compare the precisions, then the table --------------------------


def compare_to_float32(results):
    """Per result: |initial loss - float32's| in nats per image (same weights and noise)."""
    for result, ref in _harness.float32_references(results):
        result["vs_float32"] = None if ref is None else {
            "initial_loss_abs_diff": abs(result["initial_loss"] - ref["initial_loss"]),
        }


def summarize(results, args):
    """The table, and a line with the versions and settings."""
    batch = args.batch_size
    largest = args.sample_sizes[-1]
    headers = (
        ["model", "precision", "T", f"train img/s (b{batch})", "step ms med"]
        + [f"sample n={n} ms med/p90" for n in args.sample_sizes]
        + [f"sample img/s (n={largest})", "finite", "loss₀ nats", "|Δloss₀| vs fp32"]
    )
    rows = []
    for r in results:
        if "error" in r:
            rows.append(_harness.failed_row(r, len(headers)))
            continue
        diff = r["vs_float32"]
        rows.append(
            [r["model"], r["precision"], r["drawing_steps"],
             f"{r['train']['images_per_second']:.1f}",
             f"{r['train']['median_step_ms']:.0f}"]
            + [f"{r['sampling'][str(n)]['median_ms']:.1f} / {r['sampling'][str(n)]['p90_ms']:.1f}"
               for n in args.sample_sizes]
            + [f"{r['sampling'][str(largest)]['images_per_second']:.1f}",
               _harness.finite_cell(r["finite"]),
               f"{r['initial_loss']:.2f}",
               "n/a" if diff is None else f"{diff['initial_loss_abs_diff']:.2e}"]
        )
    return _harness.table_with_note(headers, rows, results, args, f"{args.infer_repeats} generate calls per n")


def main(argv=None):
    return _harness.run_benchmark(
        __file__, parse_args(argv), measure, summarize, compare=compare_to_float32
    )


if __name__ == "__main__":
    sys.exit(main())
