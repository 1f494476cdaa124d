"""Table of Figure 2 on MNIST-1D from the runs' summary.json and arrays.npz (markdown on stdout).

Usage: python docs/figure2_mnist1d_table.py /work/runs-mnist [--train-acc]  (the folders
ARCH-sSEED of docs/results.md's commands). ``--train-acc`` adds a column "train acc at end" (the
last record; runs that never fit the training set have no fit step). "max after fit": the highest recorded test accuracy from the fit step
on; sharpness "at end": the median over the last 25% of the steps (spherical for the BN runs, the
plain top Hessian eigenvalue for no_bn).
"""

import json
import sys
from pathlib import Path

import numpy as np

args = [a for a in sys.argv[1:] if a != "--train-acc"]
train_col = "--train-acc" in sys.argv[1:]
root = Path(args[0] if args else ".")
rows, means = [], {}
for arch in ("mlp", "cnn1d"):
    for r in ("bn", "no_wd", "no_bn"):
        for seed in (0, 1, 2):
            out = root / f"{arch}-s{seed}"
            if not (out / "summary.json").exists():
                continue
            k = json.loads((out / "summary.json").read_text())["key_numbers"][r]
            with np.load(out / "arrays.npz") as z:
                st, acc = z[f"{r}_step"], z[f"{r}_test_acc"]
            fit = k["fit_step"]
            after = acc[st >= fit] if fit is not None else acc[:0]
            s = "hess_top" if r == "no_bn" else "sharpness"
            vals = dict(
                fit=fit,
                at_fit=None if fit is None else 100 * k["test_acc_at_fit"],
                train_end=100 * k["train_acc_end"],
                end=float(100 * k["test_acc_end"]),
                end_mean=100 * k["test_acc_end_mean"],
                max_after=float(100 * after.max()) if after.size else None,
                s_fit=k[f"{s}_at_fit"],
                s_end=k[f"{s}_end"],
            )
            rows.append((arch, r, seed, vals))
            means.setdefault((arch, r), []).append(vals)


def f(v, p=1):
    return "—" if v is None else (f"{v:.{p}f}" if isinstance(v, float) else str(v))


head = "| arch | run | seed | fit step | test acc at fit | at end (last 10% mean) | max after fit |"
head += " train acc at end |" if train_col else ""
print(head + " sharpness at fit | at end | fit/end |")
print("|---" * (11 if train_col else 10) + "|")


def tr(v):
    return f" {f(v)} |" if train_col else ""


for arch, r, seed, v in rows:
    ratio = v["s_fit"] / v["s_end"] if v["s_fit"] and v["s_end"] else None
    print(
        f"| {arch} | {r} | {seed} | {f(v['fit'])} | {f(v['at_fit'])} | {f(v['end'])} ({f(v['end_mean'])}) | "
        f"{f(v['max_after'])} |{tr(v['train_end'])} {f(v['s_fit'], 0)} | {f(v['s_end'], 0)} | {f(ratio, 2)} |"
    )
for (arch, r), vs in means.items():

    def m(key, vs=vs):
        xs = [v[key] for v in vs if v[key] is not None]
        return float(np.mean(xs)) if xs else None

    ratio = [v["s_fit"] / v["s_end"] for v in vs if v["s_fit"] and v["s_end"]]
    print(
        f"| **{arch}** | **{r}** | **mean of {len(vs)}** | {f(m('fit'), 0)} | {f(m('at_fit'))} | {f(m('end'))} ({f(m('end_mean'))}) | "
        f"{f(m('max_after'))} |{tr(m('train_end'))} {f(m('s_fit'), 0)} | {f(m('s_end'), 0)} | {f(float(np.mean(ratio)) if ratio else None, 2)} |"
    )
