"""Scale-invariant nets: invariance (joint and per layer; VGG-11 per kernel with gradients),
gradient orthogonality, the no-BN ablations (VGG-11's too) failing the check, Lanczos vs dense
Hessian, train-statistics prediction against a numpy reference, and training to 100% train
accuracy with ``eosflow.simulate``."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import group_masks, invariance_measurements
from jax.flatten_util import ravel_pytree

import eosflow
from eosflow.data import load_digits
from eosflow.nets import (
    MLP,
    VGG,
    VGG11,
    NetLoss,
    batch_normalize,
    cross_entropy,
    init_params,
    make_net_loss,
    vgg_config,
)


@pytest.fixture(scope="module")
def digits():
    return load_digits(seed=0, subset=5, test_subset=3)  # 50 train, 30 test images


INVARIANT = {
    "mlp-swish": MLP(widths=(16, 16)),
    "mlp-gelu-deep": MLP(widths=(12, 10, 8), activation="gelu", logit_scale=2.0),
    "vgg11-width1/32": VGG(config=vgg_config(VGG11, 1 / 32)),
}


def _cosine(net: NetLoss) -> float:
    g = jax.jit(jax.grad(net.loss))(net.w0)
    return float(jnp.abs(g @ net.w0) / (jnp.linalg.norm(g) * jnp.linalg.norm(net.w0)))


@pytest.mark.parametrize("name", list(INVARIANT))
def test_scale_invariant_variants(digits, name):
    net = make_net_loss(INVARIANT[name], digits.x_train, digits.y_train, seed=1)
    chex.assert_type(net.w0, jnp.float64)
    loss = jax.jit(net.loss)
    chex.assert_tree_all_finite(loss(net.w0))
    # relative change of L(cw) vs L(w) for c in (0.37, 2.9, 11): float64 round-off only
    assert eosflow.check_scale_invariance(loss, net.w0) <= 1e-10
    assert eosflow.check_scale_invariance(loss, net.w0, scales=(1e-3, 1e3)) <= 1e-10
    # <∇L(w), w> = 0 (Lemma D.1), as a cosine
    assert _cosine(net) <= 1e-10


def test_invariant_per_layer(digits):
    """Each layer's BN removes that layer's scale: scaling one kernel at a time changes nothing."""
    net = make_net_loss(MLP(widths=(16, 16)), digits.x_train, digits.y_train)
    params = net.unravel(net.w0)
    base = float(net.loss(net.w0))
    names = list(params)
    assert len(names) == 3
    for i, name in enumerate(names):
        scaled = {
            k: v if k != name else jax.tree.map(lambda a, c=3.0 + i: c * a, v)
            for k, v in params.items()
        }
        w, _ = ravel_pytree(scaled)
        chex.assert_trees_all_close(net.loss(w), base, rtol=1e-12, atol=0)


def test_vgg11_invariant_per_layer_group(digits):
    """VGG-11 (width 1/32): each of its 9 kernels is a scale-invariant group: ``L`` unchanged to
    1e-10 relative when one kernel is scaled (by 0.2 or 7), when all are scaled by different
    factors at once, and jointly; ``∇L ⟂ w`` jointly and per group (cosines <= 1e-10)."""
    net = make_net_loss(VGG(config=vgg_config(VGG11, 1 / 32)), digits.x_train, digits.y_train)
    names, masks = group_masks(net.unravel(net.w0))
    assert len(names) == 9 and all(n.endswith("['kernel']") for n in names)
    r = invariance_measurements(net.loss, net.w0, masks)
    assert max(r["joint"].max(), r["group"].max(), r["mixed"].max()) <= 1e-10, r
    assert r["cos_joint"] <= 1e-10
    assert r["cos_group"].max() <= 1e-10, dict(zip(names, r["cos_group"], strict=True))
    assert r["grad_scaling"].max() <= 1e-10, r["grad_scaling"]


@pytest.mark.parametrize(
    "model",
    [
        MLP(widths=(16, 16), bn=False),
        VGG(config=(4, "M"), bn=False),
        VGG(config=vgg_config(VGG11, 1 / 32), bn=False),
    ],
    ids=["mlp", "vgg-1-layer", "vgg11-width1/32"],
)
def test_no_bn_ablation_is_not_invariant(digits, model):
    net = make_net_loss(model, digits.x_train, digits.y_train)
    params = net.unravel(net.w0)
    assert any("bias" in layer for layer in params.values())  # ablation has biases
    assert eosflow.check_scale_invariance(net.loss, net.w0) > 1e-2
    assert _cosine(net) > 1e-3
    with pytest.raises(ValueError, match="not scale-invariant"):
        eosflow.simulate(net.loss, net.w0, 0.1, 0.01, 2)


def test_lanczos_matches_dense_hessian():
    d = load_digits(seed=0, subset=3)  # 30 images
    net = make_net_loss(MLP(widths=(8, 6)), d.x_train, d.y_train, seed=2)
    D = net.w0.shape[0]
    assert 500 <= D <= 2000
    theta = net.w0 / jnp.linalg.norm(net.w0)
    # reference: eigh of the dense jax.hessian; Lanczos (HVPs only) must agree to 1e-6 relative
    lam_dense, v_dense = jax.jit(lambda t: eosflow.dense_top_eigs(net.loss, t, k=2))(theta)
    top = jax.jit(lambda t: eosflow.hessian_top_eigs(net.loss, t, k=2))
    r = top(theta)
    np.testing.assert_allclose(r.eigenvalues, lam_dense, rtol=1e-6)
    assert abs(float(r.eigenvectors[0] @ v_dense[0])) > 1 - 1e-6
    # scale identity of an invariant loss: ∇²L(cθ) = ∇²L(θ)/c² (same compiled function)
    np.testing.assert_allclose(top(5.0 * theta).eigenvalues, lam_dense / 25.0, rtol=1e-6)


@pytest.mark.slow
def test_lanczos_matches_dense_hessian_vgg11():
    """VGG-11 at width 1/64 (channels 1-8, D = 2339), 30 images: spherical sharpness by Lanczos
    against ``eigh`` of the dense ``jax.hessian`` to 1e-9 relative (~40 s of CPU, mostly XLA
    compilation, hence slow)."""
    d = load_digits(seed=0, subset=3)
    net = make_net_loss(VGG(config=vgg_config(VGG11, 1 / 64)), d.x_train, d.y_train, seed=2)
    assert net.w0.shape == (2339,)
    lam, v = eosflow.dense_top_eigs(net.loss, net.w0 / jnp.linalg.norm(net.w0), k=2)
    s = eosflow.spherical_sharpness(net.loss, 5.0 * net.w0)
    np.testing.assert_allclose(s.value, lam[0], rtol=1e-9)
    assert abs(float(s.vector @ v[0])) > 1 - 1e-8


def _numpy_mlp(params, x_train, x):
    """Independent numpy forward pass of MLP(bn=True): BN statistics from ``x_train``."""
    h_tr = np.asarray(x_train).reshape(len(x_train), -1)
    h = np.asarray(x).reshape(len(x), -1)
    layers = [params[k]["kernel"] for k in sorted(params, key=lambda s: int(s.split("_")[1]))]
    for i, W in enumerate(map(np.asarray, layers)):
        a_tr, a = h_tr @ W, h @ W
        mu, sd = a_tr.mean(0), a_tr.std(0)
        a_tr, a = (a_tr - mu) / sd, (a - mu) / sd
        if i < len(layers) - 1:
            swish = lambda u: u / (1 + np.exp(-u))
            h_tr, h = swish(a_tr), swish(a)
    return 4.0 * a


def test_predict_uses_training_statistics(digits):
    net = make_net_loss(MLP(widths=(16, 16), logit_scale=4.0), digits.x_train, digits.y_train)
    w = net.w0
    params = net.unravel(w)
    ref_test = _numpy_mlp(params, digits.x_train, digits.x_test)
    np.testing.assert_allclose(net.predict(w, digits.x_test), ref_test, rtol=1e-10, atol=1e-12)
    ref_train = _numpy_mlp(params, digits.x_train, digits.x_train)
    np.testing.assert_allclose(net.predict(w, digits.x_train), ref_train, rtol=1e-10, atol=1e-12)
    # the training loss is the cross-entropy of those logits; accuracy is the argmax rate
    logp = ref_train - np.log(np.exp(ref_train).sum(1, keepdims=True))
    ce = -logp[np.arange(len(logp)), digits.y_train].mean()
    np.testing.assert_allclose(net.loss(w), ce, rtol=1e-12)
    np.testing.assert_allclose(net.eval_loss(w, digits.x_train, digits.y_train), ce, rtol=1e-12)
    acc = np.mean(ref_test.argmax(1) == digits.y_test)
    np.testing.assert_allclose(net.accuracy(w, digits.x_test, digits.y_test), acc)
    # normalizing the test batch with its own statistics would give different logits
    own = _numpy_mlp(params, digits.x_test, digits.x_test)
    assert np.max(np.abs(own - ref_test)) > 1e-2


def test_batch_normalize_and_errors():
    h = jnp.arange(12.0).reshape(2, 3, 2) ** 1.5
    z, (mu, sd) = batch_normalize(h)
    np.testing.assert_allclose(z.reshape(-1, 2).mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(z.reshape(-1, 2).std(0), 1, rtol=1e-12)
    z2, _ = batch_normalize(h + 1, (mu, sd))
    np.testing.assert_allclose(z2, z + 1 / sd)
    np.testing.assert_allclose(
        cross_entropy(jnp.array([[0.0, 1.0], [2.0, 0.0]]), jnp.array([1, 1])),
        np.mean([np.log(1 + np.e**-1), np.log(1 + np.e**2)]),
    )
    assert vgg_config(VGG11, 0.25)[:3] == (16, "M", 32)
    with pytest.raises(ValueError, match="BN sites"):
        params = init_params(MLP(widths=(4,)), jnp.ones((3, 2)))
        jax.eval_shape(lambda: MLP(widths=(4,)).apply({"params": params}, jnp.ones((3, 2)), ()))
    with pytest.raises(ValueError, match="activation"):
        make_net_loss(MLP(activation="relu"), jnp.ones((4, 2)), jnp.arange(4))
    with pytest.raises(ValueError, match="y must have shape"):
        make_net_loss(MLP(), jnp.ones((4, 2)), jnp.arange(3))


def test_simulate_fits_digits_subset():
    """Full-batch GD+WD on a scale-invariant MLP reaches 100% training accuracy.

    100 training images (10 per class), MLP(32, 32), γ = 2, lr = 0.1, wd = 0.01, 300 steps
    (the fit happens after ~50 steps; see docs/results.md for the long runs).
    """
    d = load_digits(seed=0, subset=10)
    net = make_net_loss(MLP(widths=(32, 32), logit_scale=2.0), d.x_train, d.y_train)
    traj = eosflow.simulate(net.loss, net.w0, 0.1, 0.01, 300, record_every=50)
    assert float(traj.loss[-1]) < float(traj.loss[0])
    assert float(net.accuracy(traj.w_final, d.x_train, d.y_train)) == 1.0
    assert float(net.accuracy(traj.w_final, d.x_test, d.y_test)) > 0.5


def test_init_params_lecun_normal():
    x = jnp.ones((2, 8, 8, 1))
    p = init_params(VGG(config=(32, "M"), bn=False), x, seed=3)
    k = np.asarray(p["Conv_0"]["kernel"])
    chex.assert_shape(k, (3, 3, 1, 32))
    chex.assert_type(k, np.float64)
    np.testing.assert_allclose(k.std(), 1 / 3, rtol=0.15)  # N(0, 1/fan_in), fan_in = 9
    assert np.all(np.asarray(p["Conv_0"]["bias"]) == 0)
    # The same seed gives the same parameters, every leaf bit for bit.
    chex.assert_trees_all_equal(p, init_params(VGG(config=(32, "M"), bn=False), x, seed=3))
    other = init_params(VGG(config=(32, "M"), bn=False), x, seed=4)
    assert not np.array_equal(k, other["Conv_0"]["kernel"])
