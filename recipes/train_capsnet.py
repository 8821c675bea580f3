"""Train CapsNet or the Deep Capsule Network; resumes if killed.

    python recipes/train_capsnet.py --model deep_capsnet --epochs 50 \
        --precision mixed_bfloat16 --output-dir ~/runs/deep_capsnet

Run the same command again to resume from the last finished epoch. On a
machine without the run directory, continue from committed weights:

    python recipes/train_capsnet.py --model deep_capsnet ... \
        --init-weights saved_models/deep_capsnet/mnist.weights.npz --initial-epoch 7
"""

import argparse
import dataclasses
import json

from caps_zoo.training import PRECISIONS, STRATEGIES, TrainConfig, train


def parse_args(argv=None):
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=defaults.model)
    parser.add_argument("--dataset", default=defaults.dataset)
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument(
        "--routing-iterations",
        type=int,
        nargs="+",
        help="iterations per routing stage, e.g. '3' (capsnet) or '2 3' (deep_capsnet)",
    )
    parser.add_argument("--precision", choices=PRECISIONS, default=defaults.precision)
    parser.add_argument("--strategy", choices=STRATEGIES, default=defaults.strategy)
    parser.add_argument("--output-dir", default=defaults.output_dir)
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    parser.add_argument("--learning-rate-decay", type=float, default=defaults.learning_rate_decay)
    parser.add_argument("--train-limit", type=int)
    parser.add_argument("--test-limit", type=int)
    parser.add_argument("--steps-per-epoch", type=int)
    parser.add_argument("--init-weights", help="start from a weights file (e.g. a snapshot)")
    parser.add_argument("--initial-epoch", type=int, default=0,
                        help="with --init-weights: epochs already done (continues the LR schedule)")
    parser.add_argument("--logical-cpus", type=int, default=0,
                        help="split the CPU into N logical devices (for --strategy mirrored)")
    parser.add_argument("--verbose", type=int, default=1,
                        help="1: progress bar; 2: one line per epoch (for logs written to a file)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.logical_cpus:
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * args.logical_cpus
        )
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    metrics = train(config)
    print(json.dumps(metrics["test"], indent=2))


if __name__ == "__main__":
    main()
