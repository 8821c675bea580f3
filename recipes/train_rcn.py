"""Train RCN (the Recurrent Capsule Network) on binarized MNIST with labels; resumes if killed.

    python recipes/train_rcn.py --validation --epochs 30 --output-dir ~/runs/rcn

As the writers' recipe (``train_draw.py``): training images are binarized
anew every epoch; the bound (Lx + Lz, nats per image) and the classification
error are measured on one fixed binarization. The loss adds the margin loss
of the encoder's class capsules (times ``--margin-weight``) to the bound.
Run the same command again to resume. With ``--validation`` the run trains
on the first 55,000 training images and keeps the epoch of the lowest
validation loss (``val_loss``: the weighted margin loss + the bound) in
``best.weights.npz`` for ``ship_weights.py``.
"""

from caps_zoo_options.training import TrainConfig, recipe_argument_parser

# The models this recipe's data, augmentation and selection are for.
MODELS = ("rcn", "rcn_no_write_attention")

DEFAULTS = TrainConfig(
    model="rcn",
    epochs=30,
    batch_size=100,
    output_dir="runs/rcn",
    learning_rate=1e-3,
    learning_rate_decay=1.0,
    clip_norm=5.0,  # DRAW's recurrences: as the writers' recipe
    shift_pixels=0,
    binarize="stochastic",
    selection_metric="val_loss",  # weighted margin loss + Lx + Lz: lower is better
    selection_mode="min",
    sample_grids=True,
    verbose=1,
)

ARCHITECTURE_OPTIONS = ("steps", "latent_dim", "read_size", "write_size", "margin_weight")


def parse_args(argv=None):
    parser = recipe_argument_parser(__doc__.splitlines()[0], DEFAULTS, MODELS)
    parser.add_argument("--steps", type=int, help="T drawing steps (10)")
    parser.add_argument("--latent-dim", type=int, help="size of each z_t (100)")
    parser.add_argument("--read-size", type=int, help="N of the read glimpse (5)")
    parser.add_argument("--write-size", type=int, help="N of the written patch (5)")
    parser.add_argument("--margin-weight", type=float,
                        help="weight of the margin loss against Lx + Lz (100)")
    parser.add_argument("--no-read-images", action="store_true",
                        help="the encoder LSTM reads capsules and h_dec only (no DRAW glimpse)")
    return parser.parse_args(argv)


def model_overrides(args):
    overrides = {k: getattr(args, k) for k in ARCHITECTURE_OPTIONS if getattr(args, k) is not None}
    if args.no_read_images:
        overrides["read_images"] = False
    return overrides


def main(argv=None):
    args = parse_args(argv)
    # after parse_args: --help must not import TensorFlow (issue 15)
    from caps_zoo.training import run_recipe

    return run_recipe(args, model_overrides(args))


if __name__ == "__main__":
    main()
