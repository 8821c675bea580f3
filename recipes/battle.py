"""Battle GANs by the Generative Adversarial Metric (Im et al. 2016, Table 2).

    python recipes/battle.py gran1 gran3 gran5 --samples 10000 --json battles.json
    python recipes/battle.py gran1 gran3=runs/gran3/final.weights.npz --versus draw

Every pair of the given GANs battles (``caps_zoo.metrics.gam_battle``) on
the training and test images of ``--dataset``, and the r_test, r_sample and
winner of each battle are printed in the layout of the paper's Table 2, with
the tolerance on r_test used. ``--versus MODEL`` (repeatable) adds Table 3:
each GAN's discriminator error on that model's samples (e.g. DRAW's).

Weights: ``name=path`` gives one model a weights file; otherwise
``--weights`` gives one tag or path for all models, or one per GAN, in
order; the default is the pretrained tag named like the dataset
(``mnist``). ``--json`` writes every result (ratios that are infinite are
written as the string "inf", so the file is strict JSON).
"""

import argparse
import itertools
import json
import math
from pathlib import Path

from caps_zoo_options import datasets


def load_model(name, weights):
    """Every model the recipe uses is loaded here (the tests put stand-ins here)."""
    import caps_zoo  # here, not at the top: --help must not import TensorFlow (issue 15)

    return caps_zoo.load(name, weights=weights)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", metavar="GAN[=WEIGHTS]",
                        help="registered GANs (e.g. gran1 gran3), optionally name=weights-file")
    parser.add_argument("--weights", nargs="+", metavar="TAG_OR_PATH",
                        help="one for all GANs, or one per GAN (default: the dataset's tag)")
    parser.add_argument("--dataset", default="mnist", 
                        choices=[name for name in datasets.DATASETS if name != "mnist_sample"])
    parser.add_argument("--samples", type=int, default=10000, help="samples per generator")
    parser.add_argument("--seed", type=int, default=0)
    # None: metrics.DEFAULT_TOLERANCE, read once TensorFlow may be imported (below).
    parser.add_argument("--tolerance", type=float,
                        help="r_test counts as ~= 1 if |r_test - 1| <= this (eq. 11)")
    parser.add_argument("--versus", action="append", default=[], metavar="MODEL[=WEIGHTS]",
                        help="a non-adversarial model (e.g. draw) whose samples each GAN's "
                             "discriminator judges (Table 3); repeatable")
    parser.add_argument("--json", help="write all results to this file")
    args = parser.parse_args(argv)
    if len(args.models) < 2 and not args.versus:
        parser.error("give at least two GANs to battle, or --versus MODEL")
    weights = args.weights or [args.dataset]
    if len(weights) not in (1, len(args.models)):
        parser.error(f"--weights takes one value or one per GAN ({len(args.models)}); "
                     f"got {len(weights)}")
    if len(weights) == 1:
        weights = weights * len(args.models)
    # after parse_args: --help (and a wrong command) must not import TensorFlow (issue 15)
    from caps_zoo import data, metrics

    if args.tolerance is None:
        args.tolerance = metrics.DEFAULT_TOLERANCE

    gans = [_load(spec, default) for spec, default in zip(args.models, weights)]
    labels = _labels(gans)
    if len(set(labels)) < len(labels):
        parser.error(f"the same model is given twice: {', '.join(labels)}")
    x_train = data.load_images(args.dataset, "train")
    x_test = data.load_images(args.dataset, "test")
    print(f"GAM on {args.dataset}: {len(x_train)} training and {len(x_test)} test images, "
          f"{args.samples} samples per generator (seed {args.seed})\n")

    battles = []
    for (label_1, gan_1), (label_2, gan_2) in itertools.combinations(zip(labels, gans), 2):
        battles.append(metrics.gam_battle(
            gan_1["model"], gan_2["model"], x_train, x_test, n_samples=args.samples,
            seed=args.seed, test_ratio_tolerance=args.tolerance, names=(label_1, label_2)))
    if battles:
        print(metrics.battle_table(battles))

    versus = []
    for spec in args.versus:
        other = _load(spec, args.dataset)
        # One set of samples, judged by every GAN (metrics.sample_error_rate each).
        samples = metrics.draw_samples(other["model"], args.samples, args.seed)
        for label, gan in zip(labels, gans):
            error = metrics.discriminator_error(gan["model"], samples, real=False)
            versus.append({"gan": label, "model": other["model"].name, "weights": other["weights"],
                           "error": error, "n_samples": args.samples})
    if versus:
        print()
        print(metrics.sample_error_table([(row["gan"], row["model"], row["error"]) for row in versus]))

    if args.json:
        report = {
            "dataset": args.dataset,
            "n_train": len(x_train),
            "n_test": len(x_test),
            "n_samples": args.samples,
            "seed": args.seed,
            "tolerance": args.tolerance,
            "gans": {label: gan["weights"] for label, gan in zip(labels, gans)},
            "battles": [battle.to_dict() for battle in battles],
            "versus": versus,
        }
        Path(args.json).write_text(json.dumps(_strict(report), indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return battles, versus


def _load(spec, default_weights):
    """``name`` or ``name=weights`` loaded, with the weights it was given."""
    name, separator, path = spec.partition("=")
    weights = path if separator else default_weights
    return {"model": load_model(name, weights), "weights": weights}


def _labels(gans):
    """The models' names; a name given twice (two weights of one model) gets
    its weights appended, e.g. ``gran3[run2.weights.npz]``."""
    names = [gan["model"].name for gan in gans]
    return [
        f"{name}[{Path(str(gan['weights'])).name}]" if names.count(name) > 1 else name
        for name, gan in zip(names, gans)
    ]


def _strict(value):
    """``value`` with infinite floats as the strings "inf" / "-inf"."""
    if isinstance(value, dict):
        return {key: _strict(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_strict(item) for item in value]
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


if __name__ == "__main__":
    main()
