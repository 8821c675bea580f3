"""``--strategy multi_worker``: two real worker processes on 127.0.0.1
(``multi_worker_driver.py`` runs a recipe's command line in each), against
the single-process path, and killed and restarted.

Tolerance of the comparisons with one process, ``rtol=1e-5``: the same
float32 operations on the same examples with the same weights (and, for the
models that draw noise, the same noise), in another order of summation
(each replica sums its share, the all-reduce adds the shares; oneDNN blocks
a batch of 8 differently from one of 16). That moves a logged mean by float32
rounding, ~1e-7 relative (measured: the first step's loss bit for bit, the
validation loss after it by 1 in 1e7), while the faults this guards against
move it by percents: a loss scaled by the replica count (x 2), a global batch
seen in part or twice, metrics averaged over one worker only.
"""

import csv
import json
import os
import runpy
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from caps_zoo import data, multi_worker, training

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
DRIVER = Path(__file__).with_name("multi_worker_driver.py")
RTOL = 1e-5  # see the module docstring
# Both workers on one core: the tests check what the workers compute, and
# leave the machine's other cores to whatever else runs there.
PIN = ["taskset", "-c", "0"] if shutil.which("taskset") else []
TIMEOUT = 900  # seconds for one pair of workers (~1 min on one quiet core)

# Each model's smallest command: 1 step per epoch of 16 images (8 per worker).
TINY = ["--batch-size", "16", "--steps-per-epoch", "1"]
CAPSNET = ("train_capsnet.py", ["--model", "capsnet", "--routing-iterations", "1", *TINY,
                                "--validation", "--validation-size", "32"])
DCRW = ("train_draw.py", ["--model", "dcrw", "--steps", "2", *TINY, "--test-limit", "32"])
GRAN1 = ("train_gran.py", ["--model", "gran1", *TINY, "--test-limit", "32", "--frechet-samples", "0"])


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


class Worker:
    """One worker process; its output goes to a file (two pipes left unread
    could fill and block it)."""

    def __init__(self, process, log_path, state_path):
        self.process = process
        self.log_path = log_path
        self.state_path = state_path

    def output(self):
        return self.log_path.read_text()[-4000:]


@pytest.fixture
def start_pair(tmp_path):
    """``start_pair(recipe, args, run_dir, kill_at_epoch=(-1, -1))``: two
    workers of ``recipe`` on free 127.0.0.1 ports; each kills itself as its
    ``kill_at_epoch`` begins (-1: never). Leftover workers are killed (by
    their PID) at the end of the test."""
    started = []

    def start(recipe, args, run_dir, kill_at_epoch=(-1, -1)):
        attempt = len(started) // 2
        cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
        pair = []
        for index in range(2):
            environment = {
                **os.environ,
                "TF_CPP_MIN_LOG_LEVEL": "2",
                data.DATA_ENV: os.environ[data.DATA_ENV],  # the tiny_mnist folder
                multi_worker.TF_CONFIG: json.dumps({"cluster": cluster,
                                                    "task": {"type": "worker", "index": index}}),
            }
            log_path = tmp_path / f"worker{index}.attempt{attempt}.log"
            state_path = tmp_path / f"worker{index}.attempt{attempt}.state.npz"
            command = [*PIN, sys.executable, str(DRIVER), str(RECIPES / recipe), str(state_path),
                       str(kill_at_epoch[index]), "--strategy", "multi_worker", "--output-dir", str(run_dir),
                       "--verbose", "0", *args]
            with open(log_path, "w") as log:
                process = subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT)
            pair.append(Worker(process, log_path, state_path))
        started.extend(pair)
        return pair

    yield start
    for worker in started:
        if worker.process.poll() is None:
            worker.process.kill()
            worker.process.wait()


