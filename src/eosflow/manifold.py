"""The minimizer manifold Γ on the unit sphere: projection Φ, tangent spaces, ∇_Γ log λ1.

Setting (Section 4.2, Assumptions 4.5–4.6): Γ is a smooth manifold of local minimizers of a
scale-invariant ``L`` on the sphere with ``rank ∇²L(θ) = D − D_Γ`` on Γ, so that the tangent space is
``T_θΓ = null(∇²L(θ)) ∩ θ^⊥`` and the normal space (within the sphere) is ``range(∇²L(θ))``.

Two backends compute the local geometry, chosen automatically:

* **residual fast path** (the loss is a :class:`~eosflow.losses.ResidualLoss`,
  ``L = mean_i r_i²``): on Γ the residuals vanish, so ``∇²L = (2/n) JᵀJ`` with ``J = ∂r/∂θ``
  (``n × D``, by ``jax.jacrev``). One thin SVD ``J = U S Vᵀ`` gives ``λ1 = 2 s_1²/n``, ``v1`` = the top
  right singular vector, and the normal space = span of the right singular vectors with
  ``s_i > rank_rtol · s_1``. The projection Φ uses Gauss–Newton minimum-norm steps
  ``θ ← Π(θ − J⁺ r)``, which converge quadratically to residuals ~1e-15.
* **generic path** (any plain callable): the dense Hessian (``jax.hessian``) and ``eigh``; normal
  space = eigenvectors with ``λ_i > rank_rtol · λ1``; Φ uses damped Newton minimum-norm steps
  ``θ ← Π(θ − H⁺ ∇L(θ))`` with ``H⁺`` truncated at the same threshold. Cost ``O(D³)`` per call: meant
  for ``D`` up to a few thousand.

The rank threshold ``rank_rtol`` (default 1e-6, relative; on the singular values of ``J`` for the
fast path, i.e. 1e-12 on Hessian eigenvalues, and 1e-8 on Hessian eigenvalues for the generic
path) decides which directions are flat. No rank is assumed: linear regression with BN has Hessian
rank ``n − 2`` on Γ, not ``n``.

Our Φ is the limit of minimum-norm (Gauss–)Newton steps, not of gradient flow: both land on Γ and
agree to first order in the distance (the min-norm step is orthogonal to the tangent space), which
is what the paper's ``φ_t`` needs (Section 4.2.3: ``x_t = θ_t − φ_t`` approximately normal to Γ).

``∇λ1`` is computed by Hellmann–Feynman, ``∇λ1(θ) = ∇_θ (v1ᵀ ∇²L(θ) v1)`` with ``v1`` held fixed
(a third derivative, by autodiff), valid where ``λ1`` is simple (Assumption 4.6).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
from jax import lax

from eosflow.losses.base import residual_fn
from eosflow.precision import warn_if_low_precision
from eosflow.sharpness import hvp

Array = jax.Array

__all__ = [
    "Geometry",
    "Projection",
    "local_geometry",
    "project_to_manifold",
    "project_tangent",
    "grad_gamma",
    "grad_sharpness",
    "grad_log_sharpness",
    "riemannian_grad_norm",
]

DEFAULT_RANK_RTOL = {"residual": 1e-6, "generic": 1e-8}


class Geometry(NamedTuple):
    """Local second-order geometry of ``L`` at a point ``θ`` of Γ.

    Attributes:
      sharpness: ``λ1(∇²L(θ))``.
      lambda2: ``λ2`` (for the eigengap of Assumption 4.6).
      v1: ``(D,)`` unit top eigenvector.
      normal: ``(D, K)`` orthonormal columns spanning a superset of the normal space; only columns
        with ``mask`` set are used.
      mask: ``(K,)`` bool, which columns of ``normal`` are above the rank threshold.
      rank: number of normal directions (``= rank ∇²L(θ)``).
    """

    sharpness: Array
    lambda2: Array
    v1: Array
    normal: Array
    mask: Array
    rank: Array


class Projection(NamedTuple):
    """Result of :func:`project_to_manifold`: the point ``Φ(θ)``, ``L`` there, the norm of the
    (sphere) gradient there, and the iterations used."""

    point: Array
    loss: Array
    grad_norm: Array
    num_iter: Array  # total (Gauss–)Newton steps


def _unit(v: Array) -> Array:
    return v / jnp.linalg.norm(v)


def _is_residual(loss: Callable, method: str) -> bool:
    if method == "auto":
        return residual_fn(loss) is not None
    if method == "residual":
        if residual_fn(loss) is None:
            raise TypeError(
                "method='residual' needs a ResidualLoss (a loss that carries its residuals); "
                "use method='generic' for a plain callable"
            )
        return True
    if method == "generic":
        return False
    raise ValueError(f"unknown method {method!r}; use 'auto', 'residual' or 'generic'")


def local_geometry(
    loss: Callable, theta: Array, *, method: str = "auto", rank_rtol: float | None = None
) -> Geometry:
    """Top eigenpair, ``λ2`` and the normal space of ``∇²L`` at ``θ`` (assumed on Γ).

    Uses the residual fast path (SVD of the Jacobian, ``∇²L = (2/n)JᵀJ`` on Γ) when ``loss`` is a
    ``ResidualLoss`` and ``method='auto'``, else the dense Hessian. See the module docstring.
    """
    theta = jnp.asarray(theta)
    warn_if_low_precision("local_geometry", theta.dtype)
    if _is_residual(loss, method):
        rtol = DEFAULT_RANK_RTOL["residual"] if rank_rtol is None else rank_rtol
        r = residual_fn(loss)
        J = jax.jacrev(r)(theta)
        n = J.shape[0]
        _, s, Vt = jnp.linalg.svd(J, full_matrices=False)
        lam = 2.0 * jnp.square(s) / n
        mask = s > rtol * s[0]
        lam2 = lam[1] if lam.shape[0] > 1 else jnp.zeros_like(lam[0])
        return Geometry(lam[0], lam2, Vt[0], Vt.T, mask, jnp.sum(mask))
    rtol = DEFAULT_RANK_RTOL["generic"] if rank_rtol is None else rank_rtol
    H = jax.hessian(loss)(theta)
    evals, evecs = jnp.linalg.eigh(0.5 * (H + H.T))
    evals, evecs = evals[::-1], evecs[:, ::-1]
    mask = evals > rtol * evals[0]
    return Geometry(evals[0], evals[1], evecs[:, 0], evecs, mask, jnp.sum(mask))


def project_tangent(geom: Geometry, theta: Array, v: Array) -> Array:
    """Orthogonal projection of ``v`` onto ``T_θΓ = null(∇²L(θ)) ∩ θ^⊥``.

    ``theta`` and ``v`` are one flat ``(D,)`` vector each (checked: a batch of ``v`` would be
    flattened by ``vdot`` into a wrong answer; ``vmap`` the function instead)."""
    chex.assert_rank([theta, v], 1)
    chex.assert_equal_shape([theta, v, geom.normal[:, 0]])
    N = geom.normal * geom.mask[None, :]
    v = v - N @ (N.T @ v)
    return v - theta * jnp.vdot(theta, v)


def grad_sharpness(loss: Callable, theta: Array, v1: Array) -> Array:
    """Hellmann–Feynman: ``∇λ1(θ) = ∇_θ (v1ᵀ ∇²L(θ) v1)`` with ``v1`` fixed (third derivative)."""
    return jax.grad(lambda th: jnp.vdot(v1, hvp(loss, th, v1)))(theta)


def grad_log_sharpness(loss: Callable, theta: Array, geom: Geometry) -> Array:
    """``∇ log λ1(θ) = ∇λ1(θ) / λ1(θ)`` (Euclidean, not yet projected onto ``T_θΓ``)."""
    return grad_sharpness(loss, theta, geom.v1) / geom.sharpness


def grad_gamma(geom: Geometry, theta: Array, grad: Array) -> Array:
    """``∇_Γ R(θ)``: the Euclidean gradient ``∇R(θ)`` projected onto ``T_θΓ`` (Section 4.2.2)."""
    return project_tangent(geom, theta, grad)


def riemannian_grad_norm(loss: Callable, theta: Array) -> Array:
    """``||∇L(θ)||`` at a unit ``θ`` (for scale-invariant ``L`` the gradient is already tangent to
    the sphere)."""
    return jnp.linalg.norm(jax.grad(loss)(theta))


def _gauss_newton(r_fn: Callable, rtol: float):
    """``(err, step)`` of the residual path of :func:`project_to_manifold`: ``err`` is the RMS
    residual, ``step`` the Gauss–Newton minimum-norm step ``Π(θ − J⁺ r(θ))`` (``J⁺`` by SVD,
    relative cutoff ``rtol``), halved when the full step would raise the residual."""

    def err(th):
        r = r_fn(th)
        return jnp.sqrt(jnp.mean(jnp.square(r)))

    def step(th):
        r = r_fn(th)
        J = jax.jacrev(r_fn)(th)
        U, s, Vt = jnp.linalg.svd(J, full_matrices=False)
        inv = jnp.where(s > rtol * s[0], 1.0 / jnp.where(s > 0, s, 1.0), 0.0)
        delta = Vt.T @ (inv * (U.T @ r))
        cand = _unit(th - delta)
        # Guard: accept only if the residual does not grow (else half step).
        half = _unit(th - 0.5 * delta)
        return jnp.where(err(cand) <= err(th), cand, half)

    return err, step


def _damped_newton(loss: Callable, rtol: float):
    """``(err, step)`` of the generic path of :func:`project_to_manifold`: ``err = ||∇L(θ)||``,
    ``step`` the minimum-norm Newton step ``Π(θ − α H⁺ ∇L(θ))`` (eigh of the dense Hessian,
    cutoff ``rtol·max|λ|``) with ``α`` halved until ``||∇L||`` decreases (down to 1e-4)."""
    g_fn = jax.grad(loss)

    def err(th):
        return jnp.linalg.norm(g_fn(th))

    def step(th):
        g = g_fn(th)
        H = jax.hessian(loss)(th)
        evals, evecs = jnp.linalg.eigh(0.5 * (H + H.T))
        top = jnp.max(jnp.abs(evals))
        inv = jnp.where(evals > rtol * top, 1.0 / jnp.where(evals > 0, evals, 1.0), 0.0)
        delta = evecs @ (inv * (evecs.T @ g))
        e0 = err(th)

        def try_alpha(c):
            a, _ = c
            return a * 0.5, _unit(th - 0.5 * a * delta)

        def bad(c):
            a, cand = c
            return (err(cand) > e0) & (a > 1e-4)

        _, cand = lax.while_loop(bad, try_alpha, (jnp.ones((), th.dtype), _unit(th - delta)))
        return cand

    return err, step


def project_to_manifold(
    loss: Callable,
    theta: Array,
    *,
    method: str = "auto",
    max_iter: int = 30,
    tol: float | None = None,
    rank_rtol: float | None = None,
    orth_iter: int = 4,
) -> Projection:
    """Retract a point near Γ onto Γ and the unit sphere: ``Φ(θ)``.

    Residual fast path: Gauss–Newton minimum-norm steps ``θ ← Π(θ − J⁺ r(θ))`` (``J⁺`` by SVD with
    relative cutoff ``rank_rtol``), stopping when ``||r||/sqrt(n) <= tol`` (default: 1e3·eps, i.e.
    loss ~1e-25 in float64) or after ``max_iter`` steps. Generic path: damped Newton minimum-norm
    steps ``θ ← Π(θ − α H⁺ ∇L(θ))`` (eigh of the dense Hessian, cutoff ``rank_rtol`` relative to
    ``λ1``; ``α`` halved until ``||∇L||`` decreases), stopping when ``||∇L(θ)|| <= tol``.

    Gauss–Newton's minimum-norm step is orthogonal to ``T Γ`` up to ``O(dist²)``; the generic
    Newton step is not (off Γ the Hessian has ``O(dist)`` eigenvalues along Γ), so the generic path
    then runs ``orth_iter`` corrections ``p ← Φ(p + P_{T_pΓ}(θ − p))`` towards the orthogonal
    projection (fixed point: ``θ − p ⊥ T_pΓ``).

    Both converge quadratically from points in a neighbourhood of Γ; from far away they may land on
    another critical point — check ``loss`` and ``grad_norm`` of the result.

    Returns:
      a :class:`Projection` ``(point, loss, grad_norm, num_iter)``; jittable and vmappable.
    """
    theta = _unit(jnp.asarray(theta))
    warn_if_low_precision("project_to_manifold", theta.dtype)
    eps = jnp.finfo(theta.dtype).eps
    tol = float(1e3 * eps) if tol is None else tol
    if _is_residual(loss, method):
        rtol = DEFAULT_RANK_RTOL["residual"] if rank_rtol is None else rank_rtol
        err, step = _gauss_newton(residual_fn(loss), rtol)
    else:
        rtol = DEFAULT_RANK_RTOL["generic"] if rank_rtol is None else rank_rtol
        err, step = _damped_newton(loss, rtol)

    def cond(c):
        k, th, e = c
        return (k < max_iter) & (e > tol)

    def body(c):
        k, th, _ = c
        th = step(th)
        return k + 1, th, err(th)

    def descend(th):
        return lax.while_loop(cond, body, (jnp.asarray(0), th, err(th)))

    k, th, _ = descend(theta)
    if not _is_residual(loss, method):
        # Newton's truncated pseudo-inverse keeps the small O(dist) eigenvalues that the Hessian
        # has along Γ off the manifold, so it lands on Γ but not orthogonally. Correct to the
        # orthogonal projection: move along T_pΓ towards θ, retract, repeat (fixed point:
        # θ − p ⊥ T_pΓ). Converges linearly with rate O(curvature·dist).
        def correct(_, c):
            k, p = c
            geom = local_geometry(loss, p, method="generic", rank_rtol=rank_rtol)
            k2, p2, _ = descend(_unit(p + project_tangent(geom, p, theta - p)))
            return k + k2, p2

        k, th = lax.fori_loop(0, orth_iter, correct, (k, th))
    return Projection(th, loss(th), riemannian_grad_norm(loss, th), k)
