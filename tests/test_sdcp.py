"""The central flow's SDCP solver (issue 14, item 3) against brute-force references.

References, each independent of the solver's Newton method: a long projected-gradient run on the
convex QP ``min_{X⪰0} ½⟨X, A X⟩ + ⟨b, X⟩`` (symmetric ``A``) or the projection method
``X ← Π(X − τ(A X + b))`` of the variational inequality (non-symmetric, strongly monotone ``A``),
both in numpy with a small fixed step until they stop moving; an exhaustive search over supports
(diagonal case); closed forms (``k = 1``; ``A = c·I`` gives ``X = Π(−b)/c``); planted solutions.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import eosflow
from eosflow.sdcp import operator_matrix, psd_projection, sdcp_diagonal, smat, solve_sdcp, svec

# KKT tolerances on well-conditioned instances (operator condition number <= 20, ‖b‖ ~ 1).
KKT_TOL = 1e-11
X_TOL = 1e-11


def _svec_np(X):
    k = X.shape[-1]
    i, j = np.triu_indices(k)
    return X[..., i, j] * np.where(i == j, 1.0, np.sqrt(2.0))


def _smat_np(x, k):
    i, j = np.triu_indices(k)
    v = x / np.where(i == j, 1.0, np.sqrt(2.0))
    X = np.zeros(x.shape[:-1] + (k, k))
    X[..., i, j] = v
    X[..., j, i] = v
    return X


def _proj_np(Z):
    lam, Q = np.linalg.eigh(Z)
    return (Q * np.maximum(lam, 0.0)[..., None, :]) @ np.swapaxes(Q, -1, -2)


def _projection_method(M, b, iters=4000):
    """Brute force, batched: ``X ← Π(X − τ(A X + b))`` with ``τ = μ/L²`` (``μ`` the smallest
    eigenvalue of the symmetric part, ``L = ‖A‖₂``) — a contraction for strongly monotone ``A``;
    for symmetric ``A`` use ``τ = 1/L`` (projected gradient on the QP)."""
    k = b.shape[-1]
    sym = np.allclose(M, np.swapaxes(M, -1, -2))
    mu = np.linalg.eigvalsh(0.5 * (M + np.swapaxes(M, -1, -2)))[:, 0]
    L = np.linalg.norm(M, ord=2, axis=(-2, -1))
    tau = (1.0 / L if sym else mu / L**2)[:, None]
    bv = _svec_np(b)
    x = np.zeros_like(bv)
    for _ in range(iters):
        grad = np.einsum("nij,nj->ni", M, x) + bv
        x = _svec_np(_proj_np(_smat_np(x - tau * grad, k)))
    return _smat_np(x, k)


def _instances(k, n, seed, cond=20.0, skew=0.0):
    """``n`` operators with symmetric part of condition number ``cond`` (plus a skew part of norm
    ``skew``), and symmetric ``b`` with N(0, 1) entries."""
    rng = np.random.default_rng(seed)
    p = k * (k + 1) // 2
    Ms, bs = [], []
    for _ in range(n):
        Q, _ = np.linalg.qr(rng.standard_normal((p, p)))
        M = (Q * np.geomspace(1.0, cond, p)) @ Q.T
        K = rng.standard_normal((p, p))
        M = M + skew * (K - K.T) / np.linalg.norm(K - K.T, 2)
        b = rng.standard_normal((k, k))
        Ms.append(M)
        bs.append(0.5 * (b + b.T))
    return np.array(Ms), np.array(bs)


_vmapped = jax.jit(jax.vmap(solve_sdcp))
BATCH = 12  # every batched call has this many instances: one compilation per k


def _batched(M, b):
    """``jit(vmap(solve_sdcp))`` on ``n <= BATCH`` instances, padded to ``BATCH``."""
    n = M.shape[0]
    pad = lambda x: jnp.concatenate([jnp.asarray(x)] + [jnp.asarray(x[:1])] * (BATCH - n))
    return jax.tree.map(lambda x: x[:n], _vmapped(pad(M), pad(b)))


def _hadamard_matrix(W):
    """svec matrix of ``X ↦ W ∘ X`` (diagonal in the svec basis)."""
    i, j = np.triu_indices(W.shape[0])
    return np.diag(W[i, j])


def _assert_kkt(r, scale=1.0):
    X = np.asarray(r.X)
    assert np.all(np.asarray(r.converged)), np.asarray(r.residual)
    assert np.all(np.asarray(r.residual) <= 1e-12)
    assert np.linalg.eigvalsh(X)[..., 0].min() >= -KKT_TOL * scale
    assert np.asarray(r.min_eig_S).min() >= -KKT_TOL * scale
    assert np.abs(np.asarray(r.complementarity)).max() <= KKT_TOL * scale
    assert np.asarray(r.op_min_eig).min() > 0


@pytest.mark.parametrize("k", [2, 3, 5])
def test_random_symmetric_instances_match_projected_gradient(k):
    M, b = _instances(k, 12, seed=k)
    r = _batched(jnp.asarray(M), jnp.asarray(b))
    _assert_kkt(r)
    ref = _projection_method(M, b)
    np.testing.assert_allclose(np.asarray(r.X), ref, rtol=0, atol=X_TOL)
    # the instances exercise every rank, not only X = 0 or full rank
    ranks = {int(np.sum(np.linalg.eigvalsh(X) > 1e-8)) for X in ref}
    assert len(ranks) >= 2, ranks


def test_nonsymmetric_monotone_operator_matches_projection_method():
    # the sphere form's operator is not symmetric (its u' term); the solver needs only a
    # positive definite symmetric part
    M, b = _instances(3, 12, seed=7, cond=4.0, skew=1.0)
    assert not np.allclose(M, np.swapaxes(M, -1, -2))
    r = _batched(jnp.asarray(M), jnp.asarray(b))
    _assert_kkt(r)
    ref = _projection_method(M, b, iters=6000)
    np.testing.assert_allclose(np.asarray(r.X), ref, rtol=0, atol=X_TOL)


def test_scalar_case_is_exact():
    for a, b in [(2.0, -3.0), (0.7, 1e-3), (5.0, 0.0), (1e-3, -1e3)]:
        r = solve_sdcp(jnp.array([[a]]), jnp.array([[b]]))
        assert float(r.X[0, 0]) == max(0.0, -b / a)  # bitwise
        assert int(r.num_iter) == 0 and bool(r.converged)
    # a callable operator and the (1, 1, 1, 1) tensor form give the same
    r = solve_sdcp(lambda X: 2.0 * X, jnp.array([[-3.0]]))
    assert float(r.X[0, 0]) == 1.5


def test_diagonal_operator_closed_form_and_support_search():
    rng = np.random.default_rng(3)
    k, n = 3, 8
    W = rng.uniform(0.5, 3.0, (n, k, k))
    W = 0.5 * (W + np.swapaxes(W, 1, 2))
    bd = rng.standard_normal((n, k))
    M = np.array([_hadamard_matrix(w) for w in W])
    r = _batched(M, np.array([np.diag(d) for d in bd]))
    _assert_kkt(r)
    for w, d, X in zip(W, bd, np.asarray(r.X), strict=True):
        closed = np.asarray(sdcp_diagonal(np.diag(w), d))
        np.testing.assert_allclose(X, closed, rtol=0, atol=1e-12)
        # exhaustive search over the support of diag(X): exactly one choice is feasible
        feasible = []
        for support in itertools.product([0, 1], repeat=k):
            x = np.where(support, -d / np.diag(w), 0.0)
            if np.all(x >= 0) and np.all(np.diag(w) * x + d >= 0):
                feasible.append(np.diag(x))
        assert len(feasible) == 1
        np.testing.assert_allclose(closed, feasible[0], rtol=0, atol=1e-15)


def test_identity_operator_gives_psd_projection():
    rng = np.random.default_rng(4)
    for k, c in [(3, 1.0), (5, 2.5)]:
        b = rng.standard_normal((6, k, k))
        b = 0.5 * (b + np.swapaxes(b, 1, 2))
        r = _batched(
            np.broadcast_to(c * np.eye(k * (k + 1) // 2), (6,) * 1 + (k * (k + 1) // 2,) * 2), b
        )
        _assert_kkt(r)
        np.testing.assert_allclose(np.asarray(r.X), _proj_np(-b) / c, rtol=0, atol=1e-12)
    # a callable operator (unbatched) gives the same
    r = solve_sdcp(lambda X: c * X, jnp.asarray(b[0]))
    np.testing.assert_allclose(np.asarray(r.X), _proj_np(-b[0]) / c, rtol=0, atol=1e-12)


def test_degenerate_cases():
    M, _ = _instances(3, 1, seed=11)
    M = jnp.asarray(M[0])
    rng = np.random.default_rng(11)
    G = rng.standard_normal((3, 3))
    # b ⪰ 0: X = 0, found at the start
    r = solve_sdcp(M, jnp.asarray(G @ G.T))
    assert float(jnp.max(jnp.abs(r.X))) == 0.0 and int(r.num_iter) == 0
    # all constraints active: X* ≻ 0 planted, b = −A(X*)
    Xs = G @ G.T + 0.1 * np.eye(3)
    b = -smat(M @ svec(jnp.asarray(Xs)))
    r = solve_sdcp(M, b)
    np.testing.assert_allclose(np.asarray(r.X), Xs, rtol=0, atol=1e-12)
    assert int(r.num_iter) == 0 and float(jnp.max(jnp.abs(r.S))) <= 1e-12
    # no strict complementarity: a direction where X and S both vanish
    Q, _ = np.linalg.qr(G)
    Xs, Ss = Q @ np.diag([1.0, 0, 0]) @ Q.T, Q @ np.diag([0, 0, 2.0]) @ Q.T
    r = solve_sdcp(M, jnp.asarray(Ss) - smat(M @ svec(jnp.asarray(Xs))))
    _assert_kkt(r)
    np.testing.assert_allclose(np.asarray(r.X), Xs, rtol=0, atol=1e-12)


def test_operator_forms_and_svec():
    rng = np.random.default_rng(5)
    k = 3
    T = rng.standard_normal((k, k, k, k))
    T = T + T.transpose(1, 0, 2, 3)
    T = T + T.transpose(0, 1, 3, 2)  # A(X) symmetric for symmetric X
    f = lambda X: jnp.einsum("ijlm,lm->ij", jnp.asarray(T), X)
    M1, M2 = operator_matrix(f, k, jnp.float64), operator_matrix(jnp.asarray(T), k)
    np.testing.assert_allclose(np.asarray(M1), np.asarray(M2), rtol=1e-14, atol=1e-14)
    X = rng.standard_normal((k, k))
    X, Y = X + X.T, np.eye(k) + X @ X.T
    np.testing.assert_allclose(np.asarray(smat(M1 @ svec(jnp.asarray(X)))), f(X), atol=1e-12)
    assert abs(float(svec(jnp.asarray(X)) @ svec(jnp.asarray(Y))) - np.sum(X * Y)) <= 1e-12
    np.testing.assert_allclose(np.asarray(smat(svec(jnp.asarray(X)))), X, rtol=1e-15, atol=0)
    assert set(["solve_sdcp", "SDCPResult", "sdcp_operator"]) <= set(eosflow.__all__)


def test_jit_vmap_and_scan_agree():
    M, b = _instances(3, 4, seed=21)
    M, b = jnp.asarray(M), jnp.asarray(b)
    batched = _batched(M, b).X
    single = jnp.stack([solve_sdcp(m, c).X for m, c in zip(M, b, strict=True)])
    np.testing.assert_allclose(np.asarray(single), np.asarray(batched), rtol=0, atol=1e-13)
    M2, b2 = (jnp.asarray(x) for x in _instances(2, 4, seed=22))
    _, scanned = lax.scan(lambda c, mb: (c, solve_sdcp(*mb).X), 0, (M2, b2))
    np.testing.assert_allclose(np.asarray(scanned), np.asarray(_batched(M2, b2).X), atol=1e-13)
    np.testing.assert_allclose(np.asarray(psd_projection(batched[0])), batched[0], atol=1e-14)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match=r"symmetric \(k, k\) matrix"):
        solve_sdcp(jnp.eye(3), jnp.ones((2, 3)))
    with pytest.raises(ValueError, match=r"\(3,3\) svec matrix"):
        solve_sdcp(jnp.eye(4), jnp.eye(2))
    with pytest.raises(ValueError, match="k\\(k\\+1\\)/2"):
        smat(jnp.ones(4))
    with pytest.raises(ValueError, match="one shape"):
        sdcp_diagonal(jnp.ones(3), jnp.ones(2))
