"""Train CapsNet or the Deep Capsule Network; resumes if killed.

    python recipes/train_capsnet.py --model deep_capsnet --epochs 50 \
        --precision mixed_bfloat16 --output-dir ~/runs/deep_capsnet

Run the same command again to resume from the last finished epoch. On a
machine without the run directory, continue from committed weights:

    python recipes/train_capsnet.py --model deep_capsnet ... \
        --init-weights saved_models/deep_capsnet/mnist.weights.npz --initial-epoch 7
"""

from caps_zoo.training import TrainConfig, recipe_argument_parser, run_recipe


def parse_args(argv=None):
    parser = recipe_argument_parser(__doc__.splitlines()[0], TrainConfig())
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
