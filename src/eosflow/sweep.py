"""Many GD+WD runs in one compiled call, sharded over devices, chunked and resumable: :func:`sweep`.

The theory's statements are about families of runs (how the time to EoS depends on ``lr`` and
``wd``, how tracking error scales with ``η_in = lr·wd``, how robust sharpness reduction is across
initializations). :func:`sweep` runs a batch of ``B`` configurations ``(lr_b, wd_b, w0_b)`` of
GD+WD, eq. (1), ``w_{t+1} = (1 − lr_b·wd_b) w_t − lr_b ∇L(w_t)``, with the *same* per-configuration
computation as :func:`eosflow.simulate` (the driver ``eosflow.simulate._run_records``: step,
non-finite guard, records, warm-started Lanczos sharpness) mapped over the configuration axis with
``jax.vmap``. ``vmap`` of the driver's ``lax.scan`` is a ``lax.scan`` whose body is the batched
step, so one compiled program advances all configurations together; there is no Python loop over
configurations.

Devices. The configuration axis is sharded over every device JAX sees (``jax.devices()``, all hosts
after ``jax.distributed.initialize()``): a one-axis :class:`jax.sharding.Mesh` named ``"config"``
and ``NamedSharding(mesh, PartitionSpec("config"))`` on every batched input (``w``, the Lanczos
warm start, ``lr``, ``wd``, the non-finite flags). The loss (its data), the step counter and the
scalar ``steps`` are replicated. ``B`` is padded to a multiple of the device count with copies of
the last configuration and the padding is stripped from every output. Configurations never
interact, so a sharded sweep computes exactly what an unsharded one does (tested bitwise on 4
fake CPU devices). See ``docs/scaling.md``.

Chunks. With ``chunk`` set, the run proceeds ``chunk`` steps per compiled call; the full driver
state (``w``, step count, Lanczos warm start, non-finite flags) is carried from one chunk to the
next, so a chunked sweep equals an unchunked one bit for bit. With ``out_dir`` each chunk's records
and the carried state are written atomically to ``out_dir/chunk_NNNNN.npz``, next to a
``manifest.json`` holding the sweep's configuration; a later call with the same arguments resumes
after the last saved chunk (nothing saved is recomputed), and one with different arguments is
refused. ``keep_records=False`` keeps only the current chunk in memory (read the records back with
:func:`load_sweep`).

Non-finite runs. A configuration whose update produces NaN/Inf at step ``t`` is frozen at its last
finite iterate ``w_t``; its ``nonfinite_step`` is ``t``, its records after step ``t`` are NaN and
its ``w_final`` is ``w_t``. The other configurations are unaffected (no exception is raised; check
``Trajectory.nonfinite_step``, ``-1`` for a finite run). :func:`take_config` returns one
configuration's trajectory cut like ``simulate(..., on_nonfinite="return")``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import warnings
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from eosflow.devices import cpu_cores
from eosflow.gd import GDState, gd_wd_step, update_is_finite
from eosflow.losses.base import SCALE_INVARIANCE_RTOL, check_scale_invariance
from eosflow.params import flatten_loss
from eosflow.runio import Progress, save_json, save_npz
from eosflow.sharpness import _default_v0
from eosflow.simulate import (
    PER_RECORD,
    Trajectory,
    _Carry,
    _run_records,
    _validate_run,
)

Array = jax.Array

__all__ = [
    "SweepConfig",
    "SingleDeviceWarning",
    "configurations",
    "sweep",
    "take_config",
    "load_sweep",
    "config_mesh",
]

#: Per-record fields of a :class:`~eosflow.Trajectory` (leading axes ``(B, T)`` in a sweep);
#: ``theta`` is derived from ``w`` and ``norm``.
RECORD_FIELDS = PER_RECORD
MANIFEST = "manifest.json"
_FORMAT = "eosflow.sweep/1"
_AXES = _Carry(GDState(0), None, 0, 0)  # vmap axes of the driver's carry: t is shared


class SweepConfig(NamedTuple):
    """The configurations of a sweep, in order (index ``b`` = row ``b`` of every output).

    Attributes:
      lr, wd: ``(B,)`` float64 learning rates ``η̂_b`` and weight decays ``λ̂_b``.
      seed: ``(B,)`` int seeds (``-1`` when ``w0`` was given rather than drawn).
    """

    lr: np.ndarray
    wd: np.ndarray
    seed: np.ndarray


def configurations(
    lrs, wds, *, grid: bool = True, seeds: Sequence[int] | None = None
) -> SweepConfig:
    """The list of configurations :func:`sweep` runs, in its order.

    ``grid=True``: the outer product ``lrs × wds``, ``lr`` outermost (``b = i·len(wds) + j`` for
    ``(lrs[i], wds[j])``). ``grid=False``: ``lrs`` and ``wds`` zipped (broadcast against each
    other, so a scalar pairs with every entry of the other). With ``seeds``, every such ``(lr, wd)``
    is repeated for each seed, seed innermost: ``b = k·len(seeds) + s``.

    Raises:
      ValueError: empty or non-1-D inputs, zipped lists of different lengths, negative seeds.
    """
    lr = np.atleast_1d(np.asarray(lrs, dtype=np.float64))
    wd = np.atleast_1d(np.asarray(wds, dtype=np.float64))
    if lr.ndim != 1 or wd.ndim != 1 or lr.size == 0 or wd.size == 0:
        raise ValueError(
            f"sweep: lrs and wds must be non-empty scalars or 1-D lists, got shapes "
            f"{lr.shape} and {wd.shape}"
        )
    if grid:
        lr, wd = np.repeat(lr, wd.size), np.tile(wd, lr.size)
    elif lr.size != wd.size and 1 not in (lr.size, wd.size):
        raise ValueError(
            f"sweep: with grid=False lrs and wds are zipped and must have the same length "
            f"(or one of them length 1), got {lr.size} lrs and {wd.size} wds"
        )
    else:
        lr, wd = np.broadcast_arrays(lr, wd)
    if seeds is None:
        return SweepConfig(lr.copy(), wd.copy(), np.full(lr.size, -1, np.int64))
    s = np.atleast_1d(np.asarray(seeds))
    if s.ndim != 1 or s.size == 0 or not np.issubdtype(s.dtype, np.integer) or np.any(s < 0):
        raise ValueError(f"sweep: seeds must be a non-empty list of integers >= 0, got {seeds!r}")
    n = s.size
    return SweepConfig(np.repeat(lr, n), np.repeat(wd, n), np.tile(s.astype(np.int64), lr.size))


def config_mesh(devices: Sequence[Any] | None = None) -> Mesh:
    """A one-axis mesh named ``"config"`` over ``devices`` (default: ``jax.devices()``, i.e. every
    device of every process), with ``Auto`` axis type so sharding propagates through the
    ``vmap``-ed scan."""
    devices = jax.devices() if devices is None else list(devices)
    return jax.make_mesh((len(devices),), ("config",), (AxisType.Auto,), devices=devices)


# ----------------------------------------------------------------------------- validation


def _where(i: int, cfg: SweepConfig) -> str:
    seed = f", seed={int(cfg.seed[i])}" if cfg.seed[i] >= 0 else ""
    return f"sweep: configuration {i} (lr={cfg.lr[i]:g}, wd={cfg.wd[i]:g}{seed})"


def _validate_hyperparams(cfg: SweepConfig) -> None:
    """``lr > 0``, ``wd >= 0``, ``lr·wd < 1`` for every configuration; the error names the first
    offending one (and how many others fail)."""
    checks = (
        (~(np.isfinite(cfg.lr) & (cfg.lr > 0)), "learning rate lr must be finite and > 0"),
        (~(np.isfinite(cfg.wd) & (cfg.wd >= 0)), "weight decay wd must be finite and >= 0"),
        (
            cfg.lr * cfg.wd >= 1,
            "need 0 <= lr*wd < 1 (eq. (1) multiplies w by 1 - lr*wd each step), got lr*wd = {}",
        ),
    )
    for bad, msg in checks:
        idx = np.flatnonzero(bad)
        if idx.size:
            i = int(idx[0])
            more = f" ({idx.size - 1} other configuration(s) too)" if idx.size > 1 else ""
            raise ValueError(f"{_where(i, cfg)}: {msg.format(cfg.lr[i] * cfg.wd[i])}{more}")


def _is_array(x) -> bool:
    return isinstance(x, jax.Array | np.ndarray)


def _initial_points(loss, w0, cfg: SweepConfig, seeds, init_fn, w0_per_config):
    """``(W0 (B, D) numpy, w_like, per-config?)``: the flat starting points of every
    configuration and one configuration's ``w0`` (structure only)."""
    B = cfg.lr.size
    if seeds is not None:
        if init_fn is None:
            raise ValueError("sweep: seeds needs init_fn(key) -> w0 to draw each seed's w0")
        if w0 is not None:
            raise ValueError("sweep: pass w0=None with seeds/init_fn (w0 is drawn per seed)")
        uniq, inv = np.unique(cfg.seed, return_inverse=True)
        drawn = [init_fn(jax.random.PRNGKey(int(s))) for s in uniq]
        flats, structs = [], []
        for s, w in zip(uniq, drawn, strict=True):
            flat, _ = ravel_pytree(w)
            flats.append(np.asarray(flat))
            structs.append(jax.tree_util.tree_structure(w))
            if structs[-1] != structs[0] or flats[-1].shape != flats[0].shape:
                raise ValueError(
                    f"sweep: init_fn returned different structures/shapes for seeds "
                    f"{int(uniq[0])} and {int(s)}"
                )
        w_like = drawn[0]
        return np.stack(flats)[inv], w_like, True
    if init_fn is not None:
        raise ValueError("sweep: init_fn is only used with seeds; pass seeds=[...] too")
    if w0 is None:
        raise ValueError("sweep: w0 is None; give w0, or seeds and init_fn")
    if w0_per_config is None:  # documented rule: a single 2-D array is one w0 per configuration
        w0_per_config = _is_array(w0) and jnp.ndim(w0) == 2
    if not w0_per_config:
        flat, _ = ravel_pytree(w0)
        return np.broadcast_to(np.asarray(flat), (B, flat.shape[0])), w0, False
    leaves = jax.tree_util.tree_leaves(w0)
    sizes = {int(np.shape(x)[0]) if np.ndim(x) else None for x in leaves}
    if None in sizes or len(sizes) != 1:
        raise ValueError(
            "sweep: a per-configuration w0 needs a leading configuration axis of the same size on "
            f"every leaf, got leading sizes {sorted(map(str, sizes))}"
        )
    (n,) = sizes
    if n != B:
        raise ValueError(
            f"sweep: w0 has a leading (configuration) axis of size {n} but the sweep has {B} "
            f"configurations; give one w0 per configuration (in the order of "
            f"eosflow.sweep.configurations) or a single shared w0"
        )
    w_like = jax.tree_util.tree_map(lambda x: x[0], w0)
    W0 = np.stack(
        [
            np.asarray(ravel_pytree(jax.tree_util.tree_map(lambda x, b=b: x[b], w0))[0])
            for b in range(B)
        ]
    )
    return W0, w_like, True


