"""Where a sweep's arrays live (devices, padding, sharding) and how a saved sweep resumes."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from eosflow.driver import RunState
from eosflow.dynamics import Dynamics
from eosflow.runio import save_json
from eosflow.sweeps.compiled import sweep_chunk
from eosflow.sweeps.config import Plan, config_mesh, hint_cpu_devices
from eosflow.sweeps.store import (
    FORMAT,
    MANIFEST,
    RECORD_FIELDS,
    check_manifest,
    load_chunk,
    manifest_config,
    put,
    saved_chunks,
)

__all__ = ["Layout", "resume_saved", "abstract_run_state", "describe", "describe_hparams"]


class Layout(NamedTuple):
    """Where a sweep's arrays live: the mesh (or ``None``), padded batch size, and the padded,
    placed starting points and hparams."""

    mesh: Any
    B: int
    Bp: int
    W0: Any
    hparams: Any
    batched: Any
    replicated: Any

    @staticmethod
    def make(B: int, plan: Plan, shard: bool, devices) -> Layout:
        """Pad ``B`` to a multiple of the device count and shard the configuration axis."""
        devs = jax.devices() if devices is None else list(devices)
        if shard and devices is None and B > 1:
            hint_cpu_devices(devs)
        mesh = config_mesh(devs) if shard and len(devs) > 1 else None
        Bp = -(-B // len(devs)) * len(devs) if mesh is not None else B
        batched = NamedSharding(mesh, PartitionSpec("config")) if mesh is not None else None
        replicated = NamedSharding(mesh, PartitionSpec()) if mesh is not None else None
        lay = Layout(mesh, B, Bp, None, None, batched, replicated)
        treedef, axes = plan.hp_axes
        leaves = jax.tree_util.tree_leaves(plan.hparams)
        hp = [
            lay.place(x) if a == 0 else put(x, replicated)
            for x, a in zip(leaves, axes, strict=True)
        ]
        return lay._replace(W0=lay.place(plan.W0), hparams=jax.tree_util.tree_unflatten(
            jax.tree_util.tree_structure(plan.hparams), hp))  # fmt: skip

    def pad(self, x):
        x = np.asarray(x)
        return (
            np.concatenate([x, np.repeat(x[-1:], self.Bp - self.B, axis=0)])
            if self.Bp > self.B
            else x
        )

    def place(self, x):
        """A host array with a leading configuration axis, padded and sharded."""
        return put(self.pad(x), self.batched)

    def steps(self, steps: int):
        return put(np.asarray(steps), self.replicated)

    def run_state(self, leaves, treedef) -> RunState:
        """A saved :class:`RunState` back on the devices (the step count replicated)."""
        rs = jax.tree_util.tree_unflatten(treedef, [np.asarray(x) for x in leaves])
        return RunState(
            jax.tree_util.tree_map(self.place, rs.state), put(rs.step, self.replicated),
            self.place(rs.v1), self.place(rs.bad),
        )  # fmt: skip


def resume_saved(out, plan: Plan, loss, settings, starts, keep_records, lay: Layout):
    """Write or check the manifest and load the chunks already saved in ``out``: returns
    ``(chunks done, their records, RunState to continue from or None, end state)``."""
    if out is None:
        return 0, [], None, None
    config = manifest_config(
        plan.cfg, plan.W0, plan.L0, plan.w_like, **settings,
        loss=getattr(loss, "__qualname__", type(loss).__qualname__),
        dynamics=describe(plan.dynamics), hparams=describe_hparams(plan.hparams),
    )  # fmt: skip
    if (out / MANIFEST).exists():
        check_manifest(out / MANIFEST, config)
    elif jax.process_index() == 0:
        save_json(out / MANIFEST, {"format": FORMAT, "config": config, "starts": starts})
    done = saved_chunks(out, starts)
    if not done:
        return 0, [], None, None
    parts, end = [], None
    for i in range(done):
        rec, end = load_chunk(out, i, RECORD_FIELDS)
        if keep_records:
            parts.append(rec)
    treedef = jax.tree_util.tree_structure(abstract_run_state(loss, plan, lay))
    return done, parts, lay.run_state(end["rs"], treedef), end


def abstract_run_state(loss, plan: Plan, lay: Layout):
    """The structure of the sweep's :class:`RunState` (shapes only, nothing computed)."""
    rs, _, _ = jax.eval_shape(
        lambda W0, hp: sweep_chunk(
            loss, plan.dynamics, plan.w_like, W0, None, hp, 1, hp_axes=plan.hp_axes, n_rec=1,
            record_every=1, sharpness_every=0, lanczos_iter=1, record_params=False, mesh=None,
        ), plan.W0[:1], jax.tree_util.tree_map(lambda x, a: x[:1] if a == 0 else x,
            plan.hparams, jax.tree_util.tree_unflatten(*plan.hp_axes), is_leaf=lambda x: x is None),
    )  # fmt: skip
    return rs


def describe(dynamics: Dynamics) -> str:
    """A stable text naming a dynamics' functions (for the manifest)."""
    return " ".join(getattr(f, "__qualname__", repr(f)) for f in dynamics[:4] if f is not None)


def describe_hparams(hparams) -> list:
    return [np.asarray(x).tolist() for x in jax.tree_util.tree_leaves(hparams)]
