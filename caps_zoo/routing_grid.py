"""The routing-iteration grid of the Deep Capsule Network paper (its Figs.
9-11): ``deep_capsnet`` trained once for every pair (primary route r1,
secondary route r2) at one budget, with the same data, epochs and seed.

Each cell is an ordinary training run (``caps_zoo.training.train``) in its
own directory, ``<output_dir>/r1_<r1>_r2_<r2>/``, so a killed grid resumes
where it stopped: finished cells are read back, the half-done one resumes
from its last epoch, the rest start. Cells train with the validation split:
the epoch of the best validation accuracy is the cell's, and the test split
is evaluated once per cell on that epoch's weights (the cell's
``grid_test.json``, not repeated on a restart). ``results.json`` in the
grid's directory is rewritten after every cell.

The paper reports its best accuracy at r1 = 2, r2 = 3 and its best
trade-off of accuracy against time at r1 = 1, r2 = 2.
"""

import dataclasses
import json
from pathlib import Path

import numpy as np

from caps_zoo import data, registry, training
from caps_zoo.hardware import machine_description
from caps_zoo import weights as weights_io

ITERATIONS = (1, 2, 3, 4)
RESULTS = "results.json"
CELL_TEST = "grid_test.json"


def cell_name(primary, secondary):
    return f"r1_{primary}_r2_{secondary}"


def check_base(base):
    """The grid's base TrainConfig: a two-stage model selected on validation."""
    if not base.validation or base.selection_metric is None:
        raise ValueError("the routing grid chooses each cell's epoch on the validation split: "
                         "set validation=True (--validation) and a selection metric.")
    model = registry.create_model(base.model, **base.model_overrides)
    stages = len(model.routing_stages)
    if stages != 2:
        raise ValueError(f"the routing grid needs two routing stages (primary and secondary route, "
                         f"as deep_capsnet has); '{base.model}' has {stages}.")


def run_grid(base, output_dir, iterations=ITERATIONS, test_limit=None, progress=print, shard=None):
    """Train (or resume, or read back) every cell; returns the results, one
    dict per cell in row-major order (r1, then r2), and writes them to
    ``<output_dir>/results.json``. ``test_limit``: test each cell on the
    first N test images only (quick checks; default all).

    ``shard=(I, N)``: one of N processes sharing the grid (one core each):
    it trains only the cells I, I + N, ... of the row-major order, returns
    the finished cells it can read, and leaves ``results.json`` to a run
    without a shard (which reads every finished cell back, trains what is
    left and writes the results and figures)."""
    iterations = tuple(int(r) for r in iterations)
    if not iterations or min(iterations) < 1:
        raise ValueError(f"iterations must be integers >= 1; got {iterations}.")
    shard_index, shard_count = shard or (1, 1)
    if not 1 <= shard_index <= shard_count:
        raise ValueError(f"shard must be (I, N) with 1 <= I <= N; got {shard}.")
    check_base(base)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    results = []
    cells = [(r1, r2) for r1 in iterations for r2 in iterations]
    for index, (r1, r2) in enumerate(cells, 1):
        run_dir = output_dir / cell_name(r1, r2)
        config = dataclasses.replace(base, routing_iterations=(r1, r2), output_dir=str(run_dir))
        finished = (run_dir / training.METRICS).is_file()
        if finished:
            check_same_cell(config, run_dir)
        mine = (index - 1) % shard_count == shard_index - 1
        if not (finished or mine):
            progress(f"[{index}/{len(cells)}] r1={r1} r2={r2}: another shard's")
            continue
        progress(f"[{index}/{len(cells)}] r1={r1} r2={r2}: "
                 + ("finished, read back" if finished else "training"))
        if not finished:
            training.train(config)
        results.append(describe_cell(config, run_dir, test_limit))
        if shard is None:
            training.write_json_atomically(output_dir / RESULTS, {
                "base": dataclasses.asdict(base), "iterations": list(iterations), "cells": results})
    return results


# What may differ between a finished cell and the grid that reads it back.
MAY_DIFFER = ("output_dir", "verbose")


def check_same_cell(config, run_dir):
    """A finished cell is read back only if it trained this grid's settings
    (the resume check of a half-done run lets ``epochs`` grow; a grid's
    cells must all have the same budget)."""
    stored = json.loads((run_dir / "config.json").read_text())
    names = [field.name for field in dataclasses.fields(config) if field.name not in MAY_DIFFER]
    details = training.changed_settings(stored, config, names)
    if details:
        raise ValueError(
            f"'{run_dir}' is a finished cell of a grid with other settings ({details}); every cell "
            "of a grid trains the same budget. Use a new --output-dir for these settings."
        )


