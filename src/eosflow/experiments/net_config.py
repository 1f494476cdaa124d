"""Settings of the ``net`` experiment (Figure 2): defaults, checks, the data and the nets they
select. Not an experiment itself (no ``NAME``); :mod:`eosflow.experiments.net` re-exports
:func:`default_config` and :func:`validate_config`.
"""

from __future__ import annotations

import os

from eosflow.data import cifar10_paths, load_cifar10, load_digits, load_mnist1d
from eosflow.experiments._common import RUNS
from eosflow.nets import MLP, VGG, VGG11, vgg_config
from eosflow.nets1d import CNN1D
from eosflow.resnet import ResNet20

__all__ = ["ENGINES", "ARCHS", "default_config", "validate_config", "engine", "load_data",
           "build_model"]  # fmt: skip

#: How a run is computed: ``"closure"`` (:func:`eosflow.chunks.run_chunked` on
#: :func:`eosflow.nets.make_net_loss`, data a compile-time constant, ``w`` kept at every record,
#: one device), ``"fullbatch"`` (:func:`eosflow.fullbatch.fullbatch_run`, data an argument
#: sharded over the devices, no ``w`` kept) or ``"auto"`` (fullbatch for CIFAR-10, else closure).
ENGINES = ("auto", "closure", "fullbatch")
#: The architectures: an MLP, VGG-11, ResNet-20 (images), a 1-D CNN (MNIST-1D sequences).
ARCHS = ("mlp", "vgg11", "resnet20", "cnn1d")


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
        "resnet_width": 1.0,
        "resnet_shortcut": "A",
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
        "lanczos_iter": 20,
        "engine": "auto",
        "eval_every": None,
        "checkpoint_every": None,
        "remat": None,
        "runs": list(RUNS),
    }


def engine(config: dict) -> str:
    """The engine a config runs on: ``"fullbatch"`` or ``"closure"`` (``"auto"`` resolved)."""
    e = config.get("engine", "auto")
    if e == "auto":
        return "fullbatch" if config["dataset"] == "cifar10" else "closure"
    return e


def _check_data(c: dict) -> None:
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
    for k in ("subset", "test_subset"):
        if c[k] is not None and (not isinstance(c[k], int) or c[k] < 1):
            raise ValueError(f"{k} must be null (all) or a positive integer, got {c[k]!r}")


def _check_arch(c: dict) -> None:
    if c["arch"] not in ARCHS:
        raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {c['arch']!r}")
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
    if not c["vgg_width"] > 0 or not c["logit_scale"] > 0 or not c["resnet_width"] > 0:
        raise ValueError("vgg_width, resnet_width and logit_scale must be > 0")
    if c["resnet_shortcut"] not in ("A", "B"):
        raise ValueError(f"resnet_shortcut must be 'A' or 'B', got {c['resnet_shortcut']!r}")
    acts = ("swish", "gelu", "relu") if c["arch"] == "resnet20" else ("swish", "gelu")
    if c["activation"] not in acts:
        raise ValueError(
            f"activation must be one of {', '.join(acts)} for arch {c['arch']} (relu: resnet20 "
            f"only, the paper's ResNet), got {c['activation']!r}"
        )


def _check_engine(c: dict) -> None:
    if c["engine"] not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {c['engine']!r}")
    re = c["record_every"]
    for k in ("eval_every", "checkpoint_every"):
        v = c[k]
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1 or v % re):
            raise ValueError(
                f"{k} must be null or a positive multiple of record_every ({re}), got {v!r}"
            )
    if c["remat"] not in (None, "dots"):
        raise ValueError(f"remat must be null or 'dots', got {c['remat']!r}")
    if engine(c) == "closure" and c["remat"] is not None:
        raise ValueError("remat needs engine 'fullbatch' (the closure engine has no remat)")
    if engine(c) == "fullbatch" and c["steps"] % re:
        raise ValueError(
            f"engine fullbatch: steps ({c['steps']}) must be a multiple of record_every ({re})"
        )
    if not isinstance(c["lanczos_iter"], int) or c["lanczos_iter"] < 2:
        raise ValueError(f"lanczos_iter must be an integer >= 2, got {c['lanczos_iter']!r}")


def validate_config(config: dict) -> None:
    """Raise ``ValueError`` on settings the run cannot use (``DataFileNotFoundError`` when a
    CIFAR-10 file is missing)."""
    c = config
    _check_data(c)
    _check_arch(c)
    if c["dtype"] not in ("float64", "float32"):
        raise ValueError(f"dtype must be 'float64' or 'float32', got {c['dtype']!r}")
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
    _check_engine(c)
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
    if c["arch"] == "resnet20":
        return ResNet20(width=c["resnet_width"], shortcut=c["resnet_shortcut"], **common)
    return VGG(config=vgg_config(VGG11, c["vgg_width"]), **common)
