"""Dynamics: every training rule the simulator runs, as data (optax's and blackjax's shape).

A :class:`Dynamics` is a ``NamedTuple`` of pure functions on flat parameter vectors::

    state = init(w0, hparams)                    # w0: flat (D,) initial parameters
    state, info = step(loss, state, hparams)     # one step; info: diagnostics at w_t
    w = params(state, hparams)                   # the flat parameters w_t of a state

``hparams`` is any pytree of arrays; the driver (:mod:`eosflow.driver`) traces it, so new values
never recompile, and :func:`eosflow.sweep` batches it. ``info`` is a ``NamedTuple`` whose first
fields are those of :class:`eosflow.gd.StepInfo` (``loss, grad_norm, norm, eff_lr``); any further
fields (e.g. the optax fit residual) are recorded too, in ``Trajectory.extra``.

Built in:

* :data:`gd_wd` — GD+WD, eq. (1), hparams :class:`GDWDHparams` ``(lr, wd)``.
* :func:`sphere_dynamics` — the sphere form, eq. (2), ``θ_{t+1} = Π(θ_t − η̃_t ∇L(θ_t))``, with a
  pluggable effective-LR rule (:mod:`eosflow.schedulers`: GD+WD's Lemma 3.1 rule, scalar RMSprop),
  hparams :class:`SphereHparams` ``(lr, wd, rule)``.
* :func:`eosflow.optim.from_optax` — any optax ``GradientTransformation`` (effective LR measured).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from eosflow.gd import GDState, GDWDHparams, effective_lr, gd_wd_step, update_is_finite
from eosflow.schedulers import (
    EffLRScheduler,
    ScheduledSphereState,
    gd_wd_scheduler,
    scheduled_sphere_step,
    scheduler_norm,
)

Array = jax.Array

__all__ = ["Dynamics", "GDWDHparams", "SphereHparams", "gd_wd", "sphere_dynamics", "GEOMETRIES"]

#: Where the driver measures sharpness: ``"sphere"``, ``λ1(∇²L(θ_t))`` at ``θ_t = w_t/||w_t||``
#: (Definition 1.1); ``"plain"``, ``λ1(∇²L(w_t))`` (losses that are not scale-invariant).
GEOMETRIES = ("sphere", "plain")


class Dynamics(NamedTuple):
    """A training rule as pure functions (module docstring).

    Attributes:
      init: ``init(w0, hparams) -> state`` from the flat ``(D,)`` initial parameters.
      step: ``step(loss, state, hparams) -> (state, info)``; ``loss`` takes flat vectors; ``info``
        holds the diagnostics at ``w_t`` (fields of :class:`eosflow.gd.StepInfo` first).
      params: ``params(state, hparams) -> w_t``, flat ``(D,)``.
      is_finite: optional ``is_finite(info, hparams) -> bool`` deciding from the step's scalars
        whether the update was finite; ``None``: every leaf of the new state is checked.
      geometry: ``"sphere"`` or ``"plain"``, where sharpness is measured (:data:`GEOMETRIES`).

    Equal ``Dynamics`` (the same functions) share compiled programs: build them once.
    """

    init: Callable[[Array, Any], Any]
    step: Callable[[Callable, Any, Any], tuple[Any, Any]]
    params: Callable[[Any, Any], Array]
    is_finite: Callable[[Any, Any], Array] | None = None
    geometry: str = "sphere"


# ----------------------------------------------------------------------------- GD+WD, eq. (1)


def _gd_init(w0: Array, hp: GDWDHparams) -> GDState:
    return GDState(w0)


def _gd_step(loss, state: GDState, hp: GDWDHparams):
    return gd_wd_step(loss, state, hp.lr, hp.wd)


def _gd_params(state: GDState, hp: GDWDHparams) -> Array:
    return state.w


def _gd_finite(info, hp: GDWDHparams) -> Array:
    return update_is_finite(info, hp.lr, hp.wd)


#: GD+WD, eq. (1): ``w_{t+1} = (1 − lr·wd) w_t − lr ∇L(w_t)``; hparams :class:`GDWDHparams`.
#: The non-finite guard decides from the step's scalars (:func:`eosflow.gd.update_is_finite`).
gd_wd = Dynamics(_gd_init, _gd_step, _gd_params, _gd_finite)


# ----------------------------------------------------------------------------- sphere, eq. (2)


class SphereHparams(NamedTuple):
    """Hyperparameters of :func:`sphere_dynamics`.

    Attributes:
      lr, wd: the GD+WD pair whose Lemma 3.1 effective LR at ``w0`` starts the rule,
        ``η̃_0 = lr/((1−lr·wd)||w0||²)``.
      rule: the effective-LR rule's own hyperparameters (:class:`GDWDHparams` for
        :data:`eosflow.schedulers.gd_wd_scheduler`, :class:`eosflow.RMSpropHparams` for
        :data:`eosflow.schedulers.scalar_rmsprop_scheduler`).
    """

    lr: Array
    wd: Array
    rule: Any


def sphere_dynamics(rule: EffLRScheduler = gd_wd_scheduler) -> Dynamics:
    """Projected GD on the unit sphere, eq. (2), with the effective LR from ``rule``.

    State :class:`eosflow.schedulers.ScheduledSphereState` ``(θ_t, rule state)``; the step is
    :func:`eosflow.schedulers.scheduled_sphere_step`. ``params`` is ``θ_t`` times the ``||w_t||``
    the rule implies (``rule.norm``; 1 without one). With the GD+WD rule (default) it
    reproduces :data:`gd_wd` to float64 round-off (Lemma 3.1). Cached per ``rule``, so repeated
    calls return the same object (one compiled program).
    """
    if not isinstance(rule, EffLRScheduler):
        raise TypeError(
            "sphere_dynamics: rule must be an eosflow.EffLRScheduler(init, update[, norm]), "
            f"got {type(rule).__name__}"
        )
    return _sphere_dynamics(rule)


@functools.lru_cache(maxsize=64)
def _sphere_dynamics(rule: EffLRScheduler) -> Dynamics:
    """:func:`sphere_dynamics`, cached on the rule alone (so the default and an explicit
    ``gd_wd_scheduler`` give the same object)."""

    def init(w0: Array, hp: SphereHparams) -> ScheduledSphereState:
        norm0 = jnp.linalg.norm(w0)
        return ScheduledSphereState(
            w0 / norm0, rule.init(effective_lr(norm0, hp.lr, hp.wd), hp.rule)
        )

    def step(loss, state, hp: SphereHparams):
        return scheduled_sphere_step(rule, loss, state, hp.rule)

    def params(state, hp: SphereHparams) -> Array:
        return state.theta * scheduler_norm(rule, state.sched, hp.rule, state.theta.dtype)

    return Dynamics(init, step, params)
