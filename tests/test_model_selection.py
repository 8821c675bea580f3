"""Validation split and honest model selection: training with --validation
never touches the test split, keeps the best epoch on validation (across
restarts), stops early on it, and ship_weights ships that epoch and evaluates
the test split once.

The selection mechanics are model-agnostic, so most tests train gran1 (the
zoo's fastest model) and script the selected metric's value per epoch: which
epoch must win is then known. The end-to-end test trains CapsNet on its real
validation accuracy.
"""

import csv
import hashlib
import json
import runpy
import shutil
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import caps_zoo
from caps_zoo import data, training
from conftest import Killed

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
SHIP = RECIPES / "ship_weights.py"
VALIDATION_SIZE = 64  # of tiny_mnist's 256 training images: 192 left to train on


def _log(run_dir):
    with open(run_dir / "log.csv") as handle:
        return list(csv.DictReader(handle))


def _weights(path):
    with np.load(path, allow_pickle=False) as archive:
        return [archive[key] for key in sorted(archive.files) if not key.startswith("__")]


def _same_weights(a, b):
    return all(np.array_equal(x, y) for x, y in zip(_weights(a), _weights(b)))


@pytest.fixture
def splits_read(monkeypatch):
    """Every (dataset, split, holdout_validation) that data.load_arrays reads."""
    original = data.load_arrays
    calls = []

    def recording(name, split, holdout_validation=False, validation_size=data.VALIDATION_SIZE):
        calls.append((name, split, holdout_validation))
        return original(name, split, holdout_validation, validation_size)

    monkeypatch.setattr(data, "load_arrays", recording)
    return calls


class ScriptedMetric(keras.callbacks.Callback):
    """Replaces the logged selection metric by ``values[epoch]`` (0-based
    epochs), after checking that the validation split really logs it; keeps
    a copy of the snapshot after every epoch (``snapshots/epoch_N``, 1-based)."""

    def __init__(self, metric, values, run_dir):
        super().__init__()
        self.metric, self.values, self.run_dir = metric, values, Path(run_dir)

    def on_epoch_begin(self, epoch, logs=None):
        if epoch > 0:  # the snapshot on disk is the previous epoch's
            folder = self.run_dir.parent / "snapshots"
            folder.mkdir(exist_ok=True)
            shutil.copy(self.run_dir / "snapshot.weights.npz", folder / f"epoch_{epoch}.weights.npz")

    def on_epoch_end(self, epoch, logs=None):
        assert self.metric in logs, sorted(logs)
        logs[self.metric] = self.values[epoch]


class KilledAtTrainEnd(keras.callbacks.Callback):
    """A kill after the last epoch, before fit cleans up (the backup stays)."""

    def on_train_end(self, logs=None):
        raise Killed


def gran_config(run_dir, **changes):
    """A validation run of gran1 that selects on D's validation real accuracy
    (not train_gran's choice, which selects nothing: a stand-in metric)."""
    settings = dict(
        model="gran1", epochs=3, batch_size=32, steps_per_epoch=1, shift_pixels=0,
        output_dir=str(run_dir), verbose=0, validation=True, validation_size=VALIDATION_SIZE,
        selection_metric="val_real_accuracy", selection_mode="max",
    )
    return training.TrainConfig(**{**settings, **changes})


def ship(run_dir, *extra):
    """ship_weights' main() with these arguments."""
    main = runpy.run_path(str(SHIP))["main"]
    main(["--run-dir", str(run_dir), "--command", "test", "--frechet-samples", "0", *extra])


# -- training ------------------------------------------------------------------


