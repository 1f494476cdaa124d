"""A 3-D scale-invariant toy loss (our stand-in for Figure 4 / Appendix F, which is unavailable).

With ``θ = w/||w||``, a constant ``c > 1`` and a fixed rotation ``R`` (rows ``a, e, b``;
``θ' = Rθ``)::

    L(w) = (c + θ'_1) · θ'_3²  =  (c + <a, θ>) · <b, θ>²

The rotation is there for numerical honesty, not geometry: with ``R = I`` the coordinate ``θ_3``
decays *exactly* (multiplicatively) to 0 while the loss is fit, GD then sits on Γ with no
round-off left to seed the EoS oscillation, and nothing happens (the degenerate start Theorem 4.7's
random perturbation rules out). With a generic ``R`` float64 round-off keeps ``<b, θ>`` at ~1e-16,
as in every real problem. The default ``R`` (:data:`TOY3D_ROTATION`: angle 0.9 about the axis
``(1, 2, 3)``) tilts Γ, like the curve of the paper's Figure 4; pass ``rotation=jnp.eye(3)`` for the
axis-aligned version. Below, coordinates are those of ``θ' = Rθ``.

* **Minimizers.** ``L >= 0`` with equality exactly on the great circle ``θ'_3 = 0``, a closed curve
  ``Γ = {Rᵀ(cos φ, sin φ, 0)}``. Every point of ``Γ`` is a minimizer on the sphere.
* **Sharpness on Γ.** At ``θ' = (cos φ, sin φ, 0)`` the Hessian of ``L`` is ``2 (c + cos φ) b bᵀ``
  (only the ``θ_3²`` factor is differentiated twice), so ``λ1 = 2(c + cos φ)``, ``λ2 = λ3 = 0``:
  rank 1 = ``D − D_Γ`` as Assumption 4.5 asks, and the top eigenvalue is simple (Assumption 4.6).
* **Flattest point.** ``λ1`` is smallest at ``φ = π``: ``ζ* = −a = Rᵀ(−1, 0, 0)`` with
  ``λ1 = 2(c − 1)``; the sharpest point is ``a`` with ``2(c + 1)``.
* **Flow (3) in closed form.** On Γ, ``∇_Γ log λ1 = g(φ) t_φ`` with ``t_φ = Rᵀ(−sin φ, cos φ, 0)`` and
  ``g(φ) = −sin φ/(c + cos φ)``, so the sharpness-reduction flow is the scalar ODE
  ``dφ/dτ = −2 g(φ)/(4 + g(φ)²)``, which drives ``φ`` to ``π`` (used as a reference in the tests).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from eosflow.losses.base import ResidualLoss

Array = jax.Array

__all__ = [
    "TOY3D_ROTATION",
    "toy3d",
    "toy3d_curve",
    "toy3d_flattest_point",
    "toy3d_normal",
    "toy3d_sharpness_on_curve",
]


def _axis_angle(axis, angle) -> np.ndarray:
    k = np.asarray(axis, float) / np.linalg.norm(axis)
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * K + (1 - np.cos(angle)) * K @ K  # Rodrigues


#: The default rotation ``R`` of :func:`toy3d` (angle 0.9 rad about ``(1, 2, 3)``).
TOY3D_ROTATION = _axis_angle((1.0, 2.0, 3.0), 0.9)


def _rot(rotation) -> Array:
    R = TOY3D_ROTATION if rotation is None else rotation
    return jnp.asarray(R, dtype=jnp.result_type(float))


def toy3d(c: float = 2.0, rotation=None) -> ResidualLoss:
    """The toy loss ``L(w) = (c + <a, θ>) <b, θ>²`` on ``R³ \\ {0}`` (see module docstring).

    It is a residual loss with the single residual ``r(w) = sqrt(c + <a, θ>) <b, θ>`` (smooth,
    since ``c + <a, θ> >= c − 1 > 0``). Requires ``c > 1``. ``rotation``: the ``3×3`` orthogonal
    ``R`` (default :data:`TOY3D_ROTATION`); ``a, b`` are its first and third rows.
    """
    if not c > 1:
        raise ValueError(f"toy3d needs c > 1 so that c + θ_1 > 0 on the sphere, got c={c}")
    R = _rot(rotation)
    a, b = R[0], R[2]

    def _ab(w: Array):
        # The rotation is stored in the default float dtype; compute in w's (a float32 run stays
        # float32 instead of promoting to float64 under x64).
        theta = w / jnp.linalg.norm(w)
        return theta @ a.astype(theta.dtype), theta @ b.astype(theta.dtype)

    def residual(w: Array) -> Array:
        ta, tb = _ab(w)
        return (jnp.sqrt(c + ta) * tb)[None]

    def loss(w: Array) -> Array:
        ta, tb = _ab(w)
        return (c + ta) * jnp.square(tb)

    return ResidualLoss(loss=loss, residual=residual, name=f"toy3d(c={c})")


def toy3d_curve(phi: Array, rotation=None) -> Array:
    """Points ``Rᵀ(cos φ, sin φ, 0)`` of the minimizer curve Γ; ``phi`` of any shape, adds a last
    axis of size 3."""
    phi = jnp.asarray(phi, dtype=jnp.result_type(float))
    flat = jnp.stack([jnp.cos(phi), jnp.sin(phi), jnp.zeros_like(phi)], axis=-1)
    return flat @ _rot(rotation)


def toy3d_normal(rotation=None) -> Array:
    """``b``: the unit normal of Γ's plane; on Γ the Hessian is ``λ1 b bᵀ``."""
    return _rot(rotation)[2]


def toy3d_sharpness_on_curve(phi: Array, c: float = 2.0) -> Array:
    """Closed-form spherical sharpness ``λ1 = 2(c + cos φ)`` at ``toy3d_curve(phi)``."""
    return 2.0 * (c + jnp.cos(phi))


def toy3d_flattest_point(rotation=None) -> Array:
    """The flattest minimizer ``ζ* = Rᵀ(−1, 0, 0)`` (``λ1 = 2(c − 1)``), independent of ``c``."""
    return -_rot(rotation)[0]
