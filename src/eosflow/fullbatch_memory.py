"""Memory and FLOPs of one full-batch GD+WD step, from the compiled program (nothing allocated).

:func:`step_memory` lowers one step of eq. (1) (:func:`eosflow.fullbatch.fullbatch_step`:
forward, backward, update) for ``n`` inputs of a given shape, with the batch sharded over the
given devices (:mod:`eosflow.batch_sharding`), from ``jax.ShapeDtypeStruct`` placeholders, and
reads XLA's ``memory_analysis()`` and ``cost_analysis()`` of the per-device program. Works for
any model :func:`eosflow.fullbatch.make_fullbatch` accepts (VGG-11, a ResNet, an MLP).

The numbers are those of the program compiled for the devices given (buffer assignment differs
between backends: a CPU-compiled program's peak is an estimate of a GPU's). ``hvp=True`` measures
one Hessian-vector product at ``θ = w/||w||`` instead (what each Lanczos iteration of the
sharpness costs).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from eosflow.batch_sharding import BATCH_AXIS, batch_mesh, check_batch
from eosflow.eigensolvers import hvp
from eosflow.fullbatch import fullbatch_loss, fullbatch_step, make_fullbatch

__all__ = ["StepMemory", "step_memory", "compile_step", "compiled_memory", "residual_bytes"]


class StepMemory(NamedTuple):
    """Per-device sizes (bytes) of a compiled full-batch step, and its FLOPs.

    Attributes:
      devices: number of devices the batch is split over.
      n: global batch size.
      params: ``D``, number of parameters.
      argument, output, temp, alias: XLA's ``memory_analysis()`` sizes per device.
      peak: ``argument + output + temp − alias``, the program's buffers per device (XLA's own
        ``peak_memory_in_bytes`` on CPU counts arguments and outputs only).
      residuals: bytes autodiff keeps from the forward pass for the backward pass, per device
        (the leaves of ``jax.vjp``'s closure at batch ``n / devices``, the inputs included): the
        backend-independent part of the peak that ``remat`` changes.
      flops: XLA's ``cost_analysis()["flops"]`` of the per-device program.
    """

    devices: int
    n: int
    params: int
    argument: int
    output: int
    temp: int
    alias: int
    peak: int
    residuals: int
    flops: float


def compile_step(model, n: int, input_shape, *, devices=None, dtype=np.float32, remat=None,
                 hvp_only: bool = False):  # fmt: skip
    """``(compiled, net, w0)``: one full-batch GD+WD step of ``model`` (or, with
    ``hvp_only``, one spherical HVP) on ``n`` inputs of ``input_shape`` (one example's shape)
    and integer labels, compiled for the batch split over ``devices`` (default all), from
    abstract inputs. ``compiled`` takes ``(w, x, y, lr, wd)`` (``(w, v, x, y)`` with
    ``hvp_only``)."""
    mesh = batch_mesh(devices)
    check_batch(np.empty((n, 1)), np.empty((n,), np.int32), mesh, "compile_step")
    x_like = jax.ShapeDtypeStruct((n, *tuple(input_shape)), jnp.dtype(dtype))
    net, w0 = make_fullbatch(model, x_like, dtype=dtype, remat=remat)
    rep = NamedSharding(mesh, PartitionSpec())
    bat = NamedSharding(mesh, PartitionSpec(BATCH_AXIS))
    w = jax.ShapeDtypeStruct(w0.shape, w0.dtype, sharding=rep)
    x = jax.ShapeDtypeStruct(x_like.shape, x_like.dtype, sharding=bat)
    y = jax.ShapeDtypeStruct((n,), jnp.int32, sharding=bat)
    if hvp_only:

        def one_hvp(w, v, x, y):
            return hvp(lambda u: fullbatch_loss(net, u, x, y), w / jnp.linalg.norm(w), v)

        lowered = jax.jit(one_hvp, out_shardings=rep).lower(w, w, x, y)
    else:
        s = jax.ShapeDtypeStruct((), w0.dtype, sharding=rep)
        step = jax.jit(
            lambda w, x, y, lr, wd: fullbatch_step(net, w, x, y, lr, wd), out_shardings=rep
        )
        lowered = step.lower(w, x, y, s, s)
    return lowered.compile(), net, w0


def step_memory(model, n: int, input_shape, *, devices=None, dtype=np.float32, remat=None,
                hvp_only: bool = False) -> StepMemory:  # fmt: skip
    """Per-device memory and FLOPs of one full-batch GD+WD step (module docstring).

    Args:
      model: a flax module as for :func:`eosflow.fullbatch.make_fullbatch`.
      n: global batch size (a multiple of the device count).
      input_shape: one input's shape, e.g. ``(32, 32, 3)`` for CIFAR-10.
      devices: the devices to split the batch over (default ``jax.devices()``).
      dtype: parameter and input dtype.
      remat: as in :func:`eosflow.fullbatch.make_fullbatch`.
      hvp_only: measure one spherical Hessian-vector product instead of the step.

    Example:
      >>> from eosflow.nets import VGG, VGG11
      >>> m = step_memory(VGG(VGG11), 50_000, (32, 32, 3))  # doctest: +SKIP
      >>> m.peak / 2**30  # GiB on one device  # doctest: +SKIP
    """
    compiled, net, w0 = compile_step(
        model, n, input_shape, devices=devices, dtype=dtype, remat=remat, hvp_only=hvp_only
    )
    ndev = len(jax.devices() if devices is None else list(devices))
    return compiled_memory(compiled, net, w0, n, input_shape, ndev, dtype)


def compiled_memory(compiled, net, w0, n: int, input_shape, ndev: int, dtype=np.float32):
    """:class:`StepMemory` of a program from :func:`compile_step` (``ndev`` devices)."""
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    arg, out = int(mem.argument_size_in_bytes), int(mem.output_size_in_bytes)
    temp, alias = int(mem.temp_size_in_bytes), int(mem.alias_size_in_bytes)
    res = residual_bytes(net, w0, n // ndev, input_shape, dtype)
    return StepMemory(ndev, n, int(w0.shape[0]), arg, out, temp, alias, arg + out + temp - alias,
                      res, float(cost.get("flops", np.nan)))  # fmt: skip


def residual_bytes(net, w0, n: int, input_shape, dtype=np.float32) -> int:
    """Bytes of the residuals ``jax.vjp`` of :func:`eosflow.fullbatch.fullbatch_loss` keeps
    at ``n`` inputs of ``input_shape`` (shapes only, nothing computed; inputs included)."""
    x = jax.ShapeDtypeStruct((n, *tuple(input_shape)), jnp.dtype(dtype))
    y = jax.ShapeDtypeStruct((n,), jnp.int32)
    w = jax.ShapeDtypeStruct(w0.shape, w0.dtype)
    pullback = jax.eval_shape(
        lambda w, x, y: jax.vjp(lambda v: fullbatch_loss(net, v, x, y), w)[1], w, x, y
    )
    leaves = jax.tree_util.tree_leaves(pullback)
    return int(sum(np.prod(a.shape, dtype=np.int64) * jnp.dtype(a.dtype).itemsize for a in leaves))
