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
  class scores of the freshly initialised model are from float32's.

See benchmarks/README.md for how to read the table.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

MODELS = ("capsnet", "deep_capsnet")
PRECISIONS = ("float32", "mixed_bfloat16")
INFER_APIS = ("function", "predict_on_batch")
RESULT_MARKER = "BENCHMARK_RESULT "
REPO_ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument("--batch-size", type=int, default=128,
                        help="training batch and the large inference batch (default 128)")
    parser.add_argument("--train-steps", type=int, default=20, help="timed training steps")
    parser.add_argument("--warmup-steps", type=int, default=2,
                        help="untimed steps / calls before timing (the first one traces)")
    parser.add_argument("--infer-repeats", type=int, default=30,
                        help="timed inference calls per batch size")
    parser.add_argument("--infer-api", choices=INFER_APIS, default="function")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH", help="also write the results and machine info here")
    parser.add_argument("--_child", nargs=2, metavar=("MODEL", "PRECISION"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.batch_size, args.train_steps, args.infer_repeats) < 1 or args.warmup_steps < 1:
        parser.error("--batch-size, --train-steps, --infer-repeats and --warmup-steps must be >= 1")
    return args


# -- child: one model x precision -------------------------------------------


def run_child(args):
    model_name, precision = args._child
    if str(REPO_ROOT) not in sys.path:  # run from a checkout without installing
        sys.path.insert(0, str(REPO_ROOT))

    import keras
    import numpy as np
    import tensorflow as tf

    import caps_zoo

    keras.mixed_precision.set_global_policy(precision)
    # Same seed in every child: all precisions start from the same float32
    # weights, so their initial scores can be compared in the parent.
    keras.utils.set_random_seed(args.seed)
    model = caps_zoo.create_model(model_name)
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
    step_seconds = []
    for _ in range(args.train_steps):
        started = time.perf_counter()
        train_step()
        step_seconds.append(time.perf_counter() - started)
    weights_finite = all(bool(np.isfinite(w).all()) for w in model.get_weights())

    # -- inference, with the trained weights (speed does not depend on them).
    inference = {}
    for infer_batch in sorted({1, batch}):
        x = images[:infer_batch]
        for _ in range(args.warmup_steps):
            check_outputs(infer(x))
        latencies = []
        for _ in range(args.infer_repeats):
            started = time.perf_counter()
            outputs = infer(x)
            latencies.append(time.perf_counter() - started)
            check_outputs(outputs)
        latencies_ms = 1000.0 * np.asarray(latencies)
        inference[str(infer_batch)] = {
            "median_ms": float(np.median(latencies_ms)),
            "p90_ms": float(np.percentile(latencies_ms, 90)),
            "images_per_second": float(infer_batch * len(latencies) / np.sum(latencies)),
        }

    step_ms = 1000.0 * np.asarray(step_seconds)
    return {
        "model": model_name,
        "precision": precision,
        "parameters": int(model.count_params()),
        "batch_size": batch,
        "train": {
            "steps": args.train_steps,
            "images_per_second": float(batch * len(step_seconds) / np.sum(step_seconds)),
            "median_step_ms": float(np.median(step_ms)),
            "p90_step_ms": float(np.percentile(step_ms, 90)),
        },
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
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
        "tf_threads": {
            "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
        },
    }


# -- parent: one subprocess per combination, then the table ------------------


def child_command(args, model, precision):
    command = [sys.executable, str(Path(__file__).resolve()), "--_child", model, precision]
    for flag in ("batch_size", "train_steps", "warmup_steps", "infer_repeats", "infer_api", "seed"):
        command += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    return command


def run_combination(args, model, precision):
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    process = subprocess.run(
        child_command(args, model, precision), capture_output=True, text=True, env=env
    )
    for line in process.stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            return json.loads(line[len(RESULT_MARKER):]), None
    tail = "\n".join((process.stderr or process.stdout).strip().splitlines()[-15:])
    return None, f"exit code {process.returncode}\n{tail}"


def compare_to_float32(results):
    """Per result: max |score - float32 score| on the initial weights, and argmax agreement."""
    import numpy as np

    reference = {r["model"]: r for r in results if r["precision"] == "float32"}
    for result in results:
        ref = reference.get(result["model"])
        comparable = ref is not None and (
            ref["initial_weights_checksum"] == result["initial_weights_checksum"]
        )
        if comparable:
            scores, ref_scores = np.asarray(result["initial_scores"]), np.asarray(ref["initial_scores"])
            result["vs_float32"] = {
                "max_abs_score_diff": float(np.abs(scores - ref_scores).max()),
                "argmax_agreement": float((scores.argmax(-1) == ref_scores.argmax(-1)).mean()),
            }
        else:
            result["vs_float32"] = None
    for result in results:
        del result["initial_scores"]  # bulky; only needed for this comparison


def machine_info():
    info = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu_model": None,
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in lscpu.splitlines():
            if line.startswith("Model name:"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def format_table(results, batch):
    headers = [
        "model", "precision", f"train img/s (b{batch})", "step ms med",
        "infer b1 ms med/p90", f"infer b{batch} ms med/p90", f"infer img/s (b{batch})",
        "finite", "max|Δscore| vs fp32",
    ]
    rows = []
    for r in results:
        if "error" in r:
            rows.append([r["model"], r["precision"], "FAILED"] + [""] * (len(headers) - 3))
            continue
        small, large = r["inference"]["1"], r["inference"][str(batch)]
        bad = [name for name, ok in r["finite"].items() if not ok]
        diff = r["vs_float32"]
        rows.append([
            r["model"],
            r["precision"],
            f"{r['train']['images_per_second']:.1f}",
            f"{r['train']['median_step_ms']:.0f}",
            f"{small['median_ms']:.1f} / {small['p90_ms']:.1f}",
            f"{large['median_ms']:.0f} / {large['p90_ms']:.0f}",
            f"{large['images_per_second']:.1f}",
            "yes" if not bad else "NO: " + ", ".join(bad),
            "n/a" if diff is None else f"{diff['max_abs_score_diff']:.2e}",
        ])
    widths = [max(len(str(row[i])) for row in [headers] + rows) for i in range(len(headers))]

    def line(cells):
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(row) for row in rows])


