"""Figure 2: a scale-invariant network trained by full-batch GD+WD, with no-WD and no-BN ablations.

The paper trains a smooth VGG-11 with BN after every layer on CIFAR-10 by full-batch GD+WD: after
the training set is fit, spherical sharpness keeps falling and test accuracy keeps rising; removing
BN or WD removes the effect. Here the same measurement runs on any net of :mod:`eosflow.nets` and
any dataset of :mod:`eosflow.data`:

* ``dataset="digits"`` (default; scikit-learn's 8x8 digits, bundled), ``"mnist1d"`` (MNIST-1D
  sequences generated locally at the package's seed 42; ``seed`` then only seeds the init; use
  ``subset=null`` for all 4000) or ``"cifar10"`` (the python archive in ``data_dir``; nothing is
  downloaded);
* ``arch="mlp"`` (widths ``widths``, any dataset), ``"vgg11"`` (VGG-11 channels times
  ``vgg_width``, images) or ``"cnn1d"`` (:class:`eosflow.nets1d.CNN1D` with ``cnn_channels``,
  ``cnn_kernel``, ``cnn_stride``; MNIST-1D sequences).

Three runs from the same seed (``runs`` selects a subset):

* ``bn``: the scale-invariant net (recipe in :mod:`eosflow.nets`) with WD — the paper's run.
* ``no_wd``: the same loss and ``w0`` with ``wd = 0``: ``||w||`` cannot shrink, ``η̃`` stays
  put, and GD never reaches the Edge of Stability.
* ``no_bn``: the same architecture without BN (biases, plain head), WD on. Not scale-invariant,
  so spherical sharpness is undefined; the plain top Hessian eigenvalue ``λ1(∇²L(w_t))`` is
  recorded instead (every ``no_bn_hess_every`` steps, after the run), on another scale.

Recorded every ``record_every`` steps: train loss (cross-entropy), ``||w||``, ``η̃``, spherical
sharpness ``λ1(∇²L(θ_t))`` (warm-started Lanczos every ``sharpness_every`` steps), and — computed
after each run from the recorded ``w`` — train/test accuracy and test loss, BN always using the
training-batch statistics. ``w`` itself is not saved (only ``w_final``).

"Fit" = the first record with 100% training accuracy. "End" sharpness = the median of the
sharpness values in the last 10% of the run (at EoS it oscillates from step to step).

Devices: JAX runs on whatever device it finds; the same command runs on a GPU unchanged. The
command turns on float64 and ``dtype="float64"`` keeps it (the theory checks need it); on a GPU use
``--set dtype='"float32"'``. The full training batch goes through the net in one pass (BN
statistics are full-batch), and ``simulate`` keeps the recorded ``w`` of a chunk in memory, so for
VGG-11 on CIFAR-10 use a per-class ``subset`` and a coarse ``record_every``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from eosflow.chunks import run_chunked
from eosflow.data import cifar10_paths, load_cifar10, load_digits, load_mnist1d
from eosflow.experiments import net_plots
from eosflow.experiments._common import RUNS, as_float, first_index, phase
from eosflow.nets import MLP, VGG, VGG11, make_net_loss, vgg_config
from eosflow.nets1d import CNN1D
from eosflow.runio import RunRecorder
from eosflow.sharpness import hessian_top_eigs

NAME = "net"
DESCRIPTION = (
    "scale-invariant net (MLP/VGG-11/1-D CNN), full-batch GD+WD: sharpness and test accuracy"
)
PAPER = "Figure 2"

_FIELDS = ("step", "norm", "eff_lr", "loss", "grad_norm", "sharpness")


def default_config(quick: bool) -> dict:
    """Digits, MLP(32, 32), ``γ = 2``, ``lr = 0.1``, ``wd = 0.01`` (``η_in = 1e-3``).

    Quick: 20 training images per class (200), the full 449-image test split, 4000 steps. Full:
    50 per class (500), 20000 steps.
    """
    return {
        "quick": bool(quick),
        "seed": 0,
        "dataset": "digits",
        "data_dir": "",
        "subset": 20 if quick else 50,
        "test_subset": None,
        "arch": "mlp",
        "widths": [32, 32],
        "vgg_width": 0.125,
        "cnn_channels": [32, 32, 32],
        "cnn_kernel": 5,
        "cnn_stride": 2,
        "activation": "swish",
        "logit_scale": 2.0,
        "dtype": "float64",
        "lr": 0.1,
        "wd": 0.01,
        "steps": 4000 if quick else 20000,
        "record_every": 20,
        "sharpness_every": 100,
        "no_bn_hess_every": 500 if quick else 2000,
        "runs": list(RUNS),
    }


def validate_config(config: dict) -> None:
    """Raise ``ValueError`` on settings the run cannot use (``DataFileNotFoundError`` when a
    CIFAR-10 file is missing)."""
    c = config
    if c["dataset"] not in ("digits", "mnist1d", "cifar10"):
        raise ValueError(f"dataset must be 'digits', 'mnist1d' or 'cifar10', got {c['dataset']!r}")
    if c["dataset"] == "cifar10":
        if not c["data_dir"]:
            raise ValueError(
                "dataset cifar10 needs data_dir (the extracted cifar-10-batches-py folder): "
                "--set data_dir=/path/to/cifar-10-batches-py"
            )
        if not os.path.isdir(c["data_dir"]):
            raise ValueError(f"data_dir {c['data_dir']!r} is not a directory")
        cifar10_paths(c["data_dir"])  # all six files there (read, and checked, by run)
    if c["arch"] not in ("mlp", "vgg11", "cnn1d"):
        raise ValueError(f"arch must be 'mlp', 'vgg11' or 'cnn1d', got {c['arch']!r}")
    if (c["arch"] == "cnn1d") != (c["dataset"] == "mnist1d") and c["arch"] != "mlp":
        need = "1-D sequences (dataset mnist1d)" if c["arch"] == "cnn1d" else "images"
        raise ValueError(f"arch {c['arch']} needs {need}, not dataset {c['dataset']}")
    ch = c["cnn_channels"]
    cnn = [*ch, c["cnn_kernel"], c["cnn_stride"]] if isinstance(ch, list) and ch else [0]
    if not all(isinstance(n, int) and n > 0 for n in cnn):
        raise ValueError(
            f"cnn_channels must be a non-empty list and cnn_kernel, cnn_stride positive integers, "
            f"got {ch!r}, {c['cnn_kernel']!r}, {c['cnn_stride']!r}"
        )
    if c["arch"] == "mlp" and (
        not isinstance(c["widths"], list)
        or not all(isinstance(n, int) and n > 0 for n in c["widths"])
    ):
        raise ValueError(f"widths must be a list of positive integers, got {c['widths']!r}")
    if not c["vgg_width"] > 0 or not c["logit_scale"] > 0:
        raise ValueError("vgg_width and logit_scale must be > 0")
    if c["activation"] not in ("swish", "gelu"):
        raise ValueError(f"activation must be 'swish' or 'gelu', got {c['activation']!r}")
    if c["dtype"] not in ("float64", "float32"):
        raise ValueError(f"dtype must be 'float64' or 'float32', got {c['dtype']!r}")
    for k in ("subset", "test_subset"):
        if c[k] is not None and (not isinstance(c[k], int) or c[k] < 1):
            raise ValueError(f"{k} must be null (all) or a positive integer, got {c[k]!r}")
    if min(c["record_every"], c["sharpness_every"], c["no_bn_hess_every"]) < 1:
        raise ValueError("record_every, sharpness_every and no_bn_hess_every must be >= 1")
    if c["sharpness_every"] % c["record_every"] or c["no_bn_hess_every"] % c["record_every"]:
        raise ValueError(
            f"sharpness_every ({c['sharpness_every']}) and no_bn_hess_every "
            f"({c['no_bn_hess_every']}) must be multiples of record_every ({c['record_every']})"
        )
    if c["steps"] < c["sharpness_every"]:
        raise ValueError(
            f"steps ({c['steps']}) must be >= sharpness_every ({c['sharpness_every']})"
        )
    runs = c["runs"]
    if not isinstance(runs, list) or not runs or any(r not in RUNS for r in runs):
        raise ValueError(f"runs must be a non-empty list drawn from {list(RUNS)}, got {runs!r}")


def load_data(config: dict):
    """The :class:`eosflow.data.Dataset` of the config (split and subset by ``seed``)."""
    c = config
    if c["dataset"] == "digits":
        return load_digits(seed=c["seed"], subset=c["subset"], test_subset=c["test_subset"])
    if c["dataset"] == "mnist1d":
        return load_mnist1d(subset=c["subset"], test_subset=c["test_subset"])
    return load_cifar10(c["data_dir"], subset=c["subset"], test_subset=c["test_subset"])


def build_model(config: dict, num_classes: int, bn: bool):
    """The flax module of the config (``bn=False``: the no-BN ablation)."""
    c = config
    common = dict(
        num_classes=num_classes, bn=bn, activation=c["activation"], logit_scale=c["logit_scale"]
    )
    if c["arch"] == "mlp":
        return MLP(widths=tuple(c["widths"]), **common)
    if c["arch"] == "cnn1d":
        k, st = c["cnn_kernel"], c["cnn_stride"]
        return CNN1D(channels=tuple(c["cnn_channels"]), kernel_size=k, stride=st, **common)
    return VGG(config=vgg_config(VGG11, c["vgg_width"]), **common)


def _median_tail(step, values, frac=0.25):
    """Median of the finite ``values`` recorded in the last ``frac`` of the steps."""
    ok = np.isfinite(values)
    if not ok.any():
        return None
    cut = step[-1] - frac * (step[-1] - step[0])
    tail = values[ok & (step >= cut)]
    return as_float(np.median(tail if tail.size else values[ok][-1:]))


def _summarize(step, loss, eff_lr, sharp, train_acc, test_acc) -> dict:
    i_fit = first_index(train_acc >= 1.0)
    ok = np.flatnonzero(np.isfinite(sharp))
    s_fit = None
    eos = None
    if i_fit is not None and ok.size:
        after = ok[ok >= i_fit]
        s_fit = sharp[after[0]] if after.size else None
        hit = after[eff_lr[after] * sharp[after] >= 2.0]
        eos = int(step[hit[0]]) if hit.size else None
    s_end = _median_tail(step, sharp)
    tail = step >= step[-1] - 0.1 * (step[-1] - step[0])
    return {
        "fit_step": None if i_fit is None else int(step[i_fit]),
        "eos_step": eos,
        "train_acc_end": as_float(train_acc[-1]),
        "train_loss_end": as_float(loss[-1]),
        "test_acc_init": as_float(test_acc[0]),
        "test_acc_at_fit": None if i_fit is None else as_float(test_acc[i_fit]),
        "test_acc_end": as_float(test_acc[-1]),
        "test_acc_end_mean": as_float(np.mean(test_acc[tail])),
        "sharpness_init": as_float(sharp[ok[0]]) if ok.size else None,
        "sharpness_at_fit": as_float(s_fit),
        "sharpness_end": s_end,
        "sharpness_last": as_float(sharp[ok[-1]]) if ok.size else None,
        "sharpness_ratio_fit_to_end": (
            None if s_fit is None or not s_end else as_float(s_fit / s_end)
        ),
        "last_step": int(step[-1]),
    }


def run(config: dict, out: Path, progress: bool = True) -> dict:
    """Run the selected trainings; save ``arrays.npz`` and ``summary.json`` in ``out``.

    Arrays (``R`` in ``runs``): ``R_step, R_norm, R_eff_lr, R_loss, R_grad_norm, R_sharpness``
    (per record), ``R_train_acc, R_test_acc, R_test_loss``, ``R_w_final``, ``R_wall_s``; for
    ``no_bn`` also ``no_bn_hess_top`` (``λ1(∇²L(w_t))``, NaN where not computed). Data:
    ``y_train, y_test``.

    Returns:
      the key numbers per run: fit step (100% train accuracy), EoS step, test accuracy at
      init/fit/end, spherical sharpness at init/fit/end and the ratio fit/end, final train loss.
    """
    c = config
    validate_config(c)
    dtype = np.dtype(c["dtype"])
    phase(NAME, f"loading {c['dataset']} and building the {c['arch']} nets", progress)
    data = load_data(c)
    rec = RunRecorder(out, NAME, c)
    rec.update(y_train=data.y_train, y_test=data.y_test)
    x_tr, x_te = data.x_train.astype(dtype), data.x_test.astype(dtype)

    nets = _build_nets(c, data, x_tr)
    key_numbers: dict = {"D": int(next(iter(nets.values())).w0.size), "n_train": len(x_tr)}
    for r in RUNS:
        if r not in c["runs"]:
            continue
        key_numbers[r] = _train(c, rec, r, nets[r != "no_bn"], data, x_tr, x_te, progress)
    _sharpness_at_bn_eos(key_numbers, rec.arrays)
    notes = [
        "fit = first recorded step with 100% training accuracy",
        "sharpness_end = median of the spherical sharpness over the last 25% of the steps",
        "sharpness_at_bn_eos = sharpness at the bn run's EoS entry (first record after the fit "
        "with eff_lr * sharpness >= 2), the same step for both BN runs",
        "no_bn: spherical sharpness is undefined without normalization; hess_top_* is the plain "
        "top Hessian eigenvalue lambda_1(grad^2 L(w_t)), on a different scale",
        "accuracy on any data uses the BN statistics of the training batch",
    ]
    rec.finish(
        key_numbers,
        dtype=dtype,
        notes=notes,
        description=DESCRIPTION,
        paper=PAPER,
        claims=_claims(key_numbers),
    )
    return key_numbers


def _build_nets(c, data, x_tr) -> dict:
    """Figure 2's losses: ``{True: the scale-invariant net (BN), False: the no-BN ablation}``."""
    nets = {}
    if {"bn", "no_wd"} & set(c["runs"]):
        nets[True] = make_net_loss(
            build_model(c, data.num_classes, True), x_tr, data.y_train, seed=c["seed"]
        )
    if "no_bn" in c["runs"]:
        nets[False] = make_net_loss(
            build_model(c, data.num_classes, False), x_tr, data.y_train, seed=c["seed"]
        )
    return nets


