"""Effective-learning-rate schedulers for the sphere form, eq. (2): the "Quasi-RMSprop" family.

Projected GD on the unit sphere, ``θ_{t+1} = Π(θ_t − η̃_t ∇L(θ_t))``, with the effective learning
rate ``η̃_t`` produced by a pluggable rule. The paper (Section 4.2.3; Appendix B, which we do not
have) says its analysis covers any rule that behaves like GD+WD's — ``η̃`` *grows when the gradient
is small and shrinks when it is large* — and calls such rules Quasi-RMSprop. This module makes the
rule data: an :class:`EffLRScheduler` is a pair of pure functions, in optax's shape::

    state = init(eff_lr0, hparams)                    # η̃_0 -> scheduler state
    state, eff_lr = update(state, grad_norm_sq, hparams)  # ||∇L(θ_t)||² -> η̃ used at step t

with an optional ``norm(state, hparams)`` giving the ``||w_t||`` the rule implies (used only for
the recorded ``w`` and ``norm``; without it they are ``θ`` and 1). ``hparams`` is any pytree of
arrays; it is traced, so new values do not recompile.

Instances:

* :data:`gd_wd_scheduler` (hparams :class:`GDWDHparams` ``(lr, wd)``): GD+WD's exact rule,
  Lemma 3.1 / THEORY.md: state ``η̃_t``; the step uses ``η̃_t`` and the state becomes
  ``1/η̃_{t+1} = (1−η̂λ̂)²(1/η̃_t + η̃_t||∇L(θ_t)||²)``.
* :data:`scalar_rmsprop_scheduler` (hparams :class:`RMSpropHparams` ``(eta, beta, eps)``):
  state ``v_t``; ``v_{t+1} = βv_t + (1−β)||∇L(θ_t)||²`` and the step uses
  ``η̃_t = η/√(v_{t+1}+ε)`` (RMSprop updates its second moment with the current gradient first).

Why GD+WD is Quasi-RMSprop: with ``A_t = 1/η̃_t`` and ``η_in = η̂λ̂``, GD+WD's rule is
``A_{t+1} = (1−η_in)²(A_t + ||g_t||²/A_t)``, so
``A_{t+1}² = (1−η_in)⁴ A_t² + 2(1−η_in)⁴||g_t||² + (1−η_in)⁴||g_t||⁴/A_t²``: an exponential
moving average of the squared gradient norm with decay ``β = (1−η_in)⁴ ≈ 1 − 4η_in`` — RMSprop's
``v = (η/η̃)² − ε`` with ``η = 1`` — up to the gradient weight (``2(1−η_in)⁴`` instead of
``1−β``), the ``||g||⁴`` term and ``ε = 0``. Both grow ``η̃`` geometrically when ``g = 0``
(GD+WD by ``(1−η_in)^{-2}`` per step without bound; RMSprop by ``β^{-1/2}`` until ``η/√ε``) and
shrink it when ``||g||`` is large.

What our code assumes (the paper's precise conditions are in the unavailable Appendix B):

1. The rule sees the gradient only through the scalar ``||∇L(θ_t)||²`` at the current ``θ_t``:
   it rescales the whole step (per-coordinate adaptivity, momentum etc. are not of this form; run
   those with :func:`eosflow.simulate` and ``optimizer=``).
2. ``update`` returns the LR of the *current* step; it may use the current gradient (RMSprop) or
   only the past (GD+WD).
3. Nothing enforces the Quasi-RMSprop shape; :func:`quasi_rmsprop_check` tests it numerically for
   a rule (growth under ``g = 0``, shrinkage under a large gradient).
4. :func:`eosflow.dynamics.sphere_dynamics` (and :func:`eosflow.simulate_sphere`) hand every scheduler ``η̃_0 = lr/((1−lr·wd)||w0||²)``
   (Lemma 3.1) as ``eff_lr0``; :data:`scalar_rmsprop_scheduler` starts from the ``v_0`` whose
   step size is ``η̃_0``: ``v_0 = max((η/η̃_0)² − ε, 0)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from eosflow.gd import GDWDHparams, StepInfo
from eosflow.sphere import gd_wd_eff_lr_update, norm_from_eff_lr

Array = jax.Array

__all__ = [
    "EffLRScheduler",
    "GDWDHparams",
    "RMSpropHparams",
    "ScheduledSphereState",
    "QuasiRMSpropCheck",
    "gd_wd_scheduler",
    "scalar_rmsprop_scheduler",
    "scheduled_sphere_step",
    "scheduler_norm",
    "quasi_rmsprop_check",
]


class EffLRScheduler(NamedTuple):
    """An effective-LR rule for the sphere form (module docstring).

    Attributes:
      init: ``init(eff_lr0, hparams) -> state``.
      update: ``update(state, grad_norm_sq, hparams) -> (state, eff_lr)``; ``eff_lr`` is the
        ``η̃_t`` of the current step, ``grad_norm_sq = ||∇L(θ_t)||²``.
      norm: optional ``norm(state, hparams) -> ||w_t||`` for records (``None``: 1).
    """

    init: Callable[[Array, Any], Any]
    update: Callable[[Any, Array, Any], tuple[Any, Array]]
    norm: Callable[[Any, Any], Array] | None = None


class RMSpropHparams(NamedTuple):
    """Hyperparameters of :data:`scalar_rmsprop_scheduler`: ``η``, ``β`` (``0 <= β < 1``), ``ε``."""

    eta: Array
    beta: Array
    eps: Array


def _gd_wd_update(eff_lr, grad_norm_sq, hp: GDWDHparams):
    return gd_wd_eff_lr_update(eff_lr, grad_norm_sq, hp.lr, hp.wd), eff_lr


#: GD+WD's rule (Lemma 3.1): state ``η̃_t``, step with ``η̃_t``, then
#: ``1/η̃_{t+1} = (1−lr·wd)²(1/η̃_t + η̃_t||∇L(θ_t)||²)``; ``norm = √(lr/((1−lr·wd)η̃_t))``.
gd_wd_scheduler = EffLRScheduler(
    init=lambda eff_lr0, hp: eff_lr0,
    update=_gd_wd_update,
    norm=lambda eff_lr, hp: norm_from_eff_lr(eff_lr, hp.lr, hp.wd),
)


def _rmsprop_init(eff_lr0, hp: RMSpropHparams):
    return jnp.maximum(jnp.square(hp.eta / eff_lr0) - hp.eps, 0.0)


def _rmsprop_update(v, grad_norm_sq, hp: RMSpropHparams):
    v = hp.beta * v + (1.0 - hp.beta) * grad_norm_sq
    return v, hp.eta / jnp.sqrt(v + hp.eps)


#: Scalar RMSprop on the sphere: state ``v_t``; ``v_{t+1} = βv_t + (1−β)||∇L(θ_t)||²``, step with
#: ``η̃_t = η/√(v_{t+1}+ε)``; ``v_0 = max((η/η̃_0)² − ε, 0)``. No implied ``||w||`` (records 1).
scalar_rmsprop_scheduler = EffLRScheduler(init=_rmsprop_init, update=_rmsprop_update)


class ScheduledSphereState(NamedTuple):
    """State of PGD with a scheduler: unit direction ``θ_t`` ``(D,)`` and the scheduler state."""

    theta: Array
    sched: Any


def scheduled_sphere_step(
    scheduler: EffLRScheduler,
    loss: Callable[[Array], Array],
    state: ScheduledSphereState,
    hparams: Any,
) -> tuple[ScheduledSphereState, StepInfo]:
    """One step of eq. (2) with ``η̃_t`` from ``scheduler``.

    ``(s_{t+1}, η̃_t) = update(s_t, ||∇L(θ_t)||², hparams)``, ``θ_{t+1} = Π(θ_t − η̃_t∇L(θ_t))``.
    With :data:`gd_wd_scheduler` it performs the same floating-point operations as
    :func:`eosflow.sphere.sphere_step`.

    Returns:
      ``(state at t+1, StepInfo at t)`` (``norm`` from ``scheduler.norm``, else 1).
    """
    theta = state.theta
    value, g = jax.value_and_grad(loss)(theta)
    g2 = jnp.sum(jnp.square(g))
    sched, eta = scheduler.update(state.sched, g2, hparams)
    v = theta - eta * g
    norm = scheduler_norm(scheduler, state.sched, hparams, theta.dtype)
    info = StepInfo(value, jnp.sqrt(g2), norm, eta)
    return ScheduledSphereState(v / jnp.linalg.norm(v), sched), info


def scheduler_norm(scheduler: EffLRScheduler, sched: Any, hparams: Any, dtype) -> Array:
    """The ``||w_t||`` a rule's state implies (``scheduler.norm``), or 1 when it has none."""
    if scheduler.norm is None:
        return jnp.ones((), dtype)
    return scheduler.norm(sched, hparams)


