"""Shipping a run's weights as pretrained: evaluate them, write saved_models/ (``recipes/ship_weights.py``).

    python recipes/ship_weights.py --run-dir ~/runs/deep_capsnet \
        --command "python recipes/train_capsnet.py --model deep_capsnet ..." \
        [--wall-hours 5.2]

Which epoch ships was fixed when the run was trained, never here:

- a run trained with ``--validation`` (and a selection metric) ships
  ``best.weights.npz``, the epoch chosen on the validation split (the last
  5,000 training images); the test split, untouched by its training, is
  evaluated once, on those weights as shipped. Without ``best.weights.npz``
  / ``best.json`` it refuses to ship;
- any other run ships its last epoch: ``final.weights.npz`` if the run
  finished, else its latest ``snapshot.weights.npz``. Without a validation
  split its training logged the test split, and the metadata says so.

The metadata says which: ``selected_on``, ``selected_epoch`` and, for a
validation run, the selection metric and every validation metric of that
epoch. ``--select`` can only state that rule (``validation`` or ``last``); a request
for another one, above all ``--select test``, is refused with nothing
written. The run's ``log.csv`` is copied beside the weights. Stores
float16, then measures every metric of ``model.evaluate`` with the float16
weights as they will be loaded: on the full test split and, for MNIST, on the
shipped 1,000-image sample (``tests/test_pretrained.py`` checks the latter).
Runs of the Bernoulli VAEs (DRAW, DCRW) are measured on the fixed
binarization. Generators (models with ``sample``: GRAN, DRAW, DCRW) also get
the Frechet distance of 10,000 samples (``--frechet-samples``) to the test split on the features of
the zoo's classifier for that dataset (``caps_zoo.metrics``), a grid of
samples (``<tag>.samples.png``), the canvas after every step of 8
(``<tag>.drawing.png``) and each of 8 samples beside its 3 nearest
training images (``<tag>.nearest_neighbours.png``). The CV-VAE family's
models with codes sample from a prior fitted after training: shipping
fits it first (``--prior-epochs``, on the images the run trained on) and
ships it inside the weights; the metadata's ``prior`` records its epochs
and its per-epoch NLL on both splits. Measuring a shipped run again
(``--replace --keep-prior``, e.g. after a fix of an evaluation) keeps the
shipped prior instead of refitting it: half an hour saved per model, and
the prior's samples stay the ones the table reports.

A run that started from another run's weights with a schedule of its own
(``--init-weights`` at epoch 0: a second phase, say a learning-rate
annealing) ships with ``--continued-from <earlier run folder>``: the folder
whose weights it started from (a run directory or a committed
``training_snapshots/`` folder, with its ``config.json``, ``log.csv`` and
``progress.json``). Epochs and wall time then count both phases, the shipped
``log.csv`` holds both (``phase`` column, epochs numbered on), and
``phases`` in the metadata says what each phase ran. Without it, such a run
would ship as if its first epoch were the model's first.
"""

import csv
import dataclasses
import datetime
import io
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import caps_zoo
from caps_zoo.files import sha256_of, sha256_of_bytes
from caps_zoo import code_map_figures, data, metrics, plots, pretrained_files, registry
from caps_zoo import weights as weights_io
from caps_zoo.models import CapsuleNetwork
from caps_zoo.models.capsule_vector_vae import AdversarialAutoencoder, BottleneckAutoencoder
from caps_zoo.reconstruction_quality import reconstruction_quality
from caps_zoo.models.base import GenerativeModel
from caps_zoo.hardware import machine_description
from caps_zoo.training import BEST_RECORD, BEST_WEIGHTS, DATASET_IMAGE_SHAPES, METRICS, run_lock

STAGING_PREFIX = ".staging-"


class ShippingRefused(ValueError):
    """What was asked cannot ship as stated (another selection rule than the
    run's, a run that chose no epoch, weights already shipped under the tag
    without ``replace``, ...); raised before anything is written."""


SELECTION_RULES = ("validation", "last")
# How long to wait for a running run to finish writing an epoch's files.
READ_TIMEOUT_SECONDS = 120


