"""Any optax optimizer through the simulator, with the effective learning rate *measured* from the step.

The paper's mechanism (Section 4.2.3, Appendix B "Quasi-RMSprop", unavailable to us) is not
specific to GD+WD: :func:`simulate_optax` runs any optax ``GradientTransformation`` on a loss in the
same compiled driver as :func:`eosflow.simulate` (one ``lax.scan``, non-finite guard, warm-started
Lanczos sharpness) and records the same diagnostics in a :class:`~eosflow.Trajectory`.

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

Compilation: the loss and ``optimizer.update`` are static (keyed by identity, like the loss in
:func:`eosflow.simulate`); the initial optimizer state is traced. A new optimizer *object*
recompiles, so to vary hyperparameters without recompiling keep them in the optimizer state
(``optax.inject_hyperparams``, or :func:`scalar_rmsprop`, which stores ``η, β, ε`` in its state)
and pass ``opt_state``. Trajectory ``lr`` and ``wd`` are NaN (unknown for a general optimizer).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.flatten_util import ravel_pytree

from eosflow.params import flatten_loss
from eosflow.sharpness import _default_v0, hvp, lanczos_top_eigs
from eosflow.simulate import Trajectory, _finish, _is_tracer, _run, _trajectory, _validate_run

Array = jax.Array

__all__ = [
    "OptimState",
    "OptimStepInfo",
    "OptimRun",
    "ScalarRMSpropState",
    "measured_eff_lr",
    "measured_lr",
    "scalar_rmsprop",
    "simulate_optax",
    "simulate_rmsprop",
    "plain_top_eigs",
]

GEOMETRIES = ("sphere", "plain")


class OptimState(NamedTuple):
    """Driver state: flat parameters ``w_t`` ``(D,)`` and the optax state ``opt_state``."""

    w: Array
    opt_state: Any


class OptimStepInfo(NamedTuple):
    """Diagnostics of one optimizer step, at ``w_t`` (before the update).

    Attributes:
      loss: ``L(w_t)`` (``= L(θ_t)`` for a scale-invariant loss).
      grad_norm: sphere: ``||∇L(θ_t)|| = ||w_t|| ||∇L(w_t)||``; plain: ``||∇L(w_t)||``.
      norm: ``||w_t||``.
      eff_lr: measured ``η̃_t`` (sphere) or ``η_t`` (plain), see the module docstring.
      fit_residual: relative residual of that fit, in ``[0, 1]``.
    """

    loss: Array
    grad_norm: Array
    norm: Array
    eff_lr: Array
    fit_residual: Array


class OptimRun(NamedTuple):
    """What :func:`simulate_optax` returns.

    Attributes:
      trajectory: a :class:`~eosflow.Trajectory` (``eff_lr`` measured, ``lr = wd = NaN``; in the
        plain geometry ``loss``/``grad_norm``/``sharpness`` are taken at ``w_t``, see module doc).
      fit_residual: ``(T,)`` relative residual of the measured-LR fit at each record.
      top_eigvec: plain geometry: ``(S, D)`` top Hessian eigenvectors ``v1(∇²L(w_t))`` at the
        steps with a sharpness value (``trajectory.step[::sharpness_every // record_every]``;
        ``S = 0`` when ``sharpness_every = 0``); sphere geometry: ``None``.
      opt_state: the optimizer state after the last step (pass it back as ``opt_state`` with
        ``w0 = trajectory.w_final`` to continue the run).
    """

    trajectory: Trajectory
    fit_residual: Array
    top_eigvec: Array | None
    opt_state: Any


# ----------------------------------------------------------------------------- measured LR


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


# ----------------------------------------------------------------------------- scalar RMSprop


class ScalarRMSpropState(NamedTuple):
    """State of :func:`scalar_rmsprop`: the second-moment scalar ``v_t`` and the hyperparameters
    ``eta, beta, eps`` (kept in the state so that new values need no recompilation)."""

    v: Array
    eta: Array
    beta: Array
    eps: Array


def _scalar_rmsprop_update(updates, state: ScalarRMSpropState, params=None):
    del params
    g2 = sum(jnp.vdot(g, g) for g in jax.tree_util.tree_leaves(updates))
    v = state.beta * state.v + (1.0 - state.beta) * g2
    lr = state.eta / jnp.sqrt(v + state.eps)
    return jax.tree_util.tree_map(lambda g: -lr * g, updates), state._replace(v=v)


def scalar_rmsprop(eta, beta=0.9, eps=1e-8, v0=0.0) -> optax.GradientTransformation:
    """RMSprop with one scalar learning rate (Section 4.2.3 / Appendix B's example), as optax.

    With ``g_t = ∇L(w_t)`` (the whole parameter pytree)::

        v_{t+1} = β v_t + (1 − β) ||g_t||²,   lr_t = η / √(v_{t+1} + ε),   w_{t+1} = w_t − lr_t g_t

    ``v_0 = v0`` (default 0, as in ``optax.rmsprop``). Unlike ``optax.rmsprop`` the second moment
    is one scalar, so the step is plain GD with an adaptive learning rate: it grows (up to
    ``η/√ε``) while gradients are small and shrinks when they are large — the Quasi-RMSprop
    shape. Returned updates are ``−lr_t g_t`` (optax's sign convention). The learning rate used
    by the last update is ``state.eta / sqrt(state.v + state.eps)``.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> opt = scalar_rmsprop(0.1, beta=0.0, eps=0.0)
      >>> u, s = opt.update(jnp.array([3.0, 4.0]), opt.init(jnp.zeros(2)))
      >>> [round(float(x), 6) for x in u]  # lr = 0.1/5
      [-0.06, -0.08]
    """
    for name, x, ok in (
        ("eta", eta, lambda a: a > 0),
        ("beta", beta, lambda a: (a >= 0) & (a < 1)),
        ("eps", eps, lambda a: a >= 0),
        ("v0", v0, lambda a: a >= 0),
    ):
        if not _is_tracer(x) and not (np.isfinite(x) and ok(np.asarray(x, float))):
            raise ValueError(f"scalar_rmsprop: invalid {name} = {x!r} (need eta > 0, "
                             "0 <= beta < 1, eps >= 0, v0 >= 0)")  # fmt: skip

    def init(params):
        leaves = jax.tree_util.tree_leaves(params)
        dtype = jnp.result_type(*leaves) if leaves else jnp.asarray(0.0).dtype
        return ScalarRMSpropState(*(jnp.asarray(x, dtype) for x in (v0, eta, beta, eps)))

    return optax.GradientTransformation(init, _scalar_rmsprop_update)


# ----------------------------------------------------------------------------- driver


def plain_top_eigs(
    loss: Callable[[Array], Array], ws: Array, v0: Array | None = None, lanczos_iter: int = 20
) -> tuple[Array, Array]:
    """Top eigenpair of the plain Hessian ``∇²L(w)`` at each row of ``ws`` ``(S, D)``.

    One ``lax.scan``; Lanczos (relative residual 1e-10) warm-started from the previous
    eigenvector (``v0``, default a fixed random unit vector, for the first row). Returns
    ``(λ1 (S,), v1 (S, D))``; ``λ1`` is the largest *algebraic* eigenvalue.
    """
    ws = jnp.asarray(ws)
    v0 = _default_v0(ws.shape[1], ws.dtype) if v0 is None else v0

    def body(v, w):
        r = lanczos_top_eigs(lambda u: hvp(loss, w, u), v, 1, num_iter=lanczos_iter)
        return r.eigenvectors[0], (r.eigenvalues[0], r.eigenvectors[0])

    _, (lam, vec) = lax.scan(body, v0, ws)
    return lam, vec


def _optax_step(update_fn, unravel, ravel, geometry, f, state: OptimState, _lr, _wd):
    """One optimizer step and its :class:`OptimStepInfo` (the driver's ``step_fn``)."""
    w = state.w
    value, g = jax.value_and_grad(f)(w)
    updates, opt_state = update_fn(unravel(g), state.opt_state, unravel(w))
    u = ravel(updates).astype(w.dtype)
    norm = jnp.linalg.norm(w)
    if geometry == "sphere":
        g_theta = norm * g
        eta, res = measured_eff_lr(w, u, g_theta)
        gnorm = jnp.linalg.norm(g_theta)
    else:
        eta, res = measured_lr(g, u)
        gnorm = jnp.linalg.norm(g)
    info = OptimStepInfo(value, gnorm, norm, eta, res)
    return OptimState(w + u, opt_state), info


@partial(
    jax.jit,
    static_argnames=(
        "loss", "update_fn", "geometry", "steps", "record_every", "sharpness_every", "lanczos_iter"
    ),
)  # fmt: skip
def _optax_compiled(
    loss, update_fn, w0, opt_state0, *, geometry, steps, record_every, sharpness_every,
    lanczos_iter,
):  # fmt: skip
    f, flat, unravel = flatten_loss(loss, w0)
    ravel = (lambda u: u) if unravel(flat) is flat else (lambda u: ravel_pytree(u)[0])
    step_fn = partial(_optax_step, update_fn, unravel, ravel, geometry)
    to_w = lambda s, _lr, _wd: s.w
    sphere = geometry == "sphere"
    carry, t, w, info, lam = _run(
        f,
        step_fn,
        OptimState(flat, opt_state0),
        to_w,
        None,
        None,
        steps=steps,
        record_every=record_every,
        sharpness_every=sharpness_every if sphere else 0,
        lanczos_iter=lanczos_iter,
    )
    vec = None
    if not sphere:
        lam = jnp.full(t.shape, jnp.nan, w.dtype)
        vec = jnp.zeros((0, w.shape[1]), w.dtype)
        if sharpness_every:
            m = sharpness_every // record_every
            lam_s, vec = plain_top_eigs(f, w[::m], lanczos_iter=lanczos_iter)
            lam = lam.at[::m].set(lam_s)
    nan = jnp.full((), jnp.nan, w.dtype)
    traj = _trajectory(t, w, info, lam, unravel(carry.state.w), nan, nan, carry.bad)
    return OptimRun(traj, info.fit_residual, vec, carry.state.opt_state)


def simulate_optax(
    loss: Callable,
    w0,
    optimizer: optax.GradientTransformation,
    steps: int = 1000,
    *,
    geometry: str = "sphere",
    opt_state: Any = None,
    record_every: int = 1,
    sharpness_every: int = 0,
    check_invariance: bool = True,
    on_nonfinite: str = "raise",
    lanczos_iter: int = 20,
) -> OptimRun:
    """Run an optax optimizer for ``steps`` steps in one compiled ``lax.scan``.

    ``w_{t+1} = w_t + u_t`` with ``(u_t, s_{t+1}) = optimizer.update(∇L(w_t), s_t, w_t)``, the
    optimizer seeing the pytree structure of ``w0``. ``optax.chain(optax.add_decayed_weights(wd),
    optax.sgd(lr))`` is GD+WD, eq. (1) (equal to :func:`eosflow.simulate` to round-off; measured
    ``η̃`` = Lemma 3.1's, residual ~1e-16).

    Args:
      loss: ``loss(w) -> scalar``; scale-invariant for ``geometry="sphere"``.
      w0: initial parameters, a nonzero finite array or pytree.
      optimizer: an optax ``GradientTransformation`` (e.g. ``optax.adam(1e-2)``,
        ``optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr, momentum=0.9))``,
        :func:`scalar_rmsprop`). Its ``update`` is a static argument (see module docstring).
      steps: number of steps (>= 1).
      geometry: ``"sphere"``: the step is summarized by the PGD effective LR ``η̃_t`` on the unit
        sphere and sharpness is spherical, ``λ1(∇²L(θ_t))``; ``"plain"``: by the plain GD
        learning rate ``η_t`` and ``λ1(∇²L(w_t))`` (no scale-invariance assumed or checked).
      opt_state: initial optimizer state (default ``optimizer.init(w0)``).
      record_every, sharpness_every, on_nonfinite, lanczos_iter: as in :func:`eosflow.simulate`.
      check_invariance: sphere geometry only: check ``L(cw) = L(w)`` at ``w0``.

    Returns:
      an :class:`OptimRun` ``(trajectory, fit_residual, top_eigvec, opt_state)``. On a non-finite
      step with ``on_nonfinite="raise"`` a :class:`~eosflow.NonFiniteError` is raised (its
      ``.trajectory`` is the truncated :class:`~eosflow.Trajectory`).

    Example:
      >>> import jax.numpy as jnp, optax, eosflow
      >>> opt = optax.chain(optax.add_decayed_weights(0.01), optax.sgd(0.002))
      >>> run = simulate_optax(eosflow.toy3d(), jnp.array([0.3, 0.5, 0.4]), opt, steps=100)
      >>> run.trajectory.eff_lr.shape, bool(run.fit_residual.max() < 1e-8)  # PGD: residual ~0
      ((100,), True)
    """
    where = "simulate_optax"
    if geometry not in GEOMETRIES:
        raise ValueError(f"{where}: geometry must be 'sphere' or 'plain', got {geometry!r}")
    if on_nonfinite not in ("raise", "return"):
        raise ValueError(f"{where}: on_nonfinite must be 'raise' or 'return', got {on_nonfinite!r}")
    if not isinstance(optimizer, optax.GradientTransformation) and not (
        callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))
    ):
        raise TypeError(
            f"{where}: optimizer must be an optax GradientTransformation (init, update), "
            f"got {type(optimizer).__name__}"
        )
    _validate_run(
        loss, w0, steps, record_every, sharpness_every,
        check_invariance and geometry == "sphere", where,
    )  # fmt: skip
    if opt_state is None:
        opt_state = optimizer.init(w0)
    run = _optax_compiled(
        loss,
        optimizer.update,
        w0,
        opt_state,
        geometry=geometry,
        steps=int(steps),
        record_every=int(record_every),
        sharpness_every=int(sharpness_every),
        lanczos_iter=int(lanczos_iter),
    )
    return _finish_run(run, geometry, sharpness_every, record_every, on_nonfinite, where)


def _finish_run(run: OptimRun, geometry, sharpness_every, record_every, on_nonfinite, where):
    traj = run.trajectory
    if _is_tracer(traj.nonfinite_step) or int(traj.nonfinite_step) < 0:
        return run
    cut = _finish(traj, "return", where)
    keep = cut.step.shape[0]
    vec = run.top_eigvec
    if vec is not None and sharpness_every:
        vec = vec[: math.ceil(keep / (sharpness_every // record_every))]
    if on_nonfinite == "raise":
        _finish(traj, "raise", where)
    return OptimRun(cut, run.fit_residual[:keep], vec, run.opt_state)


def simulate_rmsprop(
    loss: Callable,
    w0,
    eta,
    beta=0.9,
    eps=1e-8,
    steps: int = 1000,
    *,
    v0=0.0,
    geometry: str = "plain",
    record_every: int = 1,
    sharpness_every: int = 0,
    check_invariance: bool = True,
    on_nonfinite: str = "raise",
    lanczos_iter: int = 20,
) -> OptimRun:
    """Plain GD with the scalar-RMSprop learning rate (:func:`scalar_rmsprop`), on any loss.

    ``v_{t+1} = β v_t + (1−β)||∇L(w_t)||²``, ``lr_t = η/√(v_{t+1}+ε)``,
    ``w_{t+1} = w_t − lr_t ∇L(w_t)``; ``v_0 = v0``. The paper's second example of a
    Quasi-RMSprop scheduler on a loss that need not be scale-invariant: once the loss is fit the
    gradient vanishes, ``v`` decays like ``β^t`` and ``lr_t`` grows until ``lr_t λ1(∇²L(w_t))``
    reaches 2 (the Edge of Stability), where it oscillates.

    Returns :func:`simulate_optax`'s :class:`OptimRun` with ``geometry="plain"`` by default:
    ``trajectory.eff_lr`` is ``lr_t`` (the least-squares fit, exact here to round-off),
    ``trajectory.sharpness`` is ``λ1(∇²L(w_t))`` every ``sharpness_every`` steps, and
    ``opt_state.v`` the final ``v``. New ``eta, beta, eps, v0`` values do not recompile.
    """
    return simulate_optax(
        loss,
        w0,
        scalar_rmsprop(eta, beta, eps, v0),
        steps,
        geometry=geometry,
        record_every=record_every,
        sharpness_every=sharpness_every,
        check_invariance=check_invariance,
        on_nonfinite=on_nonfinite,
        lanczos_iter=lanczos_iter,
    )
