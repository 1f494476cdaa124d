"""Long runs in chunks, with progress, partial results and exact resume: :func:`run_chunked`.

Chunk ``i`` is one compiled driver call continuing the :class:`~eosflow.driver.RunState` of
chunk ``i − 1`` (dynamics state, global step count, Lanczos warm start, non-finite flag), so the
chunks together equal one :func:`eosflow.simulate` call bit for bit — sharpness included. With
``checkpoint=PATH`` the records so far and that ``RunState`` are written atomically to ``PATH``
(one ``.npz``) after every chunk; a later call with the same arguments and the same ``PATH``
continues after the last saved chunk (nothing saved is recomputed) and returns arrays equal to
an uninterrupted run's; one with other arguments is refused. This is the same mechanism
:func:`eosflow.sweep` uses for its chunk files.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.flatten_util import ravel_pytree

from eosflow.driver import RunState, start_run_state
from eosflow.runio import Progress, save_npz
from eosflow.simulation import Resolved, resolve_dynamics, run_part
from eosflow.trajectory import Trajectory, cut_at_nonfinite
from eosflow.validation import (
    CheckpointMismatch,
    validate_chunk,
    validate_on_nonfinite,
    validate_run_args,
)

__all__ = ["run_chunked", "concat_trajectories", "default_chunk", "CheckpointMismatch"]


def default_chunk(steps: int, unit: int, target_chunks: int = 10) -> int:
    """About ``steps/target_chunks`` steps, a multiple of ``unit``; a divisor of ``steps`` if one
    is near (so every chunk has the same length and compiles once)."""
    base = max(unit, math.ceil(steps / target_chunks / unit) * unit)
    for c in range(base, min(2 * base, steps) + 1, unit):
        if steps % c == 0:
            return c
    return min(base, steps)


def concat_trajectories(parts: list[Trajectory]) -> Trajectory:
    """Join consecutive trajectories (already carrying global step numbers) into one.

    Per-record fields (and ``extra``) are concatenated; ``w_final``, ``lr``, ``wd``, ``hparams``
    come from the last part and ``nonfinite_step`` is the first non-negative one (or ``-1``).
    """
    if not parts:
        raise ValueError("concat_trajectories: nothing to concatenate")
    if len(parts) == 1:
        return parts[0]
    per = [p.per_record() for p in parts]
    joined = {k: np.concatenate([np.asarray(d[k]) for d in per]) for k in per[0]}
    extra = {k: joined.pop(k) for k in list(joined) if k in (parts[-1].extra or {})}
    bad = [int(p.nonfinite_step) for p in parts if int(p.nonfinite_step) >= 0]
    return parts[-1]._replace(
        **joined, extra=extra, nonfinite_step=np.asarray(bad[0] if bad else -1)
    )


def _fingerprint(loss, w0, res: Resolved, **settings) -> str:
    """What a checkpoint must match to be resumed: the settings, ``w0``, the hparams, the loss's
    name and the dynamics' functions."""
    flat = np.asarray(ravel_pytree(w0)[0])
    names = " ".join(getattr(f, "__qualname__", "?") for f in res.dynamics[:4] if f is not None)
    data = {
        **settings,
        "w0_sha256": hashlib.sha256(np.ascontiguousarray(flat).tobytes()).hexdigest(),
        "w0_structure": str(jax.tree_util.tree_structure(w0)),
        "hparams": [np.asarray(x).tolist() for x in jax.tree_util.tree_leaves(res.hparams)],
        "loss": getattr(loss, "__qualname__", type(loss).__qualname__),
        "dynamics": names,
    }
    return json.dumps(data, sort_keys=True, default=str)


def _save(path: Path, fp: str, traj: Trajectory, done: int, rs: RunState) -> None:
    """Write the run so far (records, ``w_final``, ``RunState``) atomically to ``path``."""
    arrays = {f"rec.{k}": np.asarray(v) for k, v in traj.per_record().items()}
    arrays.update(
        {f"wf.{i}": np.asarray(x) for i, x in enumerate(jax.tree_util.tree_leaves(traj.w_final))}
    )
    extra_names = json.dumps(sorted(traj.extra or {}))
    leaves = {f"rs.{i}": np.asarray(x) for i, x in enumerate(jax.tree_util.tree_leaves(rs))}
    save_npz(path, fingerprint=np.asarray(fp), extra_names=np.asarray(extra_names),
             done=np.asarray(done), bad=np.asarray(traj.nonfinite_step), **arrays, **leaves)  # fmt: skip


def _load(path: Path, fp: str, w0, res: Resolved, rs_like: RunState):
    """``(records so far as a Trajectory, steps done, RunState)`` from a checkpoint, or ``None``
    when there is none; :class:`CheckpointMismatch` when it holds another run."""
    if not path.exists():
        return None
    with np.load(path) as z:
        if str(z["fingerprint"]) != fp:
            raise CheckpointMismatch(
                f"run_chunked: the checkpoint {path} holds a run with other arguments; delete it "
                "or choose another checkpoint path"
            )
        extra = json.loads(str(z["extra_names"]))
        rec = {k[4:]: z[k] for k in z.files if k.startswith("rec.")}
        leaves = [z[f"rs.{i}"] for i in range(sum(k.startswith("rs.") for k in z.files))]
        wf = [z[f"wf.{i}"] for i in range(sum(k.startswith("wf.") for k in z.files))]
        done, bad = int(z["done"]), z["bad"]
    rs = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(rs_like), leaves)
    w_final = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(w0), wf)
    traj = Trajectory(
        **{k: v for k, v in rec.items() if k not in extra}, w_final=w_final, lr=res.lr,
        wd=res.wd, nonfinite_step=bad, extra={k: rec[k] for k in extra}, hparams=res.hparams,
    )  # fmt: skip
    return traj, done, rs


