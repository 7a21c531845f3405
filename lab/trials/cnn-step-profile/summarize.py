"""Medians and means of the PROF lines that timing.patch prints (stderr of mnist_cnn)."""
import collections
import statistics as st
import sys

d = collections.defaultdict(list)
for line in open(sys.argv[1]):
    p = line.split()
    if not p or p[0] != "PROF":
        continue
    if p[1] == "capture":
        d["capture (train_step)"].append(float(p[2]))
        d["KFAC step (ng.step)"].append(float(p[4]))
    elif p[1] == "ud":
        d["U d"].append(float(p[2]))
    elif p[1] == "block":
        for k, v in (("update", p[4]), ("gradient", p[6]), ("direction", p[8])):
            d[f"{p[2]} {k}"].append(float(v))
for k, v in d.items():
    print(f"{k:32s} median {st.median(v):7.2f} ms  mean {st.mean(v):7.2f} ms  (n = {len(v)})")
