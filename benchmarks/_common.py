"""Shared pieces of the benchmarks: timing, machine description, roofline peaks, report files.

Timing convention (every section): a callable is run once (compile + first run, reported as
``first_s``), then ``repeats`` more times; the median of those is the steady-state time. Every
timed call ends in ``jax.block_until_ready`` on everything it returns, so JAX's asynchronous
dispatch cannot hide work.
"""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parent.parent


class Timing(NamedTuple):
    """Wall-clock seconds: the first call (includes compilation), median/min of the repeats."""

    first_s: float
    median_s: float
    min_s: float
    times: list

    @property
    def compile_s(self) -> float:
        """Compile time estimated as first call minus a steady call (>= 0)."""
        return max(self.first_s - self.median_s, 0.0)

    def as_dict(self) -> dict:
        return {
            "first_s": self.first_s,
            "median_s": self.median_s,
            "min_s": self.min_s,
            "compile_s": self.compile_s,
            "times_s": list(self.times),
        }


def block(x):
    """``jax.block_until_ready`` on any pytree (non-JAX leaves are left alone)."""
    return jax.block_until_ready(x)


def time_call(fn: Callable[[], Any], *, repeats: int, warmup: int = 1, sync=block) -> Timing:
    """Time ``fn()``; ``sync`` makes its result ready (``block`` for JAX, a torch sync for torch).

    The first ``warmup`` calls are not in the median; the first of them is reported as
    ``first_s`` (compile + one run).
    """
    t0 = time.perf_counter()
    sync(fn())
    first = time.perf_counter() - t0
    for _ in range(warmup - 1):
        sync(fn())
    times = []
    for _ in range(max(repeats, 1)):
        t0 = time.perf_counter()
        sync(fn())
        times.append(time.perf_counter() - t0)
    return Timing(first, statistics.median(times), min(times), times)


def time_calls(fns: dict[str, Callable[[], Any]], *, repeats: int, sync=block) -> dict[str, Timing]:
    """Time several functions *interleaved*: after one warm-up (compile) call each, ``repeats``
    rounds that call every function once, in an order rotated each round. Bursts of noise from
    the machine (a VM's neighbours) then hit every function alike, so their ratios stay
    meaningful even when absolute times jump; each gets its median over the rounds."""
    names = list(fns)
    first, times = {}, {k: [] for k in names}
    for k in names:
        t0 = time.perf_counter()
        sync(fns[k]())
        first[k] = time.perf_counter() - t0
    for r in range(max(repeats, 1)):
        for k in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            sync(fns[k]())
            times[k].append(time.perf_counter() - t0)
    return {
        k: Timing(first[k], statistics.median(times[k]), min(times[k]), times[k]) for k in names
    }


