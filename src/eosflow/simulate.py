"""Whole GD+WD trajectories in one compiled ``lax.scan``: :func:`simulate` and :func:`simulate_sphere`.

Both run a step function (:func:`eosflow.gd.gd_wd_step`, eq. (1), or
:func:`eosflow.sphere.sphere_step`, eq. (2)) ``steps`` times inside one jitted ``lax.scan`` and
record, every ``record_every`` steps, the quantities the theory talks about. Memory grows with
``steps / record_every``. ``lr`` and ``wd`` are traced, so new values do not recompile; the loss,
``steps``, ``record_every`` and ``sharpness_every`` are static (one compilation per combination —
the loss is keyed by identity, so keep the same loss object to reuse the compiled program).

Float64: theory checks need it (losses reach 1e-30 before EoS and the EoS oscillation grows from
round-off). JAX defaults to float32; turn float64 on with :func:`eosflow.enable_x64` (or
``JAX_ENABLE_X64=1``) *before* creating arrays. The simulation runs in the dtype of ``w0``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from eosflow.gd import GDState, effective_lr, gd_wd_step, update_is_finite
from eosflow.losses.base import SCALE_INVARIANCE_RTOL, check_scale_invariance
from eosflow.params import check_scalar_loss, flatten_loss
from eosflow.sharpness import _default_v0, hvp, lanczos_top_eigs
from eosflow.sphere import SphereState, norm_from_eff_lr, sphere_step

Array = jax.Array

__all__ = ["Trajectory", "NonFiniteError", "simulate", "simulate_sphere", "validate_hyperparams"]


class _TrajectoryFields(NamedTuple):
    step: Array
    w: Array
    norm: Array
    eff_lr: Array
    loss: Array
    grad_norm: Array
    sharpness: Array
    w_final: Any
    lr: Array
    wd: Array
    nonfinite_step: Array


class Trajectory(_TrajectoryFields):
    """A recorded GD+WD run. Per-record fields have leading axis ``T = ceil(steps/record_every)``
    and hold values at ``w_t`` for the recorded steps ``t`` (before the update of step ``t``).
    A :func:`eosflow.sweep` result has one more leading axis, the configuration.

    Attributes:
      step: ``(T,)`` int step numbers ``t``.
      w: ``(T, D)`` flat parameters ``w_t`` (``ravel_pytree`` order for pytree ``w0``).
      theta: ``(T, D)`` directions ``θ_t = w_t/||w_t||`` — a property, computed from ``w`` and
        ``norm`` on first access and cached (not stored by the scan: a second ``(T, D)`` buffer
        would double the cost of the records).
      norm: ``(T,)`` ``||w_t||``.
      eff_lr: ``(T,)`` effective learning rate ``η̃_t = lr/((1−lr·wd)||w_t||²)`` (Lemma 3.1).
      loss: ``(T,)`` ``L(θ_t)``.
      grad_norm: ``(T,)`` ``||∇L(θ_t)||``.
      sharpness: ``(T,)`` spherical sharpness ``λ1(∇²L(θ_t))`` at steps divisible by
        ``sharpness_every``, NaN elsewhere (all NaN when ``sharpness_every = 0``).
      w_final: the iterate after the last step, with the structure of ``w0``.
      lr, wd: the hyperparameters (scalars).
      nonfinite_step: ``-1``, or the first step ``t`` whose update produced a non-finite value
        (records stop at ``t``; see ``on_nonfinite``).

    It is a ``NamedTuple`` (a pytree: ``jax.tree_util``, ``jit``, ``vmap`` see the fields above
    except ``theta``).
    """

    @functools.cached_property
    def theta(self) -> Array:
        """``θ_t = w_t/||w_t||``, shape of ``w``; computed once from ``w`` and ``norm``."""
        # w·(1/||w||): the same operations in NumPy and XLA (XLA turns a division by a
        # broadcast scalar into this product), so saved and in-memory runs agree bit for bit.
        return self.w * (1 / self.norm)[..., None]

    def __getstate__(self):  # pickle the fields only, not the cached theta
        return None

    @property
    def intrinsic_lr(self) -> Array:
        """``η_in = lr·wd``: flow time per step in Theorem 4.7."""
        return self.lr * self.wd


#: Per-record fields of a :class:`Trajectory` (``theta`` is derived from ``w`` and ``norm``).
PER_RECORD = ("step", "w", "norm", "eff_lr", "loss", "grad_norm", "sharpness")


def _trajectory(t, w, info, lam, w_final, lr, wd, bad) -> Trajectory:
    """A :class:`Trajectory` from the driver's stacked records (see :func:`_run`)."""
    return Trajectory(
        t, w, info.norm, info.eff_lr, info.loss, info.grad_norm, lam, w_final, lr, wd, bad
    )