def describe_samples(model, dataset, folder, tag, frechet_samples, train_images):
    """Frechet distance of the model's samples, and its sample and neighbour
    figures (neighbours among ``train_images``, the images it trained on)."""
    frechet = metrics.sample_frechet_report(model, dataset, frechet_samples)
    samples = metrics.draw_samples(model, 100, seed=1)
    plots.image_grid(samples, folder / f"{tag}.samples.png", title=f"{model.name}: samples")
    drawn = model.sample(8, seed=2)
    if "canvases" in drawn:  # the recurrent generators draw in steps; a PixelCNN prior does not
        plots.drawing_strip(drawn, folder / f"{tag}.drawing.png")
    if "write_boxes" in drawn:  # the writers (DRAW, DCRW, RCN): the drawing animated, write window in red
        plots.drawing_gif(drawn, folder / f"{tag}.drawing.gif")
    indices, distances = metrics.nearest_neighbours(samples[:8], train_images, k=3)
    plots.nearest_neighbour_grid(samples[:8], train_images, indices, distances,
                                 folder / f"{tag}.nearest_neighbours.png")
    return frechet


def describe_reconstructions(model, dataset, folder, tag, batch_size=250):
    """The CV-VAE family's pixel figures on the whole test split (MSE, PSNR,
    SSIM: ``reconstruction_quality``), the Frechet distance of the
    reconstructions to the test images (where a classifier for the dataset
    ships), and two figures: inputs beside reconstructions, and the code
    maps drawn over the inputs (models with codes)."""
    images = data.load_images(dataset, "test")
    reconstructions = np.concatenate([model.reconstruct(images[start:start + batch_size])
                                      for start in range(0, len(images), batch_size)])
    result = reconstruction_quality(images, reconstructions)
    try:
        result["frechet"] = metrics.frechet_classifier_distance(images, reconstructions, weights=dataset)
    except ValueError as error:  # the registry: no classifier pretrained on this dataset
        result["frechet"] = {"frechet_distance": None, "skipped": str(error)}
    code_map_figures.reconstruction_pairs(images[:32], reconstructions[:32], folder / f"{tag}.reconstructions.png",
                                          title=f"{model.name}: test inputs (grey) beside reconstructions")
    if model.num_codes is not None:  # the models with a code per position
        codes = model.encode_codes(images[:32])["codes"]
        code_map_figures.code_map_overlay(images[:32], codes, model.num_codes, path=folder / f"{tag}.codes.png",
                                          title=f"{model.name}: code per position ({model.num_codes} codes)")
    return result


# MultiMNIST: the reported figure is over K = 10 fixed partners per test image
# (100,000 pairs, Sabour et al.). The sample figure, which a loaded model must
# reproduce (tests/test_pretrained.py), is over the fixed pairs of
# data.load("multi_mnist", "test", limit=500): one per image of the first 500
# test images, partners among them too, so a draw of its own (not a subset of
# the 100,000), built from the package's mnist_sample without a download.
PAIR_TEST_PARTNERS = 10
PAIR_SAMPLE_IMAGES = 500
# Other datasets than MNIST ship no sample inside the package: the first
# test images of the dataset are the check that loading reproduces the metrics.
SAMPLE_IMAGES = 1000


def describe_pairs(model, config, folder, tag, scanned_images=2000):
    """The separation figure of 8 fixed test pairs and a gallery of up to 8
    failures, both among the fixed pairs of
    ``data.load("multi_mnist", "test", limit=scanned_images)`` (one per
    image, partners among the same images: a draw of its own):
    ``<tag>.separation.png``, ``<tag>.failures.png``."""
    from caps_zoo import overlapping_digits

    pairs = data.load("multi_mnist", "test", batch_size=250, limit=scanned_images,
                      max_shift=config.get("max_shift"))
    shown, failures = None, []
    for merged, targets in pairs:
        outputs = model(merged, training=False)
        predicted = overlapping_digits.predicted_digits(outputs["scores"], 2).numpy()
        correct, _ = overlapping_digits.digit_matches(outputs["scores"], targets["label_ids"])
        batch = (merged.numpy(), targets["digits"].numpy(), targets["label_ids"].numpy(),
                 outputs["reconstruction"].numpy(), predicted)
        if shown is None:
            shown = [part[:8] for part in batch]
        wrong = np.flatnonzero(correct.numpy() == 0)
        failures.extend(tuple(part[i] for part in batch) for i in wrong[: 8 - len(failures)])
        if len(failures) >= 8:
            break
    overlapping_digits.separation_figure(*shown, path=folder / f"{tag}.separation.png",
                                         title=f"{config['model']}: 8 fixed MultiMNIST test pairs")
    if failures:
        overlapping_digits.separation_figure(
            *(np.stack(part) for part in zip(*failures)), path=folder / f"{tag}.failures.png",
            title=f"{config['model']}: the first {len(failures)} failures among the pairs of the "
                  f"first {scanned_images:,} test images")


