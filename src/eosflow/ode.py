"""Explicit Runge–Kutta ODE solvers, fixed-step or adaptive, with optional retraction to a manifold.

Written to integrate the sharpness-reduction flow (3) while keeping ``ζ`` on the unit sphere and on
``Γ`` (THEORY.md). Shaped like diffrax, much smaller: a vector field ``f(t, y, args) -> dy/dt``;
methods as data (:mod:`eosflow.runge_kutta`, :class:`ButcherTableau`: :data:`EULER`, :data:`HEUN`, :data:`RK4`, :data:`BOSH3`,
:data:`DOPRI5`); one generic step (:func:`rk_step`); a jitted driver (:func:`solve`) that returns a
:class:`Solution`; dense output (:func:`interpolate`); :func:`raise_if_failed` outside of ``jit``.

``y`` is one array (any shape, typically ``(D,)``; pytrees are not supported). Times take the dtype
of ``y0``: use float64 (:func:`eosflow.enable_x64`) for convergence checks.

Retraction ``R`` (``R = id`` on the manifold ``M``, e.g. ``y/||y||`` for the sphere): every stage is
evaluated at ``R(stage value)`` and the new state is ``R(y_new)``. That is the RK method applied to
``f∘R``; when ``f`` is tangent to ``M``, ``f∘R = f`` on ``M``, the exact flows agree on ``M`` and
the classical order is kept (tested); the final ``R`` is the projection method of Hairer, Lubich &
Wanner, *Geometric Numerical Integration* (2nd ed. 2006), §IV.4.

References: [HNW] E. Hairer, S. P. Nørsett, G. Wanner, *Solving Ordinary Differential Equations I*
(2nd ed., Springer 1993): §II.1 (explicit RK), §II.4 (error estimate, step-size selection), §II.5
(Dormand–Prince 5(4), Table 5.2), §II.6 (Hermite dense output); [HW] E. Hairer, G. Wanner, *... II*
(2nd ed. 1996), §IV.2 (PI step-size control after K. Gustafsson, ACM TOMS 17, 1991);
P. Bogacki, L. F. Shampine, *A 3(2) pair of Runge–Kutta formulas*, Appl. Math. Lett. 2 (1989).
"""

from __future__ import annotations

import enum
import math
from functools import partial
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from eosflow.runge_kutta import (
    BOSH3,
    DOPRI5,
    EULER,
    HEUN,
    RK4,
    ButcherTableau,
    Retraction,
    VectorField,
    identity,
    rk_stages,
    rk_step,
)

Array = jax.Array

# fmt: off
__all__ = [
    "ButcherTableau", "EULER", "HEUN", "RK4", "BOSH3", "DOPRI5", "rk_step", "PIController",
    "Result", "Stats", "Solution", "solve", "interpolate", "IntegrationError", "raise_if_failed",
]
# fmt: on


class PIController(NamedTuple):
    """Adaptive step size: error control with a PI controller ([HNW] §II.4, [HW] §IV.2).

    A trial step ``dt`` with embedded estimate ``y_err`` has error norm
    ``err = RMS(y_err / (atol + rtol·max(|y|, |y_new|)))`` and is accepted iff ``err <= 1``.
    With ``k = error_order + 1`` (the local error of the estimate is ``O(dt^k)``) the next step is
    ``dt·fac``::

        accepted:  fac = clip(safety · err^(−beta1/k) · err_prev^(beta2/k), factor_min, factor_max)
        rejected:  fac = clip(safety · err^(−1/k), factor_min, 1)     (retry from the same t)

    ``err_prev`` is the error of the last accepted step (floored at 1e-4 as in Hairer's DOPRI5
    code; 1 at the start). ``beta1 = 0.7, beta2 = 0.4`` are Gustafsson's PI coefficients
    ([HW] §IV.2); ``beta2 = 0`` gives the classical I controller. A non-finite trial counts as
    ``err = ∞`` (rejected). The solve stops with ``Result.DT_UNDERFLOW`` when the proposed step is
    below ``dt_min`` (absolute, in units of ``t``) or below ``64 ulp(t)`` (``t + dt`` would round
    too coarsely, e.g. float32 near a singularity).

    Fields are traced by :func:`solve`, so new tolerances do not recompile.
    """

    rtol: float = 1e-6
    atol: float = 1e-9
    safety: float = 0.9
    beta1: float = 0.7
    beta2: float = 0.4
    factor_min: float = 0.2
    factor_max: float = 5.0
    dt_min: float = 1e-12
    dt_max: float = math.inf


