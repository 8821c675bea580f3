"""kill -9 at chosen points of a training or a shipping, in a real subprocess
(``fault_driver.py``): every run directory must resume or finish with nothing
lost, and shipped weights must never be half replaced unnoticed."""

import csv
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import caps_zoo
from caps_zoo import training
from fault_driver import config

DRIVER = Path(__file__).with_name("fault_driver.py")


def kill_at(run_dir, point):
    """Run the driver to ``point``; it must die of SIGKILL there."""
    done = subprocess.run([sys.executable, str(DRIVER), str(run_dir), point], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == -9, (done.returncode, done.stdout[-2000:], done.stderr[-3000:])


def epochs_in_log(run_dir):
    with open(Path(run_dir) / "log.csv", newline="") as handle:
        return [row["epoch"] for row in csv.DictReader(handle)]


def assert_finished(run_dir, metrics):
    """Both epochs once in the log, the final files there, the backup gone."""
    assert epochs_in_log(run_dir) == ["0", "1"]
    assert json.loads((run_dir / "progress.json").read_text())["epochs_completed"] == 2
    assert json.loads((run_dir / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert np.isfinite(metrics["test"]["generator_loss"])
    caps_zoo.load("gran1", weights=str(run_dir / "final.weights.npz"))
    assert not (run_dir / "backup").exists()


@pytest.mark.parametrize("point, logged, trained_again", [
    ("mid_epoch", ["0"], 1),  # epoch 2 had no backup: trained from its start
    ("first_backup_write", ["0"], 2),  # no backup at all: the run starts again
    ("backup_write", ["0", "1"], 1),  # epoch 2's backup torn: epoch 1's holds
    ("before_final_weights", ["0", "1"], 0),  # all epochs backed up: nothing trains again
    ("before_metrics", ["0", "1"], 0),
])
def test_a_run_killed_at_any_point_resumes_or_finishes(point, logged, trained_again, tiny_mnist, tmp_path):
    run_dir = tmp_path / "run"
    kill_at(run_dir, point)
    assert not (run_dir / "metrics.json").exists()
    assert epochs_in_log(run_dir) == logged
    metrics = training.train(config(run_dir))  # the same call again
    assert_finished(run_dir, metrics)
    assert len(metrics["history"].get("generator_loss", [])) == trained_again
    # An epoch logged before its backup was torn trains again: its first row is kept aside.
    retrained = logged[2 - trained_again:]
    if retrained:
        with open(run_dir / "log.retrained.csv", newline="") as handle:
            assert [row["epoch"] for row in csv.DictReader(handle)] == retrained
    else:
        assert not (run_dir / "log.retrained.csv").exists()


def test_a_second_training_on_a_busy_run_directory_is_refused(tiny_mnist, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom caps_zoo import training\n"
         "with training.run_lock(sys.argv[1]):\n    print('locked', flush=True)\n    time.sleep(600)",
         str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RuntimeError, match=r"is in use by another training \(pid \d+"):
            training.train(config(run_dir))
        assert not (run_dir / "config.json").exists()
    finally:
        holder.kill()
        holder.wait()
    # Killed with the lock held: the operating system released it.
    metrics = training.train(config(run_dir))
    assert_finished(run_dir, metrics)


def test_shipping_killed_between_its_moves_is_detected_on_load_and_finished_by_a_rerun(
        tiny_mnist, scratch_saved_models, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    training.train(config(first))
    training.train(dataclasses.replace(config(second), seed=1))
    ship = runpy_main(Path(__file__).parents[1] / "recipes" / "ship_weights.py")
    ship(["--run-dir", str(first), "--command", "test", "--frechet-samples", "0"])
    shipped = caps_zoo.load_metadata("gran1")

    kill_at(second, "ship")  # new weights moved into place, the old metadata left
    assert caps_zoo.load_metadata("gran1")["weights_sha256"] == shipped["weights_sha256"]
    with pytest.raises(Exception, match="SHA-256"):
        caps_zoo.load("gran1")
    ship(["--run-dir", str(second), "--command", "test", "--frechet-samples", "0", "--replace"])
    assert caps_zoo.load_metadata("gran1")["weights_sha256"] != shipped["weights_sha256"]
    caps_zoo.load("gran1")
    assert not list(Path(caps_zoo.registry.pretrained_paths("gran1", "mnist")[0]).parent.glob(".staging-*"))


def runpy_main(path):
    import runpy

    def run(argv):
        old = sys.argv
        sys.argv = [str(path), *argv]
        try:
            runpy.run_path(str(path), run_name="__main__")
        finally:
            sys.argv = old

    return run
