"""Edge of Stability diagnostics on a recorded trajectory (Section 4.1, Theorem 4.4).

GD+WD is at the Edge of Stability when ``η̃_t λ1(θ_t) ≈ 2`` (equivalently ``η̂ λ1(∇²L(w_t)) ≈ 2``).
Near a minimizer the gradient is small, weight decay shrinks ``||w||`` and ``η̃`` grows until it
reaches ``2/λ1`` (Theorem 4.4).
"""

from __future__ import annotations

import numpy as np

__all__ = ["eos_onset", "fit_step"]


def fit_step(traj, fit_tol: float = 1e-8) -> int | None:
    """The first recorded step with ``L(θ_t) <= fit_tol``, or ``None``."""
    loss = np.asarray(traj.loss)
    idx = np.flatnonzero(loss <= fit_tol)
    return int(np.asarray(traj.step)[idx[0]]) if idx.size else None


def eos_onset(traj, *, fit_tol: float = 1e-8, threshold: float = 2.0) -> int | None:
    """Theorem 4.4's EoS entry: the first recorded step ``t`` at which ``η̃_t λ1(θ_t) >= threshold``
    (default 2) *after* the loss has first fallen to ``fit_tol``.

    Uses the recorded sharpness (run :func:`eosflow.simulate` with ``sharpness_every > 0``);
    steps without a sharpness value are skipped.

    Returns:
      the step number, or ``None`` if the loss was never fit or EoS was never reached.

    Raises:
      ValueError: if the trajectory has no sharpness values at all.
    """
    lam = np.asarray(traj.sharpness)
    if not np.any(np.isfinite(lam)):
        raise ValueError(
            "eos_onset needs spherical sharpness: run simulate(..., sharpness_every=k) with k > 0"
        )
    t_fit = fit_step(traj, fit_tol)
    if t_fit is None:
        return None
    steps = np.asarray(traj.step)
    ratio = np.asarray(traj.eff_lr) * lam
    hit = np.flatnonzero((steps >= t_fit) & np.isfinite(ratio) & (ratio >= threshold))
    return int(steps[hit[0]]) if hit.size else None