class Result(enum.IntEnum):
    """Why :func:`solve` stopped (``Solution.result`` holds the int)."""

    SUCCESS = 0
    MAX_STEPS_REACHED = 1
    DT_UNDERFLOW = 2
    NONFINITE = 3


_RUNNING = -1
_REASONS = {
    Result.MAX_STEPS_REACHED: "max_steps reached before t1",
    Result.DT_UNDERFLOW: "step size fell below dt_min or 64 ulp(t) (singularity? stiffness?)",
    Result.NONFINITE: "the state or the vector field became non-finite",
}


class Stats(NamedTuple):
    """Counters of a solve (int32 scalars)."""

    num_accepted: Array
    num_rejected: Array
    num_fevals: Array


class Solution(NamedTuple):
    """The output of :func:`solve`. ``N`` = ``len(saveat)``, or ``max_steps + 1`` without saveat.

    Attributes:
      ts: ``(N,)`` saved times; rows never reached hold ``+inf`` (and NaN in ``ys``, ``fs``).
      ys: ``(N, *y0.shape)`` states at ``ts``.
      fs: ``(N, *y0.shape)`` ``dy/dt`` at ``ts`` (exact ``f`` at steps; at ``saveat`` points the
        derivative of the Hermite cubic), so :func:`interpolate` can be cubic.
      stats: :class:`Stats`.
      result: int32, a :class:`Result` code.
      t_final, y_final: the last accepted time and state (``t1`` on success; on failure the last
        valid point, which is also the last saved one when saving every step).
    """

    ts: Array
    ys: Array
    fs: Array
    stats: Stats
    result: Array
    t_final: Array
    y_final: Array


class _State(NamedTuple):
    t: Array
    y: Array
    fy: Array
    dt: Array
    err_prev: Array
    i_save: Array
    ts: Array
    ys: Array
    fs: Array
    n_acc: Array
    n_rej: Array
    n_fev: Array
    result: Array


def _hermite(ta, ya, fa, tb, yb, fb, t):
    """Cubic Hermite interpolant on ``[ta, tb]`` and its derivative at ``t`` ([HNW] §II.6)."""
    h = tb - ta
    s = (t - ta) / h
    s2, s3 = s * s, s * s * s
    y = (2 * s3 - 3 * s2 + 1) * ya + (s3 - 2 * s2 + s) * h * fa + (3 * s2 - 2 * s3) * yb
    y = y + (s3 - s2) * h * fb
    dy = (6 * s2 - 6 * s) * (ya - yb) / h + (3 * s2 - 4 * s + 1) * fa + (3 * s2 - 2 * s) * fb
    return y, dy


def _pi_control(c: PIController, k: int, y, y_new, y_err, h, err_prev, finite):
    """``(accept, dt_next, err_prev_next)`` of :class:`PIController`."""
    scale = c.atol + c.rtol * jnp.maximum(jnp.abs(y), jnp.abs(y_new))
    err = jnp.sqrt(jnp.mean(jnp.square(y_err / scale)))
    err = jnp.where(finite & jnp.isfinite(err), err, jnp.inf)
    accept = err <= 1.0
    e = jnp.maximum(err, 1e-10)
    fac_acc = jnp.clip(
        c.safety * e ** (-c.beta1 / k) * err_prev ** (c.beta2 / k), c.factor_min, c.factor_max
    )
    fac_rej = jnp.clip(c.safety * e ** (-1.0 / k), c.factor_min, 1.0)
    dt_next = jnp.minimum(h * jnp.where(accept, fac_acc, fac_rej), c.dt_max)
    return accept, dt_next, jnp.where(accept, jnp.maximum(err, 1e-4), err_prev)


