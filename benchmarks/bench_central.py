"""Cost of the central flow (issue 14, item 9): Hessian-vector products and wall time per GD step
of :func:`eosflow.central.central_flow` against :func:`eosflow.simulate` with the spherical
sharpness every step (and plain ``simulate``, the bare GD step), measured in the same run.

Problems, as the ``central-flow`` experiment runs them (from its ``w0``, so the first ``steps``
steps of that run, before and into EoS as the step count allows):

* ``linreg``: linear regression with BN, n=20, d=60 (D=60), lr 0.1, wd 0.01, ``k = 1``;
* ``mc``: matrix completion with BN, 50×50, rank 2, 800 entries, factors of width 50 (D=5000),
  lr 0.5, wd 0.005, ``w0 = 0.1·N(0, I)``, ``k = 3``.

Each is 4 Euler substeps per GD step, Lanczos Krylov dimension 10 (the defaults). Timing: one
compile call each, then ``repeats`` interleaved rounds (:func:`_common.time_calls`); post-compile
medians and the spread (min–max) of the rounds. HVPs: the central flow records its own count
per step (Lanczos cycles + ``k(k+1)/2`` third-derivative HVPs, each counted as one HVP, per
substep); for ``simulate`` the driver's warm-started Lanczos is replayed on the recorded
iterates (same solver, tolerance and warm start) to count its HVPs.
"""

from __future__ import annotations

import _paths  # noqa: F401  (sys.path, float64): first

# isort: split
import jax
import jax.numpy as jnp
import numpy as np
from _common import table, time_calls

import eosflow
from eosflow.central import central_flow
from eosflow.eigensolvers import default_v0, hvp, lanczos_top_eigs
from eosflow.experiments.central_flow import default_config, problem


def _config(quick: bool) -> dict:
    return {
        "steps": {"linreg": 200 if quick else 1000, "mc": 10 if quick else 60},
        "repeats": 3 if quick else 5,
    }


def _settings(p: str) -> dict:
    c = default_config(False)
    c.update(mc_m=50, mc_num_observed=800)  # Figure 1's size, D = 5000 (the experiment: D = 800)
    return {"lr": c[f"{p}_lr"], "wd": c[f"{p}_wd"], "k": c[f"{p}_k"], "cfg": c}


def _sim_hvps(loss, ws, lanczos_iter: int = 20) -> np.ndarray:
    """HVPs of ``simulate``'s sharpness at each iterate (the driver's solver, warm-started)."""

    @jax.jit
    def count(ws):
        def body(v, w):
            th = w / jnp.linalg.norm(w)
            r = lanczos_top_eigs(lambda u: hvp(loss, th, u), v, 1, num_iter=lanczos_iter)
            return r.eigenvectors[0], r.num_hvps

        return jax.lax.scan(body, default_v0(ws.shape[1], ws.dtype), ws)[1]

    return np.asarray(count(jnp.asarray(ws)))


def bench_problem(p: str, cfg: dict, log) -> dict:
    s = _settings(p)
    loss, w0 = problem(s["cfg"], p)
    lr, wd, k, steps = s["lr"], s["wd"], s["k"], cfg["steps"][p]
    fns = {
        "simulate": lambda: eosflow.simulate(loss, w0, lr, wd, steps).w_final,
        "simulate+sharpness": lambda: (
            eosflow.simulate(loss, w0, lr, wd, steps, sharpness_every=1).w_final
        ),
        "central_flow": lambda: central_flow(loss, w0, lr, wd, steps, k=k).w_final,
    }
    log(f"  {p}: D={w0.size}, k={k}, {steps} steps, {cfg['repeats']} interleaved rounds")
    t = time_calls(fns, repeats=cfg["repeats"])
    cf = central_flow(loss, w0, lr, wd, steps, k=k)
    sim = eosflow.simulate(loss, w0, lr, wd, steps, sharpness_every=1)
    h_cf = np.asarray(cf.num_hvps)
    h_sim = _sim_hvps(loss, np.asarray(sim.w))
    res = {"problem": p, "D": int(w0.size), "k": k, "steps": steps, "lr": lr, "wd": wd}
    for name, tm in t.items():
        res[name] = {**tm.as_dict(), "per_step_s": tm.median_s / steps,
                     "per_step_min_s": min(tm.times) / steps,
                     "per_step_max_s": max(tm.times) / steps}  # fmt: skip
    res["hvps_central"] = {"median": float(np.median(h_cf)), "min": int(h_cf.min()),
                           "max": int(h_cf.max()), "mean": float(h_cf.mean())}  # fmt: skip
    res["hvps_simulate"] = {"median": float(np.median(h_sim)), "min": int(h_sim.min()),
                            "max": int(h_sim.max()), "mean": float(h_sim.mean())}  # fmt: skip
    res["active_max"] = int(np.max(np.asarray(cf.active)))
    log(
        f"    per step: simulate {res['simulate']['per_step_s'] * 1e3:.3f} ms, +sharpness "
        f"{res['simulate+sharpness']['per_step_s'] * 1e3:.3f} ms, central flow "
        f"{res['central_flow']['per_step_s'] * 1e3:.3f} ms; HVPs/step central "
        f"{res['hvps_central']['mean']:.1f}, simulate's sharpness {res['hvps_simulate']['mean']:.1f}"
    )
    return res


def _ms(r: dict, name: str) -> str:
    x = r[name]
    return (f"{x['per_step_s'] * 1e3:.3g} ({x['per_step_min_s'] * 1e3:.3g}–"
            f"{x['per_step_max_s'] * 1e3:.3g})")  # fmt: skip


def _hv(h: dict) -> str:
    return f"{h['mean']:.1f} (median {h['median']:.0f}, {h['min']}–{h['max']})"


def run(quick: bool, peaks: dict, log) -> tuple[str, dict]:
    cfg = _config(quick)
    results = [bench_problem(p, cfg, log) for p in ("linreg", "mc")]
    rows = []
    for r in results:
        cf, ss = r["central_flow"]["per_step_s"], r["simulate+sharpness"]["per_step_s"]
        rows.append([
            f"{r['problem']} (D={r['D']}, k={r['k']}, {r['steps']} steps)",
            _ms(r, "simulate"), _ms(r, "simulate+sharpness"), _ms(r, "central_flow"),
            f"{cf / ss:.2f}x", _hv(r["hvps_simulate"]), _hv(r["hvps_central"]),
            f"{r['hvps_central']['mean'] / max(r['hvps_simulate']['mean'], 1e-300):.1f}x",
        ])  # fmt: skip
    md = table(
        ["problem", "simulate ms/step (min–max)", "simulate + sharpness every step",
         "central flow (4 substeps)", "central / sharpness-every-step",
         "HVPs/step: simulate's sharpness", "HVPs/step: central flow", "HVP ratio"],
        rows,
    )  # fmt: skip
    md += (
        "\n\nPost-compile wall time per GD step: median over the interleaved rounds, (min–max) "
        "over the rounds. HVPs per GD step: mean (median, min–max) over the steps; the central "
        "flow's count is its own (per substep: warm-started top-k Lanczos + k(k+1)/2 "
        "third-derivative HVPs, each counted as one), simulate's is its warm-started Lanczos "
        "replayed on the recorded iterates. Early steps of the run (from w0), as in the "
        "central-flow experiment."
    )
    return md, {"config": cfg, "problems": results}
