"""Experiment config and the training loop every recipe calls.

``TrainConfig`` and the recipes' shared options (``recipe_argument_parser``)
are defined in ``caps_zoo_options.training``, which imports no TensorFlow,
and are importable from here as well.

A run directory holds everything a run writes, and is what makes it
resumable: ``backup/`` (``BackupAndRestore``: weights, optimizer, epoch),
``log.csv`` (one row per epoch, appended across restarts),
``config.json`` (the TrainConfig of the latest start),
``snapshot.weights.npz`` (weights only, float16, rewritten every epoch: small
enough to commit, so a run can move machines), ``progress.json`` (epochs
done, training seconds over all restarts) and, once finished,
``final.weights.npz`` and then ``metrics.json``, the mark of a finished run
(``backup/`` is removed only after it). A kill at any point leaves a
directory that the same call resumes or finishes: mid-epoch or during a
backup write it resumes from the last readable backup; after the last epoch
it writes the missing final files without training again.

Model selection. By default (as the shipped runs were trained) the model
trains on every training image and Keras' ``val_*`` columns are the test
split: a figure picked from them was picked on the test set. With
``validation=True`` the run trains on all but the last ``validation_size``
training images, ``val_*`` are that validation split, and the test split is
not touched at all (``ship_weights.py`` evaluates it once, on the weights it
ships). A run with a ``selection_metric`` then also writes, whenever that
metric improves, ``best.weights.npz`` (float16) and ``best.json`` (the
1-based epoch, the metric, its value and mode, every validation metric of
that epoch): the epoch that ships. Early stopping
(``early_stopping_patience``) and ``stop_at`` go by the same metric and
survive restarts (they read ``best.json``).
"""

import contextlib
import csv
import dataclasses
import functools
import io
import json
import math
import os
import platform
import shutil
import time
from pathlib import Path

import keras
import tensorflow as tf

from caps_zoo import data, registry
from caps_zoo.hardware import check_precision, machine_description
from caps_zoo.files import sha256_of, write_json_atomically, write_text_atomically
from caps_zoo import weights as weights_io
from caps_zoo.models.base import AdversarialModel, GenerativeModel
# The config and the recipes' options, defined without TensorFlow (issue 15);
# imported from here too, as before.
from caps_zoo_options.training import (  # noqa: F401
    LEARNING_RATE_SCHEDULES,
    PRECISIONS,
    SELECTION_MODES,
    STRATEGIES,
    TRAINING_DATASETS,
    TrainConfig,
    config_from_args,
    recipe_argument_parser,
    sample_count,
)

BEST_WEIGHTS = "best.weights.npz"
BEST_RECORD = "best.json"
SNAPSHOT_WEIGHTS = "snapshot.weights.npz"
METRICS = "metrics.json"  # written last: the mark of a finished run


@functools.lru_cache(maxsize=None)
def make_strategy(name):
    """The named strategy, one instance per process.

    Reused rather than rebuilt: two MirroredStrategy objects in one process
    issue clashing collective-op keys (TF fails with a shape mismatch).
    ``"multi_worker"``: MultiWorkerMirroredStrategy over the cluster of
    ``TF_CONFIG`` (``caps_zoo.multi_worker``).
    """
    if name == "multi_worker":
        from caps_zoo import multi_worker

        return multi_worker.make_strategy()
    if name == "mirrored":
        # All logical devices of the machine: GPUs, or CPUs split with
        # tf.config.set_logical_device_configuration.
        gpus = tf.config.list_logical_devices("GPU")
        devices = gpus or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    return tf.distribute.get_strategy()


# The image shape a dataset's images have where it is not the models'
# default (28, 28, 1): a recipe run on it builds its model at that shape.
DATASET_IMAGE_SHAPES = {"cifar10": (32, 32, 3)}


def build_model(config):
    overrides = dict(config.model_overrides)
    if config.dataset in DATASET_IMAGE_SHAPES:
        overrides.setdefault("image_shape", DATASET_IMAGE_SHAPES[config.dataset])
    if config.routing_iterations is not None:
        overrides["routing_iterations"] = tuple(config.routing_iterations)
    model = registry.create_model(config.model, **overrides)
    if config.init_weights:
        weights_io.load_weights(model, config.init_weights)
    def adam(learning_rate):
        return keras.optimizers.Adam(
            learning_rate, beta_1=config.adam_beta_1, beta_2=config.adam_beta_2,
            global_clipnorm=config.clip_norm,
        )

    adversarial = isinstance(model, AdversarialModel)
    if config.discriminator_learning_rate is not None and not adversarial:
        raise ValueError(
            f"discriminator_learning_rate is for adversarial models (GRAN); {config.model} has no "
            "discriminator."
        )
    if config.sample_grids and not isinstance(model, GenerativeModel):
        raise ValueError(f"sample_grids needs a generator (a model with sample()); {config.model} is not one.")
    optimizers = {"optimizer": adam(config.learning_rate)}
    if adversarial:
        optimizers["discriminator_optimizer"] = adam(learning_rates(config)[1])
    model.compile(**optimizers)
    # Create the optimizer's slots now, inside the strategy's scope: a
    # custom train_step would otherwise create them in a replica context.
    # (Models with two optimizers build each for its own variables in compile.)
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    return model


