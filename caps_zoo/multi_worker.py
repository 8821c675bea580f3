"""Training on several machines: ``--strategy multi_worker``.

Keras' ``fit`` cannot train under ``tf.distribute.MultiWorkerMirroredStrategy``
today: ``fit`` and ``evaluate`` fail on every worker with ``ValueError:
Attempt to convert a value (PerReplica...)`` in ``Trainer._maybe_symbolic_build``
(it reduces the first distributed batch to build the model; a plain
``keras.Sequential`` fails the same way), an open Keras bug:
https://github.com/keras-team/keras/issues/20585. Until it is fixed, the
zoo's own loop stands in for them (``DistributedLoop``): the model's own
``train_step`` and ``test_step`` under ``strategy.run``, driving the callbacks
``training.py`` gives ``fit`` (log, snapshot, backup, progress, model
selection, learning rate), so that a run behaves and resumes as a
single-process one, with one implementation of each. The loop is kept small
on purpose: once the bug is fixed, ``training.fit_and_evaluate`` returns
``model.fit`` and ``model.evaluate`` under multi_worker too (one line), and
only the cluster and run-directory parts of this module remain.

The cluster comes from the ``TF_CONFIG`` environment variable, as TensorFlow
documents (``read_tf_config``). Every worker runs the same command: the same
steps, the same callbacks, in step (the collective ops wait for all). The
chief (the ``chief`` task, else worker 0) writes the run directory; each of the
others trains on a scratch copy of its resumable state, ``<output-dir>/
workertemp_<index>`` (TF's pattern: the chief writes, the others write to
temporary directories), removed when the run ends. So every worker takes the
chief's decisions (the epoch to resume from, the data seed, when to stop) from
the same files, and writes what the chief writes, where it does not matter.
The output directory must therefore be one that every worker sees (one
machine, or a shared file system).

Data: every worker builds the same input pipeline (same seed, so the same
shuffle and shifts) and keeps its share of every global batch
(``AutoShardPolicy.DATA``: the zoo's data are in-memory arrays, with no files
to shard). ``batch_size`` is the global batch, split over all replicas of all
workers, as under MirroredStrategy. The models' ``train_step`` scales each
replica's loss by the replica count, the optimizers sum the gradients over
all replicas, and the logged metrics (Keras ``Mean`` metrics, whose variables
are summed over every replica when read) are the global batch means, unscaled.

What the loop does not do (nothing in the zoo asks for it): steps_per_execution
> 1, class or sample weights, validation_freq, test-batch callbacks, or
per-batch logs aggregated over workers (the progress bar shows this worker's).
"""

import contextlib
import dataclasses
import json
import os
import re
import shutil
import warnings
from pathlib import Path

import keras
import tensorflow as tf

from caps_zoo import training

TF_CONFIG = "TF_CONFIG"
TRAINING_TASKS = ("chief", "worker")
EXAMPLE_TF_CONFIG = '{"cluster": {"worker": ["host0:12345", "host1:12345"]}, "task": {"type": "worker", "index": 0}}'
ADDRESS = re.compile(r"\S+:\d{1,5}")

# What training.py reads to decide whether and where a run resumes: a worker's
# copy of these makes its decisions the chief's.
RESUME_STATE = ("config.json", "progress.json", "log.csv", training.BEST_RECORD, training.METRICS,
                training.SNAPSHOT_WEIGHTS, "backup")


@dataclasses.dataclass(frozen=True)
class WorkerTask:
    """This process's task in the cluster of ``TF_CONFIG``."""

    type: str  # "chief" or "worker"
    index: int
    has_chief_task: bool

    @property
    def is_chief(self):
        # TensorFlow's rule: the chief task, or worker 0 in a cluster without one.
        return self.type == "chief" or (self.index == 0 and not self.has_chief_task)

    @property
    def scratch_name(self):
        """The folder of a non-chief worker's copy of the run directory."""
        return f"workertemp_{self.index}"


def _invalid(problem, text):
    return ValueError(
        f"TF_CONFIG {problem}; got TF_CONFIG={text!r}. --strategy multi_worker reads the cluster from it "
        f"(as TensorFlow documents): the same cluster on every worker, and each worker's own task, e.g. "
        f"TF_CONFIG='{EXAMPLE_TF_CONFIG}' on the first worker (the chief) and \"index\": 1 on the second."
    )


