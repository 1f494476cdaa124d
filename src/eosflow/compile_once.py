"""Eager calls that compile once: the dispatch behind the public sharpness functions.

A public function ``f(loss, w, **options)`` is written as a plain implementation ``impl(w, ...,
loss=..., **options)`` and ``jitted = jax.jit(impl, static_argnames=(...))``. :func:`dispatch`
calls ``jitted`` when every array argument is concrete and the static values are hashable, so an
eager call compiles once per (static values, argument shapes/dtypes/structure) and later calls
reuse the program; under a trace (the caller's ``jit``/``vmap``/``grad``) or with an unhashable
loss it calls ``impl`` directly and the caller's transformation compiles it.

The static values are keys: the loss is hashed like any static ``jax.jit`` argument (identity
for plain functions; bound methods of the same object, and objects that compare equal, share a
program), and whatever it captures (data arrays) is fixed into the program at the first call,
as in :func:`eosflow.simulate`. Build a new loss object for new data, or call the jitted
functions' ``clear_cache()``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax

__all__ = ["is_traced", "hashable", "dispatch", "static_number"]


def is_traced(*trees) -> bool:
    """Whether any leaf of ``trees`` is a tracer (we are inside the caller's jit/vmap/grad)."""
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(trees))


def hashable(*xs) -> bool:
    try:
        hash(xs)
    except TypeError:
        return False
    return True


def dispatch(impl: Callable, jitted: Callable, args: tuple, static: dict):
    """``impl(*args, **static)``: through ``jitted`` (``impl`` jitted with ``static`` as static
    arguments) when every array in ``args`` is concrete and ``static`` is hashable (a traced
    option is a tracer, which is not), so an eager
    call compiles once per (static values, argument shapes/dtypes/structure); directly under a
    trace (the caller's transformation compiles it) or with an unhashable loss."""
    if is_traced(args) or not hashable(*static.values()):
        return impl(*args, **static)
    return jitted(*args, **static)


def static_number(x, kind):
    """A concrete scalar option as a Python ``float``/``int`` (hashable, one cache entry for
    ``1e-10``, ``np.float64(1e-10)`` and ``jnp.asarray(1e-10)``); tracers and ``None`` pass."""
    if x is None or isinstance(x, jax.core.Tracer):
        return x
    return kind(x)