def learning_rates(config):
    """Initial learning rates of the model's optimizers: the generator's (or
    only) one, and the discriminator's (default: the same)."""
    discriminator = config.discriminator_learning_rate
    return [config.learning_rate, config.learning_rate if discriminator is None else discriminator]


def model_optimizers(model):
    """The model's optimizers: ``optimizer``, and a GAN's ``discriminator_optimizer``."""
    return list(model.named_optimizers().values())


class LearningRateDecay(keras.callbacks.Callback):
    """The learning rate of every optimizer of the model, by schedule.

    - ``"exponential"``: ``lr = initial * decay ** epoch``, set per epoch (the
      reference CapsNet code's schedule, and the default);
    - ``"cosine"``: a linear warm-up from 0 over ``warmup_epochs``, then a
      half cosine down to 0 at the end of ``total_epochs``, set before every
      batch. It anneals within a fixed budget (time to accuracy), where the
      exponential schedule would still sit at 0.66x its start after 4 epochs.

    Both are functions of (epoch, batch) alone, so a run resumed by
    ``BackupAndRestore`` at an epoch boundary continues the same curve.
    Keras' LearningRateScheduler sets ``model.optimizer`` alone; a GAN has a
    second optimizer. Logs ``learning_rate`` (and ``discriminator_learning_rate``),
    the rate of the epoch's last batch.
    """

    def __init__(self, initial_rates, decay, schedule="exponential", warmup_epochs=0.0,
                 total_epochs=None, steps_per_epoch=None):
        super().__init__()
        if schedule not in LEARNING_RATE_SCHEDULES:
            raise ValueError(f"schedule must be one of {LEARNING_RATE_SCHEDULES}, got {schedule!r}.")
        if schedule == "cosine" and not (total_epochs and steps_per_epoch):
            raise ValueError("the cosine schedule needs total_epochs and steps_per_epoch.")
        self.initial_rates = list(initial_rates)
        self.decay = decay
        self.schedule = schedule
        self.warmup_epochs = float(warmup_epochs)
        self.total_epochs = total_epochs
        self.steps_per_epoch = steps_per_epoch
        self.epoch = 0

    def factor(self, epoch, batch=0):
        """The learning rate as a fraction of the initial one."""
        if self.schedule == "exponential":
            return self.decay**epoch
        progress = epoch + batch / self.steps_per_epoch  # in epochs
        if progress < self.warmup_epochs:
            return (progress + 1 / self.steps_per_epoch) / self.warmup_epochs
        span = max(self.total_epochs - self.warmup_epochs, 1e-9)
        done = min((progress - self.warmup_epochs) / span, 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * done))

    def _set(self, factor):
        for optimizer, rate in zip(model_optimizers(self.model), self.initial_rates):
            optimizer.learning_rate = rate * factor

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self._set(self.factor(epoch))

    def on_train_batch_begin(self, batch, logs=None):
        if self.schedule == "cosine":
            self._set(self.factor(self.epoch, batch))

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        names = ("learning_rate", "discriminator_learning_rate")
        for name, optimizer in zip(names, model_optimizers(self.model)):
            logs[name] = float(keras.ops.convert_to_numpy(optimizer.learning_rate))