def test_capsnet_validation_run_selects_on_validation_and_never_reads_test(
    tiny_mnist, splits_read, tmp_path, monkeypatch, capsys
):
    run_dir = tmp_path / "run"
    argv = [str(RECIPES / "train_capsnet.py"), "--validation", "--validation-size", str(VALIDATION_SIZE),
            "--epochs", "2", "--batch-size", "32", "--steps-per-epoch", "2", "--routing-iterations", "1",
            "--output-dir", str(run_dir), "--verbose", "0"]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(argv[0], run_name="__main__")

    assert {split for _, split, _ in splits_read} == {"train", "validation"}  # never "test"
    assert ("mnist", "train", True) in splits_read and ("mnist", "train", False) not in splits_read
    rows = _log(run_dir)
    assert len(rows) == 2 and "val_accuracy" in rows[0]
    accuracies = [float(row["val_accuracy"]) for row in rows]
    best = json.loads((run_dir / "best.json").read_text())
    # The first epoch of the highest validation accuracy (ties keep the earlier one).
    assert best["epoch"] == 1 + int(np.argmax(accuracies))
    assert (best["metric"], best["mode"], best["value"]) == ("val_accuracy", "max", max(accuracies))
    row = rows[best["epoch"] - 1]
    logged = {name[len("val_"):]: float(v) for name, v in row.items() if name.startswith("val_")}
    assert best["validation"] == pytest.approx(logged)
    assert all(v.dtype == np.float16 for v in _weights(run_dir / "best.weights.npz") if v.dtype.kind == "f")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test"] == "not evaluated; run ship_weights"
    assert metrics["selected_epoch"] == best["epoch"] and metrics["validation"] == best["validation"]
    assert metrics["training_images"] == 256 - VALIDATION_SIZE
    assert json.loads(capsys.readouterr().out)["accuracy"] == best["validation"]["accuracy"]


def test_the_best_epoch_is_kept_with_its_weights(tiny_mnist, splits_read, tmp_path):
    run_dir = tmp_path / "run"
    config = gran_config(run_dir, epochs=3)
    metrics = training.train(config, callbacks=[ScriptedMetric("val_real_accuracy", [0.5, 0.9, 0.7], run_dir)])
    best = training.read_best(run_dir)
    assert (best["epoch"], best["value"]) == (2, 0.9)
    # best.weights.npz is the epoch-2 snapshot, not the last epoch's weights.
    assert _same_weights(run_dir / "best.weights.npz", tmp_path / "snapshots" / "epoch_2.weights.npz")
    assert not _same_weights(run_dir / "best.weights.npz", run_dir / "final.weights.npz")
    assert metrics["selected_epoch"] == 2 and metrics["stopped_early"] is None
    assert "test" not in {split for _, split, _ in splits_read}


def test_a_gan_is_selected_only_among_epochs_after_its_discriminator_started(tiny_mnist, tmp_path, capsys):
    small = {"encoder_config": {"channels": 8, "channel_multipliers": [1, 2]},
             "decoder_config": {"channels": 8, "channel_multipliers": [1, 2]}, "discriminator_start": 2}
    run_dir = tmp_path / "run"
    # 2 steps an epoch: epoch 1 ends at step 2, whose GAN terms were still
    # off (they count from step 3, once 2 steps are done).
    config = training.TrainConfig(model="cvgan", model_overrides=small, epochs=3, batch_size=32,
                                  steps_per_epoch=2, shift_pixels=0, output_dir=str(run_dir), verbose=0,
                                  validation=True, validation_size=VALIDATION_SIZE,
                                  selection_metric="val_l1_loss", selection_mode="min")
    metrics = training.train(config, callbacks=[ScriptedMetric("val_l1_loss", [0.1, 0.5, 0.7], run_dir)])
    assert "epoch 1 is not a selection candidate: the discriminator had not started (2 generator steps; the GAN terms count from step 3)" in capsys.readouterr().out
    best = training.read_best(run_dir)
    assert (best["epoch"], best["value"]) == (2, 0.5)  # not epoch 1's lower 0.1
    assert metrics["selected_epoch"] == 2
    assert _same_weights(run_dir / "best.weights.npz", tmp_path / "snapshots" / "epoch_2.weights.npz")


class NeverSelectable:
    """What BestWeights asks of a model, from one whose weights are never a
    candidate (a GAN whose discriminator has not started)."""

    stop_training = False

    def reason_not_selectable(self):
        return "the discriminator had not started"


def test_a_run_none_of_whose_epochs_is_a_candidate_selects_nothing(tmp_path, capsys):
    # BestWeights alone: a second GAN training here cost ~25 s of tracing.
    config = training.TrainConfig(model="cvgan", epochs=2, output_dir=str(tmp_path), validation=True,
                                  selection_metric="val_l1_loss", selection_mode="min")
    callback = training.BestWeights(tmp_path, config)
    callback.set_model(NeverSelectable())
    for epoch, value in enumerate([0.1, 0.05]):
        callback.on_epoch_end(epoch, {"val_l1_loss": value})
    assert "epoch 2 is not a selection candidate: the discriminator had not started." in capsys.readouterr().out
    assert training.read_best(tmp_path) is None and not (tmp_path / training.BEST_WEIGHTS).exists()


