"""Tests for :mod:`eosflow.ode`: observed orders, error control, retraction, dense output, failures.

Reference problem, solved side by side in one 6-D state ``y = (x, u)`` so that each method compiles
once: ``x' = A x`` (``A`` with decay and rotation) and ``u' = W u`` on the unit sphere (``W`` skew),
with the retraction ``R(x, u) = (x, u/||u||)`` acting on the sphere block. Closed form (SciPy):
``(expm(tA) x0, expm(tW) u0)``. Eight solver programs are compiled in all: ``f``/``R`` are
module-level, ``t1``, ``dt0``, ``args`` and tolerances are traced, ``saveat`` keeps one shape.
The every-step, jit and failure tests use the Riccati equation ``y' = y²`` instead.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.linalg import expm

from eosflow.ode import (
    BOSH3,
    DOPRI5,
    EULER,
    HEUN,
    RK4,
    IntegrationError,
    PIController,
    Result,
    interpolate,
    raise_if_failed,
    rk_step,
    solve,
)

T = 2.0
A = jnp.array([[-0.5, 1.0, 0.0], [-1.0, -0.5, 0.3], [0.0, 0.2, -1.0]])
W = jnp.array([[0.0, 1.0, -0.5], [-1.0, 0.0, 2.0], [0.5, -2.0, 0.0]])
ARGS = (A, W)
Y0 = jnp.array([1.0, 0.5, -0.3, 0.6, 0.0, 0.8])
Y0B = jnp.array([-0.2, 1.0, 0.4, 0.0, 0.8, -0.6])
# t0, then 17 points off every step grid T/n with n a power of 2 or 3·2^k (17 divides none), then T.
SAVE = T * jnp.arange(18) / 17
MAX = 1024


def block(t, y, args):
    A, W = args
    return jnp.concatenate([A @ y[:3], W @ y[3:]])


def sphere_block(y):
    return jnp.concatenate([y[:3], y[3:] / jnp.linalg.norm(y[3:])])


def exact(t, y0=Y0):
    """Closed form, by SciPy (independent of JAX)."""
    a, w, y0 = np.asarray(A), np.asarray(W), np.asarray(y0)
    return np.concatenate([expm(t * a) @ y0[:3], expm(t * w) @ y0[3:]])


EXACT = np.stack([exact(t) for t in np.asarray(SAVE)])


def sphere_defect(ys):
    return float(np.max(np.abs(np.linalg.norm(np.asarray(ys)[:, 3:], axis=1) - 1.0)))


SOLVE_KW = dict(saveat=SAVE, max_steps=MAX, retract=sphere_block)


def fixed(tableau, dt0, y0=Y0, args=ARGS, t1=T):
    return solve(block, tableau, 0.0, t1, y0, args, dt0=float(dt0), **SOLVE_KW)


def adaptive(tableau, rtol):
    ctrl = PIController(rtol=rtol, atol=1e-12)
    return solve(block, tableau, 0.0, T, Y0, ARGS, dt0=0.1, controller=ctrl, **SOLVE_KW)


def slope(dts, errs):
    return float(np.polyfit(np.log(dts), np.log(errs), 1)[0])


@pytest.mark.parametrize("tab", [EULER, HEUN, RK4, BOSH3, DOPRI5], ids=lambda t: t.name)
def test_tableau_consistency(tab):
    """Row sums ``c_i = Σ_j a_ij`` and the quadrature conditions ``Σ b_i c_i^(q−1) = 1/q``."""
    s = len(tab.b)
    assert len(tab.c) == s and len(tab.a) == s - 1
    for i, row in enumerate(tab.a, start=1):
        assert len(row) == i and abs(sum(row) - tab.c[i]) < 1e-15
    b, c = np.array(tab.b), np.array(tab.c)
    for q in range(1, tab.order + 1):
        assert abs(b @ c ** (q - 1) - 1 / q) < 1e-14
    if tab.b_err is not None:
        bh = np.array(tab.b_err)
        for q in range(1, tab.error_order + 1):
            assert abs(bh @ c ** (q - 1) - 1 / q) < 1e-14
        assert abs(bh @ c**tab.order - 1 / (tab.order + 1)) > 1e-6  # really lower order
    assert tab.fsal == (tab in (BOSH3, DOPRI5))


def test_rk_step():
    # RK4 on y' = -y reproduces the degree-4 Taylor polynomial of exp(-h).
    h = 0.3
    y1, err = rk_step(RK4, lambda t, y, a: -y, 0.0, jnp.ones(1), h)
    assert err is None
    np.testing.assert_allclose(y1, 1 - h + h**2 / 2 - h**3 / 6 + h**4 / 24, rtol=1e-15)
    # DOPRI5's error estimate is O(h^5): halving h divides it by about 32.
    e = [float(jnp.max(jnp.abs(rk_step(DOPRI5, block, 0.0, Y0, h, ARGS)[1]))) for h in (0.1, 0.05)]
    assert 20 < e[0] / e[1] < 50
    # One big step leaves the sphere unless retracted.
    y_plain, _ = rk_step(RK4, block, 0.0, Y0, 0.5, ARGS)
    y_retr, _ = rk_step(RK4, block, 0.0, Y0, 0.5, ARGS, retract=sphere_block)
    assert sphere_defect(y_plain[None]) > 1e-6
    assert sphere_defect(y_retr[None]) <= 1e-15
    with pytest.raises(ValueError, match="no embedded error estimate"):
        solve(block, RK4, 0.0, T, Y0, ARGS, dt0=0.1, controller=PIController())


ORDER_GRIDS = {"Euler": (32, 64, 128, 256), "Dopri5": (16, 32, 64, 128)}


@pytest.mark.parametrize("tab", [EULER, HEUN, RK4, BOSH3, DOPRI5], ids=lambda t: t.name)
def test_observed_order(tab):
    """Global error at ``t1`` against ``dt``: log–log slope within 0.5 of the order, for ``x``
    (plain) and for ``u`` (sphere, retraction on). Dense output at off-grid times is Hermite
    cubic, so its slope is ``min(order, 4)``. Retracted points stay on the sphere (1e-12)."""
    ns = np.array(ORDER_GRIDS.get(tab.name, (16, 32, 64, 128)))
    ex, eu, ed = [], [], []
    for n in ns:
        sol = fixed(tab, T / n)
        assert sol.result == Result.SUCCESS and sol.stats.num_accepted == n
        assert sphere_defect(sol.ys) <= 1e-12 and sphere_defect(sol.y_final[None]) <= 1e-12
        err = np.abs(np.asarray(sol.ys) - EXACT)
        ex.append(err[-1, :3].max())
        eu.append(err[-1, 3:].max())
        ed.append(err[1:-1].max())
    dts = T / ns
    sx, su, sd = slope(dts, ex), slope(dts, eu), slope(dts, ed)
    print(f"{tab.name}: slopes x {sx:.2f}, sphere {su:.2f}, dense {sd:.2f}")
    assert abs(sx - tab.order) <= 0.5
    assert abs(su - tab.order) <= 0.5
    assert sd >= min(tab.order, 4) - 0.5


@pytest.mark.parametrize(("tab", "rtol"), [(BOSH3, 1e-6), (DOPRI5, 1e-8)], ids=["Bosh3", "Dopri5"])
def test_adaptive_meets_tolerance(tab, rtol):
    """``|y(t1) − exact| <= 10·rtol`` (``|y| ~ 1``); Hermite dense output within ``100·rtol``."""
    sol = adaptive(tab, rtol)
    assert sol.result == Result.SUCCESS and float(sol.t_final) == T
    err = np.abs(np.asarray(sol.ys) - EXACT)
    print(
        f"{tab.name} rtol {rtol:g}: error {err[-1].max():.2e}, dense {err.max():.2e}, {sol.stats}"
    )
    assert err[-1].max() <= 10 * rtol
    assert err.max() <= 100 * rtol
    assert sphere_defect(sol.ys) <= 1e-12
    assert sol.stats.num_fevals == 1 + (len(tab.b) - 1) * (
        sol.stats.num_accepted + sol.stats.num_rejected
    )


def test_adaptive_beats_fixed_rk4():
    """DOPRI5 with error control needs fewer evaluations than fixed-step RK4 at no larger error."""
    sol = adaptive(DOPRI5, 1e-8)
    err_a = float(np.abs(np.asarray(sol.y_final) - EXACT[-1]).max())
    fev_a = int(sol.stats.num_fevals)
    for n in (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024):
        ref = fixed(RK4, T / n)
        err_rk = float(np.abs(np.asarray(ref.y_final) - EXACT[-1]).max())
        if err_rk <= err_a:
            break
    fev_rk = int(ref.stats.num_fevals)
    assert fev_rk == 4 * n + 1
    print(
        f"DOPRI5 adaptive: {fev_a} fevals, error {err_a:.2e}; "
        f"RK4: {fev_rk} fevals, error {err_rk:.2e}"
    )
    assert err_rk <= err_a and fev_a < fev_rk


# Riccati ``y' = y²``: ``y = y0/(1 − y0 t)``, smooth on [0, 2] for ``y0 < 0``, blows up at
# ``t = 1/y0`` for ``y0 > 0``. Solved under an outer ``jit``, saving every accepted step.
TRACES = [0]
TQ = jnp.array([-0.1, 0.05, 0.2, 0.35, 0.5, 0.65, 0.8, 0.9, 1.3, 1.7, 2.0, 2.1])


def square(t, y, args):
    TRACES[0] += 1  # runs only while tracing
    return y * y


@jax.jit
def solve_square(y0):
    """Adaptive DOPRI5 on ``y' = y²`` over [0, 2], every step saved (``saveat=None``)."""
    ctrl = PIController(rtol=1e-6, atol=1e-9)
    sol = solve(square, DOPRI5, 0.0, 2.0, y0, dt0=0.1, controller=ctrl, max_steps=4096)
    return sol, interpolate(sol, TQ)[:, 0]


