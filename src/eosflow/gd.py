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

__all__ = ["GDState", "GDWDHparams", "StepInfo", "gd_wd_step", "effective_lr", "update_is_finite"]


class GDState(NamedTuple):
    """State of GD+WD: the flat parameter vector ``w_t`` (shape ``(D,)``)."""

    w: Array


class GDWDHparams(NamedTuple):
    """Hyperparameters of GD+WD, eq. (1): learning rate ``η̂ = lr`` and weight decay ``λ̂ = wd``."""

    lr: Array
    wd: Array


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


def update_is_finite(info: StepInfo, lr: Array, wd: Array) -> Array:
    """Whether the step that produced ``info`` was finite: ``w_t``, ``∇L(w_t)``, ``L`` and the
    new iterate ``w_{t+1}`` of eq. (1) — decided from the step's scalars, without another pass
    over ``w``.

    ``norm = ||w_t||`` is finite iff ``w_t`` is (NaN and Inf propagate through the sum of
    squares), ``grad_norm = ||w_t||·||∇L(w_t)||`` then iff the gradient is, and every entry of
    ``w_{t+1} = (1 − lr·wd) w_t − lr ∇L(w_t)`` is bounded by ``(1 − lr·wd)||w_t|| + lr||∇L(w_t)||``,
    so the update cannot overflow while twice that bound is finite. Conservative only where
    norms approach the largest float (``~1e154`` for the sum of squares, ``~1e308`` here), where a
    run has long diverged. Used by the simulator's non-finite guard: a full ``isfinite`` pass over
    the new iterate cost 10-20 µs per step at ``D = 5000`` on a 2-core CPU.
    """
    gnorm = info.grad_norm / info.norm
    bound = 2.0 * ((1.0 - lr * wd) * info.norm + lr * gnorm)
    return jnp.isfinite(info.loss) & jnp.isfinite(info.grad_norm) & jnp.isfinite(bound)
