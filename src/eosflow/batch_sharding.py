"""The training batch sharded over every device (and host): data parallelism for full-batch GD.

A 1-D :class:`jax.sharding.Mesh` with one axis ``"batch"`` spans the devices (all processes'
devices after ``jax.distributed.initialize``). The inputs and labels are split along their first
axis, ``NamedSharding(mesh, P("batch"))``; parameters, the driver's state and the records are
replicated, ``NamedSharding(mesh, P())``. Under ``jax.jit`` the SPMD partitioner turns every
reduction over the batch axis — BN's per-feature mean and variance over the *whole* batch, the
mean cross-entropy, their gradients — into a local partial reduction plus an all-reduce, so the
computed loss is the full-batch loss of Figure 2 (not a per-device "ghost batch" BN).

The batch size must be a multiple of the number of devices: padding would need a mask inside
every BN site of the model (padded rows would otherwise enter ``μ`` and ``σ``), and CIFAR-10's
50,000 images divide evenly over 1, 2, 4, 5, 8, 10 and 16 devices. A batch that does not divide
is refused with the sizes named.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

Array = jax.Array

__all__ = ["BATCH_AXIS", "batch_mesh", "check_batch", "shard_batch", "replicate", "constrain"]

#: The mesh axis the batch is split along.
BATCH_AXIS = "batch"


def batch_mesh(devices=None) -> Mesh:
    """A 1-D mesh with axis ``"batch"`` over ``devices`` (default ``jax.devices()``: every device
    of every process)."""
    devs = list(jax.devices() if devices is None else devices)
    if not devs:
        raise ValueError("batch_mesh: no devices given")
    return Mesh(np.asarray(devs, dtype=object), (BATCH_AXIS,))


def check_batch(x, y, mesh: Mesh | None, where: str, n_parts: int | None = None) -> None:
    """Raise ``ValueError``/``TypeError`` naming the problem unless ``x`` is ``(N, ...)``, ``y``
    integer labels of shape ``(N,)``, and ``N`` a multiple of the mesh's device count (or of
    ``n_parts``)."""
    xs, ys = tuple(np.shape(x)), tuple(np.shape(y))
    if len(xs) < 2:
        raise ValueError(f"{where}: inputs must be (N, ...), got shape {xs}")
    if ys != xs[:1]:
        raise ValueError(f"{where}: labels must have shape ({xs[0]},), got {ys}")
    if not jnp.issubdtype(jnp.result_type(y), jnp.integer):
        raise TypeError(f"{where}: labels must be integers, got {jnp.result_type(y)}")
    parts = n_parts if n_parts is not None else (mesh.devices.size if mesh is not None else 1)
    if xs[0] % parts:
        raise ValueError(
            f"{where}: the batch of {xs[0]} examples does not split evenly over {parts} devices "
            f"({xs[0]} % {parts} = {xs[0] % parts}); use a batch size divisible by {parts} or "
            "fewer devices (padding would enter the BN statistics)"
        )


def _place(x, sharding: NamedSharding) -> Array:
    """A host array (the same on every process) as a global array with ``sharding``; each
    process supplies the shards of its own devices."""
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def shard_batch(mesh: Mesh, x, y, *, process_local: bool = False) -> tuple[Array, Array]:
    """Place ``(x, y)`` on ``mesh`` split along the batch axis.

    Args:
      mesh: from :func:`batch_mesh`.
      x, y: host arrays. With ``process_local=False`` (default) every process passes the *whole*
        batch and keeps only its devices' shards. With ``process_local=True`` each process passes
        only its own consecutive part (process ``i`` of ``P`` the ``i``-th of ``P`` equal parts,
        e.g. read from its own files), and the global batch is their concatenation in process
        order (``jax.make_array_from_process_local_data``).

    Returns:
      global ``(x, y)`` with ``NamedSharding(mesh, P("batch"))``.
    """
    sharding = NamedSharding(mesh, PartitionSpec(BATCH_AXIS))
    if not process_local:
        check_batch(x, y, mesh, "shard_batch")
        return _place(x, sharding), _place(y, sharding)
    local = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)
    check_batch(x, y, None, "shard_batch (process-local part)", n_parts=local)
    n = np.shape(x)[0] * jax.process_count()
    x = jax.make_array_from_process_local_data(sharding, np.asarray(x), (n, *np.shape(x)[1:]))
    y = jax.make_array_from_process_local_data(sharding, np.asarray(y), (n,))
    return x, y


def replicate(mesh: Mesh, tree):
    """Every array leaf of ``tree`` replicated on every device of ``mesh`` (same values on every
    process)."""
    rep = NamedSharding(mesh, PartitionSpec())
    return jax.tree_util.tree_map(lambda a: _place(a, rep), tree)


def constrain(mesh: Mesh, axis: str | None, tree):
    """Inside ``jit``: pin every array leaf's sharding, split along its first axis over ``axis``
    or (``axis=None``) replicated. ``None`` leaves stay ``None``."""
    spec = PartitionSpec(axis) if axis is not None else PartitionSpec()
    sharding = NamedSharding(mesh, spec)
    return jax.tree_util.tree_map(lambda a: jax.lax.with_sharding_constraint(a, sharding), tree)
