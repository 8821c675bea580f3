"""Ship a run's weights as pretrained: evaluate them, write saved_models/.

    python recipes/ship_weights.py --run-dir ~/runs/deep_capsnet \
        --command "python recipes/train_capsnet.py --model deep_capsnet ..." \
        [--wall-hours 5.2]

Takes ``final.weights.npz`` if the run finished, else its latest
``snapshot.weights.npz``, and copies the run's ``log.csv`` beside it. Stores
float16, then measures every metric of ``model.evaluate`` with the float16
weights as they will be loaded: on the full test split and, for MNIST, on the
shipped 1,000-image sample (``tests/test_pretrained.py`` checks the latter).
Runs of the Bernoulli VAEs (DRAW, DCRW) are measured on the fixed
binarization. Generators (models with ``sample``: GRAN, DRAW, DCRW) also get
the Frechet distance of 10,000 samples (``--frechet-samples``) to the test split on the features of
the zoo's classifier for that dataset (``caps_zoo.metrics``), a grid of
samples (``<tag>.samples.png``), the canvas after every step of 8
(``<tag>.drawing.png``) and each of 8 samples beside its 3 nearest
training images (``<tag>.nearest_neighbours.png``).
"""

import argparse
import csv
import datetime
import io
import json
import tempfile
import time
from pathlib import Path

import keras
import tensorflow as tf

import caps_zoo
from caps_zoo import data, metrics, plots, registry
from caps_zoo.training import machine_description

