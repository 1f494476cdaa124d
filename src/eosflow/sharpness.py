"""Spherical sharpness (Definition 1.1): top Hessian eigenpairs of a loss, from HVPs.

Spherical sharpness at ``w`` is ``λ1(∇²L(θ))`` at ``θ = w/||w||``: the largest *algebraic*
eigenvalue of the Hessian (:mod:`eosflow.eigensolvers` says why that needs care and how
Lanczos and power iteration find it). :func:`hessian_top_eigs` gives the top eigenpairs of
``∇²L(w)`` at ``w`` itself, :func:`spherical_sharpness` at ``θ``; :func:`dense_hessian` and
:func:`dense_top_eigs` (``jax.hessian`` + ``eigh``) are the reference for small ``D``.
:func:`eosflow.sharpness_along` (:mod:`eosflow.sharpness_path`) evaluates it at every recorded
point of a trajectory or a sweep in one compiled call.

Compilation. Called eagerly (concrete arguments), these functions run a module-level
``jax.jit`` whose static arguments are the loss and the options (:mod:`eosflow.compile_once`):
they compile once per (loss, argument shapes/dtypes/pytree structure, options) and later calls
reuse the program, so keep the same loss object. Data the loss captures is fixed into the
program at its first call, as in :func:`eosflow.simulate`. Under a trace (inside the caller's
``jit``/``vmap``/``grad``) and for an unhashable loss they run as plain code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from eosflow.compile_once import dispatch, static_number
from eosflow.eigensolvers import (
    EigResult,
    default_v0,
    hvp,
    lanczos,
    lanczos_top_eigs,
    power_iteration,
)
from eosflow.losses.base import global_norm
from eosflow.params import flatten_loss

Array = jax.Array

__all__ = [
    "Sharpness",
    "hessian_top_eigs",
    "spherical_sharpness",
    "dense_hessian",
    "dense_top_eigs",
    # re-exported from eosflow.eigensolvers (the operator-level methods):
    "EigResult",
    "hvp",
    "default_v0",
    "power_iteration",
    "lanczos",
    "lanczos_top_eigs",
]


class Sharpness(NamedTuple):
    """Spherical sharpness at a point: ``value = λ1(∇²L(θ))``, its unit eigenvector ``vector``
    (flat, ``(D,)``) and the HVPs used."""

    value: Array
    vector: Array
    num_hvps: Array


# ----------------------------------------------------------------------------- Hessians of a loss


def _loss_matvec(loss: Callable, w, normalize: bool):
    f, flat, _ = flatten_loss(loss, w)
    if normalize:
        flat = flat / jnp.linalg.norm(flat)
    return (lambda v: hvp(f, flat, v)), flat


_METHOD_TOL = {"lanczos": 1e-10, "power": 1e-7}


def _eig_static(loss, k, method, tol, num_iter, max_iter) -> dict:
    """Checked static options of :func:`hessian_top_eigs` (``tol`` resolved per method)."""
    if method not in _METHOD_TOL:
        raise ValueError(f"hessian_top_eigs: unknown method {method!r}; use 'lanczos' or 'power'")
    if method == "power" and k != 1:
        raise ValueError("hessian_top_eigs: method='power' computes only k=1")
    tol = _METHOD_TOL[method] if tol is None else tol
    return dict(
        loss=loss,
        k=int(k),
        method=method,
        tol=static_number(tol, float),
        num_iter=int(num_iter),
        max_iter=static_number(max_iter, int),
    )


def _hessian_top_eigs(w, v0, *, loss, k, method, tol, num_iter, max_iter) -> EigResult:
    matvec, flat = _loss_matvec(loss, w, normalize=False)
    v0 = default_v0(flat.shape[0], flat.dtype) if v0 is None else v0
    if method == "lanczos":
        return lanczos_top_eigs(matvec, v0, k, tol=tol, num_iter=num_iter, max_restarts=50)
    return power_iteration(matvec, v0, tol=tol, max_iter=max_iter)


_EIG_STATIC = ("loss", "k", "method", "tol", "num_iter", "max_iter")
_hessian_top_eigs_jit = jax.jit(_hessian_top_eigs, static_argnames=_EIG_STATIC)


def hessian_top_eigs(
    loss: Callable,
    w,
    k: int = 1,
    *,
    method: str = "lanczos",
    v0: Array | None = None,
    tol: float | None = None,
    num_iter: int = 30,
    max_iter: int = 2000,
) -> EigResult:
    """Top-``k`` algebraic eigenpairs of ``∇²L(w)`` at ``w`` itself (no normalization).

    Args:
      loss: plain callable; ``w`` may be an array or a pytree (flattened with ``ravel_pytree``;
        eigenvectors are flat).
      method: ``"lanczos"`` (default; any ``k``) or ``"power"`` (``k = 1`` only).
      v0: optional warm start ``(D,)``, e.g. the previous step's top eigenvector (default
        :func:`default_v0`).
      tol: residual tolerance relative to ``|λ1|`` (default ``1e-10`` for Lanczos, ``1e-7`` for power).
      num_iter: Krylov dimension per Lanczos cycle (at most 50 restarted cycles per eigenpair).
      max_iter: iteration cap of power iteration (per run; a shifted second run may follow).

    Eager calls compile once per (loss object, ``w``'s shapes/dtypes/structure, whether ``v0`` is
    given, ``k`` and the options) and reuse the program (module docstring).

    Returns:
      an :class:`EigResult`.
    """
    static = _eig_static(loss, k, method, tol, num_iter, max_iter)
    return dispatch(_hessian_top_eigs, _hessian_top_eigs_jit, (w, v0), static)


def _spherical_sharpness(w, v0, *, loss, k, method, tol, num_iter, max_iter) -> Sharpness:
    n = global_norm(w)
    theta = jax.tree_util.tree_map(lambda x: x / n, w)
    r = _hessian_top_eigs(
        theta, v0, loss=loss, k=k, method=method, tol=tol, num_iter=num_iter, max_iter=max_iter
    )
    return Sharpness(r.eigenvalues[0], r.eigenvectors[0], r.num_hvps)


_spherical_sharpness_jit = jax.jit(_spherical_sharpness, static_argnames=_EIG_STATIC)
_SPHERICAL_OPTIONS = ("method", "v0", "tol", "num_iter", "max_iter")


def spherical_sharpness(loss: Callable, w, **kwargs) -> Sharpness:
    """Spherical sharpness (Definition 1.1): ``λ1(∇²L(θ))`` at ``θ = w/||w||``.

    ``λ1`` is the algebraically largest eigenvalue (not the one of largest magnitude) of the
    Hessian of ``loss`` at the unit vector ``θ`` (``w`` an array or a pytree, normalized by the
    norm of all its leaves together). Keyword arguments are passed to :func:`hessian_top_eigs`:
    ``method`` (``"lanczos"``, default, or ``"power"``), ``v0`` (warm start, flat ``(D,)``),
    ``tol`` (relative residual, default ``1e-10`` / ``1e-7``), ``num_iter``, ``max_iter``.
    By the scale identity ``∇²L(cw) = ∇²L(w)/c²`` this equals ``||w||² λ1(∇²L(w))``.

    Eager calls compile once per (loss object, ``w``'s shapes/dtypes/structure, options) and
    reuse the program (module docstring); inside the caller's ``jit``/``vmap`` it is plain code.

    Returns:
      a :class:`Sharpness` ``(value, vector, num_hvps)``; ``vector`` is flat (``ravel_pytree``
      order for a pytree ``w``).
    """
    unknown = sorted(set(kwargs) - set(_SPHERICAL_OPTIONS))
    if unknown:
        raise TypeError(
            f"spherical_sharpness: unexpected keyword argument(s) {unknown}; "
            f"options: {', '.join(_SPHERICAL_OPTIONS)}"
        )
    v0 = kwargs.get("v0")
    static = _eig_static(
        loss,
        1,
        kwargs.get("method", "lanczos"),
        kwargs.get("tol"),
        kwargs.get("num_iter", 30),
        kwargs.get("max_iter", 2000),
    )
    return dispatch(_spherical_sharpness, _spherical_sharpness_jit, (w, v0), static)


def _dense_hessian(w, *, loss) -> Array:
    f, flat, _ = flatten_loss(loss, w)
    return jax.hessian(f)(flat)


_dense_hessian_jit = jax.jit(_dense_hessian, static_argnames=("loss",))


def dense_hessian(loss: Callable, w) -> Array:
    """The dense ``(D, D)`` Hessian by ``jax.hessian`` on the flattened parameters (reference).

    Eager calls compile once per (loss object, ``w``'s shapes/dtypes/structure)."""
    return dispatch(_dense_hessian, _dense_hessian_jit, (w,), dict(loss=loss))


def _dense_top_eigs(w, *, loss, k) -> tuple[Array, Array]:
    evals, evecs = jnp.linalg.eigh(_dense_hessian(w, loss=loss))
    return evals[::-1][:k], evecs[:, ::-1][:, :k].T


_dense_top_eigs_jit = jax.jit(_dense_top_eigs, static_argnames=("loss", "k"))


def dense_top_eigs(loss: Callable, w, k: int = 1) -> tuple[Array, Array]:
    """Reference: top-``k`` eigenpairs of the dense Hessian by ``eigh`` (small ``D`` only).

    Eager calls compile once per (loss object, ``w``'s shapes/dtypes/structure, ``k``).

    Returns ``(eigenvalues (k,) descending, eigenvectors (k, D))``.
    """
    return dispatch(_dense_top_eigs, _dense_top_eigs_jit, (w,), dict(loss=loss, k=int(k)))
