"""Print the CV-VAE family's comparison table and draw their reconstructions side by side.

    python recipes/compare_bottlenecks.py --dataset mnist \
        --figure docs/figures/bottlenecks_mnist.png

The table is the README's (issue 12): every figure comes from the metadata
``recipes/ship_weights.py`` wrote when it measured the shipped weights on
the test split (``caps_zoo.bottleneck_comparison``); this recipe measures
nothing itself. ``--figure`` loads each shipped model and reconstructs the
same first ``--images`` test images, one row per model.
"""

import argparse

DATASETS = ("mnist", "fashion_mnist")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--dataset", default="mnist", choices=DATASETS,
                        help="the pretrained tag (named like the dataset) to compare")
    parser.add_argument("--figure", help="write the reconstructions of every shipped model here (PNG)")
    parser.add_argument("--images", type=int, default=10, help="test images in the figure")
    args = parser.parse_args(argv)
    if args.images < 1:
        parser.error(f"--images must be >= 1; got {args.images}")

    # after parse_args: --help must not import TensorFlow (issue 15)
    import caps_zoo
    from caps_zoo import bottleneck_comparison, code_map_figures, data

    rows = bottleneck_comparison.comparison_rows(args.dataset)
    if not rows:
        parser.error(f"no model of {bottleneck_comparison.FAMILY} ships weights tagged '{args.dataset}' yet.")
    print(bottleneck_comparison.markdown_table(rows))
    for row in rows:
        for note in row["notes"]:
            print(f"- {row['model']}: {note}")
    if args.figure:
        images = data.load_images(args.dataset, "test")[:args.images]
        reconstructions = {row["model"]: caps_zoo.load(row["model"], weights=args.dataset).reconstruct(images)
                           for row in rows}
        code_map_figures.reconstructions_by_model(
            images, reconstructions, args.figure,
            title=f"the first {len(images)} {args.dataset} test images through each model")
        print(f"wrote {args.figure}")


if __name__ == "__main__":
    main()
