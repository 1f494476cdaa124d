"""Sweep throughput (issue 6): ``eosflow.sweep`` over B configurations vs ``simulate`` once per
configuration, in trajectory-steps per second, float64.

Problems: linear regression with BN (n=50, d=500 and d=5000) and matrix completion with BN (dense
mask). Configurations: B learning rates (a grid over lr, one wd), one shared ``w0``. Both sides
record once per run (``record_every = steps``) so the comparison is of the computation, not of
writing ``(B, steps, D)`` parameter records. The sequential baseline calls
``eosflow.simulate`` once per configuration (after a warm-up call that compiles it; other lr values
do not recompile); its throughput does not depend on B, so it is measured once on
``seq_configs`` configurations. Throughput = B x steps / wall time of one call (median). All
calls of a problem (sequential, each B, and their ``steps=1`` fixed-cost calls) are timed
interleaved (``_common.time_calls``), so a burst of machine noise hits baseline and sweep alike.
"""

from __future__ import annotations

import _problems as P
import numpy as np
from _common import block, table, time_calls, verdict

import eosflow

TARGET_LINREG = 2.5
TARGET_MC = 1.0
TARGET_MC_GPU = 20.0


def _config(quick: bool) -> dict:
    return {
        "problems": {
            "linreg-500": 100 if quick else 500,
            "linreg-5000": 30 if quick else 200,
            "mc": 30 if quick else 200,
        },
        "B": [1, 8, 64] if quick else [1, 8, 64, 256],
        "repeats": 2 if quick else 5,
        "seq_configs": 4 if quick else 8,
    }


def _marginal(n_steps: int, call_s: float, fixed_s: float) -> float | None:
    """Throughput without the fixed cost, or None when the call is mostly fixed cost (< 20% left:
    the difference of two noisy times would mean nothing)."""
    rest = call_s - fixed_s
    return n_steps / rest if rest > 0.2 * call_s else None


def _fmt(x, spec=",.0f") -> str:
    return "n/a" if x is None else format(x, spec)


def _vs(x) -> str:
    return "n/a" if x is None else f"{x:.2f}x"


def _lrs(p, B):
    return np.linspace(0.5, 1.5, B) * p.lr if B > 1 else np.array([p.lr])


def _sweep_fn():
    """``eosflow.sweeps.sweep`` (issue 6), or None where this checkout does not have it yet."""
    import importlib

    try:
        return importlib.import_module("eosflow.sweeps").sweep
    except (ImportError, AttributeError):
        return None


def run(quick: bool, peaks: dict, log) -> tuple[str, dict]:
    import warnings

    import jax

    # The 1-device block is measured on purpose (next to the one-device-per-core block).
    if hasattr(eosflow, "SingleDeviceWarning"):
        warnings.filterwarnings("ignore", category=eosflow.SingleDeviceWarning)

    sweep = _sweep_fn()
    if sweep is None:
        log("  eosflow.sweep is not available in this checkout: section skipped")
        return (
            "**TODO**: `eosflow.sweep` (issue 6) is not available in this checkout; the sweep "
            "benchmark was skipped."
        ), {"skipped": "eosflow.sweep not available"}
    cfg = _config(quick)
    rows = []
    for name, S in cfg["problems"].items():
        p = P.build(name, "float64")
        # Sequential simulate: warm up (compile) once, then time a pass over seq_configs lrs.
        n = cfg["seq_configs"]
        lrs = _lrs(p, n)

        def seq(p=p, lrs=lrs, S=S):
            out = None
            for lr in lrs:
                out = block(
                    eosflow.simulate(p.loss, p.w0, float(lr), p.wd, steps=S, record_every=S)
                )
            return out

        # Every call of this problem interleaved (sequential, each B, and each one's steps=1
        # call for the fixed cost): the VM's bursts of slowdown then hit all of them alike and
        # the ratios compare calls that saw the same machine. steps=1 = the fixed cost of a call
        # (validation, dispatch, transfers).
        fns = {
            "seq": seq,
            "seq_fixed": lambda p=p: block(eosflow.simulate(p.loss, p.w0, p.lr, p.wd, steps=1)),
        }
        for B in cfg["B"]:
            lrsB = _lrs(p, B)
            fns[B] = lambda lrsB=lrsB, p=p, S=S: sweep(
                p.loss, p.w0, lrsB, [p.wd], steps=S, record_every=S, progress=False
            )
            fns[f"{B}_fixed"] = lambda lrsB=lrsB, p=p: sweep(
                p.loss, p.w0, lrsB, [p.wd], steps=1, progress=False
            )
        timed = time_calls(fns, repeats=cfg["repeats"])
        t, t1 = timed["seq"], timed["seq_fixed"]
        seq_tps = n * S / t.median_s
        seq_marg = _marginal(S, t.median_s / n, t1.median_s)
        row = {
            "problem": name,
            "label": p.label,
            "D": int(p.w0.size),
            "steps": S,
            "sequential": t.as_dict()
            | {
                "configs": n,
                "traj_steps_per_s": seq_tps,
                "fixed_s": t1.median_s,
                "marginal_traj_steps_per_s": seq_marg,
            },
            "sweep": {},
        }
        log(
            f"  {name:11s} sequential simulate: {seq_tps:,.0f} traj-steps/s "
            f"({t.median_s / (n * S) * 1e6:.1f} us per trajectory-step)"
        )
        for B in cfg["B"]:
            ts, t1 = timed[B], timed[f"{B}_fixed"]
            tps = B * S / ts.median_s
            marg = _marginal(B * S, ts.median_s, t1.median_s)
            row["sweep"][B] = ts.as_dict() | {
                "traj_steps_per_s": tps,
                "vs_sequential": tps / seq_tps,
                "fixed_s": t1.median_s,
                "marginal_traj_steps_per_s": marg,
                "marginal_vs_sequential": marg / seq_marg if marg and seq_marg else None,
            }
            log(
                f"  {name:11s} sweep B={B:4d}: {tps:,.0f} traj-steps/s ({tps / seq_tps:.2f}x "
                f"sequential), compile {ts.compile_s:.1f} s; fixed cost per call "
                f"{t1.median_s:.3f} s; without it {_fmt(marg)} "
                f"({_vs(row['sweep'][B]['marginal_vs_sequential'])})"
            )
        rows.append(row)
    return _markdown(rows, cfg, jax.default_backend()), {"config": cfg, "rows": rows}


