#!/usr/bin/env python3
"""Paired step-time ratios of benchmark methods, robust to a noisy machine.

Runs `bench --child` for each method in turn, `ROUNDS` times over (a fresh process each), and
reports each method's median step time and the median over rounds of its ratio to the first
method measured in the same round, and the same for the mean step (which amortises a KFAC
factor period's factor updates and inverses). A slow spell then falls on both sides of a ratio.

    cargo build --release --features flex --example bench
    lab/scripts/paired_rounds.py target/release/examples/bench flex mlp-128 128 12 100 \
        sgd ngd-empirical-gram ngd-empirical-gram-cb32

Arguments: bench binary, backend, model, batch, rounds, steps per process, then the methods
(the first is the reference; `bench --help` lists them).

The children run with glibc's mmap threshold fixed, as `bench` runs its own (see `ALLOCATOR` in
`examples/bench.rs`), unless GLIBC_TUNABLES is already set. They inherit the environment, so
`NATGRAD_BENCH_IN_POOL=1` runs every child's measured steps on one of the thread pool's threads
(`examples/bench.rs`).
"""
import os
import statistics
import subprocess
import sys

# The same as `ALLOCATOR` in examples/bench.rs.
ALLOCATOR = "glibc.malloc.mmap_threshold=268435456:glibc.malloc.trim_threshold=268435456"


def child_env() -> dict:
    """The environment of every child: this one, with the allocator fixed unless set."""
    env = dict(os.environ)
    env.setdefault("GLIBC_TUNABLES", ALLOCATOR)
    return env


def child_times(binary, backend, model, batch, method, steps, env) -> list:
    """The step times (ms) of one `bench --child` process; exits with its error if it fails."""
    run = subprocess.run(
        [binary, "--child", backend, model, batch, method, steps],
        capture_output=True, text=True, check=False, env=env,
    )
    fields = run.stdout.split()
    if run.returncode != 0 or len(fields) < 2:
        sys.exit(f"error: `{method}` failed: {run.stderr.strip()}")
    return [float(x) for x in fields[1:]]


def main() -> None:
    if len(sys.argv) < 9:
        sys.exit(__doc__)
    binary, backend, model, batch, rounds, steps = sys.argv[1:7]
    methods = sys.argv[7:]
    env = child_env()
    medians = {m: [] for m in methods}
    means = {m: [] for m in methods}
    for _ in range(int(rounds)):
        for m in methods:
            times = child_times(binary, backend, model, batch, m, steps, env)
            medians[m].append(statistics.median(times))
            means[m].append(statistics.mean(times))
    ref = methods[0]
    print(f"{backend} {model} batch {batch}, {rounds} rounds x {steps} steps, ratios to {ref}")
    for m in methods:
        ratios = [a / s for a, s in zip(medians[m], medians[ref])]
        mean_ratios = [a / s for a, s in zip(means[m], means[ref])]
        print(
            f"  {m:30s} median {statistics.median(medians[m]):7.3f} ms  "
            f"paired ratio median {statistics.median(ratios):.2f}x  "
            f"range {min(ratios):.2f}-{max(ratios):.2f}  |  "
            f"mean {statistics.median(means[m]):7.3f} ms  "
            f"paired ratio median {statistics.median(mean_ratios):.2f}x  "
            f"range {min(mean_ratios):.2f}-{max(mean_ratios):.2f}"
        )


if __name__ == "__main__":
    main()
