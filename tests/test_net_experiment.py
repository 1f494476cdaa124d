"""The ``net`` experiment (Figure 2) end to end through the command line, on a small config.

One run of ``eosflow run net`` with 10 digits per class and 600 steps (all three runs: BN+WD,
no WD, no BN), checked for its files and figure, and its key numbers recomputed from the saved
arrays. The quick-mode claims themselves (sharpness falls >= 2x after the fit with WD, and not
without) are reported in ``summary.json`` and ``docs/results.md``; they need thousands of steps.
Also: settings the run cannot use are refused (exit status 2 before anything is written).
"""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import PNG_MAGIC, quick_run, run_cli  # noqa: E402

SMALL = [
    "--steps",
    "600",
    "--set",
    "subset=10",
    "--set",
    "test_subset=10",
    "--set",
    "widths=[16, 16]",
    "--set",
    "no_bn_hess_every=300",
]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out, _, arrays, summary = quick_run(tmp_path_factory, "net", "--no-progress", *SMALL)
    return out, arrays, summary


def test_net_outputs(small_run):
    out, a, summary = small_run
    assert summary["experiment"] == "net" and summary["paper"] == "Figure 2"
    assert summary["figures"] == ["figure2.png"]
    png = (out / "figure2.png").read_bytes()
    assert png[:8] == PNG_MAGIC and len(png) > 20_000
    assert summary["config"]["steps"] == 600 and summary["config"]["widths"] == [16, 16]
    for r in ("bn", "no_wd", "no_bn"):
        assert a[f"{r}_step"].shape == (30,)  # 600 steps / record_every 20
        assert np.all(np.isfinite(a[f"{r}_loss"]))
    # spherical sharpness every 100 steps for the BN runs, none for no-BN (plain λ1 instead)
    assert np.isfinite(a["bn_sharpness"]).sum() == 6
    assert not np.isfinite(a["no_bn_sharpness"]).any()
    assert np.isfinite(a["no_bn_hess_top"]).sum() == 2


def test_net_key_numbers_match_arrays(small_run):
    _, a, summary = small_run
    k = summary["key_numbers"]
    assert k["n_train"] == 100 and len(a["y_test"]) == 100
    for r in ("bn", "no_wd", "no_bn"):
        acc = a[f"{r}_train_acc"]
        fit = np.flatnonzero(acc >= 1.0)
        assert k[r]["fit_step"] == (int(a[f"{r}_step"][fit[0]]) if fit.size else None)
        assert k[r]["test_acc_end"] == pytest.approx(float(a[f"{r}_test_acc"][-1]))
    # WD shrinks ||w|| (eq. (1)); without WD the norm can only grow (∇L ⊥ w)
    assert a["bn_norm"][-1] < a["bn_norm"][0]
    assert np.all(np.diff(a["no_wd_norm"]) >= -1e-12)
    assert a["no_wd_eff_lr"][-1] <= a["no_wd_eff_lr"][0]
    # the BN runs reach 100% train accuracy on this small set
    assert k["bn"]["fit_step"] is not None and k["no_wd"]["fit_step"] is not None
    assert k["bn"]["train_acc_end"] == 1.0


def test_net_rejects_bad_settings_on_the_command_line(tmp_path):
    out = tmp_path / "out"
    r = run_cli(["run", "net", "--quick", "--out", out, "--set", "dataset=cifar10"], cwd=tmp_path)
    assert r.returncode == 2 and "data_dir" in r.stderr
    assert not out.exists() or not any(out.iterdir())


MNIST1D_SMALL = [
    "--steps",
    "400",
    "--set",
    "dataset=mnist1d",
    "--set",
    "arch=cnn1d",
    "--set",
    "cnn_channels=[8, 8]",
    "--set",
    "subset=8",
    "--set",
    "test_subset=10",
    "--set",
    "no_bn_hess_every=200",
]


@pytest.mark.slow  # ~55 s; the net experiment's end-to-end run is test_net_outputs
def test_net_mnist1d_cnn1d_end_to_end(tmp_path_factory):
    """MNIST-1D with the 1-D CNN through the command line (80 train / 100 test sequences, 400
    steps): files, figure, and key numbers recomputed from the saved arrays."""
    from eosflow.experiments.net_plots import zoom_range

    out, _, a, summary = quick_run(tmp_path_factory, "net", "--no-progress", *MNIST1D_SMALL)
    c, k = summary["config"], summary["key_numbers"]
    assert c["dataset"] == "mnist1d" and c["arch"] == "cnn1d" and (out / "figure2.png").exists()
    assert k["n_train"] == 80 and len(a["y_test"]) == 100
    assert np.array_equal(np.bincount(a["y_train"]), np.full(10, 8))
    # D of CNN1D((8, 8), k5, s2) on length 40 (40 → 20 → 10), no biases: 5·8 + 5·8·8 + 80·10
    assert k["D"] == 40 + 320 + 800
    for r in ("bn", "no_wd", "no_bn"):
        assert a[f"{r}_step"].shape == (20,) and np.all(np.isfinite(a[f"{r}_loss"]))
        acc = a[f"{r}_train_acc"]
        fit = np.flatnonzero(acc >= 1.0)
        assert k[r]["fit_step"] == (int(a[f"{r}_step"][fit[0]]) if fit.size else None)
        assert k[r]["test_acc_end"] == pytest.approx(float(a[f"{r}_test_acc"][-1]))
    assert a["bn_norm"][-1] < a["bn_norm"][0]  # WD shrinks ||w|| (eq. (1))
    assert np.all(np.diff(a["no_wd_norm"]) >= -1e-12)  # without WD it cannot shrink (∇L ⊥ w)
    assert np.isfinite(a["bn_sharpness"]).sum() == 4 and np.isfinite(a["no_bn_hess_top"]).sum() == 2
    # the zoomed accuracy axis covers every test accuracy from the start step on, and no more
    st, acc = a["bn_step"], 100 * a["bn_test_acc"]
    lo, hi = zoom_range([(st, acc)], 200)
    assert lo < acc[st >= 200].min() and hi > acc[st >= 200].max()
    assert hi - lo <= max(1.16 * np.ptp(acc[st >= 200]), np.ptp(acc[st >= 200]) + 1.0) + 1e-9


@pytest.mark.parametrize(
    "change, match",
    [
        ({"dataset": "cifar10", "data_dir": "/nonexistent/cifar"}, "not a directory"),
        ({"dataset": "mnist"}, "dataset"),
        ({"arch": "resnet"}, "arch"),
        ({"dataset": "mnist1d", "arch": "vgg11"}, "vgg11 needs images"),
        ({"arch": "cnn1d"}, "cnn1d needs 1-D sequences"),
        ({"dataset": "mnist1d", "arch": "cnn1d", "cnn_channels": [8, 0]}, "cnn_channels"),
        ({"cnn_channels": []}, "cnn_channels"),
        ({"cnn_stride": 0}, "cnn_stride"),
        ({"widths": [16, 0]}, "widths"),
        ({"runs": ["bn", "sgd"]}, "runs"),
        ({"runs": []}, "runs"),
        ({"subset": 0}, "subset"),
        ({"dtype": "float16"}, "dtype"),
        ({"sharpness_every": 30}, "multiples"),
    ],
)
def test_net_validate_config(change, match):
    from eosflow.experiments import net

    net.validate_config(net.default_config(True))
    with pytest.raises(ValueError, match=match):
        net.validate_config({**net.default_config(True), **change})