def main(argv=None):
    args = parse_args(argv)
    if args._child:
        print(RESULT_MARKER + json.dumps(run_child(args)), flush=True)
        return 0

    machine = machine_info()
    load = machine["load_average_at_start"]
    print(f"Machine: {machine['cpu_model'] or machine['machine']}, {machine['cpu_count']} CPUs")
    if load and load[0] > 0.5:
        print(f"Warning: load average {load[0]:.2f}: other processes are using the CPU, "
              "so the numbers will be low and noisy.")

    combinations = [(m, p) for m in args.models for p in args.precisions]
    results = []
    for index, (model, precision) in enumerate(combinations, start=1):
        tag = f"[{index}/{len(combinations)}] {model} / {precision}"
        print(f"{tag}: started", flush=True)
        started = time.time()
        result, error = run_combination(args, model, precision)
        elapsed = time.time() - started
        if result is None:
            print(f"{tag}: FAILED after {elapsed:.0f} s ({error})", flush=True)
            results.append({"model": model, "precision": precision, "error": error})
        else:
            print(f"{tag}: done in {elapsed:.0f} s "
                  f"(train {result['train']['images_per_second']:.1f} img/s)", flush=True)
            results.append(result)

    succeeded = [r for r in results if "error" not in r]
    compare_to_float32(succeeded)
    print()
    print(format_table(results, args.batch_size))
    if succeeded:
        first = succeeded[0]
        print(f"\nTensorFlow {first['versions']['tensorflow']}, Keras {first['versions']['keras']}; "
              f"{args.train_steps} timed training steps, {args.infer_repeats} inference calls per "
              f"batch size ({args.infer_api}), after {args.warmup_steps} warm-up each.")

    if args.json:
        machine.update(succeeded[0]["versions"] if succeeded else {})
        report = {
            "machine": machine,
            "settings": {k: v for k, v in vars(args).items() if k not in ("_child", "json")},
            "results": results,
        }
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"Wrote {args.json}")
    return 0 if len(succeeded) == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
