"""A sweep on disk: manifest, one atomic ``.npz`` per chunk with the carried
:class:`~eosflow.driver.RunState`, :func:`load_sweep`; and moving arrays between host and devices.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from eosflow.trajectory import PER_RECORD, Trajectory
from eosflow.validation import CheckpointMismatch

__all__ = [
    "MANIFEST",
    "FORMAT",
    "RECORD_FIELDS",
    "to_host",
    "to_host_tree",
    "put",
    "chunk_path",
    "manifest_config",
    "check_manifest",
    "saved_chunks",
    "load_chunk",
    "chunk_arrays",
    "load_sweep",
    "unravel_rows",
    "assemble",
    "take_config",
]

#: Per-record fields of a :class:`~eosflow.Trajectory` (leading axes ``(B, T)`` in a sweep);
#: ``theta`` is derived from ``w`` and ``norm``.
Array = jax.Array

RECORD_FIELDS = PER_RECORD
MANIFEST = "manifest.json"
FORMAT = "eosflow.sweep/2"


def to_host(x) -> np.ndarray:
    """A (possibly multi-host, not fully addressable) array as one NumPy array on every process."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def to_host_tree(tree):
    """Every array of ``tree`` as NumPy (see :func:`_to_host`). Fully addressable arrays go
    through one ``jax.device_get``, which starts all device-to-host copies before waiting on
    any (on a GPU: one synchronization instead of one per array)."""
    leaves = jax.tree_util.tree_leaves(tree)
    if all(not isinstance(x, jax.Array) or x.is_fully_addressable for x in leaves):
        return jax.tree_util.tree_map(np.asarray, jax.device_get(tree))
    return jax.tree_util.tree_map(to_host, tree)


def put(x: np.ndarray, sharding) -> Array:
    """Place a host array (the same on every process) with ``sharding``, multi-host safe."""
    x = np.asarray(x)
    if sharding is None:
        return jnp.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def chunk_path(out_dir: Path, i: int) -> Path:
    return out_dir / f"chunk_{i:05d}.npz"


def manifest_config(cfg, W0, L0, w_like, **settings) -> dict:
    leaves = jax.tree_util.tree_leaves(w_like)
    return {
        "lr": [float(x) for x in cfg.lr],
        "wd": [float(x) for x in cfg.wd],
        "seed": [int(x) for x in cfg.seed],
        "dtype": str(W0.dtype),
        "D": int(W0.shape[1]),
        "w0_structure": str(jax.tree_util.tree_structure(w_like)),
        "w0_shapes": [list(np.shape(x)) for x in leaves],
        "w0_sha256": hashlib.sha256(np.ascontiguousarray(W0).tobytes()).hexdigest(),
        "loss_at_w0": [float(x) for x in L0],
        **settings,
    }


