"""Comparing GD+WD with the sharpness-reduction flow: Theorem 4.7 and Section 4.2.3.

* :func:`eos_init` — the initialization of Theorem 4.7.
* :func:`tracking` — ``||θ_t − ζ((t−t0)η_in)||`` and ``||Φ(θ_t) − ζ((t−t0)η_in)||`` over steps
  (Theorem 4.7: ``O(η_in^{1/4−o(1)})`` over a fixed flow-time horizon).
* :func:`oscillation` — the period-two oscillation at EoS: ``φ_t = Φ(θ_t)``, ``x_t = θ_t − φ_t``,
  ``h_t = <x_t, v1(φ_t)>`` alternates in sign, ``x_t`` is aligned with ``±v1(φ_t)``, and
  ``2/η̃_t − λ1(φ_t)`` and ``|h_t|`` rise and fall periodically (Figure 5c, d).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from eosflow.manifold import local_geometry, project_to_manifold
from eosflow.precision import warn_if_low_precision

Array = jax.Array

__all__ = [
    "eos_init",
    "TrackingResult",
    "tracking",
    "OscillationResult",
    "oscillation",
    "project_points",
]

#: ``progress(done, total)``: called before and after each batch of projections (to draw a bar).
ProgressFn = Callable[[int, int], None]


def eos_init(
    loss: Callable, zeta0: Array, lr, wd, sigma0: float, key: Array, *, sharpness=None
) -> Array:
    """Initialization of Theorem 4.7 (Section 4.2.2).

    ``θ_0 = Π(ζ0 + ξ)`` with ``ξ ~ N(0, σ0² I/D)``, and ``||w_0||`` chosen so that the first
    effective learning rate is exactly at the edge, ``η̃_0 = 2/λ1(ζ0)``, i.e.
    ``||w_0||² = lr λ1(ζ0) / (2 (1 − lr·wd))``.

    Args:
      loss: scale-invariant loss; ``zeta0``: a point of Γ (unit norm, e.g. from
        :func:`~eosflow.manifold.project_to_manifold`); ``lr, wd``: GD+WD hyperparameters;
      sigma0: perturbation scale (the theorem allows ``[exp(−η_in^{−o(1)}), η_in^{1/2−o(1)}]``);
      key: PRNG key; sharpness: ``λ1(ζ0)`` if already known (else computed).

    Returns:
      ``w_0 (D,)``.
    """
    zeta0 = jnp.asarray(zeta0)
    warn_if_low_precision("eos_init", zeta0.dtype)
    D = zeta0.shape[0]
    lam = local_geometry(loss, zeta0).sharpness if sharpness is None else sharpness
    xi = sigma0 * jax.random.normal(key, (D,), zeta0.dtype) / jnp.sqrt(D)
    theta0 = (zeta0 + xi) / jnp.linalg.norm(zeta0 + xi)
    norm0 = jnp.sqrt(lr * lam / (2.0 * (1.0 - lr * wd)))
    return norm0 * theta0


class TrackingResult(NamedTuple):
    """Distances between GD and the flow at the recorded steps inside the flow's time span.

    Attributes:
      step: ``(T,)`` GD steps ``t``;  tau: ``(T,)`` flow times ``(t − t0) η_in``;
      dist_theta: ``||θ_t − ζ(τ)||``;  dist_phi: ``||Φ(θ_t) − ζ(τ)||`` (NaN if not computed).
    """

    step: np.ndarray
    tau: np.ndarray
    dist_theta: np.ndarray
    dist_phi: np.ndarray


@partial(jax.jit, static_argnums=0)
def _project_batch(loss, thetas):
    return jax.vmap(lambda th: project_to_manifold(loss, th).point)(thetas)


@partial(jax.jit, static_argnums=0)
def _top_pair_batch(loss, phis):
    geom = jax.vmap(lambda p: local_geometry(loss, p))(phis)
    return geom.sharpness, geom.v1


def _top_pairs(loss, phis, batch: int = 256):
    """``λ1`` and ``v1`` at each row of ``phis`` (NumPy), in padded batches of ``batch`` rows so
    that one compilation per loss, shape and dtype serves every window length."""
    lams, vs = [], []
    for i in range(0, phis.shape[0], batch):
        part = phis[i : i + batch]
        pad = batch - part.shape[0]
        if pad:
            part = np.concatenate([part, np.repeat(part[-1:], pad, axis=0)])
        lam, v1 = _top_pair_batch(loss, jnp.asarray(part))
        lams.append(np.array(lam)[: batch - pad])
        vs.append(np.array(v1)[: batch - pad])
    return np.concatenate(lams), np.concatenate(vs, axis=0)


def project_points(
    loss: Callable, thetas, *, batch: int = 256, progress: ProgressFn | None = None
) -> np.ndarray:
    """``Φ(θ)`` for each row of ``thetas`` (:func:`~eosflow.manifold.project_to_manifold`).

    Runs in batches of ``batch`` rows (the last one padded, so one compilation per loss, shape
    and dtype serves every call), calling ``progress(done, total)`` before the first batch (with
    ``done = 0``) and after each batch. Returns a NumPy array shaped like ``thetas``.
    """
    thetas = np.asarray(thetas)
    total = thetas.shape[0]
    if progress is not None:
        progress(0, total)
    out = []
    for i in range(0, total, batch):
        part = thetas[i : i + batch]
        pad = batch - part.shape[0] if total > batch else 0
        if pad:
            part = np.concatenate([part, np.repeat(part[-1:], pad, axis=0)])
        out.append(np.asarray(_project_batch(loss, jnp.asarray(part)))[: batch - pad])
        if progress is not None:
            progress(min(i + batch, total), total)
    if not out:
        return np.zeros_like(thetas)
    return np.concatenate(out, axis=0)


def tracking(
    loss: Callable,
    traj,
    flow,
    t0: int = 0,
    *,
    with_phi: bool = True,
    progress: ProgressFn | None = None,
) -> TrackingResult:
    """Theorem 4.7's tracking distances for a GD+WD trajectory against a flow solution.

    Args:
      loss: the loss both were run on.
      traj: a :class:`~eosflow.Trajectory`; its recorded steps ``t >= t0`` whose flow time
        ``(t − t0)·lr·wd`` lies within the flow's span are compared.
      flow: a :class:`~eosflow.flow.FlowSolution` started at GD step ``t0``.
      with_phi: also compute ``||Φ(θ_t) − ζ(τ)||`` (one projection per recorded step).
      progress: ``progress(done, total)`` after each batch of projections.

    Returns:
      a :class:`TrackingResult` (NumPy arrays).
    """
    warn_if_low_precision("tracking", np.asarray(traj.theta).dtype)
    eta_in = float(traj.lr * traj.wd)
    steps = np.asarray(traj.step)
    tau = (steps - t0) * eta_in
    keep = (steps >= t0) & (tau <= float(flow.tau[-1]) * (1 + 1e-12))
    thetas = jnp.asarray(np.asarray(traj.theta)[keep])
    zetas = np.asarray(flow.evaluate(jnp.asarray(tau[keep])))
    d_theta = np.linalg.norm(np.asarray(thetas) - zetas, axis=1)
    if with_phi:
        phis = project_points(loss, thetas, progress=progress)
        d_phi = np.linalg.norm(phis - zetas, axis=1)
    else:
        d_phi = np.full_like(d_theta, np.nan)
    return TrackingResult(steps[keep], tau[keep], d_theta, d_phi)


class OscillationResult(NamedTuple):
    """Section 4.2.3 diagnostics over a window of consecutive steps.

    Attributes:
      step: ``(T,)`` steps;  h: ``h_t = <x_t, v1(φ_t)>`` with ``v1`` signs made continuous;
      x_norm: ``||x_t||``;  cos: ``|cos(x_t, v1(φ_t))|``;
      sharpness_phi: ``λ1(φ_t)``;  two_over_eff_lr: ``2/η̃_t``;
      sign_change_share: fraction of consecutive pairs with ``h_t h_{t+1} < 0``;
      median_cos: median of ``cos``.
    """

    step: np.ndarray
    h: np.ndarray
    x_norm: np.ndarray
    cos: np.ndarray
    sharpness_phi: np.ndarray
    two_over_eff_lr: np.ndarray
    sign_change_share: float
    median_cos: float


def oscillation(
    loss: Callable,
    traj,
    start: int | None = None,
    stop: int | None = None,
    *,
    progress: ProgressFn | None = None,
):
    """Period-two oscillation analysis (Section 4.2.3, Figure 5c–d) on recorded steps
    ``start <= t < stop`` (record every step for a meaningful sign-change share);
    ``progress(done, total)`` is called after each batch of projections.

    ``φ_t = Φ(θ_t)`` (:func:`~eosflow.manifold.project_to_manifold`), ``x_t = θ_t − φ_t``,
    ``v1(φ_t)`` the top eigenvector there (sign chosen continuous in ``t``), ``h_t = <x_t, v1>``.

    Returns:
      an :class:`OscillationResult`.
    """
    warn_if_low_precision("oscillation", np.asarray(traj.theta).dtype)
    steps = np.asarray(traj.step)
    sel = np.ones_like(steps, dtype=bool)
    if start is not None:
        sel &= steps >= start
    if stop is not None:
        sel &= steps < stop
    if sel.sum() < 2:
        raise ValueError("oscillation: need at least two recorded steps in the window")
    thetas = jnp.asarray(np.asarray(traj.theta)[sel])
    phis = project_points(loss, thetas, progress=progress)
    lam, v1 = _top_pairs(loss, phis)
    # Continuous sign for v1 along the window.
    for i in range(1, v1.shape[0]):
        if np.dot(v1[i], v1[i - 1]) < 0:
            v1[i] = -v1[i]
    x = np.asarray(thetas) - phis
    h = np.sum(x * v1, axis=1)
    x_norm = np.linalg.norm(x, axis=1)
    cos = np.abs(h) / np.maximum(x_norm, np.finfo(x.dtype).tiny)
    share = float(np.mean(h[1:] * h[:-1] < 0))
    two_over = 2.0 / np.asarray(traj.eff_lr)[sel]
    return OscillationResult(
        steps[sel], h, x_norm, cos, lam, two_over, share, float(np.median(cos))
    )
