"""Scale-invariant losses: the common pieces (Section 3 of the paper).

A loss ``L`` on ``R^D \\ {0}`` is *scale-invariant* when ``L(c w) = L(w)`` for every ``c > 0``.
Consequences used throughout eosflow (Lemma D.1 of the paper, all tested):

* ``∇L(c w) = ∇L(w) / c`` and ``∇²L(c w) = ∇²L(w) / c²``;
* ``<∇L(w), w> = 0`` (the gradient is tangent to the sphere);
* ``∇²L(w) w = -∇L(w)`` (differentiate the previous identity).

Every function in eosflow accepts a *plain callable* ``loss(w) -> scalar``. A loss that is a mean of
squared residuals, ``L(w) = mean_i r_i(w)²``, may be wrapped in :class:`ResidualLoss`, which is
still a plain callable but also carries ``residual`` so that Gauss–Newton fast paths
(:mod:`eosflow.manifold`) can use it.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
PyTree = Any

__all__ = [
    "ResidualLoss",
    "scale_invariant",
    "check_scale_invariance",
    "residual_fn",
    "global_norm",
    "SCALE_INVARIANCE_RTOL",
]

#: Relative-change tolerance used by :func:`eosflow.simulate` to reject losses that are not
#: scale-invariant, per dtype. float64 round-off on our losses is ~1e-15; 1e-8 leaves room for
#: deep nets while still catching e.g. a missing normalization (relative changes of order 1).
SCALE_INVARIANCE_RTOL = {jnp.dtype("float64"): 1e-8, jnp.dtype("float32"): 1e-3}


@dataclasses.dataclass(frozen=True, eq=False)
class ResidualLoss:
    """A loss ``L(w) = mean_i r_i(w)²`` that also exposes its residuals.

    Attributes:
      loss: ``loss(w) -> scalar``; must equal ``mean(residual(w) ** 2)`` (it may be a faster
        formula, e.g. matrix completion with a dense mask).
      residual: ``residual(w) -> (n,)`` array of residuals.
      name: a short label used in error messages and saved summaries.

    Instances hash by identity, so a jitted simulation keyed on the loss compiles once per loss.
    """

    loss: Callable[[Array], Array]
    residual: Callable[[Array], Array]
    name: str = "residual-loss"

    def __call__(self, w: Array) -> Array:
        return self.loss(w)


def residual_fn(loss: Callable) -> Callable | None:
    """The residual function a loss carries (a :class:`ResidualLoss`), or ``None``."""
    return loss.residual if isinstance(loss, ResidualLoss) else None


def global_norm(tree: PyTree) -> Array:
    """Euclidean norm of all leaves of a pytree taken together."""
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in leaves))


def scale_invariant(f: Callable[[PyTree], Array]) -> Callable[[PyTree], Array]:
    """Make any function scale-invariant: ``L(w) = f(w / ||w||)``.

    ``w`` may be an array or a pytree; ``||w||`` is the norm of all leaves together, so the result is
    invariant under ``w -> c w`` for the whole parameter vector (the paper's assumption, Section 3).
    The result is not defined at ``w = 0``.

    Returns:
      ``L``, a function of the same argument structure as ``f``.
    """

    def L(w):
        n = global_norm(w)
        return f(jax.tree_util.tree_map(lambda x: x / n, w))

    L.__name__ = f"scale_invariant({getattr(f, '__name__', 'f')})"
    L.__doc__ = f"Scale-invariant wrapper L(w) = f(w/||w||) of {getattr(f, '__name__', 'f')}."
    return L


def check_scale_invariance(
    loss: Callable[[PyTree], Array],
    w: PyTree,
    scales: Sequence[float] = (0.37, 2.9, 11.0),
) -> float:
    """Measure how far ``loss`` is from scale-invariant at ``w``.

    Computes ``max_c |L(c w) - L(w)| / (|L(w)| + floor)`` over ``c`` in ``scales``: the loss in
    the dtype of ``w``, the ratio on the host in float64, with ``floor = eps ** 0.75`` of ``w``'s
    dtype (1.8e-12 in float64): losses below ``floor`` count as fit, where round-off in the
    residuals dominates their relative change. A scale-invariant loss gives round-off (~1e-15 in
    float64); one that is not gives order one.

    ``w`` must be concrete. Inside a ``jax.jit`` trace (e.g. ``simulate`` jitted over ``lr`` with
    a closed-over ``w0``) the check still runs, evaluated at trace time.

    Returns:
      the measured relative change, a Python float.
    """
    dtype = jnp.result_type(*jax.tree_util.tree_leaves(w))
    floor = float(jnp.finfo(dtype).eps) ** 0.75
    scales = tuple(float(c) for c in scales)
    with jax.ensure_compile_time_eval():  # concrete values even inside an outer trace
        try:
            out = _scaled_values(loss, w, scales)
        except TypeError:  # an unhashable loss cannot key the jit cache: evaluate eagerly
            out = _scaled_values.__wrapped__(loss, w, scales)
    # On the host: a few eager jnp ops would cost more than the compiled evaluation itself.
    base, vals = (np.asarray(x, dtype=np.float64) for x in jax.device_get(out))
    rel = np.abs(vals - base) / (np.abs(base) + floor)
    return float(np.max(rel))


@functools.partial(jax.jit, static_argnames=("loss", "scales"))
def _scaled_values(loss, w, scales):
    """``(L(w), [L(c w) for c in scales])`` in one compiled call (cached per loss object, so the
    check costs one dispatch, not a string of eager evaluations)."""
    at = lambda c: loss(jax.tree_util.tree_map(lambda x: x * c.astype(x.dtype), w))
    return loss(w), jax.vmap(at)(jnp.asarray(scales))