def check_manifest(path: Path, config: dict) -> None:
    """Refuse (:class:`~eosflow.validation.CheckpointMismatch`) to resume the sweep saved at
    ``path`` unless it is an eosflow sweep of this format with the same ``config``."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointMismatch(f"sweep: cannot read {path} ({e})") from None
    if saved.get("format") != FORMAT:
        raise CheckpointMismatch(f"sweep: {path} is not an eosflow sweep manifest ({FORMAT})")
    old = saved["config"]
    diff = []
    for k in sorted(set(old) | set(config)):
        a, b = old.get(k), config.get(k)
        if k == "loss_at_w0" and a is not None and b is not None and len(a) == len(b):
            same = np.allclose(
                np.asarray(a, float), np.asarray(b, float), rtol=1e-9, atol=0, equal_nan=True
            )
        else:
            same = a == b
        if not same:
            diff.append(k)
    if diff:
        raise CheckpointMismatch(
            f"sweep: {path.parent} holds a sweep with a different configuration (differs in: "
            f"{', '.join(diff)}); refusing to resume it. Use another out_dir or delete that one"
        )


def saved_chunks(out_dir: Path, starts: list[int]) -> int:
    """How many chunks ``0, 1, ...`` are saved (contiguously, with the expected start steps)."""
    k = 0
    while k < len(starts) and chunk_path(out_dir, k).exists():
        with np.load(chunk_path(out_dir, k)) as z:
            if int(z["start"]) != starts[k]:
                break
        k += 1
    return k


def chunk_arrays(start: int, rec: dict, w_final, bad, rs_leaves) -> dict:
    """What one chunk file holds: ``start``, the records (a dynamics' extra diagnostics under
    ``extra.NAME``), ``w_final`` ``(B, D)``, ``bad`` ``(B,)`` and the carried
    :class:`~eosflow.driver.RunState`'s leaves ``rs.0``, ``rs.1``, ... (in
    ``jax.tree_util.tree_leaves`` order)."""
    return {
        "start": np.asarray(start),
        **rec,
        "w_final": w_final,
        "bad": bad,
        **{f"rs.{i}": x for i, x in enumerate(rs_leaves)},
    }


def load_chunk(out_dir: Path, i: int, fields) -> tuple[dict, dict]:
    """``(records, end)`` of chunk ``i``: the records named by ``fields`` (plus every
    ``extra.NAME``), and ``{"w_final", "bad", "rs": [RunState leaves]}`` after it."""
    with np.load(chunk_path(out_dir, i)) as z:
        rec = {k: z[k] for k in z.files if k in fields or k.startswith("extra.")}
        n = sum(k.startswith("rs.") for k in z.files)
        end = {"w_final": z["w_final"], "bad": z["bad"], "rs": [z[f"rs.{j}"] for j in range(n)]}
    return rec, end


def load_sweep(out_dir: str | os.PathLike, *, fields: Sequence[str] | None = None) -> Trajectory:
    """Read a sweep saved by ``sweep(..., out_dir=...)`` (finished or not) back as a
    :class:`~eosflow.Trajectory` with a leading configuration axis.

    Args:
      out_dir: the sweep's folder (``manifest.json`` + ``chunk_NNNNN.npz``).
      fields: the per-record fields to load (default all of
        ``step, w, norm, eff_lr, loss, grad_norm, sharpness``; ``theta`` loads ``w`` and ``norm``,
        from which it is derived); the others come back empty (``T = 0``), which bounds memory,
        e.g. ``fields=("step", "loss")``.

    Returns:
      the records of the saved chunks; ``w_final`` is the *flat* ``(B, D)`` iterate after the last
      saved chunk, ``nonfinite_step`` from that chunk, ``lr``/``wd`` from the manifest.

    Raises:
      FileNotFoundError: no manifest or no saved chunk.
    """
    out_dir = Path(out_dir)
    man = json.loads((out_dir / MANIFEST).read_text())
    c = man["config"]
    fields = RECORD_FIELDS if fields is None else tuple(fields)
    unknown = set(fields) - set(RECORD_FIELDS) - {"theta"}
    if unknown:
        raise ValueError(
            f"load_sweep: unknown fields {sorted(unknown)}; choose from {RECORD_FIELDS + ('theta',)}"
        )
    if "theta" in fields:
        fields = tuple(dict.fromkeys(k for k in fields + ("w", "norm") if k != "theta"))
    n = saved_chunks(out_dir, man["starts"])
    if n == 0:
        raise FileNotFoundError(f"load_sweep: no saved chunk in {out_dir}")
    parts, ends = zip(*(load_chunk(out_dir, i, fields) for i in range(n)), strict=True)
    B, dtype = len(c["lr"]), np.dtype(c["dtype"])
    return assemble(list(parts), ends[-1], fields, B, c["D"], dtype, c["lr"], c["wd"], None)


def unravel_rows(W: np.ndarray, w_like):
    """Rows of ``W (B, D)`` as the pytree structure of ``w_like`` with a leading axis ``B``
    (NumPy slicing: ``ravel_pytree``'s order, no device round trip). A plain array ``w_like`` of
    shape ``(D,)`` gives ``W`` itself."""
    leaves, treedef = jax.tree_util.tree_flatten(w_like)
    if treedef.num_leaves == 1 and treedef.num_nodes == 1 and np.ndim(leaves[0]) == 1:
        return W
    out, start = [], 0
    for x in leaves:
        size = int(np.size(x))
        part = W[:, start : start + size].reshape((W.shape[0],) + np.shape(x))
        out.append(part.astype(jnp.result_type(x), copy=False))
        start += size
    return jax.tree_util.tree_unflatten(treedef, out)


def assemble(parts, end, fields, B, D, dtype, lr, wd, w_like, hparams=None) -> Trajectory:
    """One :class:`~eosflow.Trajectory` from the chunks' records ``parts`` and the state ``end``
    after the last one (:func:`load_chunk`)."""
    out = {}
    for k in RECORD_FIELDS:
        if k in fields and parts:
            x = np.concatenate([p[k] for p in parts], axis=-1 if k == "step" else 1)
            out[k] = np.broadcast_to(x, (B, x.shape[0])).copy() if k == "step" else x
        else:
            inner = (D,) if k == "w" else ()
            out[k] = np.zeros((B, 0) + inner, np.int64 if k == "step" else dtype)
    names = [k for k in (parts[0] if parts else {}) if k.startswith("extra.")]
    extra = {k[6:]: np.concatenate([p[k] for p in parts], axis=1) for k in names}
    wf = np.asarray(end["w_final"])
    w_final = wf if w_like is None else unravel_rows(wf, w_like)
    return Trajectory(
        **out,
        w_final=w_final,
        lr=np.asarray(lr, dtype),
        wd=np.asarray(wd, dtype),
        nonfinite_step=np.asarray(end["bad"]),
        extra=extra,
        hparams=hparams,
    )


def take_config(traj: Trajectory, b: int) -> Trajectory:
    """Configuration ``b`` of a sweep as a plain :class:`~eosflow.Trajectory`, cut after its
    non-finite step like ``simulate(..., on_nonfinite="return")`` (records up to and including
    step ``nonfinite_step``)."""
    one = jax.tree_util.tree_map(lambda x: np.asarray(x)[b], traj._replace(hparams=None))
    one = one._replace(hparams=traj.hparams)
    bad = int(one.nonfinite_step)
    if bad < 0:
        return one
    return one.take(int(np.searchsorted(one.step, bad, side="right")))
