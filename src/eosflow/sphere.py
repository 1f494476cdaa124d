"""Projected GD on the unit sphere with an adaptive effective learning rate: eq. (2), Lemma 3.1.

``θ_{t+1} = Π(θ_t − η̃_t ∇L(θ_t))`` with ``Π(v) = v/||v||``. For GD+WD the effective learning
rate evolves as (THEORY.md; from ``||w_{t+1}||² = (1−η̂λ̂)²||w_t||² + η̂²||∇L(w_t)||²``, which holds
because ``∇L(w) ⊥ w``)::

    1/η̃_{t+1} = (1 − η̂λ̂)² (1/η̃_t + η̃_t ||∇L(θ_t)||²)

so the state ``(θ, η̃)`` alone evolves exactly like GD+WD (:mod:`eosflow.gd`): the two forms agree
to float64 round-off (tested over thousands of steps).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from eosflow.gd import StepInfo

Array = jax.Array

__all__ = ["SphereState", "sphere_step", "gd_wd_eff_lr_update", "norm_from_eff_lr"]


class SphereState(NamedTuple):
    """State of PGD on the sphere: the direction ``θ_t`` (unit, ``(D,)``) and ``η̃_t``."""

    theta: Array
    eff_lr: Array


def gd_wd_eff_lr_update(eff_lr: Array, grad_norm_sq: Array, lr: Array, wd: Array) -> Array:
    """The GD+WD effective-LR rule: ``η̃' = 1 / ((1−lr·wd)² (1/η̃ + η̃ ||∇L(θ)||²))``.

    It grows by ``(1−lr·wd)^{-2}`` per step when the gradient vanishes and shrinks when the
    gradient is large: the "Quasi-RMSprop" behaviour of Section 4.2.3.
    """
    return 1.0 / (jnp.square(1.0 - lr * wd) * (1.0 / eff_lr + eff_lr * grad_norm_sq))


def norm_from_eff_lr(eff_lr: Array, lr: Array, wd: Array) -> Array:
    """Invert Lemma 3.1: the ``||w||`` at which GD+WD has effective learning rate ``η̃``."""
    return jnp.sqrt(lr / ((1.0 - lr * wd) * eff_lr))


def sphere_step(
    loss: Callable[[Array], Array], state: SphereState, lr: Array, wd: Array
) -> tuple[SphereState, StepInfo]:
    """One step of eq. (2) with the GD+WD effective-LR update.

    Returns:
      ``(SphereState at t+1, StepInfo at t)``; ``StepInfo.norm`` is the ``||w_t||`` implied by
      ``η̃_t`` (:func:`norm_from_eff_lr`).
    """
    theta, eta = state
    value, g = jax.value_and_grad(loss)(theta)
    g2 = jnp.sum(jnp.square(g))
    v = theta - eta * g
    new = SphereState(v / jnp.linalg.norm(v), gd_wd_eff_lr_update(eta, g2, lr, wd))
    return new, StepInfo(value, jnp.sqrt(g2), norm_from_eff_lr(eta, lr, wd), eta)
