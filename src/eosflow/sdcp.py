"""The semidefinite complementarity problem (SDCP) of the central flow, for small ``k``.

The central flow (Cohen, Damian, Talwalkar, Kolter, Lee, ICLR 2025, Section 3; THEORY.md "Beyond
the paper") needs, at each instant, the covariance ``X`` (``k × k``, in the top-``k`` eigenbasis of
the Hessian) of the oscillation. With the constraint's slack ``S = A(X) + b`` (``S`` is the
predicted ``2u − VᵀHV``, i.e. ``2/η̃ − λ_i`` on the diagonal) it solves::

    X ⪰ 0,    S = A(X) + b ⪰ 0,    ⟨X, S⟩ = 0                                  (SDCP)

``A`` is a linear map on symmetric ``k × k`` matrices, ``b`` a symmetric matrix. When ``A`` is
symmetric and positive definite (the central flow of plain GD: ``A = ½ dt·Gram(∇H[v_i, v_j])``)
this is the KKT system of the convex QP ``min_{X ⪰ 0} ½⟨X, A(X)⟩ + ⟨b, X⟩``. When only the
symmetric part of ``A`` is positive definite (a strongly monotone ``A``, e.g. the sphere form
where ``u' `` depends on ``⟨Σ, H²⟩``: :mod:`eosflow.sphere_sdcp`) it is a strongly monotone
variational inequality on the PSD cone; in both cases the solution exists and is unique.

Coordinates: ``svec`` is the isometric half-vectorization (upper triangle, row by row, off-diagonal
entries times ``√2``), so ``⟨X, Y⟩ = svec(X)·svec(Y)``; an operator is a ``(p, p)`` matrix,
``p = k(k+1)/2``.

Method (:func:`solve_sdcp`): a squared smoothing Newton method (Qi, Sun & Sun, Math. Program.
2000; Sun, Sun & Qi, SIAM J. Optim. 2003) on Robinson's *normal map*. Write ``Z = X − S``, so
that ``X = Π(Z)`` and ``S = Π(−Z)`` (``Π`` = projection on the PSD cone); the SDCP is the
nonsmooth equation ``F_0(Z) = A(Π(Z)) − Π(−Z) + b = 0``. Replace ``Π`` by the CHKS smoothing
``Φ_ε(Z) = Q diag((λ + √(λ² + 4ε²))/2) Qᵀ``; ``Φ_ε(Z) − Φ_ε(−Z) = Z`` and
``Φ_ε(Z) Φ_ε(−Z) = ε² I``, so ``F_ε(Z) = 0`` is the interior-point central path
``XS = ε²I, S = A(X) + b``. Newton steps on ``E(ε, Z) = (ε, F_ε(Z))`` drive ``ε`` and ``F_ε``
to 0 together, with a backtracking line search on ``‖E‖²`` (all trial steps ``2^-j`` evaluated at
once). The Jacobians ``(A − I)D + I`` (``D = Q (Ω ∘ Qᵀ·Q) Qᵀ``, ``Ω`` the divided differences of
the smoothing, entries in ``[0, 1]``) are nonsingular whenever ``A``'s symmetric part is positive
definite (``⟨Dh, (I−D)h⟩ ≥ 0`` and ``⟨Dh, A Dh⟩ > 0`` force ``h = 0``), which gives global
convergence and a quadratic final rate. Everything runs in a ``lax.while_loop`` with a fixed
maximum iteration count: jit-able, vmap-able, usable in ``scan``. Start: the better (smaller
``‖F_0‖``) of ``Z = −b`` (exact when ``b ⪰ 0``: ``X = 0``) and the unconstrained ``Z = −A⁻¹b``
(exact when it is PSD: all constraints active); 0 iterations then. ``k = 1`` is the closed form
``x = max(0, −b/a)``. The problem is rescaled internally by ``tr(A)/p`` (``X`` is unchanged by a
positive rescaling of ``A`` and ``b``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array

__all__ = [
    "SDCPResult",
    "solve_sdcp",
    "sdcp_diagonal",
    "svec",
    "smat",
    "operator_matrix",
    "psd_projection",
]


class SDCPResult(NamedTuple):
    """Solution and diagnostics of :func:`solve_sdcp`.

    Attributes:
      X: ``(k, k)`` the solution, PSD by construction (``Π`` of the Newton iterate).
      S: ``(k, k)`` the slack ``A(X) + b`` at that ``X`` (computed, not projected).
      residual: ``‖F(Z)‖_F`` of the rescaled normal map at the last iterate (the stopping test).
      complementarity: ``⟨X, S⟩`` (0 at the solution).
      min_eig_S: smallest eigenvalue of ``S`` (``≥ 0`` up to round-off when feasible).
      op_min_eig: smallest eigenvalue of the symmetric part of ``A`` (rescaled by ``tr(A)/p``);
        ``> 0`` is the condition under which the SDCP has a unique solution and Newton is safe.
      num_iter: Newton iterations taken (0 when a starting point already solves it).
      converged: ``residual <= tol · (1 + ‖b‖/scale)``.
    """

    X: Array
    S: Array
    residual: Array
    complementarity: Array
    min_eig_S: Array
    op_min_eig: Array
    num_iter: Array
    converged: Array


def _svec_basis(k: int) -> np.ndarray:
    """The constant ``(p, k²)`` matrix ``U`` with ``svec(X) = U vec(X)`` and, for symmetric ``X``,
    ``vec(X) = Uᵀ svec(X)`` (orthonormal rows; ``vec`` row-major)."""
    i, j = np.triu_indices(k)
    U = np.zeros((i.size, k * k))
    r = np.arange(i.size)
    off = i != j
    U[r, i * k + j] = np.where(off, np.sqrt(0.5), 1.0)
    U[r[off], j[off] * k + i[off]] = np.sqrt(0.5)
    return U


def svec(X: Array) -> Array:
    """Isometric half-vectorization of a symmetric ``(k, k)`` matrix: the upper triangle row by
    row, off-diagonal entries times ``√2`` (for symmetric ``X``; in general the upper entry is
    replaced by the mean of ``X_ij`` and ``X_ji``); ``svec(X)·svec(Y) = ⟨X, Y⟩``. Returns
    ``(k(k+1)/2,)``."""
    k = X.shape[-1]
    if X.ndim != 2 or X.shape[0] != k:
        raise ValueError(f"svec needs one square (k, k) matrix, got shape {X.shape}")
    return jnp.asarray(_svec_basis(k), X.dtype) @ X.reshape(-1)


def smat(x: Array) -> Array:
    """Inverse of :func:`svec`: the symmetric ``(k, k)`` matrix of a ``(k(k+1)/2,)`` vector."""
    if x.ndim != 1:
        raise ValueError(f"smat needs one vector of length k(k+1)/2, got shape {x.shape}")
    k = (math.isqrt(8 * x.shape[0] + 1) - 1) // 2
    if k * (k + 1) // 2 != x.shape[0]:
        raise ValueError(f"smat: length {x.shape[0]} is not k(k+1)/2 for any integer k")
    return (jnp.asarray(_svec_basis(k), x.dtype).T @ x).reshape(k, k)


def operator_matrix(A: Array | Callable[[Array], Array], k: int, dtype=None) -> Array:
    """The ``(p, p)`` matrix of a linear map on symmetric ``k × k`` matrices in the svec basis.

    ``A`` may be a callable ``X ↦ A(X)`` (symmetric ``(k, k)`` in and out; applied to the ``p``
    basis matrices), a ``(k, k, k, k)`` tensor with ``A(X)_ij = Σ_lm A[i, j, l, m] X_lm`` (the
    central-flows reference's layout), or already a ``(p, p)`` matrix (returned as is).
    """
    p = k * (k + 1) // 2
    if callable(A):
        dtype = jnp.result_type(float) if dtype is None else dtype
        basis = jax.vmap(smat)(jnp.eye(p, dtype=dtype))
        out = jax.vmap(A)(basis)
        if out.shape != (p, k, k):
            raise ValueError(f"the operator must map (k, k) to (k, k) with k={k}; got {out.shape}")
        return jax.vmap(svec)(out).T
    A = jnp.asarray(A, dtype)
    if A.shape == (k, k, k, k):
        return operator_matrix(lambda X: jnp.einsum("ijlm,lm->ij", A, X), k, A.dtype)
    if A.shape != (p, p):
        raise ValueError(
            f"operator for k={k} must be a callable, a ({k},{k},{k},{k}) tensor or a "
            f"({p},{p}) svec matrix; got shape {A.shape}"
        )
    return A


def psd_projection(Z: Array) -> Array:
    """``Π(Z)``: the Frobenius-nearest PSD matrix, ``Q diag(max(λ, 0)) Qᵀ`` (``eigh``)."""
    lam, Q = jnp.linalg.eigh(Z)
    return (Q * jnp.maximum(lam, 0.0)) @ Q.T


def _smooth_parts(Z: Array, eps: Array):
    """Eigen-data of the CHKS smoothing ``Φ_ε(Z) = Q diag(φ_ε(λ)) Qᵀ``, ``φ_ε(λ) = (λ + √(λ² +
    4ε²))/2`` (``Φ_0 = Π``): returns ``(Q, φ_ε(λ), φ_ε(−λ), ∂φ_ε/∂ε, Ω)`` with ``Ω`` the divided
    differences ``(φ(λ_i) − φ(λ_j))/(λ_i − λ_j)`` (``φ'`` on ties; ``1[λ > 0]`` at ``ε = 0``)."""
    lam, Q = jnp.linalg.eigh(Z)
    r = jnp.sqrt(jnp.square(lam) + 4.0 * jnp.square(eps))
    two_e2 = 2.0 * jnp.square(eps)
    safe = jnp.where(r > 0, r, 1.0)
    # φ(λ) and φ(−λ) = φ(λ) − λ, each in its cancellation-free form
    phi_p = jnp.where(lam > 0, 0.5 * (lam + r), two_e2 / jnp.where(r - lam > 0, r - lam, 1.0))
    phi_m = jnp.where(lam < 0, 0.5 * (r - lam), two_e2 / jnp.where(r + lam > 0, r + lam, 1.0))
    dphi_de = jnp.where(r > 0, 2.0 * eps / safe, 0.0)
    dphi = jnp.where(r > 0, 0.5 * (1.0 + lam / safe), (lam > 0).astype(Z.dtype))
    li, lj = lam[:, None], lam[None, :]
    gap = li - lj
    close = jnp.abs(gap) <= 1e-9 * (jnp.abs(li) + jnp.abs(lj) + eps)
    quot = (phi_p[:, None] - phi_p[None, :]) / jnp.where(close, 1.0, gap)
    omega = jnp.where(close, 0.5 * (dphi[:, None] + dphi[None, :]), quot)
    return Q, phi_p, phi_m, dphi_de, omega


def _congruence_matrix(Q: Array, omega: Array) -> Array:
    """``(p, p)`` svec matrix of ``H ↦ Q (Ω ∘ QᵀHQ) Qᵀ`` (the Jacobian of ``Φ_ε``):
    ``U (Q⊗Q) diag(vec Ω) (Q⊗Q)ᵀ Uᵀ`` with ``U`` the svec basis."""
    U = jnp.asarray(_svec_basis(Q.shape[0]), Q.dtype)
    W = U @ jnp.kron(Q, Q)
    return (W * omega.reshape(-1)) @ W.T


def sdcp_diagonal(a: Array, b: Array) -> Array:
    """Closed form when ``A`` acts diagonally and ``b`` is diagonal: ``A(X) = W ∘ X`` (a diagonal
    svec matrix, ``W_ii = a_i > 0``) and ``b = diag(b_i)``. The SDCP splits into ``k`` scalar
    problems and ``X = diag(max(0, −b_i/a_i))`` (then ``S = diag(max(b_i, 0))``, ``XS = 0``).

    Args: ``a``, ``b``: ``(k,)``. Returns the ``(k, k)`` diagonal ``X``.
    """
    a, b = jnp.asarray(a), jnp.asarray(b)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"sdcp_diagonal needs a and b of one shape (k,); got {a.shape}, {b.shape}")
    return jnp.diag(jnp.maximum(0.0, -b / a))


def _newton(M: Array, bv: Array, max_iter: int, tol: Array, n_search: int):
    """Squared smoothing Newton (Qi, Sun & Sun 2000; Sun, Sun & Qi 2003) on
    ``E(ε, z) = (ε, F_ε(z))``, ``F_ε(z) = M svec(Φ_ε(Z)) − svec(Φ_ε(−Z)) + bv`` (module doc);
    stops when ``‖E‖ <= tol``. Returns ``(z, iterations)``."""
    p = bv.shape[0]
    eye = jnp.eye(p, dtype=bv.dtype)
    gamma, sigma = 0.2, 1e-4  # ε̄ = 1 (the problem is rescaled), γ ε̄ < 1

    def F(eps, z):
        Q, phi_p, phi_m, dphi_de, omega = _smooth_parts(smat(z), eps)
        val = M @ svec((Q * phi_p) @ Q.T) - svec((Q * phi_m) @ Q.T) + bv
        return val, (Q, dphi_de, omega)

    def psi(eps, z):
        return jnp.square(eps) + jnp.sum(jnp.square(F(eps, z)[0]))

    zero = jnp.zeros((), bv.dtype)
    cands = jnp.stack([-bv, -jnp.linalg.solve(M, bv)])
    psis0 = jax.vmap(psi, (None, 0))(zero, cands)
    z0, psi0 = cands[jnp.argmin(psis0)], jnp.min(psis0)
    ts = 0.5 ** jnp.arange(n_search, dtype=bv.dtype)

    def cond(c):
        it, _, _, ps = c
        return (it < max_iter) & (ps > tol**2)

    def body(c):
        it, eps, z, ps = c
        val, (Q, dphi_de, omega) = F(eps, z)
        J = (M - eye) @ _congruence_matrix(Q, omega) + eye
        d_eps = -eps + gamma * jnp.minimum(1.0, ps)
        rhs = val + d_eps * ((M - eye) @ svec((Q * dphi_de) @ Q.T))
        d_z = -jnp.linalg.solve(J, rhs)
        trial_e = eps + ts * d_eps
        trial_z = z[None, :] + ts[:, None] * d_z[None, :]
        psis = jax.vmap(psi)(trial_e, trial_z)
        ok = psis <= (1.0 - 2.0 * sigma * (1.0 - gamma) * ts) * ps
        idx = jnp.where(jnp.any(ok), jnp.argmax(ok), jnp.argmin(psis))
        better = psis[idx] < ps
        eps, z = jnp.where(better, trial_e[idx], eps), jnp.where(better, trial_z[idx], z)
        # no decrease at any trial step: stop (reported through `converged`)
        it = jnp.where(better, it + 1, max_iter)
        return it, eps, z, jnp.where(better, psis[idx], ps)

    # ε starts at ε̄ = 1 unless a starting point already solves the problem
    eps0 = jnp.where(psi0 > tol**2, 1.0, 0.0).astype(bv.dtype)
    it, _, z, _ = lax.while_loop(cond, body, (jnp.asarray(0), eps0, z0, psi(eps0, z0)))
    return z, it


def solve_sdcp(
    A: Array | Callable[[Array], Array],
    b: Array,
    *,
    max_iter: int = 50,
    tol: float = 1e-13,
    n_search: int = 30,
) -> SDCPResult:
    """Solve the SDCP ``X ⪰ 0, A(X) + b ⪰ 0, ⟨X, A(X) + b⟩ = 0`` (central flow, Cohen et al.
    2025, Section 3; THEORY.md "Beyond the paper") for small ``k`` (``≤ ~8``).

    Method: squared smoothing Newton on the normal map (module docstring); ``k = 1``
    is the exact closed form ``max(0, −b/a)``.

    Args:
      A: the linear map on symmetric ``k × k`` matrices: a callable, a ``(k, k, k, k)`` tensor or
        its ``(p, p)`` svec matrix (:func:`operator_matrix`); its symmetric part should be
        positive definite (reported as ``op_min_eig``).
      b: ``(k, k)`` symmetric (only its symmetric part ``(b + bᵀ)/2`` is used).
      max_iter: Newton iterations at most. tol: stop when ``‖F‖ <= tol·(1 + ‖b‖/scale)``.
      n_search: trial step sizes ``1, ½, …, 2^-(n_search−1)`` of the line search.

    Returns:
      :class:`SDCPResult` ``(X, S, residual, complementarity, min_eig_S, op_min_eig, num_iter,
      converged)``. Jit-able and vmap-able (``lax.while_loop``; shapes static).
    """
    b = jnp.asarray(b)
    if b.ndim != 2 or b.shape[0] != b.shape[1]:
        raise ValueError(f"b must be one symmetric (k, k) matrix (vmap for a batch); got {b.shape}")
    k = b.shape[0]
    if k == 0:
        raise ValueError("b is 0 × 0: the SDCP needs k >= 1")
    if not jnp.issubdtype(b.dtype, jnp.floating):
        b = b.astype(jnp.result_type(float))
    M = operator_matrix(A, k, b.dtype).astype(b.dtype)
    return _solve(M, b, jnp.asarray(tol, b.dtype), max_iter=max_iter, n_search=n_search)


@partial(jax.jit, static_argnames=("max_iter", "n_search"))
def _solve(M: Array, b: Array, tol: Array, *, max_iter: int, n_search: int) -> SDCPResult:
    """:func:`solve_sdcp` on the svec matrix ``M``; compiled once per ``k`` and dtype."""
    k = b.shape[0]
    b = 0.5 * (b + b.T)
    p = k * (k + 1) // 2
    scale = jnp.trace(M) / p
    Ms, bv = M / scale, svec(b) / scale
    op_min = jnp.linalg.eigvalsh(0.5 * (Ms + Ms.T))[0]
    thresh = tol * (1.0 + jnp.linalg.norm(bv))
    if k == 1:
        X = jnp.maximum(0.0, -b / M[0, 0]).reshape(1, 1)
        res, it = jnp.zeros((), b.dtype), jnp.asarray(0)
    else:
        z, it = _newton(Ms, bv, max_iter, thresh, n_search)
        Z = smat(z)
        X = psd_projection(Z)
        res = jnp.linalg.norm(Ms @ svec(X) - svec(psd_projection(-Z)) + bv)
    S = smat(M @ svec(X)) + b
    min_eig_S = jnp.linalg.eigvalsh(S)[0]
    return SDCPResult(X, S, res, jnp.sum(X * S), min_eig_S, op_min, it, res <= thresh)
