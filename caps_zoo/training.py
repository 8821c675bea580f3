"""Experiment config and the training loop every recipe calls.

A run directory holds everything a run writes, and is what makes it
resumable: ``backup/`` (``BackupAndRestore``: weights, optimizer, epoch),
``log.csv`` (one row per epoch, appended across restarts),
``config.json`` (the TrainConfig of the latest start),
``snapshot.weights.npz`` (weights only, float16, rewritten every epoch: small
enough to commit, so a run can move machines), ``progress.json`` (epochs
done, training seconds over all restarts) and, once finished,
``final.weights.npz`` and ``metrics.json``.
"""

import argparse
import dataclasses
import functools
import json
import os
import platform
import time
from pathlib import Path

import keras
import tensorflow as tf

from caps_zoo import data, registry
from caps_zoo import weights as weights_io

PRECISIONS = ("float32", "mixed_bfloat16")
STRATEGIES = ("default", "mirrored")


@dataclasses.dataclass
class TrainConfig:
    model: str = "capsnet"
    dataset: str = "mnist"
    epochs: int = 50
    batch_size: int = 128
    routing_iterations: tuple = None  # per routing stage; None: the model's default
    precision: str = "float32"
    strategy: str = "default"
    output_dir: str = "runs/capsnet"
    learning_rate: float = 1e-3
    learning_rate_decay: float = 0.9  # per epoch, as in the reference CapsNet code
    shift_pixels: int = 2
    train_limit: int = None  # first N training examples (tests, quick runs)
    test_limit: int = None
    steps_per_epoch: int = None
    init_weights: str = None  # start from these weights (e.g. a committed snapshot)
    initial_epoch: int = 0  # with init_weights: the epoch to continue from (keeps the LR schedule)
    seed: int = 0
    verbose: int = 1
    # Beyond the capsule models' needs:
    model_overrides: dict = dataclasses.field(default_factory=dict)  # create_model(**overrides)
    binarize: str = None  # "stochastic" for the Bernoulli VAEs; the test split is then "fixed"
    clip_norm: float = None  # global gradient-norm clipping (Adam's global_clipnorm)
    adam_beta_1: float = 0.9  # GANs: 0.5 (DCGAN)
    # Adversarial models: the discriminator's Adam (learning_rate is the
    # generator's); None: the same as the generator's.
    discriminator_learning_rate: float = None
    sample_grids: bool = False  # models with sample(): a PNG of samples after every epoch

    def validate(self):
        registry.get_spec(self.model)
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got '{self.precision}'.")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got '{self.strategy}'.")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1.")
        data.check_binarize(self.binarize)
        for name in ("learning_rate", "discriminator_learning_rate"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value}.")
        return self


@functools.lru_cache(maxsize=None)
def make_strategy(name):
    """The named strategy, one instance per process.

    Reused rather than rebuilt: two MirroredStrategy objects in one process
    issue clashing collective-op keys (TF fails with a shape mismatch).
    """
    if name == "mirrored":
        # All logical devices of the machine: GPUs, or CPUs split with
        # tf.config.set_logical_device_configuration.
        gpus = tf.config.list_logical_devices("GPU")
        devices = gpus or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    return tf.distribute.get_strategy()


def build_model(config):
    overrides = dict(config.model_overrides)
    if config.routing_iterations is not None:
        overrides["routing_iterations"] = tuple(config.routing_iterations)
    model = registry.create_model(config.model, **overrides)
    if config.init_weights:
        weights_io.load_weights(model, config.init_weights)
    def adam(learning_rate):
        return keras.optimizers.Adam(
            learning_rate, beta_1=config.adam_beta_1, global_clipnorm=config.clip_norm
        )

    adversarial = hasattr(model, "discriminator_optimizer")
    if config.discriminator_learning_rate is not None and not adversarial:
        raise ValueError(
            f"discriminator_learning_rate is for adversarial models (GRAN); {config.model} has no "
            "discriminator."
        )
    if config.sample_grids and not hasattr(model, "sample"):
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
    extra = getattr(model, "discriminator_optimizer", None)
    return [model.optimizer] + ([extra] if extra is not None else [])


