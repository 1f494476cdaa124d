"""Any optax optimizer as a :class:`~eosflow.dynamics.Dynamics`: :func:`from_optax`.

The paper's mechanism (Section 4.2.3, Appendix B "Quasi-RMSprop", unavailable to us) is not
specific to GD+WD. :func:`from_optax` turns any optax ``GradientTransformation`` into a dynamics
that the driver runs like GD+WD (one ``lax.scan``, non-finite guard, warm-started Lanczos
sharpness): ``w_{t+1} = w_t + u_t`` with ``(u_t, s_{t+1}) = optimizer.update(∇L(w_t), s_t, w_t)``,
the optimizer seeing the pytree structure of ``w0``. Each step's effective LR is *measured*
(:mod:`eosflow.eff_lr_fit`: the PGD step on the sphere that best fits it, ``geometry="sphere"``,
or the plain GD step, ``geometry="plain"``) and its fit residual is recorded as
``Trajectory.extra["fit_residual"]``. ``optax.chain(optax.add_decayed_weights(wd),
optax.sgd(lr))`` is GD+WD, eq. (1): equal to :data:`eosflow.dynamics.gd_wd` to round-off, with
measured ``η̃`` = Lemma 3.1's and residual ~1e-16.

Hyperparameters: pass a *function* ``hparams -> GradientTransformation`` (e.g.
``lambda hp: optax.adam(hp)``) and the driver traces ``hparams``: new values do not recompile and
:func:`eosflow.sweep` batches them (Adam over its learning rate). A plain transformation has its
numbers baked in (``hparams`` unused); :func:`scalar_rmsprop` keeps ``η, β, ε`` in its state.

Also here: :func:`scalar_rmsprop` (RMSprop with one scalar second moment, the paper's
Quasi-RMSprop example, as optax) and :func:`plain_top_eigs`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from eosflow.dynamics import GEOMETRIES, Dynamics
from eosflow.eff_lr_fit import measured_eff_lr, measured_lr
from eosflow.sharpness_path import eigs_along
from eosflow.trajectory import Trajectory
from eosflow.validation import is_tracer

Array = jax.Array

__all__ = [
    "OptimState",
    "OptimStepInfo",
    "OptimRun",
    "ScalarRMSpropState",
    "from_optax",
    "scalar_rmsprop",
    "plain_top_eigs",
]


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
    """What :func:`eosflow.simulate_optax` returns.

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


# ----------------------------------------------------------------------------- optax as dynamics


def _optax_step(update_fn, unravel, ravel, geometry, f, state: OptimState):
    """One optimizer step and its :class:`OptimStepInfo` (the dynamics' ``step``)."""
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


def is_transformation(x) -> bool:
    """Whether ``x`` looks like an optax ``GradientTransformation`` (``init`` and ``update``)."""
    return isinstance(x, optax.GradientTransformation) or (
        callable(getattr(x, "init", None)) and callable(getattr(x, "update", None))
    )


