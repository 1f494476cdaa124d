"""A scale-invariant ResNet-20 (flax linen): the CIFAR ResNet of He et al. 2016, Section 4.2.

The paper repeats Figure 2's experiment with ResNet-20 in Appendix P.2 (ReLU activation, Section
3: "ResNet with ReLU activation also exhibits a sharpness-reduction bias empirically") and makes
VGG and ResNet scale-invariant by "minor changes to the architectures" (Appendix Q.1, not in our
copy of the paper). This module applies the recipe of :mod:`eosflow.nets` (BN after every
conv/linear layer with full-batch statistics and no epsilon, no biases, no trainable affine, the
normalized head ``z = γ·BN(W_out h)``) to He et al.'s architecture:

* **stem**: ``Conv 3x3 (16 channels) → BN → act``;
* **3 stages of 3 basic blocks** with ``16, 32, 64`` channels (times ``width``); the first block of
  stages 2 and 3 has stride 2. A basic block is
  ``act(BN(Conv 3x3(act(BN(Conv 3x3(x))))) + shortcut(x))``;
* **global average pool** over H, W, then the head ``Dense(K, no bias) → BN → ·logit_scale``.

That is 1 + 18 convolutions and one linear layer: 20 weight layers, 268,336 parameters at
``width=1`` on 3-channel images with 10 classes (He et al.'s "0.27M" also counts the 1,376 BN
affine parameters, fixed here).

**Why every layer's weight is a scale-invariant group.** Call ``W_l`` one conv/dense kernel. Its
output enters the net only through ``BN(W_l * h)``, which is unchanged when ``W_l → c W_l`` for
``c > 0`` (``h``, ``μ``, ``σ`` all scale by ``c``). The residual sum adds two such normalized
branches (or a normalized branch and the block input, itself a function of normalized quantities
only), so the block's output is invariant in each of its kernels and in every kernel before it;
average pooling and the normalized head keep that. Hence ``L`` is invariant in each kernel
separately, and so jointly (``L(c w) = L(w)``, and ``<∇_{W_l} L, W_l> = 0`` for every ``l``,
Lemma D.1 applied per group). What would break it: a bias anywhere, a BN affine, or an
unnormalized projection ``W_s x`` on the shortcut (it would scale the sum with ``W_s``).

**Shortcuts where the shape changes** (``shortcut``):

* ``"A"`` (default): He et al.'s option A for CIFAR, ``x[:, ::2, ::2]`` padded with zero channels
  — no parameters, so trivially invariant. This is the architecture whose count is the 0.27M of
  He et al.'s Table 6, and it adds no parameter group that the theory would have to treat.
* ``"B"``: a projection ``BN(Conv 1x1, stride 2 (x))``: two more kernels, each its own invariant
  group because it is normalized before the sum (``proj`` in the block's parameters).

Convolutions pad one pixel on each side (PyTorch's ``padding=1``), so a stride-2 conv sees the
same pixels as the option-A subsampling ``x[:, ::2, ::2]`` (XLA's ``"SAME"`` would pad ``(0, 1)``
instead at stride 2).

**Activation**: ``"swish"`` (default, smooth, as the other nets here, so sharpness is defined
everywhere), ``"relu"`` (the paper's ResNet; ``L`` is then piecewise smooth and autodiff gives
the Hessian of the active piece) or ``"gelu"``.

**Memory** (``remat=True``): each basic block is wrapped in ``nn.remat`` (``jax.checkpoint``), so
the backward pass keeps only the block inputs and recomputes each block's interior (one more
forward pass). Parameter names, and so the flat ``w``, are the same with and without it; values
agree to round-off. Measured (float32, width 1, CIFAR-shaped inputs): the residuals JAX saves for
the gradient shrink 6.1x (453 MB -> 74 MB at 100 images, ``print_saved_residuals``), but on XLA's CPU
backend the compiled gradient's peak barely moves: temporary memory at 1,000 images is 3.34 GB
without and 3.08 GB with remat (the forward pass alone: 0.21 GB). Not measured on a GPU.

**Ablation** (``bn=False``): convolutions and head with biases, no normalization (option B's
projection is a plain 1x1 conv with bias). Not scale-invariant.

Use it as :class:`eosflow.nets.VGG`: ``make_net_loss(ResNet20(width=0.25), x, y)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from eosflow.nets import ACTIVATIONS, BNSites, BNStats

Array = jax.Array

__all__ = ["RESNET20_CHANNELS", "RESNET_ACTIVATIONS", "BasicBlock", "ResNet20", "resnet20_plan"]

#: Channels of the three stages of the CIFAR ResNet (He et al. 2016, Section 4.2).
RESNET20_CHANNELS: tuple[int, int, int] = (16, 32, 64)

#: Activations a ResNet accepts: the smooth ones of :mod:`eosflow.nets` and ReLU.
RESNET_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {**ACTIVATIONS, "relu": nn.relu}

_PAD = ((1, 1), (1, 1))  # PyTorch's padding=1 for 3x3 convs, at stride 1 and 2


def _resnet_activation(name: str) -> Callable[[Array], Array]:
    if name not in RESNET_ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose from {sorted(RESNET_ACTIVATIONS)}")
    return RESNET_ACTIVATIONS[name]


class BasicBlock(nn.Module):
    """He et al.'s basic block, scale-invariant with ``bn=True`` (module docstring).

    ``out = act(BN(conv2(act(BN(conv1(x))))) + shortcut(x))`` with 3x3 convs ``conv1`` (stride
    ``stride``) and ``conv2``; ``shortcut`` is the identity when the shape is kept, else option A
    (subsample, zero-pad channels) or option B (``BN(proj(x))``, a 1x1 conv of stride ``stride``).

    Attributes:
      features: output channels. stride: 1 or 2. shortcut: ``"A"`` or ``"B"``.
      bn, activation: as in :class:`ResNet20`.

    ``__call__(x, stats=None) -> (out, stats used)``: ``stats`` are the ``(μ, σ)`` of this block's
    BN sites in the order conv1, conv2, proj (``None``: computed from ``x``).
    """

    features: int
    stride: int = 1
    shortcut: str = "A"
    bn: bool = True
    activation: str = "swish"

    @nn.compact
    def __call__(self, x: Array, stats: Sequence[BNStats] | None = None):
        act = _resnet_activation(self.activation)
        if self.shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', got {self.shortcut!r}")
        norm = BNSites(stats)
        bias = not self.bn
        h = nn.Conv(self.features, (3, 3), self.stride, _PAD, use_bias=bias, name="conv1")(x)
        h = act(norm(h) if self.bn else h)
        h = nn.Conv(self.features, (3, 3), 1, _PAD, use_bias=bias, name="conv2")(h)
        h = norm(h) if self.bn else h
        if self.stride == 1 and x.shape[-1] == self.features:
            s = x
        elif self.shortcut == "B":
            s = nn.Conv(self.features, (1, 1), self.stride, 0, use_bias=bias, name="proj")(x)
            s = norm(s) if self.bn else s
        else:
            s = _option_a(x, self.stride, self.features)
        return act(h + s), tuple(norm.used)


def _option_a(x: Array, stride: int, features: int) -> Array:
    """He et al.'s option A shortcut: ``x[:, ::stride, ::stride]``, channels zero-padded
    (half the new channels before, half after, as the common PyTorch CIFAR ResNets do)."""
    extra = features - x.shape[-1]
    if extra < 0:
        raise ValueError(f"option-A shortcut cannot reduce channels ({x.shape[-1]} -> {features})")
    x = x[:, ::stride, ::stride, :]
    return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))


def resnet20_plan(width: float = 1.0, shortcut: str = "A") -> tuple[dict[str, Any], ...]:
    """The nine basic blocks of ResNet-20 as data: ``name``, ``c_in`` (input channels), ``features``,
    ``stride`` and ``sites`` (its number of BN sites: 2, or 3 with a projection).

    Channels are ``RESNET20_CHANNELS`` times ``width``, rounded, at least 1.
    """
    if not width > 0:
        raise ValueError(f"width multiplier must be > 0, got {width}")
    if shortcut not in ("A", "B"):
        raise ValueError(
            f"shortcut must be 'A' (zero-padding) or 'B' (projection), got {shortcut!r}"
        )
    channels = [max(1, round(c * width)) for c in RESNET20_CHANNELS]
    plan, c_in = [], channels[0]
    for s, c in enumerate(channels):
        for b in range(3):
            stride = 2 if s > 0 and b == 0 else 1
            proj = shortcut == "B" and (stride != 1 or c_in != c)
            name = f"stage{s + 1}_block{b}"
            plan.append(dict(name=name, c_in=c_in, features=c, stride=stride, sites=2 + proj))
            c_in = c
    return tuple(plan)


class ResNet20(nn.Module):
    """ResNet-20 for NHWC images (He et al. 2016, CIFAR), scale-invariant with ``bn=True``.

    Architecture, invariance argument and shortcut choice: module docstring. Parameters are named
    ``stem``, ``stage{1,2,3}_block{0,1,2}`` (each with ``conv1``, ``conv2`` and, for option B at a
    shape change, ``proj``) and ``head``; every ``kernel`` is one scale-invariant group.

    Attributes:
      num_classes: ``K``.
      width: channel multiplier (``16, 32, 64`` times ``width``, rounded, at least 1).
      bn: the scale-invariant recipe (default) or the plain ablation.
      activation: ``"swish"`` (default), ``"relu"`` (the paper's ResNet) or ``"gelu"``.
      logit_scale: ``γ``, the fixed scale of the normalized logits (``bn=True`` only).
      shortcut: ``"A"`` (zero-padding, default) or ``"B"`` (1x1 conv + BN projection).
      remat: rematerialize each block in the backward pass (``nn.remat``); same values.

    ``__call__(x, stats=None) -> (logits (N, K), stats)`` as :class:`eosflow.nets.MLP`: ``stats``
    holds ``(μ, σ)`` per BN site (stem, the blocks in order, head), computed from ``x`` when not
    given, and is empty with ``bn=False``.
    """

    num_classes: int = 10
    width: float = 1.0
    bn: bool = True
    activation: str = "swish"
    logit_scale: float = 4.0
    shortcut: str = "A"
    remat: bool = False

    @nn.compact
    def __call__(self, x: Array, stats: Sequence[BNStats] | None = None):
        act = _resnet_activation(self.activation)
        if x.ndim != 4:
            raise ValueError(f"ResNet20 expects NHWC images, got shape {x.shape}")
        plan = resnet20_plan(self.width, self.shortcut)
        n_sites = 2 + sum(p["sites"] for p in plan)
        if self.bn and stats is not None and len(stats) != n_sites:
            raise ValueError(
                f"ResNet20: got statistics for {len(stats)} BN sites, the net has {n_sites}"
            )
        norm = BNSites(stats)
        h = nn.Conv(plan[0]["c_in"], (3, 3), 1, _PAD, use_bias=not self.bn, name="stem")(x)
        h = act(norm(h) if self.bn else h)
        block = nn.remat(BasicBlock) if self.remat else BasicBlock
        for p in plan:
            k = len(norm.used)
            given = None if stats is None or not self.bn else tuple(stats[k : k + p["sites"]])
            h, used = block(
                p["features"], p["stride"], self.shortcut, self.bn, self.activation, name=p["name"]
            )(h, given)
            norm.used.extend(used)
        h = jnp.mean(h, axis=(1, 2))
        z = nn.Dense(self.num_classes, use_bias=not self.bn, name="head")(h)
        if self.bn:
            z = self.logit_scale * norm(z)
        return z, tuple(norm.used)
