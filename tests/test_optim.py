"""optax through the simulator (issue 7, items 1 and 3): :mod:`eosflow.optim`.

* ``chain(add_decayed_weights(wd), sgd(lr))`` equals :func:`eosflow.simulate` (eq. (1)) on ``θ_t``
  to <= 1e-10 over 1000 steps (array and pytree ``w0``), and its measured ``η̃`` equals Lemma 3.1's
  ``eff_lr`` with residual ~0 while the gradient is above round-off.
* The measured ``η̃`` and residual equal an independent NumPy evaluation of the *uncancelled*
  formula ``p = w_{t+1}/⟨w_{t+1}, θ_t⟩ − θ_t``; a hand-made PGD step gives residual 0, Adam steps
  do not.
* Scalar RMSprop: the recorded ``lr_t`` equals the recurrence in NumPy; on ``0.5 wᵀAw`` with
  ``A = diag(10, 3, 1)`` the learning rate grows until ``lr_t λ1 ≈ 2`` and stays there (within
  10% over a window after the oscillation starts), with period-two sign flips.
* Plain-geometry sharpness equals the dense Hessian's top eigenvalue; new RMSprop hyperparameters
  do not recompile; bad input and non-finite runs are reported.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import eosflow
from eosflow.driver import run_compiled
from eosflow.eff_lr_fit import measured_eff_lr
from eosflow.optim import scalar_rmsprop
from eosflow.simulation import simulate_optax, simulate_rmsprop

W0 = jnp.array([0.3, 0.5, 0.4])


def gd_wd(lr, wd):
    return optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr))


@pytest.fixture(scope="module")
def toy():
    return eosflow.toy3d()


# ----------------------------------------------------------------------------- eq. (1) via optax


@pytest.mark.parametrize("lr, wd", [(0.02, 0.01), (0.002, 0.01)])
def test_optax_gd_wd_equals_simulate(toy, lr, wd):
    """θ_t agree to 1e-10 over 1000 steps. (0.02, 0.01) fits the loss to round-off (gradient
    ~1e-18); (0.002, 0.01) keeps the gradient above 1e-8, where η̃ is measurable to 1e-9.
    Neither reaches EoS in 1000 steps: there the oscillation grows from round-off and two
    round-off-different (but equally exact) runs separate."""
    ref = eosflow.simulate(toy, W0, lr, wd, 1000)
    run = simulate_optax(toy, W0, gd_wd(lr, wd), 1000)
    tr = run.trajectory
    assert tr.theta.shape == (1000, 3)
    assert np.max(np.abs(np.asarray(tr.theta) - np.asarray(ref.theta))) <= 1e-10
    assert np.max(np.abs(np.asarray(tr.w) - np.asarray(ref.w))) <= 1e-10
    np.testing.assert_allclose(tr.loss, ref.loss, rtol=1e-8, atol=1e-14)  # loss ~ dist², near 0
    np.testing.assert_allclose(tr.norm, ref.norm, rtol=1e-12)
    assert np.isnan(float(tr.lr)) and np.isnan(float(tr.wd))
    big = np.asarray(ref.grad_norm) > 1e-8  # where the tangential step is above round-off
    if lr == 0.002:
        assert big.all()
        np.testing.assert_allclose(tr.eff_lr, ref.eff_lr, rtol=1e-9)
        assert float(np.max(run.fit_residual)) <= 1e-9
    else:
        assert 100 < big.sum() < 1000  # both regimes present
        np.testing.assert_allclose(np.asarray(tr.eff_lr)[big], np.asarray(ref.eff_lr)[big],
                                   rtol=1e-6)  # fmt: skip
        assert float(np.max(np.asarray(run.fit_residual)[big])) <= 1e-6


def test_optax_pytree_w0(toy):
    """A pytree ``w0``: the optimizer sees the pytree (a mask on one leaf), records are flat."""
    loss = lambda p: toy(jnp.concatenate([p["a"], p["b"]]))
    w0 = {"a": W0[:2], "b": W0[2:]}
    ref = eosflow.simulate(loss, w0, 0.002, 0.01, 1000, record_every=10)
    run = simulate_optax(loss, w0, gd_wd(0.002, 0.01), 1000, record_every=10)
    tr = run.trajectory
    assert tr.w.shape == (100, 3)
    assert np.max(np.abs(np.asarray(tr.theta) - np.asarray(ref.theta))) <= 1e-10
    # a structure-dependent optimizer: freeze leaf "b"
    frozen = optax.multi_transform(
        {"train": optax.sgd(0.01), "freeze": optax.set_to_zero()}, {"a": "train", "b": "freeze"}
    )
    out = simulate_optax(loss, w0, frozen, 20, check_invariance=False).trajectory
    np.testing.assert_array_equal(np.asarray(out.w)[:, 2], 0.4)
    assert set(tr.w_final) == {"a", "b"}
    assert run.top_eigvec is None


# ----------------------------------------------------------------------------- measured η̃


def _np_fit(theta, g, w_next):
    """The uncancelled textbook form: p = w_{t+1}/<w_{t+1}, θ> − θ, η̃ = −<p, g>/||g||²."""
    p = w_next / np.dot(w_next, theta) - theta
    eta = -np.dot(p, g) / np.dot(g, g)
    return eta, np.linalg.norm(p + eta * g) / np.linalg.norm(p)


def test_measured_eff_lr_matches_numpy_and_detects_non_pgd(toy):
    run = simulate_optax(toy, W0, optax.adam(0.01), 60)
    tr = run.trajectory
    w = np.asarray(tr.w)
    grad = jax.jit(jax.grad(toy))
    etas, ress = [], []
    for t in range(59):
        theta = w[t] / np.linalg.norm(w[t])
        eta, res = _np_fit(theta, np.asarray(grad(jnp.asarray(theta))), w[t + 1])
        etas.append(eta)
        ress.append(res)
    np.testing.assert_allclose(np.asarray(tr.eff_lr)[:59], etas, rtol=1e-8)
    np.testing.assert_allclose(np.asarray(run.fit_residual)[:59], ress, rtol=1e-6, atol=1e-12)
    assert max(ress) > 1e-2  # Adam's per-coordinate steps are not PGD steps


def test_measured_eff_lr_exact_for_pgd_and_degenerate_cases():
    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.normal(size=7)) * 3.0
    theta = w / jnp.linalg.norm(w)
    g = jnp.asarray(rng.normal(size=7))
    g = g - jnp.dot(g, theta) * theta
    for eta, c in [(0.3, 2.0), (1e-3, 0.5)]:
        v = theta - eta * g
        w_next = c * v / jnp.linalg.norm(v)  # any positive scale of Π(θ − η g)
        e, r = measured_eff_lr(w, w_next - w, g)
        assert abs(float(e) / eta - 1) < 1e-12 and float(r) < 1e-12
    e, r = measured_eff_lr(w, -2.0 * w, g)  # turns θ by 180°: no PGD step does that
    assert (float(e), float(r)) == (0.0, 1.0)
    e, r = measured_eff_lr(w, 0.1 * jnp.roll(w, 1), jnp.zeros(7))  # g = 0: finite
    assert float(e) == 0.0 and np.isfinite(float(r))


# ----------------------------------------------------------------------------- scalar RMSprop

A = jnp.diag(jnp.array([10.0, 3.0, 1.0]))


def quad(w):
    return 0.5 * w @ A @ w


def test_scalar_rmsprop_lr_matches_recurrence():
    eta, beta, eps, v0 = 0.05, 0.9, 1e-10, 0.3
    run = simulate_rmsprop(quad, jnp.array([1.0, -0.5, 2.0]), eta, beta, eps, 300, v0=v0)
    tr = run.trajectory
    w, v, lrs = np.array([1.0, -0.5, 2.0]), v0, []
    Anp = np.diag([10.0, 3.0, 1.0])
    for _ in range(300):
        g = Anp @ w
        v = beta * v + (1 - beta) * g @ g
        lr = eta / np.sqrt(v + eps)
        lrs.append(lr)
        w = w - lr * g
    np.testing.assert_allclose(tr.eff_lr, lrs, rtol=1e-10)
    np.testing.assert_allclose(tr.w_final, w, rtol=1e-9, atol=1e-300)
    assert float(np.max(run.fit_residual)) < 1e-12  # plain GD steps: the fit is exact
    np.testing.assert_allclose(float(run.opt_state.v), v, rtol=1e-10)


def test_scalar_rmsprop_settles_at_edge_of_stability():
    """Gradient → 0 while stable, so ``v`` decays and ``lr_t`` grows (like WD's η̃) until
    ``lr_t λ1 = 2`` (λ1 = 10); from then on ``lr_t λ1`` stays within 10% of 2 and the component
    along ``v1 = e1`` flips sign every step. (Fixed point: ``|w_1| = η/2``, ``lr = 2/λ1``.)"""
    eta, steps = 0.01, 3000
    run = simulate_rmsprop(quad, jnp.array([1.0, 1.0, 1.0]), eta, 0.9, 1e-12, steps)
    tr = run.trajectory
    prod = np.asarray(tr.eff_lr) * 10.0
    assert prod[0] < 0.5
    start = int(np.flatnonzero(prod >= 2.0)[0])  # the oscillation starts (unstable along e1)
    assert 50 < start < steps - 1000
    window = prod[start + 100 :]
    assert np.all(np.abs(window / 2 - 1) <= 0.1)
    assert abs(np.median(window) / 2 - 1) <= 1e-3  # much tighter than required
    w1 = np.asarray(tr.w)[start + 100 :, 0]
    assert np.mean(w1[1:] * w1[:-1] < 0) >= 0.99  # period two along v1
    np.testing.assert_allclose(np.median(np.abs(w1)), eta / 2, rtol=0.05)


def test_plain_sharpness_matches_dense_hessian():
    """A non-quadratic plain loss: the post-hoc Lanczos λ1 at the recorded ``w_t`` equals the
    dense Hessian's top eigenvalue."""
    B = jnp.asarray(np.random.default_rng(1).normal(size=(6, 4)))

    def loss(w):
        r = B @ w - 1.0
        return jnp.mean(r**2) + 0.1 * jnp.sum(w**4)

    run = simulate_optax(loss, jnp.full(4, 0.3), optax.sgd(0.05, momentum=0.5), 200,
                         geometry="plain", record_every=5, sharpness_every=50)  # fmt: skip
    tr = run.trajectory
    lam = np.asarray(tr.sharpness)
    assert np.isfinite(lam[::10]).all() and np.isnan(lam[1])
    assert run.top_eigvec.shape == (4, 4)
    H = jax.jit(jax.vmap(jax.hessian(loss)))(tr.w[::10])
    ev, evec = np.linalg.eigh(np.asarray(H))
    np.testing.assert_allclose(lam[::10], ev[:, -1], rtol=1e-9)
    np.testing.assert_allclose(np.abs(np.sum(run.top_eigvec * evec[:, :, -1], axis=1)), 1.0,
                               rtol=1e-8)  # fmt: skip
    np.testing.assert_allclose(tr.loss, jax.vmap(loss)(tr.w), rtol=1e-12)


def test_rmsprop_hyperparameters_do_not_recompile():
    w0 = jnp.array([1.0, 1.0, 1.0])
    simulate_rmsprop(quad, w0, 0.01, 0.9, 1e-12, 50)
    n = run_compiled._cache_size()
    simulate_rmsprop(quad, w0, 0.02, 0.5, 1e-8, 50, v0=1.0)
    assert run_compiled._cache_size() == n


def test_scalar_rmsprop_is_an_optax_transformation():
    opt = optax.chain(optax.clip_by_global_norm(1.0), scalar_rmsprop(0.1, beta=0.0, eps=0.0))
    g = jnp.array([3.0, 4.0])
    u, _ = opt.update(g, opt.init(jnp.zeros(2)))
    np.testing.assert_allclose(u, -0.1 * g / 5.0)  # clipped to norm 1, then lr = 0.1/1


# ----------------------------------------------------------------------------- errors


def test_bad_input(toy):
    with pytest.raises(ValueError, match="geometry"):
        simulate_optax(toy, W0, optax.sgd(0.1), 10, geometry="flat")
    with pytest.raises(TypeError, match="GradientTransformation"):
        simulate_optax(toy, W0, 0.1, 10)
    with pytest.raises(ValueError, match="beta"):
        scalar_rmsprop(0.1, beta=1.0)
    with pytest.raises(ValueError, match="scale-invariant"):
        simulate_optax(quad, W0, optax.sgd(0.1), 10)  # sphere geometry checks invariance
    with pytest.raises(ValueError, match="steps"):
        simulate_optax(toy, W0, optax.sgd(0.1), 0)


def test_nonfinite_raise_and_return():
    opt = optax.sgd(1e200)
    with pytest.raises(eosflow.NonFiniteError) as e:
        simulate_optax(quad, jnp.array([1.0, 1.0, 1.0]), opt, 20, geometry="plain")
    bad = e.value.step
    assert 0 <= bad < 20
    run = simulate_optax(quad, jnp.array([1.0, 1.0, 1.0]), opt, 20, geometry="plain",
                         on_nonfinite="return")  # fmt: skip
    assert int(run.trajectory.nonfinite_step) == bad
    assert run.trajectory.step.shape[0] == run.fit_residual.shape[0] == bad + 1
