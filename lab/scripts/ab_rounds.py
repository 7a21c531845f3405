#!/usr/bin/env python3
"""Paired step-time rounds of two builds of the benchmark: SGD (from the new build) as the
reference, then each method from the new build and from the old one, in one loop of fresh
processes, so that a change's effect is read against the same SGD and the same slow spells.

    lab/scripts/ab_rounds.py ROUNDS STEPS BATCH NEW_BENCH OLD_BENCH METHOD...
    BACKEND=ndarray lab/scripts/ab_rounds.py ...   (default flex; MLP-128)

For each: the median step and its ratio to SGD's (median over rounds), and the mean step with
the median over rounds of its ratio and the ratio of the means. The children are run by
`paired_rounds.py`'s helpers: with glibc's mmap threshold fixed, as `bench` runs its own,
unless GLIBC_TUNABLES is set. Keep the old build by copying `target/release/examples/bench`
before rebuilding.
"""
import os
import statistics
import sys

from paired_rounds import child_env, child_times


def main() -> None:
    if len(sys.argv) < 7:
        sys.exit(__doc__)
    rounds, steps, batch, new, old = sys.argv[1:6]
    methods = sys.argv[6:]
    backend = os.environ.get("BACKEND", "flex")
    env = child_env()
    runs = [("sgd", new, "sgd")]
    runs += [(f"{m}@new", new, m) for m in methods]
    runs += [(f"{m}@old", old, m) for m in methods]
    medians = {k: [] for k, _, _ in runs}
    means = {k: [] for k, _, _ in runs}
    for _ in range(int(rounds)):
        for key, binary, method in runs:
            times = child_times(binary, backend, "mlp-128", batch, method, steps, env)
            medians[key].append(statistics.median(times))
            means[key].append(statistics.mean(times))
    for key, _, _ in runs:
        ratios = [a / s for a, s in zip(medians[key], medians["sgd"])]
        mean_ratios = [a / s for a, s in zip(means[key], means["sgd"])]
        of_means = statistics.mean(means[key]) / statistics.mean(means["sgd"])
        print(
            f"{key:34s} median {statistics.median(medians[key]):.3f} ms "
            f"ratio {statistics.median(ratios):.2f} | mean {statistics.median(means[key]):.3f} ms "
            f"ratio-median {statistics.median(mean_ratios):.2f} ratio-of-means {of_means:.2f}"
        )


if __name__ == "__main__":
    main()
