"""Running long simulations and saving their results: chunked runs with progress, atomic writers.

The experiments (``experiments/``, the ``eosflow run`` command) compute, save, then plot. This
module holds the machinery they share, and nothing paper-specific:

* :class:`Progress`: the progress bar of long runs (chunked runs are in :mod:`eosflow.chunks`).
* :func:`save_npz`, :func:`save_json`, :func:`save_bytes`: atomic writes (a temporary file in the same folder, then
  ``os.replace``), so a reader never sees a half-written file, even if the run is killed.
* :class:`RunRecorder`: one run's output folder: rewrites ``arrays.partial.npz`` as results come
  in (so an interrupted run leaves what it had computed readable), then writes ``arrays.npz`` and
  ``summary.json`` (config, seed, versions, device, wall time, dtype, key numbers) at the end.
* :func:`trajectory_arrays`, :func:`environment`, :func:`jsonable`: what goes into those files.

No plotting here (house style): the experiments plot from the saved arrays.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import jax
import numpy as np
from jax.flatten_util import ravel_pytree

from eosflow.trajectory import PER_RECORD, Trajectory
from eosflow.version import __version__

__all__ = [
    "Progress",
    "RunRecorder",
    "ARRAYS",
    "PARTIAL",
    "SUMMARY",
    "CHECKPOINTS",
    "trajectory_arrays",
    "save_bytes",
    "save_npz",
    "save_json",
    "jsonable",
    "environment",
]

#: File names inside a run folder.
ARRAYS, PARTIAL, SUMMARY = "arrays.npz", "arrays.partial.npz", "summary.json"
#: Folder of a run's checkpoints (:meth:`RunRecorder.checkpoint`), removed when the run finishes.
CHECKPOINTS = ".checkpoints"

_PER_RECORD = PER_RECORD


# ----------------------------------------------------------------------------- progress


def _fmt_time(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


class Progress:
    """A plain-text progress bar on a stream (default ``sys.stderr``); no dependency.

    On a terminal the line is redrawn in place with ``\\r``; otherwise (logs, pipes, tests) a line
    is printed at most every ``min_interval`` seconds, and always at the end, so logs stay short.
    The rate and the time left exclude the first update, which includes compilation.

    Args:
      total: total number of steps.
      label: text in front of the bar.
      stream: where to write (default ``sys.stderr``).
      enabled: ``False`` prints nothing at all.
      min_interval: seconds between lines when the stream is not a terminal.
      unit: what is counted (``"steps"``; e.g. ``"points"`` or ``"runs"``), shown in the line.
    """

    def __init__(
        self,
        total: int,
        label: str = "",
        *,
        stream: TextIO | None = None,
        enabled: bool = True,
        min_interval: float = 10.0,
        unit: str = "steps",
    ):
        self.total = int(total)
        self.unit = unit
        self.label = label
        self.stream = sys.stderr if stream is None else stream
        self.enabled = enabled
        self.min_interval = min_interval
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.t0 = time.perf_counter()
        self._first: tuple[float, int] | None = None  # (time, done) at the first update
        self._last_print = -math.inf
        self.done = 0

    def line(self, done: int, now: float | None = None) -> str:
        """The progress line for ``done`` steps: bar, ``done/total``, steps/s, time left (in
        ``unit``)."""
        now = time.perf_counter() if now is None else now
        frac = done / self.total if self.total else 1.0
        width = 24
        fill = int(round(width * frac))
        bar = "#" * fill + "-" * (width - fill)
        final = done >= self.total
        if self._first is not None and done > self._first[1] and now > self._first[0]:
            rate = (done - self._first[1]) / (now - self._first[0])
        elif final and now > self.t0:
            rate = done / (now - self.t0)
        else:  # only the first update so far: its time includes compilation
            rate = float("nan")
        left = (self.total - done) / rate if rate > 0 else float("nan")
        tail = "" if final else f"  ETA {_fmt_time(left)}"
        head = f"{self.label} " if self.label else ""
        speed = "?" if not math.isfinite(rate) else f"{rate:.0f}" if rate >= 10 else f"{rate:.2g}"
        return (
            f"{head}[{bar}] {done}/{self.total} {self.unit}  {speed} {self.unit}/s  "
            f"elapsed {_fmt_time(now - self.t0)}{tail}"
        )

    def update(self, done: int) -> None:
        """Report that ``done`` of ``total`` steps are finished."""
        now = time.perf_counter()
        self.done = done
        if self._first is None:
            self._first = (now, done)
        if not self.enabled:
            return
        final = done >= self.total
        if self.tty:
            self.stream.write("\r" + self.line(done, now) + ("\n" if final else ""))
        elif final or now - self._last_print >= self.min_interval:
            self.stream.write(self.line(done, now) + "\n")
            self._last_print = now
        self.stream.flush()

    def close(self) -> None:
        """End an unfinished bar's line (on a terminal), e.g. after an error."""
        if self.enabled and self.tty and self.done < self.total:
            self.stream.write("\n")
            self.stream.flush()


