"""Per-step probe for a device check (not part of ``run.py``): marginal cost per step of
``simulate`` (``record_every=1`` and ``=steps``), ``sweep`` (B = 1, 64, 256) and a bare
``lax.scan`` on matrix completion and linear regression d=5000, float64, plus the op counts of
the compiled ``simulate`` step.

Marginal = (call with 1000 steps − call with 200 steps) / 800: fixed costs per call cancel.
Usage (results in ``$OUT/probe.json``, default the current folder)::

    python benchmarks/probe_gpu.py

Results of the H100 runs: ``benchmarks/gpu/probe_h100.json`` and ``docs/benchmarks_gpu.md``.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import _paths  # noqa: F401  (sys.path, float64): first

# isort: split
import _problems as P
import jax
import numpy as np

import eosflow

STEPS = (200, 1000)


def median_call_s(fn, repeats: int = 5) -> float:
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def bare_scan(p, steps: int):
    vg = jax.value_and_grad(p.loss)

    @jax.jit
    def run(w, lr, wd):
        def body(w, _):
            value, g = vg(w)
            return (1 - lr * wd) * w - lr * g, value

        return jax.lax.scan(body, w, None, length=steps)

    return lambda: run(p.w0, p.lr, p.wd)


def probe(name: str) -> dict:
    p = P.build(name, "float64")
    calls = {}
    for S in STEPS:
        calls[f"sim_re=S_{S}"] = lambda S=S: eosflow.simulate(
            p.loss, p.w0, p.lr, p.wd, steps=S, record_every=S
        )
        calls[f"sim_re=1_{S}"] = lambda S=S: eosflow.simulate(p.loss, p.w0, p.lr, p.wd, steps=S)
        for B in (1, 64, 256):
            lrs = np.linspace(0.5, 1.5, B) * p.lr
            calls[f"sweep_B{B}_{S}"] = lambda S=S, lrs=lrs: eosflow.sweep(
                p.loss, p.w0, lrs, [p.wd], steps=S, record_every=S, progress=False
            )
        calls[f"bare_{S}"] = bare_scan(p, S)
    lrs64 = np.linspace(0.5, 1.5, 64) * p.lr
    calls["sim_steps1"] = lambda: eosflow.simulate(p.loss, p.w0, p.lr, p.wd, steps=1)
    calls["sweep64_steps1"] = lambda: eosflow.sweep(
        p.loss, p.w0, lrs64, [p.wd], steps=1, progress=False
    )
    r = {k: median_call_s(fn) for k, fn in calls.items()}
    lo, hi = STEPS
    r["marginal_us_per_step"] = {
        k[: -len(f"_{hi}")]: (r[k] - r[k.replace(f"_{hi}", f"_{lo}")]) / (hi - lo) * 1e6
        for k in list(r)
        if k.endswith(f"_{hi}")
    }
    return r


def op_counts(out: Path) -> dict:
    """Ops of the compiled ``simulate`` (MC, ``record_every=10``); the HLO text goes to ``out``."""
    p = P.build("mc", "float64")

    def run(w):
        traj = eosflow.simulate(
            p.loss, w, p.lr, p.wd, steps=10, record_every=10, check_invariance=False
        )
        return traj.w_final

    txt = jax.jit(run).lower(p.w0).compile().as_text()
    (out / "sim_mc.hlo.txt").write_text(txt)
    kinds = (" fusion(", "custom-call(", " while(", " conditional(", " dot(")
    return {k.strip(" ("): len(re.findall(re.escape(k), txt)) for k in kinds}


def main() -> None:
    out = Path(os.environ.get("OUT", "."))
    res = {"device": str(jax.devices()[0]), "jax": jax.__version__}
    for name in ("mc", "linreg-5000"):
        res[name] = probe(name)
        print(name, json.dumps(res[name], indent=1), flush=True)
    res["sim_hlo_counts"] = op_counts(out)
    (out / "probe.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res["sim_hlo_counts"]))


if __name__ == "__main__":
    main()
