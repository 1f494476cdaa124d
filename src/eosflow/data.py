"""Datasets for the network experiments (Figure 2): scikit-learn digits, MNIST-1D and CIFAR-10.

* :func:`load_digits` — the 8x8 handwritten digits that ship with scikit-learn (1797 images,
  10 classes, no download): the built-in default, small enough for full-batch GD on a CPU.
* :func:`load_mnist1d` — MNIST-1D (Greydanus 2020): 5000 sequences of length 40 generated locally
  from the ``mnist1d`` package's ten templates (nothing downloaded), 4000 train / 1000 test: a
  real dataset on which full-batch GD with a 1-D CNN finishes on a CPU.
* :func:`load_cifar10` — CIFAR-10 (the paper's Figure 2 dataset) from the standard
  "CIFAR-10 python version" archive in a directory the user names.

All return a :class:`Dataset` with channels last (NHWC images, NLC sequences): values are scaled
(pixels to ``[0, 1]``) and then standardized per channel with the mean and std of the (possibly
subset) *training* examples, the same affine map applied to the test examples. ``subset=N`` keeps
the first ``N`` examples of each class (in the split's order) for CPU runs.
"""

from __future__ import annotations

import os
import pickle
from typing import NamedTuple

import numpy as np

__all__ = [
    "Dataset",
    "load_digits",
    "load_mnist1d",
    "MNIST1D_SEED",
    "load_cifar10",
    "first_per_class",
    "CIFAR10_FILES",
    "cifar10_paths",
    "DataError",
    "DataFileNotFoundError",
    "DataFormatError",
]

#: The files of the CIFAR-10 python archive (``cifar-10-batches-py``).
CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)


class DataError(Exception):
    """A dataset that cannot be read; the message names the file or folder and what is wrong.

    Raised as one of its two subclasses, which are also the built-in exceptions one would expect:
    :class:`DataFileNotFoundError` (a ``FileNotFoundError``) and :class:`DataFormatError` (a
    ``ValueError``). The ``eosflow`` command reports it on one line (exit status 2).
    """


class DataFileNotFoundError(DataError, FileNotFoundError):
    """A data folder or file is missing."""


class DataFormatError(DataError, ValueError):
    """A data file is there but malformed (truncated, not a pickle, wrong keys/shape/dtype)."""


class Dataset(NamedTuple):
    """A classification dataset.

    Attributes:
      x_train, x_test: ``(N, H, W, C)`` images or ``(N, L, C)`` sequences, float (standardized
        per channel with training statistics).
      y_train, y_test: ``(N,)`` int32 labels in ``[0, num_classes)``.
      num_classes: number of classes ``K``.
      name: a short label: ``"digits"``, ``"mnist1d"`` or ``"cifar10"``.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    name: str


def first_per_class(y: np.ndarray, n: int) -> np.ndarray:
    """Indices of the first ``n`` examples of each class of ``y`` (in order), sorted.

    Raises ``ValueError`` if ``n < 1``. Classes with fewer than ``n`` examples keep all of them.
    """
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"subset must be a positive integer (examples per class), got {n!r}")
    y = np.asarray(y)
    keep = np.concatenate([np.flatnonzero(y == c)[: int(n)] for c in np.unique(y)])
    return np.sort(keep)


def _standardize(x_train, x_test, max_value: float, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Scale raw pixels to ``[0, 1]`` (divide by ``max_value``), then standardize per channel (last
    axis) with the training mean and std (accumulated in float64; a constant channel keeps std 1)."""
    axes = tuple(range(x_train.ndim - 1))
    x_train = np.asarray(x_train, dtype) / np.asarray(max_value, dtype)
    x_test = np.asarray(x_test, dtype) / np.asarray(max_value, dtype)
    mu = x_train.mean(axis=axes, dtype=np.float64)
    sd = x_train.std(axis=axes, dtype=np.float64)
    sd = np.where(sd > 0, sd, 1.0)
    mu, sd = mu.astype(dtype), sd.astype(dtype)
    return (x_train - mu) / sd, (x_test - mu) / sd


