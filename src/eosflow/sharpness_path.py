"""Spherical sharpness along a trajectory or a sweep, in one compiled call: :func:`sharpness_along`.

Definition 1.1 at every recorded point: warm-started Lanczos (:mod:`eosflow.eigensolvers`) in
one ``lax.scan`` over the points, ``vmap``-ed over a sweep's configurations. The scan core,
:func:`eigs_along`, also serves the plain Hessian along a run (:func:`eosflow.optim.plain_top_eigs`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from eosflow.compile_once import dispatch, static_number
from eosflow.eigensolvers import default_v0, hvp, lanczos_top_eigs
from eosflow.params import flatten_loss

Array = jax.Array

__all__ = ["SharpnessAlong", "sharpness_along", "eigs_along"]


class SharpnessAlong(NamedTuple):
    """Spherical sharpness at the recorded points of a trajectory: :func:`sharpness_along`.

    Leading axes: ``(T',)`` for one trajectory, ``(B, T')`` for a sweep (``B`` configurations),
    with ``T' = ceil(T/every)`` the number of points taken.

    Attributes:
      index: ``(T',)`` int (NumPy): the record positions used, ``0, every, 2·every, ...``
        (rows of ``traj.w`` along its record axis).
      step: the step numbers ``traj.step[..., index]`` of those records (``(T',)`` or
        ``(B, T')``), or ``None`` when ``traj`` was a plain array.
      eigenvalues: ``(..., num)``: the top-``num`` eigenvalues of ``∇²L(θ)`` at ``θ = w/||w||``,
        algebraically largest first (Definition 1.1 for the first); NaN at a non-finite row.
      residuals: ``(..., num)`` Lanczos residual bounds ``||∇²L(θ) v − λ v||`` (NaN likewise).
      num_hvps: ``(...)`` Hessian-vector products used at each point (0 at a non-finite row).
      eigenvectors: ``(..., num, D)`` flat unit eigenvectors with ``vectors=True``, else ``None``.
    """

    index: np.ndarray
    step: Any
    eigenvalues: Array
    residuals: Array
    num_hvps: Array
    eigenvectors: Array | None

    @property
    def sharpness(self) -> Array:
        """``λ1(∇²L(θ))`` at each point: ``eigenvalues[..., 0]`` (``(T',)`` or ``(B, T')``)."""
        return self.eigenvalues[..., 0]


def _layout(w_like) -> tuple | None:
    """A hashable description of ``w_like`` (tree structure, leaf shapes and dtypes), or ``None``
    for a flat 1-D array (the loss then takes flat vectors directly)."""
    if w_like is None:
        return None
    leaves, treedef = jax.tree_util.tree_flatten(w_like)
    if treedef.num_leaves == 1 and treedef.num_nodes == 1 and np.ndim(leaves[0]) == 1:
        return None
    avals = tuple((tuple(np.shape(x)), jnp.result_type(x).name) for x in leaves)
    return treedef, avals


def _flat_loss(loss, layout):
    """``f(flat) = loss(unravel(flat))`` for the pytree layout ``layout`` (``loss`` if ``None``)."""
    if layout is None:
        return loss
    treedef, avals = layout
    like = jax.tree_util.tree_unflatten(treedef, [jnp.zeros(s, d) for s, d in avals])
    return flatten_loss(loss, like)[0]


def _sharpness_along(ws, v0, *, loss, layout, num, lanczos_iter, tol, max_restarts, vectors):
    return eigs_along(_flat_loss(loss, layout), ws, v0, spherical=True, num=num,
                      lanczos_iter=lanczos_iter, tol=tol, max_restarts=max_restarts,
                      vectors=vectors)  # fmt: skip


def eigs_along(f, ws, v0, *, spherical, num, lanczos_iter, tol, max_restarts, vectors):
    """Top-``num`` eigenpairs of ``∇²f`` along ``ws`` ``(T, D)`` or ``(B, T, D)``, at
    ``θ = w/||w||`` (``spherical``) or at ``w``: one ``lax.scan`` over the points (``vmap``-ed
    over ``B``), Lanczos warm-started from the previous point's top eigenvector (``v0`` for the
    first, default :func:`eosflow.eigensolvers.default_v0`). A non-finite row gives NaN and 0
    HVPs and passes the warm start on. Plain code: the callers jit it. Returns ``(eigenvalues,
    residuals, num_hvps, eigenvectors or None)``."""
    D, dtype = ws.shape[-1], ws.dtype
    v0 = default_v0(D, dtype) if v0 is None else jnp.asarray(v0, dtype)
    int_dtype = jnp.asarray(0).dtype

    def point(v, w):
        finite = jnp.all(jnp.isfinite(w))

        def compute(v):
            point = w / jnp.linalg.norm(w) if spherical else w
            r = lanczos_top_eigs(lambda u: hvp(f, point, u), v, num, tol=tol,
                                 num_iter=lanczos_iter, max_restarts=max_restarts)  # fmt: skip
            return r.eigenvalues, r.eigenvectors, r.residuals, r.num_hvps.astype(int_dtype)

        def skip(v):
            nan = jnp.full((num,), jnp.nan, dtype)
            return nan, jnp.full((num, D), jnp.nan, dtype), nan, jnp.zeros((), int_dtype)

        lam, vecs, res, n = lax.cond(finite, compute, skip, v)
        # A non-finite row (or a finite one where the loss is not: NaN eigenvectors) passes the
        # previous start vector on to the next point.
        v_next = jnp.where(jnp.all(jnp.isfinite(vecs[0])), vecs[0], v)
        return v_next, (lam, res, n, vecs if vectors else None)

    def one(ws):
        return lax.scan(point, v0, ws)[1]

    lam, res, n, vecs = one(ws) if ws.ndim == 2 else jax.vmap(one)(ws)
    return lam, res, n, vecs


_ALONG_STATIC = ("loss", "layout", "num", "lanczos_iter", "tol", "max_restarts", "vectors")
_sharpness_along_jit = jax.jit(_sharpness_along, static_argnames=_ALONG_STATIC)


def _along_inputs(traj, w_like):
    """``(ws, step, w_like)`` from a trajectory-like object or a plain array (duck-typed)."""
    if hasattr(traj, "w") and hasattr(traj, "w_final"):
        ws, step = traj.w, getattr(traj, "step", None)
        if w_like is None:
            w_like = traj.w_final
            if np.ndim(ws) == 3:  # a sweep: w_final leaves carry the configuration axis
                w_like = jax.tree_util.tree_map(lambda x: x[0], w_like)
        return ws, step, w_like
    return traj, None, w_like


def sharpness_along(
    loss: Callable,
    traj,
    *,
    every: int = 1,
    num: int = 1,
    lanczos_iter: int = 20,
    tol: float = 1e-10,
    max_restarts: int = 50,
    v0: Array | None = None,
    w_like: Any = None,
    vectors: bool = False,
) -> SharpnessAlong:
    """Spherical sharpness (Definition 1.1) at the recorded points of a trajectory, in one call.

    At every ``every``-th record ``w_t`` this computes the top-``num`` eigenvalues of
    ``∇²L(θ_t)``, ``θ_t = w_t/||w_t||`` (descending; the first is the spherical sharpness
    ``λ1``), by restarted Lanczos (:func:`eosflow.eigensolvers.lanczos_top_eigs`: Krylov dimension ``lanczos_iter``,
    relative residual ``tol``, at most ``max_restarts`` cycles per eigenpair) warm-started from
    the previous point's top eigenvector — as :func:`eosflow.simulate` does with
    ``sharpness_every``, but after the run and at any points. The first point starts from ``v0``
    (flat ``(D,)``, shared by a sweep's configurations; default
    :func:`eosflow.eigensolvers.default_v0`). All points (and configurations) run in one compiled
    ``lax.scan`` (``vmap``-ed over a sweep's configurations); eager calls compile once per (loss
    object, shape/dtype of the points taken, ``w_like``'s structure, options) and reuse it.

    Args:
      loss: the loss; it takes parameters with the structure of ``w_like``.
      traj: one of
        * a :class:`~eosflow.Trajectory` (or anything with fields ``w``, flat ``(T, D)``, and
          ``w_final``, the structure of ``w0``): the flat rows are unraveled like ``w_final``
          for the loss (``eosflow.params.flatten_loss``); ``step`` gives the step numbers;
        * a :func:`eosflow.sweep` result: the same fields with a leading configuration axis,
          ``w`` ``(B, T, D)`` and ``w_final`` leaves ``(B, ...)``;
        * a plain array of flat parameters, ``(T, D)`` or ``(B, T, D)``: the loss must take flat
          vectors, or pass ``w_like``.
      every: take records ``0, every, 2·every, ...`` — it counts *records* (rows of ``traj.w``),
        not steps as ``simulate``'s ``sharpness_every`` does; the last record is taken only when
        ``(T − 1)`` is a multiple of ``every``.
      num: number of top eigenvalues per point (``1 <= num <= min(lanczos_iter, D)``).
      vectors: also return the eigenvectors ``(..., num, D)`` (memory: like ``w`` times ``num``).
      w_like: a parameter pytree whose structure, shapes and dtypes say how to unravel a flat row
        for ``loss`` (its values are not used); overrides the one taken from ``traj.w_final``.

    Rows with a NaN/Inf (a sweep's records after a configuration's non-finite step) give NaN
    eigenvalues and residuals, 0 HVPs, and do not disturb the warm start of later rows.

    Returns:
      a :class:`SharpnessAlong` (``.sharpness`` is ``λ1`` at each point).

    Example:
      >>> import jax.numpy as jnp, eosflow
      >>> loss = eosflow.toy3d()
      >>> traj = eosflow.simulate(loss, jnp.array([0.3, 0.5, 0.4]), lr=0.1, wd=0.01, steps=100)
      >>> s = eosflow.sharpness_along(loss, traj, every=10, lanczos_iter=3)
      >>> s.index.tolist()[:3], s.eigenvalues.shape
      ([0, 10, 20], (10, 1))
    """
    ws, step, w_like = _along_inputs(traj, w_like)
    for name, x in (("every", every), ("num", num), ("lanczos_iter", lanczos_iter)):
        if isinstance(x, bool) or not isinstance(x, int | np.integer) or x < 1:
            raise ValueError(f"sharpness_along: {name} must be an integer >= 1, got {x!r}")
    if not hasattr(ws, "shape") or len(ws.shape) not in (2, 3):
        raise ValueError(
            "sharpness_along: traj must be a Trajectory, a sweep result or an array of flat "
            f"parameters (T, D) or (B, T, D); got {type(traj).__name__} with w of shape "
            f"{getattr(ws, 'shape', None)}"
        )
    if not jnp.issubdtype(ws.dtype, jnp.floating):
        raise TypeError(f"sharpness_along: parameters must be floating-point, got {ws.dtype}")
    T, D = ws.shape[-2], ws.shape[-1]
    if D == 0:
        raise ValueError(
            "sharpness_along: the trajectory has no recorded parameters (D = 0; a sweep run "
            "with record_params=False?)"
        )
    layout = _layout(w_like)
    if layout is not None:
        size = sum(int(np.prod(s)) for s, _ in layout[1])
        if size != D:
            raise ValueError(
                f"sharpness_along: w_like has {size} parameters but the trajectory's rows have "
                f"D = {D}"
            )
    if num > min(lanczos_iter, D):
        raise ValueError(
            f"sharpness_along: need num <= min(lanczos_iter, D) = {min(lanczos_iter, D)}, "
            f"got num={num}"
        )
    index = np.arange(0, T, every)
    ws = ws[..., ::every, :]
    if step is not None:
        step = step[..., ::every]
    static = dict(
        loss=loss,
        layout=layout,
        num=int(num),
        lanczos_iter=int(lanczos_iter),
        tol=static_number(tol, float),
        max_restarts=int(max_restarts),
        vectors=bool(vectors),
    )
    out = dispatch(_sharpness_along, _sharpness_along_jit, (ws, v0), static)
    lam, res, n, vecs = out
    return SharpnessAlong(index, step, lam, res, n, vecs)
