"""Helpers shared by the test files: the ``eosflow`` command in a subprocess, a quick experiment
run with its outputs loaded, and a simulated Ctrl-C after the n-th saved chunk."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_cli(args, cwd, timeout=600):
    """``python -m eosflow.cli ARGS`` in ``cwd`` (a folder outside the repository)."""
    return subprocess.run(
        [sys.executable, "-m", "eosflow.cli", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def quick_run(tmp_path_factory, name, *extra, timeout=600):
    """``eosflow run NAME --quick [EXTRA]`` from a fresh folder; asserts success and returns
    ``(out, completed process, arrays, summary)``."""
    base = tmp_path_factory.mktemp(name)
    out = base / "out"
    r = run_cli(["run", name, "--quick", "--out", out, *extra], cwd=base, timeout=timeout)
    assert r.returncode == 0, f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    with np.load(out / "arrays.npz") as z:
        arrays = {k: z[k] for k in z.files}
    return out, r, arrays, json.loads((out / "summary.json").read_text())


def interrupt_after_chunks(monkeypatch, n: int) -> None:
    """Make ``RunRecorder.update`` raise ``KeyboardInterrupt`` (as Ctrl-C would) right after it
    has saved its ``n``-th chunk."""
    from eosflow import runio

    calls = {"n": 0}
    original = runio.RunRecorder.update

    def update(self, **arrays):
        original(self, **arrays)
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt

    monkeypatch.setattr(runio.RunRecorder, "update", update)