def _initial_state(t0, t1, y0, f0, dt0, saveat, max_steps) -> _State:
    """The loop state at ``t0``: buffers of ``max_steps + 1`` rows holding ``(t0, y0, f0)``
    (``saveat=None``), or of ``len(saveat)`` rows with the requested times ``<= t0`` filled."""
    dtype = y0.dtype
    n_save = max_steps + 1 if saveat is None else saveat.shape[0]
    ts = jnp.full((n_save,), jnp.inf, dtype)
    ys = jnp.full((n_save, *y0.shape), jnp.nan, dtype)
    fs = ys
    if saveat is None:
        ts, ys, fs, i_save = ts.at[0].set(t0), ys.at[0].set(y0), fs.at[0].set(f0), 1
    else:
        at_t0 = saveat <= t0
        mask = at_t0.reshape(-1, *([1] * y0.ndim))
        ts = jnp.where(at_t0, saveat, ts)
        ys, fs = jnp.where(mask, y0, ys), jnp.where(mask, f0, fs)
        i_save = jnp.sum(at_t0)
    finite0 = jnp.all(jnp.isfinite(y0)) & jnp.all(jnp.isfinite(f0))
    result0 = jnp.where(finite0, jnp.where(t0 >= t1, Result.SUCCESS, _RUNNING), Result.NONFINITE)
    i32 = lambda x: jnp.asarray(x, jnp.int32)
    return _State(
        t0, y0, f0, dt0, jnp.ones((), dtype), i32(i_save), ts, ys, fs,
        i32(0), i32(0), i32(1), i32(result0),
    )  # fmt: skip


def _save(s: _State, accept, t_new, y_new, f_new, saveat, n_save, R):
    """The save buffers after a step: the accepted step itself (``saveat=None``), or the cubic
    Hermite interpolant at every requested time it passed (retracted by ``R``)."""
    if saveat is None:
        i = s.i_save
        keep = lambda buf, v: buf.at[i].set(jnp.where(accept, v, buf[i]))
        return i + accept, keep(s.ts, t_new), keep(s.ys, y_new), keep(s.fs, f_new)

    def fill_cond(c):
        return accept & (c[0] < n_save) & (saveat[jnp.minimum(c[0], n_save - 1)] <= t_new)

    def fill(c):
        i, ts, ys, fs = c
        y_i, f_i = _hermite(s.t, s.y, s.fy, t_new, y_new, f_new, saveat[i])
        return i + 1, ts.at[i].set(saveat[i]), ys.at[i].set(R(y_i)), fs.at[i].set(f_i)

    return lax.while_loop(fill_cond, fill, (s.i_save, s.ts, s.ys, s.fs))


