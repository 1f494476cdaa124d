"""The one driver: any :class:`~eosflow.dynamics.Dynamics` run in one ``lax.scan``, resumable.

:func:`run_records` is the compiled core behind :func:`eosflow.simulate`, :func:`eosflow.sweep`
and the resumable chunked runs (:mod:`eosflow.chunks`): an outer ``lax.scan`` over records and
an inner loop of ``record_every`` steps; a non-finite guard; the spherical (or plain) sharpness
by warm-started Lanczos under ``lax.cond`` at steps divisible by ``sharpness_every``; the
records. Its carry is a :class:`RunState`, which holds *everything* the next step depends on, so
a run split into chunks, each started from the previous chunk's ``RunState`` (in memory or
saved to disk), equals one long run bit for bit.
"""

from __future__ import annotations

import functools
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from eosflow.dynamics import Dynamics
from eosflow.eigensolvers import default_v0, hvp, lanczos_top_eigs
from eosflow.params import flatten_loss

Array = jax.Array

__all__ = [
    "RunState", "Records", "init_run_state", "start_run_state", "host_run_state", "default_v1_host", "run_records",
    "run_compiled", "all_finite",
]  # fmt: skip


class RunState(NamedTuple):
    """The driver's carry: what a run needs to continue exactly.

    Attributes:
      state: the dynamics' state after ``step`` steps.
      step: the global step count ``t`` (int scalar; shared by a sweep's configurations).
      v1: ``(D,)`` the last top Hessian eigenvector (Lanczos warm start for the next sharpness).
      bad: ``-1``, or the first step whose update was non-finite (the state is frozen there).
    """

    state: Any
    step: Array
    v1: Array
    bad: Array


class Records(NamedTuple):
    """Per-record outputs of :func:`run_records` (leading axis ``T``; ``step`` and ``w`` at the
    recorded ``w_t``, before the update of step ``t``).

    Attributes:
      step: ``(T,)`` recorded step numbers.
      w: ``(T, D)`` flat parameters.
      info: the dynamics' step info at those steps, each field ``(T,)``.
      sharpness: ``(T,)`` top Hessian eigenvalue (NaN where not computed).
    """

    step: Array
    w: Array
    info: Any
    sharpness: Array


def init_run_state(dynamics: Dynamics, w0: Array, hparams: Any) -> RunState:
    """The :class:`RunState` at step 0: ``dynamics.init(w0, hparams)``, ``t = 0``, the default
    Lanczos start vector (:func:`eosflow.sharpness.default_v0`), ``bad = -1``."""
    return RunState(
        dynamics.init(w0, hparams),
        jnp.asarray(0),
        default_v0(w0.shape[0], w0.dtype),
        jnp.asarray(-1),
    )


@functools.lru_cache(maxsize=16)
def default_v1_host(D: int, dtype: str) -> np.ndarray:
    """:func:`eosflow.sharpness.default_v0` as computed inside the compiled driver, as a
    read-only NumPy array (computed once per size and dtype): the Lanczos warm start of a
    :class:`RunState` built on the host."""
    v = np.asarray(jax.jit(default_v0, static_argnums=(0, 1))(D, np.dtype(dtype)))
    v.flags.writeable = False
    return v


def host_run_state(state, w0: np.ndarray | Array) -> RunState:
    """A :class:`RunState` at step 0 built on the host (no device round trip): ``state``, the
    default warm start for ``w0``'s size and dtype, ``bad = -1``."""
    index = jax.dtypes.canonicalize_dtype(np.int64)
    v1 = default_v1_host(int(w0.shape[-1]), np.dtype(w0.dtype).name)
    return RunState(state, np.asarray(0, index), v1, np.asarray(-1, index))


