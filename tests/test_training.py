"""Training under tf.distribute, and the recipe's run directory / resume."""

import csv
import dataclasses
import json
import re
import runpy
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import caps_zoo
from caps_zoo import data, training
from conftest import Killed

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "train_capsnet.py"


def mirrored():
    assert len(tf.config.list_logical_devices("CPU")) == 2, "conftest.py splits the CPU in two"
    strategy = training.make_strategy("mirrored")
    assert strategy.num_replicas_in_sync == 2
    return strategy


def test_mirrored_step_equals_single_device_step(sample_batch):
    images, labels = sample_batch[0][:32], sample_batch[1][:32]
    keras.utils.set_random_seed(0)
    initial = caps_zoo.create_model("capsnet").get_weights()

    def one_step(strategy):
        with strategy.scope():
            model = caps_zoo.create_model("capsnet")
            model.set_weights(initial)
            model.compile(optimizer=keras.optimizers.SGD(0.1))
            model.optimizer.build(model.trainable_variables)
        dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(32)
        model.fit(dataset, epochs=1, verbose=0, shuffle=False)
        return model.get_weights()

    single = one_step(tf.distribute.get_strategy())
    distributed = one_step(mirrored())
    moved = 0
    for before, a, b in zip(initial, single, distributed):
        np.testing.assert_allclose(b, a, atol=2e-5)
        moved += not np.allclose(a, before)
    assert moved > len(initial) // 2  # the step really changed the weights


# Slow: test_fault_injection.py kills a real training process at this point
# (and others) in the default run; this in-process variant checks more files.
@pytest.mark.slow
def test_train_writes_run_dir_and_resumes_after_a_kill(tiny_mnist, kill_at_epoch, tmp_path):
    run_dir = tmp_path / "run"
    config = training.TrainConfig(
        model="capsnet", epochs=2, batch_size=64, output_dir=str(run_dir), verbose=0
    )
    with pytest.raises(Killed):
        training.train(config, callbacks=[kill_at_epoch(1)])
    assert not (run_dir / "metrics.json").exists()
    metrics = training.train(config)  # the same call again resumes at epoch 1
    log = (run_dir / "log.csv").read_text().strip().splitlines()
    assert [row.split(",")[0] for row in log[1:]] == ["0", "1"]  # epoch 0 not repeated
    assert json.loads((run_dir / "metrics.json").read_text())["test"] == metrics["test"]
    assert 0 <= metrics["test"]["accuracy"] <= 1
    assert not (run_dir / "best.json").exists()  # no selection without a validation split
    progress = json.loads((run_dir / "progress.json").read_text())
    assert progress["epochs_completed"] == 2 and progress["train_seconds"] > 0
    restored = caps_zoo.load("capsnet", weights=str(run_dir / "snapshot.weights.npz"))
    assert restored.count_params() == 8_215_568


