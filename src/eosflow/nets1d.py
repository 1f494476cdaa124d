"""A scale-invariant 1-D CNN for sequences (MNIST-1D), built by the recipe of :mod:`eosflow.nets`.

Figure 2 of the paper trains a VGG-11 with BatchNorm "after every linear layer to ensure
scale-invariance" (Section 3). :class:`CNN1D` applies the same recipe, item by item as documented
in :mod:`eosflow.nets`, to ``(N, L, C)`` sequences:

1. every convolution is followed by BatchNorm with full-batch statistics and no epsilon, per
   channel over the batch and the length axis (:func:`eosflow.nets.batch_normalize`), so scaling
   one conv kernel by ``c > 0`` leaves that layer's output exactly unchanged;
2. no biases before BN;
3. no trainable affine in BN;
4. a smooth activation (Swish by default, or GELU);
5. the head of :mod:`eosflow.nets`: flatten, a bias-free ``Dense(K)``, BN on the logits, times the
   fixed inverse temperature ``γ`` (``logit_scale``).

Hence ``L(c·w) = L(w)`` for all parameters jointly and for each layer's kernel separately, and
``<∇L(w), w> = 0`` (Lemma D.1 of the paper), which the spherical sharpness and the effective
learning rate ``η̃ = η/||w||²`` (Lemma 3.1) rely on. Strided convolutions commute with positive
scaling, so the stride does not affect the argument.

The default architecture follows the CNN of Greydanus (2020) for MNIST-1D: three convolutions of
32 channels, kernel 5, stride 2 (length 40 → 20 → 10 → 5), then the linear head; ``bn=False`` is
the ablation (biases, no normalization, a plain linear head with bias), not scale-invariant.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from eosflow.nets import ACTIVATIONS, BNStats, batch_normalize

Array = jax.Array

__all__ = ["CNN1D", "Conv1D"]


class Conv1D(nn.Module):
    """1-D convolution (cross-correlation) with ``SAME`` padding as one matrix product (im2col).

    Equal to ``flax.linen.Conv(features, (kernel_size,), strides=(stride,), padding="SAME")`` —
    same parameters (``kernel`` of shape ``(kernel_size, C_in, features)``, optional ``bias``), same
    padding (XLA's: ``pad = max((L_out − 1)·stride + kernel_size − L, 0)`` with ``L_out =
    ceil(L/stride)``, the odd element at the end) — but built from ``kernel_size`` strided slices and
    one ``einsum``, which XLA on a CPU runs as a matrix product. XLA's CPU convolution is very slow
    in float64: one GD step of :class:`CNN1D` (32 channels) on 4000 sequences took 14.5 s with
    ``nn.Conv`` and 2.1 s with this (float32 ``nn.Conv``: 0.54 s; measured on a loaded 2-core CPU).
    """

    features: int
    kernel_size: int
    stride: int = 1
    use_bias: bool = True

    @nn.compact
    def __call__(self, h: Array) -> Array:
        n, length, c = h.shape
        k, s = self.kernel_size, self.stride
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, c, self.features))
        out = -(-length // s)
        pad = max((out - 1) * s + k - length, 0)
        hp = jnp.pad(h, ((0, 0), (pad // 2, pad - pad // 2), (0, 0)))
        cols = jnp.stack([hp[:, j : j + s * (out - 1) + 1 : s, :] for j in range(k)], axis=2)
        y = jnp.einsum("nlkc,kcf->nlf", cols, kernel.astype(h.dtype))
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(h.dtype)
        return y


class CNN1D(nn.Module):
    """1-D CNN on ``(N, L, C)`` sequences, scale-invariant with ``bn=True`` (module docstring).

    For each entry ``n`` of ``channels``: :class:`Conv1D` ``(n, kernel_size, stride, SAME, no
    bias) → BN (per
    channel over N and L) → act``; then flatten and the head ``Dense(K, no bias) → BN →
    ·logit_scale``. With ``bn=False``: convs and head with biases, no BN.

    Attributes:
      channels: conv channel counts, e.g. ``(32, 32, 32)``.
      kernel_size: conv kernel length (5).
      stride: conv stride (2; ``SAME`` padding, so the length becomes ``ceil(L/stride)``).
      num_classes: ``K``.
      bn: the scale-invariant recipe (default) or the plain ablation.
      activation: ``"swish"`` or ``"gelu"``.
      logit_scale: ``γ``, the fixed scale of the normalized logits (``bn=True`` only).

    ``__call__(x, stats=None) -> (logits (N, K), stats)`` as :class:`eosflow.nets.MLP`: ``stats``
    is the tuple of ``(μ, σ)`` per BN site (``len(channels) + 1`` of them), computed from ``x``
    when not given (so :func:`eosflow.nets.make_net_loss` applies training statistics to test
    data); empty when ``bn=False``.
    """

    channels: Sequence[int] = (32, 32, 32)
    kernel_size: int = 5
    stride: int = 2
    num_classes: int = 10
    bn: bool = True
    activation: str = "swish"
    logit_scale: float = 4.0

    @nn.compact
    def __call__(self, x: Array, stats: Sequence[BNStats] | None = None):
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"CNN1D: unknown activation {self.activation!r}; choose from {sorted(ACTIVATIONS)}"
            )
        if x.ndim != 3:
            raise ValueError(f"CNN1D expects (N, L, C) sequences, got shape {x.shape}")
        if not self.channels or min(self.kernel_size, self.stride, *self.channels) < 1:
            raise ValueError(
                f"CNN1D: channels, kernel_size and stride must be positive, got channels "
                f"{tuple(self.channels)}, kernel_size {self.kernel_size}, stride {self.stride}"
            )
        sites = len(self.channels) + 1
        if self.bn and stats is not None and len(stats) != sites:
            raise ValueError(
                f"CNN1D: got statistics for {len(stats)} BN sites, the net has {sites}"
            )
        act = ACTIVATIONS[self.activation]
        used: list[BNStats] = []

        def norm(h):
            h, s = batch_normalize(h, None if stats is None else stats[len(used)])
            used.append(s)
            return h

        h = x
        for i, n in enumerate(self.channels):
            conv = Conv1D(int(n), self.kernel_size, self.stride, not self.bn, name=f"Conv_{i}")
            h = conv(h)
            h = act(norm(h) if self.bn else h)
        h = h.reshape(h.shape[0], -1)
        z = nn.Dense(self.num_classes, use_bias=not self.bn)(h)
        if self.bn:
            z = self.logit_scale * norm(z)
        return z, tuple(used)
