"""Train CapsNet or the Deep Capsule Network; resumes if killed.

    python recipes/train_capsnet.py --model deep_capsnet --epochs 50 \
        --precision mixed_bfloat16 --output-dir ~/runs/deep_capsnet

Run the same command again to resume from the last finished epoch. On a
machine without the run directory, continue from committed weights:

    python recipes/train_capsnet.py --model deep_capsnet ... \
        --init-weights saved_models/deep_capsnet/mnist.weights.npz --initial-epoch 7

With ``--validation`` the run trains on the first 55,000 training images,
keeps the epoch of the highest validation accuracy (the last 5,000) in
``best.weights.npz`` for ``ship_weights.py``, and never evaluates the test
split; ``--early-stopping-patience N`` and ``--stop-at 0.995`` stop on the
same validation accuracy:

    python recipes/train_capsnet.py --model capsnet --validation --stop-at 0.995 ...
"""

from caps_zoo.training import TrainConfig, recipe_argument_parser, run_recipe

# TrainConfig's defaults are CapsNet's; with --validation, the shipped epoch
# is the one of the highest validation accuracy.
# The models this recipe's data, augmentation and selection are for.
MODELS = ("capsnet", "deep_capsnet")

DEFAULTS = TrainConfig(selection_metric="val_accuracy", selection_mode="max")


def parse_args(argv=None):
    parser = recipe_argument_parser(__doc__.splitlines()[0], DEFAULTS, MODELS)
    parser.add_argument(
        "--routing-iterations",
        type=int,
        nargs="+",
        help="iterations per routing stage, e.g. '3' (capsnet) or '2 3' (deep_capsnet)",
    )
    return parser.parse_args(argv)


def main(argv=None):
    return run_recipe(parse_args(argv))


if __name__ == "__main__":
    main()
