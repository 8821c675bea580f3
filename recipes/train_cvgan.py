"""Train the CV-VAE family (cv_vae, vq_vae, their GANs, the reference and the control) on MNIST; resumes if killed.

    python recipes/train_cvgan.py --model cv_vae --validation --epochs 2 --output-dir ~/runs/cv_vae

One recipe and one budget for every bottleneck (issue 12): the same data
(28x28 images in [0, 1], no augmentation), batch 64, Adam at taming's rule
(4.5e-6 x batch, betas 0.5 and 0.9), seed
and epochs; only ``--model`` changes. With ``--validation`` the epoch of the
lowest validation L1 error ships (``best.weights.npz``); the GANs are
selected on the same number, which their adversarial terms do not enter,
among the epochs after their discriminator started (before, their weights
are an autoencoder's: ``AdversarialAutoencoder.reason_not_selectable``).
Run the same command again to resume.
"""

from caps_zoo_options.training import TrainConfig, recipe_argument_parser

MODELS = ("cv_vae", "vq_vae", "cv_vae_reference", "continuous_ae", "cvgan", "vqgan")

GAN_DISCRIMINATOR_START = 860

DEFAULTS = TrainConfig(
    model="cv_vae",
    epochs=2,
    batch_size=64,
    output_dir="runs/cv_vae",
    learning_rate=4.5e-6 * 64,
    learning_rate_decay=1.0,
    adam_beta_1=0.5,
    adam_beta_2=0.9,  # taming's (Keras' default is 0.999)
    shift_pixels=0,
    selection_metric="val_l1_loss",
    selection_mode="min",
    verbose=1,
)


def parse_args(argv=None):
    parser = recipe_argument_parser(__doc__.splitlines()[0], DEFAULTS, MODELS)
    # The model's default (2000 steps) would never start the discriminator in
    # this budget (2 epochs of 860 steps): the recipe starts it after the
    # first epoch, so the GANs train adversarially for the second half.
    parser.add_argument("--discriminator-start", type=int,
                        help="GANs: generator steps before the GAN terms count; None: "
                             f"{GAN_DISCRIMINATOR_START}, one epoch of 55,000 images at batch 64")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    # after parse_args: --help must not import TensorFlow (issue 15)
    from caps_zoo.training import run_recipe

    overrides = {}
    if args.discriminator_start is not None and not args.model.endswith("gan"):
        raise SystemExit(f"--discriminator-start is for the GANs (cvgan, vqgan), not {args.model}.")
    if args.model.endswith("gan"):
        overrides["discriminator_start"] = (GAN_DISCRIMINATOR_START if args.discriminator_start is None
                                            else args.discriminator_start)
    return run_recipe(args, overrides)


if __name__ == "__main__":
    main()
