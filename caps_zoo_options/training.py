"""A training run's configuration and the command line of the training
recipes, without TensorFlow.

``TrainConfig`` (what ``caps_zoo.training.train`` runs: model, data,
schedule, precision, strategy, model selection), the names its fields may
take, and ``recipe_argument_parser``, the options every training recipe
shares. Nothing here imports TensorFlow or Keras, so that a recipe's
``--help`` (and a wrong option) answers at once: recipes parse their
arguments with this module and import ``caps_zoo.training`` only after
(issue 15). ``TrainConfig.validate`` looks the model up in the registry,
which imports the models. ``caps_zoo.training`` re-exports every name here.

It sits outside the ``caps_zoo`` package because ``import caps_zoo``
imports TensorFlow on purpose: it registers every layer and model with
Keras, so that ``keras.saving.load_model`` finds them after a plain
``import caps_zoo`` (the peers' "Unknown layer").
"""

import argparse
import dataclasses

from caps_zoo_options.datasets import GENERATED_DATASETS, VALIDATION_SIZE, check_binarize

# mixed_bfloat16 for CPUs with bf16 units (AVX512_BF16, AMX); mixed_float16
# for GPUs, where every optimizer of a model is loss-scaled (models.base).
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
STRATEGIES = ("default", "mirrored", "multi_worker")
LEARNING_RATE_SCHEDULES = ("exponential", "cosine")
SELECTION_MODES = ("max", "min")


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
    # "exponential" (learning_rate_decay per epoch) or "cosine" (warm-up, then
    # a half cosine to 0 at the end of `epochs`); see caps_zoo.training.LearningRateDecay.
    learning_rate_schedule: str = "exponential"
    warmup_epochs: float = 0.0  # cosine only
    shift_pixels: int = 2
    max_shift: int = None  # multi_mnist: each digit's shift (None: its default, 4); shift_pixels is 0
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
    adam_beta_2: float = 0.999  # Keras' default; the CV-VAE family: 0.9 (taming's VQGAN)
    # Adversarial models: the discriminator's Adam (learning_rate is the
    # generator's); None: the same as the generator's.
    discriminator_learning_rate: float = None
    sample_grids: bool = False  # models with sample(): a PNG of samples after every epoch
    # TensorBoard logs in <output_dir>/tensorboard: scalars per epoch, and the
    # sample grid per epoch for generators with sample_grids (needs the
    # tensorboard package: pip install "caps_zoo[tensorboard]").
    tensorboard: bool = False
    # Model selection (see caps_zoo.training's docstring). validation: train on all
    # but the last validation_size training images and select on those.
    validation: bool = False
    validation_size: int = VALIDATION_SIZE  # tests on tiny datasets pass a small one
    # With validation: the Keras log of the validation split that chooses the
    # epoch to ship, and whether larger ("max") or smaller ("min") is better.
    # None: no selection (the last epoch ships, e.g. GRAN, whose losses do not
    # rank generators).
    selection_metric: str = "val_accuracy"
    selection_mode: str = "max"
    early_stopping_patience: int = None  # stop after this many epochs without improvement
    stop_at: float = None  # stop once the selection metric reaches this (time to accuracy)

    def validate(self):
        # Here, not at the top: the registry imports the models (TensorFlow).
        from caps_zoo import registry

        registry.get_spec(self.model)
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got '{self.precision}'.")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got '{self.strategy}'.")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1.")
        for name in ("steps_per_epoch", "train_limit", "test_limit"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                # 0 and -1 were silently ignored; a negative limit sliced from the end.
                raise ValueError(f"{name} must be an integer >= 1 (or unset), got {value!r}.")
        if self.initial_epoch < 0 or (self.initial_epoch and not self.init_weights):
            raise ValueError(
                f"initial_epoch={self.initial_epoch} needs init_weights (--init-weights): it says how "
                "many epochs those weights were trained for; without them training would start "
                "from scratch at a later epoch of the learning-rate schedule."
            )
        if self.initial_epoch >= self.epochs:
            raise ValueError(
                f"initial_epoch={self.initial_epoch} leaves nothing to train with epochs={self.epochs}: "
                "epochs is the total, including those already done."
            )
        check_binarize(self.binarize)
        if self.dataset in GENERATED_DATASETS:
            if self.shift_pixels:
                raise ValueError(
                    f"shift_pixels must be 0 for '{self.dataset}', which shifts each digit itself "
                    f"(by up to max_shift; recipes/train_capsnet.py sets both); got {self.shift_pixels}."
                )
            if self.max_shift is not None:
                from caps_zoo.data import multi_mnist

                multi_mnist.check_max_shift(self.max_shift)
        elif self.max_shift is not None:
            raise ValueError(f"max_shift is for {GENERATED_DATASETS}, not '{self.dataset}' "
                             "(it shifts with shift_pixels).")
        if self.learning_rate_schedule not in LEARNING_RATE_SCHEDULES:
            raise ValueError(f"learning_rate_schedule must be one of {LEARNING_RATE_SCHEDULES}, "
                             f"got '{self.learning_rate_schedule}'.")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(f"warmup_epochs must be in [0, epochs = {self.epochs}), got {self.warmup_epochs}.")
        for name in ("learning_rate", "discriminator_learning_rate"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value}.")
        self._validate_selection()
        return self

    def _validate_selection(self):
        if self.selection_metric is not None and not str(self.selection_metric).startswith("val_"):
            raise ValueError(
                "selection_metric must be a metric of the validation split, named 'val_<metric>' "
                f"as in log.csv (e.g. 'val_accuracy', 'val_loss'), got {self.selection_metric!r}."
            )
        if self.selection_mode not in SELECTION_MODES:
            raise ValueError(f"selection_mode must be one of {SELECTION_MODES}, got {self.selection_mode!r}.")
        if isinstance(self.validation_size, bool) or not isinstance(self.validation_size, int) \
                or self.validation_size < 1:
            raise ValueError(f"validation_size must be an integer >= 1, got {self.validation_size!r}.")
        if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
            raise ValueError(f"early_stopping_patience must be >= 1, got {self.early_stopping_patience}.")
        stopping = [name for name in ("early_stopping_patience", "stop_at")
                    if getattr(self, name) is not None]
        if stopping and not self.validation:
            raise ValueError(
                f"{' and '.join(stopping)} need validation=True (--validation): without a validation "
                "split, val_* are the test split, and stopping on it would select on the test set."
            )
        if stopping and self.selection_metric is None:
            raise ValueError(
                f"{' and '.join(stopping)} need a selection_metric; this config selects none "
                f"(model {self.model} ships its last epoch)."
            )
        if self.validation and self.test_limit is not None:
            raise ValueError(
                "test_limit limits the test split evaluated during training; with validation=True "
                "the test split is not touched during training (ship_weights evaluates all of it)."
            )


# -- the command line every training recipe shares -----------------------------


def sample_count(text):
    """argparse type of ``--frechet-samples``: an integer >= 0 (0 skips the
    distance; -1 used to exit 0 with the score "skipped")."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (0 skips the Frechet distance); got {value}")
    return value


def shard(text):
    """argparse type of ``--shard``: ``"I/N"`` (1 <= I <= N) as ``(I, N)``,
    the I-th of N processes sharing one job (the routing grid's cells)."""
    try:
        index, count = (int(part) for part in str(text).split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be I/N with integers 1 <= I <= N (e.g. 1/2); got {text!r}") from None
    if not 1 <= index <= count:
        raise argparse.ArgumentTypeError(f"must be I/N with 1 <= I <= N; got {text!r}")
    return index, count


# What the recipes train on (multi_mnist: the capsule recipe only).
TRAINING_DATASETS = ("mnist", "fashion_mnist", "cifar10")


def recipe_argument_parser(description, defaults, models, datasets=TRAINING_DATASETS):
    """An argparse parser of the TrainConfig fields every recipe takes.

    ``defaults`` is the recipe's ``TrainConfig``; ``models`` the registered
    models it trains (its data, augmentation and selection fit them alone:
    the capsule recipe would train DRAW on grey, shifted images); ``datasets``
    the datasets it offers. Every option's help shows its default. Recipes add
    their model's own options and pass them to ``run_recipe`` as
    ``model_overrides``.
    """
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--model", choices=tuple(models), help="the registered model to train")
    parser.add_argument("--dataset", choices=tuple(datasets),
                        help="caps_zoo.data's name (CAPS_ZOO_DATA, or a download)")
    parser.add_argument("--epochs", type=int, help="epochs in all (a resumed run counts the done ones)")
    parser.add_argument("--batch-size", type=int, help="the global batch (split over replicas and workers)")
    parser.add_argument("--precision", choices=PRECISIONS,
                        help="mixed_bfloat16 for CPUs with bf16 units, mixed_float16 for GPUs")
    parser.add_argument("--strategy", choices=STRATEGIES,
                        help="mirrored: the devices of this machine; multi_worker: every worker of the "
                             "cluster in the TF_CONFIG environment variable runs this command (README)")
    parser.add_argument("--output-dir",
                        help="the run directory: config, log.csv, snapshots, backup (rerun to resume)")
    parser.add_argument("--learning-rate", type=float, help="Adam's initial learning rate")
    parser.add_argument("--learning-rate-decay", type=float,
                        help="factor per epoch")
    parser.add_argument("--learning-rate-schedule", choices=LEARNING_RATE_SCHEDULES,
                        help="exponential: x decay per epoch; cosine: warm-up, then to 0 at --epochs")
    parser.add_argument("--warmup-epochs", type=float, help="cosine: linear warm-up (epochs)")
    parser.add_argument("--clip-norm", type=float,
                        help="clip the global gradient norm to this")
    parser.add_argument("--adam-beta-1", type=float, help="Adam's beta_1")
    parser.add_argument("--adam-beta-2", type=float, help="Adam's beta_2")
    parser.add_argument("--train-limit", type=int, help="first N training images")
    parser.add_argument("--test-limit", type=int, help="first N test images")
    parser.add_argument("--steps-per-epoch", type=int, help="batches per epoch (None: the whole split)")
    parser.add_argument("--seed", type=int,
                        help="weights, data order and noise; another seed measures how far a "
                             "figure moves between runs of the same recipe (epoch k draws with "
                             "seed + k: seeds 100 apart share no epoch's draw)")
    parser.add_argument("--init-weights", help="start from a weights file (e.g. a snapshot)")
    parser.add_argument("--initial-epoch", type=int, default=0,
                        help="with --init-weights: epochs already done (continues the LR schedule)")
    parser.add_argument("--logical-cpus", type=int, default=0,
                        help="split the CPU into N logical devices (for --strategy mirrored)")
    parser.add_argument("--verbose", type=int,
                        help="1: progress bar; 2: one line per epoch (for logs written to a file)")
    parser.add_argument("--tensorboard", action="store_true",
                        help="TensorBoard logs in <output-dir>/tensorboard: scalars per epoch, and "
                             "generators' sample grid per epoch (pip install \"caps_zoo[tensorboard]\")")
    selection = (f"ship the epoch of the best {defaults.selection_metric} "
                 f"({defaults.selection_mode}) on them" if defaults.selection_metric
                 else "log on them (the last epoch ships)")
    parser.add_argument(
        "--validation", action="store_true",
        help=f"hold out the last {VALIDATION_SIZE:,} training images: train on the rest, "
             f"{selection}, never touch the test split (ship_weights evaluates it once)")
    parser.add_argument("--validation-size", type=int,
                        help="with --validation: the held-out images (tests on tiny datasets)")
    parser.add_argument("--early-stopping-patience", type=int,
                        help="with --validation: stop after this many epochs without improvement")
    parser.add_argument("--stop-at", type=float,
                        help="with --validation: stop once the selection metric reaches this "
                             "(e.g. 0.995 val_accuracy)")
    # Every TrainConfig field, flags or not, defaults to the recipe's value.
    parser.set_defaults(
        **{field.name: getattr(defaults, field.name) for field in dataclasses.fields(TrainConfig)}
    )
    return parser


def config_from_args(args, leave_out=()):
    """The TrainConfig of a recipe's parsed ``args`` (every field it has, but
    those named in ``leave_out``)."""
    fields = {field.name for field in dataclasses.fields(TrainConfig)} - set(leave_out)
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