def fit_prior_stage(model, config, epochs):
    """The sampling stage of the models whose prior is fitted after training
    (``GenerativeModel.fits_prior``: the CV-VAE family's PixelCNN over codes),
    on the shipped autoencoder: fitted on the images the run trained on for
    ``epochs``, each epoch's NLL logged on the validation split when the run
    held one out. Returns its metadata."""
    validation = bool(config.get("validation"))
    validation_size = config.get("validation_size", data.VALIDATION_SIZE)
    train_images = data.load_images(config["dataset"], "train", holdout_validation=validation,
                                    validation_size=validation_size)
    validation_images = (data.load_images(config["dataset"], "validation", validation_size=validation_size)
                         if validation else None)
    keras.utils.set_random_seed(config.get("seed", 0))
    started = time.time()
    history = model.fit_prior(train_images, epochs=epochs, validation_images=validation_images,
                              verbose=2).history
    record = {"epochs": epochs, "train_images": len(train_images), "seconds": round(time.time() - started, 1),
              "code_nll_per_epoch": [round(value, 4) for value in history["code_nll"]],
              "fitted_by": "recipes/ship_weights.py (BottleneckAutoencoder.fit_prior, Adam 1e-3, batch 64)"}
    if validation:
        record["validation_code_nll_per_epoch"] = [round(value, 4) for value in history["val_code_nll"]]
    return record


def kept_prior_stage(model, shipped_weights_path, shipped_metadata_path, overrides):
    """``--keep-prior``: instead of a new fit, the prior of the weights
    already shipped under the tag, for a re-measurement of the same run
    (e.g. after a fix of how a model evaluates). The shipped file must hold
    this run's network, float16-rounded as shipping stores it, so that the
    prior fits the codes it was fitted on; the prior's variables are copied
    into ``model``. Returns its metadata: the earlier shipping's record."""
    metadata = json.loads(shipped_metadata_path.read_text())
    if "prior" not in metadata:
        raise ShippingRefused(f"--keep-prior: {shipped_metadata_path} records no fitted prior.")
    shipped = caps_zoo.load(metadata["model"], weights=str(shipped_weights_path), **overrides)
    prior_ids = {id(variable) for variable in shipped.prior_variables()}
    for mine, theirs in zip(model.weights, shipped.weights):
        if id(theirs) in prior_ids:
            continue
        rounded = np.asarray(mine.numpy())
        if np.issubdtype(rounded.dtype, np.floating):  # as save_weights stores it
            rounded = rounded.astype("float16").astype(rounded.dtype)
        if not np.array_equal(rounded, theirs.numpy()):
            raise ShippingRefused(
                f"--keep-prior: {shipped_weights_path} was not shipped from this run ({theirs.path} "
                "differs): its prior was fitted on another network's codes. Ship without "
                "--keep-prior to fit a prior for this one."
            )
    for mine, theirs in zip(model.prior_variables(), shipped.prior_variables()):
        mine.assign(theirs)
    return {**metadata["prior"], "kept": "by --keep-prior from the shipping measured on "
                                         f"{metadata.get('measured_on')}: not refitted"}


def selection_rule(config):
    """``"validation"`` if the run chose its epoch on a validation split while
    it trained, else ``"last"``: the rule is the run's, not the shipper's."""
    return "validation" if config.get("validation") and config.get("selection_metric") else "last"


def check_select(requested, rule, config):
    """Refuse any ``--select`` but the run's own rule (see the module's docstring)."""
    if requested is None or requested == rule:
        return
    if requested == "test":
        raise ShippingRefused(
            "refusing --select test: the shipped epoch is never chosen on the test split, which "
            "this recipe evaluates once, on the weights it ships. Train with --validation to "
            "choose an epoch on held-out training images."
        )
    if requested not in SELECTION_RULES:
        raise ShippingRefused(f"--select must be one of {SELECTION_RULES} (the run's own rule), got '{requested}'.")
    if rule == "validation":
        raise ShippingRefused(
            f"refusing --select {requested}: this run chose its epoch on the validation split "
            f"({config['selection_metric']}, {config['selection_mode']}) while it trained; it "
            f"ships that epoch ({BEST_WEIGHTS}), a rule fixed before the test split is seen."
        )
    reason = ("it was trained without --validation (its val_* columns are the test split)"
              if not config.get("validation") else "it selects on no metric")
    raise ShippingRefused(f"refusing --select {requested}: {reason}; it ships its last epoch (--select last).")