def _train(c, rec, r, net, data, x_tr, x_te, progress) -> dict:
    """One run of Figure 2 (full-batch GD+WD, eq. (1), or an ablation), its accuracies, λ1."""
    bn = r != "no_bn"
    wd = 0.0 if r == "no_wd" else c["wd"]
    t0 = time.perf_counter()
    label = f"{NAME} [{r}]"
    phase(label, f"GD, wd = {wd:g}, {c['steps']} steps (the first chunk compiles)", progress)
    traj = run_chunked(
        net.loss,
        net.w0,
        c["lr"],
        wd,
        int(c["steps"]),
        record_every=int(c["record_every"]),
        sharpness_every=int(c["sharpness_every"]) if bn else 0,
        progress=progress,
        label=label,
        on_chunk=rec.on_chunk(f"{r}_", _FIELDS),
        checkpoint=rec.checkpoint(f"{r}_"),
        check_invariance=bn,
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
    step = np.asarray(traj.step)
    extra = {
        f"{r}_train_acc": tr_acc,
        f"{r}_test_acc": te_acc,
        f"{r}_test_loss": te_loss,
        f"{r}_wall_s": np.asarray(wall),
    }
    sharp = np.asarray(traj.sharpness)
    if not bn:
        on = step % c["no_bn_hess_every"] == 0
        hess = np.full(len(step), np.nan)
        phase(label, f"top Hessian eigenvalue at {int(on.sum())} records", progress)
        top = jax.jit(
            lambda ws, f=net.loss: jax.lax.map(lambda v: hessian_top_eigs(f, v).eigenvalues[0], ws)
        )
        hess[on] = np.asarray(top(w[on]))
        extra[f"{r}_hess_top"] = hess
        sharp = hess
    rec.update(**extra)
    nums = _summarize(step, np.asarray(traj.loss), np.asarray(traj.eff_lr), sharp, tr_acc, te_acc)
    nums["wall_s"] = wall
    if not bn:
        for k in list(nums):
            if k.startswith("sharpness"):
                nums[k.replace("sharpness", "hess_top")] = nums.pop(k)
        nums["eos_step"] = None
    return nums


def _sharpness_at_bn_eos(key_numbers: dict, arrays: dict) -> None:
    """Figure 2b at the bn run's EoS entry: each BN run's sharpness there and its ratio to the end."""
    eos = key_numbers.get("bn", {}).get("eos_step")
    for r in ("bn", "no_wd"):
        if r not in key_numbers:
            continue
        nums = key_numbers[r]
        i = None if eos is None else int(np.searchsorted(arrays[f"{r}_step"], eos))
        s_eos = None if i is None else as_float(arrays[f"{r}_sharpness"][i])
        nums["sharpness_at_bn_eos"] = s_eos
        nums["sharpness_ratio_bn_eos_to_end"] = (
            None if s_eos is None or not nums["sharpness_end"] else s_eos / nums["sharpness_end"]
        )


def _claims(key_numbers: dict) -> dict:
    """Figure 2's claims: with BN and WD the sharpness falls after the fit; without WD, not."""
    claims = {}
    b, nw = key_numbers.get("bn"), key_numbers.get("no_wd")
    if b is not None:
        claims["bn: 100% train accuracy reached"] = b["fit_step"] is not None
        ratio = b["sharpness_ratio_fit_to_end"]
        claims["bn: spherical sharpness falls >= 2x from fit to end"] = bool(ratio and ratio >= 2)
    if nw is not None:
        s0, s1 = nw["sharpness_at_fit"], nw["sharpness_end"]
        claims["no_wd: spherical sharpness changes < 10% from fit to end"] = bool(
            s0 and s1 and abs(s1 / s0 - 1) < 0.1
        )
        s0 = nw.get("sharpness_at_bn_eos")
        claims["no_wd: spherical sharpness changes < 10% from the bn run's EoS entry to end"] = (
            bool(s0 and s1 and abs(s1 / s0 - 1) < 0.1)
        )
    if b is not None and b.get("sharpness_ratio_bn_eos_to_end") is not None:
        claims["bn: spherical sharpness falls >= 2x from its EoS entry to end"] = (
            b["sharpness_ratio_bn_eos_to_end"] >= 2
        )
    return claims


def plot(out: Path) -> list[Path]:
    """``figure2.png``: (a) test accuracy, (b) spherical sharpness (no-BN: ``λ1(∇²L(w))``),
    (c) train loss, (d) ``η̃_t·λ1`` (EoS at 2), (e) train accuracy, (f) ``||w_t||``
    (:func:`eosflow.experiments.net_plots.plot`)."""
    return net_plots.plot(out)
