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

import warnings

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["enable_x64", "x64_enabled", "Float32Warning", "warn_if_low_precision"]


class Float32Warning(UserWarning):
    """A theory routine (projection onto the minimizer manifold, the sharpness-reduction flow, the
    tracking and oscillation analyses) runs in float32: it cannot reach the accuracy its checks
    assume. Issued once per process, by the first such call; fix: ``eosflow.enable_x64()``."""


_warned = {"float32": False}  # once per process (tests reset it)


def enable_x64(enabled: bool = True) -> None:
    """Enable (or disable) float64 in JAX for this process (``jax_enable_x64``)."""
    jax.config.update("jax_enable_x64", bool(enabled))


def x64_enabled() -> bool:
    """Whether float64 is enabled."""
    return bool(jax.config.read("jax_enable_x64"))


def _precision_hint() -> str:
    if x64_enabled():
        return "x64 is on: pass float64 arrays (e.g. jnp.asarray(x, jnp.float64))"
    return (
        "call eosflow.enable_x64() at program start, before creating arrays "
        "(or set JAX_ENABLE_X64=1)"
    )


def warn_if_low_precision(routine: str, dtype, *, stacklevel: int = 3) -> None:
    """Warn with :class:`Float32Warning`, once per process, if ``dtype`` is a float type narrower
    than float64 (float32, bfloat16, ...). ``routine`` names the caller in the message;
    ``stacklevel`` 3 points at the caller's caller (the user's line)."""
    dt = np.dtype(dtype)
    if not jnp.issubdtype(dt, jnp.inexact) or jnp.finfo(dt).bits >= 64:
        return
    if _warned["float32"]:
        return
    _warned["float32"] = True
    warnings.warn(
        f"{routine} runs in {dt.name}; the manifold, flow and tracking routines need float64 "
        "(in float32 the projection onto Γ stops near L ~ 1e-14, and checks such as 'zeta0 "
        f"is on the minimizer manifold' fail): {_precision_hint()}. Shown once per process.",
        Float32Warning,
        stacklevel=stacklevel,
    )