# deep_capsnet in bfloat16 (emulated, about 9x slower, on CPUs without it;
# shipping evaluates 1,000 images) runs with -m slow; the default run takes
# capsnet in float32, and the short test below keeps the bfloat16 recipe path.
@pytest.mark.parametrize("name, routing, precision", [
    # 50 s: the mirrored step itself is checked in the default run
    # (test_mirrored_step_equals_single_device_step), the recipe's CLI by
    # the writers' and GRAN's recipe tests.
    pytest.param("capsnet", ["2"], "float32", marks=pytest.mark.slow),
    pytest.param("deep_capsnet", ["1", "2"], "mixed_bfloat16", marks=pytest.mark.slow),
])
def test_recipe_cli_mirrored_ships_and_load_restores_the_routing(name, routing, precision, tiny_mnist, tmp_path,
                                                                  monkeypatch, capsys):
    run_dir = tmp_path / "run"
    argv = [
        str(RECIPE), "--model", name, "--epochs", "1", "--batch-size", "16", "--steps-per-epoch", "2",
        "--test-limit", "32", "--strategy", "mirrored", "--routing-iterations", *routing,
        "--precision", precision, "--output-dir", str(run_dir), "--verbose", "0",
    ]
    iterations = [int(r) for r in routing]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(RECIPE), run_name="__main__")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["replicas"] == 2 and metrics["precision"] == precision
    assert np.isfinite(metrics["test"]["loss"])
    assert json.loads((run_dir / "config.json").read_text())["routing_iterations"] == iterations
    assert '"accuracy"' in capsys.readouterr().out

    # Ship it into a scratch saved_models/: load() restores the run's routing.
    monkeypatch.setenv("CAPS_ZOO_SAVED_MODELS", str(tmp_path / "saved_models"))
    ship = RECIPE.parent / "ship_weights.py"
    monkeypatch.setattr(sys, "argv", [str(ship), "--run-dir", str(run_dir), "--command", "test"])
    runpy.run_path(str(ship), run_name="__main__")
    metadata = caps_zoo.load_metadata(name)
    assert metadata["status"] == "finished" and metadata["epochs_completed"] == 1
    assert metadata["data"].startswith("mnist: 256 training images")
    # Trained without a validation split: its last epoch ships, and the metadata says how.
    assert metadata["selected_on"] == "last epoch (no validation split; test split seen during training)"
    assert metadata["selected_epoch"] == 1 and metadata["training_images"] == 256
    assert metadata["model_overrides"] == {"routing_iterations": iterations}
    shipped_log = tmp_path / "saved_models" / name / "mnist.log.csv"
    assert shipped_log.read_text() == (run_dir / "log.csv").read_text()
    model = caps_zoo.load(name)
    assert [s.routing_iterations for s in model.routing_stages] == iterations
    accuracy = model.evaluate(data.load("mnist_sample", "test"), return_dict=True, verbose=0)
    assert accuracy["accuracy"] == pytest.approx(metadata["sample_accuracy"], abs=1e-3)


def test_recipe_cli_trains_in_mixed_bfloat16_and_restores_the_policy(tiny_mnist, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    argv = [str(RECIPE), "--model", "capsnet", "--epochs", "1", "--batch-size", "8", "--steps-per-epoch", "1",
            "--test-limit", "16", "--precision", "mixed_bfloat16", "--output-dir", str(run_dir), "--verbose", "0"]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(RECIPE), run_name="__main__")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["precision"] == "mixed_bfloat16" and np.isfinite(metrics["test"]["loss"])
    assert keras.mixed_precision.global_policy().name == "float32"


def test_continue_from_committed_weights_keeps_the_lr_schedule(tiny_mnist, tmp_path):
    common = dict(model="capsnet", batch_size=64, steps_per_epoch=2, verbose=0)
    training.train(training.TrainConfig(epochs=1, output_dir=str(tmp_path / "a"), **common))
    weights = tmp_path / "a" / "final.weights.npz"
    training.train(
        training.TrainConfig(
            epochs=2, initial_epoch=1, init_weights=str(weights), output_dir=str(tmp_path / "b"), **common
        )
    )
    with open(tmp_path / "b" / "log.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["epoch"] for row in rows] == ["1"]
    assert float(rows[0]["learning_rate"]) == pytest.approx(1e-3 * 0.9)


def test_finished_run_is_not_restarted_by_accident(tmp_path):
    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(FileExistsError, match="holds a finished run"):
        training.train(training.TrainConfig(output_dir=str(tmp_path)))
    # Epochs left but the backup deleted: it would start over, so it is refused.
    lost = tmp_path / "lost"
    lost.mkdir()
    (lost / "progress.json").write_text('{"epochs_completed": 3, "train_seconds": 1.0}')
    with pytest.raises(FileExistsError, match=r"trained 3 of 50 epochs, but its backup/ .* is gone"):
        training.train(training.TrainConfig(output_dir=str(lost)))
    assert not (lost / "config.json").exists()


def test_a_run_whose_backup_is_gone_after_its_last_epoch_finishes_from_its_snapshot(tiny_mnist, tmp_path):
    """Older versions let fit delete backup/ before the final files: a kill
    there left a run that refused to finish. The last epoch's snapshot is
    what fit ended with, so the run finishes from it without training."""
    run_dir = tmp_path / "run"
    config = training.TrainConfig(model="gran1", epochs=1, batch_size=32, steps_per_epoch=1,
                                  output_dir=str(run_dir), verbose=0)
    training.train(config)
    with np.load(run_dir / "snapshot.weights.npz") as archive:
        snapshot = {key: archive[key] for key in archive.files}
    for name in ("metrics.json", "final.weights.npz"):
        (run_dir / name).unlink()
    assert not (run_dir / "backup").exists()
    metrics = training.train(config)
    assert metrics["history"] == {} and metrics["test"]["discriminator_loss"] > 0
    with np.load(run_dir / "final.weights.npz") as final:  # the same float16 weights
        assert sorted(final.files) == sorted(snapshot)
        for key in final.files:
            np.testing.assert_array_equal(final[key], snapshot[key])
    assert (run_dir / "log.csv").read_text().count("\n") == 2  # header and the one epoch


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="precision must be one of"):
        training.TrainConfig(precision="float16").validate()
    with pytest.raises(KeyError, match="Unknown model"):
        training.TrainConfig(model="capsnett").validate()