def _validate_points(loss, W0, w_like, cfg, distinct, check_invariance) -> np.ndarray:
    """Finite, nonzero, scale-invariant at every distinct starting point (the error names a
    configuration). Returns ``L(w0_b)`` for each configuration (part of the manifest)."""
    if not distinct:  # one shared w0 (a broadcast view): check it once
        one = _validate_points(loss, W0[:1], w_like, cfg, True, check_invariance)
        return np.repeat(one, len(W0))
    finite = np.all(np.isfinite(W0), axis=1)
    nonzero = np.any(W0 != 0, axis=1)
    for ok, msg in (
        (finite, "w0 contains NaN or Inf"),
        (nonzero, "w0 is zero; a scale-invariant loss is undefined at w = 0"),
    ):
        if not ok.all():
            raise ValueError(f"{_where(int(np.flatnonzero(~ok)[0]), cfg)}: {msg}")
    rows = np.unique(W0, axis=0, return_index=True)[1] if len(W0) > 1 else np.array([0])
    values = np.asarray(_batched_values(loss, jnp.asarray(W0), w_like))
    if check_invariance:
        tol = SCALE_INVARIANCE_RTOL.get(jnp.dtype(W0.dtype), 1e-3)
        _, unravel = ravel_pytree(w_like)
        for b in np.sort(rows):
            # The user's loss object keys check_scale_invariance's compiled check: no recompile
            # on the next sweep with the same loss.
            rel = check_scale_invariance(loss, unravel(jnp.asarray(W0[b])))
            if not rel <= tol:
                raise ValueError(
                    f"{_where(int(b), cfg)}: the loss is not scale-invariant at w0: "
                    f"|L(cw) - L(w)|/|L(w)| = {rel:.3g} > {tol:g}. Wrap it with "
                    "eosflow.scale_invariant(f), or pass check_invariance=False to run anyway"
                )
    return values


