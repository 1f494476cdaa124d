"""Imported first by every script here: puts this folder on ``sys.path``, uses the checkout's
``src/`` where ``eosflow`` is not installed (a bare GPU machine), and turns float64 on (the
benchmarks' reference dtype) before any array exists."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
if importlib.util.find_spec("eosflow") is None:
    sys.path.insert(0, str(HERE.parent / "src"))

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
