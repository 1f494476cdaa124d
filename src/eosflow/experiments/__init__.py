"""The paper's experiments, one module each, run by ``eosflow run NAME`` (see ``README.md``).

Every module ``experiments/<module>.py`` whose name does not start with ``_`` and that defines
``NAME`` is an experiment; this registry finds them by scanning the package, so adding one needs
no edit here. A module that fails to import is listed as unavailable (with the reason) instead of
breaking the others.

Contract (details in ``experiments/README.md``)::

    NAME: str                                   # "matrix-completion-bn"
    DESCRIPTION: str                            # one line
    PAPER: str                                  # what it reproduces, e.g. "Figure 1"
    def default_config(quick: bool) -> dict     # JSON-able; "seed", "quick", and "steps"/"lr"/"wd"
                                                # where those apply
    def run(config: dict, out: Path, progress: bool = True) -> dict
                                                # compute, save arrays.npz + summary.json in out,
                                                # return the key numbers
    def plot(out: Path) -> list[Path]           # read out/arrays.npz, write PNGs, return their paths
    def validate_config(config: dict) -> None   # optional: raise ValueError on bad settings
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from types import ModuleType

__all__ = ["Entry", "discover", "get", "names", "REQUIRED"]

#: Attributes every experiment module must define.
REQUIRED = ("NAME", "DESCRIPTION", "default_config", "run", "plot")


@dataclass(frozen=True)
class Entry:
    """One experiment found in the package: its name, module name, and the module or the error."""

    name: str
    module_name: str
    module: ModuleType | None
    error: str | None = None

    @property
    def description(self) -> str:
        if self.module is None:
            return f"(unavailable: {self.error})"
        paper = getattr(self.module, "PAPER", "")
        return f"{self.module.DESCRIPTION}" + (f" [{paper}]" if paper else "")


def _scan() -> list[tuple[str, ModuleType | None, str | None]]:
    found = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_") or info.ispkg:
            continue
        qual = f"{__name__}.{info.name}"
        try:
            mod = importlib.import_module(qual)
        except Exception as e:  # noqa: BLE001 - reported by `eosflow list`
            found.append((qual, None, f"{type(e).__name__}: {e}".splitlines()[0]))
            continue
        found.append((qual, mod, None))
    return found


def discover() -> dict[str, Entry]:
    """All experiments, ``{NAME: Entry}`` sorted by name. Modules without ``NAME`` are skipped;
    a module that fails to import appears under its module name with hyphens."""
    out: dict[str, Entry] = {}
    for qual, mod, err in _scan():
        short = qual.rsplit(".", 1)[1]
        if mod is None:
            name = short.replace("_", "-")
            out[name] = Entry(name, qual, None, err)
            continue
        if not hasattr(mod, "NAME"):
            continue
        missing = [a for a in REQUIRED if not hasattr(mod, a)]
        if missing:
            out[mod.NAME] = Entry(mod.NAME, qual, None, f"module lacks {', '.join(missing)}")
        else:
            out[mod.NAME] = Entry(mod.NAME, qual, mod)
    return dict(sorted(out.items()))


def names() -> list[str]:
    """The names of the available experiments."""
    return [n for n, e in discover().items() if e.module is not None]


def get(name: str) -> ModuleType:
    """The module of experiment ``name``.

    Raises:
      KeyError: no such experiment, or it failed to import (the message says which and why).
    """
    entries = discover()
    if name not in entries:
        raise KeyError(f"unknown experiment {name!r}; available: {', '.join(names()) or '(none)'}")
    entry = entries[name]
    if entry.module is None:
        raise KeyError(f"experiment {name!r} is unavailable: {entry.error}")
    return entry.module