def load() -> list[float]:
    """``os.getloadavg()`` (1, 5, 15 min) as a list, or NaNs where unavailable."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return [float("nan")] * 3


def ncpu() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def loaded(load_avg: list[float]) -> bool:
    """Whether the 1-min load average is high enough to distrust timings (> 1.25 per CPU)."""
    return bool(load_avg[0] > 1.25 * ncpu())


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "src"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return rev + ("+dirty(src)" if dirty else "") if rev else "unknown"
    except OSError:
        return "unknown"


def environment() -> dict:
    """What the numbers were measured on: devices, versions, CPU count, load, commit."""
    dev = jax.devices()
    try:
        import jaxlib

        jaxlib_version = jaxlib.__version__
    except Exception:  # noqa: BLE001
        jaxlib_version = "?"
    return {
        "date_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "platform": jax.default_backend(),
        "devices": [str(d) for d in dev],
        "device_kind": dev[0].device_kind,
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": ncpu(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib_version,
        "numpy": np.__version__,
        "x64": bool(jax.config.read("jax_enable_x64")),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "commit": _git_commit(),
        "argv": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
    }


def print_environment(env: dict, load_avg: list[float], when: str) -> None:
    print(
        f"[{when}] jax {env['jax']} (jaxlib {env['jaxlib']}), platform={env['platform']}, "
        f"devices={env['devices']} ({env['device_kind']}), CPU: {env['cpu_model']}, "
        f"os.cpu_count()={env['cpu_count']}, affinity={env['cpu_affinity']}, "
        f"x64={env['x64']}, commit {env['commit']}",
        flush=True,
    )
    print(f"[{when}] load average (1, 5, 15 min): {load_avg}", flush=True)
    if loaded(load_avg):
        print(
            f"[{when}] WARNING: 1-min load {load_avg[0]} > 1.25 x {ncpu()} CPUs: timings are noisy",
            flush=True,
        )


# ----------------------------------------------------------------------------- roofline


def cost(fn: Callable, *args) -> dict:
    """XLA's HLO cost analysis of ``jax.jit(fn)(*args)``: ``{'flops', 'bytes'}`` (None if absent).

    The flop count is XLA's own count for the compiled program (2 per multiply-add in a dot,
    1 per elementwise op), so a whole GD step (forward, backward, update) is counted.
    """
    try:
        ca = jax.jit(fn).lower(*args).compile().cost_analysis()
    except Exception:  # noqa: BLE001 - not every backend/version provides it
        return {"flops": None, "bytes": None}
    if isinstance(ca, list | tuple):
        ca = ca[0] if ca else {}
    ca = ca or {}
    flops = ca.get("flops")
    nbytes = ca.get("bytes accessed")
    return {
        "flops": float(flops) if flops is not None and flops >= 0 else None,
        "bytes": float(nbytes) if nbytes is not None and nbytes >= 0 else None,
    }


def measure_peaks(quick: bool) -> dict:
    """Measured peak matmul GFLOP/s per dtype and streaming bandwidth (GB/s) of this device.

    Matmul: ``N x N @ N x N`` (``2 N³`` flops), N = 1024 on CPU, 4096 (float64) / 8192 (float32)
    on accelerators. Bandwidth: ``sum(x)`` over a large resident array (bytes read).
    Median of several runs after warm-up.
    """
    gpu = jax.default_backend() != "cpu"
    reps = 3 if quick else 7
    out = {"matmul_gflops": {}, "matmul_n": {}}
    mm = jax.jit(lambda a, b: a @ b)
    for dtype, n in (("float64", 4096 if gpu else 1024), ("float32", 8192 if gpu else 1024)):
        a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
        b = jax.random.normal(jax.random.PRNGKey(1), (n, n), dtype)
        t = time_call(lambda a=a, b=b: mm(a, b), repeats=reps)
        out["matmul_gflops"][dtype] = 2 * n**3 / t.median_s / 1e9
        out["matmul_n"][dtype] = n
    # Read bandwidth of a reduction over a resident array: a fresh output buffer would add the
    # cost of first-touching new pages, which on some VMs is far below memory bandwidth.
    size = (1 << 28 if gpu else 1 << 26) // 4  # 256 MiB / 64 MiB of float32
    x = jnp.ones((size,), jnp.float32)
    total = jax.jit(jnp.sum)
    t = time_call(lambda: total(x), repeats=reps)
    out["bandwidth_gbs"] = x.nbytes / t.median_s / 1e9
    # Writing a fresh 40 MB output (what a (steps, D) record buffer costs): allocation plus
    # first touch of its pages. Compare with bandwidth_gbs to see the page-fault overhead.
    w = jnp.ones((5000,), jnp.float64)
    fill = jax.jit(lambda w: jnp.broadcast_to(w, (1000, 5000)) * 1.5)
    t = time_call(lambda: fill(w), repeats=reps)
    out["fresh_write_gbs"] = 1000 * 5000 * 8 / t.median_s / 1e9
    return out


def floor_seconds(c: dict, peaks: dict, dtype: str) -> float | None:
    """FLOP floor: ``flops / peak matmul FLOP/s`` of ``dtype`` (None without a flop count).

    Bytes are not used: XLA's ``bytes accessed`` sums every operand of every op, and on these small
    problems the data stay in cache, so dividing by DRAM bandwidth would not give a lower bound.
    """
    if c.get("flops") is None:
        return None
    return c["flops"] / (peaks["matmul_gflops"][dtype] * 1e9)


# ----------------------------------------------------------------------------- formatting


def us(seconds: float | None, digits: int = 1) -> str:
    """Seconds as microseconds, or an em dash."""
    if seconds is None or not np.isfinite(seconds):
        return "—"
    v = seconds * 1e6
    return f"{v:.{digits}f}" if v < 1000 else f"{v:,.0f}"


def ratio(a: float | None, b: float | None, digits: int = 1) -> str:
    """``a / b`` as ``'3.2x'``, or an em dash."""
    if a is None or b is None or not (np.isfinite(a) and np.isfinite(b)) or b == 0:
        return "—"
    r = a / b
    return f"{r:.{digits}f}x" if r >= 0.1 else f"{r:.2g}x"


def verdict(ok: bool | None) -> str:
    return "—" if ok is None else ("**pass**" if ok else "**FAIL**")


def table(headers: list[str], rows: list[list]) -> str:
    """A markdown table."""
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def run_header(env: dict, load_start: list, load_end: list, quick: bool, wall_s: float) -> str:
    """The per-section line saying where and how the numbers were measured."""
    lines = [
        f"Measured {env['date_utc']} on **{env['platform']}** ({env['device_kind']}; "
        f"{', '.join(env['devices'])}), CPU {env['cpu_model']} with {env['cpu_affinity']} usable "
        f"cores, jax {env['jax']} / jaxlib {env['jaxlib']}, commit `{env['commit']}`; command "
        f"`python {env['argv']}`; section wall time {wall_s:.0f} s.",
        "",
        f"Load average (1, 5, 15 min): {load_start} at start, {load_end} at end.",
    ]
    worst = max(load_start[0], load_end[0])
    if loaded(load_start) or loaded(load_end):
        lines += [
            "",
            f"> **Measured under load {worst} (1-min load average) on {env['cpu_affinity']} "
            "cores — other processes were competing for the CPU, so absolute times are inflated "
            "and noisy. Rerun on a quiet machine before quoting these numbers.**",
        ]
    if quick:
        lines += [
            "",
            "> **`--quick` run** (fewer steps and repeats): checks that the benchmark works; "
            "not for quoting.",
        ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- report files

_BEGIN = "<!-- BEGIN GENERATED {key} -->"
_END = "<!-- END GENERATED {key} -->"

DEFAULT_HEADER = """# Benchmarks

