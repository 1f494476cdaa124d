"""Many runs in one compiled call, sharded over devices, chunked and resumable: :func:`sweep`.

The theory's statements are about families of runs (how the time to EoS depends on ``lr`` and
``wd``, how tracking error scales with ``η_in = lr·wd``, how robust sharpness reduction is across
initializations). :func:`sweep` runs a batch of ``B`` configurations ``(lr_b, wd_b, w0_b)`` of
GD+WD, eq. (1), ``w_{t+1} = (1 − lr_b·wd_b) w_t − lr_b ∇L(w_t)``, with the *same* per-configuration
computation as :func:`eosflow.simulate` (the driver :func:`eosflow.driver.run_records`: step,
non-finite guard, records, warm-started Lanczos sharpness) mapped over the configuration axis with
``jax.vmap``. ``vmap`` of the driver's ``lax.scan`` is a ``lax.scan`` whose body is the batched
step, so one compiled program advances all configurations together; there is no Python loop over
configurations.

Devices. The configuration axis is sharded over every device JAX sees (``jax.devices()``, all hosts
after ``jax.distributed.initialize()``): a one-axis :class:`jax.sharding.Mesh` named ``"config"``
and ``NamedSharding(mesh, PartitionSpec("config"))`` on every batched input (``w``, the Lanczos
warm start, ``lr``, ``wd``, the non-finite flags). The loss (its data), the step counter and the
scalar ``steps`` are replicated. ``B`` is padded to a multiple of the device count with copies of
the last configuration and the padding is stripped from every output. Configurations never
interact, so a sharded sweep computes exactly what an unsharded one does (tested bitwise on 4
fake CPU devices). See ``docs/scaling.md``.

Any dynamics. ``dynamics=`` and a batched ``hparams=`` sweep any
:class:`~eosflow.dynamics.Dynamics` the same way (e.g. scalar RMSprop over ``β``, Adam over its
learning rate).

Chunks. With ``chunk`` set, the run proceeds ``chunk`` steps per compiled call; the full driver
state (the :class:`~eosflow.driver.RunState`: dynamics state, step count, Lanczos warm start,
non-finite flags) is carried from one chunk to the next, so a chunked sweep equals an unchunked one bit for bit. With ``out_dir`` each chunk's records
and the carried state are written atomically to ``out_dir/chunk_NNNNN.npz``, next to a
``manifest.json`` holding the sweep's configuration; a later call with the same arguments resumes
after the last saved chunk (nothing saved is recomputed), and one with different arguments is
refused. ``keep_records=False`` keeps only the current chunk in memory (read the records back with
:func:`load_sweep`).

Non-finite runs. A configuration whose update produces NaN/Inf at step ``t`` is frozen at its last
finite iterate ``w_t``; its ``nonfinite_step`` is ``t``, its records after step ``t`` are NaN and
its ``w_final`` is ``w_t``. The other configurations are unaffected (no exception is raised; check
``Trajectory.nonfinite_step``, ``-1`` for a finite run). :func:`take_config` returns one
configuration's trajectory cut like ``simulate(..., on_nonfinite="return")``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from eosflow.dynamics import Dynamics, GDWDHparams, gd_wd
from eosflow.runio import Progress, save_npz
from eosflow.sweeps.compiled import sweep_chunk
from eosflow.sweeps.config import (
    Plan,
    SweepConfig,
    configurations,
    hparams_batch,
    initial_points,
    validate_configs,
    validate_points,
)
from eosflow.sweeps.placement import Layout, resume_saved
from eosflow.sweeps.store import (
    RECORD_FIELDS,
    assemble,
    chunk_arrays,
    chunk_path,
    to_host_tree,
)
from eosflow.trajectory import Trajectory
from eosflow.validation import validate_chunk, validate_run_args

Array = jax.Array

__all__ = ["sweep", "sweep_chunk", "Plan"]


def _plan(loss, w0, lrs, wds, steps, dynamics, hparams, grid, seeds, init_fn, w0_per_config,
          record_every, sharpness_every, check_invariance) -> Plan:  # fmt: skip
    """Check every argument and lay out the configurations (:class:`Plan`)."""
    if dynamics is None:
        if lrs is None or wds is None or hparams is not None:
            raise TypeError("sweep: give lrs and wds (GD+WD), or dynamics= with hparams=")
        cfg = configurations(lrs, wds, grid=grid, seeds=seeds)
        validate_configs(cfg)
        dynamics, hparams, axes = gd_wd, GDWDHparams(cfg.lr, cfg.wd), GDWDHparams(0, 0)
    else:
        if lrs is not None or wds is not None:
            raise TypeError("sweep: with dynamics=, pass hparams= instead of lrs/wds")
        if not isinstance(dynamics, Dynamics):
            raise TypeError(f"sweep: dynamics must be an eosflow.Dynamics, got {type(dynamics)}")
        cfg, hparams, axes = _dynamics_configs(hparams, seeds)
        if hasattr(hparams, "lr") and hasattr(hparams, "wd"):  # GD+WD's or the sphere's
            validate_configs(cfg)
    W0, w_like, distinct = initial_points(loss, w0, cfg, seeds, init_fn, w0_per_config)
    validate_run_args(loss, w_like, steps, record_every, sharpness_every, False, "sweep")
    check = check_invariance and dynamics.geometry == "sphere"
    L0 = validate_points(loss, W0, w_like, cfg, distinct, check)
    dtype = W0.dtype
    hparams = jax.tree_util.tree_map(
        lambda x: np.asarray(x, dtype) if np.issubdtype(np.result_type(x), np.floating) else
        np.asarray(x), hparams,
    )  # fmt: skip
    leaves, treedef = jax.tree_util.tree_flatten(axes, is_leaf=lambda x: x is None)
    return Plan(cfg, W0, w_like, L0, dynamics, hparams, (treedef, tuple(leaves)))


def _dynamics_configs(hparams, seeds):
    """Configurations of a dynamics sweep: ``B`` from the batched leaves of ``hparams``, each
    repeated per seed (seed innermost); ``lr``/``wd`` from ``hparams`` where it has them."""
    B, axes = hparams_batch(hparams)
    n = 1 if seeds is None else len(seeds)
    rep = lambda x, a: np.repeat(np.asarray(x), n, axis=0) if a == 0 else np.asarray(x)
    hparams = jax.tree_util.tree_map(rep, hparams, axes, is_leaf=lambda x: x is None)
    nan = np.full(B * n, np.nan)
    lr = np.broadcast_to(np.asarray(getattr(hparams, "lr", nan), float), (B * n,)).copy()
    wd = np.broadcast_to(np.asarray(getattr(hparams, "wd", nan), float), (B * n,)).copy()
    if seeds is None:
        return SweepConfig(lr, wd, np.full(B, -1, np.int64)), hparams, axes
    s = configurations(1.0, 0.0, seeds=seeds).seed
    return SweepConfig(lr, wd, np.tile(s, B)), hparams, axes


def sweep(
    loss: Callable,
    w0=None,
    lrs=None,
    wds=None,
    steps: int = 1000,
    *,
    dynamics: Dynamics | None = None,
    hparams: Any = None,
    grid: bool = True,
    seeds: Sequence[int] | None = None,
    init_fn: Callable[[Array], Any] | None = None,
    w0_per_config: bool | None = None,
    record_every: int = 1,
    sharpness_every: int = 0,
    lanczos_iter: int = 20,
    record_params: bool = True,
    chunk: int | None = None,
    out_dir: str | os.PathLike | None = None,
    keep_records: bool = True,
    progress: bool | Progress = True,
    shard: bool = True,
    devices: Sequence[Any] | None = None,
    check_invariance: bool = True,
    on_chunk: Callable[[int, int], None] | None = None,
) -> Trajectory:
    """Run GD+WD, eq. (1) — or any dynamics — for a batch of configurations in one compiled call
    per chunk.

    Configuration ``b`` runs ``w_{t+1} = (1 − lr_b·wd_b) w_t − lr_b ∇L(w_t)`` from ``w0_b`` for
    ``steps`` steps; its records are those of ``simulate(loss, w0_b, lr_b, wd_b, steps, ...)``
    (equal to float64 round-off, tested at <= 1e-12). All configurations advance inside one
    ``lax.scan`` (``jax.vmap`` of the simulator's per-configuration driver), sharded over the
    devices (module docstring).

    Args:
      loss: scale-invariant ``loss(w) -> scalar``, shared by all configurations.
      w0: the initial parameters. A 1-D array or a pytree: shared by every configuration. One per
        configuration: a 2-D array ``(B, D)``, or any pytree with a leading axis ``B`` on every
        leaf and ``w0_per_config=True``. ``None`` with ``seeds``/``init_fn``.
      lrs, wds: learning rates ``η̂`` and weight decays ``λ̂`` (scalars or 1-D lists); see
        :func:`configurations` for the order.
      steps: steps per configuration (>= 1).
      dynamics, hparams: instead of ``lrs``/``wds``: any :class:`~eosflow.dynamics.Dynamics`
        and its hyperparameter pytree, batched: leaves with a leading axis ``B`` are swept (one
        value per configuration), scalar leaves are shared. E.g. scalar RMSprop on the sphere
        over four ``β``: ``dynamics=sphere_dynamics(scalar_rmsprop_scheduler),
        hparams=SphereHparams(lr, wd, RMSpropHparams(eta, jnp.array([...]), eps))``; Adam over
        its learning rate: ``dynamics=from_optax(lambda lr: optax.adam(lr)),
        hparams=jnp.array([...])``. With ``seeds`` every configuration runs from every seed
        (seed innermost). Each configuration equals ``simulate(loss, w0_b, dynamics=dynamics,
        hparams=hparams_b)`` while it is stable.
      grid: ``True``: every ``(lr, wd)`` in ``lrs × wds``; ``False``: ``lrs`` and ``wds`` zipped.
      seeds: draw ``w0`` per seed as ``init_fn(jax.random.PRNGKey(seed))``; every ``(lr, wd)`` runs
        from every seed's ``w0`` (seed innermost).
      init_fn: ``key -> w0``, with ``seeds``.
      w0_per_config: whether ``w0`` has a leading configuration axis; default: ``True`` exactly for
        a single 2-D array (pass ``False`` for a shared 2-D parameter).
      record_every, sharpness_every, lanczos_iter: as in :func:`eosflow.simulate`.
      record_params: ``False`` records ``w`` and ``θ`` with shape ``(B, T, 0)`` (saves
        ``2·D`` numbers per record per configuration; everything else is unchanged).
      chunk: steps per compiled call, a multiple of ``record_every`` (default: all ``steps``).
      out_dir: folder to stream each chunk to (atomic ``.npz`` per chunk + ``manifest.json``);
        resumes a sweep saved there with the same arguments, refuses one with other arguments.
        Only process 0 writes (multi-host).
      keep_records: ``False`` (only with ``out_dir``): return empty records (``T = 0``) and keep
        one chunk in memory at a time; read the records with :func:`load_sweep`.
      progress: a progress line on stderr after each chunk (``True``/``False`` or a
        :class:`eosflow.runio.Progress`).
      shard: shard the configuration axis over ``devices`` (default ``jax.devices()``) when there
        are several; ``False`` runs on the default device.
      devices: the devices to shard over (default all). On a multi-core CPU with JAX's single CPU
        device, the first sweep of the process warns (:class:`SingleDeviceWarning`) that
        :func:`eosflow.use_cpu_devices` would shard it over the cores.
      check_invariance: check ``L(cw) = L(w)`` at every distinct ``w0``.
      on_chunk: called as ``on_chunk(index, steps_done)`` after each *computed* (and saved) chunk;
        an exception it raises stops the sweep (a resumable interruption).

    Returns:
      a :class:`~eosflow.Trajectory` whose fields have a leading configuration axis ``B``:
      ``step (B, T)``, ``w (B, T, D)`` (and the derived ``theta``), ``norm, eff_lr, loss, grad_norm, sharpness (B, T)``,
      ``w_final`` (``w0``'s structure with a leading ``B``), ``lr, wd (B,)`` and
      ``nonfinite_step (B,)`` (``-1`` or the first non-finite step; later records are NaN).
      NumPy arrays. :func:`take_config` extracts one configuration.

    Raises:
      ValueError: a configuration with ``lr <= 0``, ``wd < 0`` or ``lr·wd >= 1`` (named), a
        per-configuration ``w0`` whose leading axis is not ``B`` (both sizes given), a zero or
        non-finite ``w0``, a loss that is not scale-invariant, bad ``steps``/``chunk``, an
        ``out_dir`` holding a different sweep.
      TypeError: a loss that is not callable or does not return a real scalar.

    Example:
      >>> import jax.numpy as jnp, eosflow
      >>> tr = eosflow.sweep(eosflow.toy3d(), jnp.array([0.3, 0.5, 0.4]), [0.1, 0.2], [0.01, 0.02],
      ...                    steps=50, progress=False)
      >>> tr.loss.shape, tr.lr.tolist()
      ((4, 50), [0.1, 0.1, 0.2, 0.2])
    """
    plan = _plan(loss, w0, lrs, wds, steps, dynamics, hparams, grid, seeds, init_fn,
                 w0_per_config, record_every, sharpness_every, check_invariance)  # fmt: skip
    B = plan.cfg.lr.size
    if keep_records is False and out_dir is None:
        raise ValueError("sweep: keep_records=False needs out_dir (the records would be lost)")
    chunk = validate_chunk(int(steps) if chunk is None else chunk, record_every, "sweep")
    steps, chunk = int(steps), min(int(chunk), int(steps))
    starts = list(range(0, steps, chunk))
    lay = Layout.make(B, plan, shard, devices)
    settings = dict(
        steps=steps, chunk=chunk, record_every=int(record_every),
        sharpness_every=int(sharpness_every), lanczos_iter=int(lanczos_iter),
        record_params=bool(record_params),
    )  # fmt: skip
    out = Path(out_dir) if out_dir is not None else None
    done, parts, rs, end = resume_saved(out, plan, loss, settings, starts, keep_records, lay)
    bar = progress if isinstance(progress, Progress) else Progress(
        steps, f"sweep ({B} configurations)", enabled=bool(progress))  # fmt: skip
    if done:
        bar.update(min(steps, starts[done - 1] + chunk))
    static = dict(
        hp_axes=plan.hp_axes, record_every=int(record_every),
        sharpness_every=int(sharpness_every), lanczos_iter=int(lanczos_iter),
        record_params=bool(record_params), mesh=lay.mesh,
    )  # fmt: skip
    try:
        for i in range(done, len(starts)):
            n = min(chunk, steps - starts[i])
            rs, rec, end = _chunk(loss, plan, lay, rs, steps, n, static, out, i, starts[i])
            if keep_records:
                parts.append(rec)
            bar.update(starts[i] + n)
            if on_chunk is not None:
                on_chunk(i, starts[i] + n)
    finally:
        bar.close()
    fields = RECORD_FIELDS if keep_records else ()
    D, dtype = plan.W0.shape[1], plan.W0.dtype
    return assemble(parts, end, fields, B, D, dtype, plan.cfg.lr, plan.cfg.wd, plan.w_like,
                    plan.hparams)  # fmt: skip


def _chunk(loss, plan: Plan, lay: Layout, rs, steps, n, static, out, i, start):
    """One compiled chunk of ``n`` steps; its records and end state on the host (padding
    stripped), saved as chunk ``i`` when ``out`` is set. Returns ``(RunState, records, end)``."""
    B = lay.B
    rs, rec, wf = sweep_chunk(
        loss, plan.dynamics, plan.w_like, lay.W0, rs, lay.hparams, lay.steps(steps),
        n_rec=math.ceil(n / static["record_every"]),
        full_records=n % static["record_every"] == 0, **static,
    )  # fmt: skip
    rec, wf, bad, leaves = to_host_tree((rec, wf, rs.bad, jax.tree_util.tree_leaves(rs)))
    rec = {k: v if k == "step" else v[:B] for k, v in rec.items()}
    end = {"w_final": wf[:B], "bad": bad[:B]}
    if out is not None and jax.process_index() == 0:
        save_npz(chunk_path(out, i), **chunk_arrays(start, rec, wf[:B], bad[:B], leaves))
    return rs, rec, end
