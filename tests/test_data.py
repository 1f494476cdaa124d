"""Datasets: digits split/subset determinism, and the CIFAR-10 pickle loader on a tiny archive
written here in the real format (protocol-2 pickles of dicts with bytes keys)."""

import os
import pickle

import numpy as np
import pytest
from sklearn.datasets import load_digits as sk_load_digits

from eosflow.data import (
    CIFAR10_FILES,
    MNIST1D_SEED,
    Dataset,
    first_per_class,
    load_cifar10,
    load_digits,
    load_mnist1d,
)


def _raw_rows(x, y, mu, sd):
    """Undo the standardization, back to integer pixel values 0..16, rows sorted with labels."""
    raw = np.rint((x.reshape(len(x), -1) * sd + mu) * 16).astype(int)
    rows = np.concatenate([raw, y[:, None]], axis=1)
    return rows[np.lexsort(rows.T[::-1])]


def test_digits_shapes_and_standardization():
    d = load_digits(seed=0)
    assert isinstance(d, Dataset) and d.name == "digits" and d.num_classes == 10
    assert d.x_train.shape == (1348, 8, 8, 1) and d.x_test.shape == (449, 8, 8, 1)
    assert d.y_train.dtype == np.int32 and d.x_train.dtype == np.float64
    np.testing.assert_allclose(d.x_train.mean(), 0.0, atol=1e-12)
    np.testing.assert_allclose(d.x_train.std(), 1.0, rtol=1e-12)


def test_digits_split_is_a_partition_and_deterministic():
    bunch = sk_load_digits()
    d = load_digits(seed=3)
    # recover the affine map from the training set's [0,1] pixels (mean/std over all pixels)
    perm = np.random.default_rng(3).permutation(1797)
    tr = bunch.images[perm[449:]] / 16.0
    mu, sd = tr.mean(), tr.std()
    both = _raw_rows(
        np.concatenate([d.x_train, d.x_test]), np.concatenate([d.y_train, d.y_test]), mu, sd
    )
    ref = np.concatenate([bunch.images.reshape(1797, -1).astype(int), bunch.target[:, None]], 1)
    np.testing.assert_array_equal(both, ref[np.lexsort(ref.T[::-1])])
    again = load_digits(seed=3)
    for a, b in zip(d[:4], again[:4], strict=True):
        np.testing.assert_array_equal(a, b)
    other = load_digits(seed=4)
    assert not np.array_equal(d.y_train, other.y_train)


def test_digits_subset_first_per_class():
    full = load_digits(seed=1)
    d = load_digits(seed=1, subset=7, test_subset=3, dtype=np.float32)
    assert np.array_equal(np.bincount(d.y_train), np.full(10, 7))
    assert np.array_equal(np.bincount(d.y_test), np.full(10, 3))
    assert d.x_train.dtype == np.float32
    idx = first_per_class(full.y_train, 7)
    np.testing.assert_array_equal(d.y_train, full.y_train[idx])
    # same images up to the (different) standardization affine map: correlation exactly 1
    a, b = d.x_train.ravel().astype(np.float64), full.x_train[idx].ravel()
    assert np.corrcoef(a, b)[0, 1] > 1 - 1e-6


def test_first_per_class():
    y = np.array([2, 0, 2, 1, 0, 2, 1])
    np.testing.assert_array_equal(first_per_class(y, 1), [0, 1, 3])
    np.testing.assert_array_equal(first_per_class(y, 2), [0, 1, 2, 3, 4, 6])
    np.testing.assert_array_equal(first_per_class(y, 5), np.arange(7))
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="subset"):
            first_per_class(y, bad)


# --- CIFAR-10 -----------------------------------------------------------------------------------

N_PER_FILE = 20


def _batch(seed: int, n: int = N_PER_FILE) -> dict:
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": f"batch {seed}".encode(),
        b"labels": [int(v) for v in np.arange(n) % 10],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{seed}_{i}.png".encode() for i in range(n)],
    }


