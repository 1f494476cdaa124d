"""Phase diagram over (lr, wd): when GD+WD reaches the Edge of Stability, and what it does there.

Linear regression with BatchNorm (Section 5; :func:`eosflow.losses.linear_regression_bn`), one
``w0 ~ N(0, init_scale² I)`` shared by every configuration, a grid of learning rates ``η̂`` and
weight decays ``λ̂``, all run by one :func:`eosflow.sweep` (one compiled program, sharded
over the available devices). Each run is recorded every ``every`` steps, spherical sharpness
included. Per configuration:

* ``t_fit``: the first recorded step with ``L(θ_t) <= fit_tol``;
* ``t_eos``: EoS entry, :func:`eosflow.eos_onset` — the first recorded step ``>= t_fit`` with
  ``η̃_t λ1(θ_t) >= 2`` (Theorem 4.4);
* the final spherical sharpness and the final relative distance of the induced linear model
  ``(w̃, b̃)`` (eq. (4)) to the min-norm solution (M)
  (:func:`eosflow.losses.relative_distance_to_min_norm`, Theorem 5.1).

**The Section 4.1 prediction, precisely.** Once the loss is fit the gradient is ~0, so eq. (1)
is pure decay, ``||w_{t+1}|| = (1 − η_in)||w_t||`` with ``η_in = η̂λ̂``, and the effective LR
``η̃_t = η̂/((1−η_in)||w_t||²)`` (Lemma 3.1) grows by ``(1 − η_in)^{-2}`` per step, while ``θ_t``
and hence ``λ1(θ_t)`` stay put. Measuring ``η̃`` and ``λ1`` at ``t_fit``, EoS (``η̃λ1 = 2``) comes
after

    Δ_pred = ln(2 / (η̃_{t_fit} λ1(θ_{t_fit}))) / (2 η_in)   steps,

the paper's form (the exact count ``ln(·)/(−2 ln(1 − η_in))`` is smaller by a factor
``1 − η_in/2 + O(η_in²)``, under 1% here; both are saved). We compare it with the measured
``Δ = t_eos − t_fit``: relative error ``(Δ − Δ_pred)/Δ_pred``. Because records are ``every`` steps
apart, the true crossing lies in ``(t_prev, t_eos]`` (``t_prev`` the record before ``t_eos``), so
the measured ``Δ`` overshoots by less than ``every`` steps and the raw error is biased upward by up
to ``every/Δ_pred`` — which dominates when ``Δ_pred`` is a few records (full grid, ``η̂ = 0.4``,
``λ̂ = 0.04``: ``Δ_pred = 10.4``, measured 15, raw error 44%, yet the predicted step 100.4 lies in
the measured window (100, 105]). The *resolved* error is the distance from the predicted step
to that window, over ``Δ_pred`` (0 when the prediction is inside it); the claim
(``prediction_within_tolerance``) is that it is ``<= tolerance`` (15%) for every compared run. Both
errors are saved. Configurations that never fit, that reach ``η̃λ1 >= 2`` at the
fit record already (EoS before the fit: no prediction), or that do not reach EoS within ``steps``
are reported as such and left out of the comparison.

The sweep streams its chunks to ``out/.checkpoints/sweep-<config digest>/`` and resumes from there if the run is
interrupted and started again with the same settings (``--force`` to reuse the folder); the
folder is removed when the run finishes (its contents are in ``arrays.npz``).

Figures: ``phase_diagram.png`` (heatmaps over the grid: EoS entry step, final sharpness, final
distance to (M)) and ``eos_prediction.png`` (predicted vs measured steps from fit to EoS, and
``η̃_t λ1(θ_t)`` against the predicted geometric growth for every configuration).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import jax
import matplotlib
import numpy as np
from matplotlib.colors import LogNorm

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
from eosflow.losses import relative_distance_to_min_norm
from eosflow.runio import RunRecorder
from eosflow.sweeps import sweep, take_config

NAME = "phase-diagram"
DESCRIPTION = (
    "(lr, wd) grid on linear regression with BN: time to EoS vs the Section 4.1 prediction"
)
PAPER = "Section 4.1, Theorem 4.4, Theorem 5.1"

_RECORDS = ("loss", "eff_lr", "sharpness", "norm", "grad_norm")


def default_config(quick: bool) -> dict:
    """Quick: a 3 × 3 grid, 2000 steps (about 30 s on 2 cores). Full: 5 × 5, 10000 steps (21 s on
    one H100, compilation included; several minutes on 2 CPU cores)."""
    return {
        "quick": bool(quick),
        "seed": 0,
        "n": 40,
        "d": 200,
        "lrs": [0.1, 0.2, 0.4] if quick else [0.025, 0.05, 0.1, 0.2, 0.4],
        "wds": [0.005, 0.01, 0.02] if quick else [0.0025, 0.005, 0.01, 0.02, 0.04],
        "steps": 2000 if quick else 10000,
        "every": 5,
        "chunk": 200 if quick else 1000,
        "init_scale": 1.0,
        "fit_tol": 1e-8,
        "tolerance": 0.15,
    }


def validate_config(config: dict) -> None:
    """Raise ``ValueError`` on settings the run cannot use."""
    c = config
    for key in ("lrs", "wds"):
        v = c[key]
        if not isinstance(v, list) or not v or not all(isinstance(x, int | float) for x in v):
            raise ValueError(f"{key} must be a non-empty list of numbers, got {v!r}")
    if min(c["lrs"]) <= 0 or min(c["wds"]) <= 0:
        raise ValueError("every lr must be > 0 and every wd > 0 (without WD there is no EoS entry)")
    if max(c["lrs"]) * max(c["wds"]) >= 1:
        raise ValueError(
            f"need lr*wd < 1 for every pair of the grid, got max(lrs)*max(wds) = "
            f"{max(c['lrs']) * max(c['wds']):g}"
        )
    if c["n"] < 3 or c["d"] < 2 or c["every"] < 1 or c["chunk"] < 1:
        raise ValueError("need n >= 3, d >= 2, every >= 1, chunk >= 1")
    if c["chunk"] % c["every"]:
        raise ValueError(f"chunk ({c['chunk']}) must be a multiple of every ({c['every']})")
    if not c["init_scale"] > 0 or not c["fit_tol"] > 0 or not c["tolerance"] > 0:
        raise ValueError("init_scale, fit_tol and tolerance must be > 0")


def predicted_steps_to_eos(eff_lr_fit, sharpness_fit, eta_in):
    """Section 4.1: ``(Δ_paper, Δ_exact)``, the steps from the fit to ``η̃λ1 = 2`` if ``η̃`` grows
    by ``(1−η_in)^{-2}`` per step from ``η̃_fit`` and ``λ1`` stays at ``λ1_fit``:
    ``ln(2/(η̃λ1))/(2η_in)`` and ``ln(2/(η̃λ1))/(−2 ln(1−η_in))``."""
    log_ratio = np.log(2.0 / (np.asarray(eff_lr_fit) * np.asarray(sharpness_fit)))
    return log_ratio / (2.0 * eta_in), log_ratio / (-2.0 * np.log1p(-eta_in))


def analyse(step, loss, eff_lr, sharpness, lr, wd, eos_step, fit_tol):
    """Per configuration (rows of the ``(B, T)`` record arrays): fit step, prediction, error.

    ``eos_step`` ``(B,)``: the measured EoS entry (:func:`eosflow.eos_onset`, ``-1`` = none).
    Returns a dict of ``(B,)`` arrays: ``fit_step``, ``eos_step``,
    ``eff_lr_fit``, ``sharpness_fit``, ``pred_delta``, ``pred_delta_exact``, ``pred_eos_step``,
    ``delta``, ``rel_err``, ``resolved_err`` (NaN where not applicable; module docstring) and
    ``status`` (0: compared; 1: never fit;
    2: EoS at or before the fit record; 3: EoS not reached within the run).
    """
    B = loss.shape[0]
    out = {k: np.full(B, np.nan) for k in ("eff_lr_fit", "sharpness_fit", "pred_delta",
                                           "pred_delta_exact", "pred_eos_step", "delta", "rel_err",
                                           "resolved_err")}  # fmt: skip
    out["fit_step"] = np.full(B, -1)
    out["eos_step"] = np.asarray(eos_step, int)
    out["status"] = np.zeros(B, int)
    for b in range(B):
        fit = np.flatnonzero((loss[b] <= fit_tol) & np.isfinite(sharpness[b]))
        if not fit.size:
            out["status"][b] = 1
            continue
        i = fit[0]
        out["fit_step"][b] = step[i]
        out["eff_lr_fit"][b], out["sharpness_fit"][b] = eff_lr[b, i], sharpness[b, i]
        if eff_lr[b, i] * sharpness[b, i] >= 2.0:
            out["status"][b] = 2
            continue
        eta_in = lr[b] * wd[b]
        pd, pe = predicted_steps_to_eos(eff_lr[b, i], sharpness[b, i], eta_in)
        out["pred_delta"][b], out["pred_delta_exact"][b] = pd, pe
        out["pred_eos_step"][b] = step[i] + pd
        if eos_step[b] < 0:
            out["status"][b] = 3
            continue
        out["delta"][b] = eos_step[b] - step[i]
        out["rel_err"][b] = out["delta"][b] / pd - 1.0
        j = int(np.searchsorted(step, eos_step[b]))
        t_prev = step[j - 1] if j > i else step[i]
        t_pred = step[i] + pd
        out["resolved_err"][b] = max(0.0, t_prev - t_pred, t_pred - eos_step[b]) / pd
    return out


def _last_finite(x) -> float:
    x = np.asarray(x)[np.isfinite(x)]
    return float(x[-1]) if x.size else float("nan")


def _digest(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]


def run(config: dict, out: Path, progress: bool = True) -> dict:
    """Run the grid, save ``arrays.npz`` and ``summary.json`` in ``out``, return the key numbers.

    Arrays: ``lrs, wds`` (the axes), ``lr, wd`` (``(B,)``, lr outermost: ``b = i·len(wds) + j``),
    ``step`` ``(T,)``, ``loss, eff_lr, sharpness, norm, grad_norm`` ``(B, T)``, ``w_final``
    ``(B, d)``, ``X, y`` (training data), ``final_sharpness``, ``final_rel_dist``,
    ``nonfinite_step`` and the :func:`analyse` arrays.
    """
    c = config
    validate_config(c)
    n_cfg = len(c["lrs"]) * len(c["wds"])
    phase(
        NAME,
        f"data, then GD+WD for {n_cfg} (lr, wd) pairs at once, {c['steps']} steps (the "
        "first chunk compiles)",
        progress,
    )
    out = Path(out)
    data, loss, w0 = linreg_bn_problem(c, scale_by_sqrt_d=False)
    rec = RunRecorder(out, NAME, c)
    tr = _sweep(c, rec, loss, w0, progress)
    res, final_sharp, final_rel = _measure(c, rec, data, tr)
    key = _key_numbers(c, tr, res)
    k = int(c["every"])
    rec.finish(
        key,
        dtype=np.asarray(tr.w_final).dtype,
        description=DESCRIPTION,
        paper=PAPER,
        table=_table(tr, res, final_sharp, final_rel),
        claims=[
            f"time from fit to EoS = ln(2/(eff_lr_fit * lambda1_fit)) / (2 lr wd) within "
            f"{c['tolerance']:.0%} wherever EoS is reached after the fit",
        ],
        notes=[
            "fit: first record with loss <= fit_tol; eff_lr and sharpness taken at that record",
            "EoS: first record at/after the fit with eff_lr * sharpness >= 2 (eosflow.eos_onset)",
            f"records every {k} steps: measured steps overshoot by < {k}; resolved_err is the "
            "distance of the predicted step to the window (previous record, EoS record]",
        ],
    )
    return key


def _sweep(c, rec, loss, w0, progress):
    """The (lr, wd) grid of GD+WD runs, eq. (1), all in one sweep, recorded every ``every``."""
    sweep_dir = rec.checkpoint_dir(f"sweep-{_digest(c)}")
    for old in sweep_dir.parent.glob("sweep-*"):  # an interrupted run, other settings: stale
        if old != sweep_dir and old.is_dir():
            shutil.rmtree(old)
    k = int(c["every"])
    return sweep(
        loss, w0, c["lrs"], c["wds"], int(c["steps"]), record_every=k, sharpness_every=k,
        record_params=False, chunk=int(c["chunk"]), out_dir=sweep_dir, progress=progress,
    )  # fmt: skip


def _measure(c, rec, data, tr):
    """Section 4.1 and Theorem 5.1 per run: EoS entry vs prediction, final λ1 and distance to (M)."""
    step = np.asarray(tr.step[0])
    arrays = {name: np.asarray(getattr(tr, name)) for name in _RECORDS}
    lr, wd = np.asarray(tr.lr), np.asarray(tr.wd)
    runs = [take_config(tr, b) for b in range(lr.size)]
    eos = [eos_onset(r, fit_tol=c["fit_tol"]) for r in runs]
    eos = np.array([-1 if t is None else t for t in eos])
    res = analyse(step, arrays["loss"], arrays["eff_lr"], arrays["sharpness"], lr, wd, eos,
                  c["fit_tol"])  # fmt: skip
    W = np.asarray(tr.w_final)
    final_rel = np.asarray(jax.vmap(lambda w: relative_distance_to_min_norm(data.X, data.y, w))(W))
    final_sharp = np.array([_last_finite(r.sharpness) for r in runs])
    rec.update(
        lrs=np.asarray(c["lrs"], float), wds=np.asarray(c["wds"], float), lr=lr, wd=wd, step=step,
        **arrays, w_final=W, X=np.asarray(data.X), y=np.asarray(data.y),
        final_sharpness=final_sharp, final_rel_dist=final_rel,
        nonfinite_step=np.asarray(tr.nonfinite_step), **res,
    )  # fmt: skip
    return res, final_sharp, final_rel


def _table(tr, res, final_sharp, final_rel) -> list[dict]:
    """The summary's table: one row per (lr, wd) with its Section 4.1 comparison and end state."""
    lr, wd = np.asarray(tr.lr), np.asarray(tr.wd)
    return [
        {
            "lr": float(lr[b]),
            "wd": float(wd[b]),
            "eta_in": float(lr[b] * wd[b]),
            "fit_step": int(res["fit_step"][b]) if res["fit_step"][b] >= 0 else None,
            "eos_step": int(res["eos_step"][b]) if res["eos_step"][b] >= 0 else None,
            "predicted_eos_step": as_float(res["pred_eos_step"][b]),
            "steps_fit_to_eos": as_float(res["delta"][b]),
            "predicted_steps_fit_to_eos": as_float(res["pred_delta"][b]),
            "rel_err": as_float(res["rel_err"][b]),
            "resolved_err": as_float(res["resolved_err"][b]),
            "status": ["compared", "never fit", "EoS before fit", "EoS not reached"][
                int(res["status"][b])
            ],
            "final_sharpness": as_float(final_sharp[b]),
            "final_rel_dist_to_M": as_float(final_rel[b]),
        }
        for b in range(lr.size)
    ]


