"""The central flow's SDCP data for the sphere form of GD+WD (issue 14, item 3): ``A`` and ``b``
by hand on a constructed case, the constraint's rate ``S' = drift + R(X)`` against central finite
differences of the dense Hessian along the flow's velocity, the third-derivative terms against
central differences of the dense Hessian, THEORY.md's one-eigenvalue limit
``σ² ≈ 2η_in/(4 + ‖∇log λ1‖²)``, and KKT-certified solutions on matrix completion.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eosflow
from eosflow.sdcp import smat, svec
from eosflow.sphere_sdcp import (
    central_velocity,
    hessian_derivative_terms,
    sdcp_operator,
)

_dH = jax.jit(hessian_derivative_terms, static_argnums=0)


@pytest.fixture(scope="module")
def linreg():
    data = eosflow.make_linear_regression_data(jax.random.PRNGKey(0), 6, 9)
    loss = eosflow.linear_regression_bn(data.X, data.y)
    theta = jax.random.normal(jax.random.PRNGKey(1), (9,))
    return loss, theta / jnp.linalg.norm(theta)


def test_operator_by_hand():
    # D = 5, θ = e1, k = 2; dH[0,0] has a radial part r θ that P_θ must remove
    e = np.eye(5)
    al, be, de, ga, r = 0.7, -1.3, 0.4, 0.25, 3.0
    lam = np.array([3.0, 1.5])
    u, eta_in, dt = 1.6, 0.01, 0.25
    eta, c = 1 / u, (1 - eta_in) ** 2
    a = c - 1
    dH = np.zeros((2, 2, 5))
    dH[0, 0], dH[1, 1] = al * e[1] + r * e[0], be * e[2]
    dH[0, 1] = dH[1, 0] = de * e[3] + 0.5 * e[4]
    grad = ga * e[1] + 0.1 * e[4]
    sd = sdcp_operator(
        jnp.asarray(e[0]), jnp.asarray(grad), jnp.asarray(lam), jnp.asarray(dH), u, eta_in, dt
    )
    g2 = ga**2 + 0.01
    drift = 2 * (a * u + c * eta * g2) * np.eye(2) + eta * np.array([[al * ga, 0.05], [0.05, 0.0]])
    np.testing.assert_allclose(np.asarray(sd.slack), np.diag(2 * u - lam), rtol=0, atol=1e-15)
    np.testing.assert_allclose(np.asarray(sd.drift), drift, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(np.asarray(sd.b), np.diag(2 * u - lam) + dt * drift, atol=1e-15)
    X = np.array([[0.3, -0.2], [-0.2, 0.9]])
    # R(X)_ij = ½η̃ Σ_lm ⟨P dH_ij, P dH_lm⟩ X_lm + 2cη̃ δ_ij Σ_l λ_l² X_ll, written out:
    g01 = de**2 + 0.25  # ‖P dH_01‖²
    RX = 0.5 * eta * np.array(
        [[al**2 * X[0, 0], 2 * g01 * X[0, 1]], [2 * g01 * X[0, 1], be**2 * X[1, 1]]]
    ) + 2 * c * eta * (lam[0] ** 2 * X[0, 0] + lam[1] ** 2 * X[1, 1]) * np.eye(2)
    got = np.asarray(smat(sd.rate @ svec(jnp.asarray(X))))
    np.testing.assert_allclose(got, RX, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(np.asarray(smat(sd.A @ svec(jnp.asarray(X)))), dt * RX, atol=1e-15)
    # another edge (η̃λ ≤ edge): the u-parts scale with it, the θ-parts do not
    e2 = (2 - eta_in) / (1 - eta_in)
    sd2 = sdcp_operator(
        jnp.asarray(e[0]),
        jnp.asarray(grad),
        jnp.asarray(lam),
        jnp.asarray(dH),
        u,
        eta_in,
        dt,
        edge=e2,
    )
    np.testing.assert_allclose(np.asarray(sd2.slack), np.diag(e2 * u - lam), rtol=1e-15)
    du_part = (a * u + c * eta * g2) * np.eye(2)
    np.testing.assert_allclose(np.asarray(sd2.drift), drift + (e2 - 2) * du_part, rtol=1e-14)
    RX2 = RX + (e2 - 2) * c * eta * (lam[0] ** 2 * X[0, 0] + lam[1] ** 2 * X[1, 1]) * np.eye(2)
    np.testing.assert_allclose(np.asarray(smat(sd2.rate @ svec(jnp.asarray(X)))), RX2, rtol=1e-14)
    # the velocity, by hand
    dth, du = central_velocity(
        jnp.asarray(e[0]),
        jnp.asarray(grad),
        jnp.asarray(lam),
        jnp.asarray(dH),
        jnp.asarray(X),
        u,
        eta_in,
    )
    force = grad + 0.5 * (
        X[0, 0] * al * e[1] + X[1, 1] * be * e[2] + 2 * X[0, 1] * (de * e[3] + 0.5 * e[4])
    )
    np.testing.assert_allclose(np.asarray(dth), -eta * force, rtol=1e-14, atol=1e-15)
    du_hand = a * u + c * eta * (g2 + lam[0] ** 2 * X[0, 0] + lam[1] ** 2 * X[1, 1])
    np.testing.assert_allclose(float(du), du_hand, rtol=1e-14)


def test_third_derivative_terms_match_dense(linreg):
    # dH[i, j]·w against the central difference of the dense Hessian along w (O(h²))
    loss, theta = linreg
    evals, evecs = eosflow.dense_top_eigs(loss, theta, k=3)
    V = evecs.T
    dH = _dH(loss, theta, V)
    W = jax.random.normal(jax.random.PRNGKey(5), (3, theta.shape[0]))
    for w in W / jnp.linalg.norm(W, axis=1, keepdims=True):
        err = {}
        for h in (1e-4, 1e-5):
            dHw = eosflow.dense_hessian(loss, theta + h * w) - eosflow.dense_hessian(
                loss, theta - h * w
            )
            fd = V.T @ dHw @ V / (2 * h)
            err[h] = float(jnp.max(jnp.abs(dH @ w - fd)) / jnp.max(jnp.abs(fd)))
        # O(h²) truncation: 10x smaller h, ~100x smaller error
        assert err[1e-5] <= 1e-8 and err[1e-4] / err[1e-5] >= 50, err
    # scale invariance (L(cθ) = L(θ)): the radial part of dH[i,i] is −2λ_i
    np.testing.assert_allclose(
        np.asarray(dH @ theta)[np.diag_indices(3)],
        -2 * np.asarray(evals),
        rtol=1e-9,
        atol=1e-12 * float(evals[0]),
    )


def test_constraint_rate_matches_finite_differences(linreg):
    # S(t) = 2u(t) I − Vᵀ∇²L(θ(t))V with V frozen, along (θ', u') = central_velocity(X):
    # the central difference of S must equal drift + R(X). Near Γ, where the top 3 eigenvalues
    # are distinct and nonzero (linear regression with BN: rank n − 2 = 4 there).
    loss, theta = linreg
    zeta = eosflow.project_to_manifold(loss, theta).point
    theta = zeta + 0.05 * (theta - zeta) / jnp.linalg.norm(theta - zeta)
    theta = theta / jnp.linalg.norm(theta)
    k = 3
    evals, evecs = eosflow.dense_top_eigs(loss, theta, k=k)
    assert float(evals[2]) > 1e-2 * float(evals[0])
    V = evecs.T
    grad = jax.grad(loss)(theta)
    dH = _dH(loss, theta, V)
    u, eta_in = 0.6 * float(evals[0]), 0.02
    G = jax.random.normal(jax.random.PRNGKey(3), (k, k))
    X = G @ G.T / k
    sd = sdcp_operator(theta, grad, evals, dH, u, eta_in, 0.5)
    dth, du = central_velocity(theta, grad, evals, dH, X, u, eta_in)
    S = lambda h: (
        2 * (u + h * du) * jnp.eye(k) - V.T @ eosflow.dense_hessian(loss, theta + h * dth) @ V
    )
    pred = sd.drift + smat(sd.rate @ svec(X))
    scale = float(jnp.max(jnp.abs(pred)))
    err = {
        h: float(jnp.max(jnp.abs((S(h) - S(-h)) / (2 * h) - pred))) / scale for h in (1e-4, 1e-5)
    }
    # central differences: O(h²) truncation, so 10x smaller h gives ~100x smaller error
    assert err[1e-5] <= 1e-8, err
    assert err[1e-4] / err[1e-5] >= 50, err
    np.testing.assert_allclose(np.asarray(sd.slack), np.diag(2 * u - np.asarray(evals)), atol=0)


def test_one_eigenvalue_at_the_edge_on_gamma_gives_theory_sigma2(linreg):
    # THEORY.md: on Γ (∇L = 0) at η̃λ1 = 2, σ² = 2η_in/(4 + ‖∇log λ1‖²) to first order; exactly,
    # with a = (1−η_in)² − 1 and c = (1−η_in)²: σ² = −a / (4c + ‖P_θ ∇log λ1‖²).
    loss, theta = linreg
    zeta = eosflow.project_to_manifold(loss, theta).point
    geom = eosflow.local_geometry(loss, zeta)
    lam1 = geom.sharpness
    glog = eosflow.grad_log_sharpness(loss, zeta, geom)
    glog = glog - zeta * jnp.vdot(zeta, glog)
    dH = _dH(loss, zeta, geom.v1[:, None])
    grad = jax.grad(loss)(zeta)
    assert float(jnp.linalg.norm(grad)) <= 1e-12
    for eta_in in (1e-2, 1e-3):
        sd = sdcp_operator(zeta, grad, lam1[None], dH, lam1 / 2, eta_in, 0.25)
        sigma2 = float(eosflow.solve_sdcp(sd.A, sd.b).X[0, 0])
        a, c = (1 - eta_in) ** 2 - 1, (1 - eta_in) ** 2
        exact = -a / (4 * c + float(jnp.vdot(glog, glog)))
        np.testing.assert_allclose(sigma2, exact, rtol=1e-9)
        first_order = 2 * eta_in / (4 + float(jnp.vdot(glog, glog)))
        assert abs(sigma2 / first_order - 1) <= 2 * eta_in


def test_bad_shapes_are_named(linreg):
    _, theta = linreg
    with pytest.raises(ValueError, match=r"dH must be \(k, k, D\)"):
        sdcp_operator(theta, theta, jnp.ones(2), jnp.ones((2, 2, 3)), 1.0, 0.01, 0.5)


@pytest.fixture(scope="module")
def matrix_completion_on_gamma():
    # a global minimizer (loss ~1e-31): the rank-2 factors of M, padded to k = 5 and rotated
    data = eosflow.make_matrix_completion_data(jax.random.PRNGKey(0), 10, 10, 2, 60, k=5)
    loss = eosflow.matrix_completion_bn(data)
    P, s, Qt = np.linalg.svd(np.asarray(data.M))
    R, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((5, 5)))
    pad = lambda F: np.concatenate([F, np.zeros((10, 3))], 1) @ R
    w = np.concatenate(
        [pad(P[:, :2] * np.sqrt(s[:2])).ravel(), pad(1.3 * Qt[:2].T * np.sqrt(s[:2])).ravel()]
    )
    theta = jnp.asarray(w / np.linalg.norm(w))
    grad = jax.grad(loss)(theta)
    assert float(loss(theta)) <= 1e-28 and float(jnp.linalg.norm(grad)) <= 1e-13
    ev, V = eosflow.dense_top_eigs(loss, theta, k=5)
    return theta, grad, ev, _dH(loss, theta, V.T)


@pytest.mark.parametrize("k", [3, 5])
def test_matrix_completion_sdcps_solve_to_kkt(k, matrix_completion_on_gamma):
    # Real instances with clustered top eigenvalues (matrix completion with BN, on Γ): the
    # operator's symmetric part has condition number 25 (k=3) and 1.1e3 (k=5), 12–17% asymmetry. The KKT
    # conditions certify the solution (unique: the operator is strongly monotone, checked).
    theta, grad, ev, dH = matrix_completion_on_gamma
    ev, dH = ev[:k], dH[:k, :k]
    for edge in range(1, k):  # u = λ_edge/2: the top `edge` eigenvalues violate η̃λ ≤ 2
        for dt in (0.25, 1.0):
            sd = sdcp_operator(theta, grad, ev, dH, ev[edge] / 2, 1e-3, dt)
            r = eosflow.solve_sdcp(sd.A, sd.b)
            scale = float(jnp.max(jnp.abs(sd.b)))
            assert bool(r.converged) and float(r.op_min_eig) > 0
            assert float(jnp.linalg.eigvalsh(r.X)[0]) >= -1e-12 * scale
            assert float(r.min_eig_S) >= -1e-11 * scale
            assert abs(float(r.complementarity)) <= 1e-11 * scale * float(jnp.trace(r.X))
            # the violated eigenvalues are the ones that oscillate
            assert int(jnp.sum(jnp.linalg.eigvalsh(r.X) > 1e-9 * float(jnp.trace(r.X)))) >= 1