class SampleGrid(keras.callbacks.Callback):
    """After every epoch: ``samples/epoch_NNN.png``, a grid of ``model.sample``
    drawn from the same prior noise each time (``seed``), so that epochs compare."""

    def __init__(self, run_dir, count=100, seed=1234, tensorboard_dir=None):
        super().__init__()
        self.directory = Path(run_dir) / "samples"
        self.count = count
        self.seed = seed
        # With a TensorBoard log folder: the grid also goes there, as an image
        # summary per epoch (its own writer: Keras' TensorBoard callback keeps
        # its writers to itself).
        self.tensorboard_dir = tensorboard_dir
        self._writer = None

    def on_epoch_end(self, epoch, logs=None):
        from caps_zoo import plots  # matplotlib only where grids are asked for

        self.directory.mkdir(parents=True, exist_ok=True)
        images = self.model.sample(self.count, seed=self.seed)["images"]
        path = self.directory / f"epoch_{epoch + 1:03d}.png"
        try:
            plots.image_grid(images, path, title=f"{self.model.name}, epoch {epoch + 1}")
        except ValueError as error:  # e.g. NaN samples: a figure must not stop the run
            print(f"epoch {epoch + 1}: no sample grid ({error})")
            return
        if self.tensorboard_dir is not None:
            if self._writer is None:
                self._writer = tf.summary.create_file_writer(str(Path(self.tensorboard_dir) / "samples"))
            grid = tf.io.decode_png(tf.io.read_file(str(path)), channels=3)
            with self._writer.as_default():
                tf.summary.image("samples", grid[None], step=epoch + 1)
            self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class LogRollback(keras.callbacks.Callback):
    """Keeps ``log.csv`` and ``progress.json`` at the epoch the restored
    backup holds (``initial_epoch`` without one). An epoch's log row is
    written before its backup (``EpochCommit``), so a kill between the two,
    or a torn latest backup that BackupAndRestore replaced by the one
    before, trains that epoch again: its first row would appear twice. The
    row moves to ``log.retrained.csv`` (kept, not lost), and the run says so.
    A ``best.json`` of such an epoch is kept and marked ``trained_again_from``."""

    def __init__(self, run_dir, initial_epoch=0):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.initial_epoch = initial_epoch

    def on_train_begin(self, logs=None):
        held = backup_epochs(self.run_dir)
        restored = self.initial_epoch if held is None else held
        log_path = self.run_dir / "log.csv"
        rows = []
        if log_path.is_file():
            with open(log_path, newline="") as handle:
                rows = list(csv.reader(handle))
        if len(rows) > 1 and "epoch" in rows[0]:
            column = rows[0].index("epoch")
            kept = [row for row in rows[1:] if int(row[column]) < restored]
            dropped = [row for row in rows[1:] if int(row[column]) >= restored]
            if dropped:
                # Appended first: a kill before the log is rewritten leaves
                # the rows in both files, never in neither.
                retrained = self.run_dir / "log.retrained.csv"
                new_file = not retrained.is_file()
                with open(retrained, "a", newline="") as handle:
                    writer = csv.writer(handle)
                    if new_file:
                        writer.writerow(rows[0])
                    writer.writerows(dropped)
                write_text_atomically(log_path, _csv_text([rows[0], *kept]))
                print(f"{self.run_dir}: the backup holds {restored} epoch(s); epoch(s) "
                      f"{', '.join(str(int(r[column]) + 1) for r in dropped)} train again (their "
                      "first log rows are kept in log.retrained.csv)")
        best = read_best(self.run_dir)
        if best is not None and best["epoch"] > restored and "trained_again_from" not in best:
            # BestWeights writes before the backup, so its epoch can be one that
            # trains again. Its weights and metrics are real (measured on the
            # validation split), and kept; the record says that the run went on
            # from an earlier epoch, so that "epoch N" is not read as this run's.
            best["trained_again_from"] = restored
            write_json_atomically(self.run_dir / BEST_RECORD, best)
            print(f"{self.run_dir}: the best epoch so far ({best['epoch']}) was selected in an attempt "
                  f"that trains again from epoch {restored}; its weights stay in {BEST_WEIGHTS}")
        progress_path = self.run_dir / "progress.json"
        if progress_path.is_file():
            progress = json.loads(progress_path.read_text())
            if progress["epochs_completed"] != restored:
                # Its train_seconds keep the time of any epoch trained again.
                progress["epochs_completed"] = restored
                write_json_atomically(progress_path, progress)


def _csv_text(rows):
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    return buffer.getvalue()


