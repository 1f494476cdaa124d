"""The compiled step of a sweep: ``jax.vmap`` of the driver over the configuration axis."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from eosflow.driver import Records, RunState, run_records
from eosflow.dynamics import Dynamics
from eosflow.eigensolvers import default_v0
from eosflow.gd import StepInfo
from eosflow.params import flatten_loss

__all__ = ["sweep_chunk", "RUN_STATE_AXES"]

RUN_STATE_AXES = RunState(
    0, None, 0, 0
)  # vmap axes of the driver's carry: the step count is shared


@partial(
    jax.jit,
    static_argnames=(
        "loss", "dynamics", "hp_axes", "n_rec", "record_every", "sharpness_every", "lanczos_iter",
        "record_params", "mesh", "full_records",
    ),
)  # fmt: skip
def sweep_chunk(
    loss, dynamics: Dynamics, w_like, W0, rs: RunState | None, hparams, steps, *, hp_axes,
    n_rec, record_every, sharpness_every, lanczos_iter, record_params, mesh, full_records=False,
):  # fmt: skip
    """``n_rec`` records of every configuration: ``jax.vmap`` of
    :func:`eosflow.driver.run_records` over the configuration axis, from ``rs`` (or, when it is
    ``None``, from ``dynamics.init`` at the rows of ``W0``).

    ``hp_axes`` (static, ``(treedef, axes)``) says which ``hparams`` leaves are batched.
    Returns ``(RunState, records dict, w_final (B, D))``; a configuration's records after its
    non-finite step are NaN.
    """
    f, _, _ = flatten_loss(loss, w_like)
    axes = jax.tree_util.tree_unflatten(*hp_axes)
    if rs is None:
        state = jax.vmap(dynamics.init, in_axes=(0, axes))(W0, hparams)
        v0 = jnp.broadcast_to(default_v0(W0.shape[1], W0.dtype), W0.shape)
        rs = RunState(state, jnp.asarray(0), v0, jnp.full(W0.shape[0], -1))

    def one(rs, hp):
        return run_records(
            f, dynamics, rs, hp, n_rec=n_rec, steps=steps, record_every=record_every,
            sharpness_every=sharpness_every, lanczos_iter=lanczos_iter, full_records=full_records,
        )  # fmt: skip

    out_axes = (RUN_STATE_AXES, Records(None, 0, 0, 0))
    rs, rec = jax.vmap(one, in_axes=(RUN_STATE_AXES, axes), out_axes=out_axes)(rs, hparams)
    w_final = jax.vmap(dynamics.params, in_axes=(0, axes))(rs.state, hparams)
    after = (rs.bad[:, None] >= 0) & (rec.step[None, :] > rs.bad[:, None])
    nan = lambda x: jnp.where(after.reshape(after.shape + (1,) * (x.ndim - 2)), jnp.nan, x)
    w = rec.w if record_params else jnp.zeros(rec.w.shape[:2] + (0,), rec.w.dtype)
    out = {"step": rec.step, "w": nan(w), "sharpness": nan(rec.sharpness)}
    for k in rec.info._fields:
        out[k if k in StepInfo._fields else "extra." + k] = nan(getattr(rec.info, k))
    if mesh is not None:
        batched = NamedSharding(mesh, PartitionSpec("config"))
        con = lambda x: jax.lax.with_sharding_constraint(x, batched)
        out = {k: v if k == "step" else con(v) for k, v in out.items()}
        rs = rs._replace(
            state=jax.tree_util.tree_map(con, rs.state), v1=con(rs.v1), bad=con(rs.bad)
        )
        w_final = con(w_final)
    return rs, out, w_final