def _write(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


@pytest.fixture
def cifar_dir(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for i, name in enumerate(CIFAR10_FILES):
        _write(root / name, _batch(i))
    return root


def test_cifar10_reads_the_archive(cifar_dir):
    d = load_cifar10(cifar_dir)
    assert d.name == "cifar10" and d.num_classes == 10
    assert d.x_train.shape == (5 * N_PER_FILE, 32, 32, 3) and d.x_test.shape == (
        N_PER_FILE,
        32,
        32,
        3,
    )
    assert d.x_train.dtype == np.float32
    # independent reference: channel c of pixel (h, w) is data[n, 1024 c + 32 h + w]
    data = np.concatenate([_batch(i)[b"data"] for i in range(5)]).astype(np.float64) / 255
    planes = data.reshape(-1, 3, 1024)
    mu, sd = planes.mean(axis=(0, 2)), planes.std(axis=(0, 2))
    n, h, w, c = 37, 5, 17, 2
    expect = (data[n, 1024 * c + 32 * h + w] - mu[c]) / sd[c]
    np.testing.assert_allclose(d.x_train[n, h, w, c], expect, rtol=1e-5)
    np.testing.assert_allclose(d.x_train.mean(axis=(0, 1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(d.x_train.std(axis=(0, 1, 2)), 1, rtol=1e-5)
    np.testing.assert_array_equal(d.y_test, np.arange(N_PER_FILE) % 10)
    test_raw = _batch(5)[b"data"].astype(np.float64).reshape(-1, 3, 1024) / 255
    np.testing.assert_allclose(
        d.x_test[3, 0, 1, 0], (test_raw[3, 0, 1] - mu[0]) / sd[0], rtol=1e-5, atol=1e-6
    )
    # the parent directory works too, and subsets keep the first N per class
    s = load_cifar10(cifar_dir.parent, subset=3, test_subset=1, dtype=np.float64)
    assert s.x_train.shape == (30, 32, 32, 3) and s.x_test.shape == (10, 32, 32, 3)
    assert np.array_equal(np.bincount(s.y_train), np.full(10, 3))


def test_cifar10_missing_files(tmp_path, cifar_dir):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_cifar10(tmp_path / "nowhere")
    os.remove(cifar_dir / "data_batch_3")
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        load_cifar10(cifar_dir)


@pytest.mark.parametrize(
    "corrupt, match",
    [
        (lambda p: p.write_bytes(b"this is not a pickle at all"), "not a readable python pickle"),
        (
            lambda p: _write(p, {**_batch(0), b"data": np.zeros((20, 3000), np.uint8)}),
            r"\(N, 3072\)",
        ),
        (lambda p: _write(p, {**_batch(0), b"data": np.zeros((20, 3072), np.float32)}), "uint8"),
        (lambda p: _write(p, {b"data": _batch(0)[b"data"]}), "no key b'labels'"),
        (lambda p: _write(p, {**_batch(0), b"labels": [0] * 19}), "labels"),
        (lambda p: _write(p, {**_batch(0), b"labels": [11] * 20}), "0..9"),
        (lambda p: _write(p, [1, 2, 3]), "expected a dict"),
        (lambda p: _write(p, os.getcwd), "not allowed"),  # a global outside the allow-list
    ],
)
def test_cifar10_rejects_malformed(cifar_dir, corrupt, match):
    corrupt(cifar_dir / "test_batch")
    with pytest.raises(ValueError, match=match) as e:
        load_cifar10(cifar_dir)
    assert "test_batch" in str(e.value)


# --- MNIST-1D -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist1d_ref():
    """The package's own generator at its default arguments (the independent reference)."""
    from mnist1d.data import get_dataset_args, make_dataset

    return make_dataset(get_dataset_args())


@pytest.fixture(scope="module")
def mnist1d():
    return load_mnist1d()


def test_mnist1d_shapes_and_balance(mnist1d):
    d = mnist1d
    assert isinstance(d, Dataset) and d.name == "mnist1d" and d.num_classes == 10
    assert d.x_train.shape == (4000, 40, 1) and d.x_test.shape == (1000, 40, 1)
    assert d.x_train.dtype == np.float64 and d.y_train.dtype == np.int32
    # 500 per digit in all, shuffled before the 80/20 split: balanced only roughly
    np.testing.assert_array_equal(np.bincount(d.y_train) + np.bincount(d.y_test), np.full(10, 500))
    assert np.bincount(d.y_train).min() >= 380 and np.bincount(d.y_test).min() >= 80
    np.testing.assert_allclose(d.x_train.mean(), 0.0, atol=1e-12)
    np.testing.assert_allclose(d.x_train.std(), 1.0, rtol=1e-12)


def test_mnist1d_matches_the_package_and_is_deterministic(mnist1d, mnist1d_ref):
    d, ref = mnist1d, mnist1d_ref
    assert MNIST1D_SEED == 42
    np.testing.assert_array_equal(d.y_train, ref["y"])
    np.testing.assert_array_equal(d.y_test, ref["y_test"])
    mu, sd = ref["x"].mean(), ref["x"].std()  # our standardization, recomputed in numpy
    np.testing.assert_allclose(d.x_train[..., 0], (ref["x"] - mu) / sd, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(d.x_test[..., 0], (ref["x_test"] - mu) / sd, rtol=1e-12, atol=1e-12)
    # same arrays again, and the global numpy state the generator seeds is left as it was
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    again = load_mnist1d()
    np.testing.assert_array_equal(np.random.get_state()[1], before)
    for a, b in zip(d[:4], again[:4], strict=True):
        np.testing.assert_array_equal(a, b)


def test_mnist1d_subset_and_seed(mnist1d):
    s = load_mnist1d(subset=30, test_subset=5, dtype=np.float32)
    assert s.x_train.shape == (300, 40, 1) and s.x_train.dtype == np.float32
    np.testing.assert_array_equal(np.bincount(s.y_test), np.full(10, 5))
    np.testing.assert_array_equal(s.y_train, mnist1d.y_train[first_per_class(mnist1d.y_train, 30)])
    other = load_mnist1d(seed=7, subset=2, test_subset=1)
    assert other.x_train.shape == (20, 40, 1)
    with pytest.raises(ValueError, match="seed"):
        load_mnist1d(seed=-1)
