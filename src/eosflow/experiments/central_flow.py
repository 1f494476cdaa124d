"""The central flow of normalized GD+WD against GD+WD (issue 14, item 8; THEORY.md "Beyond the
paper"; docs/theory.md).

For each problem — Section 5's linear regression with BN (``linreg``) and Figure 1's matrix
completion with BN (``mc``, ``k = 3``: its top Hessian eigenvalues cluster, so several may sit at
the edge) — from the same random ``w0``:

1. **GD+WD**, eq. (1), every step recorded (:func:`eosflow.chunks.run_chunked`, spherical
   sharpness every ``sharpness_every`` steps); its EoS entry (:func:`eosflow.eos.eos_onset`);
   its **two-step average**: the loss ``(L(θ_t) + L(θ_{t+1}))/2`` and the point
   ``θ̄_t = normalize((θ_t + θ_{t+1})/2)`` (the period-two oscillation cancels in it).
2. **The central flow** (:func:`eosflow.central.central_flow`, run as its ``Dynamics`` through
   the same chunked driver): ``θ(t)``, ``η̃(t)``, the top-``k`` eigenvalues, the oscillation
   covariance ``Σ`` (``k×k`` in the top eigenbasis) and the predicted time-averaged loss
   ``L + ½⟨Σ, ∇²L⟩``. Its EoS entry is the first step where ``Σ ≠ 0`` (``active > 0``).
3. **Flow (3)** (:func:`eosflow.sharpness_reduction_flow`, the ``η_in → 0`` limit) from
   ``ζ0 = Φ(θ_{t_eos})``, the point of Γ where GD enters EoS (as ``experiments/linreg_bn.py``
   does), in flow time ``τ = η_in (t − t_eos)``.
4. **The oscillation GD makes**: ``||θ_t − Φ(θ_t)||²`` at ``osc_points`` steps spread over the
   comparison window, against the flow's ``tr Σ`` (Section 4.2.3: ``E||x||² = tr Σ ≈ η_in/2``).

Comparison window ("after EoS"): steps ``t >= t_both + settle_frac·(T − 1 − t_both)`` with
``t_both`` the later of the two EoS entries (GD's oscillation grows from round-off after its
entry, so the first steps after it are not yet periodic).

Key numbers (per problem): median over the window of GD's two-step-average loss / the predicted
``loss_avg``; mean ``tr Σ`` against ``η_in/2`` and against GD's mean ``||θ_t − Φ(θ_t)||²``;
``η̃`` of the flow over GD's (window means, and at the end); median and final distance of the
flow to GD's two-step average and to GD's iterate; the same for flow (3); EoS-entry steps of GD
and the flow; where they part before EoS (first step with ``||θ_flow − θ_t|| > part_tol``) and
how far apart their landing points on Γ are (``Φ(θ_t)`` at GD's entry against the flow there).
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from eosflow.analysis import project_points
from eosflow.central import central_flow_dynamics, from_trajectory
from eosflow.chunks import run_chunked
from eosflow.dynamics import SphereHparams
from eosflow.eos import eos_onset
from eosflow.experiments._common import as_float, bar, first_index, linreg_bn_problem, phase
from eosflow.experiments.central_flow_plots import plot  # noqa: F401  (the experiment's plot)
from eosflow.flow import sharpness_reduction_flow
from eosflow.gd import GDWDHparams
from eosflow.losses import make_matrix_completion_data, matrix_completion_bn
from eosflow.manifold import project_to_manifold
from eosflow.runio import RunRecorder

NAME = "central-flow"
DESCRIPTION = (
    "central flow of GD+WD: predicted time-averaged loss, oscillation sigma^2 and effective LR "
    "against GD (linreg-BN, matrix completion), and flow (3) from the EoS entry"
)
PAPER = "beyond the paper: THEORY.md central flow; Section 4.2.3, Theorem 4.7"

PROBLEMS = ("linreg", "mc")
_GD_FIELDS = ("step", "norm", "eff_lr", "loss", "grad_norm", "sharpness")


def default_config(quick: bool) -> dict:
    """Full: linreg n=20, d=60, lr 0.1, wd 0.01, 4000 steps; matrix completion 20×20 (D=800),
    rank 2, 200 entries, lr 0.5, wd 0.005, 800 steps, ``k = 3``. Quick: linreg 1200 steps at
    wd 0.02, matrix completion 300 steps.

    Matrix completion is the expensive part: with ``k = 3`` the central flow takes ~600-800
    HVPs per GD step (the top-3 Lanczos restarts eigenpairs 2 and 3 from a fixed vector every
    substep), ~0.3 s per step on a loaded 2-core CPU at D=800 and ~1.7 s at Figure 1's D=5000
    (docs/benchmarks.md), so the default is the 20×20 problem."""
    q = bool(quick)
    return {
        "quick": q,
        "seed": 0,
        "problems": list(PROBLEMS),
        "linreg_n": 20,
        "linreg_d": 60,
        "linreg_init_scale": 1.0,
        "linreg_lr": 0.1,
        "linreg_wd": 0.02 if q else 0.01,
        "linreg_steps": 1200 if q else 4000,
        "linreg_k": 1,
        "linreg_fit_tol": 1e-10,
        "linreg_sharpness_every": 1,
        "mc_m": 20,
        "mc_rank": 2,
        "mc_num_observed": 200,
        "mc_init_scale": 0.1,
        "mc_lr": 0.5,
        "mc_wd": 0.005,
        "mc_steps": 300 if q else 800,
        "mc_k": 3,
        "mc_fit_tol": 1e-6,
        "mc_sharpness_every": 1,
        "substeps": 4,
        "lanczos_iter": 10,
        "settle_frac": 0.25,
        "part_tol": 1e-2,
        "osc_points": 40 if q else 100,
        "save_theta_every": 10,
    }


def validate_config(config: dict) -> None:
    """Raise ``ValueError`` on settings the run cannot use."""
    c = config
    bad = [p for p in c["problems"] if p not in PROBLEMS]
    if bad or not c["problems"]:
        raise ValueError(f"problems must be a non-empty subset of {list(PROBLEMS)}, got {bad}")
    for p in PROBLEMS:
        if not 0 < c[f"{p}_lr"] * c[f"{p}_wd"] < 1:
            raise ValueError(f"{p}: need 0 < lr*wd < 1")
        for key in ("steps", "k", "sharpness_every"):
            if int(c[f"{p}_{key}"]) < 1:
                raise ValueError(f"{p}_{key} must be >= 1")
    if c["linreg_d"] <= c["linreg_n"] or c["linreg_n"] < 4:
        raise ValueError("linreg: need n >= 4 samples and d > n features")
    if not 0 < c["mc_num_observed"] <= c["mc_m"] ** 2 or not 1 <= c["mc_rank"] <= c["mc_m"]:
        raise ValueError("mc: need 0 < num_observed <= m^2 and 1 <= rank <= m")
    if not 0 <= c["settle_frac"] < 1 or not c["part_tol"] > 0:
        raise ValueError("need 0 <= settle_frac < 1 and part_tol > 0")
    if min(c["substeps"], c["lanczos_iter"] - 1, c["osc_points"], c["save_theta_every"]) < 1:
        raise ValueError("substeps, osc_points, save_theta_every must be >= 1, lanczos_iter >= 2")


def problem(config: dict, p: str):
    """``(loss, w0)`` of problem ``p`` from ``config`` (``linreg``: :func:`linreg_bn_problem`;
    ``mc``: an ``m×m`` rank-``rank`` matrix, factors of width ``m`` (``D = 2m²``), data from
    ``PRNGKey(seed)``, ``w0 = init_scale·N(0, I)`` from ``PRNGKey(seed + 1)``, as in
    ``matrix-completion-bn``)."""
    c = config
    if p == "linreg":
        sub = {"seed": c["seed"], "n": c["linreg_n"], "d": c["linreg_d"],
               "init_scale": c["linreg_init_scale"]}  # fmt: skip
        _, loss, w0 = linreg_bn_problem(sub)
        return loss, w0
    m, seed = int(c["mc_m"]), int(c["seed"])
    data = make_matrix_completion_data(jax.random.PRNGKey(seed), m, m, int(c["mc_rank"]),
                                       int(c["mc_num_observed"]), k=m)  # fmt: skip
    w0 = c["mc_init_scale"] * jax.random.normal(jax.random.PRNGKey(seed + 1), (2 * m * m,))
    return matrix_completion_bn(data), w0


def run(config: dict, out: Path, progress: bool = True) -> dict:
    """For each problem: GD+WD, its two-step average, the central flow, flow (3) from the EoS
    entry, GD's oscillation; saves ``arrays.npz`` (keys prefixed ``linreg_``/``mc_``) and
    ``summary.json``; returns the key numbers (one dict per problem)."""
    c = config
    validate_config(c)
    rec = RunRecorder(out, NAME, c)
    key: dict = {}
    dtype = None
    for p in c["problems"]:
        loss, w0 = problem(c, p)
        dtype = w0.dtype
        key[p] = _one_problem(c, p, rec, loss, w0, progress)
    rec.finish(
        key,
        dtype=dtype,
        description=DESCRIPTION,
        paper=PAPER,
        notes=[
            "two-step average: loss (L_t + L_{t+1})/2, point normalize((theta_t + theta_{t+1})/2)",
            "flow EoS entry: first step with Sigma != 0 (active > 0); GD: eos_onset (eta~ lambda1 "
            ">= 2 after the fit)",
            "window ('after EoS'): t >= t_both + settle_frac*(T-1-t_both), t_both = later entry",
            "flow (3) starts at Phi(theta_GD at its EoS entry), tau = eta_in (t - t_eos)",
            "sigma2 = tr Sigma (k > 1: the sum over the oscillating directions)",
        ],
    )
    return key


def _one_problem(c, p, rec, loss, w0, progress) -> dict:
    """The four parts of the module docstring on one problem."""
    lr, wd, steps = float(c[f"{p}_lr"]), float(c[f"{p}_wd"]), int(c[f"{p}_steps"])
    label = f"{NAME} [{p}]"
    phase(label, f"GD+WD, {steps} steps, D = {w0.size} (the first chunk compiles)", progress)
    gd = run_chunked(
        loss, w0, lr, wd, steps, sharpness_every=int(c[f"{p}_sharpness_every"]),
        progress=progress, label=label + " GD", on_chunk=rec.on_chunk(f"{p}_gd_", _GD_FIELDS),
        checkpoint=rec.checkpoint(f"{p}_gd_"),
    )  # fmt: skip
    k = int(c[f"{p}_k"])
    phase(label, f"central flow, k = {k}, {c['substeps']} Euler substeps per step", progress)
    dyn = central_flow_dynamics(k=k, substeps=int(c["substeps"]),
                                lanczos_iter=int(c["lanczos_iter"]))  # fmt: skip
    cf = from_trajectory(run_chunked(
        loss, w0, steps=steps, dynamics=dyn, hparams=SphereHparams(lr, wd, GDWDHparams(lr, wd)),
        progress=progress, label=label + " central flow", checkpoint=rec.checkpoint(f"{p}_cf_"),
    ))  # fmt: skip
    arrays, key = compare(c, p, loss, gd, cf)
    avg = arrays.pop("avg_theta")
    rec.update(**{f"{p}_{n}": v for n, v in arrays.items()})
    t_eos = key["eos_step_gd"]
    if t_eos is None:
        key["note"] = "GD did not reach EoS: increase steps or lr*wd"
        return key
    more_arrays, more = _flow3(c, p, loss, gd, cf, t_eos, avg, progress)
    key.update(more)
    rec.update(**{f"{p}_{n}": v for n, v in more_arrays.items()})
    osc_arrays, osc = _oscillation(c, p, loss, gd, key["window_start"], progress)
    if osc["gd_mean_x2"]:
        tr = arrays["cf_trace_sigma"][osc_arrays["osc_step"]]
        osc["ratio_trace_sigma_to_gd_x2"] = as_float(np.mean(tr) / osc["gd_mean_x2"])
    key.update(osc)
    rec.update(**{f"{p}_{n}": v for n, v in osc_arrays.items()})
    return key


def _two_step(loss, gd):
    """GD's two-step average: loss ``(L_t + L_{t+1})/2``, point ``normalize((θ_t + θ_{t+1})/2)``
    and the loss there, for ``t = 0 .. T−2``."""
    th = np.asarray(gd.theta)
    L = np.asarray(gd.loss)
    avg = 0.5 * (th[:-1] + th[1:])
    avg /= np.linalg.norm(avg, axis=1, keepdims=True)
    point_loss = np.asarray(jax.jit(jax.vmap(loss))(jnp.asarray(avg)))
    return 0.5 * (L[:-1] + L[1:]), avg, point_loss


def compare(c: dict, p: str, loss, gd, cf) -> tuple[dict, dict]:
    """Arrays and key numbers of GD (and its two-step average) against the central flow."""
    eta_in = float(c[f"{p}_lr"]) * float(c[f"{p}_wd"])
    loss2, avg, avg_point_loss = _two_step(loss, gd)
    th_gd, th_cf = np.asarray(gd.theta), np.asarray(cf.theta)
    d_avg = np.linalg.norm(th_cf[:-1] - avg, axis=1)
    d_iter = np.linalg.norm(th_cf[:-1] - th_gd[:-1], axis=1)
    sig = np.asarray(cf.sigma)
    tr = np.trace(sig, axis1=1, axis2=2)
    t_gd = eos_onset(gd, fit_tol=float(c[f"{p}_fit_tol"]))
    t_cf = first_index(np.asarray(cf.active) > 0)
    T = th_gd.shape[0]
    every = int(c["save_theta_every"])
    sub = np.arange(0, T - 1, every)
    arrays = dict(
        avg_loss=loss2, avg_point_loss=avg_point_loss, dist_cf_avg=d_avg, dist_cf_iter=d_iter,
        cf_step=np.asarray(cf.step), cf_loss=np.asarray(cf.loss), cf_loss_avg=np.asarray(cf.loss_avg),
        cf_eff_lr=np.asarray(cf.eff_lr), cf_sharpness=np.asarray(cf.sharpness), cf_sigma=sig,
        cf_trace_sigma=tr, cf_active=np.asarray(cf.active), cf_num_hvps=np.asarray(cf.num_hvps),
        cf_grad_norm=np.asarray(cf.grad_norm), cf_grad_norm_avg=np.asarray(cf.grad_norm_avg),
        sub_step=sub, gd_w_sub=np.asarray(gd.w)[sub], gd_w_next_sub=np.asarray(gd.w)[sub + 1],
        cf_theta_sub=th_cf[sub], avg_theta=avg,
    )  # fmt: skip
    key: dict = {"D": int(th_gd.shape[1]), "eta_in": eta_in, "eos_step_gd": t_gd,
                 "eos_step_flow": t_cf}  # fmt: skip
    key.update(_parting(c, d_iter, d_avg, t_gd, t_cf))
    if t_gd is None or t_cf is None:
        return arrays, key
    t_both = max(t_gd, t_cf)
    start = int(t_both + np.ceil(float(c["settle_frac"]) * (T - 1 - t_both)))
    w = slice(start, T - 1)
    eff_gd, eff_cf = np.asarray(gd.eff_lr), np.asarray(cf.eff_lr)
    key.update(
        window_start=start,
        median_loss_ratio=as_float(np.median(loss2[w] / np.asarray(cf.loss_avg)[w])),
        mean_trace_sigma=as_float(np.mean(tr[w])),
        trace_sigma_over_half_eta_in=as_float(np.mean(tr[w]) / (eta_in / 2)),
        active_max=int(np.max(np.asarray(cf.active)[w])),
        eff_lr_ratio_mean=as_float(np.mean(eff_cf[w]) / np.mean(eff_gd[w])),
        eff_lr_flow_end=as_float(eff_cf[-1]),
        eff_lr_gd_end=as_float(eff_gd[-1]),
        median_dist_flow_avg=as_float(np.median(d_avg[w])),
        median_dist_flow_iterate=as_float(np.median(d_iter[w])),
        dist_flow_avg_end=as_float(d_avg[-1]),
        dist_flow_iterate_end=as_float(d_iter[-1]),
        median_num_hvps_per_step=as_float(np.median(np.asarray(cf.num_hvps))),
    )
    return arrays, key


def _parting(c, d_iter, d_avg, t_gd, t_cf) -> dict:
    """Where GD and the flow part before EoS: the first step with ``||θ_flow − θ_t||`` above
    ``part_tol`` (before EoS there is no oscillation to average out, and the two-step average
    lags the iterate by half a step), and the distance to GD's average at both entries."""
    at = {}
    for name, t in (("gd", t_gd), ("flow", t_cf)):
        at[f"dist_flow_avg_at_eos_{name}"] = None if t is None else as_float(d_avg[t])
    part = first_index(d_iter > float(c["part_tol"]))
    return {"part_step": part, "part_tol": float(c["part_tol"]), **at}