class LearningRateDecay(keras.callbacks.Callback):
    """``lr = initial * decay ** epoch`` for every optimizer of the model.

    Keras' LearningRateScheduler sets ``model.optimizer`` alone; a GAN has a
    second optimizer. Logs ``learning_rate`` (and ``discriminator_learning_rate``).
    """

    def __init__(self, initial_rates, decay):
        super().__init__()
        self.initial_rates = list(initial_rates)
        self.decay = decay

    def on_epoch_begin(self, epoch, logs=None):
        for optimizer, rate in zip(model_optimizers(self.model), self.initial_rates):
            optimizer.learning_rate = rate * self.decay**epoch

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        names = ("learning_rate", "discriminator_learning_rate")
        for name, optimizer in zip(names, model_optimizers(self.model)):
            logs[name] = float(keras.ops.convert_to_numpy(optimizer.learning_rate))


class SampleGrid(keras.callbacks.Callback):
    """After every epoch: ``samples/epoch_NNN.png``, a grid of ``model.sample``
    drawn from the same prior noise each time (``seed``), so that epochs compare."""

    def __init__(self, run_dir, count=100, seed=1234):
        super().__init__()
        self.directory = Path(run_dir) / "samples"
        self.count = count
        self.seed = seed

    def on_epoch_end(self, epoch, logs=None):
        from caps_zoo import plots  # matplotlib only where grids are asked for

        self.directory.mkdir(parents=True, exist_ok=True)
        images = self.model.sample(self.count, seed=self.seed)["images"]
        plots.image_grid(images, self.directory / f"epoch_{epoch + 1:03d}.png",
                         title=f"{self.model.name}, epoch {epoch + 1}")


class WeightsSnapshot(keras.callbacks.Callback):
    """After every epoch: a float16 weights-only snapshot, and progress.json
    with the epochs done and the training wall time summed over restarts."""

    def __init__(self, run_dir):
        super().__init__()
        self.path = Path(run_dir) / "snapshot.weights.npz"
        self.progress_path = Path(run_dir) / "progress.json"

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_started = time.time()

    def on_epoch_end(self, epoch, logs=None):
        weights_io.save_weights(self.model, self.path, dtype="float16")
        progress = {"epochs_completed": 0, "train_seconds": 0.0}
        if self.progress_path.is_file():
            progress = json.loads(self.progress_path.read_text())
        progress["epochs_completed"] = epoch + 1
        progress["train_seconds"] = round(
            progress["train_seconds"] + time.time() - self.epoch_started, 1
        )
        self.progress_path.write_text(json.dumps(progress))


def machine_description():
    """E.g. 'x86_64, 2 CPU cores, no GPU': recorded with every measurement."""
    gpus = tf.config.list_physical_devices("GPU")
    accelerators = f"{len(gpus)} GPU(s)" if gpus else "no GPU"
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, {accelerators}"


def _epochs_done(run_dir, config):
    progress = Path(run_dir) / "progress.json"
    if progress.is_file():
        return json.loads(progress.read_text())["epochs_completed"]
    return config.initial_epoch