class NonFiniteError(FloatingPointError):
    """A run produced NaN/Inf. ``step`` is the first bad step; ``trajectory`` holds the records up
    to and including it."""

    def __init__(self, message: str, step: int, trajectory: Trajectory):
        super().__init__(message)
        self.step = step
        self.trajectory = trajectory


def _is_tracer(x) -> bool:
    return isinstance(x, jax.core.Tracer)


def _scalar(x, dtype):
    """``x`` as a ``dtype`` array for the compiled call: a NumPy array for every concrete value
    (Python, NumPy or JAX; an eager ``jnp.asarray`` costs a dispatch, ~0.15 ms each on a CPU),
    a JAX array only for tracers. One kind for all concrete inputs matters: jit keys its cache
    on NumPy vs JAX arguments too, so mixing them would compile the same program twice."""
    if _is_tracer(x):
        return jnp.asarray(x, dtype)
    return np.asarray(x, dtype)


def validate_hyperparams(lr, wd, where: str = "simulate") -> None:
    """Raise ``ValueError`` unless ``lr > 0``, ``wd >= 0`` and ``0 <= lr·wd < 1`` (concrete values)."""
    if _is_tracer(lr) or _is_tracer(wd):
        return
    lr_a, wd_a = np.asarray(lr, dtype=float), np.asarray(wd, dtype=float)
    if not (np.all(np.isfinite(lr_a)) and np.all(lr_a > 0)):
        raise ValueError(f"{where}: learning rate lr must be finite and > 0, got {lr}")
    if not (np.all(np.isfinite(wd_a)) and np.all(wd_a >= 0)):
        raise ValueError(f"{where}: weight decay wd must be finite and >= 0, got {wd}")
    if np.any(lr_a * wd_a >= 1):
        raise ValueError(
            f"{where}: need 0 <= lr*wd < 1 (eq. (1) multiplies w by 1 - lr*wd each step), "
            f"got lr*wd = {np.max(lr_a * wd_a)}"
        )


def _validate_run(loss, w0, steps, record_every, sharpness_every, check_invariance, where):
    if not callable(loss):
        raise TypeError(f"{where}: loss must be a callable loss(w) -> scalar, got {type(loss)}")
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 1:
        raise ValueError(f"{where}: steps must be an integer >= 1, got {steps!r}")
    if not isinstance(record_every, int | np.integer) or record_every < 1:
        raise ValueError(f"{where}: record_every must be an integer >= 1, got {record_every!r}")
    if not isinstance(sharpness_every, int | np.integer) or sharpness_every < 0:
        raise ValueError(
            f"{where}: sharpness_every must be an integer >= 0, got {sharpness_every!r}"
        )
    if sharpness_every and sharpness_every % record_every:
        raise ValueError(
            f"{where}: sharpness_every ({sharpness_every}) must be a multiple of record_every "
            f"({record_every}), since sharpness is stored only at recorded steps"
        )
    leaves = jax.tree_util.tree_leaves(w0)
    if not leaves:
        raise ValueError(f"{where}: w0 is empty")
    for x in leaves:
        if not jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating):
            raise TypeError(
                f"{where}: w0 must hold floating-point arrays, got {jnp.asarray(x).dtype}"
            )
    check_scalar_loss(loss, w0, where)
    if any(_is_tracer(x) for x in leaves):
        return
    flat = np.concatenate([np.ravel(np.asarray(x)) for x in leaves])
    if not np.all(np.isfinite(flat)):
        raise ValueError(f"{where}: w0 contains NaN or Inf")
    if not np.any(flat != 0):
        raise ValueError(f"{where}: w0 is zero; a scale-invariant loss is undefined at w = 0")
    if check_invariance:
        dtype = jnp.dtype(flat.dtype)
        tol = SCALE_INVARIANCE_RTOL.get(dtype, 1e-3)
        rel = check_scale_invariance(loss, w0)
        if not rel <= tol:
            raise ValueError(
                f"{where}: the loss is not scale-invariant at w0: |L(cw) - L(w)|/|L(w)| = {rel:.3g} "
                f"> {tol:g} ({dtype}). eosflow simulates scale-invariant losses L(cw) = L(w); wrap "
                "yours with eosflow.scale_invariant(f), or pass check_invariance=False to run anyway"
            )