def describe_samples(model, dataset, folder, tag, frechet_samples):
    """Frechet distance of the model's samples, and its sample and neighbour figures."""
    frechet = metrics.sample_frechet_report(model, dataset, frechet_samples)
    samples = metrics.draw_samples(model, 100, seed=1)
    plots.image_grid(samples, folder / f"{tag}.samples.png", title=f"{model.name}: samples")
    plots.drawing_strip(model.sample(8, seed=2), folder / f"{tag}.drawing.png")
    train_images = data.load_images(dataset, "train")
    indices, distances = metrics.nearest_neighbours(samples[:8], train_images, k=3)
    plots.nearest_neighbour_grid(samples[:8], train_images, indices, distances,
                                 folder / f"{tag}.nearest_neighbours.png")
    return frechet


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--command", required=True, help="the training command of the run")
    parser.add_argument("--wall-hours", type=float,
                        help="training wall time so far; default: from the run's progress.json")
    parser.add_argument("--tag", default="mnist")
    parser.add_argument("--frechet-samples", type=int, default=10_000,
                        help="generators: samples for the Frechet distance (0: no Frechet "
                             "distance or figures)")
    parser.add_argument("--notes", default="", help="e.g. how the machine was shared")
    parser.add_argument("--status", help="e.g. why a run was stopped early; default: finished, "
                                         "or in training with the epochs done")
    args = parser.parse_args(argv)

    run_dir = Path(args.run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    finished = (run_dir / "final.weights.npz").is_file()
    weights = run_dir / ("final.weights.npz" if finished else "snapshot.weights.npz")
    # A running run appends to the log, then rewrites the snapshot, at every
    # epoch's end: read both until they describe the same epoch.
    log_path = run_dir / "log.csv"
    while True:
        log_text, log_mtime = log_path.read_text(), log_path.stat().st_mtime
        weights_mtime = weights.stat().st_mtime
        model_weights = weights.read_bytes()
        unchanged = log_path.read_text() == log_text and weights.stat().st_mtime == weights_mtime
        if unchanged and weights_mtime >= log_mtime:
            break
        time.sleep(1)
    log = list(csv.DictReader(io.StringIO(log_text)))
    epochs_completed = int(log[-1]["epoch"]) + 1

    wall_hours = args.wall_hours
    if wall_hours is None:
        progress_path = run_dir / "progress.json"
        if not progress_path.is_file():
            parser.error(f"{progress_path} does not exist: pass --wall-hours")
        wall_hours = round(json.loads(progress_path.read_text())["train_seconds"] / 3600, 2)

    # The run's architecture overrides travel in the metadata; load() applies them.
    overrides = dict(config.get("model_overrides") or {})
    if config.get("routing_iterations"):
        overrides["routing_iterations"] = list(config["routing_iterations"])
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / weights.name
        copy.write_bytes(model_weights)
        model = caps_zoo.load(config["model"], weights=str(copy), **overrides)
    # Store float16 first, then measure what users will actually load.
    weights_path = Path(registry.save_pretrained(model, config["model"], args.tag))
    model = caps_zoo.load(config["model"], weights=args.tag, **overrides)
    # The Bernoulli VAEs are measured on the fixed binarization (see caps_zoo.data).
    binarize = "fixed" if config.get("binarize") else None
    test = model.evaluate(data.load(config["dataset"], "test", batch_size=250, binarize=binarize),
                          return_dict=True, verbose=1)
    sample = {}
    if config["dataset"] == "mnist":
        sample = model.evaluate(data.load("mnist_sample", "test", batch_size=250, binarize=binarize),
                                return_dict=True, verbose=0)
    frechet = {}
    if hasattr(model, "sample") and args.frechet_samples > 0:
        frechet = {"frechet": describe_samples(model, config["dataset"], weights_path.parent, args.tag,
                                               args.frechet_samples)}
    train_count = data.num_examples(config["dataset"], "train", config.get("train_limit"))
    test_count = data.num_examples(config["dataset"], "test")  # all of it, as evaluated above
    steps = config.get("steps_per_epoch")
    augmentation = []
    if config.get("shift_pixels"):
        augmentation.append(f"random shifts of up to {config['shift_pixels']} px")
    if config.get("binarize"):
        augmentation.append(f"binarized '{config['binarize']}' (new Bernoulli draws every epoch)"
                            if config["binarize"] == "stochastic" else f"binarized '{config['binarize']}'")
    if steps:
        augmentation.append(f"{steps} steps of {config['batch_size']} per epoch")
    test_split = f"{test_count:,} test images" + (
        f" binarized '{binarize}' (caps_zoo.data, seed {data.FIXED_BINARIZATION_SEED})" if binarize else "")
    val_columns = [c for c in ("val_accuracy", "val_loss") if c in log[0]]
    best_in_log = {}
    if "val_accuracy" in val_columns:
        best_in_log["best_val_accuracy_in_log"] = max(float(row["val_accuracy"]) for row in log)
    elif "val_loss" in val_columns:
        best_in_log["best_val_loss_in_log"] = min(float(row["val_loss"]) for row in log)
    metadata = {
        "status": args.status or ("finished" if finished else
                                  f"in training: snapshot after epoch {epochs_completed} of {config['epochs']}"),
        "recipe_command": args.command,
        "data": f"{config['dataset']}: {train_count:,} training images"
                + (f" ({'; '.join(augmentation)})" if augmentation else "")
                + f", evaluated on {test_split}",
        "model_overrides": overrides,
        "epochs_planned": config["epochs"],
        "epochs_completed": epochs_completed,
        "precision": config["precision"],
        "batch_size": config["batch_size"],
        **({"routing_iterations": [s.routing_iterations for s in model.routing_stages]}
           if hasattr(model, "routing_stages") else {}),
        "wall_hours": wall_hours,
        "machine": machine_description(),
        # Every metric of model.evaluate: accuracy and losses of the capsule
        # networks; for DRAW/DCRW loss = Lx + Lz, the negative lower bound,
        # reconstruction_loss = Lx, kl_loss = Lz, in nats per image.
        **{f"test_{name}": value for name, value in test.items()},
        **{f"sample_{name}": value for name, value in sample.items()},
        **({"sample": "caps_zoo/data/mnist_test_sample.npz (first 1,000 MNIST test images"
                      + (f", binarized '{binarize}')" if binarize else ")")} if sample else {}),
        **best_in_log,
        **frechet,
        "measured_by": "recipes/ship_weights.py with the float16 weights as shipped",
        "measured_on": datetime.date.today().isoformat(),
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
        "weights": weights_path.name,
        "storage_dtype": "float16",
        "notes": args.notes,
    }
    registry.write_metadata(config["model"], args.tag, metadata)
    # The run's per-epoch log travels with the weights (provenance).
    weights_path.with_name(f"{args.tag}.log.csv").write_text(log_text)
    print(json.dumps(metadata, indent=2))
    print(f"wrote {weights_path} ({weights_path.stat().st_size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
