"""Explicit Runge–Kutta methods as data: Butcher tableaux and one generic step.

:class:`ButcherTableau` holds a method ([HNW] E. Hairer, S. P. Nørsett, G. Wanner, *Solving
Ordinary Differential Equations I*, 2nd ed. 1993, §II.1; Dormand–Prince 5(4): Table II.5.2;
Bogacki–Shampine 3(2): Appl. Math. Lett. 2, 1989); :data:`EULER`, :data:`HEUN`, :data:`RK4`,
:data:`BOSH3`, :data:`DOPRI5` are the ones we use; :func:`rk_step` takes one step, with an
optional retraction onto a manifold (see :mod:`eosflow.ode`, which drives these steps).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array
VectorField = Callable[[Array, Array, Any], Array]
Retraction = Callable[[Array], Array]

# fmt: off
__all__ = [
    "ButcherTableau", "EULER", "HEUN", "RK4", "BOSH3", "DOPRI5", "rk_step", "rk_stages",
    "identity", "VectorField", "Retraction",
]
# fmt: on


class ButcherTableau(NamedTuple):
    """An explicit ``s``-stage Runge–Kutta method as data ([HNW] §II.1).

    With a retraction ``R`` (identity when none)::

        k_1 = f(t, y),   k_i = f(t + c_i dt, R(y + dt Σ_{j<i} a_ij k_j)),   i = 2..s
        y_new = R(y + dt Σ_i b_i k_i)                 (order ``order``)
        y_err = dt Σ_i (b_i − b̂_i) k_i               (``b̂ = b_err``, order ``error_order``)

    Attributes:
      name: for messages.
      a: rows 2..s of the strictly lower-triangular matrix; ``a[i-2]`` holds ``a_i1..a_i,i-1``.
      b: the ``s`` weights of the solution.
      c: the ``s`` nodes, ``c_1 = 0``, ``c_i = Σ_j a_ij``.
      order: ``p``, the order of ``y_new``.
      b_err: the weights ``b̂`` of the embedded lower-order solution, or ``None`` (no error
        estimate: fixed steps only).
      error_order: ``p̂``, the order of the embedded solution.
    """

    name: str
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    c: tuple[float, ...]
    order: int
    b_err: tuple[float, ...] | None = None
    error_order: int | None = None

    @property
    def fsal(self) -> bool:
        """First Same As Last: the last stage is ``f(t + dt, y_new)``, the next step's ``k_1``."""
        return bool(self.a) and self.c[-1] == 1.0 and tuple(self.a[-1]) + (0.0,) == self.b


EULER = ButcherTableau("Euler", a=(), b=(1.0,), c=(0.0,), order=1)
HEUN = ButcherTableau("Heun", a=((1.0,),), b=(0.5, 0.5), c=(0.0, 1.0), order=2)
RK4 = ButcherTableau(
    "RK4",
    a=((0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
    b=(1 / 6, 1 / 3, 1 / 3, 1 / 6),
    c=(0.0, 0.5, 0.5, 1.0),
    order=4,
)
BOSH3 = ButcherTableau(
    "Bosh3",
    a=((1 / 2,), (0.0, 3 / 4), (2 / 9, 1 / 3, 4 / 9)),
    b=(2 / 9, 1 / 3, 4 / 9, 0.0),
    c=(0.0, 1 / 2, 3 / 4, 1.0),
    order=3,
    b_err=(7 / 24, 1 / 4, 1 / 3, 1 / 8),
    error_order=2,
)
DOPRI5 = ButcherTableau(  # [HNW] Table II.5.2
    "Dopri5",
    a=(
        (1 / 5,),
        (3 / 40, 9 / 40),
        (44 / 45, -56 / 15, 32 / 9),
        (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
        (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
        (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
    ),
    b=(35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0),
    c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
    order=5,
    b_err=(5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40),
    error_order=4,
)


def identity(y: Array) -> Array:
    """The retraction of a run without one."""
    return y


def rk_stages(tableau, f, t, y, dt, args, retract, k1):
    """All stages of one step: ``(y_new, y_err or None, k_s)``; ``k1 = f(t, y)`` if given.

    Stages 2..s run in a ``lax.fori_loop`` over the rows of the (static) matrix ``A``, so the
    compiled program holds one copy of ``f`` and ``R`` however many stages the tableau has: ``f``
    can be expensive to compile (the flow's vector field differentiates the loss three times).
    """
    R = retract or identity
    s = len(tableau.c)
    A = np.zeros((s, s))
    for i, row in enumerate(tableau.a, start=1):
        A[i, : len(row)] = row
    k1 = f(t, y, args) if k1 is None else k1
    ks = jnp.zeros((s, *y.shape), y.dtype).at[0].set(k1)
    if s > 1:
        A_, c_ = jnp.asarray(A, y.dtype), jnp.asarray(tableau.c, y.dtype)

        def stage(i, ks):
            y_i = R(y + dt * jnp.tensordot(A_[i], ks, axes=1))
            return ks.at[i].set(f(t + c_[i] * dt, y_i, args))

        ks = lax.fori_loop(1, s, stage, ks)
    y_new = R(y + dt * jnp.tensordot(jnp.asarray(tableau.b, y.dtype), ks, axes=1))
    if tableau.b_err is None:
        return y_new, None, ks[-1]
    d = jnp.asarray([b - bh for b, bh in zip(tableau.b, tableau.b_err, strict=True)], y.dtype)
    return y_new, dt * jnp.tensordot(d, ks, axes=1), ks[-1]


def rk_step(
    tableau: ButcherTableau,
    f: VectorField,
    t: Array,
    y: Array,
    dt: Array,
    args: Any = None,
    retract: Retraction | None = None,
) -> tuple[Array, Array | None]:
    """One explicit RK step of ``tableau`` (formulas in :class:`ButcherTableau`).

    Returns:
      ``(y_new, y_err)``: ``y_new`` approximates ``y(t + dt)`` (shape of ``y``, retracted when
      ``retract`` is given); ``y_err = dt Σ (b_i − b̂_i) k_i`` estimates its local error (``None``
      for tableaux without ``b_err``). Costs ``s`` evaluations of ``f``.
    """
    y_new, y_err, _ = rk_stages(tableau, f, t, y, dt, args, retract, None)
    return y_new, y_err
