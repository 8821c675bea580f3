"""The routing-iteration grid (Deep Capsule Network paper, Figs. 9-11): train
deep_capsnet for every (primary route r1, secondary route r2); resumes if killed.

    python recipes/routing_grid.py --output-dir ~/runs/routing_grid \
        --epochs 2 --train-limit 10000 --precision mixed_bfloat16

Every cell trains with the same data, epochs, schedule and seed, with the
validation split choosing its epoch; its test accuracy is measured once on
those weights. Run the same command again to resume a half-done grid (see
``caps_zoo.routing_grid``). At the end it writes ``results.json``,
``results.md`` (the table), ``accuracy.png`` (validation accuracy),
``test_accuracy.png`` and ``seconds_per_epoch.png`` in the output directory.

On a 2-core machine, two processes share the grid, one core each::

    taskset -c 0 python recipes/routing_grid.py ... --shard 1/2 &
    taskset -c 1 python recipes/routing_grid.py ... --shard 2/2

then the same command without ``--shard`` writes the table and figures.
"""

from pathlib import Path

from caps_zoo_options.training import TrainConfig, config_from_args, recipe_argument_parser, shard

# The grid's budget: reduced (16 trainings), the same for every cell.
DEFAULTS = TrainConfig(
    model="deep_capsnet",
    epochs=2,
    train_limit=10000,
    output_dir="runs/routing_grid",
    validation=True,
    selection_metric="val_accuracy",
    selection_mode="max",
)


def parse_args(argv=None):
    parser = recipe_argument_parser(__doc__.splitlines()[0], DEFAULTS, ("deep_capsnet",))
    parser.add_argument("--iterations", type=int, nargs="+", default=[1, 2, 3, 4],
                        help="the routing iterations tried in each stage")
    parser.add_argument("--shard", type=shard, help="I/N: the I-th of N processes sharing the grid (one core "
                                        "each): trains cells I, I+N, ...; a run without --shard "
                                        "then reads them all back and writes the table and figures")
    parser.set_defaults(validation=True)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    # after parse_args: --help must not import TensorFlow (issue 15)
    from caps_zoo import routing_grid
    from caps_zoo.training import use_logical_cpus

    use_logical_cpus(args.logical_cpus)
    # --test-limit: the cells' one test evaluation (training never sees the test split).
    base = config_from_args(args, leave_out=("test_limit",))
    results = routing_grid.run_grid(base, args.output_dir, args.iterations, test_limit=args.test_limit,
                                    shard=args.shard)
    if args.shard:
        print(routing_grid.markdown_table(results) if results else "no cell finished yet")
        return results
    out = Path(args.output_dir)
    (out / "results.md").write_text(routing_grid.markdown_table(results) + "\n")
    budget = f"{base.epochs} epochs of {results[0]['training_images']:,} images, seed {base.seed}"
    routing_grid.heat_map(results, "validation_accuracy", out / "accuracy.png",
                          f"deep_capsnet validation accuracy (%), {budget}", percent=True)
    routing_grid.heat_map(results, "test_accuracy", out / "test_accuracy.png",
                          f"deep_capsnet test accuracy (%), {budget}", percent=True)
    routing_grid.heat_map(results, "seconds_per_epoch", out / "seconds_per_epoch.png",
                          f"seconds per training epoch, {budget}")
    print(routing_grid.markdown_table(results))
    return results


if __name__ == "__main__":
    main()