def _key_numbers(c, tr, res) -> dict:
    """Section 4.1's claim over the grid: how many runs reach EoS, the prediction's errors."""
    compared = res["status"] == 0
    err = np.abs(res["rel_err"][compared])
    resolved = res["resolved_err"][compared]
    return {
        "configurations": int(np.asarray(tr.lr).size),
        "reached_eos": int(np.sum(res["eos_step"] >= 0)),
        "compared": int(compared.sum()),
        "max_abs_rel_err": as_float(err.max()) if err.size else None,
        "median_abs_rel_err": as_float(np.median(err)) if err.size else None,
        "max_resolved_err": as_float(resolved.max()) if err.size else None,
        "prediction_within_tolerance": bool(err.size and np.all(resolved <= c["tolerance"])),
        "nonfinite": int(np.sum(np.asarray(tr.nonfinite_step) >= 0)),
    }


def _heatmap(ax, fig, Z, lrs, wds, title, fmt, log=False):
    M = np.ma.masked_invalid(Z)
    ok = np.isfinite(Z) & (Z > 0 if log else True)
    norm = LogNorm(vmin=Z[ok].min(), vmax=Z[ok].max()) if log and ok.any() else None
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.85")
    im = ax.imshow(M, origin="lower", cmap=cmap, norm=norm, aspect="auto")
    fig.colorbar(im, ax=ax, shrink=0.85)
    ax.set_xticks(range(len(wds)), [f"{x:g}" for x in wds])
    ax.set_yticks(range(len(lrs)), [f"{x:g}" for x in lrs])
    ax.set_xlabel("weight decay λ̂")
    ax.set_ylabel("learning rate η̂")
    ax.set_title(title, fontsize=10)
    for i in range(len(lrs)):
        for j in range(len(wds)):
            z = Z[i, j]
            bad = not np.isfinite(z)
            light = not bad and float(im.norm(z)) > 0.6  # viridis is light at the top
            ax.text(j, i, "—" if bad else fmt.format(z), ha="center", va="center", fontsize=8,
                    color="k" if bad or light else "w")  # fmt: skip


