"""Figure 2's plot for :mod:`eosflow.experiments.net` (``figure2.png``), drawn from a finished run's
``arrays.npz`` and ``summary.json``. Not an experiment itself (no ``NAME``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from eosflow.experiments._common import (
    COLORS,
    LABELS,
    RUNS,
    load_arrays,
    load_summary,
    new_figure,
    save_figure,
)


def zoom_range(curves, start) -> tuple[float, float] | None:
    """The y range of ``(step, values)`` curves from step ``start`` on (all of each curve when
    ``start`` is None or no record reaches it), padded by 8% of the span and at least 0.5 each way;
    None if no finite value. Figure 2a's accuracy axis: on 0–100% a 2-point gap is invisible."""
    vals = []
    for st, v in curves:
        keep = st >= start if start is not None and np.any(st >= start) else np.ones(len(st), bool)
        vals.append(np.asarray(v, float)[keep])
    vals = np.concatenate(vals) if vals else np.zeros(0)
    vals = vals[np.isfinite(vals)]
    if not vals.size:
        return None
    lo, hi = float(vals.min()), float(vals.max())
    pad = max(0.08 * (hi - lo), 0.5)
    return lo - pad, hi + pad


def plot(out: Path) -> list[Path]:
    """``figure2.png``: (a) test accuracy, (b) spherical sharpness (no-BN: ``λ1(∇²L(w))``),
    (c) train loss, (d) ``η̃_t·λ1`` (EoS at 2), (e) train accuracy, (f) ``||w_t||``."""
    out = Path(out)
    a = load_arrays(out)
    summary = load_summary(out)
    c = summary["config"]
    runs = [r for r in RUNS if f"{r}_step" in a]
    fit = summary["key_numbers"].get("bn", {}).get("fit_step")
    fig, ax = new_figure(2, 3, (14, 7.5))
    (a_test, a_sharp, a_loss), (a_eos, a_train, a_norm) = ax
    for r in runs:
        st, col, lab = a[f"{r}_step"], COLORS[r], LABELS[r]
        for axis, key in ((a_test, "test_acc"), (a_train, "train_acc")):
            acc = a[f"{r}_{key}"]  # NaN between evaluations (fullbatch engine, eval_every)
            ok = np.isfinite(acc)
            axis.plot(st[ok], 100 * acc[ok], color=col, label=lab)
        a_loss.semilogy(st, a[f"{r}_loss"], color=col, label=lab)
        a_norm.semilogy(st, a[f"{r}_norm"], color=col, label=lab)
        sharp = a[f"{r}_hess_top"] if r == "no_bn" else a[f"{r}_sharpness"]
        ok = np.isfinite(sharp)
        slab = lab + (" — λ1(∇²L(w)), not spherical" if r == "no_bn" else "")
        a_sharp.semilogy(st[ok], sharp[ok], ".-" if r == "no_bn" else "-", color=col, label=slab)
        if r != "no_bn":
            a_eos.semilogy(st[ok], (a[f"{r}_eff_lr"] * sharp)[ok], color=col, label=lab)
    for axis in ax.flat:
        if fit is not None:
            axis.axvline(fit, color="gray", ls=":", lw=1)
        axis.set_xlabel("step")
        axis.legend(fontsize=7)
    start = fit if fit is not None else int(0.1 * c["steps"])
    rng = zoom_range([(a[f"{r}_step"], 100 * a[f"{r}_test_acc"]) for r in runs], start)
    if rng is not None:
        a_test.set_ylim(*rng)
    a_test.set(title=f"(a) test accuracy (axis zoomed to step >= {start})", ylabel="%")
    a_sharp.set(title="(b) spherical sharpness λ1(∇²L(θ_t))", ylabel="λ1")
    a_loss.set(title="(c) train loss (cross-entropy)", ylabel="loss")
    a_eos.axhline(2.0, color="k", lw=0.8, ls="--")
    a_eos.set(title="(d) η̃_t·λ1 (EoS at 2)", ylabel="η̃ λ1")
    a_train.set(title="(e) train accuracy", ylabel="%")
    a_norm.set(title="(f) ||w_t||", ylabel="norm")
    arch = {
        "mlp": f"MLP{tuple(c['widths'])}",
        "vgg11": f"VGG-11 x{c['vgg_width']}",
        "resnet20": f"ResNet-20 x{c.get('resnet_width')} ({c['activation']})",
        "cnn1d": f"CNN1D{tuple(c.get('cnn_channels', ()))} k{c.get('cnn_kernel')} s{c.get('cnn_stride')}",
    }[c["arch"]]
    n_train = summary["key_numbers"].get("n_train", "?")
    fig.suptitle(
        f"Figure 2: {arch} on {c['dataset']} ({n_train} training examples), γ={c['logit_scale']}, "
        f"lr={c['lr']}, wd={c['wd']}, {c['steps']} steps (dotted: 100% train accuracy)"
    )
    return [save_figure(fig, out / "figure2.png")]
