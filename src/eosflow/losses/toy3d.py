"""A 3-D scale-invariant toy loss (our stand-in for Figure 4 / Appendix F, which is unavailable).

With ``θ = w/||w||`` and a constant ``c > 1``::

    L(w) = (c + θ_1) · θ_3²

* **Minimizers.** ``L >= 0`` with equality exactly on the great circle ``θ_3 = 0`` (the equator),
  a closed curve ``Γ = {(cos φ, sin φ, 0)}``. Every point of ``Γ`` is a minimizer on the sphere.
* **Sharpness on Γ.** At ``θ = (cos φ, sin φ, 0)`` the Hessian of ``L`` is ``2 (c + cos φ) e_3 e_3ᵀ``
  (only the ``θ_3²`` factor is differentiated twice), so ``λ1 = 2(c + cos φ)``, ``λ2 = λ3 = 0``:
  rank 1 = ``D − D_Γ`` as Assumption 4.5 asks, and the top eigenvalue is simple (Assumption 4.6).
* **Flattest point.** ``λ1`` is smallest at ``φ = π``: ``ζ* = (−1, 0, 0)`` with ``λ1 = 2(c − 1)``;
  the sharpest point is ``(1, 0, 0)`` with ``2(c + 1)``.
* **Flow (3) in closed form.** On Γ, ``∇_Γ log λ1 = g(φ) t_φ`` with ``t_φ = (−sin φ, cos φ, 0)`` and
  ``g(φ) = −sin φ/(c + cos φ)``, so the sharpness-reduction flow is the scalar ODE
  ``dφ/dτ = −2 g(φ)/(4 + g(φ)²)``, which drives ``φ`` to ``π`` (used as a reference in the tests).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from eosflow.losses.base import ResidualLoss

Array = jax.Array

__all__ = ["toy3d", "toy3d_curve", "toy3d_flattest_point", "toy3d_sharpness_on_curve"]


def toy3d(c: float = 2.0) -> ResidualLoss:
    """The toy loss ``L(w) = (c + θ_1) θ_3²`` on ``R³ \\ {0}`` (see module docstring).

    It is a residual loss with the single residual ``r(w) = sqrt(c + θ_1) θ_3`` (smooth, since
    ``c + θ_1 >= c − 1 > 0``). Requires ``c > 1``.
    """
    if not c > 1:
        raise ValueError(f"toy3d needs c > 1 so that c + θ_1 > 0 on the sphere, got c={c}")

    def residual(w: Array) -> Array:
        theta = w / jnp.linalg.norm(w)
        return (jnp.sqrt(c + theta[0]) * theta[2])[None]

    def loss(w: Array) -> Array:
        theta = w / jnp.linalg.norm(w)
        return (c + theta[0]) * jnp.square(theta[2])

    return ResidualLoss(loss=loss, residual=residual, name=f"toy3d(c={c})")


def toy3d_curve(phi: Array) -> Array:
    """Points ``(cos φ, sin φ, 0)`` of the minimizer curve Γ; ``phi`` of any shape, adds a last
    axis of size 3."""
    phi = jnp.asarray(phi, dtype=jnp.result_type(float))
    return jnp.stack([jnp.cos(phi), jnp.sin(phi), jnp.zeros_like(phi)], axis=-1)


def toy3d_sharpness_on_curve(phi: Array, c: float = 2.0) -> Array:
    """Closed-form spherical sharpness ``λ1 = 2(c + cos φ)`` at ``toy3d_curve(phi)``."""
    return 2.0 * (c + jnp.cos(phi))


def toy3d_flattest_point() -> Array:
    """The flattest minimizer ``ζ* = (−1, 0, 0)`` (``λ1 = 2(c − 1)``), independent of ``c``."""
    return jnp.array([-1.0, 0.0, 0.0], dtype=jnp.result_type(float))