@partial(jax.jit, static_argnames=("f", "tableau", "max_steps", "retract"))
def solve(
    f: VectorField,
    tableau: ButcherTableau,
    t0: Array,
    t1: Array,
    y0: Array,
    args: Any = None,
    *,
    dt0: Array,
    controller: PIController | None = None,
    saveat: Array | None = None,
    max_steps: int = 4096,
    retract: Retraction | None = None,
) -> Solution:
    """Integrate ``dy/dt = f(t, y, args)``, ``y(t0) = y0``, over ``[t0, t1]`` (``t0 < t1``).

    One ``lax.while_loop`` of :func:`rk_step`-type steps, jitted: ``f``, ``tableau``, ``retract``
    and ``max_steps`` are static (``f``/``retract`` keyed by identity: keep the same function
    objects to reuse the compiled program); times, ``y0``, ``args`` (a pytree of arrays), ``dt0``,
    the controller's numbers and ``saveat`` are traced.

    Stepping (``dt0 > 0``): ``controller=None`` steps to ``t_n = t0 + n·dt0``;
    :class:`PIController` adapts ``dt`` from ``dt0`` (needs ``tableau.b_err``). A step that would
    end within ``1.01·dt`` of ``t1`` is stretched or clipped to end exactly at ``t1`` (no sliver
    steps, as in Hairer's codes). With ``retract`` every stage and every new state is retracted
    (module docstring); ``y0`` should lie on the manifold. ``f`` is evaluated at each accepted
    ``(t, y)`` (FSAL tableaux get it free), so a step costs ``s`` evaluations (``s − 1`` for FSAL),
    plus one at ``t0``; a rejected step costs the same.

    Saving: ``saveat=None`` saves every accepted step (buffers of ``max_steps + 1`` rows: memory
    ``∝ max_steps·size(y)``); otherwise ``saveat`` is a sorted ``(N,)`` array in ``[t0, t1]`` and
    the state there is the cubic Hermite interpolant between the accepted steps around it (from
    ``y, f`` at both ends; local error ``O(dt^4)``, exact at ``t1``), retracted if ``retract``.

    Failures stop the loop without raising (use :func:`raise_if_failed` outside ``jit``):
    ``MAX_STEPS_REACHED`` after ``max_steps`` attempted steps; ``NONFINITE`` when a fixed step (or,
    adaptively, the step that underflowed) produced NaN/Inf; ``DT_UNDERFLOW`` (adaptive). The
    saved rows and ``t_final, y_final`` are the last valid ones.

    Returns:
      :class:`Solution`.
    """
    if controller is not None and tableau.b_err is None:
        raise ValueError(
            f"{tableau.name} has no embedded error estimate (b_err); use BOSH3 or DOPRI5 for "
            "adaptive steps, or controller=None for fixed steps."
        )
    y0 = jnp.asarray(y0)
    if not jnp.issubdtype(y0.dtype, jnp.floating):
        raise TypeError(f"y0 must be a floating array, got dtype {y0.dtype}.")
    dtype = y0.dtype
    t0, t1, dt0 = (jnp.asarray(x, dtype) for x in (t0, t1, dt0))
    R = retract or identity
    f0 = f(t0, y0, args)
    chex.assert_equal_shape([f0, y0])  # f(t, y) must return dy/dt of y's shape (trace time)
    extra_fev = 0 if tableau.fsal else 1
    fevs_per_step = len(tableau.c) - 1 + extra_fev

    if saveat is not None:
        saveat = jnp.asarray(saveat, dtype)
    init = _initial_state(t0, t1, y0, f0, dt0, saveat, max_steps)
    n_save = init.ts.shape[0]

    def body(s: _State) -> _State:
        if controller is None:  # t0 + n·dt0: no drift from summing dt0
            t_next = t0 + (s.n_acc + 1).astype(dtype) * dt0
        else:
            t_next = s.t + s.dt
        last = t_next + 0.01 * s.dt >= t1
        t_new = jnp.where(last, t1, t_next)
        h = t_new - s.t
        y_new, y_err, k_s = rk_stages(tableau, f, s.t, s.y, h, args, retract, s.fy)
        f_new = k_s if tableau.fsal else f(t_new, y_new, args)
        finite = jnp.all(jnp.isfinite(y_new)) & jnp.all(jnp.isfinite(f_new))
        if controller is None:
            accept, dt_next, err_prev = finite, s.dt, s.err_prev
            stop_nonfinite, underflow = ~finite, jnp.zeros((), bool)
        else:
            k = tableau.error_order + 1
            accept, dt_next, err_prev = _pi_control(
                controller, k, s.y, y_new, y_err, h, s.err_prev, finite
            )
            ulps = 64 * jnp.finfo(dtype).eps * jnp.abs(s.t)  # below this, t + dt is too coarse
            underflow = dt_next < jnp.maximum(controller.dt_min, ulps)
            stop_nonfinite = underflow & ~finite

        i_save, ts, ys, fs = _save(s, accept, t_new, y_new, f_new, saveat, n_save, R)
        n_acc, n_rej = s.n_acc + accept, s.n_rej + ~accept
        result = jnp.select(
            [accept & last, stop_nonfinite, underflow, n_acc + n_rej >= max_steps],
            [Result.SUCCESS, Result.NONFINITE, Result.DT_UNDERFLOW, Result.MAX_STEPS_REACHED],
            _RUNNING,
        )
        pick = lambda new, old: jnp.where(accept, new, old)
        return _State(
            pick(t_new, s.t), pick(y_new, s.y), pick(f_new, s.fy), dt_next, err_prev, i_save,
            ts, ys, fs, n_acc, n_rej, s.n_fev + fevs_per_step, jnp.asarray(result, jnp.int32),
        )  # fmt: skip

    s = lax.while_loop(lambda s: s.result == _RUNNING, body, init)
    return Solution(s.ts, s.ys, s.fs, Stats(s.n_acc, s.n_rej, s.n_fev), s.result, s.t, s.y)