def test_cosine_schedule_warms_up_then_anneals_to_zero_within_the_epochs():
    decay = training.LearningRateDecay(
        [2e-3], 0.9, schedule="cosine", warmup_epochs=0.5, total_epochs=3, steps_per_epoch=10
    )
    factors = [decay.factor(epoch, batch) for epoch in range(3) for batch in range(10)]
    assert factors[0] == pytest.approx(0.2)  # 1 / 5 of the warm-up's 5 steps
    assert factors[4] == pytest.approx(1.0)  # the warm-up's last step reaches the peak
    assert all(b > a for a, b in zip(factors[:4], factors[1:5]))  # rising
    assert all(b < a for a, b in zip(factors[5:], factors[6:]))  # then strictly down
    # Epoch 1, batch 5: 1.5 epochs in, 1.0 of the 2.5 after the warm-up.
    assert decay.factor(1, 5) == pytest.approx(0.5 * (1 + np.cos(np.pi * 1.0 / 2.5)))
    assert factors[-1] == pytest.approx(0.5 * (1 + np.cos(np.pi * 2.4 / 2.5)))
    assert decay.factor(3, 0) == pytest.approx(0.0, abs=1e-12)
    exponential = training.LearningRateDecay([1e-3], 0.9)
    assert exponential.factor(2, 7) == pytest.approx(0.81)  # per epoch, not per batch


def test_cosine_schedule_sets_every_batch_and_resumes_on_the_same_curve(tiny_mnist, kill_at_epoch, tmp_path):
    config = training.TrainConfig(
        model="capsnet", epochs=2, batch_size=64, steps_per_epoch=2, learning_rate=1e-3,
        learning_rate_schedule="cosine", warmup_epochs=0.5, output_dir=str(tmp_path / "run"),
        verbose=0,
    )
    with pytest.raises(Killed):
        training.train(config, callbacks=[kill_at_epoch(1)])
    training.train(config)
    rows = list(csv.DictReader(open(tmp_path / "run" / "log.csv")))
    schedule = training.LearningRateDecay([1e-3], 0.9, "cosine", 0.5, 2, 2)
    # Logged: the rate of each epoch's last batch (epoch 1 after the restart).
    for row, epoch in zip(rows, (0, 1)):
        assert float(row["learning_rate"]) == pytest.approx(1e-3 * schedule.factor(epoch, 1), rel=1e-5)
    with pytest.raises(ValueError, match="warmup_epochs"):
        training.TrainConfig(epochs=2, warmup_epochs=2).validate()
    with pytest.raises(ValueError, match="learning_rate_schedule"):
        training.TrainConfig(learning_rate_schedule="linear").validate()