def train(config, callbacks=()):
    """Train (or resume) one run; return the final test metrics dict.

    A run killed part way resumes from its last finished epoch when called
    again with the same ``output_dir``. Extra Keras ``callbacks`` are added
    to the recipe's own. The global dtype policy is restored afterwards.
    """
    config.validate()
    run_dir = Path(config.output_dir)
    # Epochs were done here but no backup is left (BackupAndRestore deletes it
    # when fit ends): running again would silently start over.
    if (run_dir / "final.weights.npz").is_file() or (
        (run_dir / "progress.json").is_file() and not (run_dir / "backup").is_dir()
    ):
        raise FileExistsError(
            f"'{run_dir}' holds a finished run (its backup is gone, so it would start over). "
            "Use a new --output-dir; to train on from this run, pass --init-weights "
            f"{run_dir / 'snapshot.weights.npz'} --initial-epoch <epochs done>."
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2))
    # A restart must not replay the first epochs' shuffles and shifts.
    seed = config.seed + _epochs_done(run_dir, config)

    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(config.precision)
    try:
        keras.utils.set_random_seed(seed)
        strategy = make_strategy(config.strategy)
        with strategy.scope():
            model = build_model(config)
        return _fit(model, strategy, config, run_dir, seed, callbacks)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def _fit(model, strategy, config, run_dir, seed, callbacks):
    train_data = data.load(
        config.dataset,
        "train",
        batch_size=config.batch_size,
        shift_pixels=config.shift_pixels,
        limit=config.train_limit,
        seed=seed,
        # Equal shares for every replica; a single replica keeps every image.
        drop_remainder=strategy.num_replicas_in_sync > 1,
        binarize=config.binarize,
    )
    test_data = data.load(
        config.dataset,
        "test",
        batch_size=256,
        limit=config.test_limit,
        binarize="fixed" if config.binarize else None,
    )

    callbacks = [
        *callbacks,
        keras.callbacks.BackupAndRestore(str(run_dir / "backup"), save_freq="epoch"),
        # zip() pairs the rates with the model's optimizers: one, or a GAN's two.
        LearningRateDecay(learning_rates(config), config.learning_rate_decay),
        keras.callbacks.CSVLogger(str(run_dir / "log.csv"), append=True),
        WeightsSnapshot(run_dir),
    ]
    if config.sample_grids:
        callbacks.append(SampleGrid(run_dir))
    started = time.time()
    history = model.fit(
        train_data,
        epochs=config.epochs,
        steps_per_epoch=config.steps_per_epoch,
        initial_epoch=config.initial_epoch,
        validation_data=test_data,
        shuffle=False,  # the dataset shuffles itself
        callbacks=callbacks,
        verbose=config.verbose,
    )
    wall_seconds = time.time() - started
    weights_io.save_weights(model, run_dir / "final.weights.npz", dtype="float16")
    test_metrics = model.evaluate(test_data, return_dict=True, verbose=0)
    metrics = {
        "model": config.model,
        "dataset": config.dataset,
        "epochs": config.epochs,
        "test": {k: float(v) for k, v in test_metrics.items()},
        "history": {k: [float(x) for x in v] for k, v in history.history.items()},
        "wall_seconds_this_process": round(wall_seconds, 1),
        "precision": config.precision,
        "strategy": config.strategy,
        "replicas": strategy.num_replicas_in_sync,
        "machine": machine_description(),
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


# -- the command line every training recipe shares -----------------------------


def recipe_argument_parser(description, defaults):
    """An argparse parser of the TrainConfig fields every recipe takes.

    ``defaults`` is the recipe's ``TrainConfig``; recipes add their model's
    own options and pass them to ``run_recipe`` as ``model_overrides``.
    """
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--model")
    parser.add_argument("--dataset")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--precision", choices=PRECISIONS)
    parser.add_argument("--strategy", choices=STRATEGIES)
    parser.add_argument("--output-dir")
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument("--learning-rate-decay", type=float,
                        help="factor per epoch")
    parser.add_argument("--clip-norm", type=float,
                        help="clip the global gradient norm to this")
    parser.add_argument("--adam-beta-1", type=float, help="Adam's beta_1")
    parser.add_argument("--train-limit", type=int, help="first N training images")
    parser.add_argument("--test-limit", type=int, help="first N test images")
    parser.add_argument("--steps-per-epoch", type=int)
    parser.add_argument("--init-weights", help="start from a weights file (e.g. a snapshot)")
    parser.add_argument("--initial-epoch", type=int, default=0,
                        help="with --init-weights: epochs already done (continues the LR schedule)")
    parser.add_argument("--logical-cpus", type=int, default=0,
                        help="split the CPU into N logical devices (for --strategy mirrored)")
    parser.add_argument("--verbose", type=int,
                        help="1: progress bar; 2: one line per epoch (for logs written to a file)")
    # Every TrainConfig field, flags or not, defaults to the recipe's value.
    parser.set_defaults(
        **{field.name: getattr(defaults, field.name) for field in dataclasses.fields(TrainConfig)}
    )
    return parser


def run_recipe(args, model_overrides=None):
    """Train the TrainConfig that parsed ``args`` give; print the test metrics."""
    if args.logical_cpus:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * args.logical_cpus
        )
    fields = {field.name for field in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    if model_overrides:
        config.model_overrides = {**config.model_overrides, **model_overrides}
    metrics = train(config)
    print(json.dumps(metrics["test"], indent=2))
    return metrics
