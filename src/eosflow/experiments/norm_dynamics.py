"""Figure 3: the norm ``||w_t||`` falls when the gradient is small and rises when it is large.

Linear regression with BatchNorm (Section 5; :func:`eosflow.losses.linear_regression_bn`) trained
by GD+WD, eq. (1), from a random ``w0``, recording every step. Because ``∇L(w) ⊥ w``,

    ||w_{t+1}||² = (1 − η̂λ̂)² ||w_t||² + η̂² ||∇L(θ_t)||² / ||w_t||²,

so the norm grows at step ``t`` exactly when the spherical gradient exceeds the threshold

    g*_t = ||w_t||² sqrt(1 − (1 − η̂λ̂)²) / η̂,

and the effective learning rate ``η̃_t = η̂/((1−η̂λ̂)||w_t||²)`` (Lemma 3.1) moves the other way:
it grows while the gradient is small (WD shrinks ``w``) and drops after a gradient spike. The run
shows the three phases of Section 4.1: early large gradients (norm up), a fit phase with tiny
gradients (norm down, ``η̃`` up until ``η̃ λ1 ≈ 2``, Theorem 4.4), then the Edge of Stability, where
the loss spikes push the norm up again.

Figure: (a) ``||w_t||`` and ``||∇L(θ_t)||`` with the threshold ``g*_t``; (b) ``η̃_t`` and
``2/λ1(θ_t)`` with ``||∇L(θ_t)||``. Key numbers: how often the sign of ``Δ||w||`` agrees with
``||∇L(θ_t)|| > g*_t`` (an identity of eq. (1); 1.0 up to round-off at near-ties), the norm at the
start, its early maximum and its minimum, the EoS entry step.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from eosflow.chunks import run_chunked
from eosflow.eos import eos_onset
from eosflow.experiments._common import (
    as_float,
    linreg_bn_problem,
    load_arrays,
    load_summary,
    new_figure,
    phase,
    save_figure,
)
from eosflow.runio import RunRecorder
from eosflow.trajectory import PER_RECORD

NAME = "norm-dynamics"
DESCRIPTION = "linear regression with BN: ||w_t|| and the effective LR against ||grad L(theta_t)||"
PAPER = "Figure 3"

_FIELDS = PER_RECORD


def default_config(quick: bool) -> dict:
    """Quick: 3000 steps (about 10 s); full: 10000 steps. ``n = 40`` samples in ``d = 200``."""
    return {
        "quick": bool(quick),
        "seed": 0,
        "n": 40,
        "d": 200,
        "lr": 0.1,
        "wd": 0.01,
        "steps": 3000 if quick else 10000,
        "init_scale": 1.0,
        "sharpness_every": 10,
        "fit_tol": 1e-8,
    }


def validate_config(config: dict) -> None:
    """Raise ``ValueError`` on settings the run cannot use."""
    if config["n"] < 3 or config["d"] < 2:
        raise ValueError("need n >= 3 samples and d >= 2 features")
    if config["sharpness_every"] < 0 or config["steps"] < 2:
        raise ValueError("need sharpness_every >= 0 (0: no sharpness) and steps >= 2")
    if not config["init_scale"] > 0:
        raise ValueError("init_scale must be > 0")


def norm_threshold(norm, lr, wd):
    """``g*``: the spherical gradient norm above which GD+WD increases ``||w||`` (module doc)."""
    return np.square(norm) * np.sqrt(1.0 - (1.0 - lr * wd) ** 2) / lr


def run(config: dict, out: Path, progress: bool = True) -> dict:
    """Run GD+WD, save ``arrays.npz`` and ``summary.json`` in ``out``, return the key numbers.

    Arrays: ``step, w, norm, eff_lr, loss, grad_norm, sharpness`` (every step; sharpness every
    ``sharpness_every`` steps, NaN elsewhere; ``sharpness_every = 0``: none, and no EoS step),
    ``threshold`` (``g*_t``), ``w_final``, ``lr``, ``wd``.
    """
    c = config
    validate_config(c)
    phase(
        NAME,
        f"data (n={c['n']}, d={c['d']}), then GD+WD, {c['steps']} steps, every step "
        "recorded (the first chunk compiles)",
        progress,
    )
    _, loss, w0 = linreg_bn_problem(c)
    rec = RunRecorder(out, NAME, c)
    traj = run_chunked(
        loss,
        w0,
        c["lr"],
        c["wd"],
        int(c["steps"]),
        record_every=1,
        sharpness_every=int(c["sharpness_every"]),
        progress=progress,
        label=NAME,
        on_chunk=rec.on_chunk("", _FIELDS),
        checkpoint=rec.checkpoint(""),
    )
    norm, g = np.asarray(traj.norm), np.asarray(traj.grad_norm)
    thr = norm_threshold(norm, c["lr"], c["wd"])
    rec.update(threshold=thr)

    up = np.diff(norm) > 0  # Δ||w|| at steps 0..T-2
    above = (g > thr)[:-1]
    t_fit = np.flatnonzero(np.asarray(traj.loss) <= c["fit_tol"])
    i_fit = int(t_fit[0]) if t_fit.size else None
    try:
        t_eos = eos_onset(traj, fit_tol=c["fit_tol"])
    except ValueError:
        t_eos = None
    key = {
        "sign_agreement": as_float(np.mean(up == above)),
        "steps_norm_up": int(up.sum()),
        "steps_norm_down": int((~up).sum()),
        "norm_init": as_float(norm[0]),
        "norm_max_before_fit": as_float(norm[: (len(norm) if i_fit is None else i_fit + 1)].max()),
        "norm_min": as_float(norm.min()),
        "norm_end": as_float(norm[-1]),
        "eff_lr_init": as_float(traj.eff_lr[0]),
        "eff_lr_end": as_float(traj.eff_lr[-1]),
        "fit_step": i_fit,
        "eos_step": t_eos,
    }
    rec.finish(
        key,
        dtype=w0.dtype,
        description=DESCRIPTION,
        paper=PAPER,
        notes=[
            "norm rises at step t iff ||grad L(theta_t)|| > g*_t = ||w_t||^2 sqrt(1-(1-lr wd)^2)/lr",
            "sign_agreement = fraction of steps where sign(Δ||w||) matches that test",
        ],
    )
    return key


def plot(out: Path) -> list[Path]:
    """``figure3.png``: (a) ``||w_t||`` vs ``||∇L(θ_t)||``, (b) ``η̃_t`` vs ``||∇L(θ_t)||``."""
    out = Path(out)
    a = load_arrays(out)
    s = load_summary(out)
    st, norm, g, thr = a["step"], a["norm"], a["grad_norm"], a["threshold"]
    sharp = a["sharpness"]
    ok = np.isfinite(sharp)
    fig, ax = new_figure(1, 2, (13, 4.5))
    pa, pb = ax[0]
    up = np.r_[np.diff(norm) > 0, False]

    for panel, y, lab, col in ((pa, norm, "||w_t||", "C0"), (pb, a["eff_lr"], "η̃_t", "C3")):
        panel.plot(st, y, color=col, lw=1.5, label=lab)
        if panel is pb:
            panel.plot(st[ok], 2.0 / sharp[ok], color="C2", lw=1, ls="-.", label="2/λ1(θ_t)")
        panel.set_xlabel("step")
        panel.set_ylabel(lab, color=col)
        lo, hi = panel.get_ylim()
        panel.fill_between(st, lo, hi, where=up, color="C0", alpha=0.12, lw=0, label="||w|| rising")
        panel.set_ylim(lo, hi)
        twin = panel.twinx()
        twin.semilogy(st, np.maximum(g, 1e-18), color="C7", lw=0.8, label="||∇L(θ_t)||")
        twin.set_ylabel("||∇L(θ_t)||", color="C7")
        if panel is pa:
            twin.semilogy(st, thr, color="k", ls="--", lw=0.8, label="threshold g*_t")
        h1, l1 = panel.get_legend_handles_labels()
        h2, l2 = twin.get_legend_handles_labels()
        panel.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper right")
    pa.set_title("(a) ||w_t|| falls when the gradient is small, rises when it is large")
    pb.set_title("(b) effective LR η̃_t rises to 2/λ1 (EoS), drops after gradient spikes")
    c = s["config"]
    fig.suptitle(f"Figure 3: linear regression with BN, GD+WD (lr={c['lr']}, wd={c['wd']})")
    return [save_figure(fig, out / "figure3.png")]
