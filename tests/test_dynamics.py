"""The one driver (issue #13): every dynamics through ``simulate`` and ``sweep``, equal to the
built-in GD+WD where they should be, resumable from their ``RunState``."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import eosflow
from eosflow.driver import RunState, start_run_state
from eosflow.simulation import resolve_dynamics, run_part


@pytest.fixture(scope="module")
def linreg():
    data = eosflow.make_linear_regression_data(jax.random.PRNGKey(0), n=10, d=30)
    loss = eosflow.linear_regression_bn(data.X, data.y)
    return loss, jax.random.normal(jax.random.PRNGKey(1), (30,))


def test_optax_sgd_with_decayed_weights_equals_gd_wd_over_1000_steps(linreg):
    """``optax.chain(add_decayed_weights(wd), sgd(lr))`` through ``simulate(optimizer=...)`` is
    eq. (1): the trajectory equals ``simulate(loss, w0, lr, wd)`` to 1e-10 over 1000 steps (past
    the fit, before EoS amplifies round-off), with the measured effective LR = Lemma 3.1's."""
    loss, w0 = linreg
    lr, wd = 0.1, 0.01
    ref = eosflow.simulate(loss, w0, lr, wd, 1000)
    tx = optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr))
    got = eosflow.simulate(loss, w0, optimizer=tx, steps=1000)
    chex.assert_trees_all_close(got.w, ref.w, rtol=0, atol=1e-10)
    # The measured LR is a fit to the step's tangential part: round-off once the gradient is
    # (the loss reaches 1e-31 here), so it is compared while ||∇L(θ_t)|| > 1e-8.
    live = np.asarray(ref.grad_norm) > 1e-8
    assert live.sum() >= 50
    chex.assert_trees_all_close(got.eff_lr[live], ref.eff_lr[live], rtol=1e-9)
    assert float(np.max(np.asarray(got.extra["fit_residual"])[live])) < 1e-6
    assert ref.extra == {} and np.isnan(got.lr)


def test_gd_wd_dynamics_object_is_the_default_path_bit_for_bit(linreg):
    loss, w0 = linreg
    ref = eosflow.simulate(loss, w0, 0.1, 0.01, 300, sharpness_every=10)
    got = eosflow.simulate(loss, w0, dynamics=eosflow.gd_wd,
                           hparams=eosflow.GDWDHparams(0.1, 0.01), steps=300, sharpness_every=10)  # fmt: skip
    for f in ("w", "loss", "eff_lr", "sharpness", "grad_norm"):
        assert np.array_equal(
            np.asarray(getattr(ref, f)), np.asarray(getattr(got, f)), equal_nan=True
        )


RULE = eosflow.schedulers.scalar_rmsprop_scheduler
BETAS = jnp.array([0.5, 0.9, 0.99, 0.999])


def test_sweep_over_scalar_rmsprop_beta_equals_per_configuration_simulate(linreg):
    """A sweep over a non-GD dynamics (scalar RMSprop on the sphere, 4 values of β; the other
    hparams shared scalars) equals four ``simulate`` runs to round-off in the stable phase:
    until ``η̃_t λ1(θ_t)`` first reaches 2 (measured: steps 22 and 78 for β = 0.5 and 0.9,
    never within 300 steps for 0.99, 0.999); after that the Edge of Stability amplifies the
    batched program's different round-off (β = 0.9 parts from step 94)."""
    loss, w0 = linreg
    dyn = eosflow.sphere_dynamics(RULE)
    hp = eosflow.SphereHparams(0.1, 0.01, eosflow.RMSpropHparams(0.05, BETAS, 1e-12))
    sw = eosflow.sweep(loss, w0, dynamics=dyn, hparams=hp, steps=300, sharpness_every=1,
                       progress=False)  # fmt: skip
    assert sw.loss.shape == (4, 300) and np.all(sw.nonfinite_step == -1)
    for b, beta in enumerate(BETAS):
        one = eosflow.simulate(loss, w0, dynamics=dyn, steps=300, sharpness_every=1,
                               hparams=hp._replace(rule=hp.rule._replace(beta=beta)))  # fmt: skip
        edge = np.asarray(one.eff_lr * one.sharpness) >= 2
        n = int(np.argmax(edge)) if edge.any() else 300
        assert n >= 20, (float(beta), n)
        chex.assert_trees_all_close(sw.w[b, :n], one.w[:n], rtol=0, atol=1e-12)
        chex.assert_trees_all_close(sw.eff_lr[b, :n], one.eff_lr[:n], rtol=1e-11)
        chex.assert_trees_all_close(sw.sharpness[b, :n], one.sharpness[:n], rtol=1e-9)
    # β changes the run: the configurations are not copies of one another.
    assert np.ptp(sw.eff_lr[:, -1]) > 1e-3 * np.max(np.abs(sw.eff_lr[:, -1]))


