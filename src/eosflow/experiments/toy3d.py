"""A 3-D toy: GD+WD oscillates around the minimizer curve and drifts to its flattest point.

Our stand-in for the paper's Figure 4 (its Appendix F formula is unavailable): the loss
:func:`eosflow.losses.toy3d`, ``L(w) = (c + θ_1) θ_3²``, whose minimizers on the sphere are the
equator ``Γ = {(cos φ, sin φ, 0)}`` with spherical sharpness ``λ1 = 2(c + cos φ)``; the flattest
point is ``ζ* = (−1, 0, 0)``.

GD+WD (eq. (1)) from a random ``w0`` first fits (reaches Γ), enters EoS (Theorem 4.4), then moves
along Γ towards ``ζ*`` while oscillating across it (Section 4.2). The sharpness-reduction flow (3)
started at ``Φ(θ_{t_eos})`` is overlaid. Key numbers: ``||Φ(θ_T) − ζ*||`` (where GD ends, on Γ),
``||θ_T − ζ*||`` (includes the O(√η_in) oscillation across Γ), the angle ``φ`` at EoS entry and at
the end, and the flow's end point.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib as mpl
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from eosflow.chunks import run_chunked
from eosflow.eos import eos_onset
from eosflow.experiments._common import as_float, load_arrays, load_summary, phase, save_figure
from eosflow.flow import sharpness_reduction_flow
from eosflow.losses import (
    TOY3D_ROTATION,
    toy3d,
    toy3d_curve,
    toy3d_flattest_point,
    toy3d_sharpness_on_curve,
)
from eosflow.manifold import project_to_manifold
from eosflow.runio import RunRecorder

NAME = "toy3d"
DESCRIPTION = "3-D toy loss: GD+WD at EoS drifts along the minimizer curve to its flattest point"
PAPER = "Figure 4"

_FIELDS = ("step", "theta", "norm", "eff_lr", "loss", "grad_norm", "sharpness")


def default_config(quick: bool) -> dict:
    """Quick: ``η_in = 1e-3``, 30000 steps (flow time 30); full: ``η_in = 2.5e-4``, 240000 steps."""
    return {
        "quick": bool(quick),
        "seed": 0,
        "c": 2.0,
        "lr": 0.1,
        "wd": 0.01 if quick else 0.0025,
        "steps": 30000 if quick else 240000,
        "record_every": 10 if quick else 40,
        "sharpness_every": 10 if quick else 40,
        "fit_tol": 1e-12,
    }


def validate_config(config: dict) -> None:
    """Raise ``ValueError`` on settings the run cannot use."""
    if not config["c"] > 1:
        raise ValueError("toy3d needs c > 1")
    if config["sharpness_every"] % config["record_every"]:
        raise ValueError(
            f"sharpness_every ({config['sharpness_every']}) must be a multiple of record_every "
            f"({config['record_every']})"
        )


def _angle(theta) -> np.ndarray:
    """The angle ``φ`` of ``θ`` in Γ's plane (coordinates ``θ' = Rθ``; ζ* is at ``φ = ±π``)."""
    tp = np.asarray(theta) @ TOY3D_ROTATION.T
    return np.arctan2(tp[..., 1], tp[..., 0])


def run(config: dict, out: Path, progress: bool = True) -> dict:
    """GD+WD from a random ``w0``, then the flow from its EoS entry; saves and returns key numbers."""
    c = config
    validate_config(c)
    loss = toy3d(float(c["c"]))
    w0 = jax.random.normal(jax.random.PRNGKey(int(c["seed"])), (3,))
    rec = RunRecorder(out, NAME, c)
    lr, wd, steps = float(c["lr"]), float(c["wd"]), int(c["steps"])
    phase(NAME, f"GD+WD, {steps} steps (the first chunk compiles)", progress)
    traj = run_chunked(
        loss, w0, lr, wd, steps, record_every=int(c["record_every"]),
        sharpness_every=int(c["sharpness_every"]), progress=progress, label=NAME,
        on_chunk=rec.on_chunk("gd_", _FIELDS),
        checkpoint=rec.checkpoint("gd_"),
    )  # fmt: skip
    star = np.asarray(toy3d_flattest_point())
    phase(NAME, "projection of the last θ onto the minimizer curve Γ", progress)
    theta_end = jnp.asarray(traj.theta[-1])
    phi_end = np.asarray(project_to_manifold(loss, theta_end).point)
    t_eos = eos_onset(traj, fit_tol=c["fit_tol"])
    key = {
        "eos_step": t_eos,
        "dist_phi_end_to_flattest": as_float(np.linalg.norm(phi_end - star)),
        "dist_theta_end_to_flattest": as_float(np.linalg.norm(np.asarray(theta_end) - star)),
        "angle_end": as_float(_angle(phi_end)),
        "sharpness_end": as_float(np.asarray(traj.sharpness)[-1]),
        "sharpness_flattest": as_float(2 * (c["c"] - 1)),
    }
    if t_eos is not None:
        i = int(np.searchsorted(np.asarray(traj.step), t_eos))
        zeta0 = project_to_manifold(loss, jnp.asarray(traj.theta[i])).point
        tau_end = (int(traj.step[-1]) - t_eos) * lr * wd
        phase(
            NAME,
            f"sharpness-reduction flow (3) from EoS entry (step {t_eos}) up to "
            f"τ = {tau_end:.3g} (compiling the solver takes most of it)",
            progress,
        )
        sol = sharpness_reduction_flow(loss, zeta0, tau_end, method="dopri5", rtol=1e-9,
                                       num_saves=301)  # fmt: skip
        rec.update(flow_tau=np.asarray(sol.tau), flow_zeta=np.asarray(sol.zeta),
                   flow_sharpness=np.asarray(sol.sharpness))  # fmt: skip
        key.update(
            angle_at_eos=as_float(_angle(zeta0)),
            flow_dist_end_to_flattest=as_float(np.linalg.norm(np.asarray(sol.zeta[-1]) - star)),
            gd_vs_flow_end=as_float(np.linalg.norm(phi_end - np.asarray(sol.zeta[-1]))),
        )
    rec.finish(
        key,
        dtype=w0.dtype,
        description=DESCRIPTION,
        paper=PAPER,
        notes=[
            "L(w) = (c + <a,theta>) <b,theta>^2 (a, b rows of eosflow.losses.TOY3D_ROTATION)",
            "minimizers: the great circle <b,theta> = 0; sharpness 2(c + cos phi); flattest -a",
            "dist_phi uses the projection of theta_T onto the curve; angles phi in its plane",
        ],
    )
    return key


def plot(out: Path) -> list[Path]:
    """``figure4.png``: the sphere shaded by loss, Γ coloured by sharpness, GD's θ_t, the flow and
    ζ*, beside spherical sharpness along GD and along the flow."""
    out = Path(out)
    a = load_arrays(out)
    s = load_summary(out)
    cfg = s["config"]
    c = float(cfg["c"])
    fig = Figure(figsize=(11, 5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 2, 1, projection="3d")
    u, v = np.meshgrid(np.linspace(0, 2 * np.pi, 60), np.linspace(0, np.pi, 30))
    X, Y, Z = np.cos(u) * np.sin(v), np.sin(u) * np.sin(v), np.cos(v)
    Lval = (c + X) * Z**2
    ax.plot_surface(X, Y, Z, facecolors=mpl.colormaps["Greys_r"](Lval / Lval.max()), alpha=0.25,
                    linewidth=0, shade=False)  # fmt: skip
    ph = np.linspace(0, 2 * np.pi, 200)
    curve = np.asarray(toy3d_curve(ph))
    sharp = np.asarray(toy3d_sharpness_on_curve(ph, c))
    ax.scatter(curve[:, 0], curve[:, 1], curve[:, 2], c=sharp, cmap="viridis", s=6)
    th = a["gd_theta"]
    ax.plot(th[:, 0], th[:, 1], th[:, 2], color="C3", lw=0.6, label="GD+WD θ_t")
    if "flow_zeta" in a:
        z = a["flow_zeta"]
        ax.plot(z[:, 0], z[:, 1], z[:, 2], "k--", lw=1.5, label="flow (3)")
    ax.scatter([-1], [0], [0], color="red", marker="*", s=150, label="flattest ζ*")
    ax.set_box_aspect((1, 1, 1))
    b = TOY3D_ROTATION[2]  # look along the normal of Γ's plane (tilted 25° so the sphere shows)
    ax.view_init(elev=np.degrees(np.arcsin(b[2])) - 25, azim=np.degrees(np.arctan2(b[1], b[0])))
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title("Figure 4 (our toy): Γ coloured by sharpness")
    ax2 = fig.add_subplot(1, 2, 2)
    ok = np.isfinite(a["gd_sharpness"])
    ax2.plot(a["gd_step"][ok], a["gd_sharpness"][ok], lw=0.8, label="GD+WD λ1(θ_t)")
    eos = s["key_numbers"].get("eos_step")
    if "flow_tau" in a and eos is not None:
        steps = eos + a["flow_tau"] / (cfg["lr"] * cfg["wd"])
        ax2.plot(steps, a["flow_sharpness"], "k--", lw=1.2, label="flow λ1(ζ)")
    ax2.axhline(2 * (c - 1), color="red", ls=":", label="λ1 at ζ*")
    ax2.set_xlabel("step")
    ax2.set_title("spherical sharpness")
    ax2.legend(fontsize=8)
    return [save_figure(fig, out / "figure4.png")]