def riccati(t, y0):
    return y0 / (1 - y0 * t)


def test_every_step_saving_and_interpolate():
    sol, y_tq = solve_square(-jnp.ones(1))
    assert sol.result == Result.SUCCESS
    n = int(sol.stats.num_accepted) + 1
    ts, ys, fs = np.asarray(sol.ts), np.asarray(sol.ys)[:, 0], np.asarray(sol.fs)[:, 0]
    assert ts[0] == 0.0 and ts[n - 1] == 2.0 and np.all(np.diff(ts[:n]) > 0)
    assert np.all(np.isinf(ts[n:])) and np.all(np.isnan(ys[n:])) and ys[n - 1] == sol.y_final[0]
    np.testing.assert_allclose(ys[:n], riccati(ts[:n], -1.0), rtol=1e-6)
    np.testing.assert_array_equal(fs[:n], ys[:n] ** 2)  # exact f at the steps
    # Hermite dense output between steps: relative error within 2e-5 = 20·rtol (its O(h⁴) error
    # dominates DOPRI5's O(h⁵) at these steps); NaN outside [0, 2].
    y_tq, tq = np.asarray(y_tq), np.asarray(TQ)
    np.testing.assert_allclose(y_tq[1:-1], riccati(tq[1:-1], -1.0), rtol=2e-5)
    assert y_tq[-2] == sol.y_final[0] and np.isnan(y_tq[0]) and np.isnan(y_tq[-1])