@pytest.mark.slow  # 50 s; kills and resumes are also in test_fault_injection's default run
def test_resume_after_a_kill_keeps_the_best_so_far(tiny_mnist, kill_at_epoch, tmp_path):
    run_dir = tmp_path / "run"
    config = gran_config(run_dir, epochs=3)
    scripted = ScriptedMetric("val_real_accuracy", [0.9, 0.5, 0.6], run_dir)
    with pytest.raises(Killed):
        training.train(config, callbacks=[scripted, kill_at_epoch(2)])
    before = (run_dir / "best.weights.npz").read_bytes()
    assert training.read_best(run_dir)["epoch"] == 1
    training.train(config, callbacks=[scripted])  # epoch 3 scores 0.6: worse than epoch 1's 0.9
    assert [row["epoch"] for row in _log(run_dir)] == ["0", "1", "2"]
    best = training.read_best(run_dir)
    assert (best["epoch"], best["value"]) == (1, 0.9)
    assert (run_dir / "best.weights.npz").read_bytes() == before


def test_stop_at_stops_and_finishes_the_run(tiny_mnist, tmp_path):
    run_dir = tmp_path / "run"
    config = gran_config(run_dir, epochs=5, stop_at=0.95)
    scripted = ScriptedMetric("val_real_accuracy", [0.5, 0.96, 0.97, 0.98, 0.99], run_dir)
    metrics = training.train(config, callbacks=[scripted])
    assert len(_log(run_dir)) == 2
    assert metrics["stopped_early"].startswith("stop_at: val_real_accuracy = 0.96 >= 0.95 at epoch 2")
    assert (run_dir / "final.weights.npz").is_file() and not (run_dir / "backup").exists()
    with pytest.raises(FileExistsError, match="holds a finished run"):
        training.train(config)  # finished: not trained again


def test_early_stopping_patience_survives_a_restart(tiny_mnist, kill_at_epoch, tmp_path):
    run_dir = tmp_path / "run"
    config = gran_config(run_dir, epochs=5, early_stopping_patience=2)
    scripted = ScriptedMetric("val_real_accuracy", [0.9, 0.5, 0.6, 0.7, 0.8], run_dir)
    with pytest.raises(Killed):
        training.train(config, callbacks=[scripted, kill_at_epoch(2)])
    metrics = training.train(config, callbacks=[scripted])
    # Epochs 2 and 3 did not beat epoch 1: stopped after epoch 3, counting the one before the kill.
    assert [row["epoch"] for row in _log(run_dir)] == ["0", "1", "2"]
    assert metrics["stopped_early"].startswith(
        "early stopping: val_real_accuracy did not improve in the 2 epochs after epoch 1")
    assert metrics["selected_epoch"] == 1 and (run_dir / "final.weights.npz").is_file()


def test_a_run_killed_after_deciding_to_stop_finishes_without_another_epoch(tiny_mnist, tmp_path):
    run_dir = tmp_path / "run"
    config = gran_config(run_dir, epochs=5, stop_at=0.95)
    scripted = ScriptedMetric("val_real_accuracy", [0.96, 0.1, 0.1, 0.1, 0.1], run_dir)
    with pytest.raises(Killed):
        training.train(config, callbacks=[scripted, KilledAtTrainEnd()])
    assert (run_dir / "backup").is_dir() and not (run_dir / "final.weights.npz").exists()
    metrics = training.train(config, callbacks=[scripted])
    assert len(_log(run_dir)) == 1 and metrics["history"] == {}
    assert metrics["stopped_early"].startswith("stop_at") and (run_dir / "final.weights.npz").is_file()
    assert not (run_dir / "backup").exists()