class _Carry(NamedTuple):
    state: Any
    t: Array
    v1: Array
    bad: Array


def _finite(tree) -> Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]))


def _initial_carry(state0, w_init: Array) -> _Carry:
    """The driver's carry at step 0: ``state0``, ``t = 0``, the default Lanczos start vector for
    the sharpness warm start, ``bad = -1``."""
    return _Carry(
        state0, jnp.asarray(0), _default_v0(w_init.shape[0], w_init.dtype), jnp.asarray(-1)
    )


def _run_records(
    f,
    step_fn,
    carry0,
    to_w,
    lr,
    wd,
    *,
    n_rec,
    steps,
    record_every,
    sharpness_every,
    lanczos_iter,
    is_finite=None,
    full_records=False,
):
    """``n_rec`` records of the driver from ``carry0`` (global step ``carry0.t``): one
    ``lax.scan`` over records, an inner loop of ``record_every`` steps.

    ``steps`` is the run's total (the last record's inner loop stops there); it may be traced.
    ``full_records=True`` (static) promises that every record of this call runs all
    ``record_every`` steps (the call's step count is a multiple of ``record_every``): the inner
    loop then has a static trip count. A traced trip count (``min(record_every, steps − t)``)
    is correct in every case but costs a device-to-host sync per iteration on a GPU (XLA
    evaluates a while loop's condition on the host unless it knows the trip count): 46 against
    27 µs per matrix-completion step on an H100 (``record_every = steps``).
    Returns ``(carry, (t, w, info, lam))`` with per-record outputs stacked. Resuming from
    the returned carry continues the run exactly (same state, step count, warm start, ``bad``),
    which is what :func:`eosflow.sweep` uses for chunks. Written for one configuration;
    :func:`eosflow.sweep` ``vmap``s it (``t`` stays unbatched, so the sharpness ``cond`` keeps a
    scalar predicate and only runs at steps divisible by ``sharpness_every``).
    """

    def guarded(carry: _Carry):
        new, info = step_fn(f, carry.state, lr, wd)
        finite = _finite((new, info)) if is_finite is None else is_finite(info, lr, wd)
        ok = finite & (carry.bad < 0)
        state = jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, carry.state)
        bad = jnp.where((carry.bad < 0) & ~ok, carry.t, carry.bad)
        return carry._replace(state=state, t=carry.t + 1, bad=bad), info

    def record(carry: _Carry, _):
        w = to_w(carry.state, lr, wd)
        theta = w / jnp.linalg.norm(w)

        def sharp(v):
            r = lanczos_top_eigs(lambda u: hvp(f, theta, u), v, 1, num_iter=lanczos_iter)
            return r.eigenvalues[0], r.eigenvectors[0]

        # The predicate depends on t only (not on `bad`), so under vmap it stays a scalar and the
        # cond stays a cond; after a non-finite step the value is masked instead.
        want = (sharpness_every > 0) & (carry.t % max(sharpness_every, 1) == 0)
        nan = jnp.full((), jnp.nan, w.dtype)
        if sharpness_every:
            lam, v1 = lax.cond(want, sharp, lambda v: (nan, v), carry.v1)
            good = carry.bad < 0
            lam, v1 = jnp.where(good, lam, nan), jnp.where(good, v1, carry.v1)
        else:
            lam, v1 = nan, carry.v1
        t_rec = carry.t
        carry, info = guarded(carry._replace(v1=v1))
        if record_every > 1:
            n_inner = record_every if full_records else jnp.minimum(record_every, steps - t_rec)
            carry = lax.fori_loop(1, n_inner, lambda _, c: guarded(c)[0], carry)
        return carry, (w, pack((info, lam)))

    pack, unpack = _packer()
    carry, (w, packed) = lax.scan(record, carry0, None, length=n_rec)
    info, lam = unpack(packed)
    t = carry0.t + record_every * jnp.arange(n_rec, dtype=jnp.asarray(carry0.t).dtype)
    return carry, (t, w, info, lam)


