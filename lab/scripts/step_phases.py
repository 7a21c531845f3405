#!/usr/bin/env python3
"""Where a benchmark step's time goes, from `perf script` output of a `bench --child` run.

Each sample is charged to the first phase (in the order below) whose function is on its
stack, so that a matmul inside the KFAC product counts as the product, not as a matmul:

    RAYON_NUM_THREADS=1 perf record --call-graph dwarf,32768 -F 2000 -o kfac.perf \
        target/release/examples/bench --child flex mlp-128 128 kfac-empirical-f50-r4 1000
    perf script -i kfac.perf > kfac.script
    lab/scripts/step_phases.py kfac.script

One thread, so that every sample is the step's own work on the main thread. Prints the
samples per phase and their share.
"""
import collections
import re
import sys

# (phase, a substring of a function name on the stack), first match wins.
PHASES = [
    ("KFAC two-sided low-rank product", "kfac::apply::both_mul"),
    ("KFAC left inverse joined to the rows' product", "kfac::apply::left_rows_mul"),
    ("KFAC other directions from the rows", "kfac::factored::factored_direction"),
    ("KFAC other directions", "kfac::direction"),
    ("KFAC factor update", "kfac::begin_update"),
    ("KFAC inverses", "kfac::finish_updates"),
    ("backward", "backward"),
    ("forward (Linear layers)", "Linear::forward"),
    ("forward (captured Linear layers)", "Capture>::linear"),
    ("loss", "cross_entropy"),
    ("reused gradients collected", "Factors::reused"),
    ("optimizer update", "optim::"),
]


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    counts = collections.Counter()
    total = 0
    for sample in open(sys.argv[1]).read().split("\n\n"):
        frames = [l.strip() for l in sample.strip().split("\n")[1:]]
        if not frames:
            continue
        total += 1
        names = [re.sub(r"^[0-9a-f]+ ", "", f) for f in frames]
        phase = next(
            (p for p, key in PHASES if any(key in n for n in names)), "other"
        )
        counts[phase] += 1
    print(f"{total} samples")
    for phase, _ in PHASES + [("other", "")]:
        if counts[phase]:
            print(f"  {phase:46s} {counts[phase]:6d}  {100 * counts[phase] / total:5.1f}%")


if __name__ == "__main__":
    main()
