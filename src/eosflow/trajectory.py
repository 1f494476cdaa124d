"""What a run returns: :class:`Trajectory`, and :class:`NonFiniteError` for runs that blow up."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import numpy as np

from eosflow.gd import StepInfo

Array = jax.Array

__all__ = ["Trajectory", "NonFiniteError", "PER_RECORD", "from_records", "cut_at_nonfinite"]

#: Per-record fields of a :class:`Trajectory` (``theta`` is derived from ``w`` and ``norm``;
#: ``extra`` holds a dynamics' own per-record diagnostics).
PER_RECORD = ("step", "w", "norm", "eff_lr", "loss", "grad_norm", "sharpness")


class _TrajectoryFields(NamedTuple):
    step: Array
    w: Array
    norm: Array
    eff_lr: Array
    loss: Array
    grad_norm: Array
    sharpness: Array
    w_final: Any
    lr: Array
    wd: Array
    nonfinite_step: Array
    extra: Any = None
    hparams: Any = None


class Trajectory(_TrajectoryFields):
    """A recorded run. Per-record fields have leading axis ``T = ceil(steps/record_every)``
    and hold values at ``w_t`` for the recorded steps ``t`` (before the update of step ``t``).
    A :func:`eosflow.sweep` result has one more leading axis, the configuration.

    Attributes:
      step: ``(T,)`` int step numbers ``t``.
      w: ``(T, D)`` flat parameters ``w_t`` (``ravel_pytree`` order for pytree ``w0``).
      theta: ``(T, D)`` directions ``θ_t = w_t/||w_t||`` — a property, computed from ``w`` and
        ``norm`` on first access and cached (not stored by the scan: a second ``(T, D)`` buffer
        would double the cost of the records).
      norm: ``(T,)`` ``||w_t||``.
      eff_lr: ``(T,)`` effective learning rate ``η̃_t`` (GD+WD: ``lr/((1−lr·wd)||w_t||²)``,
        Lemma 3.1; other dynamics: their own, e.g. measured for optax).
      loss: ``(T,)`` ``L(θ_t)``.
      grad_norm: ``(T,)`` ``||∇L(θ_t)||``.
      sharpness: ``(T,)`` spherical sharpness ``λ1(∇²L(θ_t))`` at steps divisible by
        ``sharpness_every``, NaN elsewhere (all NaN when ``sharpness_every = 0``).
      w_final: the iterate after the last step, with the structure of ``w0``.
      lr, wd: GD+WD's hyperparameters (scalars; NaN for other dynamics).
      nonfinite_step: ``-1``, or the first step ``t`` whose update produced a non-finite value
        (records stop at ``t``; see ``on_nonfinite``).
      extra: ``{name: (T,)}`` further per-record diagnostics of the dynamics (e.g.
        ``fit_residual`` of an optax run); ``{}`` for GD+WD.
      hparams: the dynamics' hyperparameter pytree.

    It is a ``NamedTuple`` (a pytree: ``jax.tree_util``, ``jit``, ``vmap`` see the fields above
    except ``theta``).
    """

    @functools.cached_property
    def theta(self) -> Array:
        """``θ_t = w_t/||w_t||``, shape of ``w``; computed once from ``w`` and ``norm``."""
        # w·(1/||w||): the same operations in NumPy and XLA (XLA turns a division by a
        # broadcast scalar into this product), so saved and in-memory runs agree bit for bit.
        return self.w * (1 / self.norm)[..., None]

    def __getstate__(self):  # pickle the fields only, not the cached theta
        return None

    @property
    def intrinsic_lr(self) -> Array:
        """``η_in = lr·wd``: flow time per step in Theorem 4.7."""
        return self.lr * self.wd

    def per_record(self) -> dict[str, Any]:
        """All per-record arrays: :data:`PER_RECORD` and the ``extra`` diagnostics."""
        return {**{k: getattr(self, k) for k in PER_RECORD}, **(self.extra or {})}

    def take(self, n: int) -> Trajectory:
        """The first ``n`` records (every per-record field cut along its record axis, the last
        axis of ``step`` and the axis after a sweep's configuration axis elsewhere)."""
        return self._replace(
            **{k: getattr(self, k)[..., :n] if k == "step" else _cut(getattr(self, k), n, self.step)
               for k in PER_RECORD},
            extra={k: _cut(v, n, self.step) for k, v in (self.extra or {}).items()},
        )  # fmt: skip


def _cut(x, n: int, step) -> Any:
    axis = np.ndim(step) - 1  # 0 for one run, 1 for a sweep
    return x[(slice(None),) * axis + (slice(0, n),)]


class NonFiniteError(FloatingPointError):
    """A run produced NaN/Inf. ``step`` is the first bad step; ``trajectory`` holds the records up
    to and including it."""

    def __init__(self, message: str, step: int, trajectory: Trajectory):
        super().__init__(message)
        self.step = step
        self.trajectory = trajectory


def from_records(records, w_final, bad, lr, wd, hparams=None) -> Trajectory:
    """A :class:`Trajectory` from the driver's :class:`~eosflow.driver.Records`: the
    :class:`~eosflow.gd.StepInfo` fields of ``records.info`` go to their fields, any further
    fields of the dynamics' info to ``extra``."""
    info = records.info
    names = info._fields
    extra = {k: getattr(info, k) for k in names if k not in StepInfo._fields}
    return Trajectory(
        records.step, records.w, info.norm, info.eff_lr, info.loss, info.grad_norm,
        records.sharpness, w_final, lr, wd, bad, extra, hparams,
    )  # fmt: skip


def cut_at_nonfinite(traj: Trajectory, on_nonfinite: str, where: str) -> Trajectory:
    """Apply ``on_nonfinite`` to a finished run: unchanged if finite; else cut after the first
    bad step and returned (``"return"``) or raised as :class:`NonFiniteError` (``"raise"``)."""
    if isinstance(traj.nonfinite_step, jax.core.Tracer):
        return traj
    bad = int(traj.nonfinite_step)
    if bad < 0:
        return traj
    keep = int(np.searchsorted(np.asarray(traj.step), bad, side="right"))
    cut = traj.take(keep)
    if on_nonfinite == "return":
        return cut
    raise NonFiniteError(
        f"{where}: non-finite values (NaN/Inf) first produced by the update at step {bad} "
        f"(last finite loss {float(cut.loss[-1]) if keep else float('nan'):.3g}, "
        f"||w|| = {float(cut.norm[-1]) if keep else float('nan'):.3g}); the trajectory up to that "
        "step is in the exception's .trajectory. Lower lr, or pass on_nonfinite='return'.",
        bad,
        cut,
    )
