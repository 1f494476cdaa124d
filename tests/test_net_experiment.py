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


@pytest.mark.parametrize(
    "change, match",
    [
        ({"dataset": "cifar10", "data_dir": "/nonexistent/cifar"}, "not a directory"),
        ({"dataset": "mnist"}, "dataset"),
        ({"arch": "resnet"}, "arch"),
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