def _flow3(c, p, loss, gd, cf, t_eos, avg, progress) -> tuple[dict, dict]:
    """Flow (3) from ``Φ(θ_GD)`` at GD's EoS entry, against GD's average and the central flow."""
    label = f"{NAME} [{p}]"
    eta_in = float(c[f"{p}_lr"]) * float(c[f"{p}_wd"])
    T = avg.shape[0] + 1
    phase(label, f"projection of θ at GD's EoS entry (step {t_eos}) onto Γ", progress)
    zeta0 = project_to_manifold(loss, jnp.asarray(np.asarray(gd.theta)[t_eos])).point
    tau_end = (T - 2 - t_eos) * eta_in
    phase(label, f"flow (3) up to τ = {tau_end:.3g} (compiling the solver takes most of it)",
          progress)  # fmt: skip
    sol = sharpness_reduction_flow(loss, zeta0, tau_end, method="dopri5", rtol=1e-8,
                                   num_saves=201, on_failure="return")  # fmt: skip
    tau_ok = float(sol.tau[-1]) if int(sol.result) else tau_end
    steps = np.arange(t_eos, T - 1)
    tau = (steps - t_eos) * eta_in
    steps, tau = steps[tau <= tau_ok * (1 + 1e-12)], tau[tau <= tau_ok * (1 + 1e-12)]
    z = np.asarray(sol.evaluate(jnp.asarray(tau)))
    d_avg = np.linalg.norm(z - avg[steps], axis=1)
    d_cf = np.linalg.norm(z - np.asarray(cf.theta)[steps], axis=1)
    start = max(int(t_eos + np.ceil(float(c["settle_frac"]) * (T - 1 - t_eos))), int(steps[0]))
    w = steps >= start
    arrays = dict(flow3_step=steps, flow3_dist_avg=d_avg, flow3_dist_cf=d_cf,
                  flow3_tau=np.asarray(sol.tau), flow3_sharpness=np.asarray(sol.sharpness))  # fmt: skip
    key = dict(
        flow3_tau_end=tau_ok,
        flow3_completed=bool(int(sol.result) == 0),
        landing_dist=as_float(np.linalg.norm(np.asarray(zeta0) - np.asarray(cf.theta)[t_eos])),
        flow3_median_dist_avg=as_float(np.median(d_avg[w])) if w.any() else None,
        flow3_dist_avg_end=as_float(d_avg[-1]),
        flow3_dist_cf_end=as_float(d_cf[-1]),
        flow3_sharpness_end=as_float(sol.sharpness[-1]),
    )
    return arrays, key


def _oscillation(c, p, loss, gd, start, progress) -> tuple[dict, dict]:
    """GD's oscillation across Γ: ``||θ_t − Φ(θ_t)||²`` at ``osc_points`` steps of the window
    (consecutive pairs, so both signs of the period-two oscillation are in)."""
    T = np.asarray(gd.step).shape[0]
    if start is None or start >= T - 1:
        return {"osc_step": np.zeros(0, int), "osc_x2": np.zeros(0)}, {"gd_mean_x2": None}
    half = max(int(c["osc_points"]) // 2, 1)
    base = np.unique(np.linspace(start, T - 2, half).astype(int))
    steps = np.unique(np.concatenate([base, base + 1]))
    th = np.asarray(gd.theta)[steps]
    phase(f"{NAME} [{p}]", f"Φ(θ_t) at {steps.size} steps after EoS (GD's oscillation)", progress)
    phis = project_points(loss, th, progress=bar(f"{NAME} [{p}] Φ(θ_t)", progress))
    x2 = np.sum((th - phis) ** 2, axis=1)
    return {"osc_step": steps, "osc_x2": x2}, {"gd_mean_x2": as_float(np.mean(x2))}
