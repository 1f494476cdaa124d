"""Parameters as flat vectors: the bridge between pytree losses (flax params) and the simulator.

The theory lives in ``R^D``; users' models live in pytrees. eosflow works on the flat vector
``jax.flatten_util.ravel_pytree(w)`` internally and reports flat arrays (``Trajectory.w``,
eigenvectors), converting back with the returned ``unravel`` where a pytree is wanted.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

__all__ = ["flatten_loss", "check_scalar_loss"]


def flatten_loss(loss: Callable, w: Any) -> tuple[Callable, jax.Array, Callable]:
    """Return ``(f, flat, unravel)`` with ``f(flat) == loss(w)``.

    A 1-D array ``w`` is passed through unchanged (``f is loss``); any other array or pytree is
    flattened by ``ravel_pytree``.
    """
    if isinstance(w, jax.Array | np.ndarray) and jnp.ndim(w) == 1:
        return loss, jnp.asarray(w), (lambda v: v)
    flat, unravel = ravel_pytree(w)
    return (lambda v: loss(unravel(v))), flat, unravel


def check_scalar_loss(loss: Callable, w: Any, where: str) -> None:
    """Raise ``TypeError`` unless ``loss(w)`` is a real scalar (checked abstractly, no FLOPs).

    The abstract output is cached per (loss object, structure, shapes, dtypes): tracing the loss
    took 1-2 ms of every ``simulate``/``sweep`` call's fixed cost (unhashable losses are traced
    each time)."""
    leaves, treedef = jax.tree_util.tree_flatten(w)
    avals = tuple((tuple(np.shape(x)), jnp.result_type(x)) for x in leaves)
    try:
        hash(loss)
        cached = True
    except TypeError:
        cached = False
    try:
        out = _output_struct(loss, treedef, avals) if cached else jax.eval_shape(loss, w)
    except Exception as e:  # noqa: BLE001 - re-raised with context
        raise TypeError(f"{where}: calling loss(w0) failed: {type(e).__name__}: {e}") from e
    if not hasattr(out, "shape") or out.shape != ():
        shape = getattr(out, "shape", type(out).__name__)
        raise TypeError(f"{where}: loss(w) must return a scalar, got shape {shape}")
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise TypeError(f"{where}: loss(w) must return a real float, got dtype {out.dtype}")


@functools.lru_cache(maxsize=128)
def _output_struct(loss: Callable, treedef, avals):
    structs = [jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in avals]
    return jax.eval_shape(loss, jax.tree_util.tree_unflatten(treedef, structs))