def test_progress_is_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    """A kill while progress.json is written leaves the previous one intact
    (the new record goes to a temporary file that replaces it at once); a
    plain write_text would leave half a JSON file that crashes the resume."""
    model = caps_zoo.create_model("gran1")
    backup = training.RunBackup(str(tmp_path / "backup"), double_checkpoint=True)
    backup.set_model(model)
    snapshot = training.EpochCommit(tmp_path, backup)
    snapshot.set_model(model)
    snapshot.on_epoch_begin(0)
    snapshot.on_epoch_end(0)
    before = (tmp_path / "progress.json").read_text()
    assert json.loads(before)["epochs_completed"] == 1

    real_write_text = Path.write_text

    def torn(self, text, *args, **kwargs):  # half the bytes, then the kill
        real_write_text(self, text[: len(text) // 2])
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(Path, "write_text", torn)
    snapshot.on_epoch_begin(1)
    with pytest.raises(KeyboardInterrupt):
        snapshot.on_epoch_end(1)
    assert (tmp_path / "progress.json").read_text() == before
    assert training.backup_epochs(tmp_path) == 1  # the backup's metadata was not torn either


def test_a_second_training_on_a_busy_run_directory_is_refused(tmp_path):
    config = training.TrainConfig(model="gran1", epochs=1, output_dir=str(tmp_path / "run"))
    (tmp_path / "run").mkdir()
    with training.run_lock(tmp_path / "run"):  # as a running training holds it
        with pytest.raises(RuntimeError, match="is in use by another training"):
            training.train(config)
    assert not (tmp_path / "run" / "config.json").exists()  # refused before touching anything
    with training.run_lock(tmp_path / "run"):  # released: the next run may start
        pass


def test_a_run_killed_while_writing_its_backup_resumes(tiny_mnist, kill_at_epoch, tmp_path):
    """A torn backup/latest.weights.h5 (kill -9 during the write): the run
    resumes from the previous epoch's backup instead of failing to load."""
    run_dir = tmp_path / "run"
    config = training.TrainConfig(model="gran1", epochs=3, batch_size=64, steps_per_epoch=1,
                                  output_dir=str(run_dir), verbose=0)
    with pytest.raises(Killed):
        training.train(config, callbacks=[kill_at_epoch(2)])
    latest = run_dir / "backup" / "latest.weights.h5"
    latest.write_bytes(latest.read_bytes()[:1000])  # torn
    first_tries = list(csv.DictReader(open(run_dir / "log.csv")))
    metrics = training.train(config)
    assert json.loads((run_dir / "progress.json").read_text())["epochs_completed"] == 3
    assert metrics["test"]["discriminator_loss"] > 0
    # The fallback backup holds 1 epoch: epoch 2 trained again, once in the
    # log, and its first try kept aside.
    assert [row["epoch"] for row in csv.DictReader(open(run_dir / "log.csv"))] == ["0", "1", "2"]
    assert list(csv.DictReader(open(run_dir / "log.retrained.csv"))) == first_tries[1:]
    assert not (run_dir / "backup").exists()  # removed once metrics.json was written


@pytest.mark.parametrize("changes, message", [
    ({"steps_per_epoch": 0}, "steps_per_epoch must be an integer >= 1"),
    ({"steps_per_epoch": -1}, "steps_per_epoch must be an integer >= 1"),
    ({"train_limit": -5}, "train_limit must be an integer >= 1"),
    ({"test_limit": 0}, "test_limit must be an integer >= 1"),
    ({"initial_epoch": 5}, "needs init_weights"),
    ({"initial_epoch": 5, "epochs": 3, "init_weights": "w.weights.npz"}, "leaves nothing to train"),
])
def test_contradictory_training_options_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        training.TrainConfig(model="capsnet", **changes).validate()


def test_every_model_has_one_recipe_and_recipes_refuse_other_families(capsys):
    recipes = {path.stem[len("train_"):]: runpy.run_path(str(path))
               for path in sorted(RECIPE.parent.glob("train_*.py"))}
    assert {"capsnet", "draw", "gran", "rcn", "cvgan"} <= set(recipes)
    trained_by = [model for recipe in recipes.values() for model in recipe["MODELS"]]
    assert sorted(trained_by) == caps_zoo.list_models()  # each model, exactly once
    with pytest.raises(SystemExit):
        recipes["capsnet"]["parse_args"](["--model", "draw"])  # grey, shifted images for a Bernoulli VAE
    assert "invalid choice: 'draw'" in capsys.readouterr().err


@pytest.mark.parametrize("recipe", ["train_gran.py", "ship_weights.py"])
def test_a_negative_frechet_sample_count_is_refused_in_one_line(recipe, capsys):
    """--frechet-samples -1 exited 0 with the score "skipped"."""
    main = runpy.run_path(str(RECIPE.parent / recipe))
    parse = main["parse_args"] if recipe == "train_gran.py" else main["main"]
    required = [] if recipe == "train_gran.py" else ["--run-dir", "r", "--command", "c"]
    with pytest.raises(SystemExit) as exit_info:
        parse([*required, "--frechet-samples", "-1"])
    assert exit_info.value.code == 2
    assert "argument --frechet-samples: must be >= 0 (0 skips the Frechet distance); got -1" in capsys.readouterr().err


def test_a_resume_with_changed_settings_is_refused(tmp_path):
    """Resuming may change how long and how a run trains, not what it trains:
    config.json used to be rewritten silently to describe only the second part."""
    started = training.TrainConfig(model="capsnet", output_dir=str(tmp_path), learning_rate=1e-3)
    (tmp_path / "backup").mkdir()
    (tmp_path / "progress.json").write_text('{"epochs_completed": 1, "train_seconds": 1.0}')
    (tmp_path / "config.json").write_text(json.dumps(dataclasses.asdict(started)))
    before = (tmp_path / "config.json").read_text()
    for changes, shown in [({"learning_rate": 3e-3}, "learning_rate: 0.001 -> 0.003"),
                           ({"model_overrides": {"routing_iterations": [1]}}, "model_overrides"),
                           ({"batch_size": 64}, "batch_size: 128 -> 64")]:
        with pytest.raises(ValueError, match=re.escape(shown)):
            training.train(dataclasses.replace(started, **changes))
    assert (tmp_path / "config.json").read_text() == before
    cosine = dataclasses.replace(started, learning_rate_schedule="cosine")
    (tmp_path / "config.json").write_text(json.dumps(dataclasses.asdict(cosine)))
    with pytest.raises(ValueError, match="epochs: 50 -> 60"):  # the cosine curve ends at epochs
        training.train(dataclasses.replace(cosine, epochs=60))


def test_log_rollback_keeps_a_best_epoch_that_trains_again_and_marks_it(tmp_path):
    """A kill after BestWeights wrote epoch 3 but before its backup: the run
    goes on from epoch 2. The best record stays (real, measured weights), and
    says the run was trained again from there; the retrained row moves aside."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "log.csv").write_text("epoch,loss\n0,3.0\n1,2.0\n2,1.5\n")
    best = {"epoch": 3, "metric": "val_loss", "value": 1.4, "mode": "min"}
    (run_dir / training.BEST_RECORD).write_text(json.dumps(best))
    (run_dir / "progress.json").write_text(json.dumps({"epochs_completed": 3, "train_seconds": 9.0}))
    training.LogRollback(run_dir, initial_epoch=2).on_train_begin()
    assert json.loads((run_dir / training.BEST_RECORD).read_text()) == {**best, "trained_again_from": 2}
    assert (run_dir / "log.csv").read_text().splitlines() == ["epoch,loss", "0,3.0", "1,2.0"]
    assert (run_dir / "log.retrained.csv").read_text().splitlines() == ["epoch,loss", "2,1.5"]
    assert json.loads((run_dir / "progress.json").read_text())["epochs_completed"] == 2
    training.LogRollback(run_dir, initial_epoch=2).on_train_begin()  # idempotent
    assert json.loads((run_dir / training.BEST_RECORD).read_text())["trained_again_from"] == 2


def test_a_fit_refused_while_tracing_leaves_a_model_that_trains():
    """The first fit's trace raised on images of the wrong shape; the
    optimizer's slots were then created on the next trace, which TensorFlow
    refuses ("Creating variables on a non-first call"). LossTermsModel builds
    them at compile (AdversarialModel did already)."""
    keras.utils.set_random_seed(0)
    model = caps_zoo.create_model("capsnet")
    images = np.random.default_rng(0).random((8, 28, 28, 1)).astype("float32")
    labels = np.arange(8) % 10
    with pytest.raises(ValueError, match=r"capsnet expects images of shape \(batch, 28, 28, 1\)"):
        model.fit(images[..., 0], labels, batch_size=8, verbose=0)
    history = model.fit(images, labels, batch_size=8, verbose=0)
    assert np.isfinite(history.history["loss"][0])