class SingleDeviceWarning(UserWarning):
    """``sweep`` runs on one CPU device of a multi-core machine (see :func:`_hint_cpu_devices`)."""


_HINTED = []


def _hint_cpu_devices(devs) -> None:
    """Once per process: a hint when a sweep runs on JAX's single CPU device while the machine
    has several cores. One device runs the batch as one stream of kernels on about one core;
    ``eosflow.use_cpu_devices()`` makes each core a device and the sweep shards over them (2-core
    CPU, B = 64: 2.2-2.4x against 0.6-0.9x sequential ``simulate`` on matrix completion, 3.7x
    against 1.8-2.3x on linear regression d = 5000; docs/benchmarks.md). Silence it with
    ``warnings.filterwarnings("ignore", category=eosflow.SingleDeviceWarning)``."""
    if _HINTED or len(devs) != 1 or devs[0].platform != "cpu" or (cores := cpu_cores()) < 2:
        return
    _HINTED.append(True)
    warnings.warn(
        f"sweep: running on 1 CPU device of a {cores}-core machine; call "
        "eosflow.use_cpu_devices() right after `import eosflow` to shard the configurations over "
        "the cores (often ~2x faster)",
        SingleDeviceWarning,
        stacklevel=3,
    )


@functools.lru_cache(maxsize=16)
def _default_v0_host(D: int, dtype: str) -> np.ndarray:
    """The simulator's default Lanczos start vector (``_default_v0``, as inside its jitted
    driver) as a read-only NumPy array, computed once per size and dtype."""
    v = np.asarray(jax.jit(_default_v0, static_argnums=(0, 1))(D, np.dtype(dtype)))
    v.flags.writeable = False
    return v


