"""Problems new users reported, each with a test that fails without its fix: output permissions
under the umask, an unwritable ``--out``, a broken CIFAR-10 folder, float32 in the theory
routines, the README's experiment table, per-experiment ``run NAME --help``, messages that name
the values they compare, and progress lines for every long phase of a run."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from eosflow import runio

# --- output files follow the umask ---------------------------------------------------------------


def _writers(folder):
    return {
        "save_npz": lambda: runio.save_npz(folder / "a.npz", x=np.arange(3)),
        "save_json": lambda: runio.save_json(folder / "s.json", {"a": 1}),
        "save_bytes": lambda: runio.save_bytes(folder / "f.png", b"\x89PNG"),
    }


@pytest.mark.parametrize("umask, expect", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_saved_files_get_the_umask_permissions(tmp_path, umask, expect):
    """``mkstemp`` creates 0600 files; the atomic writers must give what ``open`` would give."""
    old = os.umask(umask)
    try:
        for name, write in _writers(tmp_path).items():
            mode = stat.S_IMODE(write().stat().st_mode)
            assert mode == expect, f"{name}: {oct(mode)} under umask {oct(umask)}"
    finally:
        os.umask(old)


def test_current_umask_without_proc_matches_and_is_restored(tmp_path, monkeypatch):
    """The fallback (no ``/proc``) reads the same umask and leaves it as it was."""
    import builtins

    real_open = builtins.open

    def no_proc(file, *args, **kwargs):
        if str(file).startswith("/proc/"):
            raise FileNotFoundError(file)
        return real_open(file, *args, **kwargs)

    old = os.umask(0o027)
    try:
        assert runio._current_umask() == 0o027
        monkeypatch.setattr(builtins, "open", no_proc)
        assert runio._current_umask() == 0o027
        assert os.umask(0o027) == 0o027  # still set after the fallback's set-and-restore
    finally:
        os.umask(old)