def read_tf_config(environ=None):
    """The ``WorkerTask`` of ``TF_CONFIG`` (from ``environ``, default the
    process's environment), or a ``ValueError`` that says what is wrong with it."""
    text = (os.environ if environ is None else environ).get(TF_CONFIG)
    if text is None or not text.strip():
        raise _invalid("is not set", text)
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise _invalid(f"is not valid JSON ({error})", text) from None
    if not isinstance(config, dict):
        raise _invalid("must be a JSON object with 'cluster' and 'task'", text)
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise _invalid("needs a 'cluster': {\"worker\": [\"host:port\", ...]}", text)
    others = sorted(set(cluster) - set(TRAINING_TASKS))
    if others:
        raise _invalid(f"has {others} tasks in its cluster; MultiWorkerMirroredStrategy trains on 'chief' "
                       "and 'worker' tasks only (no parameter servers or evaluators)", text)
    for kind, addresses in cluster.items():
        if not (isinstance(addresses, list) and addresses
                and all(isinstance(address, str) and ADDRESS.fullmatch(address) for address in addresses)):
            raise _invalid(f"cluster['{kind}'] must be a list of 'host:port' addresses", text)
    if len(cluster.get("chief", ())) > 1:
        raise _invalid("has more than one chief", text)
    if not isinstance(task, dict) or task.get("type") not in cluster:
        raise _invalid(f"needs a 'task' naming this worker: {{\"type\": one of {sorted(cluster)}, \"index\": "
                       "its place in that list}", text)
    index = task.get("index")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(cluster[task["type"]]):
        raise _invalid(f"task index must be an integer in [0, {len(cluster[task['type']])}) (a place in "
                       f"cluster['{task['type']}']), got {index!r}", text)
    return WorkerTask(task["type"], index, "chief" in cluster)


def make_strategy():
    """A ``MultiWorkerMirroredStrategy`` over the cluster of ``TF_CONFIG``.

    TensorFlow wants it made before any other TensorFlow op of the process
    (``training.train`` makes it first); it waits for every worker to start.
    """
    read_tf_config()  # clear errors before TensorFlow's own
    return tf.distribute.MultiWorkerMirroredStrategy()


def barrier(strategy):
    """Return once every worker has called it (an all-reduce of one number)."""

    @tf.function  # traced: run eagerly, strategy.run warns of its per-call overhead
    def all_reduce_one():
        ones = strategy.run(lambda: tf.constant(1.0))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, ones, axis=None)

    all_reduce_one().numpy()


# How a lost peer surfaces in a collective op: Unavailable mostly (a closed
# connection), DeadlineExceeded / Cancelled / Aborted from a barrier or an
# all-reduce that the cluster gave up on.
PEER_LOST = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError,
             tf.errors.AbortedError)


@contextlib.contextmanager
def worker_run_dir(run_dir, strategy):
    """The run directory this worker trains in: ``run_dir`` on the chief; on
    the others a scratch copy of its resumable state (``RESUME_STATE``),
    removed afterwards. The chief changes ``run_dir`` only after every worker
    copied it. A worker that stops (killed, its machine lost) stops the
    others at their next collective op, with an error that says how to resume."""
    task = read_tf_config()
    run_dir = Path(run_dir)
    worker_dir = run_dir if task.is_chief else _copy_resume_state(run_dir, run_dir / task.scratch_name)
    try:
        barrier(strategy)
        yield worker_dir
    except PEER_LOST as error:
        raise RuntimeError(
            f"a worker of the cluster stopped ({type(error).__name__}); restart every worker with the same "
            f"command (TF_CONFIG unchanged): the run resumes from the last epoch backed up in {run_dir}."
        ) from error
    finally:
        if worker_dir != run_dir:
            shutil.rmtree(worker_dir, ignore_errors=True)


def _copy_resume_state(run_dir, scratch):
    # A killed worker's copy is stale: the chief's directory moved on since.
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    for name in RESUME_STATE:
        source = run_dir / name
        if source.is_dir():
            shutil.copytree(source, scratch / name)
        elif source.is_file():
            shutil.copy2(source, scratch / name)
    return scratch


