"""Linear regression with BatchNorm: GD+WD at the Edge of Stability finds the min-norm solution.

Reproduces Section 5 of the paper (Theorem 5.1, Figure 5, and the contrast it stresses):

1. **GD+WD** (eq. (1)) on :func:`eosflow.losses.linear_regression_bn` from a random ``w0``: the
   loss is fit, ``η̃`` grows until EoS (Theorem 4.4), then the induced linear model ``(w̃, b̃)``
   (eq. (4)) moves towards the solution of (M), ``min ||w||² s.t. wᵀx_i + b = y_i``, and the test
   loss falls (Figure 5a).
2. **The sharpness-reduction flow** (eq. (3)) started at ``ζ0 = Φ(θ_{t_eos})`` and overlaid in flow
   time ``τ = (t − t_eos)·η_in`` (Theorem 4.7); its limit is (M) (Theorem 5.1).
3. **Oscillation at EoS** over the last ``window`` steps (Section 4.2.3, Figure 5c–d): ``2/η̃_t``
   against ``λ1(φ_t)`` and ``h_t = <θ_t − φ_t, v1(φ_t)>``.
4. **Contrast** (Section 5): GD *without* weight decay (same lr) stays in the stable regime (``η̃``
   only decreases), approximates gradient flow, never reaches EoS, and does not move towards (M)
   after fitting.

Key numbers: relative distance of ``(w̃, b̃)`` to (M) at EoS entry and at the end (and their
ratio), test loss at entry and end, sharpness at entry and end, the contrast's movement as a
fraction of the main run's, the flow's limit distance to (M), the period-two statistics.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from eosflow.analysis import oscillation, project_points, tracking
from eosflow.chunks import run_chunked
from eosflow.eos import eos_onset, fit_step
from eosflow.experiments._common import (
    as_float,
    bar,
    linreg_bn_problem,
    load_arrays,
    load_summary,
    new_figure,
    phase,
    save_figure,
)
from eosflow.flow import sharpness_reduction_flow
from eosflow.losses import linear_regression_bn_test_loss, relative_distance_to_min_norm
from eosflow.manifold import project_to_manifold
from eosflow.runio import RunRecorder

NAME = "linreg-bn"
DESCRIPTION = "linear regression with BN: GD+WD at EoS moves to the min-norm solution (M)"
PAPER = "Figure 5, Theorem 5.1, Section 5"

_FIELDS = ("step", "norm", "eff_lr", "loss", "grad_norm", "sharpness")


def default_config(quick: bool) -> dict:
    """Full: 10000 steps (~20-45 s on 2 cores, most of it compilation). Quick: 3000 steps."""
    return {
        "quick": bool(quick),
        "seed": 0,
        "n": 40,
        "d": 200,
        "n_test": 1000,
        "lr": 0.1,
        "wd": 0.01,
        "steps": 3000 if quick else 10000,
        "init_scale": 1.0,
        "sharpness_every": 10,
        "fit_tol": 1e-10,
        "window": 300,
        "contrast_wd": 0.0,
        "save_w_every": 10,
    }


def validate_config(config: dict) -> None:
    """Raise ``ValueError`` on settings the run cannot use."""
    if config["n"] < 4 or config["d"] <= config["n"]:
        raise ValueError("need n >= 4 samples and d > n features (over-parameterized)")
    if config["sharpness_every"] < 1 or config["save_w_every"] < 1:
        raise ValueError("sharpness_every and save_w_every must be >= 1")
    if config["save_w_every"] % config["sharpness_every"] and (
        config["sharpness_every"] % config["save_w_every"]
    ):
        raise ValueError(
            f"save_w_every ({config['save_w_every']}) and sharpness_every "
            f"({config['sharpness_every']}) must divide one another"
        )


def _dist_and_test(data, W):
    f = jax.jit(
        jax.vmap(
            lambda w: (
                relative_distance_to_min_norm(data.X, data.y, w),
                linear_regression_bn_test_loss(data.X, data.y, w, data.X_test, data.y_test),
            )
        )
    )
    rd, tl = f(jnp.asarray(W))
    return np.asarray(rd), np.asarray(tl)


def run(config: dict, out: Path, progress: bool = True) -> dict:
    """Run the four parts (GD+WD, flow, oscillation, contrast), save arrays and summary, return
    the key numbers."""
    c = config
    validate_config(c)
    phase(
        NAME,
        f"data (n={c['n']}, d={c['d']}), then GD+WD, {c['steps']} steps, every step "
        "recorded (the first chunk compiles)",
        progress,
    )
    data, loss, w0 = linreg_bn_problem(c, n_test=c["n_test"])
    rec = RunRecorder(out, NAME, c)
    traj, rd, key = _gd_wd(c, rec, data, loss, w0, progress)
    t_eos = key["eos_step"]
    if t_eos is None:
        key["note"] = "EoS was not reached: increase steps or lr*wd"
        rec.finish(key, dtype=w0.dtype, description=DESCRIPTION, paper=PAPER)
        return key
    key.update(_flow(c, rec, data, loss, traj, t_eos, progress))
    key.update(_oscillation(c, rec, loss, traj, t_eos, progress))
    key.update(_contrast(c, rec, data, loss, w0, rd, t_eos, progress))
    rec.finish(
        key,
        dtype=w0.dtype,
        description=DESCRIPTION,
        paper=PAPER,
        notes=[
            "rel_dist = ||(w~, b~) - (w_M, b_M)|| / ||(w_M, b_M)||, (w~, b~) from eq. (4)",
            "rel_dist of theta_t is floored by the O(sqrt(eta_in)) oscillation across Gamma; "
            "rel_dist_phi uses Phi(theta_t), the projection onto Gamma",
            "flow starts at Phi(theta at EoS entry); flow time tau = (t - eos_step) * lr * wd",
            "contrast: same lr, wd = contrast_wd (0: no weight decay, stays stable, ~ gradient flow)",
            "data: x ~ N(1, I_d), linear teacher; the paper's data scaling is not given",
        ],
    )
    return key


def _gd_wd(c, rec, data, loss, w0, progress):
    """Part 1 (Figure 5a-b): GD+WD, eq. (1), every step; distance to (M), test loss, EoS entry."""
    steps, lr, wd, k = int(c["steps"]), float(c["lr"]), float(c["wd"]), int(c["save_w_every"])
    # Every step recorded (the oscillation analysis needs consecutive steps).
    traj = run_chunked(
        loss, w0, lr, wd, steps, record_every=1, sharpness_every=int(c["sharpness_every"]),
        progress=progress, label=NAME, on_chunk=rec.on_chunk("gd_", _FIELDS),
        checkpoint=rec.checkpoint("gd_"),
    )  # fmt: skip
    W = np.asarray(traj.w)
    rd, tl = _dist_and_test(data, W[::k])
    rec.update(w_step=np.asarray(traj.step)[::k], w_sub=W[::k], rel_dist=rd, test_loss=tl)
    t_fit = fit_step(traj, c["fit_tol"])
    t_eos = eos_onset(traj, fit_tol=c["fit_tol"])
    key: dict = {"fit_step": t_fit, "eos_step": t_eos}
    if t_eos is None:
        return traj, rd, key
    i_eos = t_eos // k
    lam = np.asarray(traj.sharpness)
    lam_ok = np.isfinite(lam)
    key.update(
        rel_dist_at_eos=as_float(rd[i_eos]),
        rel_dist_end=as_float(rd[-1]),
        rel_dist_drop=as_float(rd[i_eos] / rd[-1]),
        test_loss_at_eos=as_float(tl[i_eos]),
        test_loss_end=as_float(tl[-1]),
        sharpness_at_eos=as_float(lam[t_eos]),
        sharpness_end=as_float(lam[lam_ok][-1]),
        train_loss_eos_median=as_float(np.median(np.asarray(traj.loss)[t_eos:])),
    )
    return traj, rd, key


def _flow(c, rec, data, loss, traj, t_eos, progress) -> dict:
    """Part 2 (Theorems 4.7, 5.1): the flow (3) from Φ(θ at EoS entry), tracking, Φ(θ_t) to (M)."""
    steps, k = int(c["steps"]), int(c["save_w_every"])
    eta_in = float(c["lr"]) * float(c["wd"])
    phase(NAME, f"projection of θ at EoS entry (step {t_eos}) onto the manifold Γ", progress)
    zeta0 = project_to_manifold(loss, jnp.asarray(traj.theta[t_eos])).point
    tau_end = (steps - 1 - t_eos) * eta_in
    phase(
        NAME,
        f"sharpness-reduction flow (3) up to τ = {tau_end:.3g} (compiling the solver "
        "takes most of it)",
        progress,
    )
    sol = sharpness_reduction_flow(loss, zeta0, tau_end, method="dopri5", rtol=1e-8,
                                   num_saves=201)  # fmt: skip
    flow_rd, flow_tl = _dist_and_test(data, np.asarray(sol.zeta))
    sub = traj._replace(**{f: getattr(traj, f)[::k] for f in ("step", "w", "norm")})
    phase(NAME, "tracking: Φ(θ_t) against the flow after EoS entry (Theorem 4.7)", progress)
    tk = tracking(loss, sub, sol, t_eos, with_phi=True, progress=bar(f"{NAME} tracking", progress))
    # Where GD is *on Γ*: θ_t oscillates across Γ with amplitude O(sqrt(η_in)), which bounds
    # the distance of θ_t itself to (M) from below; Φ(θ_t) removes the oscillation.
    phase(NAME, f"Φ(θ_t) at {len(sub.step)} steps (every {k}), for its distance to (M)", progress)
    phis = project_points(loss, sub.theta, progress=bar(f"{NAME} Φ(θ_t)", progress))
    rd_phi, _ = _dist_and_test(data, phis)
    rec.update(
        flow_tau=np.asarray(sol.tau), flow_sharpness=np.asarray(sol.sharpness),
        flow_rel_dist=flow_rd, flow_test_loss=flow_tl, flow_grad_norm=np.asarray(sol.grad_norm),
        track_step=tk.step, track_dist_theta=tk.dist_theta, track_dist_phi=tk.dist_phi,
        rel_dist_phi=rd_phi,
    )  # fmt: skip
    return dict(
        rel_dist_phi_end=as_float(rd_phi[-1]),
        flow_rel_dist_end=as_float(flow_rd[-1]),
        flow_sharpness_end=as_float(sol.sharpness[-1]),
        tracking_max_dist_phi=as_float(tk.dist_phi.max()),
        tracking_max_dist_theta=as_float(tk.dist_theta.max()),
    )


def _oscillation(c, rec, loss, traj, t_eos, progress) -> dict:
    """Part 3 (Section 4.2.3, Figure 5c-d): the period-two oscillation over the last steps."""
    steps = int(c["steps"])
    # Over the last `window` steps (well after entry).
    start = max(t_eos + 1, steps - int(c["window"]))
    phase(NAME, f"oscillation at EoS: Φ(θ_t) and λ1 at steps {start}..{steps - 1}", progress)
    osc = oscillation(
        loss, traj, start=start, stop=steps, progress=bar(f"{NAME} oscillation", progress)
    )
    rec.update(
        osc_step=osc.step, osc_h=osc.h, osc_cos=osc.cos, osc_sharpness_phi=osc.sharpness_phi,
        osc_two_over_eff_lr=osc.two_over_eff_lr,
    )  # fmt: skip
    return dict(
        h_sign_change_share=osc.sign_change_share,
        median_abs_cos_x_v1=osc.median_cos,
    )


def _contrast(c, rec, data, loss, w0, rd, t_eos, progress) -> dict:
    """Part 4 (Section 5's contrast): GD without WD (≈ gradient flow on the sphere), no EoS."""
    steps, lr, k = int(c["steps"]), float(c["lr"]), int(c["save_w_every"])
    phase(NAME, f"contrast: GD with wd = {c['contrast_wd']:g}, {steps} steps", progress)
    ctr = run_chunked(
        loss, w0, lr, float(c["contrast_wd"]), steps, record_every=k,
        sharpness_every=int(c["sharpness_every"]) * k // np.gcd(int(c["sharpness_every"]), k),
        progress=progress, label=NAME + " contrast", on_chunk=rec.on_chunk("contrast_", _FIELDS),
        checkpoint=rec.checkpoint("contrast_"),
    )  # fmt: skip
    c_rd, c_tl = _dist_and_test(data, np.asarray(ctr.w))
    rec.update(contrast_rel_dist=c_rd, contrast_test_loss=c_tl)
    c_fit = fit_step(ctr, c["fit_tol"])
    c_eos = eos_onset(ctr, fit_tol=c["fit_tol"]) if c_fit is not None else None
    i_cfit = 0 if c_fit is None else c_fit // k
    moved_main = rd[t_eos // k] - rd[-1]  # the main run's, from EoS entry to the end
    moved_ctr = c_rd[i_cfit] - c_rd[-1]
    return dict(
        contrast_fit_step=c_fit,
        contrast_eos_step=c_eos,
        contrast_rel_dist_at_fit=as_float(c_rd[i_cfit]),
        contrast_rel_dist_end=as_float(c_rd[-1]),
        contrast_test_loss_end=as_float(c_tl[-1]),
        contrast_movement_fraction=as_float(moved_ctr / moved_main),
    )


def plot(out: Path) -> list[Path]:
    """``figure5.png`` (a–d as in the paper's Figure 5) and ``theorem5_1.png`` (GD, flow and the
    no-WD contrast approaching (M); sharpness)."""
    out = Path(out)
    a = load_arrays(out)
    s = load_summary(out)
    kn, cfg = s["key_numbers"], s["config"]
    paths = []
    t_eos = kn.get("eos_step")
    eta_in = cfg["lr"] * cfg["wd"]
    fig, ax = new_figure(2, 2, (12, 8))
    (pa, pb), (pc, pd) = ax
    pa.semilogy(a["w_step"], a["rel_dist"], label="GD+WD: rel. distance to (M)")
    pa.semilogy(a["w_step"], a["test_loss"], label="GD+WD: test loss")
    if t_eos is not None:
        steps_flow = t_eos + a["flow_tau"] / eta_in
        pa.semilogy(steps_flow, a["flow_rel_dist"], "k--", lw=1, label="flow (3): rel. distance")
        pa.axvline(t_eos, color="gray", ls=":", lw=1, label="EoS entry")
    pa.set_xlabel("step")
    pa.legend(fontsize=8)
    pa.set_title("(a) test loss and distance to the min-norm solution (M)")
    pb.semilogy(a["gd_step"], np.maximum(a["gd_loss"], 1e-35), lw=0.6)
    pb.set_xlabel("step")
    pb.set_title("(b) training loss")
    if "osc_step" in a:
        pc.plot(a["osc_step"], a["osc_two_over_eff_lr"], lw=0.8, label="2/η̃_t")
        pc.plot(a["osc_step"], a["osc_sharpness_phi"], lw=1.2, label="λ1(φ_t)")
        pc.legend(fontsize=8)
        pd.plot(a["osc_step"], a["osc_h"], lw=0.6)
        pd.axhline(0, color="k", lw=0.5)
    pc.set_title("(c) 2/η̃_t vs λ1(φ_t) at EoS (last steps)")
    pc.set_xlabel("step")
    pd.set_title("(d) h_t = <θ_t − φ_t, v1(φ_t)>")
    pd.set_xlabel("step")
    fig.suptitle(f"Figure 5: linear regression with BN (n={cfg['n']}, d={cfg['d']}), "
                 f"lr={cfg['lr']}, wd={cfg['wd']}")  # fmt: skip
    paths.append(save_figure(fig, out / "figure5.png"))

    fig, ax = new_figure(1, 2, (12, 4.5))
    p1, p2 = ax[0]
    p1.semilogy(a["w_step"], a["rel_dist"], label="GD+WD θ_t")
    if "rel_dist_phi" in a:
        p1.semilogy(a["w_step"], a["rel_dist_phi"], lw=1, label="GD+WD Φ(θ_t) (on Γ)")
    if "contrast_rel_dist" in a:
        p1.semilogy(a["contrast_step"], a["contrast_rel_dist"], label="GD, no WD (no EoS)")
    if t_eos is not None:
        p1.semilogy(t_eos + a["flow_tau"] / eta_in, a["flow_rel_dist"], "k--", lw=1, label="flow")
    p1.set_xlabel("step")
    p1.set_title("distance of (w̃, b̃) to (M) (Theorem 5.1)")
    p1.legend(fontsize=8)
    ok = np.isfinite(a["gd_sharpness"])
    p2.plot(a["gd_step"][ok], a["gd_sharpness"][ok], lw=0.8, label="GD+WD λ1(θ_t)")
    if t_eos is not None:
        p2.plot(t_eos + a["flow_tau"] / eta_in, a["flow_sharpness"], "k--", lw=1, label="flow")
    p2.set_xlabel("step")
    p2.set_title("spherical sharpness")
    p2.legend(fontsize=8)
    paths.append(save_figure(fig, out / "theorem5_1.png"))
    return paths