def test_jit_does_not_recompile():
    solve_square(-jnp.ones(1))
    traces = TRACES[0]
    sol, _ = solve_square(-0.5 * jnp.ones(1))
    assert TRACES[0] == traces and solve_square._cache_size() == 1
    np.testing.assert_allclose(sol.y_final, riccati(2.0, -0.5), rtol=1e-6)
    # solve itself is jitted: a new y0 (or dt0, args) reuses the compiled program.
    fixed(RK4, T / 16)
    size = solve._cache_size()
    fixed(RK4, T / 32, y0=Y0B, args=(2 * A, W))
    assert solve._cache_size() == size


def test_blowup_stops_with_dt_underflow():
    """``y(0) = 1``: ``y = 1/(1 − t)`` blows up at ``t = 1``; stop there, keep what came before."""
    sol, y_tq = solve_square(jnp.ones(1))
    assert int(sol.result) in (Result.DT_UNDERFLOW, Result.NONFINITE)
    t_final = float(sol.t_final)
    assert 0.99 < t_final < 1.0 + 1e-4
    n = int(sol.stats.num_accepted) + 1
    chex.assert_tree_all_finite(sol.ys[:n])
    assert float(sol.ts[n - 1]) == t_final
    ok = (TQ >= 0) & (TQ <= 0.9)
    np.testing.assert_allclose(np.asarray(y_tq)[ok], riccati(np.asarray(TQ)[ok], 1.0), rtol=1e-4)
    assert np.all(np.isnan(np.asarray(y_tq)[np.asarray(TQ) > t_final]))
    with pytest.raises(IntegrationError, match="blowup test: integration stopped at t = ") as info:
        raise_if_failed(sol, where="blowup test")
    assert f"{t_final:.12g}" in str(info.value) and "dt_min" in str(info.value)
    assert info.value.solution is sol


def test_fixed_step_nonfinite():
    """Euler on ``x' = 1000 x``, ``dt = 1``: ``x_102 ≈ 1001^102 ≈ 1e306`` is finite but
    ``f(x_102) = 1000 x_102`` overflows, so the step to 102 is refused: stop at ``t = 101``."""
    sol = fixed(EULER, 1.0, args=(1e3 * jnp.eye(3), W), t1=200.0)
    assert sol.result == Result.NONFINITE and float(sol.t_final) == 101.0
    chex.assert_tree_all_finite((sol.y_final, sol.ys))  # all of SAVE lies before t = 101
    with pytest.raises(IntegrationError, match="t = 101: the state or the vector field"):
        raise_if_failed(sol)


def test_max_steps():
    sol = fixed(RK4, T / 2000)
    assert sol.result == Result.MAX_STEPS_REACHED and sol.stats.num_accepted == MAX
    t_final = float(sol.t_final)
    np.testing.assert_allclose(t_final, MAX * T / 2000, rtol=1e-15)
    np.testing.assert_allclose(sol.y_final, exact(t_final), atol=1e-12)
    reached = np.asarray(SAVE) <= t_final
    np.testing.assert_array_equal(np.isfinite(np.asarray(sol.ts)), reached)
    np.testing.assert_allclose(np.asarray(sol.ys)[reached], EXACT[reached], atol=1e-12)
    with pytest.raises(IntegrationError, match="max_steps"):
        raise_if_failed(sol)
    assert raise_if_failed(fixed(RK4, T / 16)) is not None
