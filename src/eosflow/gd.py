"""Gradient descent with weight decay, eq. (1) of the paper.

``w_{t+1} = (1 − η̂λ̂) w_t − η̂ ∇L(w_t)`` with learning rate ``η̂ = lr`` and weight decay
``λ̂ = wd``, ``0 <= lr·wd < 1``. On a scale-invariant loss this is projected GD on the unit sphere
with effective learning rate ``η̃_t = lr / ((1 − lr·wd) ||w_t||²)`` (Lemma 3.1; see
:mod:`eosflow.sphere`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array

__all__ = ["GDState", "StepInfo", "gd_wd_step", "effective_lr"]


class GDState(NamedTuple):
    """State of GD+WD: the flat parameter vector ``w_t`` (shape ``(D,)``)."""

    w: Array


class StepInfo(NamedTuple):
    """Diagnostics of one step, all evaluated at ``w_t`` (before the update).

    Attributes:
      loss: ``L(w_t) = L(θ_t)``.
      grad_norm: ``||∇L(θ_t)|| = ||w_t|| · ||∇L(w_t)||`` (the gradient on the unit sphere).
      norm: ``||w_t||``.
      eff_lr: ``η̃_t = lr / ((1 − lr·wd) ||w_t||²)``.
    """

    loss: Array
    grad_norm: Array
    norm: Array
    eff_lr: Array


def effective_lr(norm: Array, lr: Array, wd: Array) -> Array:
    """Lemma 3.1: ``η̃ = lr / ((1 − lr·wd) ||w||²)``."""
    return lr / ((1.0 - lr * wd) * jnp.square(norm))


def gd_wd_step(
    loss: Callable[[Array], Array], state: GDState, lr: Array, wd: Array
) -> tuple[GDState, StepInfo]:
    """One step of GD+WD, eq. (1): ``w ← (1 − lr·wd) w − lr ∇L(w)``.

    Args:
      loss: scale-invariant loss on flat vectors.
      state: :class:`GDState` at step t.
      lr, wd: learning rate ``η̂`` and weight decay ``λ̂`` (traced scalars).

    Returns:
      ``(GDState at t+1, StepInfo at t)``.
    """
    w = state.w
    value, g = jax.value_and_grad(loss)(w)
    norm = jnp.linalg.norm(w)
    info = StepInfo(value, norm * jnp.linalg.norm(g), norm, effective_lr(norm, lr, wd))
    return GDState((1.0 - lr * wd) * w - lr * g), info
