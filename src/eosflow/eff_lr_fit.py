"""The effective learning rate of any optimizer step, measured as the best-fitting PGD step.

Used by :func:`eosflow.optim.from_optax` to summarize each step of an optax optimizer by one
number comparable with GD+WD's Lemma 3.1 effective LR.

**Measured effective LR, sphere geometry** (scale-invariant losses, the default). GD+WD is PGD on
the sphere, eq. (2): ``θ_{t+1} = Π(θ_t − η̃_t ∇L(θ_t))`` (Lemma 3.1). A general optimizer step
``w_t → w_{t+1}`` is not of that form, so we fit ``η̃``. Write ``θ = θ_t``, ``g = ∇L(θ_t)``
(``⊥ θ``; ``g = ||w_t|| ∇L(w_t)`` since ``∇L(cw) = ∇L(w)/c``) and map ``θ_{t+1}`` to the tangent
plane at ``θ`` by central (gnomonic) projection, the point where the ray through ``θ_{t+1}`` meets
the plane ``{θ + x : x ⊥ θ}``; with the update ``u = w_{t+1} − w_t``::

    p = θ_{t+1}/⟨θ_{t+1}, θ⟩ − θ = (u − ⟨u, θ⟩θ) / (||w_t|| + ⟨u, θ⟩)          (⊥ θ)

Every PGD step lands exactly on ``p = −η̃ g`` (``Π(θ − η̃ g)`` lies on that ray), and PGD steps with
all ``η̃ >= 0`` fill the half-line ``{−η̃ g}``: geodesics through ``θ`` are straight lines in this
chart. So the measured ``η̃`` is the least-squares fit of ``p ≈ −η̃ g``::

    η̃ = −⟨p, g⟩ / ||g||² = −⟨u, g⟩ / ((||w_t|| + ⟨u, θ⟩) ||g||²),
    residual = ||p + η̃ g|| / ||p||  ∈ [0, 1]

(the residual is the sine of the angle between the tangent step ``p`` and the line of ``g``: 0
for a PGD step, 1 for a step orthogonal to the gradient; ``η̃ < 0`` means the step went uphill). For GD+WD, ``w_{t+1} = (1−η̂λ̂)w_t − η̂∇L(w_t)``
gives ``⟨w_{t+1}, θ⟩ = (1−η̂λ̂)||w_t||`` and ``p = −η̂∇L(w_t)/((1−η̂λ̂)||w_t||)``, so
``η̃ = η̂/((1−η̂λ̂)||w_t||²)`` — Lemma 3.1 — with residual 0 (tested to round-off). Degenerate
cases: ``g = 0`` gives ``η̃ = 0`` (undefined; residual 1 if the step moved ``θ``, else 0); a step
turning ``θ`` by 90° or more (``⟨w_{t+1}, θ⟩ <= 0``, impossible for PGD) gives ``η̃ = 0``,
residual 1. The fit uses ``∇L(θ_t)`` only, so it says nothing about a non-PGD optimizer's
memory (momentum): it describes each step as the PGD step that best matches it. Precision: the
tangential part of ``u`` carries an absolute error ~``ε_mach·|⟨u, θ⟩|`` (weight decay's radial
part), so once the loss is fit to round-off (``||∇L||`` ~1e-16) the fit is round-off too; the
tests check ``η̃`` to 1e-9 relative while ``||∇L(θ_t)|| > 1e-8``.

**Measured LR, plain geometry** (``geometry="plain"``, losses that are not scale-invariant). The
model is plain GD ``w_{t+1} = w_t − η_t ∇L(w_t)``; the fit of ``Δw = w_{t+1} − w_t ≈ −η_t g`` with
``g = ∇L(w_t)`` is ``η_t = −⟨Δw, g⟩/||g||²``, residual ``||Δw + η_t g||/||Δw||``. For
:func:`scalar_rmsprop` this recovers its learning rate ``η/√(v_{t+1}+ε)`` to round-off. The
trajectory's ``loss``, ``grad_norm`` and ``sharpness`` are then ``L(w_t)``, ``||∇L(w_t)||`` and
the plain top Hessian eigenvalue ``λ1(∇²L(w_t))`` (warm-started Lanczos on the recorded ``w_t``,
after the scan); ``theta = w_t/||w_t||`` is derived as usual but has no meaning there.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

__all__ = ["measured_eff_lr", "measured_lr"]


def measured_eff_lr(w: Array, u: Array, g: Array) -> tuple[Array, Array]:
    """Least-squares effective LR of the step ``w → w + u`` on the sphere (module docstring).

    Computed without cancellation: with ``θ = w/||w||``, ``p = w_{t+1}/⟨w_{t+1}, θ⟩ − θ`` equals
    ``u_⊥/c`` where ``u_⊥ = u − ⟨u, θ⟩θ`` and ``c = ||w|| + ⟨u, θ⟩ = ⟨w_{t+1}, θ⟩``.

    Args:
      w: ``w_t`` ``(D,)``, nonzero.
      u: the update ``w_{t+1} − w_t`` ``(D,)``.
      g: ``∇L(θ_t)`` ``(D,)``, orthogonal to ``w_t``.

    Returns:
      ``(η̃, residual)`` with ``η̃ = −⟨p, g⟩/||g||²``, ``residual = ||p + η̃ g||/||p||`` (0 when
      ``p = 0``); ``(0, 1)`` when ``⟨w_{t+1}, θ⟩ <= 0``. Near round-off (``||∇L(w_t)||`` comparable
      to ``ε_mach`` times the radial part of ``u``) the tangential step is round-off and so is
      the fit.
    """
    norm = jnp.linalg.norm(w)
    theta = w / norm
    u_r = jnp.vdot(u, theta)
    c = norm + u_r
    ok = c > 0
    p = jnp.where(ok, (u - u_r * theta) / jnp.where(ok, c, 1.0), 0.0)
    eta, res = _ls_fit(p, g)
    return jnp.where(ok, eta, 0.0), jnp.where(ok, res, 1.0)


def measured_lr(g: Array, dw: Array) -> tuple[Array, Array]:
    """Least-squares plain learning rate: ``η = −⟨Δw, g⟩/||g||²`` and ``||Δw + η g||/||Δw||``.

    Args:
      g: ``∇L(w_t)`` ``(D,)``;  dw: ``w_{t+1} − w_t`` ``(D,)``.
    """
    return _ls_fit(dw, g)


def _ls_fit(p: Array, g: Array) -> tuple[Array, Array]:
    """Fit ``p ≈ −η g``; safe (no NaN) when ``g = 0`` or ``p = 0``."""
    g2 = jnp.vdot(g, g)
    p2 = jnp.vdot(p, p)
    eta = jnp.where(g2 > 0, -jnp.vdot(p, g) / jnp.where(g2 > 0, g2, 1.0), 0.0)
    r = jnp.linalg.norm(p + eta * g)
    res = jnp.where(p2 > 0, r / jnp.sqrt(jnp.where(p2 > 0, p2, 1.0)), 0.0)
    return eta, jnp.minimum(res, 1.0)
