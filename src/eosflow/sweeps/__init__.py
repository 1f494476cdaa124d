"""Many runs in one compiled call, sharded over devices, chunked and resumable.

:func:`sweep` (:mod:`eosflow.sweeps.batched`) runs them; :mod:`eosflow.sweeps.config` orders and
checks the configurations (:func:`configurations`); :mod:`eosflow.sweeps.store` saves and loads
them (:func:`load_sweep`).
"""

from eosflow.sweeps.batched import sweep
from eosflow.sweeps.config import SingleDeviceWarning, SweepConfig, config_mesh, configurations
from eosflow.sweeps.store import load_sweep, take_config

__all__ = [
    "sweep",
    "SweepConfig",
    "SingleDeviceWarning",
    "configurations",
    "config_mesh",
    "load_sweep",
    "take_config",
]
