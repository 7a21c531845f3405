#!/bin/bash
# Instructions executed per training step of one benchmark configuration, counted by valgrind's
# callgrind: (run of 60 steps − run of 20 steps) / 40, so that start-up and warm-up cancel.
# Deterministic, unlike wall time on a shared machine: use it to compare two builds of a change.
# One thread (RAYON_NUM_THREADS=1), so that no spinning worker adds instructions.
# Not for KFAC methods with a factor period (`kfac-empirical-fK…`): their two runs hold different
# numbers of factor updates, and the waits of their host-side inverses vary from run to run (for
# `kfac-empirical-f50-r4` the difference came out negative).
#
#   cargo build --release --features flex --example bench
#   lab/scripts/instructions_per_step.sh target/release/examples/bench flex mlp-128 128 ngd-empirical-gram
#
# Arguments: the bench binary, then backend, model, batch and method as `bench --child` takes
# them (methods: `bench --help`).
set -euo pipefail
if [ $# -ne 5 ]; then
    echo "usage: $0 BENCH_BINARY BACKEND MODEL BATCH METHOD" >&2
    exit 2
fi
command -v valgrind >/dev/null || { echo "error: valgrind is not installed" >&2; exit 2; }
bin=$1
shift
count() {
    local out
    if ! out=$(RAYON_NUM_THREADS=1 valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        "$bin" --child "$@" 2>&1 >/dev/null); then
        echo "error: the run failed:" >&2
        grep -v '^==' <<<"$out" >&2
        exit 1
    fi
    awk '/Collected/ {print $4}' <<<"$out"
}
a=$(count "$@" 20)
b=$(count "$@" 60)
echo "$* : $(((b - a) / 40)) instructions per step"