def _finish(x_tr, y_tr, x_te, y_te, max_value, subset, test_subset, name, dtype) -> Dataset:
    if subset is not None:
        i = first_per_class(y_tr, subset)
        x_tr, y_tr = x_tr[i], y_tr[i]
    if test_subset is not None:
        i = first_per_class(y_te, test_subset)
        x_te, y_te = x_te[i], y_te[i]
    x_tr, x_te = _standardize(x_tr, x_te, max_value, dtype)
    return Dataset(x_tr, y_tr.astype(np.int32), x_te, y_te.astype(np.int32), 10, name)


def load_digits(
    *,
    seed: int = 0,
    test_fraction: float = 0.25,
    subset: int | None = None,
    test_subset: int | None = None,
    dtype=np.float64,
) -> Dataset:
    """scikit-learn's handwritten digits (``sklearn.datasets.load_digits``), split by ``seed``.

    The 1797 images (8x8, pixel values 0..16, 10 classes) are shuffled by a permutation from
    ``numpy.random.default_rng(seed)``; the first ``round(test_fraction·1797)`` form the test set,
    the rest the training set. Pixels are divided by 16 (to ``[0, 1]``) and standardized with the
    training mean and std (one channel).

    Args:
      seed: split seed (the same seed gives the same split).
      test_fraction: fraction of the data held out, in ``(0, 1)``.
      subset: keep the first ``subset`` training examples of each class (None: all).
      test_subset: the same for the test set (None: all).
      dtype: float dtype of the images.

    Returns:
      a :class:`Dataset` with ``x`` of shape ``(N, 8, 8, 1)``, ``name="digits"``.
    """
    from sklearn.datasets import load_digits as _sk_load_digits

    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    bunch = _sk_load_digits()
    x = bunch.images[..., None]
    y = bunch.target.astype(np.int32)
    perm = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(test_fraction * len(y)))
    te, tr = perm[:n_test], perm[n_test:]
    return _finish(x[tr], y[tr], x[te], y[te], 16.0, subset, test_subset, "digits", dtype)


#: The ``mnist1d`` package's default generation seed (``get_dataset_args().seed``).
MNIST1D_SEED = 42


def load_mnist1d(
    *,
    seed: int = MNIST1D_SEED,
    subset: int | None = None,
    test_subset: int | None = None,
    dtype=np.float64,
) -> Dataset:
    """MNIST-1D (Greydanus 2020) generated locally by ``mnist1d.data.make_dataset``.

    The package's default arguments (``get_dataset_args()``: 5000 examples, 500 per digit,
    templates padded, sheared, scaled, translated, with correlated and i.i.d. noise, downsampled
    to length 40, ``train_split=0.8``), generation seed ``seed`` (the package default
    :data:`MNIST1D_SEED` = 42): the first 4000 shuffled examples are the training set, the last
    1000 the test set, so the classes are balanced only approximately (394 to 411 and 89 to 106
    per class at seed 42). Nothing is downloaded: the package's
    ``get_dataset`` (which fetches a pickle from GitHub) is never called. The generator seeds
    numpy's and ``random``'s *global* state; both are restored afterwards.

    The package centres and scales the whole set; here, as for the other datasets, the sequences
    are then standardized with the mean and std of the (possibly subset) training set.

    Args:
      seed: generation seed (the same seed gives the same arrays).
      subset, test_subset: keep the first ``N`` examples of each class (None: all).
      dtype: float dtype of the sequences.

    Returns:
      a :class:`Dataset` with ``x`` of shape ``(N, 40, 1)`` (one channel), ``name="mnist1d"``.
    """
    import random

    from mnist1d.data import get_dataset_args, make_dataset

    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"load_mnist1d: seed must be a non-negative integer, got {seed!r}")
    args = get_dataset_args()
    args.seed = int(seed)
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        d = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    x_tr, x_te = d["x"][..., None], d["x_test"][..., None]
    return _finish(x_tr, d["y"], x_te, d["y_test"], 1.0, subset, test_subset, "mnist1d", dtype)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals a CIFAR-10 batch needs (numpy arrays, bytes), so a
    malicious file cannot run arbitrary code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR-10 batch")