class RunBackup(keras.callbacks.BackupAndRestore):
    """``BackupAndRestore`` (weights, optimizer state, epoch) whose files are
    written atomically, and only when ``EpochCommit`` says so.

    Keras writes ``latest.weights.h5`` and ``training_metadata.json`` in
    place: a kill during the first epoch's write left a torn file and no
    previous one to fall back to (the run could never resume), and a torn
    metadata file raised a JSONDecodeError that Keras does not catch. Here
    each file is written beside its name and renamed over it. Keras saves in
    its own ``on_epoch_end``, before the log row; that is left to
    ``EpochCommit``, the last callback, so the backup is the last thing an
    epoch writes (a kill before it trains the epoch again; ``LogRollback``
    then keeps the log at the backup's epoch).
    """

    def on_epoch_end(self, epoch, logs=None):
        pass  # saved by commit(), called by EpochCommit

    def commit(self, epoch):
        """Back up the state after ``epoch`` (0-based) has ended."""
        self._current_epoch = epoch + 1
        self._last_batch_seen = 0
        self._save_model()

    def _save_model(self):
        os.makedirs(self.backup_dir, exist_ok=True)
        if self.double_checkpoint:
            for path, previous in ((self._weights_path, self._prev_weights_path),
                                   (self._training_metadata_path, self._prev_training_metadata_path)):
                if os.path.exists(path):
                    shutil.copyfile(path, previous + ".tmp")
                    os.replace(previous + ".tmp", previous)
        # Keras wants the .weights.h5 suffix: "partial.weights.h5" is the temporary.
        partial = os.path.join(self.backup_dir, "partial.weights.h5")
        self.model.save_weights(filepath=partial, overwrite=True)
        os.replace(partial, self._weights_path)
        # Weights before metadata: a kill between them trains that epoch once
        # more from its own weights, rather than skipping one.
        write_json_atomically(Path(self._training_metadata_path),
                              {"epoch": self._current_epoch, "batch": self._last_batch_seen})


def backup_epochs(run_dir):
    """The epochs a run's backup holds (the latest readable pair of weights
    and metadata, as BackupAndRestore restores it), or None without one."""
    backup = Path(run_dir) / "backup"
    for weights, metadata in (("latest.weights.h5", "training_metadata.json"),
                              ("latest.weights.h5.bkp", "training_metadata.json.bkp")):
        if (backup / weights).is_file() and (backup / metadata).is_file():
            try:
                return json.loads((backup / metadata).read_text())["epoch"]
            except (ValueError, KeyError):
                continue
    return None


class EpochCommit(keras.callbacks.Callback):
    """The last callback of every epoch, in this order: a float16
    weights-only ``snapshot.weights.npz``; the backup (``RunBackup``); then
    ``progress.json`` with the epochs done and the training wall time summed
    over restarts. Every file is written atomically, and progress never gets
    ahead of the backup: a run whose progress says N epochs has a backup of
    N epochs, and one without a backup that says N > 0 lost it."""

    def __init__(self, run_dir, backup):
        super().__init__()
        self.path = Path(run_dir) / SNAPSHOT_WEIGHTS
        self.progress_path = Path(run_dir) / "progress.json"
        self.backup = backup

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_started = time.time()

    def on_epoch_end(self, epoch, logs=None):
        weights_io.save_weights(self.model, self.path, dtype="float16")
        self.backup.commit(epoch)
        progress = {"epochs_completed": 0, "train_seconds": 0.0}
        if self.progress_path.is_file():
            progress = json.loads(self.progress_path.read_text())
        progress["epochs_completed"] = epoch + 1
        progress["train_seconds"] = round(
            progress["train_seconds"] + time.time() - self.epoch_started, 1
        )
        write_json_atomically(self.progress_path, progress)


def improves(value, best, mode):
    """Whether ``value`` is strictly better than ``best`` ("max" or "min"):
    ties keep the earlier epoch; NaN never improves."""
    return value > best if mode == "max" else value < best


def read_best(run_dir):
    """``best.json`` of a run directory, or None if no epoch was selected yet."""
    path = Path(run_dir) / BEST_RECORD
    return json.loads(path.read_text()) if path.is_file() else None


def stop_reason(config, best, epochs_done):
    """Why a validation run should stop after ``epochs_done`` epochs (a
    sentence for metrics.json), or None to go on. Computed from ``best.json``
    alone, so that a restarted run stops where the killed one would have."""
    if best is None:
        return None
    metric, value, epoch = best["metric"], best["value"], best["epoch"]
    if config.stop_at is not None and (
        value == config.stop_at or improves(value, config.stop_at, config.selection_mode)
    ):
        bound = ">=" if config.selection_mode == "max" else "<="
        return f"stop_at: {metric} = {value:.6g} {bound} {config.stop_at} at epoch {epoch}"
    patience = config.early_stopping_patience
    if patience is not None and epochs_done - epoch >= patience:
        return (f"early stopping: {metric} did not improve in the {epochs_done - epoch} epochs "
                f"after epoch {epoch} (patience {patience})")
    return None




