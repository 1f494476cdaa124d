"""CPU cores as JAX devices, so :func:`eosflow.sweep` runs configurations in parallel on a CPU.

JAX shows a CPU as *one* device. One device runs a vmapped sweep as one stream of kernels: small
batched kernels (matrix completion's ``50×50`` products, a ``5000``-dimensional matrix-vector
product per configuration) then use about one core. Exposing every core as a device lets
:func:`eosflow.sweep` shard the configuration axis across them (its usual ``Mesh`` +
``NamedSharding`` path), one stream per core. Measured on a 2-core CPU (docs/benchmarks.md):
64-configuration sweeps run 1.5-2x faster with two CPU devices than with one; single
trajectories (:func:`eosflow.simulate`) are unaffected.

It is a process-wide JAX setting (``jax_num_cpu_devices``) that must be made *before* JAX runs
anything, like :func:`eosflow.enable_x64`; the library never changes it on import::

    import eosflow
    eosflow.use_cpu_devices()        # one device per core
    eosflow.enable_x64()

The ``eosflow`` command does this itself. On a GPU machine the default devices are the GPUs and
this setting only affects ``jax.devices("cpu")``.
"""

from __future__ import annotations

import os

import jax

__all__ = ["use_cpu_devices", "cpu_cores"]


def cpu_cores() -> int:
    """The number of cores this process may run on (``os.sched_getaffinity`` where available)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def _backends_initialized() -> bool:
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):  # pragma: no cover - private API moved
        return False


def use_cpu_devices(n: int | None = None) -> int:
    """Expose ``n`` CPU devices to JAX (default: one per core), for :func:`eosflow.sweep`.

    Sets JAX's ``jax_num_cpu_devices``. Call it right after importing eosflow, before any JAX
    computation.

    Args:
      n: number of CPU devices (>= 1); default :func:`cpu_cores`.

    Returns:
      the number of CPU devices JAX will use.

    Raises:
      ValueError: ``n < 1``.
      RuntimeError: JAX already ran something in this process (its backends are initialized)
        with a different number of CPU devices; the message says where to call this instead.
    """
    n = cpu_cores() if n is None else n
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"use_cpu_devices: n must be an integer >= 1, got {n!r}")
    if _backends_initialized():
        have = len(jax.devices("cpu"))
        if have == n:
            return n
        raise RuntimeError(
            f"use_cpu_devices({n}): JAX already runs with {have} CPU device(s) in this process "
            "(something executed before this call). Call eosflow.use_cpu_devices() right after "
            "`import eosflow`, before creating arrays, or set JAX_NUM_CPU_DEVICES in the "
            "environment."
        )
    jax.config.update("jax_num_cpu_devices", n)
    return n
