"""Theorem 4.7: GD+WD at the Edge of Stability tracks the sharpness-reduction flow.

From a point ``ζ0`` of Γ (the projection of a random direction), the flow (3) is integrated to a
fixed flow-time horizon ``T``. For each intrinsic learning rate ``η_in`` GD+WD starts from the
initialization of Theorem 4.7 (:func:`eosflow.eos_init`: ``θ_0 = Π(ζ0 + ξ)``,
``ξ ~ N(0, σ0² I/D)``, ``η̃_0 = 2/λ1(ζ0)``) and runs ``T/η_in`` steps; we record
``max_t ||θ_t − ζ(t η_in)||`` (and the same for ``Φ(θ_t)``) and fit the log–log slope against
``η_in``. Theorem 4.7 predicts an error ``O(η_in^{1/4 − o(1)})``: a slope ``>= 1/4``.

``lr = 1`` and ``wd = η_in``: the direction dynamics depend on ``(lr, wd)`` only through
``lr·wd`` (eq. (2) with the effective-LR update), so this choice loses no generality.
Problems: ``linreg`` (linear regression with BN, Section 5) or ``toy3d``.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from eosflow.analysis import eos_init, tracking
from eosflow.chunks import run_chunked
from eosflow.experiments._common import (
    as_float,
    bar,
    load_arrays,
    load_summary,
    new_figure,
    phase,
    save_figure,
)
from eosflow.flow import sharpness_reduction_flow
from eosflow.losses import (
    linear_regression_bn,
    make_linear_regression_data,
    toy3d,
    toy3d_curve,
)
from eosflow.manifold import project_to_manifold
from eosflow.runio import RunRecorder

NAME = "tracking"
DESCRIPTION = "Theorem 4.7: max_t ||theta_t - zeta(t eta_in)|| against eta_in, log-log slope"
PAPER = "Theorem 4.7"


def default_config(quick: bool) -> dict:
    """Quick: 3 values of ``η_in`` (16x span), horizon 1; full: 6 values (32x), horizon 2."""
    return {
        "quick": bool(quick),
        "seed": 0,
        "problem": "linreg",
        "n": 40,
        "d": 200,
        "etas": [4e-3, 1e-3, 2.5e-4] if quick else [4e-3, 2e-3, 1e-3, 5e-4, 2.5e-4, 1.25e-4],
        "horizon": 1.0 if quick else 2.0,
        "sigma0": 1e-3,
    }


def validate_config(config: dict) -> None:
    """Raise ``ValueError`` on settings the run cannot use."""
    if config["problem"] not in ("linreg", "toy3d"):
        raise ValueError("problem must be 'linreg' or 'toy3d'")
    etas = config["etas"]
    if len(etas) < 2 or any(not 0 < e < 1 for e in etas):
        raise ValueError("etas: need at least two values in (0, 1)")
    if not config["horizon"] > 0 or not config["sigma0"] > 0:
        raise ValueError("horizon and sigma0 must be > 0")


def _problem(c):
    key = jax.random.PRNGKey(int(c["seed"]))
    if c["problem"] == "toy3d":
        return toy3d(), toy3d_curve(0.5 + 0.1 * int(c["seed"]))
    kd, kz = jax.random.split(key)
    data = make_linear_regression_data(kd, n=c["n"], d=c["d"])
    loss = linear_regression_bn(data.X, data.y)
    return loss, project_to_manifold(loss, jax.random.normal(kz, (c["d"],))).point


def run(config: dict, out: Path, progress: bool = True) -> dict:
    """Flow once, GD+WD once per ``η_in``; saves distances over time and the fitted slope."""
    c = config
    validate_config(c)
    phase(NAME, f"{c['problem']}: a starting point ζ0 on the minimizer manifold Γ", progress)
    loss, zeta0 = _problem(c)
    rec = RunRecorder(out, NAME, c)
    T = float(c["horizon"])
    phase(
        NAME,
        f"sharpness-reduction flow (3) from ζ0 up to τ = {T:g} (compiling the solver "
        "takes most of it)",
        progress,
    )
    sol = sharpness_reduction_flow(loss, zeta0, T, method="dopri5", rtol=1e-9, num_saves=401)
    rec.update(flow_tau=np.asarray(sol.tau), flow_sharpness=np.asarray(sol.sharpness))
    max_theta, max_phi = [], []
    for i, eta in enumerate(c["etas"]):
        w0 = eos_init(loss, zeta0, 1.0, eta, c["sigma0"], jax.random.PRNGKey(1000 + i))
        steps = int(round(T / eta)) + 1
        every = max(1, steps // 500)  # ~500 projections per run for ||Φ(θ_t) − ζ||
        label = f"{NAME} η_in={eta:g}"
        phase(label, f"GD+WD from the Theorem 4.7 initialization, {steps} steps", progress)
        traj = run_chunked(loss, w0, 1.0, eta, steps, progress=progress, label=label,
                           checkpoint=rec.checkpoint(f"eta{i}_"))  # fmt: skip
        tk_all = tracking(loss, traj, sol, 0, with_phi=False)
        sub = traj._replace(**{f: getattr(traj, f)[::every] for f in ("step", "w", "norm")})
        phase(label, f"Φ(θ_t) at {len(sub.step)} steps (every {every}), against the flow", progress)
        tk = tracking(loss, sub, sol, 0, with_phi=True, progress=bar(f"{label} Φ(θ_t)", progress))
        max_theta.append(tk_all.dist_theta.max())
        max_phi.append(tk.dist_phi.max())
        rec.update(**{f"tau_{i}": tk_all.tau, f"dist_theta_{i}": tk_all.dist_theta,
                      f"tau_phi_{i}": tk.tau, f"dist_phi_{i}": tk.dist_phi})  # fmt: skip
    etas = np.asarray(c["etas"], float)
    slope_theta = float(np.polyfit(np.log(etas), np.log(max_theta), 1)[0])
    slope_phi = float(np.polyfit(np.log(etas), np.log(max_phi), 1)[0])
    rec.update(etas=etas, max_dist_theta=np.asarray(max_theta), max_dist_phi=np.asarray(max_phi))
    key = {
        "slope_theta": slope_theta,
        "slope_phi": slope_phi,
        "max_dist_theta": [as_float(x) for x in max_theta],
        "max_dist_phi": [as_float(x) for x in max_phi],
        "flow_sharpness_start": as_float(sol.sharpness[0]),
        "flow_sharpness_end": as_float(sol.sharpness[-1]),
    }
    rec.finish(
        key,
        dtype=zeta0.dtype,
        description=DESCRIPTION,
        paper=PAPER,
        notes=["Theorem 4.7 predicts slope >= 1/4 (error O(eta_in^(1/4 - o(1))))"],
    )
    return key


def plot(out: Path) -> list[Path]:
    """``tracking.png``: (a) the log–log fit, (b) distances over flow time for each ``η_in``."""
    out = Path(out)
    a = load_arrays(out)
    s = load_summary(out)
    kn = s["key_numbers"]
    fig, ax = new_figure(1, 2, (12, 4.5))
    pa, pb = ax[0]
    etas = a["etas"]
    pa.loglog(
        etas, a["max_dist_theta"], "o-", label=f"max ||θ_t − ζ||, slope {kn['slope_theta']:.2f}"
    )
    pa.loglog(
        etas, a["max_dist_phi"], "s-", label=f"max ||Φ(θ_t) − ζ||, slope {kn['slope_phi']:.2f}"
    )
    ref = a["max_dist_theta"][0] * (etas / etas[0]) ** 0.25
    pa.loglog(etas, ref, "k:", label="slope 1/4 (Theorem 4.7)")
    pa.set_xlabel("η_in = lr·wd")
    pa.legend(fontsize=8)
    pa.set_title("(a) tracking error against the intrinsic LR")
    for i, eta in enumerate(etas):
        pb.semilogy(a[f"tau_{i}"], np.maximum(a[f"dist_theta_{i}"], 1e-16), lw=0.5,
                    label=f"η_in={eta:g}")  # fmt: skip
    pb.set_xlabel("flow time τ = t·η_in")
    pb.set_title("(b) ||θ_t − ζ(t η_in)||")
    pb.legend(fontsize=8)
    return [save_figure(fig, out / "tracking.png")]
