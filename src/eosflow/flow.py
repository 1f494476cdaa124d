"""The sharpness-reduction flow, eq. (3), integrated on the minimizer manifold Γ.

``dζ/dτ = −2 ∇_Γ log λ1(ζ) / (4 + ||∇_Γ log λ1(ζ)||²)``, ``ζ(0) = ζ0 ∈ Γ``.

Along the flow ``d log λ1/dτ = −2||∇_Γ log λ1||²/(4 + ||∇_Γ log λ1||²) <= 0``: spherical sharpness
never increases. Theorem 4.7: GD+WD at the Edge of Stability tracks ``ζ(t η_in)``, one GD step per
``η_in = lr·wd`` of flow time.

Integration uses our own Runge–Kutta code (:mod:`eosflow.ode`) with every stage retracted onto Γ
(and the unit sphere) by :func:`~eosflow.manifold.project_to_manifold`, so the flow stays on Γ to
the projection's accuracy (loss ~1e-25 on the residual fast path). The whole solve is one jitted
``lax.while_loop``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from eosflow import ode
from eosflow.manifold import (
    grad_gamma,
    grad_log_sharpness,
    local_geometry,
    project_to_manifold,
    riemannian_grad_norm,
)
from eosflow.precision import warn_if_low_precision

Array = jax.Array

__all__ = [
    "FlowSolution",
    "flow_vector_field",
    "sharpness_reduction_flow",
    "check_on_manifold",
    "FlowError",
]

METHODS = {"euler": "EULER", "heun": "HEUN", "rk4": "RK4", "bosh3": "BOSH3", "dopri5": "DOPRI5"}
ADAPTIVE = ("bosh3", "dopri5")


class FlowError(RuntimeError):
    """The flow integration failed (step-size underflow or non-finite state). ``tau`` is the flow
    time reached; ``solution`` holds the :class:`FlowSolution` up to there."""

    def __init__(self, message: str, tau: float, solution):
        super().__init__(message)
        self.tau = tau
        self.solution = solution


class FlowSolution(NamedTuple):
    """A solution of eq. (3).

    Attributes:
      tau: ``(S,)`` flow times of the saved points.
      zeta: ``(S, D)`` points ``ζ(τ)`` (on Γ and the unit sphere).
      sharpness: ``(S,)`` ``λ1(∇²L(ζ(τ)))``.
      grad_norm: ``(S,)`` ``||∇_Γ log λ1(ζ(τ))||``.
      velocity: ``(S, D)`` ``dζ/dτ`` at the saved points (used for Hermite interpolation).
      stats: the ODE solver's :class:`~eosflow.ode` statistics.
      result: the solver's result code (0 = success).
    """

    tau: Array
    zeta: Array
    sharpness: Array
    grad_norm: Array
    velocity: Array
    stats: object
    result: object

    def evaluate(self, tau) -> Array:
        """``ζ(τ)`` at any ``τ`` in ``[tau[0], tau[-1]]``: cubic Hermite interpolation between
        saved points (using the saved velocities), renormalized onto the unit sphere. Error
        ``O(h⁴)`` for save spacing ``h``. ``tau`` scalar or ``(T,)``; returns ``(D,)`` or ``(T, D)``.
        """
        return _hermite(self.tau, self.zeta, self.velocity, jnp.asarray(tau))


@jax.jit
def _hermite(ts, ys, dys, t):
    # One compiled program per shape of t (eager, each of the ops below compiled on its own).
    scalar = t.ndim == 0
    t = jnp.atleast_1d(t)
    i = jnp.clip(jnp.searchsorted(ts, t, side="right") - 1, 0, ts.shape[0] - 2)
    t0, t1 = ts[i], ts[i + 1]
    h = t1 - t0
    s = ((t - t0) / jnp.where(h > 0, h, 1.0))[:, None]
    h = h[:, None]
    h00 = 2 * s**3 - 3 * s**2 + 1
    h10 = s**3 - 2 * s**2 + s
    h01 = -2 * s**3 + 3 * s**2
    h11 = s**3 - s**2
    y = h00 * ys[i] + h10 * h * dys[i] + h01 * ys[i + 1] + h11 * h * dys[i + 1]
    y = y / jnp.linalg.norm(y, axis=1, keepdims=True)
    return y[0] if scalar else y


def _field_and_diagnostics(loss, zeta, method, rank_rtol):
    geom = local_geometry(loss, zeta, method=method, rank_rtol=rank_rtol)
    g = grad_gamma(geom, zeta, grad_log_sharpness(loss, zeta, geom))
    g2 = jnp.sum(jnp.square(g))
    return -2.0 * g / (4.0 + g2), geom.sharpness, jnp.sqrt(g2)


def flow_vector_field(loss: Callable, *, method: str = "auto", rank_rtol: float | None = None):
    """The right-hand side of eq. (3) as ``f(τ, ζ, args) -> dζ/dτ``.

    ``∇_Γ log λ1`` = Hellmann–Feynman gradient of ``λ1`` (third derivative by autodiff), divided by
    ``λ1`` and projected onto ``T_ζΓ`` (:mod:`eosflow.manifold`; ``method``/``rank_rtol`` choose the
    backend and the rank threshold).
    """

    def f(tau, zeta, args):
        return _field_and_diagnostics(loss, zeta, method, rank_rtol)[0]

    return f


def check_on_manifold(
    loss: Callable, zeta: Array, *, loss_tol: float = 1e-12, grad_tol: float = 1e-7
) -> None:
    """Raise ``ValueError`` unless ``L(ζ) <= loss_tol`` and ``||∇L(ζ)|| <= grad_tol`` at unit ``ζ``.

    The message says how to retract ``ζ`` onto Γ, and, if ``ζ`` is float32 (where the projection
    cannot reach these tolerances), how to turn float64 on."""
    zeta = jnp.asarray(zeta)
    value = float(loss(zeta))
    gn = float(riemannian_grad_norm(loss, zeta))
    if not (value <= loss_tol and gn <= grad_tol):
        raise ValueError(
            f"zeta0 is not on the minimizer manifold Γ: L(zeta0) = {value:.3g} (tolerance "
            f"{loss_tol:g}), ||∇L(zeta0)|| = {gn:.3g} (tolerance {grad_tol:g}). "
            + _retract_hint(zeta.dtype)
        )


def _retract_hint(dtype) -> str:
    """How to get ``zeta0`` onto Γ; in float32 the cause is the precision, not a missing
    retraction."""
    retract = "zeta0 = eosflow.project_to_manifold(loss, zeta0).point"
    if jnp.finfo(dtype).bits >= 64:
        return f"Retract it first: {retract}"
    return (
        f"zeta0 is {jnp.dtype(dtype).name}, where the projection stops near L ~ 1e-14 and "
        "||∇L|| ~ 1e-7, short of these tolerances: compute in float64 (call "
        f"eosflow.enable_x64() at program start, before creating arrays), then {retract}"
    )


@partial(
    jax.jit,
    static_argnames=(
        "loss",
        "method",
        "steps_method",
        "num_saves",
        "max_steps",
        "backend",
        "rank_rtol",
        "retract_iter",
    ),
)
def _solve(
    loss,
    zeta0,
    t_end,
    dt,
    rtol,
    atol,
    *,
    method,
    steps_method,
    num_saves,
    max_steps,
    backend,
    rank_rtol,
    retract_iter,
):
    f = flow_vector_field(loss, method=backend, rank_rtol=rank_rtol)

    def retract(y):
        return project_to_manifold(
            loss, y, method=backend, max_iter=retract_iter, rank_rtol=rank_rtol
        ).point

    tableau = getattr(ode, METHODS[method])
    saveat = jnp.linspace(0.0, t_end, num_saves)
    controller = ode.PIController(rtol=rtol, atol=atol) if steps_method else None
    sol = ode.solve(
        f,
        tableau,
        0.0,
        t_end,
        zeta0,
        None,
        dt0=dt,
        controller=controller,
        max_steps=max_steps,
        saveat=saveat,
        retract=retract,
    )
    diag = jax.vmap(lambda z: _field_and_diagnostics(loss, z, backend, rank_rtol))
    vel, lam, gn = diag(sol.ys)
    return sol, vel, lam, gn


def sharpness_reduction_flow(
    loss: Callable,
    zeta0: Array,
    t_end: float,
    *,
    method: str = "rk4",
    dt: float | None = None,
    rtol: float = 1e-7,
    atol: float = 1e-9,
    adaptive: bool | None = None,
    num_saves: int = 201,
    max_steps: int = 100_000,
    backend: str = "auto",
    rank_rtol: float | None = None,
    retract_iter: int = 8,
    gap_rtol: float = 1e-3,
    on_failure: str = "raise",
) -> FlowSolution:
    """Integrate the sharpness-reduction flow, eq. (3), from ``zeta0 ∈ Γ`` up to ``τ = t_end``.

    Args:
      loss: scale-invariant loss (plain callable, or a ``ResidualLoss`` for the fast path).
      zeta0: a point of Γ (normalized to unit norm). Checked: ``L(ζ0) <= 1e-12`` and
        ``||∇L(ζ0)|| <= 1e-7``, else ``ValueError`` pointing to ``project_to_manifold``.
      t_end: final flow time (> 0). One GD+WD step corresponds to ``η_in = lr·wd`` of flow time.
      method: ``"euler"``, ``"heun"``, ``"rk4"`` (fixed step ``dt``), ``"bosh3"`` or ``"dopri5"``
        (adaptive with a PI controller by default, tolerances ``rtol``/``atol``; pass
        ``adaptive=False`` to use them with fixed steps).
      dt: step (fixed) or initial step (adaptive); default ``t_end/200``.
      num_saves: number of equally spaced saved times in ``[0, t_end]`` (dense output).
      backend, rank_rtol: geometry backend (``"auto"``, ``"residual"``, ``"generic"``) and rank
        threshold, see :mod:`eosflow.manifold`.
      retract_iter: projection iterations per stage retraction.
      gap_rtol: warn (``RuntimeWarning``) if ``(λ1 − λ2)/λ1 < gap_rtol`` at ``ζ0`` (Assumption 4.6
        — a near-degenerate top eigenvalue makes ``∇λ1`` ill-defined).
      on_failure: ``"raise"`` (:class:`FlowError` naming the ``τ`` reached, with the solution up
        to there attached) or ``"return"`` (the partial solution; check ``result``).

    Returns:
      a :class:`FlowSolution`; ``.evaluate(τ)`` gives ``ζ`` at any ``τ``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
    if not (np.isfinite(t_end) and t_end > 0):
        raise ValueError(f"t_end must be finite and > 0, got {t_end}")
    if on_failure not in ("raise", "return"):
        raise ValueError(f"on_failure must be 'raise' or 'return', got {on_failure!r}")
    zeta0 = jnp.asarray(zeta0)
    warn_if_low_precision("sharpness_reduction_flow", zeta0.dtype)
    if zeta0.ndim != 1:
        raise ValueError(f"zeta0 must be a flat vector (D,), got shape {zeta0.shape}")
    zeta0 = zeta0 / jnp.linalg.norm(zeta0)
    check_on_manifold(loss, zeta0)
    geom = local_geometry(loss, zeta0, method=backend, rank_rtol=rank_rtol)
    gap = float((geom.sharpness - geom.lambda2) / geom.sharpness)
    if gap < gap_rtol:
        warnings.warn(
            f"near-degenerate top eigenvalue at zeta0: λ1 = {float(geom.sharpness):.6g}, "
            f"λ2 = {float(geom.lambda2):.6g}, relative gap {gap:.2e} < {gap_rtol:g} "
            "(Assumption 4.6); ∇λ1 and the flow may be inaccurate",
            RuntimeWarning,
            stacklevel=2,
        )
    adaptive = (method in ADAPTIVE) if adaptive is None else bool(adaptive)
    if adaptive and method not in ADAPTIVE:
        raise ValueError(f"method {method!r} has no error estimate; use 'bosh3' or 'dopri5'")
    dt = t_end / 200 if dt is None else dt
    dtype = zeta0.dtype
    sol, vel, lam, gn = _solve(
        loss,
        zeta0,
        jnp.asarray(t_end, dtype),
        jnp.asarray(dt, dtype),
        jnp.asarray(rtol, dtype),
        jnp.asarray(atol, dtype),
        method=method,
        steps_method=adaptive,
        num_saves=int(num_saves),
        max_steps=int(max_steps),
        backend=backend,
        rank_rtol=rank_rtol,
        retract_iter=int(retract_iter),
    )
    return _finish(
        FlowSolution(sol.ts, sol.ys, lam, gn, vel, sol.stats, sol.result), sol, on_failure
    )


def _finish(fs: FlowSolution, sol, on_failure):
    if int(fs.result) == 0:
        return fs
    reached = float(sol.t_final)
    keep = int(np.searchsorted(np.asarray(fs.tau), reached, side="right"))
    cut = fs._replace(
        tau=fs.tau[:keep],
        zeta=fs.zeta[:keep],
        sharpness=fs.sharpness[:keep],
        grad_norm=fs.grad_norm[:keep],
        velocity=fs.velocity[:keep],
    )
    if on_failure == "return":
        return cut
    raise FlowError(
        f"sharpness_reduction_flow failed at τ = {reached:.6g} ({ode.Result(int(sol.result)).name}); "
        "the solution up to there is in the exception's .solution",
        reached,
        cut,
    )