PHASE_SETTINGS = ("epochs", "learning_rate", "learning_rate_schedule", "learning_rate_decay",
                  "warmup_epochs", "init_weights", "initial_epoch", "precision", "batch_size")


def phase_record(folder, config, epochs, wall_hours):
    """What one training phase ran: its settings, epochs done and wall time."""
    return {"run": str(folder), "epochs_completed": epochs, "wall_hours": wall_hours,
            **{name: config.get(name) for name in PHASE_SETTINGS}}


def read_earlier_phase(folder, run_dir, config):
    """The run this one continued (``--continued-from``): its log rows, its
    epoch count and its phase record. Refuses a folder that is not the one
    whose weights this run started from."""
    missing = [name for name in ("config.json", "log.csv", "progress.json") if not (folder / name).is_file()]
    if missing:
        raise ShippingRefused(f"--continued-from {folder}: no {', '.join(missing)} there (the earlier run's "
                              "own files are needed to count its epochs and time).")
    earlier = json.loads((folder / "config.json").read_text())
    if earlier["model"] != config["model"]:
        raise ShippingRefused(f"--continued-from {folder} trained '{earlier['model']}', this run '{config['model']}'.")
    started_from = config.get("init_weights")
    if not started_from or Path(started_from).resolve().parent != folder.resolve():
        raise ShippingRefused(f"--continued-from {folder}: this run did not start from weights in that folder "
                              f"(its init_weights: {started_from!r}).")
    if config.get("initial_epoch"):
        raise ShippingRefused(f"--continued-from: this run resumed at epoch {config['initial_epoch']} of the same "
                              "schedule, so its log already counts the earlier epochs; ship it without the option.")
    progress = json.loads((folder / "progress.json").read_text())
    rows = list(csv.DictReader(io.StringIO((folder / "log.csv").read_text())))
    epochs = int(progress["epochs_completed"])
    if rows and int(rows[-1]["epoch"]) + 1 != epochs:
        raise ShippingRefused(f"--continued-from {folder}: its log ends at epoch {int(rows[-1]['epoch']) + 1}, its "
                              f"progress.json says {epochs} epochs: which one did this run start from?")
    wall_hours = round(progress["train_seconds"] / 3600, 2)
    return {"log": rows, "epochs": epochs, "phase": phase_record(folder, earlier, epochs, wall_hours)}


def joined_log(earlier_rows, rows, offset):
    """Both phases' log rows, epochs numbered on, with a ``phase`` column
    (1, 2); a column only one phase logged is left empty in the other."""
    columns = ["phase"] + list(dict.fromkeys([*(earlier_rows[0] if earlier_rows else {}), *rows[0]]))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    for row in earlier_rows:
        writer.writerow({**row, "phase": 1})
    for row in rows:
        writer.writerow({**row, "phase": 2, "epoch": int(row["epoch"]) + offset})
    return out.getvalue()


def _wait(started, what):
    if time.time() - started > READ_TIMEOUT_SECONDS:
        raise RuntimeError(f"{what} after {READ_TIMEOUT_SECONDS} s: is the run directory complete?")
    time.sleep(1)


def read_last_epoch(run_dir, finished):
    """``(weights bytes, log text)`` of the run's last epoch: final or snapshot.

    A running run appends to the log, then rewrites the snapshot, at every
    epoch's end: read both until they describe the same epoch.
    """
    weights = run_dir / ("final.weights.npz" if finished else "snapshot.weights.npz")
    log_path = run_dir / "log.csv"
    while True:
        log_text, log_mtime = log_path.read_text(), log_path.stat().st_mtime
        weights_mtime = weights.stat().st_mtime
        model_weights = weights.read_bytes()
        unchanged = log_path.read_text() == log_text and weights.stat().st_mtime == weights_mtime
        if unchanged and weights_mtime >= log_mtime:
            return model_weights, log_text
        time.sleep(1)