def from_optax(
    optimizer, *, geometry: str = "sphere", like: Any = None, stateless_init: bool = False
) -> Dynamics:
    """An optax optimizer as a :class:`~eosflow.dynamics.Dynamics` (module docstring).

    Args:
      optimizer: an optax ``GradientTransformation``, or a function ``hparams ->
        GradientTransformation`` (called with the traced hparams inside the compiled run).
      geometry: ``"sphere"``: ``eff_lr`` is the measured PGD effective LR ``η̃_t`` and sharpness
        is spherical, ``λ1(∇²L(θ_t))``; ``"plain"``: the plain GD learning rate ``η_t`` and
        ``λ1(∇²L(w_t))`` (no scale invariance assumed).
      like: the parameters' pytree (e.g. ``w0``), whose structure the optimizer sees; default:
        one flat vector. Only its structure, shapes and dtypes are used.
      stateless_init: for a transformation: leave ``optimizer.init`` out of the dynamics (its
        ``init`` then raises), for runs that start from a given optimizer state. The dynamics
        then depends on ``optimizer.update`` alone, so transformations that differ only in
        their initial state (e.g. :func:`scalar_rmsprop` with new numbers) share one compiled
        program.

    Returns:
      a dynamics with state :class:`OptimState` ``(w, opt_state)`` and info
      :class:`OptimStepInfo`. Cached: the same optimizer, geometry and structure give the same
      object (one compiled program).
    """
    if geometry not in GEOMETRIES:
        raise ValueError(f"from_optax: geometry must be 'sphere' or 'plain', got {geometry!r}")
    if not (is_transformation(optimizer) or callable(optimizer)):
        raise TypeError(
            "from_optax: optimizer must be an optax GradientTransformation (init, update) or a "
            f"function hparams -> GradientTransformation, got {type(optimizer).__name__}"
        )
    structure = None
    if like is not None and not (isinstance(like, jax.Array | np.ndarray) and np.ndim(like) == 1):
        leaves, treedef = jax.tree_util.tree_flatten(like)
        structure = (treedef, tuple((tuple(np.shape(x)), str(jnp.result_type(x))) for x in leaves))
    if is_transformation(optimizer):
        init = None if stateless_init else optimizer.init
        return _from_optax(init, optimizer.update, None, geometry, structure)
    return _from_optax(None, None, optimizer, geometry, structure)


@functools.lru_cache(maxsize=64)
def _from_optax(init_fn, update_fn, make, geometry, structure) -> Dynamics:
    if structure is None:
        unravel = ravel = lambda v: v
    else:
        treedef, avals = structure
        zeros = [np.zeros(shape, dtype) for shape, dtype in avals]
        unravel = ravel_pytree(jax.tree_util.tree_unflatten(treedef, zeros))[1]
        ravel = lambda u: ravel_pytree(u)[0]

    def transformation(hp):
        return (init_fn, update_fn) if make is None else tuple(make(hp)[:2])

    def init(w0, hp):
        if make is None and init_fn is None:
            raise TypeError("from_optax(stateless_init=True): start from a given opt_state")
        return OptimState(w0, transformation(hp)[0](unravel(w0)))

    def step(f, state, hp):
        return _optax_step(transformation(hp)[1], unravel, ravel, geometry, f, state)

    return Dynamics(init, step, lambda state, hp: state.w, None, geometry)


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
        if not is_tracer(x) and not (np.isfinite(x) and ok(np.asarray(x, float))):
            raise ValueError(f"scalar_rmsprop: invalid {name} = {x!r} (need eta > 0, "
                             "0 <= beta < 1, eps >= 0, v0 >= 0)")  # fmt: skip

    def init(params):
        leaves = jax.tree_util.tree_leaves(params)
        dtype = jnp.result_type(*leaves) if leaves else jnp.asarray(0.0).dtype
        return ScalarRMSpropState(*(jnp.asarray(x, dtype) for x in (v0, eta, beta, eps)))

    return optax.GradientTransformation(init, _scalar_rmsprop_update)


# ----------------------------------------------------------------------------- plain sharpness


def plain_top_eigs(
    loss: Callable[[Array], Array], ws: Array, v0: Array | None = None, lanczos_iter: int = 20
) -> tuple[Array, Array]:
    """Top eigenpair of the plain Hessian ``∇²L(w)`` at each row of ``ws`` ``(S, D)``.

    One ``lax.scan`` (:func:`eosflow.sharpness_path.eigs_along` at ``w``, not ``θ``); Lanczos
    (relative residual 1e-10) warm-started from the previous eigenvector (``v0``, default a fixed
    random unit vector, for the first row). Returns ``(λ1 (S,), v1 (S, D))``; ``λ1`` is the
    largest *algebraic* eigenvalue; NaN at a non-finite row.
    """
    lam, _, _, vec = eigs_along(
        loss, jnp.asarray(ws), v0, spherical=False, num=1, lanczos_iter=lanczos_iter,
        tol=1e-10, max_restarts=50, vectors=True,
    )  # fmt: skip
    return lam[:, 0], vec[:, 0]
