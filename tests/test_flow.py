"""The sharpness-reduction flow (3) on Γ (issue 3 items 3 and 6; Theorem 5.1)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eosflow
from eosflow import flow as F
from eosflow import manifold as M
from eosflow.losses import (
    TOY3D_ROTATION,
    min_norm_solution,
    relative_distance_to_min_norm,
    toy3d_curve,
)

C = 2.0


def _phi_reference(phi0, taus, c=C, h=1e-3):
    """Independent reference for toy3d: the scalar ODE dφ/dτ = −2g/(4+g²), g = −sin φ/(c+cos φ)
    (module docstring of eosflow.losses.toy_model), by classical RK4 in NumPy with a tiny step."""

    def rhs(p):
        g = -np.sin(p) / (c + np.cos(p))
        return -2 * g / (4 + g * g)

    out, p, t = [], phi0, 0.0
    for target in taus:
        while t < target - 1e-15:
            dt = min(h, target - t)
            k1 = rhs(p)
            k2 = rhs(p + dt / 2 * k1)
            k3 = rhs(p + dt / 2 * k2)
            k4 = rhs(p + dt * k3)
            p += dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            t += dt
        out.append(p)
    return np.array(out)


@pytest.fixture(scope="module")
def toy_flow():
    loss = eosflow.toy3d(C)
    return loss, F.sharpness_reduction_flow(
        loss, toy3d_curve(0.5), 40.0, method="dopri5", rtol=1e-10, atol=1e-12, num_saves=161
    )


@pytest.fixture(scope="module")
def linreg_flow():
    data = eosflow.make_linear_regression_data(jax.random.PRNGKey(0), 20, 60)
    loss = eosflow.linear_regression_bn(data.X, data.y)
    zeta0 = M.project_to_manifold(loss, jax.random.normal(jax.random.PRNGKey(1), (60,))).point
    sol = F.sharpness_reduction_flow(loss, zeta0, 40.0, method="dopri5", rtol=1e-9, num_saves=41)
    return data, loss, sol


def _on_gamma_and_monotone(loss, sol):
    z = np.asarray(sol.zeta)
    losses = np.asarray(jax.vmap(loss)(jnp.asarray(z)))
    assert losses.max() <= 1e-12, losses.max()
    chex.assert_trees_all_close(np.linalg.norm(z, axis=1), 1.0, rtol=0, atol=1e-12)
    lam = np.asarray(sol.sharpness)
    # λ1 never increases along the flow (d log λ1/dτ <= 0); allow float64 round-off.
    assert np.all(np.diff(lam) <= 1e-12 * lam[:-1])


def test_toy3d_flow_stays_on_gamma_and_reduces_sharpness(toy_flow):
    loss, sol = toy_flow
    assert int(sol.result) == 0
    _on_gamma_and_monotone(loss, sol)


def test_toy3d_flow_matches_closed_form_and_ends_flattest(toy_flow):
    _, sol = toy_flow
    taus = np.asarray(sol.tau)
    ref = toy3d_curve(jnp.asarray(_phi_reference(0.5, taus)))
    # rtol=1e-10 adaptive DOPRI5 vs a 1e-3-step RK4 reference: both ~1e-9 accurate.
    np.testing.assert_allclose(np.asarray(sol.zeta), np.asarray(ref), atol=1e-7)
    # Dense output between saved points (cubic Hermite, spacing 0.25): O(h⁴) ~ 1e-5.
    mid = taus[:-1] + 0.5 * np.diff(taus)
    ref_mid = toy3d_curve(jnp.asarray(_phi_reference(0.5, mid)))
    np.testing.assert_allclose(np.asarray(sol.evaluate(mid)), np.asarray(ref_mid), atol=1e-4)
    # Ends at the flattest point ζ* = (−1, 0, 0) within 1e-4 (issue 3).
    flattest = eosflow.losses.toy3d_flattest_point()
    assert float(jnp.linalg.norm(sol.zeta[-1] - flattest)) <= 1e-4
    np.testing.assert_allclose(float(sol.sharpness[-1]), 2 * (C - 1), rtol=1e-6)


def test_theorem_5_1_flow_converges_to_min_norm_solution(linreg_flow):
    data, loss, sol = linreg_flow
    assert int(sol.result) == 0
    _on_gamma_and_monotone(loss, sol)
    rel = float(relative_distance_to_min_norm(data.X, data.y, sol.zeta[-1]))
    rel0 = float(relative_distance_to_min_norm(data.X, data.y, sol.zeta[0]))
    assert rel <= 1e-4, (rel0, rel)
    # Cross-check against (M) computed independently with NumPy's lstsq.
    X, y = np.asarray(data.X), np.asarray(data.y)
    Xc, yc = X - X.mean(0), y - y.mean()
    w_np = np.linalg.lstsq(Xc, yc, rcond=None)[0]
    w_m, _ = min_norm_solution(data.X, data.y)
    np.testing.assert_allclose(np.asarray(w_m), w_np, rtol=1e-9, atol=1e-12)


def test_adaptive_and_fixed_steps_agree(toy_flow):
    loss, sol = toy_flow
    fixed = F.sharpness_reduction_flow(
        loss, toy3d_curve(0.5), 40.0, method="rk4", dt=0.05, num_saves=161
    )
    # RK4 with dt = 0.05 has global error ~dt⁴ ~ 1e-6 on this smooth scalar flow.
    np.testing.assert_allclose(np.asarray(fixed.zeta), np.asarray(sol.zeta), atol=1e-5)
    assert int(fixed.stats.num_fevals) > int(sol.stats.num_fevals)


def test_zeta0_off_manifold_is_rejected():
    loss = eosflow.toy3d(C)
    with pytest.raises(ValueError, match="project_to_manifold"):
        F.sharpness_reduction_flow(loss, jnp.array([0.6, 0.6, 0.3]), 1.0)


def test_degenerate_top_eigenvalue_warns():
    # L = θ_3² + θ_4² on R⁴: Γ = {θ_3 = θ_4 = 0}, Hessian 2·diag(0, 0, 1, 1): λ1 = λ2 (Assumption
    # 4.6 fails). The flow is then meaningless, but the user must be told.
    loss = eosflow.scale_invariant(lambda th: th[2] ** 2 + th[3] ** 2)
    with pytest.warns(RuntimeWarning, match="gap"):
        F.sharpness_reduction_flow(
            loss, jnp.array([1.0, 0.0, 0.0, 0.0]), 0.1, method="euler", dt=0.05, num_saves=3
        )


def test_nonfinite_state_raises_naming_tau():
    base = eosflow.toy3d(C)

    e2 = jnp.asarray(TOY3D_ROTATION[1])  # in-plane coordinate: <e2, θ> = sin φ on Γ

    def loss(w):  # NaN (with NaN derivatives) once sin φ > 0.9, which the flow from φ=0.3 crosses
        th = w / jnp.linalg.norm(w)
        return base(w) * jnp.where(th @ e2 > 0.9, jnp.nan, 1.0)

    with pytest.raises(F.FlowError, match="τ =") as err:
        F.sharpness_reduction_flow(
            loss, toy3d_curve(0.3), 10.0, method="rk4", dt=0.05, num_saves=101
        )
    tau = err.value.tau
    # sin φ reaches 0.9 at φ = arcsin 0.9 ≈ 1.12; the reference says when.
    taus = np.linspace(0, 10, 2001)
    t_cross = taus[np.argmax(np.sin(_phi_reference(0.3, taus)) > 0.9)]
    assert abs(tau - t_cross) <= 0.1
    part = err.value.solution
    assert part.zeta.shape[0] >= 1
    chex.assert_tree_all_finite(part.zeta)
    assert float(part.tau[-1]) <= tau
