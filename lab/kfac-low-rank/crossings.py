#!/usr/bin/env python3
"""Per-second comparison of the MLP runs with KFAC's low-rank inverses (lab/kfac.md,
"Low-rank inverses"): for each seed's evals-seedS.csv (the MNIST example's evals.csv, test
accuracy against training seconds, four evaluations per epoch), the training seconds each
optimizer took for its two epochs, and when it first reached Adam's and SGD's two-epoch
accuracy of the same run.

    python3 lab/kfac-low-rank/crossings.py lab/kfac-low-rank
"""
import csv
import pathlib
import sys


def first_reach(evals, target):
    return next((t for t, a in evals if a >= target), None)


def main() -> None:
    folder = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    files = sorted(folder.glob("evals-seed*.csv"))
    if not files:
        sys.exit(__doc__)
    print("| seed | optimizer | 2 epochs (s) | final acc. | reaches Adam's (s) | reaches SGD's (s) |")
    print("|---|---|---|---|---|---|")
    for f in files:
        seed = f.stem.removeprefix("evals-seed")
        runs = {}
        for r in csv.DictReader(f.open()):
            runs.setdefault(r["optimizer"], []).append(
                (float(r["seconds"]), float(r["test_accuracy"]))
            )
        adam, sgd = runs["adam"][-1][1], runs["sgd"][-1][1]
        for name, evals in runs.items():
            fmt = lambda t: "never" if t is None else f"{t:.2f}"
            print(
                f"| {seed} | {name} | {evals[-1][0]:.2f} | {100 * evals[-1][1]:.2f}% | "
                f"{fmt(first_reach(evals, adam))} | {fmt(first_reach(evals, sgd))} |"
            )


if __name__ == "__main__":
    main()
