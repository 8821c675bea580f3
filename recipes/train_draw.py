"""Train DRAW or DCRW on binarized MNIST; resumes if killed.

    python recipes/train_draw.py --model draw --epochs 50 --output-dir ~/runs/draw
    python recipes/train_draw.py --model dcrw --epochs 50 --output-dir ~/runs/dcrw

Training images are binarized anew every epoch ("stochastic"); the test
bound (Lx + Lz, nats per image) is measured on one fixed binarization of the
10,000 MNIST test images (see ``caps_zoo.data``). Run the same command again
to resume; ``--init-weights`` and ``--initial-epoch`` continue on a machine
without the run directory. The final test metrics go to
``<output-dir>/metrics.json``.

With ``--validation`` the run trains on the first 55,000 training images and
keeps the epoch of the lowest validation bound (``val_loss`` = Lx + Lz on
the fixed binarization of the last 5,000) in ``best.weights.npz`` for
``ship_weights.py``; the test split is not evaluated until it ships.
"""

from caps_zoo_options.training import TrainConfig, recipe_argument_parser

# The models this recipe's data, augmentation and selection are for.
MODELS = ("draw", "dcrw", "dcrw_no_read_attention")

DEFAULTS = TrainConfig(
    model="draw",
    epochs=50,
    batch_size=100,
    output_dir="runs/draw",
    learning_rate=1e-3,
    learning_rate_decay=1.0,
    clip_norm=5.0,
    shift_pixels=0,
    binarize="stochastic",
    selection_metric="val_loss",  # the negative lower bound, nats per image: lower is better
    selection_mode="min",
    verbose=1,
)

ARCHITECTURE_OPTIONS = ("steps", "latent_dim", "read_size", "write_size")


def parse_args(argv=None):
    parser = recipe_argument_parser(__doc__.splitlines()[0], DEFAULTS, MODELS)
    parser.add_argument("--steps", type=int, help="T drawing steps (draw: 64, dcrw: 10)")
    parser.add_argument("--latent-dim", type=int, help="size of each z_t (100)")
    parser.add_argument("--read-size", type=int, help="N of the read glimpse (draw: 2, dcrw: 7)")
    parser.add_argument("--write-size", type=int, help="N of the written patch (5)")
    parser.add_argument("--no-read-attention", action="store_true",
                        help="read the whole image (DRAW without attention)")
    parser.add_argument("--no-write-attention", action="store_true",
                        help="write the whole canvas through a dense layer")
    return parser.parse_args(argv)


def model_overrides(args):
    overrides = {k: getattr(args, k) for k in ARCHITECTURE_OPTIONS if getattr(args, k) is not None}
    if args.no_read_attention:
        overrides["read_attention"] = False
    if args.no_write_attention:
        overrides["write_attention"] = False
    return overrides


def main(argv=None):
    args = parse_args(argv)
    # after parse_args: --help must not import TensorFlow (issue 15)
    from caps_zoo.training import run_recipe

    return run_recipe(args, model_overrides(args))


if __name__ == "__main__":
    main()