def _as_host(traj: Trajectory) -> Trajectory:
    return jax.tree_util.tree_map(np.asarray, traj._replace(hparams=None))._replace(
        hparams=traj.hparams
    )


def run_chunked(
    loss: Callable,
    w0,
    lr=None,
    wd=None,
    steps: int = 1000,
    *,
    dynamics=None,
    hparams: Any = None,
    chunk: int | None = None,
    record_every: int = 1,
    sharpness_every: int = 0,
    progress: bool | Progress = True,
    label: str = "",
    on_chunk: Callable[[Trajectory, int], None] | None = None,
    checkpoint: str | Path | None = None,
    check_invariance: bool = True,
    on_nonfinite: str = "raise",
    lanczos_iter: int = 20,
) -> Trajectory:
    """Run GD+WD, eq. (1) (or ``dynamics`` with ``hparams``), for ``steps`` steps in chunks.

    Equal to ``simulate(loss, w0, lr, wd, steps, ...)`` bit for bit (module docstring), with a
    progress bar, a callback after each chunk and, with ``checkpoint``, exact resume.

    Args:
      loss, w0, lr, wd, dynamics, hparams: as in :func:`eosflow.simulate`.
      steps: total number of steps (>= 1).
      chunk: steps per compiled call, a multiple of ``record_every`` (records fall on the same
        global steps as in one long run; sharpness is taken at global steps divisible by
        ``sharpness_every`` whatever the chunk). Default: about a tenth of ``steps``.
      record_every, sharpness_every, check_invariance, lanczos_iter: as in :func:`eosflow.simulate`.
      progress: ``True`` shows a :class:`~eosflow.runio.Progress` bar on stderr, ``False``
        nothing; or pass a :class:`~eosflow.runio.Progress`.
      label: text in front of the progress bar.
      on_chunk: called as ``on_chunk(traj_so_far, steps_done)`` after each chunk (also once
        after the chunks loaded from a checkpoint). An exception it raises stops the run.
      checkpoint: a ``.npz`` path to save the run after each chunk and to resume from.
      on_nonfinite: as in :func:`eosflow.simulate`; the reported step is global.

    Returns:
      one :class:`~eosflow.Trajectory` with global ``step`` numbers, NumPy arrays (``w_final``
      keeps ``w0``'s structure).

    Raises:
      ValueError: bad ``steps``/``chunk``; :class:`CheckpointMismatch`. :class:`NonFiniteError`
      as ``simulate``.
    """
    where = "run_chunked"
    validate_on_nonfinite(on_nonfinite, where)
    res = resolve_dynamics(w0, lr, wd, optimizer=None, dynamics=dynamics, hparams=hparams,
                           where=where)  # fmt: skip
    plain = res.dynamics.geometry == "plain"
    validate_run_args(loss, w0, steps, record_every, sharpness_every,
                      check_invariance and not plain, where)  # fmt: skip
    chunk = default_chunk(int(steps), int(record_every)) if chunk is None else chunk
    chunk = validate_chunk(chunk, record_every, where)
    kw = dict(record_every=int(record_every), sharpness_every=int(sharpness_every),
              lanczos_iter=int(lanczos_iter))  # fmt: skip
    bar = progress if isinstance(progress, Progress) else Progress(steps, label, enabled=progress)
    try:
        traj = _chunks(loss, w0, res, int(steps), int(chunk), kw, bar, on_chunk, checkpoint)
    finally:
        bar.close()
    return cut_at_nonfinite(traj, on_nonfinite, where)


def _chunks(loss, w0, res, steps, chunk, kw, bar, on_chunk, checkpoint) -> Trajectory:
    """The chunk loop of :func:`run_chunked` (resuming from ``checkpoint`` if it holds this run)."""
    rs = start_run_state(loss, res.dynamics, w0, res.hparams)
    path = Path(checkpoint) if checkpoint is not None else None
    fp = _fingerprint(loss, w0, res, steps=steps, chunk=chunk, **kw) if path else ""
    parts, done = [], 0
    if path is not None:
        loaded = _load(path, fp, w0, res, rs)
        if loaded is not None:
            traj, done, rs = loaded
            parts = [traj]
            bar.update(done)
            if on_chunk is not None:
                on_chunk(traj, done)
    while done < steps and not (parts and int(parts[-1].nonfinite_step) >= 0):
        n = min(chunk, steps - done)
        part, rs = run_part(loss, w0, res, n, **kw, rs=rs, start=done)
        parts.append(_as_host(part))
        done += n
        traj = concat_trajectories(parts)
        parts = [traj]
        if path is not None:
            _save(path, fp, traj, done, rs)
        bar.update(done)
        if on_chunk is not None:
            on_chunk(traj, done)
    return parts[0]