def _packer():
    """``(pack, unpack)``: ``pack`` stacks a pytree of same-dtype scalars into one vector (so a
    scan writes one small record per step instead of one per field: fewer ops per step) and
    remembers its structure; ``unpack`` rebuilds the tree from the stacked records. Anything
    else (mixed dtypes, non-scalars) passes through unchanged."""
    box = {}

    def pack(tree):
        leaves, treedef = jax.tree_util.tree_flatten(tree)
        if len({jnp.result_type(x) for x in leaves}) != 1 or any(jnp.shape(x) for x in leaves):
            box["treedef"] = None
            return tree
        box["treedef"] = treedef
        return jnp.stack(leaves)

    def unpack(values):
        if box["treedef"] is None:
            return values
        return jax.tree_util.tree_unflatten(
            box["treedef"], [values[..., i] for i in range(values.shape[-1])]
        )

    return pack, unpack


def _run(
    f,
    step_fn,
    state0,
    to_w,
    lr,
    wd,
    *,
    steps,
    record_every,
    sharpness_every,
    lanczos_iter,
    is_finite=None,
):
    """The shared driver: outer ``lax.scan`` over records, inner loop of ``record_every`` steps.

    ``step_fn(f, state, lr, wd) -> (state, StepInfo)``; ``to_w(state, lr, wd) -> flat w_t``.
    A non-finite step freezes the state and sets ``bad`` to that step; ``is_finite(info, lr,
    wd)`` decides it from the step's scalars where the step allows (GD+WD:
    :func:`eosflow.gd.update_is_finite`), else every leaf of the new state is checked.
    """
    carry, (t, w, info, lam) = _run_records(
        f,
        step_fn,
        _initial_carry(state0, to_w(state0, lr, wd)),
        to_w,
        lr,
        wd,
        n_rec=math.ceil(steps / record_every),
        steps=steps,
        record_every=record_every,
        sharpness_every=sharpness_every,
        lanczos_iter=lanczos_iter,
        is_finite=is_finite,
        full_records=steps % record_every == 0,
    )
    return carry, t, w, info, lam


@partial(
    jax.jit,
    static_argnames=("loss", "kind", "steps", "record_every", "sharpness_every", "lanczos_iter"),
)
def _simulate_compiled(
    loss, w0, lr, wd, *, kind, steps, record_every, sharpness_every, lanczos_iter
):
    f, flat, unravel = flatten_loss(loss, w0)
    if kind == "gd":
        state0 = GDState(flat)
        to_w = lambda s, lr, wd: s.w
        step_fn, is_finite = gd_wd_step, update_is_finite
    else:
        norm0 = jnp.linalg.norm(flat)
        state0 = SphereState(flat / norm0, effective_lr(norm0, lr, wd))
        to_w = lambda s, lr, wd: s.theta * norm_from_eff_lr(s.eff_lr, lr, wd)
        step_fn, is_finite = sphere_step, None
    carry, t, w, info, lam = _run(
        f,
        step_fn,
        state0,
        to_w,
        lr,
        wd,
        steps=steps,
        record_every=record_every,
        sharpness_every=sharpness_every,
        lanczos_iter=lanczos_iter,
        is_finite=is_finite,
    )
    w_final = unravel(to_w(carry.state, lr, wd))
    return _trajectory(t, w, info, lam, w_final, lr, wd, carry.bad)


def _finish(traj: Trajectory, on_nonfinite: str, where: str) -> Trajectory:
    if _is_tracer(traj.nonfinite_step):
        return traj
    bad = int(traj.nonfinite_step)
    if bad < 0:
        return traj
    keep = int(np.searchsorted(np.asarray(traj.step), bad, side="right"))
    cut = traj._replace(**{k: getattr(traj, k)[:keep] for k in PER_RECORD})
    if on_nonfinite == "return":
        return cut
    raise NonFiniteError(
        f"{where}: non-finite values (NaN/Inf) first produced by the update at step {bad} "
        f"(last finite loss {float(cut.loss[-1]) if keep else float('nan'):.3g}, "
        f"||w|| = {float(cut.norm[-1]) if keep else float('nan'):.3g}); the trajectory up to that "
        "step is in the exception's .trajectory. Lower lr, or pass on_nonfinite='return'.",
        bad,
        cut,
    )