def _read_cifar_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 batch file: a pickled dict with ``b'data'`` ``(N, 3072)`` uint8 (rows are
    the R, G and B planes of a 32x32 image, row-major) and ``b'labels'`` (N ints in 0..9).

    Returns ``(images (N, 32, 32, 3) uint8, labels (N,) int32)``. Raises
    :class:`DataFileNotFoundError` if the file is missing and :class:`DataFormatError` naming the
    file and the problem if it is malformed.
    """
    if not os.path.isfile(path):
        raise DataFileNotFoundError(f"CIFAR-10: missing file {path}")
    try:
        with open(path, "rb") as f:
            d = _NumpyOnlyUnpickler(f, encoding="bytes").load()
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a malformed file
        raise DataFormatError(
            f"CIFAR-10: {path} is not a readable python pickle ({type(e).__name__}: {e})"
        ) from e
    if not isinstance(d, dict):
        raise DataFormatError(f"CIFAR-10: {path} holds a {type(d).__name__}, expected a dict")
    for key in (b"data", b"labels"):
        if key not in d:
            raise DataFormatError(
                f"CIFAR-10: {path} has no key {key!r} (keys: {sorted(d, key=repr)[:8]})"
            )
    data = np.asarray(d[b"data"])
    labels = np.asarray(d[b"labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataFormatError(
            f"CIFAR-10: {path}: b'data' must be a (N, 3072) uint8 array, got {data.shape} {data.dtype}"
        )
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise DataFormatError(
            f"CIFAR-10: {path}: b'labels' must be {data.shape[0]} integers, got shape "
            f"{labels.shape} dtype {labels.dtype}"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataFormatError(f"CIFAR-10: {path}: labels must lie in 0..9")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, labels.astype(np.int32)


def cifar10_paths(data_dir: str | os.PathLike) -> list[str]:
    """The six CIFAR-10 batch files in ``data_dir`` (or in its ``cifar-10-batches-py``), checked to
    exist but not read: a cheap check before a long run.

    Raises:
      DataFileNotFoundError: ``data_dir`` or one of the files is missing (the message names it).
    """
    root = os.fspath(data_dir)
    if not os.path.isdir(root):
        raise DataFileNotFoundError(f"CIFAR-10: data directory {root} does not exist")
    nested = os.path.join(root, "cifar-10-batches-py")
    if not os.path.isfile(os.path.join(root, CIFAR10_FILES[0])) and os.path.isdir(nested):
        root = nested
    paths = [os.path.join(root, name) for name in CIFAR10_FILES]
    for path in paths:
        if not os.path.isfile(path):
            raise DataFileNotFoundError(
                f"CIFAR-10: missing file {path} (the extracted cifar-10-batches-py folder of "
                f"the 'CIFAR-10 python version' archive holds {', '.join(CIFAR10_FILES)})"
            )
    return paths


def load_cifar10(
    data_dir: str | os.PathLike,
    *,
    subset: int | None = None,
    test_subset: int | None = None,
    dtype=np.float32,
) -> Dataset:
    """CIFAR-10 from the python-pickle archive in ``data_dir``.

    ``data_dir`` is the extracted ``cifar-10-batches-py`` directory (or a directory containing it)
    with ``data_batch_1`` … ``data_batch_5`` (training, 50000 images) and ``test_batch`` (10000).
    Only numpy arrays and bytes are unpickled (no arbitrary code). Pixels are scaled to ``[0, 1]``
    and standardized per channel with the training mean and std.

    Args:
      data_dir: directory named by the user (``--data-dir``); nothing is downloaded.
      subset, test_subset: keep the first ``N`` examples of each class (None: all).
      dtype: float dtype of the images.

    Returns:
      a :class:`Dataset` with ``x`` of shape ``(N, 32, 32, 3)``, ``name="cifar10"``.

    Raises:
      DataFileNotFoundError: ``data_dir`` or one of the six files is missing (the message names
        it); a ``FileNotFoundError``.
      DataFormatError: a file is not a pickle (e.g. truncated), or lacks ``b'data'``/``b'labels'``,
        or has the wrong shape or dtype (the message names the file and the problem); a
        ``ValueError``.
    """
    paths = cifar10_paths(data_dir)
    batches = [_read_cifar_batch(p) for p in paths]
    x_tr = np.concatenate([b[0] for b in batches[:5]])
    y_tr = np.concatenate([b[1] for b in batches[:5]])
    x_te, y_te = batches[5]
    return _finish(x_tr, y_tr, x_te, y_te, 255.0, subset, test_subset, "cifar10", dtype)
