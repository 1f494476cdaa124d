"""The output folder of an ``eosflow run``: checked before computing, cleared with ``--force``,
resumed with ``--resume``.

A run writes ``arrays.npz``, ``arrays.partial.npz`` (while it runs), ``summary.json``, its PNG
figures (listed in the summary) and, while it runs, ``.checkpoints/`` (:meth:`RunRecorder.checkpoint`
files and ``settings.json``, the experiment and settings it was started with). ``--force`` removes
exactly those; ``--resume`` requires ``settings.json`` to name the same experiment and settings.
Every refusal is a :class:`RunFolderError` with a one-line message (the command exits 2).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from eosflow.runio import ARRAYS, CHECKPOINTS, PARTIAL, SUMMARY, jsonable, save_json

__all__ = [
    "RUN_SETTINGS",
    "RunFolderError",
    "run_files",
    "check_writable",
    "prepare_out",
    "check_resumable",
    "forget_run",
]

RUN_SETTINGS = "settings.json"


class RunFolderError(ValueError):
    """The output folder cannot be used as asked (one-line message)."""


def run_files(out: Path) -> list[Path]:
    """The files an earlier run left in ``out``: its arrays, partial arrays, summary, the figures
    its summary lists, and half-written temporaries of those; nothing else."""
    names = [ARRAYS, PARTIAL, SUMMARY]
    try:
        names += list(json.loads((out / SUMMARY).read_text()).get("figures", []))
    except (OSError, ValueError, AttributeError):
        pass
    found = [out / n for n in names]
    found += [*out.glob(f".{ARRAYS}.*.tmp"), *out.glob(f".{PARTIAL}.*.tmp")]
    return [f for f in found if f.is_file()]


def check_writable(out: Path) -> bool:
    """Create ``out`` if needed and write and remove a probe file there, so that a read-only or
    impossible output folder is reported before any computing. Returns whether ``out`` was
    created here."""
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".eosflow-probe.", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise RunFolderError(f"cannot write to output folder {out}: {reason}") from None
    return created


def prepare_out(out: Path, force: bool, resume: bool, name: str, config: dict) -> bool:
    """Check (and with ``--force`` clear) the output folder; with ``--resume`` check that it
    holds an interrupted run of ``name`` with the same ``config``. Saves the run's settings
    next to its checkpoints so that a later ``--resume`` can check them. Returns whether the
    folder was created here."""
    if force and resume:
        raise RunFolderError("--force and --resume exclude each other")
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"output path {out} exists and is not a folder")
    settings = out / CHECKPOINTS / RUN_SETTINGS
    if resume:  # before creating anything: a folder without a run to resume stays untouched
        check_resumable(out, settings, name, config)
    created = check_writable(out)
    if not resume and any(out.iterdir()):
        if not force:
            hint = "--resume to continue the interrupted run there, " if settings.exists() else ""
            raise RunFolderError(
                f"output folder {out} exists and is not empty; use {hint}--force to overwrite "
                "or --out to choose another"
            )
        for f in run_files(out):  # only files a run writes; nothing else is touched
            f.unlink()
        shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)
    save_json(settings, {"experiment": name, "config": config})
    return created


def check_resumable(out: Path, settings: Path, name: str, config: dict) -> None:
    """``--resume``: the folder must hold an interrupted run of this experiment, same settings."""
    if not settings.exists():
        what = "a finished run" if (out / SUMMARY).exists() else "no interrupted run"
        raise RunFolderError(f"--resume: {out} holds {what}; nothing to resume")
    try:
        saved = json.loads(settings.read_text())
    except (OSError, ValueError) as e:
        raise RunFolderError(
            f"--resume: cannot read {settings} ({e}); use --force to start over"
        ) from None
    old = json.loads(json.dumps(saved.get("config", {})))
    new = json.loads(json.dumps(jsonable(config)))
    if saved.get("experiment") != name or old != new:
        keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise RunFolderError(
            f"--resume: {out} holds a run of {saved.get('experiment')!r} with other settings "
            f"(differs in: {', '.join(keys) or 'experiment'}); give the same settings, or --force"
        )


def forget_run(out: Path, created: bool) -> None:
    """After a run that cannot be resumed (bad data, divergence): remove its checkpoints and
    settings, so that the folder does not offer ``--resume``; and ``out`` itself if this run
    created it and nothing else was written there."""
    shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)
    if created:
        try:
            out.rmdir()
        except OSError:
            pass
