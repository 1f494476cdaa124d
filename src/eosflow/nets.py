"""Scale-invariant neural networks (flax linen) for full-batch GD+WD: the setting of Figure 2.

The paper trains a smooth VGG-11 with BatchNorm "after every linear layer to ensure
scale-invariance" (Figure 2, Section 3); its recipe (Appendix Q.1) is not available, so this module
documents ours. A net built here with ``bn=True`` has a training loss ``L(w)`` that is invariant
under ``w -> c w`` for every ``c > 0`` — for *all* parameters jointly, and in fact for each layer's
weight separately:

1. **Every linear/conv layer is followed by BatchNorm** with full-batch statistics:
   ``BN(h) = (h - μ) / σ`` per feature (per channel for convolutions, the mean and *population*
   std over the batch and, for convolutions, the spatial axes). Scaling that layer's weight by
   ``c`` scales ``h``, ``μ`` and ``σ`` by ``c``, so ``BN(h)`` is unchanged exactly. There is **no
   epsilon** inside the square root (it would break exact invariance; Section 5 of the paper does
   the same) — a feature that is constant over the batch gives ``σ = 0`` and NaN, which random
   weights and non-degenerate data avoid.
2. **No biases** before BN (BN would cancel them; they would also not scale with ``c``).
3. **No trainable affine** in BN: the scale is 1 and the shift 0, fixed, not in the parameter
   vector (a trainable scale would be a parameter the loss is not invariant in).
4. **A smooth activation**, Swish (``x·sigmoid(x)``, as the paper's VGG-11) by default, or GELU,
   so the loss is twice differentiable and sharpness is defined everywhere.
5. **The head keeps the loss invariant**: a bias-free linear layer to the ``K`` logits, then BN on
   the logits (each logit standardized over the batch) times a fixed scale ``γ``
   (``logit_scale``): ``z = γ·BN(W_out h)``. ``γ`` is a hyperparameter, the inverse *temperature*
   of the softmax: every logit column has batch mean 0 and batch std ``γ``, which bounds the
   margins, so the cross-entropy cannot go to 0 (with ``K`` balanced classes, logits that are
   two-valued per column, ``γ√(K−1)`` on the class and ``−γ/√(K−1)`` off it, have margin
   ``γK/√(K−1)`` and loss ``log(1 + (K−1) exp(−γK/√(K−1)))``: ``1.4e-5`` at ``γ = 4, K = 10``).
   Larger ``γ`` allows a smaller loss and a sharper landscape.

Max-pooling commutes with positive scaling, so it does not affect the argument (it sits after the
activation anyway). The loss is the mean cross-entropy on the fixed full training batch.

**Statistics for other data.** BN statistics are always those of the *training* batch — the
analogue of Section 5's ``μ_1, σ_1`` "over the whole training set" — never running averages. A
forward pass returns the statistics it used; :func:`make_net_loss` computes them on the training
batch and applies them to the test batch (two passes), so ``accuracy(w, x_test, y_test)``
normalizes with training statistics.

**Ablation** (``bn=False``): Dense/Conv layers with biases, no normalization, a plain linear head
with bias. That loss is *not* scale-invariant (``check_scale_invariance`` returns order-one
changes), which is the point of Figure 2's "remove BN" ablation.

Memory: the full-batch loss needs the whole training batch in one forward pass; on a CPU use a
data subset (:mod:`eosflow.data`) and a width multiplier. The training data is closed over by the
loss, so a jitted simulation embeds it as a constant.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

Array = jax.Array
PyTree = Any

__all__ = [
    "BNSites",
    "VGG11",
    "MLP",
    "VGG",
    "NetLoss",
    "ACTIVATIONS",
    "batch_normalize",
    "cross_entropy",
    "init_params",
    "make_net_loss",
    "vgg_config",
]

#: The VGG-11 feature configuration (numbers are conv channels, ``"M"`` a 2x2 max-pool).
VGG11: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")

#: Smooth activations by name.
ACTIVATIONS: dict[str, Callable[[Array], Array]] = {"swish": nn.swish, "gelu": nn.gelu}

#: Statistics used by one BN site: ``(μ, σ)``, each of shape ``(features,)``.
BNStats = tuple[Array, Array]


def batch_normalize(h: Array, stats: BNStats | None = None) -> tuple[Array, BNStats]:
    """BatchNorm without affine or epsilon: ``(h − μ)/σ`` per feature (last axis).

    ``μ`` and ``σ`` (population std) are taken over all axes but the last — the batch, and the
    spatial axes of NHWC conv activations — unless ``stats = (μ, σ)`` is given, in which case
    those are used (e.g. training statistics applied to test data).

    Returns:
      ``(normalized h, (μ, σ))`` with ``μ, σ`` of shape ``(h.shape[-1],)``.
    """
    if stats is None:
        axes = tuple(range(h.ndim - 1))
        mu = jnp.mean(h, axis=axes)
        sigma = jnp.sqrt(jnp.mean(jnp.square(h - mu), axis=axes))
        stats = (mu, sigma)
    mu, sigma = stats
    return (h - mu) / sigma, stats


class BNSites:
    """The BN sites of one forward pass: hands out the supplied statistics site by site (or
    computes full-batch ones when ``stats`` is ``None``) and collects the ones used."""

    def __init__(self, stats: Sequence[BNStats] | None):
        self.given = stats
        self.used: list[BNStats] = []

    def __call__(self, h: Array) -> Array:
        s = None if self.given is None else self.given[len(self.used)]
        h, s = batch_normalize(h, s)
        self.used.append(s)
        return h


def _activation(name: str) -> Callable[[Array], Array]:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose from {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def _check_stats(stats, expected: int, where: str) -> None:
    if stats is not None and len(stats) != expected:
        raise ValueError(
            f"{where}: got statistics for {len(stats)} BN sites, the net has {expected}"
        )


class MLP(nn.Module):
    """Multilayer perceptron, scale-invariant with ``bn=True`` (recipe in the module docstring).

    ``x`` (any shape with leading batch axis; flattened) → for each width ``n``:
    ``Dense(n, no bias) → BN → act`` → ``Dense(K, no bias) → BN → ·logit_scale``.
    With ``bn=False``: ``Dense(n) + bias → act`` → ``Dense(K) + bias`` (not scale-invariant).

    Attributes:
      widths: hidden layer widths, e.g. ``(32, 32)``.
      num_classes: ``K``.
      bn: use the scale-invariant recipe (default) or the plain ablation.
      activation: ``"swish"`` or ``"gelu"``.
      logit_scale: ``γ``, the fixed scale of the normalized logits (``bn=True`` only).

    ``__call__(x, stats=None) -> (logits (N, K), stats)``: ``stats`` is the tuple of ``(μ, σ)``
    per BN site, computed from ``x`` when not given (empty when ``bn=False``).
    """

    widths: Sequence[int] = (32, 32)
    num_classes: int = 10
    bn: bool = True
    activation: str = "swish"
    logit_scale: float = 4.0

    @nn.compact
    def __call__(self, x: Array, stats: Sequence[BNStats] | None = None):
        act = _activation(self.activation)
        if self.bn:
            _check_stats(stats, len(self.widths) + 1, "MLP")
        norm = BNSites(stats)
        h = x.reshape(x.shape[0], -1)
        for n in self.widths:
            h = nn.Dense(n, use_bias=not self.bn)(h)
            h = act(norm(h) if self.bn else h)
        z = nn.Dense(self.num_classes, use_bias=not self.bn)(h)
        if self.bn:
            z = self.logit_scale * norm(z)
        return z, tuple(norm.used)


def vgg_config(config: Sequence[int | str], width: float = 1.0) -> tuple[int | str, ...]:
    """Scale the channel counts of a VGG configuration by ``width`` (rounded, at least 1)."""
    if width <= 0:
        raise ValueError(f"width multiplier must be > 0, got {width}")
    return tuple(c if c == "M" else max(1, round(c * width)) for c in config)


class VGG(nn.Module):
    """VGG-style CNN on NHWC images, scale-invariant with ``bn=True``.

    Features: for each entry of ``config``, an integer ``n`` is ``Conv 3x3 (n channels, SAME, no
    bias) → BN (per channel over N, H, W) → act``; ``"M"`` is a 2x2 max-pool with stride 2 and SAME
    padding (identical to VALID on even sizes such as CIFAR-10's 32x32; on 8x8 digits the later
    pools of VGG-11 act on 1x1 maps and do nothing). Then global flattening and the head
    ``Dense(K, no bias) → BN → ·logit_scale`` as in :class:`MLP` (VGG-11 for CIFAR-10 ends at 1x1x512,
    so this is the usual single linear classifier). ``bn=False``: convs and head with biases, no BN.

    Attributes:
      config: layer configuration; :data:`VGG11` by default. Use :func:`vgg_config` for a width
        multiplier.
      num_classes, bn, activation, logit_scale: as in :class:`MLP`.

    ``__call__(x, stats=None) -> (logits, stats)`` as in :class:`MLP`.
    """

    config: Sequence[int | str] = VGG11
    num_classes: int = 10
    bn: bool = True
    activation: str = "swish"
    logit_scale: float = 4.0

    @nn.compact
    def __call__(self, x: Array, stats: Sequence[BNStats] | None = None):
        act = _activation(self.activation)
        if x.ndim != 4:
            raise ValueError(f"VGG expects NHWC images, got shape {x.shape}")
        if self.bn:
            _check_stats(stats, sum(c != "M" for c in self.config) + 1, "VGG")
        norm = BNSites(stats)
        h = x
        for c in self.config:
            if c == "M":
                h = nn.max_pool(h, (2, 2), strides=(2, 2), padding="SAME")
            else:
                h = nn.Conv(int(c), (3, 3), padding="SAME", use_bias=not self.bn)(h)
                h = act(norm(h) if self.bn else h)
        h = h.reshape(h.shape[0], -1)
        z = nn.Dense(self.num_classes, use_bias=not self.bn)(h)
        if self.bn:
            z = self.logit_scale * norm(z)
        return z, tuple(norm.used)


def cross_entropy(logits: Array, y: Array) -> Array:
    """Mean softmax cross-entropy ``mean_i [logsumexp(z_i) − z_{i, y_i}]`` for integer labels."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None].astype(jnp.int32), axis=-1))