def read_selected_epoch(run_dir):
    """``(weights bytes, best.json record, log text)`` of the epoch the run
    chose on validation; refuses a run that chose none.

    The run writes best.weights.npz, then best.json with the weights' SHA-256,
    then the epoch's log row: read until the three agree.
    """
    missing = [name for name in (BEST_WEIGHTS, BEST_RECORD) if not (run_dir / name).is_file()]
    if missing:
        raise ShippingRefused(
            f"refusing to ship '{run_dir}': it was trained with --validation, but has no "
            f"{' or '.join(missing)}, so no epoch was chosen on its validation split (they are "
            "written after its first epoch). No other epoch ships from a validation run."
        )
    started = time.time()
    while True:
        best = json.loads((run_dir / BEST_RECORD).read_text())
        model_weights = (run_dir / BEST_WEIGHTS).read_bytes()
        if sha256_of_bytes(model_weights) != best["weights_sha256"]:
            _wait(started, f"{BEST_WEIGHTS} does not match {BEST_RECORD}")
            continue
        log_text = (run_dir / "log.csv").read_text()
        epochs = [int(row["epoch"]) + 1 for row in csv.DictReader(io.StringIO(log_text))]
        if best["epoch"] in epochs:
            return model_weights, best, log_text
        _wait(started, f"log.csv has no row for epoch {best['epoch']}, which {BEST_RECORD} selects")