class BestWeights(keras.callbacks.Callback):
    """Model selection on the validation split, surviving restarts.

    After every epoch whose ``selection_metric`` improves on the best so far
    (read from ``best.json`` at start, so a restart keeps it):
    ``best.weights.npz`` (float16, like the snapshot) and then ``best.json``,
    which holds the weights file's SHA-256 so that a reader can tell a
    matching pair. Then stops training once ``stop_reason`` says so.
    """

    def __init__(self, run_dir, config):
        super().__init__()
        self.weights_path = Path(run_dir) / BEST_WEIGHTS
        self.record_path = Path(run_dir) / BEST_RECORD
        self.config = config
        self.best = read_best(run_dir)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        metric = self.config.selection_metric
        if metric not in logs:
            available = sorted(name for name in logs if name.startswith("val_"))
            raise ValueError(
                f"selection_metric '{metric}' is not logged for {self.config.model}; "
                f"its validation metrics are {available}."
            )
        value = float(logs[metric])
        excluded = self.model.reason_not_selectable()
        if excluded:
            print(f"epoch {epoch + 1} is not a selection candidate: {excluded}.")
        elif self.best is None or improves(value, self.best["value"], self.config.selection_mode):
            # save_weights writes a temporary file and renames it: atomic.
            weights_io.save_weights(self.model, self.weights_path, dtype="float16")
            self.best = {
                "epoch": epoch + 1,
                "metric": metric,
                "value": value,
                "mode": self.config.selection_mode,
                "validation": {name[len("val_"):]: float(v) for name, v in logs.items()
                               if name.startswith("val_")},
                "validation_size": self.config.validation_size,
                "weights_sha256": sha256_of(self.weights_path),
            }
            write_json_atomically(self.record_path, self.best)
        if stop_reason(self.config, self.best, epoch + 1):
            self.model.stop_training = True


def _epochs_done(run_dir, config):
    progress = Path(run_dir) / "progress.json"
    if progress.is_file():
        return json.loads(progress.read_text())["epochs_completed"]
    return config.initial_epoch


# What a resumed run may change: how it is run and how long, not what it
# trains (cosine runs anneal to their epochs, so for them epochs is fixed too).
RESUME_MAY_CHANGE = (
    "epochs", "verbose", "output_dir", "strategy", "early_stopping_patience", "stop_at",
    "sample_grids", "test_limit", "tensorboard",
)


# Fields added on 2026-12-02, with the behaviour of the runs started before them.
ADDED_LATER = {"adam_beta_2": 0.999, "max_shift": None, "tensorboard": False}


def changed_settings(stored, config, names):
    """``"name: before -> after, ..."`` for the ``names`` whose value in a
    run's stored ``config.json`` (``stored``) differs from ``config``'s, or
    "" if none does. A field added after the run started is absent from its
    config.json: it trained with what the field's default now means
    (``ADDED_LATER``); other absent fields are not compared."""
    stored = {**ADDED_LATER, **stored}
    current = json.loads(json.dumps(dataclasses.asdict(config)))  # as config.json stores it
    return ", ".join(f"{name}: {stored[name]!r} -> {current[name]!r}"
                     for name in names if name in stored and stored[name] != current[name])


def _check_same_experiment(run_dir, config):
    """A restarted run must train what it started with: the same model,
    data, optimisation and selection (switching would mix two experiments in
    one run, and rewrite config.json to describe only the second)."""
    previous_path = run_dir / "config.json"
    if (run_dir / "progress.json").is_file() and previous_path.is_file():
        previous = json.loads(previous_path.read_text())
        fixed = [field.name for field in dataclasses.fields(TrainConfig)
                 if field.name not in RESUME_MAY_CHANGE or (
                     field.name == "epochs" and config.learning_rate_schedule == "cosine")]
        details = changed_settings(previous, config, fixed)
        if details:
            raise ValueError(
                f"'{run_dir}' was started with other settings ({details}); resume it with the "
                "settings it started with, or train in a new --output-dir (to continue from its "
                "weights: --init-weights <its snapshot.weights.npz> --initial-epoch <epochs done>)."
            )
        # Runs from before validation splits have neither key.
        names = ("validation", "validation_size") if config.validation else ("validation",)
        for name in names:
            before = previous.get(name, getattr(TrainConfig, name))
            if before != getattr(config, name):
                raise ValueError(
                    f"'{run_dir}' was trained with {name}={before!r}; resume it with the same "
                    f"setting (got {name}={getattr(config, name)!r}), or use a new --output-dir."
                )
    best = read_best(run_dir)
    selection = (config.selection_metric, config.selection_mode)
    if best is not None and (best["metric"], best["mode"]) != selection:
        raise ValueError(
            f"'{run_dir}' selects epochs by {best['metric']} ({best['mode']}) (its {BEST_RECORD}); "
            f"resume it with the same selection, not {config.selection_metric} ({config.selection_mode})."
        )


