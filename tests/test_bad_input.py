"""Bad input gets a clear ValueError/TypeError naming the problem (issue 2, item 5), raised before
anything is compiled. One test per case; each checks the exception type and that the message
names the offending argument."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eosflow
from eosflow.losses import scale_invariant

W0 = jnp.array([0.3, -0.5, 0.4, 0.7])
LOSS = scale_invariant(lambda th: jnp.sum(jnp.sin(3.0 * th)) ** 2)
SIMULATORS = [eosflow.simulate, eosflow.simulate_sphere]
IDS = ["simulate", "simulate_sphere"]


@pytest.mark.parametrize("sim", SIMULATORS, ids=IDS)
def test_loss_not_scale_invariant(sim):
    with pytest.raises(ValueError, match="not scale-invariant") as info:
        sim(lambda w: jnp.sum(w**2), W0, 0.1, 0.01, steps=10)
    assert "scale_invariant" in str(info.value)  # the message says how to fix it


def test_loss_not_scale_invariant_under_jit():
    # simulate jitted over lr/wd with a concrete, closed-over w0: the check still runs (at trace
    # time) and names the problem; it used to fail with a ConcretizationTypeError instead.
    run = jax.jit(lambda lr: eosflow.simulate(lambda w: jnp.sum(w**2), W0, lr, 0.01, steps=10).w)
    with pytest.raises(ValueError, match="not scale-invariant"):
        run(0.1)


def test_almost_invariant_loss_is_rejected_above_tolerance():
    # relative change ~1e-6 > the documented float64 tolerance 1e-8
    tol = eosflow.losses.SCALE_INVARIANCE_RTOL[jnp.dtype("float64")]
    loss = lambda w: LOSS(w) * (1 + 1e-6 * jnp.sum(w**2))
    assert eosflow.check_scale_invariance(loss, W0) > tol
    with pytest.raises(ValueError, match="not scale-invariant"):
        eosflow.simulate(loss, W0, 0.1, 0.01, steps=10)


@pytest.mark.parametrize("lr,wd", [(1.0, 1.0), (2.0, 0.6), (0.5, 10.0)])
def test_lr_times_wd_at_least_one(lr, wd):
    with pytest.raises(ValueError, match=r"lr\*wd"):
        eosflow.simulate(LOSS, W0, lr, wd, steps=10)


@pytest.mark.parametrize("lr", [0.0, -0.1, float("nan"), float("inf")])
def test_lr_not_positive(lr):
    with pytest.raises(ValueError, match="learning rate"):
        eosflow.simulate(LOSS, W0, lr, 0.01, steps=10)


@pytest.mark.parametrize("wd", [-0.01, float("nan")])
def test_wd_negative(wd):
    with pytest.raises(ValueError, match="weight decay"):
        eosflow.simulate(LOSS, W0, 0.1, wd, steps=10)


@pytest.mark.parametrize("sim", SIMULATORS, ids=IDS)
def test_w0_zero(sim):
    with pytest.raises(ValueError, match="w0 is zero"):
        sim(LOSS, jnp.zeros(4), 0.1, 0.01, steps=10)


def test_w0_zero_pytree():
    with pytest.raises(ValueError, match="w0 is zero"):
        eosflow.simulate(
            lambda p: LOSS(jnp.concatenate([p["a"], p["b"]])),
            {"a": jnp.zeros(2), "b": jnp.zeros(2)},
            0.1,
            0.01,
            steps=10,
        )


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_w0_not_finite(bad):
    w0 = np.array(W0)
    w0[1] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        eosflow.simulate(LOSS, jnp.asarray(w0), 0.1, 0.01, steps=10)


def test_w0_integer():
    with pytest.raises(TypeError, match="floating-point"):
        eosflow.simulate(LOSS, jnp.array([1, 2, 3]), 0.1, 0.01, steps=10)


@pytest.mark.parametrize("sim", SIMULATORS, ids=IDS)
def test_loss_returns_vector(sim):
    with pytest.raises(TypeError, match="scalar"):
        sim(lambda w: w / jnp.linalg.norm(w), W0, 0.1, 0.01, steps=10)


def test_loss_not_callable():
    with pytest.raises(TypeError, match="callable"):
        eosflow.simulate(3.0, W0, 0.1, 0.01, steps=10)


@pytest.mark.parametrize("steps", [0, -5, 2.5, True])
def test_steps_invalid(steps):
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        eosflow.simulate(LOSS, W0, 0.1, 0.01, steps=steps)


@pytest.mark.parametrize("record_every", [0, -1])
def test_record_every_invalid(record_every):
    with pytest.raises(ValueError, match="record_every"):
        eosflow.simulate(LOSS, W0, 0.1, 0.01, steps=10, record_every=record_every)


def test_sharpness_every_not_multiple_of_record_every():
    with pytest.raises(ValueError, match="multiple of record_every"):
        eosflow.simulate(LOSS, W0, 0.1, 0.01, steps=10, record_every=2, sharpness_every=3)


def test_sharpness_every_negative():
    with pytest.raises(ValueError, match="sharpness_every"):
        eosflow.simulate(LOSS, W0, 0.1, 0.01, steps=10, sharpness_every=-1)


def test_on_nonfinite_unknown():
    with pytest.raises(ValueError, match="on_nonfinite"):
        eosflow.simulate(LOSS, W0, 0.1, 0.01, steps=10, on_nonfinite="ignore")


def test_hessian_top_eigs_unknown_method():
    with pytest.raises(ValueError, match="unknown method 'arnoldi'"):
        eosflow.hessian_top_eigs(LOSS, W0, 1, method="arnoldi")


def test_hessian_top_eigs_power_with_k_above_one():
    with pytest.raises(ValueError, match="k=1"):
        eosflow.hessian_top_eigs(LOSS, W0, 2, method="power")


def test_lanczos_k_too_large():
    with pytest.raises(ValueError, match="k"):
        eosflow.lanczos_top_eigs(lambda v: v, jnp.ones(4), 5)


def test_eos_onset_needs_sharpness():
    traj = eosflow.simulate(LOSS, W0, 0.1, 0.01, steps=3)
    with pytest.raises(ValueError, match="sharpness_every"):
        eosflow.eos_onset(traj)


def test_shape_contracts_at_internal_boundaries_are_checked():
    """chex shape/dtype assertions (trace time) where a mismatch would otherwise give a silently
    wrong number or an opaque loop error: a batch of vectors to ``project_tangent`` (``vdot``
    would flatten it), a vector field returning the wrong shape to ``ode.solve``, an HVP
    direction of another dtype."""
    from eosflow.eigensolvers import hvp
    from eosflow.ode import RK4, solve

    loss = eosflow.toy3d()
    theta = eosflow.losses.toy3d_flattest_point()
    geom = eosflow.local_geometry(loss, theta)
    with pytest.raises(AssertionError, match="rank"):
        eosflow.project_tangent(geom, theta, jnp.ones((2, 3)))
    with pytest.raises(AssertionError, match="shape"):
        solve(lambda t, y, a: jnp.ones(4), RK4, 0.0, 1.0, jnp.ones(3), dt0=0.1)
    with pytest.raises(AssertionError, match="float32"):
        hvp(loss, jnp.ones(3), jnp.ones(3, jnp.float32))
    v = jnp.array([0.0, 1.0, 0.0])  # a valid call still works: the result is tangent to θ
    assert abs(float(jnp.vdot(theta, eosflow.project_tangent(geom, theta, v)))) < 1e-12
