"""The scale-invariant 1-D CNN (:class:`eosflow.CNN1D`) on MNIST-1D: invariance jointly and per
layer, gradient orthogonal to ``w``, the forward pass against an independent numpy convolution,
Lanczos spherical sharpness against the dense Hessian, and the no-BN ablation failing the check."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import eosflow
from eosflow.data import load_mnist1d
from eosflow.nets import make_net_loss
from eosflow.nets1d import CNN1D, Conv1D


@pytest.fixture(scope="module")
def seqs():
    return load_mnist1d(subset=4, test_subset=2)  # 40 train, 20 test sequences of length 40


SCALES = (0.37, 2.9, 11.0, 1e-3, 1e3)


def _invariance_and_cosine(net, w=None):
    """``max_c |L(cw) − L(w)| / |L(w)|`` over :data:`SCALES` and ``|cos(∇L(w), w)|``, from one
    compiled ``value_and_grad`` (compiling a conv net is the slow part of these tests on a CPU)."""
    w = net.w0 if w is None else w
    vg = jax.jit(jax.value_and_grad(net.loss))
    base, g = vg(w)
    rel = max(abs(float(vg(c * w)[0]) - float(base)) / abs(float(base)) for c in SCALES)
    return rel, float(jnp.abs(g @ w) / (jnp.linalg.norm(g) * jnp.linalg.norm(w)))


@pytest.mark.parametrize(
    "model",
    [CNN1D(), CNN1D(channels=(6, 5), kernel_size=3, stride=1, activation="gelu", logit_scale=2.0)],
    ids=["default", "narrow-gelu-stride1"],
)
def test_cnn1d_is_scale_invariant(seqs, model):
    net = make_net_loss(model, seqs.x_train, seqs.y_train, seed=1)
    chex.assert_type(net.w0, jnp.float64)
    params = net.unravel(net.w0)
    assert all(list(layer) == ["kernel"] for layer in params.values())  # no biases
    # relative change of L(cw) vs L(w), c from 1e-3 to 1e3: float64 round-off only
    rel, cos = _invariance_and_cosine(net)
    assert rel <= 1e-10
    assert cos <= 1e-10  # <∇L(w), w> = 0 (Lemma D.1)
    # per layer: scaling one kernel at a time changes nothing either (same compiled loss)
    loss = jax.jit(net.loss)
    base = float(loss(net.w0))
    for i, name in enumerate(params):
        scaled = {
            k: {"kernel": (0.2 + 3 * i) * v["kernel"]} if k == name else v
            for k, v in params.items()
        }
        w, _ = ravel_pytree(scaled)
        np.testing.assert_allclose(float(loss(w)), base, rtol=1e-10, atol=0)


def _conv_same(h, kernel, stride):
    """Independent numpy 1-D cross-correlation with XLA's SAME padding (extra pad at the end)."""
    n, length, _ = h.shape
    k = kernel.shape[0]
    out = -(-length // stride)
    pad = max((out - 1) * stride + k - length, 0)
    hp = np.pad(h, ((0, 0), (pad // 2, pad - pad // 2), (0, 0)))
    cols = np.stack([hp[:, i * stride : i * stride + k, :] for i in range(out)], axis=1)
    return np.einsum("nokc,kcd->nod", cols, kernel)


def _numpy_cnn1d(params, x_train, x, stride, gamma):
    """Forward pass of CNN1D(bn=True) in numpy, BN statistics from ``x_train``."""
    h_tr, h = np.asarray(x_train), np.asarray(x)
    swish = lambda u: u / (1 + np.exp(-u))
    convs = sorted((k for k in params if k.startswith("Conv")), key=lambda s: int(s[5:]))
    for name in convs:
        W = np.asarray(params[name]["kernel"])
        a_tr, a = _conv_same(h_tr, W, stride), _conv_same(h, W, stride)
        mu, sd = a_tr.mean(axis=(0, 1)), a_tr.std(axis=(0, 1))
        h_tr, h = swish((a_tr - mu) / sd), swish((a - mu) / sd)
    W = np.asarray(params["Dense_0"]["kernel"])
    z_tr, z = h_tr.reshape(len(h_tr), -1) @ W, h.reshape(len(h), -1) @ W
    return gamma * (z - z_tr.mean(0)) / z_tr.std(0)


@pytest.mark.parametrize("stride", [2, 1])
def test_cnn1d_forward_matches_numpy(seqs, stride):
    model = CNN1D(channels=(5, 7, 3), stride=stride, logit_scale=3.0)
    net = make_net_loss(model, seqs.x_train, seqs.y_train, seed=4)
    params = net.unravel(net.w0)
    assert params["Dense_0"]["kernel"].shape == ((5 if stride == 2 else 40) * 3, 10)
    ref = _numpy_cnn1d(params, seqs.x_train, seqs.x_test, stride, 3.0)
    np.testing.assert_allclose(net.predict(net.w0, seqs.x_test), ref, rtol=1e-10, atol=1e-12)
    ref_tr = _numpy_cnn1d(params, seqs.x_train, seqs.x_train, stride, 3.0)
    logp = ref_tr - np.log(np.exp(ref_tr).sum(1, keepdims=True))
    ce = -logp[np.arange(len(logp)), seqs.y_train].mean()
    np.testing.assert_allclose(float(net.loss(net.w0)), ce, rtol=1e-12)


@pytest.mark.parametrize("k, stride, length", [(5, 2, 40), (3, 1, 9), (4, 3, 11), (1, 2, 7)])
def test_conv1d_matches_flax_conv(k, stride, length):
    """The im2col convolution against ``flax.linen.Conv`` (XLA's convolution) and numpy."""
    import flax.linen as nn

    rng = np.random.default_rng(k + stride)
    x = rng.standard_normal((3, length, 2))
    params = {"kernel": rng.standard_normal((k, 2, 4)), "bias": rng.standard_normal(4)}
    ours = Conv1D(4, k, stride).apply({"params": params}, x)
    ref = nn.Conv(4, (k,), strides=(stride,), padding="SAME").apply({"params": params}, x)
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        ours, _conv_same(x, params["kernel"], stride) + params["bias"], rtol=1e-12, atol=1e-12
    )


def test_cnn1d_lanczos_matches_dense_hessian(seqs):
    net = make_net_loss(CNN1D(channels=(4, 4)), seqs.x_train, seqs.y_train, seed=3)
    D = net.w0.shape[0]
    assert 300 <= D <= 1000
    theta = net.w0 / jnp.linalg.norm(net.w0)
    # reference: eigh of the dense jax.hessian; Lanczos (HVPs only) must agree to 1e-6 relative
    lam_dense, v_dense = jax.jit(lambda t: eosflow.dense_top_eigs(net.loss, t, k=2))(theta)
    top = jax.jit(lambda t: eosflow.hessian_top_eigs(net.loss, t, k=2))
    r = top(theta)
    np.testing.assert_allclose(r.eigenvalues, lam_dense, rtol=1e-6)
    assert abs(float(r.eigenvectors[0] @ v_dense[0])) > 1 - 1e-6
    # scale identity of an invariant loss: ∇²L(cθ) = ∇²L(θ)/c² (same compiled function)
    np.testing.assert_allclose(top(5.0 * theta).eigenvalues, lam_dense / 25.0, rtol=1e-6)


def test_cnn1d_no_bn_is_not_invariant(seqs):
    net = make_net_loss(CNN1D(channels=(8, 8), bn=False), seqs.x_train, seqs.y_train)
    params = net.unravel(net.w0)
    assert all("bias" in layer for layer in params.values())
    rel, cos = _invariance_and_cosine(net)
    assert rel > 1e-2 and cos > 1e-3


def test_cnn1d_bad_input(seqs):
    with pytest.raises(ValueError, match=r"\(N, L, C\)"):
        make_net_loss(CNN1D(), seqs.x_train[..., 0], seqs.y_train)
    with pytest.raises(ValueError, match="activation"):
        make_net_loss(CNN1D(activation="relu"), seqs.x_train, seqs.y_train)
    with pytest.raises(ValueError, match="positive"):
        make_net_loss(CNN1D(stride=0), seqs.x_train, seqs.y_train)
    net = make_net_loss(CNN1D(), seqs.x_train, seqs.y_train)
    with pytest.raises(ValueError, match="BN sites"):
        net.model.apply({"params": net.unravel(net.w0)}, seqs.x_test, ((0.0, 1.0),))