def _markdown(rows, cfg, platform) -> str:
    Bs = cfg["B"]
    out = [
        "**Sweep throughput** (trajectory-steps per second; in parentheses: speed-up over "
        "sequential `simulate` calls measured in the same run). Targets (issue 6): at B=64, "
        f">= {TARGET_LINREG:g}x on linear regression (both sizes) and >= {TARGET_MC:g}x (not "
        f"slower) on matrix completion on a 2-core CPU; >= {TARGET_MC_GPU:g}x on matrix "
        "completion on a GPU. Judged end to end (what a user gets from one call). Each "
        f"problem's calls are interleaved: {cfg['repeats']} rounds calling each once, in a "
        "rotated order; medians.",
        "",
    ]
    body = []
    for r in rows:
        seq = r["sequential"]
        cells = [
            r["problem"],
            r["D"],
            r["steps"],
            f"{seq['traj_steps_per_s']:,.0f} ({1e6 / seq['traj_steps_per_s']:.1f} µs)",
        ]
        for B in Bs:
            s = r["sweep"].get(B)
            cells.append(f"{s['traj_steps_per_s']:,.0f} ({s['vs_sequential']:.2f}x)" if s else "—")
        s64 = r["sweep"].get(64)
        if r["problem"] == "mc":
            target = TARGET_MC_GPU if platform == "gpu" else TARGET_MC
        else:
            target = TARGET_LINREG
        ok = s64["vs_sequential"] >= target if s64 else None
        cells += [f">= {target:g}x", verdict(ok)]
        body.append(cells)
    out.append(
        table(
            ["problem", "D", "steps", "sequential simulate (µs per traj-step)"]
            + [f"sweep B={B}" for B in Bs]
            + ["target at B=64", "pass"],
            body,
        )
    )
    out.append("")
    out.append(
        "**Fixed cost per call and throughput without it.** Fixed cost = the same call with "
        '`steps=1` (validation, tracing-cache lookups, transfers); "without it" = B x steps / '
        "(call − fixed cost), for `sweep` and for each sequential `simulate` call alike: the "
        "throughput of the compiled scan itself, which longer runs approach. n/a where the call "
        "is more than 80% fixed cost (the difference would be noise)."
    )
    out.append("")
    body = []
    for r in rows:
        seq = r["sequential"]
        cells = [
            r["problem"],
            f"{seq['fixed_s'] * 1e3:.1f} ms / {_fmt(seq['marginal_traj_steps_per_s'])}",
        ]
        for B in Bs:
            s = r["sweep"].get(B)
            cells.append(
                f"{s['fixed_s'] * 1e3:.0f} ms / {_fmt(s['marginal_traj_steps_per_s'])} "
                f"({_vs(s['marginal_vs_sequential'])})"
                if s
                else "—"
            )
        body.append(cells)
    out.append(
        table(
            ["problem", "simulate: fixed / traj-steps/s without it"]
            + [f"sweep B={B}: fixed / without it (vs simulate)" for B in Bs],
            body,
        )
    )
    out.append("")
    out.append(
        "Compile time of `sweep` (first call − steady call, s): "
        + "; ".join(
            f"{r['problem']}: "
            + ", ".join(f"B={B} {r['sweep'][B]['compile_s']:.1f}" for B in Bs if B in r["sweep"])
            for r in rows
        )
        + "."
    )
    return "\n".join(out)
