"""Helpers shared by the experiment modules: figures without global state, loading saved runs,
progress lines for the phases of a run.

Figures use matplotlib's object-oriented API on an Agg canvas (``matplotlib.figure.Figure``),
never ``pyplot``, so importing or plotting an experiment does not change the backend of an
interactive session. PNGs are written atomically (:func:`eosflow.runio.save_bytes`).

Progress: every phase of a run that can take more than a couple of seconds says on stderr that it
starts (:func:`phase`), and one made of steps also draws a bar (:func:`bar`, or the one of
:func:`eosflow.chunks.run_chunked`); ``progress=False`` (``eosflow run --no-progress``) silences
both.

Problems: :func:`linreg_bn_problem` is Section 5's linear regression with BatchNorm (data, loss,
``w0``) as the experiments on it draw it from their ``seed``.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from eosflow.losses import linear_regression_bn, make_linear_regression_data
from eosflow.runio import ARRAYS, SUMMARY, Progress, save_bytes

#: One colour per run, shared by all figures.
COLORS = {"bn": "C0", "no_wd": "C1", "no_bn": "C2"}
#: The ablation runs of the figure experiments (matrix completion, nets) and their legend labels.
RUNS = ("bn", "no_wd", "no_bn")
LABELS = {"bn": "BN + WD", "no_wd": "BN, no WD", "no_bn": "no BN, WD"}


def phase(label: str, text: str, enabled: bool = True) -> None:
    """Say on stderr that a phase of a run starts: ``"LABEL: TEXT ..."`` (nothing if not
    ``enabled``)."""
    if enabled:
        print(f"{label}: {text} ...", file=sys.stderr, flush=True)


def bar(label: str, enabled: bool = True, unit: str = "points") -> Callable[[int, int], None]:
    """A ``progress(done, total)`` callback (as :func:`eosflow.analysis.project_points` takes)
    drawing a :class:`~eosflow.runio.Progress` bar, made at the first call (``done = 0`` before
    the work starts) when ``total`` is known."""
    state: dict[str, Progress] = {}

    def update(done: int, total: int) -> None:
        if "bar" not in state:
            state["bar"] = Progress(total, label, enabled=enabled, unit=unit)
        if done:  # (0, total) only starts the clock
            state["bar"].update(done)

    return update


def new_figure(nrows: int, ncols: int, size: tuple[float, float]):
    """``(fig, axes)``: a constrained-layout figure on its own Agg canvas, ``axes`` a 2-D array."""
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def save_figure(fig: Figure, path: Path, dpi: int = 110) -> Path:
    """Render ``fig`` to PNG in memory and write it atomically. Returns the path."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return save_bytes(path, buf.getvalue())


def load_arrays(out: Path) -> dict[str, np.ndarray]:
    """The arrays of a finished run (``out/arrays.npz``) as a dict."""
    with np.load(Path(out) / ARRAYS) as z:
        return {k: z[k] for k in z.files}


def load_summary(out: Path) -> dict:
    """The run's ``summary.json``."""
    return json.loads((Path(out) / SUMMARY).read_text())


def first_index(mask: np.ndarray) -> int | None:
    """Index of the first ``True`` in ``mask``, or ``None``."""
    idx = np.flatnonzero(mask)
    return int(idx[0]) if idx.size else None


def as_float(x) -> float | None:
    """A Python float, or ``None`` for ``None``/NaN (so summaries stay strict JSON)."""
    if x is None:
        return None
    x = float(x)
    return x if np.isfinite(x) else None


def linreg_bn_problem(config: dict, *, n_test: int | None = None, scale_by_sqrt_d: bool = True):
    """``(data, loss, w0)``: Section 5's linear regression with BN from ``config``'s ``seed``,
    ``n``, ``d`` and ``init_scale``.

    ``kd, kw = split(PRNGKey(seed))``; ``data = make_linear_regression_data(kd, n, d)`` (with
    ``n_test`` test samples if given, else the function's default); ``loss =
    linear_regression_bn(data.X, data.y)``; ``w0 = init_scale · N(0, I_d)`` from ``kw``, divided
    by ``sqrt(d)`` if ``scale_by_sqrt_d`` (so ``||w0|| ≈ init_scale``).
    """
    c = config
    kd, kw = jax.random.split(jax.random.PRNGKey(int(c["seed"])))
    test = {} if n_test is None else {"n_test": n_test}
    data = make_linear_regression_data(kd, n=c["n"], d=c["d"], **test)
    loss = linear_regression_bn(data.X, data.y)
    w0 = c["init_scale"] * jax.random.normal(kw, (c["d"],))
    if scale_by_sqrt_d:
        w0 = w0 / np.sqrt(c["d"])
    return data, loss, w0