def test_draw_recipe_selects_the_lowest_validation_bound(tiny_mnist, splits_read, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    argv = [str(RECIPES / "train_draw.py"), "--model", "dcrw", "--steps", "2", "--epochs", "2",
            "--batch-size", "32", "--steps-per-epoch", "1", "--validation",
            "--validation-size", str(VALIDATION_SIZE), "--output-dir", str(run_dir), "--verbose", "0"]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(argv[0], run_name="__main__")
    assert "test" not in {split for _, split, _ in splits_read}
    bounds = [float(row["val_loss"]) for row in _log(run_dir)]
    best = training.read_best(run_dir)
    assert (best["metric"], best["mode"]) == ("val_loss", "min")
    assert best["epoch"] == 1 + int(np.argmin(bounds)) and best["value"] == min(bounds)


def test_gran_recipe_with_validation_selects_nothing_and_leaves_the_test_split_alone(
    tiny_mnist, splits_read, scratch_saved_models, tmp_path, monkeypatch
):
    run_dir = tmp_path / "run"
    argv = [str(RECIPES / "train_gran.py"), "--model", "gran1", "--epochs", "1", "--batch-size", "32",
            "--steps-per-epoch", "1", "--validation", "--validation-size", str(VALIDATION_SIZE),
            "--frechet-samples", "300", "--output-dir", str(run_dir), "--verbose", "0"]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(argv[0], run_name="__main__")
    assert "test" not in {split for _, split, _ in splits_read}  # nor the Frechet distance's
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert "frechet" not in metrics and metrics["test"] == "not evaluated; run ship_weights"
    assert set(metrics["validation"]) == {
        "loss", "discriminator_loss", "generator_loss", "real_accuracy", "fake_accuracy"}
    assert not (run_dir / "best.json").exists()
    ship(run_dir)
    metadata = caps_zoo.load_metadata("gran1")
    assert metadata["selected_on"].startswith("last epoch (no selection metric")
    assert metadata["selected_epoch"] == 1 and metadata["training_images"] == 256 - VALIDATION_SIZE


# -- configuration -------------------------------------------------------------


def test_recipes_flags_and_selection_defaults():
    capsnet = runpy.run_path(str(RECIPES / "train_capsnet.py"))["parse_args"](
        ["--validation", "--early-stopping-patience", "3", "--stop-at", "0.995", "--validation-size", "100"])
    assert (capsnet.validation, capsnet.early_stopping_patience, capsnet.stop_at, capsnet.validation_size) == (
        True, 3, 0.995, 100)
    assert (capsnet.selection_metric, capsnet.selection_mode) == ("val_accuracy", "max")
    plain = runpy.run_path(str(RECIPES / "train_capsnet.py"))["parse_args"]([])
    assert (plain.validation, plain.validation_size, plain.stop_at) == (False, 5000, None)
    draw = runpy.run_path(str(RECIPES / "train_draw.py"))["parse_args"](["--validation"])
    assert (draw.selection_metric, draw.selection_mode) == ("val_loss", "min")
    gran = runpy.run_path(str(RECIPES / "train_gran.py"))["parse_args"](["--validation"])
    assert gran.selection_metric is None


def test_bad_selection_configs_are_rejected():
    with pytest.raises(ValueError, match="need validation=True"):
        training.TrainConfig(early_stopping_patience=2).validate()
    with pytest.raises(ValueError, match="stop_at need validation=True"):
        training.TrainConfig(stop_at=0.99).validate()
    with pytest.raises(ValueError, match="need a selection_metric"):
        training.TrainConfig(model="gran1", validation=True, selection_metric=None, stop_at=0.9).validate()
    with pytest.raises(ValueError, match="named 'val_<metric>'"):
        training.TrainConfig(validation=True, selection_metric="accuracy").validate()
    with pytest.raises(ValueError, match="selection_mode must be one of"):
        training.TrainConfig(selection_mode="maximum").validate()
    with pytest.raises(ValueError, match="the test split is not touched during training"):
        training.TrainConfig(validation=True, test_limit=100).validate()
    with pytest.raises(ValueError, match="early_stopping_patience must be >= 1"):
        training.TrainConfig(validation=True, early_stopping_patience=0).validate()


def test_a_run_cannot_switch_its_split_on_resume(tmp_path):
    (tmp_path / "backup").mkdir()
    (tmp_path / "progress.json").write_text('{"epochs_completed": 1, "train_seconds": 1.0}')
    (tmp_path / "config.json").write_text(json.dumps({"validation": False}))
    with pytest.raises(ValueError, match=r"validation: False -> True"):
        training.train(training.TrainConfig(output_dir=str(tmp_path), validation=True))


# -- shipping ------------------------------------------------------------------


def test_ship_a_validation_run_ships_the_chosen_epoch_and_evaluates_test_once(
    tiny_mnist, scratch_saved_models, tmp_path, monkeypatch
):
    run_dir = tmp_path / "run"
    training.train(gran_config(run_dir, epochs=3),
                   callbacks=[ScriptedMetric("val_real_accuracy", [0.5, 0.9, 0.7], run_dir)])
    evaluated = []
    original_load = data.load

    def recording_load(name="mnist", split="train", *args, **kwargs):
        evaluated.append((name, split))
        return original_load(name, split, *args, **kwargs)

    monkeypatch.setattr(data, "load", recording_load)
    ship(run_dir)
    assert evaluated.count(("mnist", "test")) == 1

    metadata = caps_zoo.load_metadata("gran1")
    assert metadata["selected_on"] == f"validation (last {VALIDATION_SIZE:,} training images)"
    assert metadata["selected_epoch"] == 2 and metadata["epochs_completed"] == 3
    assert (metadata["selection_metric"], metadata["validation_real_accuracy"]) == ("val_real_accuracy", 0.9)
    assert metadata["training_images"] == 256 - VALIDATION_SIZE
    assert metadata["status"] == "finished" and 0 <= metadata["test_real_accuracy"] <= 1
    assert "epoch chosen on 64 validation images" in metadata["data"]
    shipped = scratch_saved_models / "gran1" / "mnist.weights.npz"
    assert _same_weights(shipped, run_dir / "best.weights.npz")
    assert not _same_weights(shipped, run_dir / "final.weights.npz")
    # What the metadata reports is what the shipped weights measure on the test split.
    model = caps_zoo.load("gran1")
    test = model.evaluate(original_load("mnist", "test", batch_size=250), return_dict=True, verbose=0)
    assert test["real_accuracy"] == pytest.approx(metadata["test_real_accuracy"], abs=1e-6)


def test_a_finished_validation_run_ships_as_finished_without_its_final_weights(
    tiny_mnist, scratch_saved_models, tmp_path
):
    # What a committed training snapshot holds: the run's records and the
    # selected epoch's weights, not final.weights.npz (which never ships).
    run_dir = tmp_path / "run"
    training.train(gran_config(run_dir, epochs=2),
                   callbacks=[ScriptedMetric("val_real_accuracy", [0.9, 0.5], run_dir)])
    (run_dir / "final.weights.npz").unlink()
    ship(run_dir)
    metadata = caps_zoo.load_metadata("gran1")
    assert (metadata["status"], metadata["selected_epoch"]) == ("finished", 1)
    # where it trained, from the run's own record (it may ship on another machine)
    assert metadata["trained_on"] == json.loads((run_dir / "metrics.json").read_text())["machine"]


def test_ship_refuses_a_validation_run_without_a_chosen_epoch(
    tiny_mnist, scratch_saved_models, tmp_path, capsys
):
    run_dir = tmp_path / "run"
    training.train(gran_config(run_dir, epochs=1))
    (run_dir / "best.weights.npz").unlink()
    with pytest.raises(SystemExit):
        ship(run_dir)
    assert "has no best.weights.npz" in capsys.readouterr().err
    assert not (scratch_saved_models / "gran1").exists()  # nothing written


def test_ship_refuses_to_select_on_the_test_split(tiny_mnist, scratch_saved_models, tmp_path, capsys):
    run_dir = tmp_path / "run"
    training.train(gran_config(run_dir, epochs=1))
    with pytest.raises(SystemExit):
        ship(run_dir, "--select", "test")
    assert "refusing --select test" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ship(run_dir, "--select", "last")  # the last epoch instead of the chosen one: refused too
    assert "chose its epoch on the validation split" in capsys.readouterr().err
    assert not (scratch_saved_models / "gran1").exists()
    ship(run_dir, "--select", "validation")  # the run's own rule, stated
    assert caps_zoo.load_metadata("gran1")["selected_epoch"] == 1


def test_ship_a_second_phase_counts_both_phases(tiny_mnist, scratch_saved_models, tmp_path, capsys):
    """A run started from another run's weights (an annealing phase, say)
    ships with --continued-from: epochs, time and log count both phases."""
    first, second = tmp_path / "first", tmp_path / "second"
    training.train(gran_config(first, epochs=2))
    training.train(gran_config(second, epochs=3, learning_rate=1e-4, init_weights=str(first / "final.weights.npz")),
                   callbacks=[ScriptedMetric("val_real_accuracy", [0.5, 0.9, 0.7], second)])
    # The first phase planned more epochs than it ran (stopped for the budget):
    # the plan counts the epochs it did.
    config = json.loads((first / "config.json").read_text())
    (first / "config.json").write_text(json.dumps({**config, "epochs": 30}))
    with pytest.raises(SystemExit):  # the folder it did not start from
        ship(second, "--continued-from", str(second))
    assert "did not start from weights in that folder" in capsys.readouterr().err
    assert not (scratch_saved_models / "gran1").exists()

    ship(second, "--continued-from", str(first))
    metadata = caps_zoo.load_metadata("gran1")
    assert (metadata["epochs_completed"], metadata["epochs_planned"], metadata["selected_epoch"]) == (5, 5, 4)
    first_phase, second_phase = metadata["phases"]
    assert (first_phase["epochs_completed"], second_phase["epochs_completed"]) == (2, 3)
    assert (first_phase["learning_rate"], second_phase["learning_rate"]) == (1e-3, 1e-4)
    progress = [json.loads((run / "progress.json").read_text())["train_seconds"] for run in (first, second)]
    assert metadata["wall_hours"] == pytest.approx(sum(progress) / 3600, abs=0.011)
    with open(scratch_saved_models / "gran1" / "mnist.log.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["phase"], row["epoch"]) for row in rows] == [
        ("1", "0"), ("1", "1"), ("2", "2"), ("2", "3"), ("2", "4")]
    assert rows[3]["val_real_accuracy"] == "0.9"  # the shipped epoch's row


# -- shipping loses nothing ------------------------------------------------------


def _shipped_files(folder):
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_ship_refuses_to_replace_a_tag_and_a_failed_measurement_changes_nothing(
    tiny_mnist, scratch_saved_models, tmp_path, monkeypatch, capsys
):
    run_dir = tmp_path / "run"
    training.train(gran_config(run_dir, epochs=1))
    ship(run_dir)
    folder = scratch_saved_models / "gran1"
    before = _shipped_files(folder)
    assert {"mnist.weights.npz", "mnist.json", "mnist.log.csv"} <= set(before)

    with pytest.raises(SystemExit):
        ship(run_dir)  # the tag exists: refused without --replace
    assert "refusing to replace" in capsys.readouterr().err
    assert _shipped_files(folder) == before

    def failing_evaluate(*args, **kwargs):
        raise RuntimeError("evaluation failed")

    monkeypatch.setattr(keras.Model, "evaluate", failing_evaluate)
    with pytest.raises(RuntimeError, match="evaluation failed"):
        ship(run_dir, "--replace")
    # Nothing replaced, nothing half-written, no staging folder left behind.
    assert _shipped_files(folder) == before


def test_ship_replace_moves_weights_and_metadata_together_and_load_checks_them(
    tiny_mnist, scratch_saved_models, tmp_path
):
    first, second = tmp_path / "first", tmp_path / "second"
    training.train(gran_config(first, epochs=1))
    training.train(gran_config(second, epochs=2))
    ship(first)
    ship(second, "--replace")
    weights = scratch_saved_models / "gran1" / "mnist.weights.npz"
    metadata = caps_zoo.load_metadata("gran1")
    assert metadata["epochs_completed"] == 2
    assert metadata["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert _same_weights(weights, second / "best.weights.npz")
    caps_zoo.load("gran1")
    # Weights replaced behind the metadata's back (or a ship killed between
    # its moves) are refused on load, not silently used with stale metrics.
    caps_zoo.weights.save_weights(caps_zoo.create_model("gran1"), weights, dtype="float16")
    with pytest.raises(caps_zoo.weights.WeightsError, match="SHA-256"):
        caps_zoo.load("gran1")
