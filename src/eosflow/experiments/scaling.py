"""Section 4's scaling laws in ``η_in``: EoS entry (Theorem 4.4), oscillation (Remark 4.8) and
tracking (Theorem 4.7) as fitted exponents, over seeds and, for Theorem 4.7, over ``σ0``.

Problem: linear regression with BN (``n = 20``, ``d = 60`` by default, data from ``seed``);
``lr = 1`` and ``wd = η_in`` (the direction dynamics depend on ``lr·wd`` only). Seed ``s`` draws
the minimizer ``θ* = ζ0 = Φ(N(0, I))`` and the random directions.

* **entry** — from :func:`eosflow.scaling_laws.near_minimizer_init` (``||θ_0 − θ*|| =
  sqrt(η_in)``, ``η̃_0 = edge_fraction · 2/λ1(θ*)``): the entry geometry
  (:func:`~eosflow.scaling_laws.eos_entry_geometry`) and, on a window of flow time after the entry,
  the oscillation amplitude (:func:`~eosflow.scaling_laws.oscillation_amplitude`).
* **tracking** — from Theorem 4.7's initialization (:func:`eosflow.eos_init`) for each ``σ0``
  (a number, or ``"sqrt"``: ``σ0 = sqrt(η_in)/2``, the top of the allowed range), the largest
  ``||θ_t − ζ(tη_in)||`` (and ``||Φ(θ_t) − ζ||`` at ``phi_points`` steps) up to ``horizon``.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from eosflow.analysis import eos_init, project_points, tracking
from eosflow.experiments._common import load_arrays, load_summary, new_figure, phase, save_figure
from eosflow.flow import sharpness_reduction_flow
from eosflow.losses import linear_regression_bn, make_linear_regression_data
from eosflow.runio import RunRecorder
from eosflow.scaling_laws import (
    eos_entry_geometry,
    fit_exponent,
    near_minimizer_init,
    oscillation_amplitude,
)
from eosflow.sharpness import dense_top_eigs
from eosflow.sweeps import sweep, take_config

NAME = "scaling-laws"
DESCRIPTION = "EoS entry, oscillation amplitude and tracking error against eta_in: fitted exponents"
PAPER = "Theorem 4.4, Remark 4.8, Theorem 4.7"

ENTRY_FIELDS = ("step", "eff_lr", "dist_star", "dist_gamma", "eff_lr_gap_star", "eff_lr_gap_phi")
AMP_FIELDS = ("rms_h", "rms_x", "sigma_half", "sigma_limit", "grad_log_sharpness")


def default_config(quick: bool) -> dict:
    """Quick: 3 values of ``η_in`` (16x), 2 seeds, 2 ``σ0``; full: 6 values (32x), 3 seeds,
    ``σ0`` from 1e-14 to ``sqrt(η_in)/2``."""
    return {
        "quick": bool(quick),
        "seed": 0,
        "n": 20,
        "d": 60,
        "seeds": [0, 1] if quick else [0, 1, 2],
        "etas": [4e-3, 1e-3, 2.5e-4] if quick else [4e-3, 2e-3, 1e-3, 5e-4, 2.5e-4, 1.25e-4],
        "edge_fraction": 0.5,
        "window": [1.05, 1.5],
        "sigma0s": [1e-12, "sqrt"] if quick else [1e-14, 1e-10, 1e-6, 1e-3, "sqrt"],
        "horizon": 1.0 if quick else 2.0,
        "phi_points": 0 if quick else 200,
    }


def validate_config(config: dict) -> None:
    """Raise ``ValueError`` on settings the run cannot use."""
    etas = config["etas"]
    if len(etas) < 2 or any(not 0 < e < 1 for e in etas):
        raise ValueError("etas: need at least two values in (0, 1)")
    if not config["seeds"]:
        raise ValueError("seeds: need at least one")
    a, b = config["window"]
    if not 0 <= a < b:
        raise ValueError("window: need 0 <= start < stop (flow time after the EoS entry)")
    for s0 in config["sigma0s"]:
        if s0 != "sqrt" and not (isinstance(s0, int | float) and s0 > 0):
            raise ValueError(f"sigma0s: {s0!r} is neither a positive number nor 'sqrt'")


def make_problem(config: dict):
    """The loss and one point ``ζ0 = Φ(N(0, I))`` of Γ per seed (``{seed: ζ0}``)."""
    data = make_linear_regression_data(jax.random.PRNGKey(int(config["seed"])), config["n"],
                                       config["d"])  # fmt: skip
    loss = linear_regression_bn(data.X, data.y)
    starts = np.stack(
        [np.asarray(jax.random.normal(jax.random.PRNGKey(100 + s), (config["d"],)))
         for s in config["seeds"]]
    )  # fmt: skip
    points = project_points(loss, starts)
    return loss, {s: jnp.asarray(p) for s, p in zip(config["seeds"], points, strict=True)}


def entry_measurements(loss, zetas: dict, etas, *, edge_fraction=0.5, window=(1.05, 1.5)):
    """One sweep over ``seeds × η_in`` from :func:`near_minimizer_init`; returns
    ``{(seed, η_in): (EntryGeometry, OscillationAmplitude, Trajectory)}``."""
    W0, keys = [], []
    for s, zeta in zetas.items():
        lam = float(dense_top_eigs(loss, zeta, 1)[0][0])
        for e in etas:
            W0.append(near_minimizer_init(loss, zeta, 1.0, e, e**0.5, jax.random.PRNGKey(1000 + s),
                                          edge_fraction=edge_fraction, sharpness=lam))  # fmt: skip
            keys.append((s, e))
    t_entry = np.log(1 / edge_fraction) / 2  # η̃ grows by (1 − η_in)^{-2} per step
    steps = int(round((t_entry + window[1] + 0.1) / min(etas)))
    tr = sweep(loss, jnp.stack(W0), 1.0, [k[1] for k in keys], steps, grid=False, progress=False)
    out = {}
    for b, (s, e) in enumerate(keys):
        run = take_config(tr, b)
        en = eos_entry_geometry(loss, run, zetas[s])
        a, z = (en.step + int(round(w / e)) for w in window)
        out[(s, e)] = (en, oscillation_amplitude(loss, run, a, z), run)
    return out


def tracking_errors(loss, zetas: dict, sigma0s, etas, horizon, *, phi_points=0):
    """Theorem 4.7 for every ``(seed, σ0, η_in)``: one sweep per ``η_in`` (``T/η_in`` steps).

    Returns ``{(seed, σ0): (max ||θ_t − ζ||, max ||Φ(θ_t) − ζ||)}``, arrays over ``etas`` (the
    second NaN unless ``phi_points > 0``: ``Φ`` at that many evenly spaced steps)."""
    flows = {s: sharpness_reduction_flow(loss, z, horizon, method="dopri5", rtol=1e-9,
                                         num_saves=401) for s, z in zetas.items()}  # fmt: skip
    lams = {s: float(dense_top_eigs(loss, z, 1)[0][0]) for s, z in zetas.items()}
    res = {(s, s0): ([], []) for s in zetas for s0 in sigma0s}
    for e in etas:
        keys = [(s, s0) for s in zetas for s0 in sigma0s]
        W0 = [eos_init(loss, zetas[s], 1.0, e, 0.5 * e**0.5 if s0 == "sqrt" else s0,
                       jax.random.PRNGKey(2000 + s), sharpness=lams[s]) for s, s0 in keys]  # fmt: skip
        steps = int(round(horizon / e)) + 1
        tr = sweep(loss, jnp.stack(W0), 1.0, [e] * len(keys), steps, grid=False, progress=False)
        for b, (s, s0) in enumerate(keys):
            run = take_config(tr, b)
            tk = tracking(loss, run, flows[s], 0, with_phi=False)
            d_phi = np.nan
            if phi_points:
                every = max(1, steps // phi_points)
                sub = run._replace(**{f: getattr(run, f)[::every] for f in ("step", "w", "norm")})
                d_phi = tracking(loss, sub, flows[s], 0, with_phi=True).dist_phi.max()
            res[(s, s0)][0].append(tk.dist_theta.max())
            res[(s, s0)][1].append(d_phi)
    return {k: (np.asarray(a), np.asarray(b)) for k, (a, b) in res.items()}


def _exponent(etas, ys) -> float:
    ys = np.abs(np.asarray(ys, float))
    return fit_exponent(etas, ys).exponent if np.all(ys > 0) else float("nan")


def _entry_summary(c, etas, ent):
    arrays, key = {}, {}
    for s in c["seeds"]:
        rows = [ent[(s, e)] for e in c["etas"]]
        for f in ENTRY_FIELDS:
            arrays[f"entry_{f}_{s}"] = np.array([getattr(r[0], f) for r in rows], float)
        for f in AMP_FIELDS:
            arrays[f"amp_{f}_{s}"] = np.array([getattr(r[1], f) for r in rows], float)
        key[f"seed{s}"] = {
            "exponent_rms_h": _exponent(etas, arrays[f"amp_rms_h_{s}"]),
            "exponent_rms_x": _exponent(etas, arrays[f"amp_rms_x_{s}"]),
            "rms_h_over_sigma_limit": (
                arrays[f"amp_rms_h_{s}"] / arrays[f"amp_sigma_limit_{s}"]
            ).tolist(),  # fmt: skip
            "rms_h_over_sqrt_half_eta": (
                arrays[f"amp_rms_h_{s}"] / arrays[f"amp_sigma_half_{s}"]
            ).tolist(),  # fmt: skip
            "exponent_dist_star": _exponent(etas, arrays[f"entry_dist_star_{s}"]),
            "exponent_eff_lr_gap_star": _exponent(etas, arrays[f"entry_eff_lr_gap_star_{s}"]),
            "exponent_landing_shift": _exponent(
                etas, arrays[f"entry_eff_lr_gap_star_{s}"] - arrays[f"entry_eff_lr_gap_phi_{s}"]
            ),
            "max_dist_gamma_at_entry": float(arrays[f"entry_dist_gamma_{s}"].max()),
            "sign_change_share_min": min(r[1].sign_change_share for r in rows),
        }
    return arrays, key


def run(config: dict, out: Path, progress: bool = True) -> dict:
    """Entry + oscillation sweep, then the tracking sweeps; saves every number and the fits."""
    c = config
    validate_config(c)
    rec = RunRecorder(out, NAME, c)
    etas = np.asarray(c["etas"], float)
    loss, zetas = make_problem(c)
    phase(NAME, f"EoS entry and oscillation: {len(zetas)} seeds x {len(etas)} values of η_in",
          progress)  # fmt: skip
    ent = entry_measurements(loss, zetas, c["etas"], edge_fraction=c["edge_fraction"],
                             window=tuple(c["window"]))  # fmt: skip
    arrays, key = _entry_summary(c, etas, ent)
    rec.update(etas=etas, **arrays)
    phase(NAME, f"Theorem 4.7 tracking: {len(c['sigma0s'])} values of σ0", progress)
    trk = tracking_errors(loss, zetas, c["sigma0s"], c["etas"], c["horizon"],
                          phi_points=c["phi_points"])  # fmt: skip
    table = {}
    for (s, s0), (d_theta, d_phi) in trk.items():
        rec.update(**{f"track_theta_{s}_{s0}": d_theta, f"track_phi_{s}_{s0}": d_phi})
        table[f"seed{s} sigma0={s0}"] = {
            "exponent_theta": _exponent(etas, d_theta),
            "exponent_phi": _exponent(etas, d_phi) if c["phi_points"] else None,
            "max_dist_theta": d_theta.tolist(),
            "max_dist_phi": d_phi.tolist() if c["phi_points"] else None,
        }
    key["tracking"] = table
    rec.finish(key, dtype=np.asarray(next(iter(zetas.values()))).dtype, description=DESCRIPTION,
               paper=PAPER, notes=["Theorem 4.4 and Remark 4.8: 1/2; Theorem 4.7: >= 1/4"])  # fmt: skip
    return key


def plot(out: Path) -> list[Path]:
    """``scaling_laws.png``: (a) RMS ``h_t`` with ``sqrt(η_in/2)``, (b) the entry distances,
    (c) the tracking errors for every seed and ``σ0``."""
    out = Path(out)
    a, s = load_arrays(out), load_summary(out)
    c = s["config"]
    etas = a["etas"]
    fig, ax = new_figure(1, 3, (16, 4.5))
    pa, pb, pc = ax[0]
    pa.loglog(etas, np.sqrt(etas / 2), "k:", label="sqrt(η_in/2)")
    for sd in c["seeds"]:
        pa.loglog(etas, a[f"amp_rms_h_{sd}"], "o-", label=f"RMS h_t, seed {sd}")
        pb.loglog(etas, a[f"entry_dist_star_{sd}"], "o-", label=f"||θ_t1 − θ*||, seed {sd}")
        pb.loglog(etas, np.abs(a[f"entry_eff_lr_gap_star_{sd}"]), "s--",
                  label=f"|η̃_t1 − 2/λ1(θ*)|, seed {sd}")  # fmt: skip
        for s0 in c["sigma0s"]:
            pc.loglog(etas, a[f"track_theta_{sd}_{s0}"], ".-", lw=0.8, label=f"seed {sd}, σ0={s0}")
    pb.loglog(etas, np.sqrt(etas), "k:", label="sqrt(η_in)")
    pc.loglog(etas, 0.5 * etas**0.25 / etas[0] ** 0.25, "k:", label="slope 1/4")
    for p, t in [(pa, "(a) oscillation at EoS"), (pb, "(b) EoS entry (Thm 4.4)"),
                 (pc, "(c) max ||θ_t − ζ(tη_in)|| (Thm 4.7)")]:  # fmt: skip
        p.set_xlabel("η_in = lr·wd")
        p.set_title(t)
        p.legend(fontsize=6)
    return [save_figure(fig, out / "scaling_laws.png")]
