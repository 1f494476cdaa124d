"""Table of Figure 2 on MNIST-1D from the runs' summary.json and arrays.npz (markdown on stdout).

Usage: python docs/figure2_mnist1d_table.py ROOT [--train-acc] [--fit-threshold T]
(ROOT holds the folders ARCH-sSEED of docs/results.md's commands, e.g. /work/runs-mnist).

"fit step": the first record with training accuracy >= T (default 1.0, i.e. 100%: the
``fit_step`` of summary.json); "test acc at fit" is read there and "sharpness at fit" is the first
sharpness value at or after it. ``--fit-threshold 0.99`` gives a 99% fit for runs that never reach
100% (all 4000 training sequences). ``--train-acc`` adds a column "train acc at end" (the last
record). "max after fit": the highest recorded test accuracy from the fit step on; sharpness
"at end": the median over the last 25% of the steps (spherical for the BN runs, the plain top
Hessian eigenvalue for no_bn).
"""

import argparse
import json
from pathlib import Path

import numpy as np


def run_row(out: Path, r: str, threshold: float) -> dict:
    """The table's numbers for run ``r`` of the folder ``out``."""
    k = json.loads((out / "summary.json").read_text())["key_numbers"][r]
    s = "hess_top" if r == "no_bn" else "sharpness"
    with np.load(out / "arrays.npz") as z:
        st, acc, tr = z[f"{r}_step"], z[f"{r}_test_acc"], z[f"{r}_train_acc"]
        sharp = z[f"{r}_{s}"]
    hit = np.flatnonzero(tr >= threshold)
    i = int(hit[0]) if hit.size else None
    ok = np.flatnonzero(np.isfinite(sharp))
    ok = ok[ok >= i] if i is not None else ok[:0]
    return dict(
        fit=None if i is None else int(st[i]),
        at_fit=None if i is None else float(100 * acc[i]),
        train_end=100 * k["train_acc_end"],
        end=float(100 * k["test_acc_end"]),
        end_mean=100 * k["test_acc_end_mean"],
        max_after=None if i is None else float(100 * acc[i:].max()),
        s_fit=float(sharp[ok[0]]) if ok.size else None,
        s_end=k[f"{s}_end"],
    )


def f(v, p=1):
    return "—" if v is None else (f"{v:.{p}f}" if isinstance(v, float) else str(v))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", nargs="?", default=".")
    ap.add_argument("--train-acc", action="store_true", help='add "train acc at end"')
    ap.add_argument("--fit-threshold", type=float, default=1.0, help="fit = train acc >= this")
    a = ap.parse_args()
    rows, means = [], {}
    for arch in ("mlp", "cnn1d"):
        for r in ("bn", "no_wd", "no_bn"):
            for seed in (0, 1, 2):
                out = Path(a.root) / f"{arch}-s{seed}"
                if (out / "summary.json").exists():
                    v = run_row(out, r, a.fit_threshold)
                    rows.append((arch, r, seed, v))
                    means.setdefault((arch, r), []).append(v)

    def tr(v):
        return f" {f(v)} |" if a.train_acc else ""

    def line(arch, r, seed, v, ratio):
        return (
            f"| {arch} | {r} | {seed} | {f(v['fit'])} | {f(v['at_fit'])} | {f(v['end'])} "
            f"({f(v['end_mean'])}) | {f(v['max_after'])} |{tr(v['train_end'])} "
            f"{f(v['s_fit'], 0)} | {f(v['s_end'], 0)} | {f(ratio, 2)} |"
        )

    head = "| arch | run | seed | fit step | test acc at fit | at end (last 10% mean) | max after fit |"
    head += " train acc at end |" if a.train_acc else ""
    print(head + " sharpness at fit | at end | fit/end |")
    print("|---" * (11 if a.train_acc else 10) + "|")
    for arch, r, seed, v in rows:
        print(
            line(arch, r, seed, v, v["s_fit"] / v["s_end"] if v["s_fit"] and v["s_end"] else None)
        )
    for (arch, r), vs in means.items():
        m = {}
        for key in vs[0]:
            xs = [v[key] for v in vs if v[key] is not None]
            m[key] = float(np.mean(xs)) if xs else None
        m["fit"] = None if m["fit"] is None else round(m["fit"])
        ratio = [v["s_fit"] / v["s_end"] for v in vs if v["s_fit"] and v["s_end"]]
        ratio = float(np.mean(ratio)) if ratio else None
        print(line(f"**{arch}**", f"**{r}**", f"**mean of {len(vs)}**", m, ratio))


if __name__ == "__main__":
    main()