@partial(jax.jit, static_argnames=("loss",))
def _batched_values(loss, W0, w_like):
    """``L(w0_b)`` for every row of ``W0`` (compiled once per loss object and shape)."""
    f, _, _ = flatten_loss(loss, w_like)
    return jax.vmap(f)(W0)


# ----------------------------------------------------------------------------- compiled chunk


@partial(
    jax.jit,
    static_argnames=(
        "loss",
        "n_rec",
        "record_every",
        "sharpness_every",
        "lanczos_iter",
        "record_params",
        "mesh",
        "full_records",
    ),
)
def _sweep_chunk(
    loss,
    w_like,
    carry: _Carry,
    lr,
    wd,
    steps,
    *,
    n_rec,
    record_every,
    sharpness_every,
    lanczos_iter,
    record_params,
    mesh,
    full_records=False,
):
    """``n_rec`` records of every configuration from ``carry`` (leading axis ``B`` on everything
    but ``carry.t``): ``jax.vmap`` of :func:`eosflow.simulate._run_records` over configurations.

    Returns ``(carry, records)``; records after a configuration's non-finite step are NaN.
    """
    f, _, _ = flatten_loss(loss, w_like)

    def one(carry, lr, wd):
        return _run_records(
            f,
            gd_wd_step,
            carry,
            lambda s, lr, wd: s.w,
            lr,
            wd,
            n_rec=n_rec,
            steps=steps,
            record_every=record_every,
            sharpness_every=sharpness_every,
            lanczos_iter=lanczos_iter,
            is_finite=update_is_finite,
            full_records=full_records,
        )

    carry, (t, w, info, lam) = jax.vmap(
        one, in_axes=(_AXES, 0, 0), out_axes=(_AXES, (None, 0, 0, 0))
    )(carry, lr, wd)
    after = (carry.bad[:, None] >= 0) & (t[None, :] > carry.bad[:, None])
    nan = lambda x: jnp.where(after.reshape(after.shape + (1,) * (x.ndim - 2)), jnp.nan, x)
    B = lr.shape[0]
    if not record_params:  # w is not kept: XLA drops its buffer
        w = jnp.zeros((B, n_rec, 0), lr.dtype)
    rec = {
        "step": t,
        "w": nan(w),
        "norm": nan(info.norm),
        "eff_lr": nan(info.eff_lr),
        "loss": nan(info.loss),
        "grad_norm": nan(info.grad_norm),
        "sharpness": nan(lam),
    }
    if mesh is not None:
        batched = NamedSharding(mesh, PartitionSpec("config"))
        rec = {
            k: v if k == "step" else jax.lax.with_sharding_constraint(v, batched)
            for k, v in rec.items()
        }
        carry = carry._replace(
            state=GDState(jax.lax.with_sharding_constraint(carry.state.w, batched)),
            v1=jax.lax.with_sharding_constraint(carry.v1, batched),
            bad=jax.lax.with_sharding_constraint(carry.bad, batched),
        )
    return carry, rec