def test_sweep_adam_over_its_learning_rate(linreg):
    """Adam through ``from_optax(lambda lr: optax.adam(lr))``, its learning rate a traced,
    batched hparam: each configuration equals its own ``simulate`` run, fit residual included."""
    loss, w0 = linreg
    dyn = eosflow.from_optax(lambda lr: optax.adam(lr))
    lrs = jnp.array([1e-3, 3e-3, 1e-2])
    sw = eosflow.sweep(loss, w0, dynamics=dyn, hparams=lrs, steps=200, progress=False)
    for b in range(3):
        one = eosflow.simulate(loss, w0, dynamics=dyn, hparams=lrs[b], steps=200)
        chex.assert_trees_all_close(sw.w[b], one.w, rtol=0, atol=1e-12)
        chex.assert_trees_all_close(sw.extra["fit_residual"][b], one.extra["fit_residual"],
                                    rtol=0, atol=1e-9)  # fmt: skip


@pytest.mark.parametrize("which", ["sphere-rmsprop", "adam"])
def test_run_state_resumes_any_dynamics_exactly(linreg, which):
    """Two driver calls, the second from the first's ``RunState`` (through a NumPy round trip,
    as a checkpoint file does), equal one call bit for bit."""
    loss, w0 = linreg
    if which == "adam":
        kw = dict(dynamics=eosflow.from_optax(lambda lr: optax.adam(lr)), hparams=3e-3)
    else:
        kw = dict(dynamics=eosflow.sphere_dynamics(RULE),
                  hparams=eosflow.SphereHparams(0.1, 0.01, eosflow.RMSpropHparams(0.05, 0.9, 1e-12)))  # fmt: skip
    res = resolve_dynamics(w0, None, None, optimizer=None, where="test", **kw)
    opts = dict(record_every=2, sharpness_every=10, lanczos_iter=20)
    rs0 = start_run_state(loss, res.dynamics, w0, res.hparams)
    one, _ = run_part(loss, w0, res, 120, rs=rs0, **opts)
    a, rs = run_part(loss, w0, res, 60, rs=rs0, **opts)
    rs = jax.tree_util.tree_map(np.asarray, rs)
    assert isinstance(rs, RunState) and int(rs.step) == 60
    b, _ = run_part(loss, w0, res, 60, rs=rs, start=60, **opts)
    for f in ("step", "w", "loss", "eff_lr", "sharpness"):
        joined = np.concatenate([np.asarray(getattr(a, f)), np.asarray(getattr(b, f))])
        assert np.array_equal(joined, np.asarray(getattr(one, f)), equal_nan=True), f


def test_front_door_errors_name_the_problem(linreg):
    loss, w0 = linreg
    with pytest.raises(TypeError, match="exactly one of"):
        eosflow.simulate(loss, w0, 0.1, 0.01, 10, optimizer=optax.sgd(0.1))
    with pytest.raises(TypeError, match="exactly one of"):
        eosflow.simulate(loss, w0, steps=10)
    with pytest.raises(TypeError, match="eosflow.Dynamics"):
        eosflow.simulate(loss, w0, dynamics=lambda s: s, hparams=1.0, steps=10)
    with pytest.raises(ValueError, match="lr\\*wd < 1"):
        eosflow.simulate(loss, w0, dynamics=eosflow.gd_wd, hparams=eosflow.GDWDHparams(10.0, 0.2),
                         steps=10)  # fmt: skip
    bad = eosflow.SphereHparams(0.1, 0.01, eosflow.RMSpropHparams(0.05, jnp.ones(3), jnp.ones(2)))
    with pytest.raises(ValueError, match="different leading sizes"):
        eosflow.sweep(loss, w0, dynamics=eosflow.sphere_dynamics(RULE), hparams=bad, steps=5,
                      progress=False)  # fmt: skip


def test_bad_input_is_named_before_any_optimizer_or_sweep_work(linreg):
    """An optax run checks ``w0`` before ``optimizer.init`` sees it; a dynamics sweep whose
    hparams carry GD+WD's ``lr``/``wd`` checks ``lr·wd < 1`` like a GD+WD sweep."""
    loss, w0 = linreg
    with pytest.raises(TypeError, match="floating-point"):
        eosflow.simulate(loss, jnp.arange(30), optimizer=optax.sgd(0.1), steps=5)
    with pytest.raises(ValueError, match="w0 is zero"):
        eosflow.simulate(loss, jnp.zeros(30), optimizer=optax.adam(0.1), steps=5)
    hp = eosflow.SphereHparams(jnp.array([0.1, 50.0]), 0.1, eosflow.RMSpropHparams(0.05, 0.9, 0.0))
    with pytest.raises(ValueError, match=r"configuration 1 .*lr\*wd < 1"):
        eosflow.sweep(loss, w0, dynamics=eosflow.sphere_dynamics(RULE), hparams=hp, steps=5,
                      progress=False)  # fmt: skip


def test_sphere_dynamics_is_one_object_per_rule():
    """The default rule and an explicit ``gd_wd_scheduler`` give the same (cached) dynamics, so
    they share one compiled program."""
    assert eosflow.sphere_dynamics() is eosflow.sphere_dynamics(eosflow.gd_wd_scheduler)
    assert eosflow.sphere_dynamics(RULE) is eosflow.sphere_dynamics(RULE)
    assert eosflow.sphere_dynamics(RULE) is not eosflow.sphere_dynamics()