# ----------------------------------------------------------------------------- saving


def trajectory_arrays(
    traj: Trajectory, prefix: str = "", *, fields: tuple[str, ...] | None = None
) -> dict[str, np.ndarray]:
    """The arrays of a trajectory as ``{prefix + field: ndarray}``, ready for :func:`save_npz`.

    Per-record fields (``step, w, norm, eff_lr, loss, grad_norm, sharpness``, or ``fields``,
    which may name the derived ``theta``) plus ``w_final`` (flattened), ``lr``, ``wd`` and ``nonfinite_step``.
    """
    fields = _PER_RECORD if fields is None else fields
    out = {prefix + k: np.asarray(getattr(traj, k)) for k in fields}
    flat, _ = ravel_pytree(traj.w_final)
    out[prefix + "w_final"] = np.asarray(flat)
    for k in ("lr", "wd", "nonfinite_step"):
        out[prefix + k] = np.asarray(getattr(traj, k))
    return out


def _current_umask() -> int:
    """The process umask, read without changing it where the OS shows it (Linux ``/proc``).

    Elsewhere ``os.umask`` must set it to read it: it is set to ``0o077`` for that instant (a file
    another thread creates meanwhile gets stricter, never looser, permissions) and restored.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o077)
    os.umask(old)
    return old


def _atomic_write(path: Path, write: Callable[[Any], None], mode: str) -> Path:
    """Write ``path`` through ``write(file)`` into a temporary file in the same folder, then
    ``os.replace`` it. The file gets the permissions a plain ``open`` would give (``0o666`` less
    the umask; ``mkstemp`` alone would leave ``0o600``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_current_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def save_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (e.g. a PNG rendered to memory). Returns the path."""
    return _atomic_write(Path(path), lambda f: f.write(data), "wb")


def save_npz(path: str | os.PathLike, **arrays) -> Path:
    """Write ``arrays`` to an ``.npz`` file atomically (temporary file + ``os.replace``).

    The path is used as given (NumPy's habit of appending ``.npz`` does not apply).
    Returns the path.
    """
    data = {k: np.asarray(v) for k, v in arrays.items()}
    return _atomic_write(Path(path), lambda f: np.savez(f, **data), "wb")


def jsonable(obj: Any) -> Any:
    """Convert ``obj`` to plain JSON types: NumPy/JAX scalars and arrays to numbers and lists,
    paths to strings, tuples to lists; non-finite floats to ``None`` (strict JSON has no NaN)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, jax.Array | np.ndarray | np.generic):
        a = np.asarray(obj)
        return jsonable(a.tolist()) if a.ndim else jsonable(a.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, bool | int | str):
        return obj
    return str(obj)


def save_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``jsonable(obj)`` as indented JSON atomically. Returns the path."""
    text = json.dumps(jsonable(obj), indent=2, sort_keys=False, allow_nan=False) + "\n"
    return _atomic_write(Path(path), lambda f: f.write(text), "w")


def environment() -> dict[str, Any]:
    """Library versions and the device, for ``summary.json``."""
    import jaxlib

    dev = jax.devices()[0]
    return {
        "versions": {
            "python": platform.python_version(),
            "jax": jax.__version__,
            "jaxlib": jaxlib.__version__,
            "numpy": np.__version__,
            "eosflow": __version__,
        },
        "device": {
            "platform": dev.platform,
            "kind": getattr(dev, "device_kind", str(dev)),
            "count": jax.device_count(),
        },
        "x64": bool(jax.config.read("jax_enable_x64")),
        "machine": platform.machine(),
    }


class RunRecorder:
    """The output folder of one run: partial arrays while it runs, final arrays and summary at the end.

    ``update(**arrays)`` adds arrays and atomically rewrites ``arrays.partial.npz`` with everything
    so far; :meth:`on_chunk` makes a :func:`run_chunked` callback that does this for a trajectory
    (under a name prefix, plus ``{prefix}steps_done``). :meth:`finish` writes ``arrays.npz``, removes
    the partial file and writes ``summary.json``. If the run dies in between, the partial file holds
    every chunk finished so far, and is never half-written.

    Args:
      out: the folder (created if missing).
      name: the experiment's name.
      config: its configuration (saved in the summary; ``config["seed"]`` as ``seed``).
    """

    def __init__(self, out: str | os.PathLike, name: str, config: dict):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.config = dict(config)
        self.arrays: dict[str, np.ndarray] = {}
        self.t0 = time.perf_counter()

    @property
    def partial_path(self) -> Path:
        return self.out / PARTIAL

    def checkpoint(self, prefix: str) -> Path:
        """The checkpoint file of the chunked run saved under ``prefix``
        (:func:`eosflow.chunks.run_chunked`'s ``checkpoint``): ``out/.checkpoints/PREFIX.npz``.
        An interrupted run leaves it; ``eosflow run ... --resume`` continues from it."""
        return self.out / CHECKPOINTS / f"{prefix or 'run'}.npz"

    def checkpoint_dir(self, name: str) -> Path:
        """A checkpoint *folder* (e.g. a sweep's ``out_dir``): ``out/.checkpoints/NAME``,
        removed with the other checkpoints when the run finishes."""
        return self.out / CHECKPOINTS / name

    def update(self, **arrays) -> None:
        """Add (or replace) arrays and rewrite ``arrays.partial.npz`` with all of them."""
        self.arrays.update({k: np.asarray(v) for k, v in arrays.items()})
        save_npz(self.partial_path, **self.arrays)

    def on_chunk(
        self, prefix: str, fields: tuple[str, ...] | None = None
    ) -> Callable[[Trajectory, int], None]:
        """A :func:`run_chunked` ``on_chunk`` callback saving the trajectory so far under ``prefix``."""

        def save(traj: Trajectory, done: int) -> None:
            self.update(
                **trajectory_arrays(traj, prefix, fields=fields),
                **{prefix + "steps_done": np.asarray(done)},
            )

        return save

    def finish(
        self,
        key_numbers: dict,
        *,
        dtype: Any = None,
        notes: list[str] | None = None,
        description: str = "",
        **extra: Any,
    ) -> dict:
        """Write ``arrays.npz`` (all arrays added), remove the partial file, write ``summary.json``.

        Returns the summary dict: ``experiment``, ``description``, ``config``, ``seed``, ``dtype``,
        ``wall_time_s`` (since the recorder was created), ``key_numbers``, ``notes``, ``extra``
        entries, ``environment`` (:func:`environment`) and ``created`` (UTC, ISO 8601).
        """
        save_npz(self.out / ARRAYS, **self.arrays)
        try:
            os.unlink(self.partial_path)
        except FileNotFoundError:
            pass
        summary = {
            "experiment": self.name,
            "description": description,
            "config": self.config,
            "seed": self.config.get("seed"),
            "dtype": str(np.dtype(dtype)) if dtype is not None else None,
            "wall_time_s": round(time.perf_counter() - self.t0, 3),
            "key_numbers": key_numbers,
            "notes": list(notes or []),
            **extra,
            "environment": environment(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        save_json(self.out / SUMMARY, summary)
        # Last: a run killed before this line still has its checkpoints (and resumes).
        shutil.rmtree(self.out / CHECKPOINTS, ignore_errors=True)
        return summary