def plot(out: Path) -> list[Path]:
    """``phase_diagram.png`` (three heatmaps) and ``eos_prediction.png`` (prediction check)."""
    out = Path(out)
    a = load_arrays(out)
    s = load_summary(out)
    c = s["config"]
    lrs, wds = a["lrs"], a["wds"]
    shape = (lrs.size, wds.size)
    eos = np.where(a["eos_step"] >= 0, a["eos_step"], np.nan).astype(float)
    fig, ax = new_figure(1, 3, (16, 4.6))
    _heatmap(ax[0, 0], fig, eos.reshape(shape), lrs, wds,
             "EoS entry step (— : not reached)", "{:.0f}", log=True)  # fmt: skip
    _heatmap(ax[0, 1], fig, a["final_sharpness"].reshape(shape), lrs, wds,
             f"final spherical sharpness λ1 (step {int(a['step'][-1])})", "{:.3g}")  # fmt: skip
    _heatmap(ax[0, 2], fig, a["final_rel_dist"].reshape(shape), lrs, wds,
             "final relative distance of (w̃, b̃) to (M)", "{:.3g}", log=True)  # fmt: skip
    fig.suptitle(f"Phase diagram: linear regression with BN (n={c['n']}, d={c['d']}), "
                 f"GD+WD, {c['steps']} steps")  # fmt: skip
    paths = [save_figure(fig, out / "phase_diagram.png")]

    fig, ax = new_figure(1, 2, (13, 5))
    p1, p2 = ax[0]
    ok = a["status"] == 0
    eta = a["lr"] * a["wd"]
    if ok.any():
        every = int(c["every"])
        lo = 0.7 * min(a["pred_delta"][ok].min(), a["delta"][ok].min() - every)
        hi = 1.4 * max(a["pred_delta"][ok].max(), a["delta"][ok].max())
        xs = np.geomspace(lo, hi, 50)
        tol = c["tolerance"]
        p1.fill_between(xs, (1 - tol) * xs, (1 + tol) * xs, color="C7", alpha=0.2,
                        label=f"±{tol:.0%}")  # fmt: skip
        p1.plot(xs, xs, "k--", lw=1, label="measured = predicted")
        # the true crossing lies within `every` steps before the record that detected it
        p1.errorbar(a["pred_delta"][ok], a["delta"][ok], yerr=[np.full(ok.sum(), every * 0.999),
                    np.zeros(ok.sum())], fmt="none", ecolor="0.4", lw=0.8, zorder=2,
                    label=f"record window ({every} steps)")  # fmt: skip
        sc = p1.scatter(a["pred_delta"][ok], a["delta"][ok], c=np.log10(eta[ok]), cmap="plasma",
                        zorder=3)  # fmt: skip
        fig.colorbar(sc, ax=p1, label="log10 η_in")
        p1.set_xscale("log")
        p1.set_yscale("log")
    p1.set_xlabel("predicted steps fit → EoS: ln(2/(η̃λ1))/(2η_in)")
    p1.set_ylabel("measured steps fit → EoS")
    kn = s["key_numbers"]
    pct = lambda x: "n/a" if x is None else f"{x:.1%}"
    p1.set_title(f"Section 4.1 prediction ({kn['compared']} runs): max |rel. err| "
                 f"{pct(kn['max_abs_rel_err'])}, resolved {pct(kn.get('max_resolved_err'))}",
                 fontsize=10)  # fmt: skip
    p1.legend(fontsize=8)
    st = a["step"]
    for b in np.flatnonzero(ok):
        r = a["eff_lr"][b] * a["sharpness"][b]
        line = p2.semilogy(st, r, lw=0.8, label=f"η̂={a['lr'][b]:g}, λ̂={a['wd'][b]:g}")[0]
        t0 = a["fit_step"][b]
        tt = st[st >= t0]
        growth = a["eff_lr_fit"][b] * a["sharpness_fit"][b] * np.exp(2 * eta[b] * (tt - t0))
        p2.semilogy(tt, growth, ls=":", lw=1, color=line.get_color())
    p2.axhline(2.0, color="k", lw=0.8)
    if ok.any():
        p2.set_ylim(0.5 * np.min(a["eff_lr_fit"][ok] * a["sharpness_fit"][ok]), 4)
    p2.set_xlabel("step")
    p2.set_ylabel("η̃_t λ1(θ_t)")
    p2.set_title("η̃_t λ1(θ_t) (solid) and its predicted growth from the fit (dotted)",
                 fontsize=10)  # fmt: skip
    if 0 < ok.sum() <= 10:
        p2.legend(fontsize=7, loc="lower right")
    paths.append(save_figure(fig, out / "eos_prediction.png"))
    return paths
