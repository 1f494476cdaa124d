"""Figure 2: a scale-invariant network trained by full-batch GD+WD, with no-WD and no-BN ablations.

The paper trains a smooth VGG-11 with BN after every layer on CIFAR-10 by full-batch GD+WD: after
the training set is fit, spherical sharpness keeps falling and test accuracy keeps rising; removing
BN or WD removes the effect (Appendix P.2 repeats it with ResNet-20). Here the same measurement
runs on any net of :mod:`eosflow.nets` / :mod:`eosflow.resnet` and any dataset of
:mod:`eosflow.data` (settings and their checks: :mod:`eosflow.experiments.net_config`):

* ``dataset="digits"`` (default; scikit-learn's 8x8 digits, bundled), ``"mnist1d"`` (MNIST-1D
  sequences generated locally at the package's seed 42; ``seed`` then only seeds the init; use
  ``subset=null`` for all 4000) or ``"cifar10"`` (the python archive in ``data_dir``; nothing is
  downloaded; ``subset=null`` for all 50,000 images);
* ``arch="mlp"`` (widths ``widths``, any dataset), ``"vgg11"`` (VGG-11 channels times
  ``vgg_width``, images), ``"resnet20"`` (:class:`eosflow.resnet.ResNet20`, ``resnet_width``,
  ``resnet_shortcut``; ``activation="relu"`` is the paper's ResNet) or ``"cnn1d"``
  (:class:`eosflow.nets1d.CNN1D` with ``cnn_channels``, ``cnn_kernel``, ``cnn_stride``;
  MNIST-1D sequences).

Three runs from the same seed (``runs`` selects a subset):

* ``bn``: the scale-invariant net (recipe in :mod:`eosflow.nets`) with WD — the paper's run.
* ``no_wd``: the same loss and ``w0`` with ``wd = 0``: ``||w||`` cannot shrink, ``η̃`` stays
  put, and GD never reaches the Edge of Stability.
* ``no_bn``: the same architecture without BN (biases, plain head), WD on. Not scale-invariant,
  so spherical sharpness is undefined; the plain top Hessian eigenvalue ``λ1(∇²L(w_t))`` is
  recorded instead (every ``no_bn_hess_every`` steps), on another scale.

**Engines** (``engine``; ``"auto"``: ``fullbatch`` for CIFAR-10, ``closure`` otherwise), same
``w0``, same steps, same output files and key numbers (equal to round-off, tested):

* ``closure``: :func:`eosflow.chunks.run_chunked` on :func:`eosflow.nets.make_net_loss` (the
  training batch a compile-time constant, one device); ``w`` is kept at every record and the
  accuracies, the test loss and (no-BN) ``λ1`` are computed from it after the run.
* ``fullbatch``: :mod:`eosflow.experiments.net_fullbatch` — the data an argument of the compiled
  program, sharded over the devices JAX sees; no ``w`` kept (per-layer norms and effective LRs
  instead, ``R_layer_norm``, ``R_layer_eff_lr``); accuracies and test loss every ``eval_every``
  steps (default every record), ``λ1`` of the no-BN net during the run; optional ``remat``.

Recorded every ``record_every`` steps: train loss (cross-entropy), ``||w||``, ``η̃``, spherical
sharpness ``λ1(∇²L(θ_t))`` (warm-started Lanczos with ``lanczos_iter`` vectors every
``sharpness_every`` steps), train/test accuracy and test loss, BN always using the training-batch
statistics. ``w`` itself is not saved (only ``w_final``). Both engines checkpoint after every
chunk (``checkpoint_every`` steps, default about a tenth of the run) and continue exactly with
``eosflow run net ... --resume``.

"Fit" = the first record with 100% training accuracy. "End" sharpness = the median of the
sharpness values in the last 25% of the run (at EoS it oscillates from step to step).

Devices: JAX runs on whatever device it finds; the same command runs on a GPU unchanged. The
command turns on float64 and ``dtype="float64"`` keeps it (the theory checks need it); on a GPU use
``--set dtype='"float32"'``. Figure 2 at full size (docs/fullbatch.md gives time and memory)::

    eosflow run net --set dataset=cifar10 --set data_dir=/data/cifar-10-batches-py \\
        --set arch=vgg11 --set vgg_width=1 --set subset=null --set dtype=float32 --steps 47000
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from eosflow.chunks import run_chunked
from eosflow.experiments import net_plots
from eosflow.experiments._common import RUNS, phase
from eosflow.experiments.net_config import (
    build_model,
    default_config,
    engine,
    load_data,
    validate_config,
)
from eosflow.experiments.net_fullbatch import train_fullbatch
from eosflow.experiments.net_summary import claims, sharpness_at_bn_eos, summarize_run
from eosflow.fullbatch import make_fullbatch
from eosflow.nets import make_net_loss
from eosflow.runio import RunRecorder
from eosflow.sharpness import hessian_top_eigs

NAME = "net"
DESCRIPTION = (
    "scale-invariant net (MLP/VGG-11/ResNet-20/1-D CNN), full-batch GD+WD: sharpness and test "
    "accuracy"
)
PAPER = "Figure 2"

#: Settings ``--set KEY=null`` may clear although their default is a number (all the data).
NULLABLE = ("subset", "test_subset")

__all__ = [
    "NAME", "DESCRIPTION", "PAPER", "NULLABLE", "default_config", "validate_config", "run", "plot",
]  # fmt: skip

_FIELDS = ("step", "norm", "eff_lr", "loss", "grad_norm", "sharpness")


def run(config: dict, out: Path, progress: bool = True) -> dict:
    """Run the selected trainings; save ``arrays.npz`` and ``summary.json`` in ``out``.

    Arrays (``R`` in ``runs``): ``R_step, R_norm, R_eff_lr, R_loss, R_grad_norm, R_sharpness``
    (per record), ``R_train_acc, R_test_acc, R_test_loss``, ``R_w_final``, ``R_lr``, ``R_wd``,
    ``R_nonfinite_step``, ``R_steps_done``, ``R_wall_s``; for ``no_bn`` also ``no_bn_hess_top``
    (``λ1(∇²L(w_t))``, NaN where not computed); with the fullbatch engine also
    ``R_layer_norm, R_layer_eff_lr`` ``(T, L)`` and ``R_layer_names``. Data: ``y_train, y_test``.

    Returns:
      the key numbers per run: fit step (100% train accuracy), EoS step, test accuracy at
      init/fit/end, spherical sharpness at init/fit/end and the ratio fit/end, final train loss
      (:func:`eosflow.experiments.net_summary.summarize`).
    """
    c = config
    validate_config(c)
    dtype = np.dtype(c["dtype"])
    eng = engine(c)
    phase(NAME, f"loading {c['dataset']}, building the {c['arch']} nets ({eng} engine)", progress)
    data = load_data(c)
    rec = RunRecorder(out, NAME, c)
    rec.update(y_train=data.y_train, y_test=data.y_test)
    x_tr, x_te = data.x_train.astype(dtype), data.x_test.astype(dtype)

    nets = _build_nets(c, data, x_tr, eng)
    first = next(iter(nets.values()))
    w0 = first[1] if eng == "fullbatch" else first.w0
    key_numbers: dict = {"D": int(w0.size), "n_train": len(x_tr)}
    for r in (r for r in RUNS if r in c["runs"]):
        label, wd = f"{NAME} [{r}]", 0.0 if r == "no_wd" else c["wd"]
        phase(label, f"GD, wd = {wd:g}, {c['steps']} steps (the first chunk compiles)", progress)
        net = nets[r != "no_bn"]
        if eng == "fullbatch":
            wall = train_fullbatch(c, rec, r, *net, data, x_tr, x_te, progress, label)
        else:
            wall = _train_closure(c, rec, r, net, data, x_tr, x_te, progress, label)
        rec.update(**{f"{r}_wall_s": np.asarray(wall)})
        key_numbers[r] = summarize_run(r, rec.arrays, wall)
    sharpness_at_bn_eos(key_numbers, rec.arrays)
    notes = [
        "fit = first recorded step with 100% training accuracy",
        "sharpness_end = median of the spherical sharpness over the last 25% of the steps",
        "sharpness_at_bn_eos = sharpness at the bn run's EoS entry (first record after the fit "
        "with eff_lr * sharpness >= 2), the same step for both BN runs",
        "no_bn: spherical sharpness is undefined without normalization; hess_top_* is the plain "
        "top Hessian eigenvalue lambda_1(grad^2 L(w_t)), on a different scale",
        "accuracy on any data uses the BN statistics of the training batch",
    ]
    if eng == "fullbatch":
        every = c["eval_every"] or c["record_every"]
        notes.append(
            f"fullbatch engine: accuracies and test loss every {every} steps (NaN between)"
        )
    rec.finish(
        key_numbers,
        dtype=dtype,
        notes=notes,
        description=DESCRIPTION,
        paper=PAPER,
        engine=eng,
        claims=claims(key_numbers),
    )
    return key_numbers


def _build_nets(c, data, x_tr, eng) -> dict:
    """Figure 2's nets, ``{True: the scale-invariant net (BN), False: the no-BN ablation}``, built
    once (so ``bn`` and ``no_wd`` share compiled programs): :class:`eosflow.nets.NetLoss`
    (closure engine) or ``(FullBatchNet, w0)`` (fullbatch engine), the same ``w0``."""
    nets = {}
    for bn, runs in ((True, {"bn", "no_wd"}), (False, {"no_bn"})):
        if not runs & set(c["runs"]):
            continue
        model = build_model(c, data.num_classes, bn)
        if eng == "fullbatch":
            nets[bn] = make_fullbatch(
                model, x_tr, seed=c["seed"], dtype=x_tr.dtype, remat=c["remat"]
            )
        else:
            nets[bn] = make_net_loss(model, x_tr, data.y_train, seed=c["seed"])
    return nets


def _train_closure(c, rec, r, net, data, x_tr, x_te, progress, label) -> float:
    """One run of Figure 2 (full-batch GD+WD, eq. (1), or an ablation) on the closure engine,
    then its accuracies, test loss and (no-BN) λ1 from the recorded ``w``. Returns the wall
    time (s)."""
    bn = r != "no_bn"
    wd = 0.0 if r == "no_wd" else c["wd"]
    t0 = time.perf_counter()
    traj = run_chunked(
        net.loss,
        net.w0,
        c["lr"],
        wd,
        int(c["steps"]),
        chunk=c["checkpoint_every"],
        record_every=int(c["record_every"]),
        sharpness_every=int(c["sharpness_every"]) if bn else 0,
        progress=progress,
        label=label,
        on_chunk=rec.on_chunk(f"{r}_", _FIELDS),
        checkpoint=rec.checkpoint(f"{r}_"),
        check_invariance=bn,
        lanczos_iter=int(c["lanczos_iter"]),
    )
    wall = time.perf_counter() - t0
    w = jnp.asarray(traj.w)

    def evaluate(wi, net=net):
        return (
            net.accuracy(wi, x_tr, data.y_train),
            net.accuracy(wi, x_te, data.y_test),
            net.eval_loss(wi, x_te, data.y_test),
        )

    phase(label, f"accuracies and test loss at {len(w)} records", progress)
    tr_acc, te_acc, te_loss = map(
        np.asarray, jax.jit(lambda ws, f=evaluate: jax.lax.map(f, ws, batch_size=16))(w)
    )
    extra = {f"{r}_train_acc": tr_acc, f"{r}_test_acc": te_acc, f"{r}_test_loss": te_loss}
    if not bn:
        step = np.asarray(traj.step)
        on = step % c["no_bn_hess_every"] == 0
        hess = np.full(len(step), np.nan)
        phase(label, f"top Hessian eigenvalue at {int(on.sum())} records", progress)
        top = jax.jit(
            lambda ws, f=net.loss: jax.lax.map(lambda v: hessian_top_eigs(f, v).eigenvalues[0], ws)
        )
        hess[on] = np.asarray(top(w[on]))
        extra[f"{r}_hess_top"] = hess
    rec.update(**extra)
    return wall


def plot(out: Path) -> list[Path]:
    """``figure2.png``: (a) test accuracy, (b) spherical sharpness (no-BN: ``λ1(∇²L(w))``),
    (c) train loss, (d) ``η̃_t·λ1`` (EoS at 2), (e) train accuracy, (f) ``||w_t||``
    (:func:`eosflow.experiments.net_plots.plot`)."""
    return net_plots.plot(out)
