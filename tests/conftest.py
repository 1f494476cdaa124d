"""Test configuration: float64 everywhere (theory checks need it)."""

import jax

jax.config.update("jax_enable_x64", True)