class NetLoss(NamedTuple):
    """A network's training loss on a flat parameter vector, and evaluation helpers.

    Attributes:
      loss: ``loss(w) -> scalar``, the mean cross-entropy on the training batch; ``w`` is the flat
        ``(D,)`` vector of all trainable parameters (``ravel_pytree`` order). Scale-invariant when
        the model has ``bn=True``.
      w0: ``(D,)`` initial flat parameters.
      unravel: ``unravel(w) -> params`` pytree (the ``"params"`` collection of the flax model).
      predict: ``predict(w, x) -> (N, K)`` logits for any inputs ``x``, normalized with the
        *training-batch* BN statistics at ``w``.
      accuracy: ``accuracy(w, x, y) -> scalar``, fraction of ``argmax predict(w, x) == y``.
      eval_loss: ``eval_loss(w, x, y) -> scalar``, cross-entropy of ``predict(w, x)``.
      model: the flax module.
    """

    loss: Callable[[Array], Array]
    w0: Array
    unravel: Callable[[Array], PyTree]
    predict: Callable[[Array, Array], Array]
    accuracy: Callable[[Array, Array, Array], Array]
    eval_loss: Callable[[Array, Array, Array], Array]
    model: nn.Module


def init_params(model: nn.Module, x: Array, seed: int = 0, dtype=None) -> PyTree:
    """Initial parameters of ``model`` for inputs shaped like ``x``, drawn with numpy.

    Structure and shapes come from ``jax.eval_shape(model.init, ...)`` (no computation). Every
    ``kernel`` (Dense ``(fan_in, out)``, Conv ``(kh, kw, c_in, out)``) is LeCun-normal,
    i.e. i.i.d. ``N(0, 1/fan_in)`` with ``fan_in`` the product of all but the last axis, drawn from
    ``numpy.random.default_rng(seed)`` in the order of ``jax.tree_util`` leaves; every ``bias`` is
    0. This matches flax's defaults up to truncation (flax truncates the normal at 2 std), and
    avoids compiling ``jax.random`` initializers, which takes tens of seconds per model with XLA on
    a CPU. For a scale-invariant net the scale of ``w0`` only sets ``η̃_0`` (Lemma 3.1).

    Returns:
      the ``"params"`` pytree, leaves in ``dtype`` (default JAX's default float).
    """
    dtype = jnp.result_type(float) if dtype is None else dtype
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)["params"]
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = getattr(path[-1], "key", str(path[-1]))
        if name == "bias":
            return jnp.zeros(leaf.shape, dtype)
        if name != "kernel":
            raise ValueError(f"init_params: unexpected parameter {jax.tree_util.keystr(path)}")
        fan_in = int(np.prod(leaf.shape[:-1]))
        return jnp.asarray(rng.standard_normal(leaf.shape) / np.sqrt(fan_in), dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def make_net_loss(
    model: nn.Module,
    x: Array,
    y: Array,
    *,
    seed: int = 0,
    dtype=None,
) -> NetLoss:
    """Build the full-batch cross-entropy loss of ``model`` on ``(x, y)`` as a function of flat ``w``.

    ``L(w) = mean_i CE(f(x_i; w), y_i)`` where ``f`` is ``model`` with BN statistics from the whole
    batch ``x`` (recipe in the module docstring). Parameters are initialized by ``model.init`` with
    ``seed`` by :func:`init_params` in ``dtype``; ``x`` is cast to ``dtype`` too.

    Args:
      model: an :class:`MLP` or :class:`VGG` (any linen module with the same call signature
        ``(x, stats=None) -> (logits, stats)``).
      x: ``(N, ...)`` training inputs; ``y``: ``(N,)`` integer labels in ``[0, K)``.
      seed: integer seed of the initialization (:func:`init_params`).
      dtype: parameter/compute dtype; default ``x``'s floating dtype, or JAX's default float.

    Returns:
      a :class:`NetLoss`.

    Example:
      >>> import jax.numpy as jnp, eosflow
      >>> from eosflow.nets import MLP, make_net_loss
      >>> x = jnp.linspace(-1, 1, 40).reshape(20, 2); y = jnp.arange(20) % 2
      >>> net = make_net_loss(MLP(widths=(4,), num_classes=2), x, y)
      >>> eosflow.check_scale_invariance(net.loss, net.w0) < 1e-5
      True
    """
    if dtype is None:
        xd = jnp.asarray(x).dtype
        dtype = xd if jnp.issubdtype(xd, jnp.floating) else jnp.result_type(float)
    x = jnp.asarray(x, dtype)
    y = jnp.asarray(y)
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"make_net_loss: y must have shape ({x.shape[0]},), got {y.shape}")
    if not jnp.issubdtype(y.dtype, jnp.integer):
        raise TypeError(f"make_net_loss: labels must be integers, got {y.dtype}")
    params = init_params(model, x[:2], seed, dtype)
    w0, unravel = ravel_pytree(params)

    def forward(w, inputs, stats=None):
        return model.apply({"params": unravel(w)}, inputs, stats)

    def loss(w: Array) -> Array:
        logits, _ = forward(w, x)
        return cross_entropy(logits, y)

    def predict(w: Array, inputs: Array) -> Array:
        _, stats = forward(w, x)
        logits, _ = forward(w, jnp.asarray(inputs, dtype), stats)
        return logits

    def accuracy(w: Array, inputs: Array, labels: Array) -> Array:
        return jnp.mean(jnp.argmax(predict(w, inputs), axis=-1) == jnp.asarray(labels))

    def eval_loss(w: Array, inputs: Array, labels: Array) -> Array:
        return cross_entropy(predict(w, inputs), jnp.asarray(labels))

    return NetLoss(loss, w0, unravel, predict, accuracy, eval_loss, model)