class QuasiRMSpropCheck(NamedTuple):
    """Result of :func:`quasi_rmsprop_check`.

    Attributes:
      grows_when_small: ``η̃`` rose over ``steps`` updates with ``||g||² = 0``.
      shrinks_when_large: ``η̃`` fell over ``steps`` updates with ``||g||² = large``.
      eff_lr_small, eff_lr_large: the ``(steps,)`` sequences of ``η̃`` in the two probes.
    """

    grows_when_small: bool
    shrinks_when_large: bool
    eff_lr_small: np.ndarray
    eff_lr_large: np.ndarray


def quasi_rmsprop_check(
    scheduler: EffLRScheduler, hparams: Any, eff_lr0: float, large: float, steps: int = 20
) -> QuasiRMSpropCheck:
    """Probe a rule for the Quasi-RMSprop shape (our operational reading of Appendix B).

    From ``init(eff_lr0, hparams)`` feed ``steps`` updates of ``||g||² = 0``, then (from the same
    initial state) of ``||g||² = large``, and report whether ``η̃`` ends above / below its first
    value. Use ``large`` well above ``1/η̃_0²`` (the scale at which GD+WD's rule stops growing).
    """
    state0 = scheduler.init(jnp.asarray(eff_lr0), hparams)

    def probe(g2):
        def body(s, _):
            s, eta = scheduler.update(s, jnp.asarray(g2, jnp.result_type(eff_lr0)), hparams)
            return s, eta

        return np.asarray(jax.lax.scan(body, state0, None, length=steps)[1])

    small, big = probe(0.0), probe(large)
    return QuasiRMSpropCheck(bool(small[-1] > small[0]), bool(big[-1] < big[0]), small, big)
