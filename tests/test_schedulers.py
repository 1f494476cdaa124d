"""Effective-LR schedulers for the sphere form (issue 7, item 2): :mod:`eosflow.schedulers`.

* ``simulate_sphere(..., scheduler=gd_wd_scheduler)`` equals the built-in GD+WD rule to <= 1e-12
  (in fact bit for bit) over 2000 steps through the Edge of Stability.
* Scalar RMSprop on the sphere equals an independent NumPy loop; a user-defined scheduler (constant
  ``η̃``, hyperparameters in a dict) runs and equals PGD with that ``η̃``.
* :func:`quasi_rmsprop_check`: GD+WD and scalar RMSprop have the Quasi-RMSprop shape, a constant
  rule does not. Bad schedulers / hyperparameters are refused.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eosflow
from eosflow.schedulers import (
    EffLRScheduler,
    GDWDHparams,
    RMSpropHparams,
    gd_wd_scheduler,
    quasi_rmsprop_check,
    scalar_rmsprop_scheduler,
)


@pytest.fixture(scope="module")
def problem():
    kd, kw = jax.random.split(jax.random.PRNGKey(3))
    data = eosflow.make_linear_regression_data(kd, n=10, d=20, n_test=10)
    loss = eosflow.linear_regression_bn(data.X, data.y)
    return loss, jax.random.normal(kw, (20,)) / np.sqrt(20)


def test_gd_wd_scheduler_equals_builtin(problem):
    loss, w0 = problem
    ref = eosflow.simulate_sphere(loss, w0, 0.1, 0.01, 2000, record_every=10)
    out = eosflow.simulate_sphere(loss, w0, 0.1, 0.01, 2000, record_every=10,
                                  scheduler=gd_wd_scheduler)  # fmt: skip
    for f in ("theta", "eff_lr", "norm", "w", "loss", "grad_norm"):
        assert np.max(np.abs(np.asarray(getattr(out, f)) - np.asarray(getattr(ref, f)))) <= 1e-12
    # EoS reached: the loss left round-off after the fit (oscillation), the regime where two
    # different implementations would separate
    loss_ = np.asarray(ref.loss)
    assert loss_[50:100].min() < 1e-20 and loss_[-50:].max() > 1e-8
    assert float(out.lr) == 0.1 and float(out.wd) == 0.01


def _np_pgd(loss, w0, steps, rule):
    """Independent loop: θ ← Π(θ − η̃ g) with ``(state, η̃) = rule(state, ||g||²)``."""
    grad = jax.jit(jax.grad(loss))
    theta = np.asarray(w0) / np.linalg.norm(w0)
    thetas, etas = [], []
    for _ in range(steps):
        thetas.append(theta)
        g = np.asarray(grad(jnp.asarray(theta)))
        eta = rule(g @ g)
        etas.append(eta)
        v = theta - eta * g
        theta = v / np.linalg.norm(v)
    return np.array(thetas), np.array(etas)


def test_scalar_rmsprop_scheduler_matches_numpy(problem):
    loss, w0 = problem
    eta, beta, eps, lr = 0.05, 0.99, 1e-10, 0.2  # η̃_0 = lr/||w0||² (wd = 0); stays stable
    out = eosflow.simulate_sphere(loss, w0, lr, 0.0, 200, scheduler=scalar_rmsprop_scheduler,
                                  scheduler_hparams=RMSpropHparams(eta, beta, eps))  # fmt: skip
    eff0 = lr / float(jnp.sum(w0**2))
    state = {"v": max((eta / eff0) ** 2 - eps, 0.0)}

    def rule(g2):
        state["v"] = beta * state["v"] + (1 - beta) * g2
        return eta / np.sqrt(state["v"] + eps)

    thetas, etas = _np_pgd(loss, w0, 200, rule)
    np.testing.assert_allclose(out.eff_lr, etas, rtol=1e-10)
    assert np.max(np.abs(np.asarray(out.theta) - thetas)) <= 1e-10
    np.testing.assert_array_equal(out.norm, 1.0)  # no implied ||w||: records use θ


def test_user_defined_scheduler_runs(problem):
    """A constant ``η̃`` (hyperparameters in a dict): plain PGD on the sphere."""
    loss, w0 = problem
    const = EffLRScheduler(
        init=lambda eff_lr0, hp: hp["eta"],
        update=lambda s, g2, hp: (s, s),
        norm=lambda s, hp: jnp.sqrt(hp["eta"] / s),
    )
    out = eosflow.simulate_sphere(loss, w0, 0.1, 0.0, 100, scheduler=const,
                                  scheduler_hparams={"eta": 0.05})  # fmt: skip
    thetas, _ = _np_pgd(loss, w0, 100, lambda g2: 0.05)
    assert np.max(np.abs(np.asarray(out.theta) - thetas)) <= 1e-10
    np.testing.assert_array_equal(out.eff_lr, 0.05)
    np.testing.assert_allclose(out.norm, 1.0)  # its norm(): sqrt(η/η̃) = 1
    assert out.loss[-1] < out.loss[0]


def test_quasi_rmsprop_check():
    assert quasi_rmsprop_check(gd_wd_scheduler, GDWDHparams(0.1, 0.01), 0.1, 1e4)[:2] == (
        True,
        True,
    )
    r = quasi_rmsprop_check(scalar_rmsprop_scheduler, RMSpropHparams(0.01, 0.9, 1e-12), 0.1, 1e4)
    assert r.grows_when_small and r.shrinks_when_large
    const = EffLRScheduler(lambda e, hp: e, lambda s, g2, hp: (s, s))
    r = quasi_rmsprop_check(const, None, 0.1, 1e4)
    assert not r.grows_when_small and not r.shrinks_when_large
    # GD+WD's η̃ grows by exactly (1 − lr·wd)^{-2} per step when g = 0
    r = quasi_rmsprop_check(gd_wd_scheduler, GDWDHparams(0.1, 0.01), 0.1, 1e4, steps=5)
    np.testing.assert_allclose(r.eff_lr_small[1:] / r.eff_lr_small[:-1], 0.999**-2, rtol=1e-14)


def test_bad_scheduler(problem):
    loss, w0 = problem
    with pytest.raises(TypeError, match="EffLRScheduler"):
        eosflow.simulate_sphere(loss, w0, 0.1, 0.01, 10, scheduler=lambda s: s)
    with pytest.raises(TypeError, match="RMSpropHparams"):
        eosflow.simulate_sphere(loss, w0, 0.1, 0.01, 10, scheduler=scalar_rmsprop_scheduler)
    with pytest.raises(ValueError, match="lr"):
        eosflow.simulate_sphere(loss, w0, -0.1, 0.01, 10, scheduler=gd_wd_scheduler)
