"""Ship a run's weights as pretrained: evaluate them, write saved_models/.

    python recipes/ship_weights.py --run-dir ~/runs/deep_capsnet \
        --command "python recipes/train_capsnet.py --model deep_capsnet ..." \
        [--wall-hours 5.2]

What ships, how it is measured and which files are written:
``caps_zoo.shipping`` (its docstring). This recipe only parses the options.
"""

import argparse

from caps_zoo_options.training import sample_count


def epoch_count(text):
    """argparse type of a count (``--prior-epochs``, ``--test-limit``): an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1; got {value}")
    return value


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--command", required=True, help="the training command of the run")
    parser.add_argument("--wall-hours", type=float,
                        help="training wall time so far; default: from the run's progress.json")
    parser.add_argument("--tag", default="mnist")
    parser.add_argument("--frechet-samples", type=sample_count, default=10_000,
                        help="generators: samples for the Frechet distance (0: no Frechet "
                             "distance or figures)")
    parser.add_argument("--prior-epochs", type=epoch_count, default=20,
                        help="models whose prior is fitted after training (the CV-VAE family's "
                             "PixelCNN over codes): its epochs, on the run's training images")
    parser.add_argument("--notes", default="", help="e.g. how the machine was shared")
    parser.add_argument("--test-limit", type=epoch_count, default=None,
                        help="evaluate the first N test images only (quick checks and tests; the "
                             "metadata states the count, a shipped figure uses all of them)")
    parser.add_argument("--status", help="e.g. why a run was stopped early; default: finished, "
                                         "or in training with the epochs done")
    parser.add_argument("--select", help="how the shipped epoch was chosen: 'validation' or 'last'; "
                                         "default and only choice: the run's own rule (see above)")
    parser.add_argument("--continued-from",
                        help="the earlier run (folder with config.json, log.csv, progress.json) "
                             "whose weights this run started from with --init-weights at epoch 0")
    parser.add_argument("--replace", action="store_true",
                        help="replace the weights already shipped under --tag (refused without it)")
    parser.add_argument("--keep-prior", action="store_true",
                        help="with --replace, re-measuring the same run: keep the prior shipped in "
                             "its weights instead of fitting a new one (checked: the shipped "
                             "network must be this run's)")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    # after parse_args: --help must not import TensorFlow (issue 15)
    from caps_zoo import shipping

    try:
        shipping.ship(args)
    except shipping.ShippingRefused as refusal:
        parser.error(str(refusal))  # exit status 2 and the usage line, as for a bad option


if __name__ == "__main__":
    main()
