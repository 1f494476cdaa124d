"""Whole runs in one compiled ``lax.scan``: :func:`simulate`, the front door to every dynamics.

``simulate(loss, w0, lr, wd, steps)`` runs GD+WD, eq. (1); ``simulate(loss, w0,
optimizer=tx, steps=...)`` any optax transformation; ``simulate(loss, w0, dynamics=d,
hparams=h, steps=...)`` any :class:`~eosflow.dynamics.Dynamics`. All go through the one driver
(:mod:`eosflow.driver`) and return a :class:`~eosflow.Trajectory` recorded every
``record_every`` steps (memory grows with ``steps / record_every``). Hyperparameters are traced,
so new values do not recompile; the loss, the dynamics, ``steps``, ``record_every`` and
``sharpness_every`` are static (one compilation per combination — the loss is keyed by identity,
so keep the same loss object to reuse the compiled program).

Float64: theory checks need it (losses reach 1e-30 before EoS and the EoS oscillation grows from
round-off). JAX defaults to float32; turn float64 on with :func:`eosflow.enable_x64` (or
``JAX_ENABLE_X64=1``) *before* creating arrays. The simulation runs in the dtype of ``w0``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from eosflow.driver import host_run_state, run_compiled
from eosflow.dynamics import GEOMETRIES, Dynamics, GDWDHparams, SphereHparams, gd_wd
from eosflow.dynamics import sphere_dynamics as _sphere
from eosflow.optim import OptimRun, OptimState, from_optax, is_transformation, plain_top_eigs
from eosflow.optim import scalar_rmsprop as _scalar_rmsprop
from eosflow.params import flatten_loss
from eosflow.schedulers import EffLRScheduler, RMSpropHparams, scalar_rmsprop_scheduler
from eosflow.trajectory import Trajectory, cut_at_nonfinite, from_records
from eosflow.validation import (
    as_param_array,
    validate_hyperparams,
    validate_on_nonfinite,
    validate_run_args,
)

Array = jax.Array

__all__ = [
    "Resolved",
    "resolve_dynamics",
    "run_part",
    "simulate",
    "simulate_sphere",
    "simulate_optax",
    "simulate_rmsprop",
]


class Resolved(NamedTuple):
    """What a front door runs: the dynamics, its hparams (arrays of ``w0``'s dtype) and the
    ``lr``/``wd`` a trajectory reports (NaN unless GD+WD-like)."""

    dynamics: Dynamics
    hparams: Any
    lr: Any
    wd: Any


def _hparams_arrays(hparams, dtype):
    """Floating leaves as ``dtype`` arrays (NumPy for concrete values, see
    :func:`eosflow.validation.as_param_array`); other leaves as they are."""

    def conv(x):
        kind = np.result_type(x) if not hasattr(x, "aval") else x.dtype
        return as_param_array(x, dtype) if jnp.issubdtype(kind, jnp.floating) else x

    return jax.tree_util.tree_map(conv, hparams)


def resolve_dynamics(w0, lr, wd, *, optimizer, dynamics, hparams, where: str) -> Resolved:
    """Pick the dynamics from a front door's arguments: ``lr, wd`` (GD+WD), ``optimizer`` (optax)
    or ``dynamics`` + ``hparams``; exactly one. Checks GD+WD's ``lr``/``wd``."""
    dtype = _dtype(w0)
    given = [n for n, v in (("lr/wd", lr if lr is not None else wd), ("optimizer", optimizer),
                            ("dynamics", dynamics)) if v is not None]  # fmt: skip
    if len(given) != 1:
        raise TypeError(
            f"{where}: give exactly one of lr and wd (GD+WD), optimizer= (optax) or dynamics= "
            f"(with hparams=), got {', '.join(given) or 'none'}"
        )
    nan = np.asarray(np.nan, dtype)
    if dynamics is not None:
        if not isinstance(dynamics, Dynamics):
            raise TypeError(f"{where}: dynamics must be an eosflow.Dynamics, got {type(dynamics)}")
        hp = _hparams_arrays(hparams, dtype)
        if isinstance(hp, GDWDHparams | SphereHparams):
            validate_hyperparams(hp.lr, hp.wd, where)
            return Resolved(dynamics, hp, hp.lr, hp.wd)
        return Resolved(dynamics, hp, nan, nan)
    if optimizer is not None:
        if hparams is not None and is_transformation(optimizer):
            raise TypeError(
                f"{where}: hparams= needs optimizer to be a function hparams -> "
                "GradientTransformation (a transformation has its numbers baked in)"
            )
        return Resolved(None, _hparams_arrays(hparams, dtype), nan, nan)
    if lr is None or wd is None:
        raise TypeError(f"{where}: GD+WD needs both lr and wd, got lr={lr!r}, wd={wd!r}")
    validate_hyperparams(lr, wd, where)
    hp = GDWDHparams(as_param_array(lr, dtype), as_param_array(wd, dtype))
    return Resolved(gd_wd, hp, hp.lr, hp.wd)


def run_part(
    loss, w0, res: Resolved, steps, record_every, sharpness_every, lanczos_iter, rs=None, start=0
):
    """``steps`` steps of a run in one compiled driver call, from ``rs`` (a
    :class:`~eosflow.driver.RunState` at global step ``start``) or from ``w0`` when ``rs`` is
    ``None``: ``(Trajectory of those steps, RunState after them)``."""
    end = np.asarray(start + steps, jax.dtypes.canonicalize_dtype(np.int64))
    rs, rec, w_final = run_compiled(
        loss, res.dynamics, w0, res.hparams, rs, steps=end,
        n_rec=math.ceil(steps / record_every), record_every=int(record_every),
        sharpness_every=int(sharpness_every), lanczos_iter=int(lanczos_iter),
        full_records=steps % record_every == 0,
    )  # fmt: skip
    return from_records(rec, w_final, rs.bad, res.lr, res.wd, res.hparams), rs


def simulate(
    loss: Callable,
    w0,
    lr=None,
    wd=None,
    steps: int = 1000,
    *,
    optimizer=None,
    dynamics: Dynamics | None = None,
    hparams: Any = None,
    geometry: str = "sphere",
    record_every: int = 1,
    sharpness_every: int = 0,
    check_invariance: bool = True,
    on_nonfinite: str = "raise",
    lanczos_iter: int = 20,
) -> Trajectory:
    """Run a dynamics for ``steps`` steps in one compiled ``lax.scan``; by default GD+WD, eq. (1).

    ``w_{t+1} = (1 − lr·wd) w_t − lr ∇L(w_t)``. Or any optax transformation (``optimizer=``,
    :func:`eosflow.optim.from_optax`), or any :class:`~eosflow.dynamics.Dynamics` (``dynamics=``,
    ``hparams=``): give exactly one of the three.

    Args:
      loss: scale-invariant ``loss(w) -> scalar`` (plain callable or :class:`ResidualLoss`).
      w0: initial parameters, a nonzero finite array or pytree (e.g. flax params).
      lr, wd: learning rate ``η̂ > 0`` and weight decay ``λ̂ >= 0`` with ``lr·wd < 1``.
      steps: number of steps (>= 1).
      optimizer: an optax ``GradientTransformation`` (or a function ``hparams -> transformation``
        with ``hparams=``); e.g. ``optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr))``
        is GD+WD. Its effective LR is measured; ``extra["fit_residual"]`` says how well.
      dynamics, hparams: any dynamics and its hyperparameter pytree (traced).
      geometry: with ``optimizer``: ``"sphere"`` (default) or ``"plain"`` (losses that are not
        scale-invariant; see :func:`eosflow.optim.from_optax`).
      record_every: record every this many steps (memory ~ ``steps/record_every``).
      sharpness_every: compute spherical sharpness (warm-started Lanczos, relative residual
        1e-10) every this many steps; must be a multiple of ``record_every``; 0 = never.
      check_invariance: check ``L(cw) = L(w)`` at ``w0`` (tolerance
        :data:`eosflow.losses.SCALE_INVARIANCE_RTOL`) and raise ``ValueError`` if it fails
        (skipped for the plain geometry).
      on_nonfinite: ``"raise"`` (default) raises :class:`NonFiniteError` naming the first bad step,
        with the truncated trajectory attached; ``"return"`` returns that truncated trajectory
        with ``nonfinite_step`` set.
      lanczos_iter: Krylov dimension per Lanczos cycle for the sharpness.

    Returns:
      a :class:`Trajectory`.

    Example:
      >>> import jax.numpy as jnp, eosflow
      >>> loss = eosflow.toy3d()
      >>> traj = eosflow.simulate(loss, jnp.array([0.3, 0.5, 0.4]), lr=0.1, wd=0.01, steps=100)
      >>> traj.loss.shape
      (100,)
    """
    where = "simulate"
    validate_on_nonfinite(on_nonfinite, where)
    res = resolve_dynamics(
        w0, lr, wd, optimizer=optimizer, dynamics=dynamics, hparams=hparams, where=where
    )
    plain = (res.dynamics.geometry if optimizer is None else geometry) == "plain"
    validate_run_args(
        loss, w0, steps, record_every, sharpness_every, check_invariance and not plain, where
    )
    rs = None
    if optimizer is not None:  # after the checks: optimizer.init(w0) needs a valid w0
        res, rs = _optax_start(loss, w0, optimizer, geometry, None, res)
    traj, _ = run_part(loss, w0, res, steps, record_every, sharpness_every, lanczos_iter, rs)
    return cut_at_nonfinite(traj, on_nonfinite, where)


def _optax_start(loss, w0, optimizer, geometry, opt_state, res: Resolved):
    """The dynamics and first :class:`~eosflow.driver.RunState` of an optax run. A
    transformation's state is built here, on the host (``optimizer.init(w0)`` or the given
    ``opt_state``), so the compiled program depends on ``optimizer.update`` only: new
    transformations with the same update function (e.g. :func:`scalar_rmsprop` with new
    numbers) do not recompile."""
    if geometry not in GEOMETRIES:
        raise ValueError(f"simulate: geometry must be 'sphere' or 'plain', got {geometry!r}")
    if not is_transformation(optimizer):  # hparams -> transformation: init inside
        return res._replace(dynamics=from_optax(optimizer, geometry=geometry, like=w0)), None
    dyn = from_optax(optimizer, geometry=geometry, like=w0, stateless_init=True)
    flat = flatten_loss(loss, w0)[1]
    state = OptimState(flat, optimizer.init(w0) if opt_state is None else opt_state)
    return res._replace(dynamics=dyn), host_run_state(state, flat)


def simulate_sphere(
    loss: Callable,
    w0,
    lr,
    wd,
    steps: int = 1000,
    *,
    record_every: int = 1,
    sharpness_every: int = 0,
    check_invariance: bool = True,
    on_nonfinite: str = "raise",
    lanczos_iter: int = 20,
    scheduler: EffLRScheduler | None = None,
    scheduler_hparams=None,
) -> Trajectory:
    """Run the sphere form, eq. (2) + the GD+WD effective-LR update (Lemma 3.1).

    Evolves ``(θ_t, η̃_t)`` from ``θ_0 = w0/||w0||``, ``η̃_0 = lr/((1−lr·wd)||w0||²)`` by
    ``θ_{t+1} = Π(θ_t − η̃_t ∇L(θ_t))``, ``1/η̃_{t+1} = (1−lr·wd)²(1/η̃_t + η̃_t ||∇L(θ_t)||²)``.
    It reproduces :func:`simulate` (``θ_t``, ``η̃_t``) to float64 round-off; ``w``/``norm`` are
    reconstructed from ``η̃``. The same as ``simulate(loss, w0, dynamics=sphere_dynamics(rule),
    hparams=SphereHparams(lr, wd, rule_hparams))``. Arguments and return value as in
    :func:`simulate`, plus:

    Args:
      scheduler: an :class:`eosflow.schedulers.EffLRScheduler` replacing the GD+WD rule for
        ``η̃_t`` (e.g. ``scalar_rmsprop_scheduler``; see :mod:`eosflow.schedulers`); it gets
        ``η̃_0`` above. ``None`` (default): the built-in GD+WD rule.
      scheduler_hparams: the scheduler's hyperparameter pytree (traced); default
        ``GDWDHparams(lr, wd)``.
    """
    where = "simulate_sphere"
    validate_hyperparams(lr, wd, where)
    if scheduler is scalar_rmsprop_scheduler and not isinstance(scheduler_hparams, RMSpropHparams):
        raise TypeError(
            f"{where}: scalar_rmsprop_scheduler needs scheduler_hparams="
            "eosflow.RMSpropHparams(eta, beta, eps)"
        )
    dyn = _sphere(*(() if scheduler is None else (scheduler,)))
    rule_hp = GDWDHparams(lr, wd) if scheduler_hparams is None else scheduler_hparams
    try:
        return simulate(
            loss, w0, steps=steps, dynamics=dyn, hparams=SphereHparams(lr, wd, rule_hp),
            record_every=record_every, sharpness_every=sharpness_every,
            check_invariance=check_invariance, on_nonfinite=on_nonfinite,
            lanczos_iter=lanczos_iter,
        )  # fmt: skip
    except (TypeError, ValueError) as e:
        raise type(e)(str(e).replace("simulate:", f"{where}:", 1)) from None


def simulate_optax(
    loss: Callable,
    w0,
    optimizer,
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
    """Run an optax optimizer and return an :class:`~eosflow.optim.OptimRun`.

    ``simulate(loss, w0, optimizer=optimizer, ...)`` returns the trajectory alone; this form also
    returns the final optimizer state (pass it back as ``opt_state`` with
    ``w0 = trajectory.w_final`` to continue), the fit residual, and in the plain geometry the top
    Hessian eigenvectors ``v1(∇²L(w_t))`` at the sharpness steps.

    Example:
      >>> import jax.numpy as jnp, optax, eosflow
      >>> opt = optax.chain(optax.add_decayed_weights(0.01), optax.sgd(0.002))
      >>> run = simulate_optax(eosflow.toy3d(), jnp.array([0.3, 0.5, 0.4]), opt, steps=100)
      >>> run.trajectory.eff_lr.shape, bool(run.fit_residual.max() < 1e-8)  # PGD: residual ~0
      ((100,), True)
    """
    where = "simulate_optax"
    validate_on_nonfinite(on_nonfinite, where)
    if geometry not in GEOMETRIES:
        raise ValueError(f"{where}: geometry must be 'sphere' or 'plain', got {geometry!r}")
    if not is_transformation(optimizer):
        raise TypeError(
            f"{where}: optimizer must be an optax GradientTransformation (init, update), "
            f"got {type(optimizer).__name__}"
        )
    sphere = geometry == "sphere"
    validate_run_args(
        loss, w0, steps, record_every, sharpness_every, check_invariance and sphere, where
    )
    nan = np.asarray(np.nan, _dtype(w0))
    res, rs = _optax_start(loss, w0, optimizer, geometry, opt_state, Resolved(None, None, nan, nan))
    traj, rs = run_part(
        loss, w0, res, steps, record_every, sharpness_every if sphere else 0, lanczos_iter, rs
    )
    vec = None
    if not sphere:
        traj, vec = _plain_sharpness(loss, w0, traj, sharpness_every, record_every, lanczos_iter)
    traj = cut_at_nonfinite(traj, "return", where)
    if vec is not None and sharpness_every:
        vec = vec[: math.ceil(traj.step.shape[0] / (sharpness_every // record_every))]
    run = OptimRun(traj, traj.extra["fit_residual"], vec, rs.state.opt_state)
    if on_nonfinite == "raise" and int(traj.nonfinite_step) >= 0:
        cut_at_nonfinite(traj, "raise", where)
    return run


def _dtype(w0):
    """``w0``'s floating dtype (float64 stands in for a bad one, which the run checks name)."""
    leaves = jax.tree_util.tree_leaves(w0)
    dtype = jnp.result_type(*leaves) if leaves else np.float64
    return dtype if jnp.issubdtype(dtype, jnp.floating) else np.dtype(np.float64)


def _plain_sharpness(loss, w0, traj, sharpness_every, record_every, lanczos_iter):
    """Plain geometry: ``λ1(∇²L(w_t))`` and its eigenvector at the sharpness steps, after the
    run (:func:`eosflow.optim.plain_top_eigs`)."""
    w = jnp.asarray(traj.w)
    lam = jnp.full(traj.step.shape, jnp.nan, w.dtype)
    vec = jnp.zeros((0, w.shape[1]), w.dtype)
    if sharpness_every:
        m = sharpness_every // record_every
        f = flatten_loss(loss, w0)[0]
        lam_s, vec = plain_top_eigs(f, w[::m], lanczos_iter=lanczos_iter)
        lam = lam.at[::m].set(lam_s)
    return traj._replace(sharpness=lam), vec


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
    """Plain GD with the scalar-RMSprop learning rate (:func:`eosflow.optim.scalar_rmsprop`).

    ``v_{t+1} = β v_t + (1−β)||∇L(w_t)||²``, ``lr_t = η/√(v_{t+1}+ε)``,
    ``w_{t+1} = w_t − lr_t ∇L(w_t)``; ``v_0 = v0``. The paper's second example of a
    Quasi-RMSprop scheduler on a loss that need not be scale-invariant: once the loss is fit the
    gradient vanishes, ``v`` decays like ``β^t`` and ``lr_t`` grows until ``lr_t λ1(∇²L(w_t))``
    reaches 2 (the Edge of Stability), where it oscillates.

    Returns :func:`simulate_optax`'s :class:`~eosflow.optim.OptimRun` with ``geometry="plain"``
    by default: ``trajectory.eff_lr`` is ``lr_t`` (the least-squares fit, exact here to
    round-off), ``trajectory.sharpness`` is ``λ1(∇²L(w_t))`` every ``sharpness_every`` steps, and
    ``opt_state.v`` the final ``v``. New ``eta, beta, eps, v0`` values do not recompile.
    """
    return simulate_optax(
        loss, w0, _scalar_rmsprop(eta, beta, eps, v0), steps, geometry=geometry,
        record_every=record_every, sharpness_every=sharpness_every,
        check_invariance=check_invariance, on_nonfinite=on_nonfinite, lanczos_iter=lanczos_iter,
    )  # fmt: skip
