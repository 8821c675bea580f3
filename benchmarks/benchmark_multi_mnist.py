"""Input-pipeline throughput of MultiMNIST pairs (caps_zoo.data.multi_mnist).

    CAPS_ZOO_DATA=/path/to/npz PYTHONPATH=. python benchmarks/benchmark_multi_mnist.py --batches 300

Times pairs/second of the "train" split (fresh partners and shifts every
epoch, batch 128 by default): the pipeline alone, no model. Builds the
dataset, draws --warmup untimed batches (tracing, first fill of the
prefetch buffer), then times --batches batches. CapsNet trains at ~50-100
images/s on a CPU, so the pipeline should be far faster than that.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from caps_zoo import data  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=300, help="timed batches")
    parser.add_argument("--warmup", type=int, default=5, help="untimed batches first")
    parser.add_argument("--max-shift", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    dataset = data.load("multi_mnist", "train", batch_size=args.batch_size, seed=args.seed,
                        max_shift=args.max_shift, repeat=True)
    iterator = iter(dataset)
    for _ in range(args.warmup):
        next(iterator)
    start = time.perf_counter()
    pairs = 0
    for _ in range(args.batches):
        merged, _targets = next(iterator)
        pairs += int(merged.shape[0])
    elapsed = time.perf_counter() - start
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"multi_mnist train: {pairs} pairs in {elapsed:.2f} s = {pairs / elapsed:,.0f} pairs/s "
          f"(batch {args.batch_size}, max_shift {args.max_shift}, {os.cpu_count()} CPUs, load average {load:.2f})")


if __name__ == "__main__":
    main()