@partial(jax.jit, static_argnames=("retract",))
def interpolate(solution: Solution, t: Array, retract: Retraction | None = None) -> Array:
    """Dense output: the solution at time(s) ``t`` from the saved points of ``solution``.

    Between consecutive saved points ``(t_a, y_a, f_a)``, ``(t_b, y_b, f_b)`` this is the cubic
    Hermite interpolant ``y(t_a + θh) = (2θ³−3θ²+1) y_a + (θ³−2θ²+θ) h f_a + (3θ²−2θ³) y_b +
    (θ³−θ²) h f_b`` (``h = t_b − t_a``), retracted if ``retract`` is given. With every step saved
    (``saveat=None``) ``f`` is exact and the interpolation error is ``O(h⁴)`` per step, on top of
    the solver's global error; with ``saveat`` the nodes are the saveat points (``f`` there is
    the derivative of the solver's Hermite cubic, error ``O(dt³)``), so the error is
    ``O(Δ⁴ + Δ·dt³)`` for saveat spacing ``Δ``: save densely, or every step, where it matters.

    Args:
      solution: from :func:`solve`, with at least two saved points.
      t: scalar or ``(M,)`` times in ``[ts[0], last saved t]``; outside it the result is NaN.

    Returns:
      ``y(t)``: shape ``y0.shape`` for scalar ``t``, ``(M, *y0.shape)`` otherwise.
    """
    ts, ys, fs = solution.ts, solution.ys, solution.fs
    n = jnp.sum(jnp.isfinite(ts))
    R = retract or identity

    def one(tau):
        i = jnp.clip(jnp.searchsorted(ts, tau, side="right") - 1, 0, jnp.maximum(n - 2, 0))
        y, _ = _hermite(ts[i], ys[i], fs[i], ts[i + 1], ys[i + 1], fs[i + 1], tau)
        return jnp.where((tau >= ts[0]) & (tau <= ts[n - 1]), R(y), jnp.nan)

    t = jnp.asarray(t, ts.dtype)
    return one(t) if t.ndim == 0 else jax.vmap(one)(t)


class IntegrationError(RuntimeError):
    """:func:`solve` did not reach ``t1``. ``solution`` holds what was computed up to there."""

    def __init__(self, message: str, solution: Solution):
        super().__init__(message)
        self.solution = solution


def raise_if_failed(solution: Solution, where: str = "solve") -> Solution:
    """Raise :class:`IntegrationError` unless ``solution.result`` is ``SUCCESS`` (not jittable).

    The message names ``where``, the time reached and the reason; for a batched (vmapped)
    solution it reports the first failed element. Returns ``solution`` when it succeeded.
    """
    codes = np.atleast_1d(np.asarray(solution.result)).ravel()
    bad = np.flatnonzero(codes != Result.SUCCESS)
    if bad.size == 0:
        return solution
    i = int(bad[0])
    t = float(np.atleast_1d(np.asarray(solution.t_final)).ravel()[i])
    stats = [int(np.atleast_1d(np.asarray(x)).ravel()[i]) for x in solution.stats]
    batch = f" (batch element {i})" if np.ndim(solution.result) else ""
    raise IntegrationError(
        f"{where}: integration stopped at t = {t:.12g}{batch}: {_REASONS[Result(codes[i])]} "
        f"({stats[0]} accepted, {stats[1]} rejected steps, {stats[2]} f-evaluations).",
        solution,
    )
