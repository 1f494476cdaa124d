"""Figures of the ``central-flow`` experiment (:mod:`eosflow.experiments.central_flow`): one PNG
per problem, four panels in flow time ``τ = η_in·t`` (the step ``t`` on the top axis)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from eosflow.experiments._common import load_arrays, load_summary, new_figure, save_figure

__all__ = ["plot"]

_TITLES = {"linreg": "linear regression with BN", "mc": "matrix completion with BN"}


def plot(out: Path) -> list[Path]:
    """``central_flow_linreg.png`` and/or ``central_flow_mc.png``: (a) loss of GD's iterate, its
    two-step average and the central flow's prediction ``L + ½⟨Σ, H⟩``; (b) ``η̃λ_i`` of GD and
    the flow; (c) the flow's ``Σ`` (eigenvalues and trace) against ``η_in/2`` and GD's
    ``||θ_t − Φ(θ_t)||²``; (d) distances of the central flow and flow (3) to GD's average."""
    out = Path(out)
    a = load_arrays(out)
    s = load_summary(out)
    paths = []
    for p in s["config"]["problems"]:
        if f"{p}_cf_step" not in a:
            continue
        fig = _figure(p, a, s["key_numbers"][p], s["config"])
        paths.append(save_figure(fig, out / f"central_flow_{p}.png"))
    return paths


def _entries(axis, kn, eta):
    for t, style, lab in ((kn.get("eos_step_gd"), ":", "GD enters EoS"),
                          (kn.get("eos_step_flow"), "-.", "flow enters EoS")):  # fmt: skip
        if t is not None:
            axis.axvline(t * eta, color="gray", ls=style, lw=1, label=lab)


def _figure(p: str, a: dict, kn: dict, cfg: dict):
    eta = kn["eta_in"]
    fig, ax = new_figure(2, 2, (13, 8.5))
    (pa, pb), (pc, pd) = ax
    step = a[f"{p}_gd_step"]
    tau, tau2 = step * eta, step[:-1] * eta
    pa.semilogy(tau, np.maximum(a[f"{p}_gd_loss"], 1e-32), lw=0.4, color="C7", label="GD L(θ_t)")
    pa.semilogy(tau2, np.maximum(a[f"{p}_avg_loss"], 1e-32), lw=1, color="C0",
                label="GD two-step average (L_t + L_{t+1})/2")  # fmt: skip
    pa.semilogy(tau, np.maximum(a[f"{p}_cf_loss_avg"], 1e-32), "--", lw=1.2, color="C3",
                label="central flow: predicted L + ½⟨Σ,H⟩")  # fmt: skip
    pa.semilogy(tau, np.maximum(a[f"{p}_cf_loss"], 1e-32), ":", lw=1, color="k",
                label="central flow: L(θ)")  # fmt: skip
    pa.set_title("(a) training loss")
    lam = a[f"{p}_gd_sharpness"]
    ok = np.isfinite(lam)
    pb.plot(tau[ok], (a[f"{p}_gd_eff_lr"] * lam)[ok], lw=0.5, color="C0", label="GD η̃_t λ1(θ_t)")
    ce = a[f"{p}_cf_eff_lr"][:, None] * a[f"{p}_cf_sharpness"]
    for i in range(ce.shape[1]):
        pb.plot(tau, ce[:, i], "--", lw=1.1, color=f"C{3 + i}", label=f"central flow η̃ λ{i + 1}")
    pb.axhline(2.0, color="k", lw=0.7)
    pb.set_ylim(0, 2.4)
    pb.set_title("(b) η̃·λ_i (edge of stability at 2)")
    ev = np.linalg.eigvalsh(a[f"{p}_cf_sigma"])[:, ::-1]
    for i in range(ev.shape[1] if ev.shape[1] > 1 else 0):
        pc.plot(tau, ev[:, i], lw=0.9, label=f"eigenvalue {i + 1} of Σ")
    pc.plot(tau, a[f"{p}_cf_trace_sigma"], color="C3", lw=1.3, label="central flow tr Σ (σ²)")
    if a[f"{p}_osc_step"].size:
        pc.plot(a[f"{p}_osc_step"] * eta, a[f"{p}_osc_x2"], ".", ms=3, color="C0",
                label="GD ||θ_t − Φ(θ_t)||²")  # fmt: skip
    pc.axhline(eta / 2, color="k", ls="--", lw=0.8, label="η_in/2")
    pc.set_title("(c) oscillation covariance Σ")
    pd.semilogy(tau2, a[f"{p}_dist_cf_iter"], lw=0.4, color="C7", label="central flow – GD iterate")
    pd.semilogy(tau2, a[f"{p}_dist_cf_avg"], lw=1, color="C3",
                label="central flow – GD two-step average")  # fmt: skip
    if f"{p}_flow3_step" in a:
        f3 = a[f"{p}_flow3_step"] * eta
        pd.semilogy(f3, a[f"{p}_flow3_dist_avg"], "--", color="C2", label="flow (3) – GD average")
        pd.semilogy(f3, a[f"{p}_flow3_dist_cf"], ":", color="C4", label="flow (3) – central flow")
    pd.set_ylim(bottom=1e-5)
    pd.set_title("(d) distance to GD (unit sphere)")
    for axis in ax.flat:
        _entries(axis, kn, eta)
        axis.set_xlabel("flow time τ = η_in·t")
        top = axis.secondary_xaxis("top", functions=(lambda x: x / eta, lambda t: t * eta))
        top.set_xlabel("step t", fontsize=8)
        axis.legend(fontsize=7)
    fig.suptitle(
        f"central flow vs GD+WD: {_TITLES[p]} (D = {kn['D']}), lr = {cfg[f'{p}_lr']}, "
        f"wd = {cfg[f'{p}_wd']}, η_in = {eta:g}, k = {cfg[f'{p}_k']}, "
        f"{cfg['substeps']} substeps/step"
    )
    return fig