def all_finite(tree) -> Array:
    """Whether every leaf of ``tree`` is finite (one boolean)."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]))


def _guarded_step(f, dynamics: Dynamics, hparams):
    """One step that freezes the state at the first non-finite update and remembers that step."""

    def guarded(rs: RunState):
        new, info = dynamics.step(f, rs.state, hparams)
        if dynamics.is_finite is None:
            finite = all_finite((new, info))
        else:
            finite = dynamics.is_finite(info, hparams)
        ok = finite & (rs.bad < 0)
        state = jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, rs.state)
        bad = jnp.where((rs.bad < 0) & ~ok, rs.step, rs.bad)
        return rs._replace(state=state, step=rs.step + 1, bad=bad), info

    return guarded


def _sharpness(f, geometry: str, lanczos_iter: int, sharpness_every: int):
    """``(rs, w) -> (λ1, v1)``: the warm-started top eigenpair at steps divisible by
    ``sharpness_every`` (NaN and the old vector elsewhere, or after a non-finite step)."""

    def at(w, rs: RunState):
        nan = jnp.full((), jnp.nan, w.dtype)
        if not sharpness_every:
            return nan, rs.v1
        point = w / jnp.linalg.norm(w) if geometry == "sphere" else w

        def top(v):
            r = lanczos_top_eigs(lambda u: hvp(f, point, u), v, 1, num_iter=lanczos_iter)
            return r.eigenvalues[0], r.eigenvectors[0]

        # The predicate depends on t only (not on `bad`), so under vmap it stays a scalar and the
        # cond stays a cond; after a non-finite step the value is masked instead.
        lam, v1 = lax.cond(rs.step % sharpness_every == 0, top, lambda v: (nan, v), rs.v1)
        good = rs.bad < 0
        return jnp.where(good, lam, nan), jnp.where(good, v1, rs.v1)

    return at


def run_records(
    f,
    dynamics: Dynamics,
    rs0: RunState,
    hparams: Any,
    *,
    n_rec: int,
    steps,
    record_every: int,
    sharpness_every: int,
    lanczos_iter: int,
    full_records: bool = False,
    observe=None,
) -> tuple[RunState, Records]:
    """``n_rec`` records of ``dynamics`` from ``rs0`` (global step ``rs0.step``): one
    ``lax.scan`` over records, an inner loop of ``record_every`` steps.

    Args:
      f: the loss on flat vectors.
      dynamics: the rule (:class:`~eosflow.dynamics.Dynamics`); its ``geometry`` decides where
        sharpness is measured.
      rs0: where to start (:func:`init_run_state`, or a previous call's returned state).
      hparams: the dynamics' hyperparameters (traced).
      n_rec: number of records (static).
      steps: the run's total step count (the last record's inner loop stops there); may be traced.
      record_every, sharpness_every, lanczos_iter: as in :func:`eosflow.simulate` (static).
      full_records: static promise that every record of this call runs all ``record_every``
        steps (the call's step count is a multiple of ``record_every``): the inner loop then has
        a static trip count. A traced trip count is correct in every case but costs a
        device-to-host sync per iteration on a GPU (46 against 27 µs per matrix-completion step
        on an H100).
      observe: what a record keeps of ``w_t``: ``observe(w_t, t) -> pytree`` (stored in
        ``Records.w`` with a leading record axis), e.g. per-layer norms instead of the 9.2M
        parameters of a VGG-11 (:mod:`eosflow.fullbatch`). ``None`` (default): ``w_t`` itself.

    Returns:
      ``(RunState after the call, Records)``. Written for one configuration;
      :func:`eosflow.sweep` ``vmap``s it with ``step`` unbatched, so the sharpness ``cond``
      keeps a scalar predicate.
    """
    guarded = _guarded_step(f, dynamics, hparams)
    sharp = _sharpness(f, dynamics.geometry, lanczos_iter, sharpness_every)

    def record(rs: RunState, _):
        w = dynamics.params(rs.state, hparams)
        lam, v1 = sharp(w, rs)
        t_rec = rs.step
        rs, info = guarded(rs._replace(v1=v1))
        if record_every > 1:
            n_inner = record_every if full_records else jnp.minimum(record_every, steps - t_rec)
            rs = lax.fori_loop(1, n_inner, lambda _, c: guarded(c)[0], rs)
        kept = w if observe is None else observe(w, t_rec)
        return rs, (kept, pack((info, lam)))

    pack, unpack = _packer()
    rs, (w, packed) = lax.scan(record, rs0, None, length=n_rec)
    info, lam = unpack(packed)
    t = rs0.step + record_every * jnp.arange(n_rec, dtype=jnp.asarray(rs0.step).dtype)
    return rs, Records(t, w, info, lam)


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


@partial(jax.jit, static_argnames=("loss", "dynamics"))
def start_run_state(loss, dynamics: Dynamics, w0, hparams) -> RunState:
    """The compiled :func:`init_run_state` of a user's loss and ``w0`` (array or pytree)."""
    return init_run_state(dynamics, flatten_loss(loss, w0)[1], hparams)


@partial(
    jax.jit,
    static_argnames=(
        "loss", "dynamics", "n_rec", "record_every", "sharpness_every", "lanczos_iter",
        "full_records",
    ),
)  # fmt: skip
def run_compiled(
    loss, dynamics: Dynamics, w0, hparams, rs: RunState | None = None, *, steps, n_rec: int,
    record_every: int, sharpness_every: int, lanczos_iter: int, full_records: bool,
):  # fmt: skip
    """One compiled call of :func:`run_records` on a user's loss and ``w0`` (array or pytree).

    Starts at :func:`init_run_state` when ``rs`` is ``None``, else continues ``rs`` (then ``w0``
    only gives the structure). ``steps`` is the run's global end step (traced; it matters only
    when a record's inner loop is cut short). The loss and the dynamics are static (keyed by
    identity: keep the same objects to reuse the compiled program); ``w0``, ``hparams``, ``rs``
    and ``steps`` are traced.

    Returns:
      ``(RunState, Records, w_final)``, ``w_final`` with the structure of ``w0``.
    """
    f, flat, unravel = flatten_loss(loss, w0)
    if rs is None:
        rs = init_run_state(dynamics, flat, hparams)
    rs, rec = run_records(
        f, dynamics, rs, hparams, n_rec=n_rec, steps=steps, record_every=record_every,
        sharpness_every=sharpness_every, lanczos_iter=lanczos_iter, full_records=full_records,
    )  # fmt: skip
    return rs, rec, unravel(dynamics.params(rs.state, hparams))
