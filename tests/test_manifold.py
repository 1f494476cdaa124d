"""Manifold tools: projection Φ onto Γ, tangent spaces, Hellmann–Feynman ∇λ1 (issue 3 item 1)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eosflow
from eosflow import manifold as M
from eosflow.losses import toy3d_curve


@pytest.fixture(scope="module")
def linreg():
    data = eosflow.make_linear_regression_data(jax.random.PRNGKey(0), 12, 30)
    loss = eosflow.linear_regression_bn(data.X, data.y)
    theta = jax.random.normal(jax.random.PRNGKey(1), (30,))
    zeta = M.project_to_manifold(loss, theta).point
    return data, loss, zeta


def test_residual_projection_reaches_roundoff(linreg):
    _, loss, zeta = linreg
    # Gauss–Newton min-norm steps: residuals ~1e-15, so the loss is ~1e-30 (float64 round-off).
    assert float(loss(zeta)) <= 1e-26
    chex.assert_trees_all_close(jnp.linalg.norm(zeta), 1.0, rtol=0, atol=1e-14)
    assert float(M.riemannian_grad_norm(loss, zeta)) <= 1e-12


def test_generic_projection_matches_gauss_newton_near_gamma(linreg):
    _, loss, zeta = linreg
    plain = lambda w: loss(w)  # a plain callable: forces the generic (Newton) path
    u = jax.random.normal(jax.random.PRNGKey(2), zeta.shape)
    u = u / jnp.linalg.norm(u)
    gaps = []
    for eps in (1e-3, 1e-4):
        theta = (zeta + eps * u) / jnp.linalg.norm(zeta + eps * u)
        p_gn = M.project_to_manifold(loss, theta)
        p_nt = M.project_to_manifold(plain, theta)
        assert float(p_nt.loss) <= 1e-24
        assert float(p_nt.grad_norm) <= 1e-10
        gaps.append(float(jnp.linalg.norm(p_gn.point - p_nt.point)))
        # Both steps are min-norm (orthogonal to T Γ to first order): they agree to O(dist²).
        assert gaps[-1] <= 10 * eps**2
    # ... and the disagreement really is second order: 10x closer gives ~100x smaller.
    assert gaps[1] <= gaps[0] / 30
    # And the displacement is (nearly) normal: its tangent component is O(dist²).
    geom = M.local_geometry(loss, p_gn.point)
    x = theta - p_gn.point
    tang = M.project_tangent(geom, p_gn.point, x)
    assert float(jnp.linalg.norm(tang)) <= 1e-3 * float(jnp.linalg.norm(x))


def test_geometry_backends_agree_and_rank_is_n_minus_2(linreg):
    data, loss, zeta = linreg
    plain = lambda w: loss(w)
    g_res = M.local_geometry(loss, zeta)
    g_gen = M.local_geometry(plain, zeta)
    n = data.X.shape[0]
    # Linear regression with BN has Hessian rank n − 2 on Γ (centering and the BN scale).
    assert int(g_res.rank) == n - 2 and int(g_gen.rank) == n - 2
    # Independent reference: dense Hessian + eigh.
    evals, _ = eosflow.dense_top_eigs(loss, zeta, k=2)
    np.testing.assert_allclose(float(g_res.sharpness), float(evals[0]), rtol=1e-10)
    np.testing.assert_allclose(float(g_gen.lambda2), float(evals[1]), rtol=1e-10)
    assert abs(float(jnp.vdot(g_res.v1, g_gen.v1))) >= 1 - 1e-10


def test_tangent_projector_is_null_space_of_hessian(linreg):
    _, loss, zeta = linreg
    geom = M.local_geometry(loss, zeta)
    H = eosflow.dense_hessian(loss, zeta)
    V = jax.random.normal(jax.random.PRNGKey(3), (5, zeta.shape[0]))
    P = jax.vmap(lambda v: M.project_tangent(geom, zeta, v))(V)
    lam1 = float(geom.sharpness)
    for p in P:
        assert float(jnp.linalg.norm(H @ p)) <= 1e-9 * lam1 * float(jnp.linalg.norm(p))
        chex.assert_trees_all_close(jnp.vdot(p, zeta), 0.0, rtol=0, atol=1e-12)
    # Idempotent.
    PP = jax.vmap(lambda v: M.project_tangent(geom, zeta, v))(P)
    np.testing.assert_allclose(np.asarray(PP), np.asarray(P), atol=1e-12)


def test_hellmann_feynman_matches_finite_differences(linreg):
    _, loss, zeta = linreg
    geom = M.local_geometry(loss, zeta)
    grad = M.grad_sharpness(loss, zeta, geom.v1)
    u = jax.random.normal(jax.random.PRNGKey(4), zeta.shape)
    u = u / jnp.linalg.norm(u)
    lam = lambda th: eosflow.dense_top_eigs(loss, th, 1)[0][0]
    eps = 1e-5
    fd = (lam(zeta + eps * u) - lam(zeta - eps * u)) / (2 * eps)
    # Central differences: truncation O(eps²·λ''') ~ 1e-9, round-off ~1e-16/eps ~ 1e-11.
    np.testing.assert_allclose(float(jnp.vdot(grad, u)), float(fd), rtol=1e-6, atol=1e-8)


def test_toy3d_gamma_gradient_closed_form():
    c = 2.0
    loss = eosflow.toy3d(c)
    for phi in (0.3, 1.2, 2.5):
        zeta = toy3d_curve(phi)
        geom = M.local_geometry(loss, zeta)
        g = M.grad_gamma(geom, zeta, M.grad_log_sharpness(loss, zeta, geom))
        t_phi = toy3d_curve(phi + np.pi / 2)  # the unit tangent R^T(-sin φ, cos φ, 0)
        # λ1 = 2(c + cos φ) on Γ, so ∇_Γ log λ1 = −sin φ/(c + cos φ) · t_φ.
        expected = -np.sin(phi) / (c + np.cos(phi)) * t_phi
        np.testing.assert_allclose(np.asarray(g), np.asarray(expected), atol=1e-12)
        np.testing.assert_allclose(float(geom.sharpness), 2 * (c + np.cos(phi)), rtol=1e-13)


def test_residual_method_requires_residual_loss():
    with pytest.raises(TypeError, match="ResidualLoss"):
        M.project_to_manifold(lambda w: jnp.sum(w), jnp.ones(3), method="residual")
    with pytest.raises(ValueError, match="unknown method"):
        M.local_geometry(eosflow.toy3d(), toy3d_curve(0.1), method="newton")