def wait(pair, expected=(0, 0)):
    """Wait for both workers; assert their exit codes."""
    deadline = time.monotonic() + TIMEOUT
    for worker in pair:
        try:
            worker.process.wait(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker still running after {TIMEOUT} s:\n{worker.output()}")
    codes = tuple(worker.process.returncode for worker in pair)
    assert codes == tuple(expected), "\n\n".join(worker.output() for worker in pair)


def log_rows(run_dir):
    with open(Path(run_dir) / "log.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def assert_rows_close(rows, expected):
    assert rows and expected
    assert [list(row) for row in rows] == [list(row) for row in expected]  # the same columns, in order
    for row, reference in zip(rows, expected):
        for column, value in reference.items():
            assert float(row[column]) == pytest.approx(float(value), rel=RTOL), column


def load_state(path):
    with np.load(path) as archive:
        return {str(name): archive[f"{index:04d}"] for index, name in enumerate(archive["__paths__"])}


def assert_workers_hold_equal_weights(pair, trained_paths=None):
    """Every variable equal on both workers, bit for bit: each applies the
    same all-reduced gradients to the same weights. But batch-norm moving
    statistics: Keras 3 keeps them per replica under every tf.distribute
    strategy (aggregation "none", as in MirroredStrategy on one machine),
    each of its own local batches; the chief's (replica 0's) ship."""
    first, second = (load_state(worker.state_path) for worker in pair)
    assert list(first) == list(second)
    per_replica = [path for path in first if "moving_" in path]
    for path in first:
        if path not in per_replica:
            np.testing.assert_array_equal(first[path], second[path], err_msg=path)
    return first, per_replica


def run_recipe_in_this_process(recipe, args, monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(RECIPES / recipe), *args])
    runpy.run_path(str(RECIPES / recipe), run_name="__main__")


def finished_cleanly(run_dir):
    """What a finished run directory holds: no backup, no worker's scratch copy."""
    run_dir = Path(run_dir)
    assert (run_dir / training.METRICS).is_file()
    assert not (run_dir / "backup").exists()
    assert not list(run_dir.glob("workertemp_*"))


# -- TF_CONFIG ---------------------------------------------------------------


def tf_config(cluster, task):
    return {multi_worker.TF_CONFIG: json.dumps({"cluster": cluster, "task": task})}


TWO_WORKERS = {"worker": ["127.0.0.1:2001", "127.0.0.1:2002"]}


@pytest.mark.parametrize("environment, message", [
    ({}, "TF_CONFIG is not set"),
    ({multi_worker.TF_CONFIG: " "}, "TF_CONFIG is not set"),
    ({multi_worker.TF_CONFIG: "{'cluster': {}}"}, "TF_CONFIG is not valid JSON"),
    ({multi_worker.TF_CONFIG: "[1, 2]"}, "must be a JSON object"),
    (tf_config({}, {"type": "worker", "index": 0}), "needs a 'cluster'"),
    (tf_config({"worker": ["127.0.0.1"]}, {"type": "worker", "index": 0}), "'host:port' addresses"),
    (tf_config({**TWO_WORKERS, "ps": ["127.0.0.1:2003"]}, {"type": "worker", "index": 0}),
     r"\['ps'\] tasks .*no parameter servers"),
    (tf_config(TWO_WORKERS, {"type": "chief", "index": 0}), "needs a 'task' naming this worker"),
    (tf_config(TWO_WORKERS, {"type": "worker", "index": 2}), r"task index must be an integer in \[0, 2\)"),
    (tf_config(TWO_WORKERS, {"type": "worker", "index": "1"}), "task index must be an integer"),
])
def test_a_missing_or_malformed_tf_config_is_refused_with_an_example(environment, message):
    with pytest.raises(ValueError, match=message) as error:
        multi_worker.read_tf_config(environment)
    assert multi_worker.EXAMPLE_TF_CONFIG in str(error.value)


def test_the_chief_is_the_chief_task_or_else_worker_0():
    assert multi_worker.read_tf_config(tf_config(TWO_WORKERS, {"type": "worker", "index": 0})).is_chief
    second = multi_worker.read_tf_config(tf_config(TWO_WORKERS, {"type": "worker", "index": 1}))
    assert not second.is_chief and second.scratch_name == "workertemp_1"
    with_chief = {"chief": ["127.0.0.1:2000"], **TWO_WORKERS}
    assert multi_worker.read_tf_config(tf_config(with_chief, {"type": "chief", "index": 0})).is_chief
    assert not multi_worker.read_tf_config(tf_config(with_chief, {"type": "worker", "index": 0})).is_chief


def test_every_recipe_takes_multi_worker_and_train_refuses_it_without_tf_config(monkeypatch, tmp_path):
    for path in sorted(RECIPES.glob("train_*.py")):
        assert runpy.run_path(str(path))["parse_args"](["--strategy", "multi_worker"]).strategy == "multi_worker"
    monkeypatch.delenv(multi_worker.TF_CONFIG, raising=False)
    config = training.TrainConfig(model="gran1", strategy="multi_worker", output_dir=str(tmp_path / "run"))
    with pytest.raises(ValueError, match="TF_CONFIG is not set"):
        training.train(config)
    assert not (tmp_path / "run").exists()  # refused before anything was written


# -- two workers ---------------------------------------------------------------


def test_two_capsnet_workers_log_select_and_finish_as_one_process_does(tiny_mnist, start_pair, tmp_path,
                                                                       monkeypatch):
    """The whole run directory of one epoch of one step, against Keras' fit
    in one process on the same data: log.csv (every column: the step's loss,
    the validation metrics after it, the learning rate), best.json,
    metrics.json; and both workers stop where it stops (--stop-at, checked
    by each worker on its copy of the run directory)."""
    recipe, args = CAPSNET
    args = [*args, "--epochs", "2", "--stop-at", "0.0"]  # any accuracy stops it after epoch 1
    run_dir, single_dir = tmp_path / "multi", tmp_path / "single"
    pair = start_pair(recipe, args, run_dir)
    # Meanwhile, the reference: one process, one replica (capsnet draws no
    # noise, so the replica layout does not matter).
    run_recipe_in_this_process(recipe, [*args, "--output-dir", str(single_dir), "--verbose", "0"], monkeypatch)
    wait(pair)

    assert_rows_close(log_rows(run_dir), log_rows(single_dir))
    best, reference = (json.loads((d / training.BEST_RECORD).read_text()) for d in (run_dir, single_dir))
    assert best["epoch"] == reference["epoch"] == 1 and best["metric"] == "val_accuracy"
    assert best["validation"] == pytest.approx(reference["validation"], rel=RTOL)
    metrics, single = (json.loads((d / training.METRICS).read_text()) for d in (run_dir, single_dir))
    assert metrics["strategy"] == "multi_worker" and metrics["replicas"] == 2
    assert metrics["validation"] == pytest.approx(single["validation"], rel=RTOL)
    assert metrics["selected_epoch"] == 1 and metrics["training_images"] == single["training_images"] == 224
    assert metrics["stopped_early"] == single["stopped_early"] and metrics["stopped_early"].startswith("stop_at")
    assert json.loads((run_dir / "progress.json").read_text())["epochs_completed"] == 1
    finished_cleanly(run_dir)
    assert_workers_hold_equal_weights(pair)


# The models that draw noise: the reference is Keras' fit in this process
# under MirroredStrategy over the two logical CPUs of conftest.py, the
# workers' layout, so that the same replicas draw the same noise
# (builder.replica_normal) for the same halves of the global batch.
# The default test run keeps the GAN (two optimizers, noise per replica);
# the writer (26-100 s here, the same loop) runs with -m slow.
@pytest.mark.parametrize("recipe, args", [
    pytest.param(*DCRW, id="dcrw", marks=pytest.mark.slow),
    pytest.param(*GRAN1, id="gran1"),
])
def test_two_workers_step_as_one_process_with_two_replicas(recipe, args, tiny_mnist, start_pair, tmp_path,
                                                           monkeypatch):
    args = [*args, "--epochs", "1"]
    run_dir, single_dir = tmp_path / "multi", tmp_path / "single"
    pair = start_pair(recipe, args, run_dir)

    load = data.load

    def first_batch_held(name, split, **options):
        # Keras' fit under a strategy iterates the training data once before
        # its first epoch (its symbolic build takes a batch, then restarts the
        # iterator): it would train on the second shuffle. Held, the first
        # global batch is the one the workers train on.
        dataset = load(name, split, **options)
        return tf.data.Dataset.from_tensors(next(iter(dataset))) if split == "train" else dataset

    monkeypatch.setattr(data, "load", first_batch_held)
    run_recipe_in_this_process(recipe, [*args, "--strategy", "mirrored", "--output-dir", str(single_dir),
                                        "--verbose", "0"], monkeypatch)
    wait(pair)

    assert_rows_close(log_rows(run_dir), log_rows(single_dir))
    metrics, single = (json.loads((d / training.METRICS).read_text()) for d in (run_dir, single_dir))
    assert metrics["test"] == pytest.approx(single["test"], rel=RTOL)
    finished_cleanly(run_dir)
    state, per_replica = assert_workers_hold_equal_weights(pair)
    assert bool(per_replica) == (recipe == "train_gran.py")  # GRAN's batch norm; DCRW has none


# -m slow (~55 s: two pairs of worker processes, one after the other): the
# default run keeps the pair tests above and the single-process kills of
# test_fault_injection.py, which resume from the same backup.
@pytest.mark.slow
def test_a_pair_with_a_killed_worker_resumes_from_the_last_epoch_when_restarted(tiny_mnist, start_pair,
                                                                               tmp_path):
    """The chief dies (SIGKILL) as epoch 2 of 2 begins, after epoch 1's
    backup; the other worker stops at its next collective op with an error
    that says what to do. Both restarted, the run trains epoch 2 alone."""
    recipe, args = GRAN1
    args = [*args, "--epochs", "2"]
    run_dir = tmp_path / "run"
    first_try = start_pair(recipe, args, run_dir, kill_at_epoch=(1, -1))
    wait(first_try, expected=(-9, 1))
    assert "a worker of the cluster stopped" in first_try[1].output()
    assert "restart every worker with the same command" in first_try[1].output()
    assert [row["epoch"] for row in log_rows(run_dir)] == ["0"]
    assert training.backup_epochs(run_dir) == 1
    assert not list(run_dir.glob("workertemp_*"))  # the survivor removed its copy
    first_epoch = log_rows(run_dir)

    restarted = start_pair(recipe, args, run_dir)
    wait(restarted)
    rows = log_rows(run_dir)
    assert [row["epoch"] for row in rows] == ["0", "1"]  # epoch 1 once, not repeated
    assert rows[0] == first_epoch[0]
    assert not (run_dir / "log.retrained.csv").exists()
    assert json.loads((run_dir / "progress.json").read_text())["epochs_completed"] == 2
    metrics = json.loads((run_dir / training.METRICS).read_text())
    assert len(metrics["history"]["generator_loss"]) == 1  # the restart trained epoch 2 alone
    assert np.isfinite(metrics["test"]["generator_loss"])
    finished_cleanly(run_dir)
    assert_workers_hold_equal_weights(restarted)