def train(config, callbacks=()):
    """Train (or resume) one run; return the metrics dict of metrics.json.

    A run killed part way resumes from its last finished epoch when called
    again with the same ``output_dir``. Extra Keras ``callbacks`` are added
    to the recipe's own. The global dtype policy is restored afterwards.
    Without validation, ``"test"`` holds the final test metrics; with it,
    ``"validation"`` holds the selected epoch's validation metrics and the
    test split is not evaluated.

    Under ``strategy="multi_worker"`` every worker of ``TF_CONFIG``'s cluster
    makes the same call: the chief trains in ``output_dir``, the others in
    scratch copies of it (``caps_zoo.multi_worker.worker_run_dir``).
    """
    config.validate()
    run_dir = Path(config.output_dir)
    if config.strategy == "multi_worker":
        from caps_zoo import multi_worker

        # The strategy first: TensorFlow wants it before any other op.
        with multi_worker.worker_run_dir(run_dir, make_strategy(config.strategy)) as worker_dir:
            return _train_in(config, worker_dir, callbacks)
    return _train_in(config, run_dir, callbacks)


def _train_in(config, run_dir, callbacks):
    run_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(run_dir):
        return _train_locked(config, run_dir, callbacks)


RUN_LOCK = ".lock"


@contextlib.contextmanager
def run_lock(run_dir, user="training", advice="or train in another --output-dir"):
    """Hold ``run_dir/.lock`` while a run trains there: a second training on
    the same directory (another process, or this one) is refused instead of
    interleaving its epochs with the first's. The operating system releases
    the lock when the process dies, so a killed run never leaves it locked.
    (ship_weights holds the same lock on ``saved_models/<model>/``.)"""
    import fcntl  # POSIX; imported here so that the module imports anywhere

    handle = open(Path(run_dir) / RUN_LOCK, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise RuntimeError(
            f"'{run_dir}' is in use by another {user} ({holder}). Wait for it to finish, {advice}."
        ) from None
    try:
        handle.truncate(0)
        handle.write(f"pid {os.getpid()} on {platform.node()}\n")
        handle.flush()
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def _finish_from_snapshot(run_dir, config):
    """Whether ``run_dir`` trained all its epochs but lost ``backup/`` before
    its final files (runs of zoo versions that let fit delete the backup, or
    a backup deleted by hand): then the snapshot of the last epoch is what
    fit ended with (float16, as final.weights.npz stores it), and the run is
    finished from it. Raises if epochs are left: without the backup's
    optimizer state the run would start over."""
    if backup_epochs(run_dir) is not None or not (run_dir / "progress.json").is_file():
        return False
    done = _epochs_done(run_dir, config)
    if done <= config.initial_epoch:
        return False  # nothing trained here yet: the run starts (again)
    selecting = config.validation and config.selection_metric is not None
    finished = done >= config.epochs or (selecting and stop_reason(config, read_best(run_dir), done))
    if finished and (run_dir / SNAPSHOT_WEIGHTS).is_file():
        return True
    advice = (f"to train on from its weights, pass --init-weights {run_dir / SNAPSHOT_WEIGHTS} "
              f"--initial-epoch {done} (and --epochs above {done})")
    raise FileExistsError(
        f"'{run_dir}' trained {done} of {config.epochs} epochs, but its backup/ (weights, optimizer "
        "state, epoch) is gone or incomplete, so it cannot resume: training again would start over. "
        f"Use a new --output-dir; {advice}."
    )


def _train_locked(config, run_dir, callbacks):
    if (run_dir / METRICS).is_file():
        # Killed while removing it after metrics.json: nothing in it is needed.
        shutil.rmtree(run_dir / "backup", ignore_errors=True)
        raise FileExistsError(
            f"'{run_dir}' holds a finished run (its {METRICS} is written). Use a new --output-dir; "
            f"to train on from this run, pass --init-weights {run_dir / 'final.weights.npz'} "
            "--initial-epoch <its epochs>."
        )
    _check_same_experiment(run_dir, config)
    from_snapshot = _finish_from_snapshot(run_dir, config)
    write_json_atomically(run_dir / "config.json", dataclasses.asdict(config))
    # A restart must not replay the first epochs' shuffles and shifts.
    seed = config.seed + _epochs_done(run_dir, config)

    check_precision(config.precision)
    with dtype_policy(config.precision):
        keras.utils.set_random_seed(seed)
        strategy = make_strategy(config.strategy)
        with strategy.scope():
            model = build_model(config)
        return _fit(model, strategy, config, run_dir, seed, callbacks, from_snapshot)


@contextlib.contextmanager
def dtype_policy(precision):
    """The global Keras dtype policy set to ``precision`` for the block, and
    the previous one restored afterwards (also on errors)."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(precision)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def fit_and_evaluate(model, strategy_name):
    """``(fit, evaluate)`` for ``model``: Keras' ``model.fit``, and
    ``evaluate(data)`` returning the metrics dict.

    Under multi_worker Keras' own fail (https://github.com/keras-team/keras/issues/20585):
    the zoo's loop stands in, with the same callbacks (``caps_zoo.multi_worker``).
    When that bug is fixed, this ``if`` goes and fit is Keras' everywhere.
    """
    if strategy_name == "multi_worker":
        from caps_zoo import multi_worker

        loop = multi_worker.DistributedLoop(model)
        return loop.fit, loop.evaluate
    return model.fit, functools.partial(model.evaluate, return_dict=True, verbose=0)


def _fit(model, strategy, config, run_dir, seed, callbacks, from_snapshot=False):
    # Generated pairs shift each digit themselves (max_shift); images shift whole.
    shifts = ({"max_shift": config.max_shift} if config.dataset in data.GENERATED_DATASETS
              else {"shift_pixels": config.shift_pixels})
    train_data = data.load(
        config.dataset,
        "train",
        batch_size=config.batch_size,
        **shifts,
        limit=config.train_limit,
        seed=seed,
        # Equal shares for every replica; a single replica keeps every image.
        drop_remainder=strategy.num_replicas_in_sync > 1,
        binarize=config.binarize,
        holdout_validation=config.validation,
        validation_size=config.validation_size,
    )
    # Keras' val_* columns: the validation split, or (without one, as the
    # shipped runs were trained) the test split. The Bernoulli VAEs are
    # evaluated on a fixed binarization either way.
    binarize = "fixed" if config.binarize else None
    fixed_shifts = {"max_shift": config.max_shift} if "max_shift" in shifts else {}
    if config.validation:
        val_data = data.load(config.dataset, "validation", batch_size=256, binarize=binarize,
                             validation_size=config.validation_size, **fixed_shifts)
    else:
        val_data = data.load(config.dataset, "test", batch_size=256, limit=config.test_limit,
                             binarize=binarize, **fixed_shifts)

    # Only the cosine schedule needs the epoch's length (it is set per batch);
    # counting the images reads the dataset's arrays a second time.
    steps_per_epoch = config.steps_per_epoch
    if steps_per_epoch is None and config.learning_rate_schedule == "cosine":
        steps_per_epoch = math.ceil(
            data.num_examples(config.dataset, "train", config.train_limit,
                              holdout_validation=config.validation,
                              validation_size=config.validation_size) / config.batch_size)
    selecting = config.validation and config.selection_metric is not None
    best_weights = BestWeights(run_dir, config) if selecting else None
    epochs = config.epochs
    if selecting:
        done = _epochs_done(run_dir, config)
        if stop_reason(config, best_weights.best, done):
            # Killed after it decided to stop: fit only restores the backup
            # (no epoch to run), and the run finishes as it would have.
            epochs = done

    # double_checkpoint: the previous epoch's backup is kept, and Keras falls
    # back to it when the latest is unreadable. delete_checkpoint=False: the
    # backup stays until metrics.json is written, so that a kill between fit
    # and the final files resumes into a fit of no epochs that restores the
    # weights and finishes.
    backup = RunBackup(str(run_dir / "backup"), save_freq="epoch", double_checkpoint=True,
                       delete_checkpoint=False)
    callbacks = [
        *callbacks,
        # Before the backup is written (EpochCommit), so that a kill cannot
        # lose a backed-up epoch's improvement.
        *([best_weights] if selecting else []),
        # Restores at train begin; then LogRollback, before CSVLogger opens log.csv.
        backup,
        LogRollback(run_dir, config.initial_epoch),
        # zip() pairs the rates with the model's optimizers: one, or a GAN's two.
        LearningRateDecay(learning_rates(config), config.learning_rate_decay,
                          schedule=config.learning_rate_schedule, warmup_epochs=config.warmup_epochs,
                          total_epochs=config.epochs, steps_per_epoch=steps_per_epoch),
        keras.callbacks.CSVLogger(str(run_dir / "log.csv"), append=True),
        *([tensorboard_callback(run_dir)] if config.tensorboard else []),
        *([SampleGrid(run_dir, tensorboard_dir=run_dir / TENSORBOARD_DIR if config.tensorboard else None)]
          if config.sample_grids else []),
        EpochCommit(run_dir, backup),  # last: snapshot, backup, progress
    ]
    fit, evaluate = fit_and_evaluate(model, config.strategy)
    started = time.time()
    if from_snapshot:
        weights_io.load_weights(model, run_dir / SNAPSHOT_WEIGHTS)
        history = {}
        if config.verbose:
            print(f"{run_dir}: all epochs were trained; finishing from {SNAPSHOT_WEIGHTS}")
    else:
        history = fit(
            train_data,
            epochs=epochs,
            steps_per_epoch=config.steps_per_epoch,
            initial_epoch=config.initial_epoch,
            validation_data=val_data,
            shuffle=False,  # the dataset shuffles itself
            callbacks=callbacks,
            verbose=config.verbose,
        ).history
    wall_seconds = time.time() - started
    weights_io.save_weights(model, run_dir / "final.weights.npz", dtype="float16")
    metrics = {
        "model": config.model,
        "dataset": config.dataset,
        "epochs": config.epochs,
    }
    if config.validation:
        metrics.update(_validation_results(evaluate, val_data, config, run_dir, best_weights))
    else:
        test_metrics = evaluate(val_data)
        metrics["test"] = {k: float(v) for k, v in test_metrics.items()}
    metrics.update({
        # This process's epochs (none for a run finished after a kill).
        "history": {k: [float(x) for x in v] for k, v in history.items()},
        "wall_seconds_this_process": round(wall_seconds, 1),
        "precision": config.precision,
        "strategy": config.strategy,
        "replicas": strategy.num_replicas_in_sync,
        "machine": machine_description(),
    })
    # metrics.json marks the run finished: written atomically, and only then
    # is the backup (no longer needed to finish) removed.
    write_json_atomically(run_dir / METRICS, metrics)
    shutil.rmtree(run_dir / "backup", ignore_errors=True)
    return metrics


def _validation_results(evaluate, val_data, config, run_dir, best_weights):
    """metrics.json's entries for a validation run: the shipped epoch's
    validation metrics, and no test metrics (the test split is seen once,
    by ship_weights). ``evaluate(data)`` gives the model's metrics dict."""
    epochs_done = _epochs_done(run_dir, config)
    results = {
        "test": "not evaluated; run ship_weights",
        "training_images": data.num_examples(config.dataset, "train", config.train_limit,
                                             holdout_validation=True,
                                             validation_size=config.validation_size),
        "validation_images": config.validation_size,
        "epochs_completed": epochs_done,
    }
    if best_weights is None:
        # No selection: the last epoch ships; these are its metrics.
        last = evaluate(val_data)
        return {**results, "selected_on": "last epoch (no selection metric)",
                "selected_epoch": epochs_done,
                "validation": {k: float(v) for k, v in last.items()}}
    best = best_weights.best
    if best is None:  # every epoch was excluded (ZooModel.reason_not_selectable): nothing to ship
        return {**results, "selected_on": f"validation: {config.selection_metric} ({config.selection_mode}); "
                                          "no epoch was a selection candidate",
                "selected_epoch": None, "validation": None}
    return {
        **results,
        "selected_on": f"validation: {best['metric']} ({best['mode']})",
        "selected_epoch": best["epoch"],
        "validation": best["validation"],
        # Recomputed rather than kept from the callback: a restarted run that
        # had already decided to stop runs no epoch.
        "stopped_early": stop_reason(config, best, epochs_done),
    }


TENSORBOARD_DIR = "tensorboard"


def tensorboard_callback(run_dir):
    """Keras' TensorBoard callback writing ``<run_dir>/tensorboard`` (scalars
    per epoch); a clear error where the tensorboard package is missing
    (TF 2.21 no longer installs it), before any epoch is trained."""
    try:
        import tensorboard  # noqa: F401  (Keras' callback needs it for its summaries)
    except ImportError:
        raise ImportError(
            "--tensorboard needs the tensorboard package, which TensorFlow 2.21 no longer "
            'installs: pip install "caps_zoo[tensorboard]" (or pip install tensorboard).'
        ) from None
    return keras.callbacks.TensorBoard(log_dir=str(Path(run_dir) / TENSORBOARD_DIR), update_freq="epoch",
                                       write_graph=False)


def use_logical_cpus(count):
    """``--logical-cpus N``: split the CPU into N logical devices (for
    ``--strategy mirrored`` on a machine without GPUs); 0 leaves it whole."""
    if count:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * count
        )


def run_recipe(args, model_overrides=None):
    """Train the TrainConfig that parsed ``args`` give; print the test metrics
    (with --validation: the selected epoch's validation metrics)."""
    if args.logical_cpus and args.strategy == "multi_worker":
        raise ValueError("--logical-cpus splits this process's CPU for --strategy mirrored; under "
                         "multi_worker each worker trains on its own CPU (or its GPUs).")
    use_logical_cpus(args.logical_cpus)
    config = config_from_args(args)
    if model_overrides:
        config.model_overrides = {**config.model_overrides, **model_overrides}
    metrics = train(config)
    print(json.dumps(metrics["validation"] if config.validation else metrics["test"], indent=2))
    return metrics
