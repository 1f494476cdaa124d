"""Section 4's scaling laws in ``η_in = lr·wd``, measured on GD+WD runs.

* :func:`fit_exponent` — least-squares slope of ``log y`` against ``log η_in`` (the exponent ``p``
  in ``y ≈ C η_in^p``) with its standard error.
* :func:`near_minimizer_init` — the starting condition of Theorem 4.4: ``θ_{t0}`` at a chosen
  distance from a minimizer ``θ*`` and ``η̃_{t0} < 2/λ1(θ*)`` (the stable regime).
* :func:`eos_entry_geometry` — where GD+WD enters the Edge of Stability (Theorem 4.4:
  ``||θ_{t1} − θ*|| = O(η_in^{1/2})`` and ``η̃_{t1} = 2/λ1(θ*) + O(η_in^{1/2})``), together with
  the distance to Γ and the effective-LR gap at the entry point's own projection.
* :func:`oscillation_amplitude` — the size of the period-two oscillation at EoS, the RMS of
  ``h_t = <θ_t − φ_t, v1(φ_t)>`` (Section 4.2.3; Remark 4.8: ``O(η_in^{1/2−o(1)})``), beside the
  limit ``σ² = 2η_in/(4 + ||∇_Γ log λ1||²) ≈ η_in/2`` of THEORY.md ("Beyond the paper").
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from eosflow.analysis import oscillation, project_points
from eosflow.eos import eos_onset, fit_step
from eosflow.manifold import grad_gamma, grad_log_sharpness, local_geometry

Array = jax.Array

__all__ = [
    "ExponentFit",
    "fit_exponent",
    "near_minimizer_init",
    "EntryGeometry",
    "eos_entry_step",
    "eos_entry_geometry",
    "OscillationAmplitude",
    "oscillation_amplitude",
]


class ExponentFit(NamedTuple):
    """``y ≈ prefactor · x^exponent``, fitted by least squares on ``(log x, log y)``.

    Attributes:
      exponent: the slope;  prefactor: ``exp(intercept)``;
      stderr: standard error of the slope (NaN with two points);
      max_residual: largest ``|log y − fit|`` (how far the points are from a power law).
    """

    exponent: float
    prefactor: float
    stderr: float
    max_residual: float


def fit_exponent(x, y) -> ExponentFit:
    """Fit ``y ≈ C x^p`` by ordinary least squares on ``(log x, log y)``.

    Args:
      x, y: 1-D, same length >= 2, positive and finite (``x`` not all equal).

    Returns:
      an :class:`ExponentFit`.

    Raises:
      ValueError: naming the problem (lengths, fewer than two points, a non-positive or
        non-finite value, all ``x`` equal).
    """
    x = np.asarray(x, dtype=float).ravel()
    y = np.asarray(y, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"fit_exponent: x and y differ in length ({x.size} vs {y.size})")
    if x.size < 2:
        raise ValueError(f"fit_exponent: need at least two points, got {x.size}")
    for name, a in (("x", x), ("y", y)):
        bad = ~(np.isfinite(a) & (a > 0))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"fit_exponent: {name}[{i}] = {a[i]!r} (need positive, finite)")
    lx, ly = np.log(x), np.log(y)
    if np.ptp(lx) == 0:
        raise ValueError("fit_exponent: all x are equal; the exponent is undefined")
    A = np.stack([lx, np.ones_like(lx)], axis=1)
    (p, c), *_ = np.linalg.lstsq(A, ly, rcond=None)
    res = ly - (p * lx + c)
    if x.size > 2:
        s2 = float(res @ res) / (x.size - 2)
        stderr = float(np.sqrt(s2 / np.sum((lx - lx.mean()) ** 2)))
    else:
        stderr = float("nan")
    return ExponentFit(float(p), float(np.exp(c)), stderr, float(np.max(np.abs(res))))


def near_minimizer_init(
    loss: Callable,
    theta_star: Array,
    lr,
    wd,
    offset: float,
    key: Array,
    *,
    edge_fraction: float = 0.5,
    sharpness=None,
) -> Array:
    """The starting condition of Theorem 4.4 (Section 4.1).

    ``θ_{t0} = cos α θ* + sin α u`` with ``u`` a uniformly random unit vector orthogonal to ``θ*``
    and ``α = 2 arcsin(offset/2)``, so that ``||θ_{t0} − θ*|| = offset`` exactly; ``||w_{t0}||`` is
    chosen so that ``η̃_{t0} = edge_fraction · 2/λ1(θ*)``, i.e.
    ``||w_{t0}||² = lr λ1(θ*) / (2 · edge_fraction · (1 − lr·wd))`` (``η̃ = lr/((1 − lr·wd)||w||²)``).
    The theorem takes ``offset = O(η_in^{1/2})`` and ``η̃_{t0} <= 2/ρ2`` with ``ρ2`` the largest
    Hessian norm on the whole sphere, which we do not compute: ``edge_fraction < 1`` only puts the
    start below the edge at ``θ*``.

    Args:
      loss: scale-invariant loss; theta_star: ``(D,)`` a point of Γ (unit norm);
      lr, wd: GD+WD hyperparameters; offset: ``||θ_{t0} − θ*||`` in ``(0, 2]``;
      key: PRNG key for ``u``; edge_fraction: ``η̃_{t0} λ1(θ*)/2`` in ``(0, 1)``;
      sharpness: ``λ1(θ*)`` if already known (else computed by
        :func:`~eosflow.manifold.local_geometry`).

    Returns:
      ``w_{t0} (D,)``.
    """
    if not 0 < offset <= 2:
        raise ValueError(f"near_minimizer_init: offset must be in (0, 2], got {offset!r}")
    if not 0 < edge_fraction < 1:
        raise ValueError(
            f"near_minimizer_init: edge_fraction must be in (0, 1) (below the edge), "
            f"got {edge_fraction!r}"
        )
    if not 0 < lr * wd < 1:
        raise ValueError(f"near_minimizer_init: need 0 < lr·wd < 1, got {lr * wd!r}")
    ts = jnp.asarray(theta_star)
    ts = ts / jnp.linalg.norm(ts)
    lam = _sharpness_on_gamma(loss, ts) if sharpness is None else sharpness
    u = jax.random.normal(key, ts.shape, ts.dtype)
    u = u - jnp.vdot(u, ts) * ts
    u = u / jnp.linalg.norm(u)
    alpha = 2.0 * np.arcsin(offset / 2.0)
    theta0 = np.cos(alpha) * ts + np.sin(alpha) * u
    norm0 = jnp.sqrt(lr * lam / (2.0 * edge_fraction * (1.0 - lr * wd)))
    return norm0 * theta0


class EntryGeometry(NamedTuple):
    """GD+WD at its Edge-of-Stability entry step ``t1`` (Theorem 4.4).

    Attributes:
      step: ``t1``, the first step with ``η̃_t λ1(θ_t) >= 2`` after the fit
        (:func:`eos_entry_step`);
      eff_lr: ``η̃_{t1}``;
      dist_star: ``||θ_{t1} − θ*||`` (Theorem 4.4: ``O(η_in^{1/2})``);
      dist_gamma: ``||θ_{t1} − Φ(θ_{t1})||``, the distance to Γ;
      eff_lr_gap_star: ``η̃_{t1} − 2/λ1(θ*)`` (Theorem 4.4: ``O(η_in^{1/2})``);
      eff_lr_gap_phi: ``η̃_{t1} − 2/λ1(Φ(θ_{t1}))``, the gap at the entry point's own projection.
    """

    step: int
    eff_lr: float
    dist_star: float
    dist_gamma: float
    eff_lr_gap_star: float
    eff_lr_gap_phi: float


@partial(jax.jit, static_argnums=0)
def _sharpness_on_gamma(loss, theta):
    return local_geometry(loss, theta).sharpness


@partial(jax.jit, static_argnums=0)
def _dense_sharpness_batch(loss, thetas):
    return jax.vmap(lambda th: jnp.linalg.eigvalsh(jax.hessian(loss)(th))[-1])(thetas)


def eos_entry_step(loss: Callable, traj, *, fit_tol: float = 1e-8, batch: int = 256) -> int | None:
    """The EoS entry of Theorem 4.4: the first recorded step ``t`` with ``η̃_t λ1(θ_t) >= 2``
    after the loss first falls to ``fit_tol`` (the rule of :func:`~eosflow.eos.eos_onset`).

    With sharpness recorded at every step (``simulate(..., sharpness_every=1)``) this is
    :func:`~eosflow.eos.eos_onset`. Otherwise ``λ1(θ_t)`` is computed here from the dense Hessian
    (``jax.hessian`` + ``eigvalsh``: small ``D`` only), ``batch`` recorded steps at a time from
    the fit on, until the first crossing; record every step for the exact entry.

    Returns:
      the step, or ``None`` if the loss is never fit or the edge never reached.
    """
    lam = np.asarray(traj.sharpness)
    if np.all(np.isfinite(lam)):
        return eos_onset(traj, fit_tol=fit_tol)
    t_fit = fit_step(traj, fit_tol)
    if t_fit is None:
        return None
    steps = np.asarray(traj.step)
    idx = np.flatnonzero(steps >= t_fit)
    thetas, eff = np.asarray(traj.theta), np.asarray(traj.eff_lr)
    for i in range(0, idx.size, batch):
        part = idx[i : i + batch]
        rows = np.concatenate([part, np.repeat(part[-1:], batch - part.size)])
        lam1 = np.asarray(_dense_sharpness_batch(loss, jnp.asarray(thetas[rows])))[: part.size]
        hit = np.flatnonzero(eff[part] * lam1 >= 2.0)
        if hit.size:
            return int(steps[part[hit[0]]])
    return None


def eos_entry_geometry(
    loss: Callable, traj, theta_star: Array, *, fit_tol: float = 1e-8
) -> EntryGeometry:
    """Theorem 4.4's two quantities at the EoS entry of ``traj`` (recorded every step; entry by
    :func:`eos_entry_step`), measured against the minimizer ``θ*`` the run started near, plus the
    distance to Γ and the gap at ``Φ(θ_{t1})``.

    Raises:
      ValueError: if the run never fits the loss to ``fit_tol`` or never reaches EoS.
    """
    t1 = eos_entry_step(loss, traj, fit_tol=fit_tol)
    if t1 is None:
        raise ValueError(
            "eos_entry_geometry: the run never reaches the Edge of Stability after fitting "
            f"(fit_tol={fit_tol:g}); run longer"
        )
    i = int(np.flatnonzero(np.asarray(traj.step) == t1)[0])
    theta = np.asarray(traj.theta)[i]
    ts = np.asarray(theta_star) / np.linalg.norm(np.asarray(theta_star))
    phi = project_points(loss, theta[None, :])[0]
    lam_star = float(_sharpness_on_gamma(loss, jnp.asarray(ts)))
    lam_phi = float(_sharpness_on_gamma(loss, jnp.asarray(phi)))
    eff = float(np.asarray(traj.eff_lr)[i])
    return EntryGeometry(
        t1,
        eff,
        float(np.linalg.norm(theta - ts)),
        float(np.linalg.norm(theta - phi)),
        eff - 2.0 / lam_star,
        eff - 2.0 / lam_phi,
    )


class OscillationAmplitude(NamedTuple):
    """The period-two oscillation over a window of steps (Section 4.2.3, Remark 4.8).

    Attributes:
      rms_h: ``sqrt(mean h_t²)``, ``h_t = <θ_t − φ_t, v1(φ_t)>``;
      rms_x: ``sqrt(mean ||θ_t − φ_t||²)`` (the distance to Γ);
      sigma_half: ``sqrt(η_in/2)``, the small-``η_in`` limit;
      sigma_limit: ``sqrt(mean 2η_in/(4 + g_t²))`` with ``g_t = ||∇_Γ log λ1(φ_t)||`` at up to
        ``n_grad`` points of the window (THEORY.md: the central flow's ``σ²`` on Γ);
      grad_log_sharpness: mean ``g_t``;
      sign_change_share: share of consecutive steps with ``h_t h_{t+1} < 0``;
      steps: window length.
    """

    rms_h: float
    rms_x: float
    sigma_half: float
    sigma_limit: float
    grad_log_sharpness: float
    sign_change_share: float
    steps: int


@partial(jax.jit, static_argnums=0)
def _grad_log_sharpness_norms(loss, phis):
    def one(p):
        geom = local_geometry(loss, p)
        return jnp.linalg.norm(grad_gamma(geom, p, grad_log_sharpness(loss, p, geom)))

    return jax.vmap(one)(phis)


def oscillation_amplitude(
    loss: Callable, traj, start: int, stop: int, *, n_grad: int = 16
) -> OscillationAmplitude:
    """RMS of the oscillation across Γ on the recorded steps ``start <= t < stop`` of a GD+WD
    run at EoS (record every step), against ``sqrt(η_in/2)`` and ``sqrt(2η_in/(4 + g²))``.

    Uses :func:`~eosflow.analysis.oscillation` for ``h_t`` (one projection per step) and
    ``n_grad`` evenly spaced points of the window for ``g_t = ||∇_Γ log λ1(φ_t)||``.

    Returns:
      an :class:`OscillationAmplitude`.
    """
    eta_in = float(traj.lr * traj.wd)
    osc = oscillation(loss, traj, start, stop)
    sel = (np.asarray(traj.step) >= start) & (np.asarray(traj.step) < stop)
    thetas = np.asarray(traj.theta)[sel]
    pick = np.unique(np.linspace(0, thetas.shape[0] - 1, min(n_grad, thetas.shape[0])).round())
    phis = project_points(loss, thetas[pick.astype(int)], batch=n_grad)
    g = np.asarray(_grad_log_sharpness_norms(loss, jnp.asarray(phis)))
    return OscillationAmplitude(
        float(np.sqrt(np.mean(osc.h**2))),
        float(np.sqrt(np.mean(osc.x_norm**2))),
        float(np.sqrt(eta_in / 2.0)),
        float(np.sqrt(np.mean(2.0 * eta_in / (4.0 + g**2)))),
        float(np.mean(g)),
        float(osc.sign_change_share),
        int(osc.step.shape[0]),
    )
