"""The central flow's SDCP for the sphere form of GD+WD: how ``A`` and ``b`` are built.

THEORY.md ("Beyond the paper") applies the central flow (Cohen, Damian, Talwalkar, Kolter, Lee,
ICLR 2025, Section 3) to eq. (2) with ``u = 1/η̃`` and ``η_in = lr·wd``, in step time ``t``::

    θ' = −η̃ P_θ [∇L(θ) + ½ ∇_θ⟨Σ, ∇²L(θ)⟩]                      P_θ = I − θθᵀ
    u' = ((1−η_in)² − 1) u + (1−η_in)² η̃ (‖∇L(θ)‖² + ⟨Σ, ∇²L(θ)²⟩)
    Σ ⪰ 0 on the top eigenspace;  η̃ λ_i ≤ 2;  Σ and the slack complementary (an SDCP)

Notation here: ``V = [v_1 … v_k]`` orthonormal top eigenvectors of the (Euclidean) Hessian
``∇²L(θ)`` with eigenvalues ``λ_i``; ``Σ = V X Vᵀ`` with ``X`` ``k × k``;
``dH[i, j] = ∇_θ (v_iᵀ ∇²L(θ) v_j) = ∇³L(θ)[v_i, v_j, ·]`` (``V`` held fixed — Hellmann–Feynman
on the diagonal, the ``∇H[v_i, v_j]`` of the reference code off it); ``a = (1−η_in)² − 1``,
``c = (1−η_in)²``. Then ``½∇⟨Σ, ∇²L⟩ = ½ Σ_ij X_ij dH[i, j]`` and ``⟨Σ, H²⟩ = Σ_i λ_i² X_ii``.

The constraint ``η̃ λ_i ≤ 2`` on the ``k``-dimensional eigenspace is the matrix inequality
``S = 2u I − Vᵀ ∇²L(θ) V ⪰ 0`` (``= diag(2u − λ_i)`` at the current point; ``η̃ S`` is the
reference's ``2 − η̃λ``, a positive multiple, same ``X``). Along the flow, with ``V`` frozen,
``S' = 2u' I − [⟨dH[i, j], θ'⟩]_ij`` is affine in ``X``::

    S' = drift + R(X)
    drift_ij = 2 δ_ij (a u + c η̃ ‖∇L‖²) + η̃ ⟨P_θ dH[i, j], ∇L⟩
    R(X)_ij  = ½ η̃ Σ_lm ⟨P_θ dH[i, j], P_θ dH[l, m]⟩ X_lm  +  2 c η̃ δ_ij Σ_l λ_l² X_ll

The first part of ``R`` is a Gram operator (symmetric PSD; the projection ``P_θ`` removes the
radial part ``∇³L[θ, v_i, v_i] = −2λ_i`` of a scale-invariant loss); the second, from ``u'``, is
rank one and **not symmetric** unless the ``λ_l`` are equal (it is nearly symmetric on the active
block, where ``λ_l ≈ 2u``); its symmetric part is PSD on the PSD cone. The anchor's
semi-implicit step of length ``dt`` keeps the *predicted* slack feasible::

    X ⪰ 0,   S + dt (drift + R(X)) ⪰ 0,   complementary      →   A = dt R,  b = S + dt·drift

solved by :func:`eosflow.solve_sdcp`. With one eigenvalue at the edge on Γ (``∇L = 0``,
``u = λ1/2``) this gives ``σ² = −a/(4c + ‖P_θ ∇log λ1‖²) ≈ 2η_in/(4 + ‖∇log λ1‖²)``, THEORY.md's
limit (tested).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from eosflow.eigensolvers import hvp
from eosflow.sdcp import svec

Array = jax.Array

__all__ = [
    "SphereSDCP",
    "hessian_derivative_terms",
    "sdcp_operator",
    "sdcp_from_rates",
    "tangent_velocity",
    "central_velocity",
]


class SphereSDCP(NamedTuple):
    """The SDCP data of one semi-implicit central-flow substep on the sphere (module docstring).

    Attributes:
      A: ``(p, p)`` svec matrix of ``dt·R`` (``p = k(k+1)/2``), for :func:`eosflow.solve_sdcp`.
      b: ``(k, k)`` ``S + dt·drift``, the predicted slack at ``X = 0``.
      slack: ``(k, k)`` ``S = diag(2u − λ_i)``, the constraint's slack now.
      drift: ``(k, k)`` ``S'`` at ``X = 0``.
      rate: ``(p, p)`` svec matrix of ``R``, ``S' = drift + R(X)``.
    """

    A: Array
    b: Array
    slack: Array
    drift: Array
    rate: Array


def hessian_derivative_terms(loss: Callable[[Array], Array], theta: Array, V: Array) -> Array:
    """``dH[i, j] = ∇_θ (v_iᵀ ∇²L(θ) v_j)`` for the columns of ``V`` ``(D, k)``: one third-derivative
    (gradient of an HVP) per pair ``i ≤ j``, mirrored. Returns ``(k, k, D)``."""
    chex.assert_rank([theta, V], [1, 2])
    chex.assert_equal(V.shape[0], theta.shape[0])
    k = V.shape[1]
    i, j = jnp.triu_indices(k)
    pair = lambda a, b: jax.grad(lambda th: jnp.vdot(a, hvp(loss, th, b)))(theta)
    upper = jax.vmap(pair)(V.T[i], V.T[j])
    return jnp.zeros((k, k, theta.shape[0]), upper.dtype).at[i, j].set(upper).at[j, i].set(upper)


def _check(theta, grad, eigvals, dH):
    chex.assert_rank([theta, grad, eigvals, dH], [1, 1, 1, 3])
    chex.assert_equal_shape([theta, grad])
    k = eigvals.shape[0]
    if dH.shape != (k, k, theta.shape[0]):
        raise ValueError(
            f"dH must be (k, k, D) = ({k}, {k}, {theta.shape[0]}) for {k} eigenvalues and "
            f"theta of length {theta.shape[0]}; got {dH.shape}"
        )


def sdcp_operator(
    theta: Array,
    grad: Array,
    eigvals: Array,
    dH: Array,
    u: Array,
    eta_in: Array,
    dt: Array,
    *,
    edge: Array = 2.0,
) -> SphereSDCP:
    """``A`` and ``b`` of the central flow's SDCP for the sphere form of GD+WD (module docstring;
    THEORY.md "Beyond the paper"; Cohen et al. 2025, Section 3).

    Args:
      theta: ``(D,)`` unit vector. grad: ``(D,)`` ``∇L(θ)``. eigvals: ``(k,)`` top eigenvalues
        ``λ_i`` of ``∇²L(θ)``. dH: ``(k, k, D)`` from :func:`hessian_derivative_terms`.
      u: ``1/η̃``. eta_in: ``lr·wd``. dt: substep length in steps (``dt > 0``).
      edge: the constraint is ``η̃ λ_i ≤ edge``, i.e. ``S = edge·u − VᵀHV`` (the ``2`` of the
        module docstring becomes ``edge``). THEORY.md's is 2. GD+WD's exact linear stability
        threshold for the direction is ``(2 − η_in)/(1 − η_in) = 2 + η_in + O(η_in²)``: in
        ``w``-space the oscillation multiplier is ``1 − η_in − lr λ_w`` with ``λ_w = λ/‖w‖²`` and
        ``lr/‖w‖² = (1 − η_in) η̃`` (Lemma 3.1); on the sphere the same number comes from the
        normalization ``‖θ − η̃∇L‖ = 1/(1 − η_in)`` at a stationary ``u``.

    Returns:
      :class:`SphereSDCP` ``(A, b, slack, drift, rate)``; ``solve_sdcp(A, b).X`` is ``X``
      (``Σ = V X Vᵀ``) for :func:`central_velocity`.
    """
    _check(theta, grad, eigvals, dH)
    eta = 1.0 / u
    a, c = jnp.square(1.0 - eta_in) - 1.0, jnp.square(1.0 - eta_in)
    du0 = a * u + c * eta * jnp.vdot(grad, grad)
    return sdcp_from_rates(
        theta, grad, eigvals, dH, u, du0, c * eta * jnp.diag(jnp.square(eigvals)), dt, edge=edge
    )


def sdcp_from_rates(
    theta: Array,
    grad: Array,
    eigvals: Array,
    dH: Array,
    u: Array,
    du0: Array,
    du_rate: Array,
    dt: Array,
    *,
    edge: Array = 2.0,
    u_rate: Array | None = None,
) -> SphereSDCP:
    """The SDCP of one semi-implicit substep for any effective-LR rule whose ``u = 1/η̃`` moves
    at ``u' = du0 + ⟨du_rate, X⟩`` (affine in ``X``, to the flow's second order): GD+WD
    (:func:`sdcp_operator`), scalar RMSprop and Quasi-RMSprop (:mod:`eosflow.central`)::

        S' = edge·u'·I − [⟨dH[i, j], θ'⟩]_ij,    θ' = −η̃ P_θ [∇L + ½ Σ_lm X_lm dH[l, m]]

    A rule whose step size depends on the *current* gradient (RMSprop: ``η̃_t = η/√v_{t+1}``,
    ``v_{t+1}`` includes ``||∇L(θ_t)||²``) averages ``u`` over the oscillation too:
    ``E u = u + ⟨u_rate, X⟩``, so the slack itself is ``S = edge·E u − VᵀHV`` and ``X`` enters
    it without the factor ``dt``: ``A = dt·R + edge·svec(I) svec(u_rate)ᵀ``.

    Args: as :func:`sdcp_operator`, with ``du0`` (scalar) and ``du_rate`` ``(k, k)`` symmetric in
    place of ``eta_in``; ``u_rate`` ``(k, k)`` symmetric or ``None`` (0: GD+WD, whose ``η̃_t``
    is set before the step). Returns :class:`SphereSDCP` (``slack`` at ``X = 0``).
    """
    _check(theta, grad, eigvals, dH)
    k, D = eigvals.shape[0], theta.shape[0]
    eta = 1.0 / u
    PdH = dH - dH @ theta[:, None] * theta  # P_θ dH[i, j]
    eye = jnp.eye(k, dtype=theta.dtype)
    slack = jnp.diag(edge * u - eigvals)
    drift = edge * du0 * eye + eta * (PdH @ grad)
    T = jax.vmap(svec, in_axes=2, out_axes=1)(PdH.reshape(k, k, D))  # (p, D) rows f_ij P dH_ij
    rate = 0.5 * eta * T @ T.T + edge * jnp.outer(svec(eye), svec(du_rate))
    A = dt * rate
    if u_rate is not None:
        A = A + edge * jnp.outer(svec(eye), svec(u_rate))
    return SphereSDCP(A, slack + dt * drift, slack, drift, rate)


def tangent_velocity(theta: Array, grad: Array, dH: Array, X: Array, eta: Array) -> Array:
    """``θ' = −η̃ P_θ [∇L + ½ Σ_ij X_ij dH[i, j]]``: the central flow's velocity on the sphere
    (THEORY.md "Beyond the paper"), tangent at ``θ``."""
    force = grad + 0.5 * jnp.einsum("ij,ijd->d", X, dH)
    return -eta * (force - theta * jnp.vdot(theta, force))


def central_velocity(
    theta: Array,
    grad: Array,
    eigvals: Array,
    dH: Array,
    X: Array,
    u: Array,
    eta_in: Array,
) -> tuple[Array, Array]:
    """``(θ', u')`` of the sphere-form central flow for a given ``X`` (``Σ = V X Vᵀ``)::

        θ' = −η̃ P_θ [∇L + ½ Σ_ij X_ij dH[i, j]]
        u' = ((1−η_in)² − 1) u + (1−η_in)² η̃ (‖∇L‖² + Σ_i λ_i² X_ii)

    Same arguments as :func:`sdcp_operator`; ``X`` ``(k, k)`` symmetric. ``θ'`` is tangent to the
    sphere at ``θ``; an integrator should retract (normalize) after each step.
    """
    _check(theta, grad, eigvals, dH)
    chex.assert_shape(X, (eigvals.shape[0], eigvals.shape[0]))
    eta = 1.0 / u
    dtheta = tangent_velocity(theta, grad, dH, X, eta)
    avg_g2 = jnp.vdot(grad, grad) + jnp.sum(jnp.square(eigvals) * jnp.diag(X))
    c = jnp.square(1.0 - eta_in)
    du = (c - 1.0) * u + c * eta * avg_g2
    return dtheta, du
