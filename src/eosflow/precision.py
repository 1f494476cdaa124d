"""Float64 switch. JAX computes in float32 unless x64 is enabled; eosflow's theory checks need
float64 (losses reach 1e-30 before EoS, and the EoS oscillation grows out of round-off).

Turn it on once, at program start, before creating arrays::

    import eosflow
    eosflow.enable_x64()

or set the environment variable ``JAX_ENABLE_X64=1``. The library never flips the flag on import
(it is process-global); the ``eosflow`` command, the experiments, the benchmarks' float64 rows and
the test suite turn it on themselves. Simulations run in the dtype of ``w0``.
"""

from __future__ import annotations

import jax

__all__ = ["enable_x64", "x64_enabled"]


def enable_x64(enabled: bool = True) -> None:
    """Enable (or disable) float64 in JAX for this process (``jax_enable_x64``)."""
    jax.config.update("jax_enable_x64", bool(enabled))


def x64_enabled() -> bool:
    """Whether float64 is enabled."""
    return bool(jax.config.read("jax_enable_x64"))
