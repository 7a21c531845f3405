"""The tables of lab/batch-norm.md from the seeds.csv and evals.csv of a folder (made from the
five runs of `mnist_cnn --batch-norm`): `python3 lab/batch-norm/summary.py [FOLDER]`, this
script's folder (the last iterate) by default, `lab/batch-norm/averaged` for `--average 0.99`,
`lab/batch-norm/factor-period` for KFAC with `--kfac-factor-period 10`, `lab/batch-norm/rows`
for the same with the reusing steps' direction from the rows."""
import csv
import os
import statistics as st
import sys

here = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
rows = list(csv.DictReader(open(os.path.join(here, "seeds.csv"))))
evals = {}
for r in csv.DictReader(open(os.path.join(here, "evals.csv"))):
    evals.setdefault((r["seed"], r["optimizer"]), []).append(
        (float(r["seconds"]), float(r["test_accuracy"]))
    )
seeds = sorted({r["seed"] for r in rows})
acc = {(r["seed"], r["optimizer"], r["epoch"]): 100 * float(r["test_accuracy"]) for r in rows}
ratio = {(r["seed"], r["optimizer"]): float(r["step_ratio_vs_sgd"]) for r in rows}
print("| optimizer | epoch 1 (seeds " + " / ".join(seeds) + ") | mean | epoch 2 | mean | median step / SGD's |")
print("|---|---|---|---|---|---|")
for o in ["kfac-empirical", "adam", "sgd"]:
    e1 = [acc[(s, o, "1")] for s in seeds]
    e2 = [acc[(s, o, "2")] for s in seeds]
    rr = [ratio[(s, o)] for s in seeds]
    print(
        f"| {o} | {' / '.join(f'{x:.2f}' for x in e1)} | {st.mean(e1):.2f}% "
        f"| {' / '.join(f'{x:.2f}' for x in e2)} | {st.mean(e2):.2f}% "
        f"| {' / '.join(f'{x:.2f}' for x in rr)} |"
    )
print()
print("| seed | Adam's 2-epoch acc. | Adam's seconds | KFAC first at or above it | SGD's 2-epoch acc. | SGD's seconds | KFAC first at or above it |")
print("|---|---|---|---|---|---|---|")
for s in seeds:
    k = evals[(s, "kfac-empirical")]
    row = [s]
    for o in ["adam", "sgd"]:
        t_final, a_final = evals[(s, o)][-1]
        t = next((t for t, a in k if a >= a_final), None)
        row += [f"{100 * a_final:.2f}%", f"{t_final:.1f} s", "never" if t is None else f"{t:.1f} s"]
    print("| " + " | ".join(row) + " |")
print()
print("| seed | two epochs' training seconds: KFAC / Adam / SGD | KFAC's mean step / SGD's | Adam's / SGD's |")
print("|---|---|---|---|")
for s in seeds:
    t = {o: evals[(s, o)][-1][0] for o in ["kfac-empirical", "adam", "sgd"]}
    print(
        f"| {s} | {t['kfac-empirical']:.1f} / {t['adam']:.1f} / {t['sgd']:.1f} s "
        f"| {t['kfac-empirical'] / t['sgd']:.2f}× | {t['adam'] / t['sgd']:.2f}× |"
    )
