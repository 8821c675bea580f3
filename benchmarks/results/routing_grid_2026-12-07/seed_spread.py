"""The seed-to-seed spread of the routing grid's cells: the cells run with
every seed (seed_0 is the whole grid; seed_100 and seed_200 repeat the cells
r1, r2 in {2, 3}), their accuracies per seed, mean and sample standard
deviation. Run from the repository root:

    python benchmarks/results/routing_grid_2026-12-07/seed_spread.py
"""

import json
import statistics
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main():
    runs = {int(path.name.split("_")[1]): json.loads((path / "results.json").read_text())["cells"]
            for path in sorted(HERE.glob("seed_*")) if path.is_dir()}
    seeds = sorted(runs)
    cells = {}
    for seed in seeds:
        for cell in runs[seed]:
            key = (cell["primary_iterations"], cell["secondary_iterations"])
            cells.setdefault(key, {})[seed] = cell
    print("| r1 | r2 | " + " | ".join(f"seed {s} val / test" for s in seeds)
          + " | validation mean (sd) | test mean (sd) |")
    print("| --- | --- | " + " | ".join("---" for _ in seeds) + " | --- | --- |")
    for key in sorted(k for k, by_seed in cells.items() if len(by_seed) == len(seeds)):
        by_seed = cells[key]
        figures = " | ".join(f"{by_seed[s]['validation_accuracy']:.2%} / {by_seed[s]['test_accuracy']:.2%}"
                             for s in seeds)
        summary = []
        for metric in ("validation_accuracy", "test_accuracy"):
            values = [100 * by_seed[s][metric] for s in seeds]
            summary.append(f"{statistics.mean(values):.2f}% ({statistics.stdev(values):.2f})")
        print(f"| {key[0]} | {key[1]} | {figures} | " + " | ".join(summary) + " |")


if __name__ == "__main__":
    main()