def ship(args):
    """Ship the run ``args.run_dir`` as ``saved_models/<model>/<args.tag>.*``:
    what ``recipes/ship_weights.py`` parsed (its options are ``args``' names).
    A refusal raises ``ShippingRefused`` before anything is written (the
    recipe reports it as a usage error).
    """

    run_dir = Path(args.run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    weights_path, metadata_path = registry.pretrained_paths(config["model"], args.tag)

    def refuse_to_replace():
        existing = [path for path in (weights_path, metadata_path) if path.exists()]
        if existing and not args.replace:
            raise ShippingRefused(
                f"refusing to replace {', '.join(map(str, existing))}: '{config['model']}' already ships "
                f"weights tagged '{args.tag}'. Pass --replace to replace them (after this run's "
                "weights are measured, all files at once), or choose another --tag."
            )

    refuse_to_replace()  # early, before minutes of measuring; again under the lock
    if args.keep_prior and not (args.replace and weights_path.is_file() and metadata_path.is_file()):
        raise ShippingRefused(
            f"--keep-prior keeps the prior of the weights shipped under '{args.tag}': it needs them "
            f"({weights_path} and its metadata) and --replace."
        )
    rule = selection_rule(config)
    check_select(args.select, rule, config)
    # metrics.json is written last by a finished run (caps_zoo.training). A
    # validation run ships best.weights.npz, so its final weights need not be
    # there (a finished run's committed snapshot carries the selected epoch only).
    finished = (run_dir / METRICS).is_file() and (
        rule == "validation" or (run_dir / "final.weights.npz").is_file())
    best = None
    if rule == "validation":
        model_weights, best, log_text = read_selected_epoch(run_dir)
        weights_name = BEST_WEIGHTS
    else:
        model_weights, log_text = read_last_epoch(run_dir, finished)
        weights_name = "final.weights.npz" if finished else "snapshot.weights.npz"
    log = list(csv.DictReader(io.StringIO(log_text)))
    epochs_completed = int(log[-1]["epoch"]) + 1

    wall_hours = args.wall_hours
    if wall_hours is None:
        progress_path = run_dir / "progress.json"
        if not progress_path.is_file():
            raise ShippingRefused(f"{progress_path} does not exist: pass --wall-hours")
        wall_hours = round(json.loads(progress_path.read_text())["train_seconds"] / 3600, 2)
    phases = []
    if args.continued_from:
        earlier = read_earlier_phase(Path(args.continued_from), run_dir, config)
        phases = [earlier["phase"], phase_record(run_dir, config, epochs_completed, wall_hours)]
        log_text = joined_log(earlier["log"], log, earlier["epochs"])
        log = list(csv.DictReader(io.StringIO(log_text)))
        epochs_completed += earlier["epochs"]
        wall_hours = round(wall_hours + earlier["phase"]["wall_hours"], 2)
        if best:
            best = {**best, "epoch": best["epoch"] + earlier["epochs"]}

    # The run's architecture overrides travel in the metadata; load() applies them.
    overrides = dict(config.get("model_overrides") or {})
    if config["dataset"] in DATASET_IMAGE_SHAPES:  # as training.build_model built it
        overrides.setdefault("image_shape", list(DATASET_IMAGE_SHAPES[config["dataset"]]))
    if config.get("routing_iterations"):
        overrides["routing_iterations"] = list(config["routing_iterations"])
    # Everything is written to a staging folder beside the shipped files and
    # moved into place only once it is all measured: a failure (or a kill)
    # before that leaves the shipped weights and metadata as they were.
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    # One shipping per model folder at a time; under the lock, a staging
    # folder left behind is a killed shipping's, and goes.
    with run_lock(weights_path.parent, user="shipping", advice="then ship again"):
        refuse_to_replace()  # another shipping may have finished meanwhile
        for stale in weights_path.parent.glob(STAGING_PREFIX + "*"):
            shutil.rmtree(stale, ignore_errors=True)
        with tempfile.TemporaryDirectory(dir=weights_path.parent, prefix=STAGING_PREFIX) as staging:
            staging = Path(staging)
            run = RunToShip(run_dir, config, overrides, rule, best, finished, log, log_text,
                            model_weights, weights_name, epochs_completed, wall_hours, phases)
            shipped = stage_and_measure(args, run, staging, weights_path.name)
            metadata = json.loads((staging / metadata_path.name).read_text())
            # Weights first, metadata last: the metadata names the weights'
            # SHA-256, so a kill between the moves is detected on load (and
            # the same shipping, run again with --replace, completes it).
            order = {weights_path.name: 0, metadata_path.name: 2}  # the rest (log, figures): 1
            for name in sorted(shipped, key=lambda n: (order.get(n, 1), n)):
                os.replace(staging / name, weights_path.parent / name)
        # The packaged manifest (hashes for downloads, caps_zoo.pretrained_files)
        # describes the checkout's saved_models/; a folder named by
        # CAPS_ZOO_SAVED_MODELS (a test's scratch folder) is not what the package ships.
        if pretrained_files.SAVED_MODELS_ENV not in os.environ:
            print(f"rewrote {pretrained_files.write_manifest()}")
    print(json.dumps(metadata, indent=2))
    print(f"wrote {weights_path} ({weights_path.stat().st_size / 2**20:.1f} MiB)")


@dataclasses.dataclass(frozen=True)
class RunToShip:
    """What ship() read from the run directory."""

    run_dir: Path
    config: dict
    overrides: dict
    rule: str
    best: dict
    finished: bool
    log: list
    log_text: str
    model_weights: bytes
    weights_name: str
    epochs_completed: int
    wall_hours: float
    phases: list  # with --continued-from: what each phase ran (else empty)


def stage_and_measure(args, run, staging, shipped_weights_name):
    """Write the float16 weights, their measurements, figures and log into
    ``staging``; returns the file names to move into saved_models/<model>/."""
    (run_dir, config, overrides, rule, best, finished, log, log_text, model_weights, weights_name,
     epochs_completed, wall_hours, phases) = dataclasses.astuple(run)
    # Epochs before this run's first (--continued-from), counted in its plan.
    # (the earlier phase's epochs done, not its plan: a phase that was cut
    # short plans no more epochs)
    epochs_planned = config["epochs"] + (phases[0]["epochs_completed"] if phases else 0)
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / weights_name
        copy.write_bytes(model_weights)
        model = caps_zoo.load(config["model"], weights=str(copy), **overrides)
    prior = {}
    if isinstance(model, GenerativeModel) and model.fits_prior:
        if args.keep_prior:
            shipped_weights, shipped_metadata = registry.pretrained_paths(config["model"], args.tag)
            prior = {"prior": kept_prior_stage(model, shipped_weights, shipped_metadata, overrides)}
        else:
            prior = {"prior": fit_prior_stage(model, config, args.prior_epochs)}
    # Store float16 first, then measure what users will actually load.
    weights_path = staging / shipped_weights_name
    weights_io.save_weights(model, weights_path, dtype="float16")
    model = caps_zoo.load(config["model"], weights=str(weights_path), **overrides)
    # The Bernoulli VAEs are measured on the fixed binarization (see caps_zoo.data).
    binarize = "fixed" if config.get("binarize") else None
    # The one look at the test split for a validation run (the 1,000-image
    # sample below is part of it, and checks that loading reproduces it).
    pairs = config["dataset"] in data.GENERATED_DATASETS
    pair_options = {"max_shift": config.get("max_shift")} if pairs else {}
    test_partners = {"partners": PAIR_TEST_PARTNERS} if pairs else {}
    test = model.evaluate(data.load(config["dataset"], "test", batch_size=250, binarize=binarize,
                                    limit=args.test_limit, **pair_options, **test_partners),
                          return_dict=True, verbose=1)
    reconstruction = {}
    if isinstance(model, (BottleneckAutoencoder, AdversarialAutoencoder)):
        reconstruction = {"test_reconstruction": describe_reconstructions(model, config["dataset"], staging,
                                                                          args.tag)}
    sample = {}
    if config["dataset"] == "mnist":
        sample = model.evaluate(data.load("mnist_sample", "test", batch_size=250, binarize=binarize),
                                return_dict=True, verbose=0)
    elif pairs:
        sample = model.evaluate(data.load(config["dataset"], "test", batch_size=250,
                                          limit=PAIR_SAMPLE_IMAGES, **pair_options),
                                return_dict=True, verbose=0)
        describe_pairs(model, config, staging, args.tag)
    else:  # a dataset that ships no sample: its first test images, read where the data lives
        sample = model.evaluate(data.load(config["dataset"], "test", batch_size=250, binarize=binarize,
                                          limit=SAMPLE_IMAGES),
                                return_dict=True, verbose=0)
    # The images the run trained on: without the validation split if it held one out.
    validation = bool(config.get("validation"))
    validation_size = config.get("validation_size", data.VALIDATION_SIZE)
    training_split = {"holdout_validation": validation, "validation_size": validation_size}
    frechet = {}
    if isinstance(model, GenerativeModel) and model.can_sample and args.frechet_samples > 0:
        frechet = {"frechet": describe_samples(
            model, config["dataset"], staging, args.tag, args.frechet_samples,
            data.load_images(config["dataset"], "train", **training_split))}
    train_count = data.num_examples(config["dataset"], "train", config.get("train_limit"),
                                    **training_split)
    test_count = data.num_examples(config["dataset"], "test", args.test_limit, **test_partners)
    steps = config.get("steps_per_epoch")
    augmentation = []
    if config.get("shift_pixels"):
        augmentation.append(f"random shifts of up to {config['shift_pixels']} px")
    if config.get("binarize"):
        augmentation.append(f"binarized '{config['binarize']}' (new Bernoulli draws every epoch)"
                            if config["binarize"] == "stochastic" else f"binarized '{config['binarize']}'")
    if steps:
        augmentation.append(f"{steps} steps of {config['batch_size']} per epoch")
    binarized = (f" binarized '{binarize}' (caps_zoo.data, seed {data.FIXED_BINARIZATION_SEED})"
                 if binarize else "")
    test_split = f"{test_count:,} test images" + binarized
    if pairs:
        from caps_zoo.data import multi_mnist

        shift = multi_mnist.DEFAULT_MAX_SHIFT if config.get("max_shift") is None else config["max_shift"]
        test_split = (f"{test_count:,} fixed test pairs ({PAIR_TEST_PARTNERS} partners per MNIST test "
                      f"image, shifts up to {shift} px)")
        augmentation.append(f"fresh pairs every epoch, shifts up to {shift} px per digit")
    validation_split = (f", epoch chosen on {validation_size:,} validation images (the last "
                        f"{validation_size:,} training images{binarized})" if best else "")
    best_in_log = {}
    if not validation:
        # Without a validation split the log's val_* are the test split: the
        # best of them is a figure selected on the test set, labelled as such.
        val_columns = [c for c in ("val_accuracy", "val_pair_accuracy", "val_loss") if c in log[0]]
        accuracy = next((c for c in ("val_accuracy", "val_pair_accuracy") if c in val_columns), None)
        if accuracy is not None:
            best_in_log[f"best_{accuracy}_in_log"] = max(float(row[accuracy]) for row in log)
        elif "val_loss" in val_columns:
            best_in_log["best_val_loss_in_log"] = min(float(row["val_loss"]) for row in log)
    if best:
        selection = {
            "selected_on": f"validation (last {validation_size:,} training images)",
            "selected_epoch": best["epoch"],
            "selection_metric": best["metric"],
            "selection_mode": best["mode"],
            # Every metric of the validation split at that epoch (the training log's val_*).
            **{f"validation_{name}": value for name, value in best["validation"].items()},
        }
    elif validation:
        selection = {
            "selected_on": f"last epoch (no selection metric; the last {validation_size:,} training "
                           "images were held out, the test split not seen during training)",
            "selected_epoch": epochs_completed,
        }
    else:
        selection = {
            "selected_on": "last epoch (no validation split; test split seen during training)",
            "selected_epoch": epochs_completed,
        }
    # A finished run's own record: how it ended and where it trained.
    run_record = json.loads((run_dir / METRICS).read_text()) if finished else {}
    stopped_early = run_record.get("stopped_early")
    if finished:
        status = f"finished ({stopped_early})" if stopped_early else "finished"
    elif best:
        status = (f"in training: after epoch {epochs_completed} of {epochs_planned}; "
                  f"ships epoch {best['epoch']}, the best on validation so far")
    else:
        status = f"in training: snapshot after epoch {epochs_completed} of {epochs_planned}"
    metadata = {
        "status": args.status or status,
        "recipe_command": args.command,
        "dataset": config["dataset"],
        "data": f"{config['dataset']}: {train_count:,} training images"
                + (f" ({'; '.join(augmentation)})" if augmentation else "")
                + validation_split
                + f", evaluated on {test_split}",
        **selection,
        "training_images": train_count,
        "model_overrides": overrides,
        "epochs_planned": epochs_planned,
        **({"phases": phases} if phases else {}),
        "epochs_completed": epochs_completed,
        "precision": config["precision"],
        "batch_size": config["batch_size"],
        **({"routing_iterations": list(model.routing_iterations)}
           if isinstance(model, CapsuleNetwork) else {}),
        "wall_hours": wall_hours,
        "parameters": model.count_params(),
        "machine": machine_description(),  # where the test figures below were measured
        # where the run trained (a finished run's own record; a run may ship elsewhere)
        **({"trained_on": run_record.get("machine")} if finished else {}),
        # Every metric of model.evaluate: accuracy and losses of the capsule
        # networks; for DRAW/DCRW loss = Lx + Lz, the negative lower bound,
        # reconstruction_nll = Lx, latent_kl = Lz, in nats per image.
        **{f"test_{name}": value for name, value in test.items()},
        **{f"sample_{name}": value for name, value in sample.items()},
        **({"sample": "caps_zoo/data/mnist_test_sample.npz (first 1,000 MNIST test images"
                      + (f", binarized '{binarize}')" if binarize else ")")}
           if sample and not pairs else {}),
        **({"sample": f"the fixed MultiMNIST test pairs of the first {PAIR_SAMPLE_IMAGES} MNIST test "
                      "images (1 partner each)",
            "max_shift": shift,
            "training_pairs_seen": train_count * epochs_completed if not steps
            else steps * config["batch_size"] * epochs_completed,
            "at_least_one_accuracy_note": "at least one of the two labels among the two longest "
                                          "capsules: weaker, not comparable with the papers' figures"}
           if pairs else {}),
        **({"sample": f"the first {SAMPLE_IMAGES:,} {config['dataset']} test images (caps_zoo.data.load"
                      f"(\"{config['dataset']}\", \"test\", limit={SAMPLE_IMAGES}))"}
           if sample and config["dataset"] != "mnist" and not pairs else {}),
        **best_in_log,
        **reconstruction,
        **prior,
        **frechet,
        "measured_by": "recipes/ship_weights.py with the float16 weights as shipped",
        "measured_on": datetime.date.today().isoformat(),
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
        "weights": weights_path.name,
        "weights_sha256": sha256_of(weights_path),
        "storage_dtype": "float16",
        "notes": args.notes,
    }
    (staging / f"{args.tag}.json").write_text(json.dumps({"model": config["model"], **metadata}, indent=2) + "\n")
    # The run's per-epoch log travels with the weights (provenance).
    (staging / f"{args.tag}.log.csv").write_text(log_text)
    return sorted(path.name for path in staging.iterdir())