Generated by `python benchmarks/run.py`; see the methodology in the repository's
`docs/benchmarks.md`.
"""


def write_markdown(path: Path, blocks: dict[str, str]) -> None:
    """Replace (or append) the generated blocks ``key -> markdown`` in ``path``.

    Text outside ``<!-- BEGIN/END GENERATED key -->`` markers (the hand-written methodology) is
    kept, and so are blocks of other keys (other sections, other devices).
    """
    text = path.read_text() if path.exists() else DEFAULT_HEADER
    for key, body in blocks.items():
        begin, end = _BEGIN.format(key=key), _END.format(key=key)
        new = f"{begin}\n{body.strip()}\n{end}"
        pat = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
        if pat.search(text):
            text = pat.sub(lambda _m, new=new: new, text)
        else:
            text = text.rstrip() + "\n\n" + new + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text if text.endswith("\n") else text + "\n")
    tmp.replace(path)


def write_json(path: Path, results: dict[str, dict]) -> None:
    """Merge ``key -> results`` into the JSON file at ``path`` (other keys are kept)."""
    data = {}
    if path.exists():
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}
    data.update(results)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=_jsonable) + "\n")
    tmp.replace(path)


def _jsonable(x):
    if isinstance(x, np.generic | jax.Array | np.ndarray):
        return np.asarray(x).tolist()
    return str(x)