def _to_host(x) -> np.ndarray:
    """A (possibly multi-host, not fully addressable) array as one NumPy array on every process."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def _to_host_tree(tree):
    """Every array of ``tree`` as NumPy (see :func:`_to_host`). Fully addressable arrays go
    through one ``jax.device_get``, which starts all device-to-host copies before waiting on
    any (on a GPU: one synchronization instead of one per array)."""
    leaves = jax.tree_util.tree_leaves(tree)
    if all(not isinstance(x, jax.Array) or x.is_fully_addressable for x in leaves):
        return jax.tree_util.tree_map(np.asarray, jax.device_get(tree))
    return jax.tree_util.tree_map(_to_host, tree)


def _put(x: np.ndarray, sharding) -> Array:
    """Place a host array (the same on every process) with ``sharding``, multi-host safe."""
    x = np.asarray(x)
    if sharding is None:
        return jnp.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


# ----------------------------------------------------------------------------- files


def _chunk_path(out_dir: Path, i: int) -> Path:
    return out_dir / f"chunk_{i:05d}.npz"


def _manifest_config(cfg, W0, L0, w_like, **settings) -> dict:
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


def _check_manifest(path: Path, config: dict) -> None:
    saved = json.loads(path.read_text())
    if saved.get("format") != _FORMAT:
        raise ValueError(f"sweep: {path} is not an eosflow sweep manifest ({_FORMAT})")
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
        raise ValueError(
            f"sweep: {path.parent} holds a sweep with a different configuration (differs in: "
            f"{', '.join(diff)}); refusing to resume it. Use another out_dir or delete that one"
        )


def _saved_chunks(out_dir: Path, starts: list[int]) -> int:
    """How many chunks ``0, 1, ...`` are saved (contiguously, with the expected start steps)."""
    k = 0
    while k < len(starts) and _chunk_path(out_dir, k).exists():
        with np.load(_chunk_path(out_dir, k)) as z:
            if int(z["start"]) != starts[k]:
                break
        k += 1
    return k


def _load_chunk(out_dir: Path, i: int, fields) -> tuple[dict, dict]:
    with np.load(_chunk_path(out_dir, i)) as z:
        rec = {k: z[k] for k in fields}
        carry = {k: z[k] for k in ("carry_w", "carry_v1", "carry_bad", "carry_t")}
    return rec, carry


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
    n = _saved_chunks(out_dir, man["starts"])
    if n == 0:
        raise FileNotFoundError(f"load_sweep: no saved chunk in {out_dir}")
    parts, carry = zip(*(_load_chunk(out_dir, i, fields) for i in range(n)), strict=True)
    B, dtype = len(c["lr"]), np.dtype(c["dtype"])
    return _assemble(list(parts), carry[-1], fields, B, c["D"], dtype, c["lr"], c["wd"], None)


def _unravel_rows(W: np.ndarray, w_like):
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


def _assemble(parts, carry, fields, B, D, dtype, lr, wd, w_like) -> Trajectory:
    out = {}
    for k in RECORD_FIELDS:
        if k in fields and parts:
            x = np.concatenate([p[k] for p in parts], axis=-1 if k == "step" else 1)
            out[k] = np.broadcast_to(x, (B, x.shape[0])).copy() if k == "step" else x
        else:
            inner = (D,) if k == "w" else ()
            out[k] = np.zeros((B, 0) + inner, np.int64 if k == "step" else dtype)
    wf = np.asarray(carry["carry_w"])
    w_final = wf if w_like is None else _unravel_rows(wf, w_like)
    return Trajectory(
        **out,
        w_final=w_final,
        lr=np.asarray(lr, dtype),
        wd=np.asarray(wd, dtype),
        nonfinite_step=np.asarray(carry["carry_bad"]),
    )


def take_config(traj: Trajectory, b: int) -> Trajectory:
    """Configuration ``b`` of a sweep as a plain :class:`~eosflow.Trajectory`, cut after its
    non-finite step like ``simulate(..., on_nonfinite="return")`` (records up to and including
    step ``nonfinite_step``)."""
    one = jax.tree_util.tree_map(lambda x: np.asarray(x)[b], traj)
    bad = int(one.nonfinite_step)
    if bad < 0:
        return one
    keep = int(np.searchsorted(one.step, bad, side="right"))
    return one._replace(**{k: getattr(one, k)[:keep] for k in RECORD_FIELDS})


# ----------------------------------------------------------------------------- the driver


def sweep(
    loss: Callable,
    w0,
    lrs,
    wds,
    steps: int = 1000,
    *,
    grid: bool = True,
    seeds: Sequence[int] | None = None,
    init_fn: Callable[[Array], Any] | None = None,
    w0_per_config: bool | None = None,
    record_every: int = 1,
    sharpness_every: int = 0,
    lanczos_iter: int = 20,
    record_params: bool = True,
    chunk: int | None = None,
    out_dir: str | os.PathLike | None = None,
    keep_records: bool = True,
    progress: bool | Progress = True,
    shard: bool = True,
    devices: Sequence[Any] | None = None,
    check_invariance: bool = True,
    on_chunk: Callable[[int, int], None] | None = None,
) -> Trajectory:
    """Run GD+WD, eq. (1), for a batch of configurations in one compiled call per chunk.

    Configuration ``b`` runs ``w_{t+1} = (1 − lr_b·wd_b) w_t − lr_b ∇L(w_t)`` from ``w0_b`` for
    ``steps`` steps; its records are those of ``simulate(loss, w0_b, lr_b, wd_b, steps, ...)``
    (equal to float64 round-off, tested at <= 1e-12). All configurations advance inside one
    ``lax.scan`` (``jax.vmap`` of the simulator's per-configuration driver), sharded over the
    devices (module docstring).

    Args:
      loss: scale-invariant ``loss(w) -> scalar``, shared by all configurations.
      w0: the initial parameters. A 1-D array or a pytree: shared by every configuration. One per
        configuration: a 2-D array ``(B, D)``, or any pytree with a leading axis ``B`` on every
        leaf and ``w0_per_config=True``. ``None`` with ``seeds``/``init_fn``.
      lrs, wds: learning rates ``η̂`` and weight decays ``λ̂`` (scalars or 1-D lists); see
        :func:`configurations` for the order.
      steps: steps per configuration (>= 1).
      grid: ``True``: every ``(lr, wd)`` in ``lrs × wds``; ``False``: ``lrs`` and ``wds`` zipped.
      seeds: draw ``w0`` per seed as ``init_fn(jax.random.PRNGKey(seed))``; every ``(lr, wd)`` runs
        from every seed's ``w0`` (seed innermost).
      init_fn: ``key -> w0``, with ``seeds``.
      w0_per_config: whether ``w0`` has a leading configuration axis; default: ``True`` exactly for
        a single 2-D array (pass ``False`` for a shared 2-D parameter).
      record_every, sharpness_every, lanczos_iter: as in :func:`eosflow.simulate`.
      record_params: ``False`` records ``w`` and ``θ`` with shape ``(B, T, 0)`` (saves
        ``2·D`` numbers per record per configuration; everything else is unchanged).
      chunk: steps per compiled call, a multiple of ``record_every`` (default: all ``steps``).
      out_dir: folder to stream each chunk to (atomic ``.npz`` per chunk + ``manifest.json``);
        resumes a sweep saved there with the same arguments, refuses one with other arguments.
        Only process 0 writes (multi-host).
      keep_records: ``False`` (only with ``out_dir``): return empty records (``T = 0``) and keep
        one chunk in memory at a time; read the records with :func:`load_sweep`.
      progress: a progress line on stderr after each chunk (``True``/``False`` or a
        :class:`eosflow.runio.Progress`).
      shard: shard the configuration axis over ``devices`` (default ``jax.devices()``) when there
        are several; ``False`` runs on the default device.
      devices: the devices to shard over (default all). On a multi-core CPU with JAX's single CPU
        device, the first sweep of the process warns (:class:`SingleDeviceWarning`) that
        :func:`eosflow.use_cpu_devices` would shard it over the cores.
      check_invariance: check ``L(cw) = L(w)`` at every distinct ``w0``.
      on_chunk: called as ``on_chunk(index, steps_done)`` after each *computed* (and saved) chunk;
        an exception it raises stops the sweep (a resumable interruption).

    Returns:
      a :class:`~eosflow.Trajectory` whose fields have a leading configuration axis ``B``:
      ``step (B, T)``, ``w (B, T, D)`` (and the derived ``theta``), ``norm, eff_lr, loss, grad_norm, sharpness (B, T)``,
      ``w_final`` (``w0``'s structure with a leading ``B``), ``lr, wd (B,)`` and
      ``nonfinite_step (B,)`` (``-1`` or the first non-finite step; later records are NaN).
      NumPy arrays. :func:`take_config` extracts one configuration.

    Raises:
      ValueError: a configuration with ``lr <= 0``, ``wd < 0`` or ``lr·wd >= 1`` (named), a
        per-configuration ``w0`` whose leading axis is not ``B`` (both sizes given), a zero or
        non-finite ``w0``, a loss that is not scale-invariant, bad ``steps``/``chunk``, an
        ``out_dir`` holding a different sweep.
      TypeError: a loss that is not callable or does not return a real scalar.

    Example:
      >>> import jax.numpy as jnp, eosflow
      >>> tr = eosflow.sweep(eosflow.toy3d(), jnp.array([0.3, 0.5, 0.4]), [0.1, 0.2], [0.01, 0.02],
      ...                    steps=50, progress=False)
      >>> tr.loss.shape, tr.lr.tolist()
      ((4, 50), [0.1, 0.1, 0.2, 0.2])
    """
    cfg = configurations(lrs, wds, grid=grid, seeds=seeds)
    B = cfg.lr.size
    W0, w_like, distinct = _initial_points(loss, w0, cfg, seeds, init_fn, w0_per_config)
    _validate_run(loss, w_like, steps, record_every, sharpness_every, False, "sweep")
    _validate_hyperparams(cfg)
    L0 = _validate_points(loss, W0, w_like, cfg, distinct, check_invariance)
    if keep_records is False and out_dir is None:
        raise ValueError("sweep: keep_records=False needs out_dir (the records would be lost)")
    chunk = int(steps) if chunk is None else chunk
    if isinstance(chunk, bool) or not isinstance(chunk, int | np.integer) or chunk < 1:
        raise ValueError(f"sweep: chunk must be an integer >= 1, got {chunk!r}")
    if chunk % record_every:
        raise ValueError(
            f"sweep: chunk ({chunk}) must be a multiple of record_every ({record_every}) so that "
            "records fall on the same steps as in one long run"
        )
    steps, chunk = int(steps), min(int(chunk), int(steps))
    starts = list(range(0, steps, chunk))
    dtype = W0.dtype
    lr = cfg.lr.astype(dtype)
    wd = cfg.wd.astype(dtype)

    # Devices: pad B to a multiple of the device count, shard the configuration axis.
    devs = jax.devices() if devices is None else list(devices)
    if shard and devices is None and B > 1:
        _hint_cpu_devices(devs)
    mesh = config_mesh(devs) if shard and len(devs) > 1 else None
    Bp = -(-B // len(devs)) * len(devs) if mesh is not None else B
    pad = lambda x: np.concatenate([x, np.repeat(x[-1:], Bp - B, axis=0)]) if Bp > B else x
    batched = NamedSharding(mesh, PartitionSpec("config")) if mesh is not None else None
    replicated = NamedSharding(mesh, PartitionSpec()) if mesh is not None else None

    def put_carry(w, v1, bad, t):
        return _Carry(
            GDState(_put(pad(w), batched)),
            _put(np.asarray(t), replicated),
            _put(pad(v1), batched),
            _put(pad(bad), batched),
        )

    # Files: manifest (config) and the chunks already saved.
    out = Path(out_dir) if out_dir is not None else None
    writer = jax.process_index() == 0
    done_chunks, parts = 0, []
    if out is not None:
        config = _manifest_config(
            cfg,
            W0,
            L0,
            w_like,
            steps=steps,
            chunk=chunk,
            record_every=int(record_every),
            sharpness_every=int(sharpness_every),
            lanczos_iter=int(lanczos_iter),
            record_params=bool(record_params),
            loss=getattr(loss, "__qualname__", type(loss).__qualname__),
        )
        if (out / MANIFEST).exists():
            _check_manifest(out / MANIFEST, config)
            done_chunks = _saved_chunks(out, starts)
        elif writer:
            save_json(out / MANIFEST, {"format": _FORMAT, "config": config, "starts": starts})
    if done_chunks:
        last = None
        for i in range(done_chunks):
            rec, last = _load_chunk(out, i, RECORD_FIELDS)
            if keep_records:
                parts.append(rec)
        carry = put_carry(last["carry_w"], last["carry_v1"], last["carry_bad"], last["carry_t"])
        host_carry = last
    else:
        # The driver's initial carry (simulate's _initial_carry), built on the host: no device
        # round trip for the (B, D) arrays.
        index = jax.dtypes.canonicalize_dtype(np.int64)
        v0 = np.broadcast_to(_default_v0_host(W0.shape[1], W0.dtype.name), W0.shape)
        carry = put_carry(W0, v0, np.full(B, -1, index), np.asarray(0, index))
        host_carry = {"carry_w": W0, "carry_bad": np.full(B, -1)}

    lr_d, wd_d = _put(pad(lr), batched), _put(pad(wd), batched)
    steps_d = _put(np.asarray(steps), replicated)
    bar = (
        progress
        if isinstance(progress, Progress)
        else Progress(steps, f"sweep ({B} configurations)", enabled=bool(progress))
    )
    if done_chunks:
        bar.update(min(steps, starts[done_chunks - 1] + chunk))
    try:
        for i in range(done_chunks, len(starts)):
            n = min(chunk, steps - starts[i])
            carry, rec = _sweep_chunk(
                loss,
                w_like,
                carry,
                lr_d,
                wd_d,
                steps_d,
                n_rec=math.ceil(n / record_every),
                record_every=int(record_every),
                sharpness_every=int(sharpness_every),
                lanczos_iter=int(lanczos_iter),
                record_params=bool(record_params),
                mesh=mesh,
                full_records=n % record_every == 0,
            )
            rec, host_carry = _to_host_tree(
                (
                    rec,
                    {
                        "carry_w": carry.state.w,
                        "carry_v1": carry.v1,
                        "carry_bad": carry.bad,
                        "carry_t": carry.t,
                    },
                )
            )
            rec = {k: v if k == "step" else v[:B] for k, v in rec.items()}
            host_carry = {k: v if k == "carry_t" else v[:B] for k, v in host_carry.items()}
            if out is not None and writer:
                save_npz(_chunk_path(out, i), start=np.asarray(starts[i]), **rec, **host_carry)
            if keep_records:
                parts.append(rec)
            bar.update(starts[i] + n)
            if on_chunk is not None:
                on_chunk(i, starts[i] + n)
    finally:
        bar.close()
    fields = RECORD_FIELDS if keep_records else ()
    return _assemble(parts, host_carry, fields, B, W0.shape[1], dtype, lr, wd, w_like)
