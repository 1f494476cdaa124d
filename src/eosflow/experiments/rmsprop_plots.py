"""The figures of :mod:`eosflow.experiments.rmsprop` (``rmsprop_plain.png``, ``bn_optimizers.png``),
drawn from a finished run's ``arrays.npz`` and ``summary.json``. Not an experiment itself (no
``NAME``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from eosflow.experiments._common import load_arrays, load_summary, new_figure, save_figure
from eosflow.experiments.rmsprop_runs import OPTS

OPT_LABELS = {
    "adamw": "AdamW",
    "adam": "Adam (no WD)",
    "momentum_wd": "SGD+momentum+WD",
    "momentum": "SGD+momentum (no WD)",
}
OPT_COLORS = {"adamw": "C0", "adam": "C1", "momentum_wd": "C2", "momentum": "C3"}


def plot(out: Path) -> list[Path]:
    """``rmsprop_plain.png`` (part A) and ``bn_optimizers.png`` (part B)."""
    out = Path(out)
    a = load_arrays(out)
    s = load_summary(out)
    kn = s["key_numbers"]
    paths = []
    fig, ax = new_figure(2, 4, (15, 6.5))
    for row, (name, title) in enumerate((("lin", "linear regression"),
                                         ("mc", "matrix completion")), start=0):  # fmt: skip
        p_loss, p_prod, p_sharp, p_win = ax[row]
        p_loss.semilogy(a[f"{name}_step"], np.maximum(a[f"{name}_loss"], 1e-35), lw=0.8,
                        label="train loss")  # fmt: skip
        p_loss.semilogy(a[f"{name}_step"], a[f"{name}_test"], lw=0.8, label="test MSE")
        p_loss.set_title(f"{title} (no BN), scalar RMSprop")
        p_loss.set_xlabel("step")
        p_loss.legend(fontsize=8)
        prod = a[f"{name}_lr_at_sharp"] * a[f"{name}_sharpness"]
        p_prod.plot(a[f"{name}_sharp_step"], prod, ".-", lw=0.8)
        p_prod.axhline(2.0, color="k", ls="--", lw=0.8, label="2")
        eos = kn[f"{name}_rmsprop"].get("eos_step")
        if eos is not None:
            p_prod.axvline(eos, color="gray", ls=":", lw=1, label="EoS entry")
        p_prod.set_title("lr_t · λ1(∇²L(w_t))")
        p_prod.set_xlabel("step")
        p_prod.legend(fontsize=8)
        p_sharp.plot(a[f"{name}_sharp_step"], a[f"{name}_sharpness"], ".-", lw=0.8, label="λ1")
        p_sharp.set_title("sharpness λ1(∇²L(w_t))")
        p_sharp.set_xlabel("step")
        if f"{name}_rank" in a:
            tw = p_sharp.twinx()
            tw.plot(a[f"{name}_step"], a[f"{name}_rank"], color="C3", lw=0.8)
            tw.set_ylabel("effective rank of UVᵀ", color="C3")
        p_win.bar(a[f"{name}_win_step"], a[f"{name}_win_h"], width=0.8)
        p_win.axhline(0, color="k", lw=0.5)
        p_win.set_title("⟨w_t − w_{t−1}, v1⟩, last steps")
        p_win.set_xlabel("step")
    fig.suptitle("Part A: scalar RMSprop on losses without normalization")
    paths.append(save_figure(fig, out / "rmsprop_plain.png"))

    fig, ax = new_figure(2, 4, (15, 6.5))
    for row, (prob, title) in enumerate((("lin", "linear regression + BN"),
                                         ("mc", "matrix completion + BN"))):  # fmt: skip
        p_loss, p_sharp, p_test, p_eta = ax[row]
        for opt in OPTS:
            p = f"{prob}_bn_{opt}_"
            if p + "step" not in a:
                continue
            col, lab = OPT_COLORS[opt], OPT_LABELS[opt]
            p_loss.semilogy(a[p + "step"], np.maximum(a[p + "loss"], 1e-35), lw=0.7, color=col,
                            label=lab)  # fmt: skip
            p_sharp.semilogy(a[p + "sharp_step"], a[p + "sharpness"], ".-", lw=0.8, color=col)
            p_test.semilogy(a[p + "step"], a[p + "test"], lw=0.8, color=col)
            p_eta.plot(a[p + "step"], a[p + "eff_lr"], lw=0.5, color=col)
        p_loss.set_title(f"{title}: train loss")
        p_loss.legend(fontsize=7)
        p_sharp.set_title("spherical sharpness λ1(∇²L(θ_t))")
        p_test.set_title("test loss" + (" (MSE over all entries)" if prob == "mc" else ""))
        p_eta.set_yscale("symlog", linthresh=1e-3)
        p_eta.set_title("measured η̃_t (PGD fit; < 0: uphill)")
        for p_ in ax[row]:
            p_.set_xlabel("step")
    fig.suptitle("Part B: optax optimizers on the BN losses (sphere geometry)")
    paths.append(save_figure(fig, out / "bn_optimizers.png"))
    return paths
