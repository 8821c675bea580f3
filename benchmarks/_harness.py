"""What the benchmark scripts share: one subprocess per model x precision.

A script builds its parser with ``benchmark_parser`` (adding its own options),
finishes it with ``parse_benchmark_args``, and hands ``run_benchmark``
``measure(args, model, precision) -> dict`` (the child's work; the dict must
be JSON-serialisable and hold ``train.images_per_second`` and ``versions``)
and ``summarize(results, args) -> str`` (the table). The parent re-invokes
the script with the hidden ``--_child MODEL PRECISION`` option for every
combination and reads the result back from one marked line of its stdout:
the dtype policy is global to a process, and each run should start with its
own memory.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from caps_zoo.hardware import cpu_bf16_units

PRECISIONS = ("float32", "mixed_bfloat16")
RESULT_MARKER = "BENCHMARK_RESULT "
REPO_ROOT = Path(__file__).resolve().parents[1]
# Options that choose the combinations or the output: the parent keeps them,
# every other option is forwarded to the children.
PARENT_ONLY_OPTIONS = ("models", "precisions", "json", "_child")


# -- command line ------------------------------------------------------------


def benchmark_parser(
    description,
    models,
    batch_size,
    batch_help="training batch",
    infer_help="timed inference calls per batch size",
    train_steps=20,
    infer_repeats=30,
):
    """The options every benchmark has; the script adds its own after these."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--models", nargs="+", default=list(models))
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument("--batch-size", type=int, default=batch_size,
                        help=f"{batch_help} (default {batch_size})")
    parser.add_argument("--train-steps", type=int, default=train_steps, help="timed training steps")
    parser.add_argument("--warmup-steps", type=int, default=2,
                        help="untimed steps / calls before timing (the first one traces)")
    parser.add_argument("--infer-repeats", type=int, default=infer_repeats, help=infer_help)
    return parser