def _simulate(
    kind,
    where,
    loss,
    w0,
    lr,
    wd,
    steps,
    record_every,
    sharpness_every,
    check_invariance,
    on_nonfinite,
    lanczos_iter,
):
    if on_nonfinite not in ("raise", "return"):
        raise ValueError(f"{where}: on_nonfinite must be 'raise' or 'return', got {on_nonfinite!r}")
    _validate_run(loss, w0, steps, record_every, sharpness_every, check_invariance, where)
    validate_hyperparams(lr, wd, where)
    dtype = jnp.result_type(*jax.tree_util.tree_leaves(w0))
    lr, wd = _scalar(lr, dtype), _scalar(wd, dtype)
    traj = _simulate_compiled(
        loss,
        w0,
        lr,
        wd,
        kind=kind,
        steps=int(steps),
        record_every=int(record_every),
        sharpness_every=int(sharpness_every),
        lanczos_iter=int(lanczos_iter),
    )
    return _finish(traj, on_nonfinite, where)


def simulate(
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
) -> Trajectory:
    """Run GD+WD, eq. (1), for ``steps`` steps in one compiled ``lax.scan``.

    ``w_{t+1} = (1 − lr·wd) w_t − lr ∇L(w_t)``.

    Args:
      loss: scale-invariant ``loss(w) -> scalar`` (plain callable or :class:`ResidualLoss`).
      w0: initial parameters, a nonzero finite array or pytree (e.g. flax params).
      lr, wd: learning rate ``η̂ > 0`` and weight decay ``λ̂ >= 0`` with ``lr·wd < 1``.
      steps: number of GD steps (>= 1).
      record_every: record every this many steps (memory ~ ``steps/record_every``).
      sharpness_every: compute spherical sharpness (warm-started Lanczos, relative residual
        1e-10) every this many steps; must be a multiple of ``record_every``; 0 = never.
      check_invariance: check ``L(cw) = L(w)`` at ``w0`` (tolerance
        :data:`eosflow.losses.SCALE_INVARIANCE_RTOL`) and raise ``ValueError`` if it fails.
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
    return _simulate(
        "gd",
        "simulate",
        loss,
        w0,
        lr,
        wd,
        steps,
        record_every,
        sharpness_every,
        check_invariance,
        on_nonfinite,
        lanczos_iter,
    )


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
    scheduler=None,
    scheduler_hparams=None,
) -> Trajectory:
    """Run the sphere form, eq. (2) + the GD+WD effective-LR update (Lemma 3.1).

    Evolves ``(θ_t, η̃_t)`` from ``θ_0 = w0/||w0||``, ``η̃_0 = lr/((1−lr·wd)||w0||²)`` by
    ``θ_{t+1} = Π(θ_t − η̃_t ∇L(θ_t))``, ``1/η̃_{t+1} = (1−lr·wd)²(1/η̃_t + η̃_t ||∇L(θ_t)||²)``.
    It reproduces :func:`simulate` (``θ_t``, ``η̃_t``) to float64 round-off; ``w``/``norm`` are
    reconstructed from ``η̃``. Arguments and return value as in :func:`simulate`, plus:

    Args:
      scheduler: an :class:`eosflow.schedulers.EffLRScheduler` replacing the GD+WD rule for
        ``η̃_t`` (e.g. ``scalar_rmsprop_scheduler``; see :mod:`eosflow.schedulers`); it gets
        ``η̃_0`` above. ``None`` (default): the built-in GD+WD rule.
      scheduler_hparams: the scheduler's hyperparameter pytree (traced); default
        ``GDWDHparams(lr, wd)``.
    """
    if scheduler is not None or scheduler_hparams is not None:
        from eosflow.schedulers import _simulate_scheduled

        return _simulate_scheduled(
            loss, w0, lr, wd, steps, scheduler=scheduler, hparams=scheduler_hparams,
            record_every=record_every, sharpness_every=sharpness_every,
            check_invariance=check_invariance, on_nonfinite=on_nonfinite,
            lanczos_iter=lanczos_iter,
        )  # fmt: skip
    return _simulate(
        "sphere",
        "simulate_sphere",
        loss,
        w0,
        lr,
        wd,
        steps,
        record_every,
        sharpness_every,
        check_invariance,
        on_nonfinite,
        lanczos_iter,
    )