def describe_cell(config, run_dir, test_limit=None):
    """One cell's figures: validation accuracy of its chosen epoch, test
    accuracy of that epoch's weights (evaluated once, then read back),
    seconds per training epoch."""
    metrics = json.loads((run_dir / training.METRICS).read_text())
    progress = json.loads((run_dir / "progress.json").read_text())
    test_path = run_dir / CELL_TEST
    if test_path.is_file():
        test = json.loads(test_path.read_text())
    else:
        # In the cell's precision, as its validation accuracy was measured.
        with training.dtype_policy(config.precision):
            model = training.build_model(dataclasses.replace(config, init_weights=None))
            weights_io.load_weights(model, run_dir / training.BEST_WEIGHTS)
            test_data = data.load(config.dataset, "test", batch_size=256, limit=test_limit)
            test = model.evaluate(test_data, return_dict=True, verbose=0)
        # Measured right after the cell trained (run_grid), so this is the
        # machine its seconds per epoch are from.
        test = {"accuracy": float(test["accuracy"]), "precision": config.precision,
                "images": data.num_examples(config.dataset, "test", test_limit),
                "machine": machine_description()}
        training.write_json_atomically(test_path, test)
    primary, secondary = config.routing_iterations
    return {
        "primary_iterations": primary,
        "secondary_iterations": secondary,
        "selected_epoch": metrics["selected_epoch"],
        "epochs_completed": progress["epochs_completed"],
        "validation_accuracy": metrics["validation"]["accuracy"],
        "test_accuracy": test["accuracy"],
        "test_images": test["images"],
        "training_images": metrics["training_images"],
        "seconds_per_epoch": progress["train_seconds"] / progress["epochs_completed"],
        "machine": test.get("machine", "not recorded"),
    }


def as_grid(results, key):
    """``(r1 values, r2 values, array [r1, r2])`` of one figure of the results."""
    primaries = sorted({r["primary_iterations"] for r in results})
    secondaries = sorted({r["secondary_iterations"] for r in results})
    grid = np.full((len(primaries), len(secondaries)), np.nan)
    for r in results:
        grid[primaries.index(r["primary_iterations"]), secondaries.index(r["secondary_iterations"])] = r[key]
    return primaries, secondaries, grid


def heat_map(results, key, path=None, title=None, percent=False):
    """A heat map of ``key`` over (r1 rows, r2 columns), each cell labelled;
    saved to ``path`` (returned), or the figure without one."""
    import matplotlib

    if path is not None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from caps_zoo.plots import finish_figure

    primaries, secondaries, grid = as_grid(results, key)
    shown = grid * 100 if percent else grid
    figure, axis = plt.subplots(figsize=(1.0 + 0.9 * len(secondaries), 0.8 + 0.8 * len(primaries)))
    image = axis.imshow(shown, cmap="viridis")
    for i in range(len(primaries)):
        for j in range(len(secondaries)):
            if np.isfinite(shown[i, j]):
                axis.text(j, i, f"{shown[i, j]:.2f}" if percent else f"{shown[i, j]:.0f}",
                          ha="center", va="center", fontsize=8, color="white")
    axis.set_xticks(range(len(secondaries)), secondaries)
    axis.set_yticks(range(len(primaries)), primaries)
    axis.set_xlabel("secondary route r2")
    axis.set_ylabel("primary route r1")
    figure.colorbar(image, ax=axis, shrink=0.8)
    return finish_figure(figure, title or key, path)


def markdown_table(results):
    """The README's table: one row per cell, then the machines the cells
    trained on (seconds per epoch compare only within one machine)."""
    machines = list(dict.fromkeys(r.get("machine", "not recorded") for r in results))
    lines = ["| r1 | r2 | validation accuracy | test accuracy | seconds per epoch | epoch chosen | machine |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        lines.append(f"| {r['primary_iterations']} | {r['secondary_iterations']} | "
                     f"{r['validation_accuracy']:.2%} | {r['test_accuracy']:.2%} | "
                     f"{r['seconds_per_epoch']:.0f} | {r['selected_epoch']} of {r['epochs_completed']} | "
                     f"{machines.index(r.get('machine', 'not recorded')) + 1} |")
    lines.append("")
    lines.extend(f"Machine {number}: {machine}." for number, machine in enumerate(machines, 1))
    if len(machines) > 1:
        lines.append("The cells trained on different machines: their seconds per epoch are not comparable "
                     "across machines.")
    return "\n".join(lines)