def parse_benchmark_args(parser, argv=None):
    """Adds the trailing common options, parses and checks the counts."""
    parser.add_argument("--seed", type=int, default=0, help="weights and synthetic data")
    parser.add_argument("--json", metavar="PATH", help="also write the results and machine info here")
    parser.add_argument("--_child", nargs=2, metavar=("MODEL", "PRECISION"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.batch_size, args.train_steps, args.infer_repeats) < 1 or args.warmup_steps < 1:
        parser.error("--batch-size, --train-steps, --infer-repeats and --warmup-steps must be >= 1")
    return args


def settings(args):
    """The options as written to the JSON report."""
    return {k: v for k, v in vars(args).items() if k not in ("_child", "json")}


# -- child side --------------------------------------------------------------


def import_repository():
    """Makes ``import caps_zoo`` work from a checkout that is not installed."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))


def timed_calls(call, repeats, check=None):
    """Wall seconds of ``repeats`` calls of ``call()``; each result, if
    ``check`` is given, is passed to it (outside the timed span)."""
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = call()
        seconds.append(time.perf_counter() - started)
        if check is not None:
            check(result)
    return seconds


def timed_summary(call, repeats, images_per_call, check=None):
    """``{"median_ms", "p90_ms", "images_per_second"}`` of ``repeats`` calls."""
    median_ms, p90_ms, images_per_second = timing_summary(
        timed_calls(call, repeats, check), images_per_call
    )
    return {"median_ms": median_ms, "p90_ms": p90_ms, "images_per_second": images_per_second}


def timing_summary(seconds, images_per_call):
    """``(median ms, p90 ms, images/second)`` of equally sized timed calls."""
    import numpy as np

    seconds = np.asarray(seconds, dtype="float64")
    milliseconds = 1000.0 * seconds
    return (
        float(np.median(milliseconds)),
        float(np.percentile(milliseconds, 90)),
        float(images_per_call * len(seconds) / seconds.sum()),
    )


# Environment variables that change CPU speed (read by TensorFlow at start-up):
# recorded with every result so that a sweep over them can be told apart.
SPEED_ENVIRONMENT = (
    "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "TF_ENABLE_ONEDNN_OPTS", "OMP_NUM_THREADS",
)


def runtime_info():
    """TensorFlow / Keras versions and thread settings of the child."""
    import keras
    import tensorflow as tf

    return {
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
        "tf_threads": {
            # 0 means TensorFlow's default: one thread per core.
            "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
        },
        "speed_environment": {name: os.environ.get(name) for name in SPEED_ENVIRONMENT},
    }


# -- parent side -------------------------------------------------------------


def child_command(script, args, model, precision):
    """The script again, for one combination, with every other option forwarded."""
    command = [sys.executable, str(Path(script).resolve()), "--_child", model, precision]
    for name, value in vars(args).items():
        if name in PARENT_ONLY_OPTIONS or value is None:
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        command += [f"--{name.replace('_', '-')}", *map(str, values)]
    return command


def run_combination(script, args, model, precision):
    """``(result, None)`` from a child, or ``(None, error text)`` if it failed."""
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    process = subprocess.run(
        child_command(script, args, model, precision), capture_output=True, text=True, env=env
    )
    for line in process.stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            return json.loads(line[len(RESULT_MARKER):]), None
    tail = "\n".join((process.stderr or process.stdout).strip().splitlines()[-15:])
    return None, f"exit code {process.returncode}\n{tail}"


def float32_references(results):
    """A list of ``(result, float32 result of the same model or None)``.

    The reference is None when there is no float32 run of that model, or when
    its initial weights differ (``initial_weights_checksum``): only runs that
    start from the same weights can be compared number for number.
    """
    reference = {r["model"]: r for r in results if r["precision"] == "float32"}
    pairs = []
    for result in results:
        ref = reference.get(result["model"])
        same_start = ref is not None and (
            ref["initial_weights_checksum"] == result["initial_weights_checksum"]
        )
        pairs.append((result, ref if same_start else None))
    return pairs


def machine_info():
    info = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu_model": None,
        # bf16 speed depends on these more than on anything else (caps_zoo.hardware).
        "cpu_bf16_units": cpu_bf16_units(),
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


def format_table(headers, rows):
    """Left-aligned plain-text columns with a dashed rule under the headers."""
    widths = [max(len(str(row[i])) for row in [headers] + rows) for i in range(len(headers))]

    def line(cells):
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(row) for row in rows])


def table_with_note(headers, rows, results, args, calls):
    """The table, then the versions and how many calls were timed (``calls``:
    e.g. "30 generate calls per n")."""
    text = format_table(headers, rows)
    versions = versions_note(results)
    if versions:
        text += (f"\n\n{versions}; {args.train_steps} timed training steps, {calls}, "
                 f"after {args.warmup_steps} warm-up each.")
    return text


def failed_row(result, columns):
    """The table row of a combination whose child failed (model and precision come first)."""
    return [result["model"], result["precision"], "FAILED"] + [""] * (columns - 3)


def finite_cell(finite):
    """``yes``, or ``NO:`` and the names of the checks that failed."""
    bad = [name for name, ok in finite.items() if not ok]
    return "yes" if not bad else "NO: " + ", ".join(bad)


def versions_note(results):
    """``TensorFlow x, Keras y`` of the first successful result, or None."""
    for result in results:
        if "error" not in result:
            versions = result["versions"]
            return f"TensorFlow {versions['tensorflow']}, Keras {versions['keras']}"
    return None


def write_report(path, machine, args, results):
    succeeded = [r for r in results if "error" not in r]
    machine = dict(machine, **(succeeded[0]["versions"] if succeeded else {}))
    report = {"machine": machine, "settings": settings(args), "results": results}
    Path(path).write_text(json.dumps(report, indent=2) + "\n")


def run_benchmark(script, args, measure, summarize, compare=None):
    """Child: measure one combination and print it. Parent: run them all,
    print progress, then ``summarize(results, args)``, and write ``--json``.

    ``compare(succeeded_results)``, if given, runs before the summary and may
    add fields to the results that relate them to each other (they are
    written to the JSON too). Failed combinations are in ``results`` as
    ``{"model", "precision", "error"}``. Returns the exit code: non-zero if
    any combination failed.
    """
    if args._child:
        model, precision = args._child
        print(RESULT_MARKER + json.dumps(measure(args, model, precision)), flush=True)
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
        result, error = run_combination(script, args, model, precision)
        elapsed = time.time() - started
        if result is None:
            print(f"{tag}: FAILED after {elapsed:.0f} s ({error})", flush=True)
            results.append({"model": model, "precision": precision, "error": error})
        else:
            print(f"{tag}: done in {elapsed:.0f} s "
                  f"(train {result['train']['images_per_second']:.1f} img/s)", flush=True)
            results.append(result)

    succeeded = [r for r in results if "error" not in r]
    if compare is not None:
        compare(succeeded)
    print()
    print(summarize(results, args))
    if args.json:
        write_report(args.json, machine, args, results)
        print(f"Wrote {args.json}")
    return 0 if len(succeeded) == len(results) else 1
