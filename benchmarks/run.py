"""eosflow benchmarks: one command, every measurement and its baselines in the same run.

    python benchmarks/run.py [--quick] [--only core|sharpness|flow|sweep|fullbatch|central[,...]]
                             [--out docs/benchmarks.md] [--json benchmarks/results.json]
                             [--cpu-devices N]

Sections: ``core`` (issue 2: simulate vs per-step loop, value_and_grad, FLOP floor, PyTorch;
dense vs gathered matrix completion; no recompilation), ``sharpness`` (Lanczos vs power
iteration HVPs to 1e-8; sharpness cost vs one gradient), ``flow`` (issue 3: generic vs residual
path, fixed RK4 vs adaptive DOPRI5), ``sweep`` (issue 6: ``eosflow.sweep`` vs sequential
``simulate``), ``fullbatch`` (issue 15: one full-batch GD+WD step of VGG-11 on CIFAR-shaped
images, time, memory, MFU), ``central`` (issue 14: the central flow's HVPs and time per GD step
against ``simulate`` with the sharpness every step). JAX picks the device (CPU or GPU, reported);
float64 is turned on for the whole run
(float32 rows use float32 arrays). Each section's tables replace only that section's generated
block (keyed by section and platform) in ``--out``, so the hand-written text in
``docs/benchmarks.md`` and results from other devices are kept. Needs no network.

On a multi-core CPU the ``sweep`` section runs twice: on one CPU device (JAX's default), then,
in a subprocess, with one CPU device per core (``eosflow.use_cpu_devices()``, which must be set
before JAX starts), so that ``sweep`` shards its configurations over the cores. The two blocks
are keyed ``sweep@cpu`` and ``sweep@cpu-Ndev``; each compares against sequential ``simulate``
measured in its own process. ``--cpu-devices N`` runs the chosen sections with N CPU devices.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import traceback
from pathlib import Path

import _paths  # noqa: F401  (sys.path, float64): first

# isort: split
import _common as C
import jax

HERE = Path(__file__).resolve().parent

SECTIONS = ("core", "sharpness", "flow", "sweep", "fullbatch", "central")


def _module(name: str):
    import importlib

    return importlib.import_module(f"bench_{name}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps/repeats (checks it works)")
    ap.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"comma-separated sections to run, from {', '.join(SECTIONS)} (default: all)",
    )
    ap.add_argument("--out", default=str(C.ROOT / "docs" / "benchmarks.md"), help="markdown file")
    ap.add_argument("--json", default=str(HERE / "results.json"), help="JSON results file")
    ap.add_argument(
        "--cpu-devices",
        type=int,
        default=None,
        help="expose N CPU devices (eosflow.use_cpu_devices) for this run; default: JAX's one, "
        "plus a second sweep run with one device per core on a multi-core CPU",
    )
    args = ap.parse_args(argv)
    if args.cpu_devices is not None:
        import eosflow

        eosflow.use_cpu_devices(args.cpu_devices)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in only if s not in SECTIONS]
    if bad:
        ap.error(f"unknown section(s) {bad}; choose from {', '.join(SECTIONS)}")

    env = C.environment()
    load0 = C.load()
    C.print_environment(env, load0, "start")
    t_all = time.perf_counter()
    print("measuring peak matmul FLOP/s and bandwidth ...", flush=True)
    peaks = C.measure_peaks(args.quick)
    print(
        f"  matmul {peaks['matmul_gflops']['float64']:.1f} GFLOP/s (f64), "
        f"{peaks['matmul_gflops']['float32']:.1f} GFLOP/s (f32); "
        f"bandwidth {peaks['bandwidth_gbs']:.1f} GB/s",
        flush=True,
    )

    plat = env["platform"]
    n_cpu_dev = len(jax.devices("cpu"))
    if plat == "cpu" and n_cpu_dev > 1:
        plat = f"cpu-{n_cpu_dev}dev"
    failed = []
    for sec in SECTIONS:
        if sec not in only:
            continue
        print(f"\n=== {sec} ===", flush=True)
        l_start = C.load()
        t0 = time.perf_counter()
        try:
            md, res = _module(sec).run(
                args.quick,
                peaks,
                lambda s, t0=t0: print(f"[{time.perf_counter() - t0:6.1f}s] {s}", flush=True),
            )
        except Exception as e:  # noqa: BLE001 - report, keep going with the other sections
            traceback.print_exc()
            failed.append(sec)
            md = f"**Section failed**: `{type(e).__name__}: {e}`"
            res = {"error": f"{type(e).__name__}: {e}"}
        wall = time.perf_counter() - t0
        l_end = C.load()
        key = f"{sec}@{plat}"
        header = C.run_header(env, l_start, l_end, args.quick, wall)
        block = f"### Results: {sec} on {plat}\n\n{header}\n\n{md}"
        C.write_markdown(Path(args.out), {key: block})
        C.write_json(
            Path(args.json),
            {
                key: {
                    "env": env,
                    "load_start": l_start,
                    "load_end": l_end,
                    "quick": args.quick,
                    "wall_s": wall,
                    "results": res,
                }
            },
        )
        print(f"--- {sec}: {wall:.0f} s, load {l_start} -> {l_end}; wrote {args.out}", flush=True)
        cores = C.ncpu()
        if sec == "sweep" and args.cpu_devices is None and plat == "cpu" and cores > 1:
            print(f"\n=== sweep again with {cores} CPU devices (subprocess) ===", flush=True)
            cmd = [sys.executable, __file__, "--only", "sweep", "--cpu-devices", str(cores)]
            cmd += ["--out", args.out, "--json", args.json] + (["--quick"] if args.quick else [])
            if subprocess.run(cmd, check=False).returncode:
                failed.append(f"sweep@cpu-{cores}dev")

    load1 = C.load()
    C.print_environment(env, load1, "end")
    print(f"total {time.perf_counter() - t_all:.0f} s; results in {args.out} and {args.json}")
    if failed:
        print(f"FAILED sections: {failed}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
