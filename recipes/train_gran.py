"""Train GRAN (a recurrent GAN) on MNIST or Fashion-MNIST; resumes if killed.

    python recipes/train_gran.py --model gran3 --epochs 20 --output-dir ~/runs/gran3
    python recipes/train_gran.py --model gran5 --noise-mode every_step --dataset fashion_mnist

Images are grey levels in [0, 1] (the paper's normalisation), unshifted.
Every epoch appends to ``log.csv`` (D and G losses, D's accuracy on real and
generated images, on the training and test splits) and writes
``samples/epoch_NNN.png`` from fixed noise. At the end, ``metrics.json``
holds the test metrics and a Frechet distance between generated images and
the test split, on the features of the zoo's classifier pretrained on the
same dataset (``caps_zoo.metrics.frechet_classifier_distance``; not
Inception FID). Run the same command again to resume.

``--validation`` trains on the first 55,000 training images and logs D's
metrics on the last 5,000 instead of the test split. There is no selection
of an epoch (D's and G's losses do not rank generators): the last epoch
ships, and the end-of-training Frechet distance, measured against the test
split, is left to ``ship_weights.py``, so that the test split is seen once.
"""

import json
from pathlib import Path

from caps_zoo_options.training import TrainConfig, recipe_argument_parser, sample_count

# The models this recipe's data, augmentation and selection are for.
MODELS = ("gran1", "gran3", "gran5")

DEFAULTS = TrainConfig(
    model="gran3",
    epochs=20,
    batch_size=100,  # the paper's
    output_dir="runs/gran3",
    learning_rate=2e-4,  # the generator's; DCGAN's Adam(2e-4, beta_1=0.5)
    discriminator_learning_rate=2e-4,
    adam_beta_1=0.5,
    learning_rate_decay=1.0,
    shift_pixels=0,
    sample_grids=True,
    selection_metric=None,  # no metric-based selection: the last epoch ships
    verbose=1,
)


def parse_args(argv=None):
    parser = recipe_argument_parser(__doc__.splitlines()[0], DEFAULTS, MODELS)
    parser.add_argument("--discriminator-learning-rate", type=float,
                        help="the discriminator's Adam learning rate (--learning-rate is G's)")
    parser.add_argument("--steps", type=int, help="T canvas updates (default: the model's, e.g. gran3: 3)")
    parser.add_argument("--noise-mode", choices=("once", "every_step"),
                        help="z drawn once per image (default) or at every step")
    parser.add_argument("--latent-dim", type=int, help="size of z (60)")
    parser.add_argument("--frechet-samples", type=sample_count, default=10_000,
                        help="generated images for the final Frechet distance (0: skip)")
    return parser.parse_args(argv)


ARCHITECTURE_OPTIONS = ("steps", "noise_mode", "latent_dim")


def model_overrides(args):
    return {key: getattr(args, key) for key in ARCHITECTURE_OPTIONS if getattr(args, key) is not None}


def add_frechet_distance(run_dir, n_samples):
    """Measure the finished run's Frechet distance and add it to its metrics.json."""
    # here, not at the top: --help must not import TensorFlow (issue 15)
    import caps_zoo
    from caps_zoo import metrics
    from caps_zoo.files import write_json_atomically
    from caps_zoo.training import METRICS

    run_dir = Path(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    model = caps_zoo.load(config["model"], weights=str(run_dir / "final.weights.npz"),
                          **config["model_overrides"])
    frechet = metrics.sample_frechet_report(model, config["dataset"], n_samples,
                                            verbose=config.get("verbose", 1))
    results = json.loads((run_dir / METRICS).read_text())
    results["frechet"] = frechet
    write_json_atomically(run_dir / METRICS, results)
    print(json.dumps(frechet, indent=2))
    return results


def main(argv=None):
    args = parse_args(argv)
    # after parse_args: --help must not import TensorFlow (issue 15)
    from caps_zoo import multi_worker
    from caps_zoo.training import METRICS, run_recipe

    overrides = model_overrides(args)
    # The distance is to the test split: a validation run leaves it to
    # ship_weights.py, which measures the shipped weights once.
    measure = args.frechet_samples and not args.validation
    # Under multi_worker the chief measures, alone: the other workers' run
    # directories are scratch, and output_dir is the chief's.
    chief = args.strategy != "multi_worker" or multi_worker.read_tf_config().is_chief
    finished = Path(args.output_dir) / METRICS
    if measure and finished.is_file() and "frechet" not in json.loads(finished.read_text()):
        # Killed after training, before the distance: finish what is missing,
        # if this is the command that trained it (else run_recipe refuses).
        trained = json.loads((Path(args.output_dir) / "config.json").read_text())
        if trained["model"] == (args.model or DEFAULTS.model) and trained["model_overrides"] == overrides:
            if not chief:
                return None  # nothing left to train; the chief adds the distance
            return add_frechet_distance(args.output_dir, args.frechet_samples)
    results = run_recipe(args, overrides)
    if measure and chief:
        results = add_frechet_distance(args.output_dir, args.frechet_samples)
    return results


if __name__ == "__main__":
    main()