class DistributedLoop:
    """``fit`` and ``evaluate`` for a model built in a MultiWorkerMirroredStrategy
    scope, with the arguments ``training._fit`` passes Keras' (see the module
    docstring for why, and what it leaves out)."""

    def __init__(self, model):
        self.model = model
        self.strategy = model.distribute_strategy
        self.train_step = self._step_function(model.train_step)
        self.test_step = self._step_function(model.test_step)

    def _step_function(self, step):
        def run_on_replicas(batch):
            return self.strategy.run(step, args=(batch,))

        # Traced as Keras' fit traces its step, with the model's jit_compile
        # (which Keras resolves to False on machines without accelerators).
        return tf.function(run_on_replicas, reduce_retracing=True, jit_compile=self.model.jit_compile)

    def distribute(self, dataset):
        """``dataset`` (of global batches) split over the replicas of every worker."""
        options = tf.data.Options()
        # In-memory arrays: every worker reads the whole pipeline and keeps its
        # replicas' share of each global batch (AUTO would try files first).
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        return self.strategy.experimental_distribute_dataset(dataset.with_options(options))

    def results(self):
        """The model's metrics, read in the cross-replica context: Keras'
        metric variables are SyncOnRead sums, so each read adds up the totals
        and counts of every replica of every worker (all workers must call it)."""
        return {name: float(value) for name, value in self.model.get_metrics_result().items()}

    def _local_results(self, outputs):
        # This worker's first replica's running metrics, for per-batch callbacks
        # (the progress bar), without a collective per step.
        return {name: self.strategy.experimental_local_results(value)[0] for name, value in outputs.items()}

    def _evaluate_distributed(self, batches):
        self.model.reset_metrics()
        for batch in batches:
            self.test_step(batch)
        return self.results()

    def evaluate(self, x):
        """The model's metrics on the dataset ``x``, over all workers."""
        return self._evaluate_distributed(self.distribute(x))

    def fit(self, x, epochs=1, verbose=1, callbacks=None, validation_data=None, shuffle=False, initial_epoch=0,
            steps_per_epoch=None):
        """Keras' ``fit`` for a ``tf.data.Dataset`` ``x``, in its order of
        callbacks; returns the ``History``. ``shuffle`` is ignored, as fit
        ignores it for datasets (they shuffle themselves)."""
        model = self.model
        batches = self.distribute(x)
        validation_batches = None if validation_data is None else self.distribute(validation_data)
        cardinality = int(x.cardinality())
        callbacks = keras.callbacks.CallbackList(
            callbacks, add_history=True, add_progbar=verbose != 0, model=model, verbose=verbose, epochs=epochs,
            steps=steps_per_epoch or (cardinality if cardinality >= 0 else None),
        )
        model.stop_training = False
        callbacks.on_train_begin()
        # BackupAndRestore (training.RunBackup) restores the epoch into this
        # attribute in on_train_begin, and fit reads it there: the same contract.
        initial_epoch = model._initial_epoch or initial_epoch
        iterator = None
        epoch_logs = None
        for epoch in range(initial_epoch, epochs):
            model.reset_metrics()
            callbacks.on_epoch_begin(epoch)
            # As fit: with steps_per_epoch, epochs go on through one pass of the
            # data, and a pass that ends starts the next.
            if iterator is None or steps_per_epoch is None:
                iterator = iter(batches)
            step = 0
            while steps_per_epoch is None or step < steps_per_epoch:
                batch = next(iterator, None)
                if batch is None and step == 0 and steps_per_epoch is not None:
                    iterator = iter(batches)  # the last epoch ended the pass exactly
                    batch = next(iterator, None)
                if batch is None:
                    if steps_per_epoch is not None:
                        warnings.warn(f"the data ran out after {step} of {steps_per_epoch} steps of epoch "
                                      f"{epoch + 1}; the next epoch starts a new pass.", stacklevel=2)
                    iterator = None
                    break
                callbacks.on_train_batch_begin(step)
                outputs = self.train_step(batch)
                callbacks.on_train_batch_end(step, self._local_results(outputs))
                step += 1
                if model.stop_training:
                    break
            epoch_logs = self.results()
            if validation_batches is not None:
                validation = self._evaluate_distributed(validation_batches)
                epoch_logs.update({f"val_{name}": value for name, value in validation.items()})
            callbacks.on_epoch_end(epoch, epoch_logs)
            if model.stop_training:
                break
        model.optimizer.finalize_variable_values(model.trainable_weights)  # as fit (EMA weights)
        callbacks.on_train_end(logs=epoch_logs)
        return model.history
