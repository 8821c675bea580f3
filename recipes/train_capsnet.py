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

Overlapping digits (MultiMNIST, Sabour et al. Sec. 6): ``--dataset
multi_mnist`` builds the model for 36x36 pairs (``digits_per_image=2``),
trains on fresh pairs every epoch, and selects on ``val_pair_accuracy``
(both longest capsules are the two labels) of the fixed validation pairs:

    python recipes/train_capsnet.py --model deep_capsnet --dataset multi_mnist --validation ...
"""

from caps_zoo_options.training import TRAINING_DATASETS, TrainConfig, recipe_argument_parser

# TrainConfig's defaults are CapsNet's; with --validation, the shipped epoch
# is the one of the highest validation accuracy.
# The models this recipe's data, augmentation and selection are for.
MODELS = ("capsnet", "deep_capsnet")

DEFAULTS = TrainConfig(selection_metric="val_accuracy", selection_mode="max")


def parse_args(argv=None):
    parser = recipe_argument_parser(__doc__.splitlines()[0], DEFAULTS, MODELS,
                                    datasets=(*TRAINING_DATASETS, "multi_mnist"))
    parser.add_argument(
        "--max-shift", type=int,
        help="multi_mnist: each digit's shift in pixels, each way (default 4, Sabour et al.)",
    )
    parser.add_argument(
        "--routing-iterations",
        type=int,
        nargs="+",
        help="iterations per routing stage, e.g. '3' (capsnet) or '2 3' (deep_capsnet)",
    )
    return parser.parse_args(argv)


# What --dataset multi_mnist changes: the models see 36x36 pairs (their
# shifts are the pairs' own, so no extra shift) and select on pairs.
PAIRS = dict(shift_pixels=0, selection_metric="val_pair_accuracy")
PAIR_MODEL = dict(image_shape=(36, 36, 1), digits_per_image=2)


def main(argv=None):
    args = parse_args(argv)
    # after parse_args: --help must not import TensorFlow (issue 15)
    from caps_zoo.training import run_recipe

    if args.dataset != "multi_mnist":
        return run_recipe(args)
    for name, value in PAIRS.items():
        if getattr(args, name) == getattr(DEFAULTS, name):
            setattr(args, name, value)
    return run_recipe(args, model_overrides=PAIR_MODEL)


if __name__ == "__main__":
    main()
