"""A sweep's configurations: their order, their checks, their starting points, the device mesh.

See :func:`eosflow.sweep` (:mod:`eosflow.sweeps.batched`) for what runs them.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jax.sharding import AxisType, Mesh

from eosflow.devices import cpu_cores
from eosflow.dynamics import Dynamics
from eosflow.losses.base import SCALE_INVARIANCE_RTOL, check_scale_invariance
from eosflow.params import flatten_loss

__all__ = [
    "SweepConfig",
    "SingleDeviceWarning",
    "configurations",
    "config_mesh",
    "config_label",
    "validate_configs",
    "initial_points",
    "validate_points",
    "hint_cpu_devices",
    "hparams_batch",
    "Plan",
]


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


def config_label(i: int, cfg: SweepConfig) -> str:
    seed = f", seed={int(cfg.seed[i])}" if cfg.seed[i] >= 0 else ""
    return f"sweep: configuration {i} (lr={cfg.lr[i]:g}, wd={cfg.wd[i]:g}{seed})"


def validate_configs(cfg: SweepConfig) -> None:
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
            raise ValueError(f"{config_label(i, cfg)}: {msg.format(cfg.lr[i] * cfg.wd[i])}{more}")


def is_array(x) -> bool:
    return isinstance(x, jax.Array | np.ndarray)


def initial_points(loss, w0, cfg: SweepConfig, seeds, init_fn, w0_per_config):
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
        w0_per_config = is_array(w0) and jnp.ndim(w0) == 2
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
            f"eosflow.sweeps.configurations) or a single shared w0"
        )
    w_like = jax.tree_util.tree_map(lambda x: x[0], w0)
    W0 = np.stack(
        [
            np.asarray(ravel_pytree(jax.tree_util.tree_map(lambda x, b=b: x[b], w0))[0])
            for b in range(B)
        ]
    )
    return W0, w_like, True


def validate_points(loss, W0, w_like, cfg, distinct, check_invariance) -> np.ndarray:
    """Finite, nonzero, scale-invariant at every distinct starting point (the error names a
    configuration). Returns ``L(w0_b)`` for each configuration (part of the manifest)."""
    if not distinct:  # one shared w0 (a broadcast view): check it once
        one = validate_points(loss, W0[:1], w_like, cfg, True, check_invariance)
        return np.repeat(one, len(W0))
    finite = np.all(np.isfinite(W0), axis=1)
    nonzero = np.any(W0 != 0, axis=1)
    for ok, msg in (
        (finite, "w0 contains NaN or Inf"),
        (nonzero, "w0 is zero; a scale-invariant loss is undefined at w = 0"),
    ):
        if not ok.all():
            raise ValueError(f"{config_label(int(np.flatnonzero(~ok)[0]), cfg)}: {msg}")
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
                    f"{config_label(int(b), cfg)}: the loss is not scale-invariant at w0: "
                    f"|L(cw) - L(w)|/|L(w)| = {rel:.3g} > {tol:g}. Wrap it with "
                    "eosflow.scale_invariant(f), or pass check_invariance=False to run anyway"
                )
    return values


class SingleDeviceWarning(UserWarning):
    """``sweep`` runs on one CPU device of a multi-core machine (see :func:`_hint_cpu_devices`)."""


_HINTED = []


def hint_cpu_devices(devs) -> None:
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


@partial(jax.jit, static_argnames=("loss",))
def _batched_values(loss, W0, w_like):
    """``L(w0_b)`` for every row of ``W0`` (compiled once per loss object and shape)."""
    f, _, _ = flatten_loss(loss, w_like)
    return jax.vmap(f)(W0)


def hparams_batch(hparams) -> tuple[int, Any]:
    """``(B, axes)`` of a batched hyperparameter pytree: leaves with a leading axis are batched
    (all of the same size ``B``; ``axes`` 0), scalar leaves are shared (``axes`` ``None``).

    Raises:
      ValueError: no batched leaf, or batched leaves of different sizes (both named).
    """
    leaves, treedef = jax.tree_util.tree_flatten(hparams)
    sizes = sorted({int(np.shape(x)[0]) for x in leaves if np.ndim(x) >= 1})
    if not sizes:
        raise ValueError(
            "sweep: hparams has no batched leaf; give the swept values as 1-D arrays (a leading "
            "configuration axis), shared values as scalars"
        )
    if len(sizes) > 1:
        raise ValueError(
            f"sweep: the batched leaves of hparams have different leading sizes {sizes}; "
            "every swept value needs one entry per configuration"
        )
    axes = [0 if np.ndim(x) >= 1 else None for x in leaves]
    return sizes[0], jax.tree_util.tree_unflatten(treedef, axes)


class Plan(NamedTuple):
    """A checked sweep: configurations, starting points, the dynamics and batched hparams."""

    cfg: SweepConfig
    W0: np.ndarray
    w_like: Any
    L0: np.ndarray
    dynamics: Dynamics
    hparams: Any
    hp_axes: Any
