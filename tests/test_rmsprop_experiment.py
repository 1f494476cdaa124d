"""The ``rmsprop`` experiment (issue 7, item 3) end to end: ``eosflow run rmsprop --quick --out DIR``.

One quick run (module fixture) from a folder outside the repository; the checks recompute the
claims from the saved arrays, independently where possible:

* files: ``arrays.npz``, ``summary.json``, two non-blank PNGs listed in the summary;
* linear regression without BN: the saved ``λ1`` equals the top eigenvalue of the constant Hessian
  ``(2/n)[X 1]ᵀ[X 1]`` rebuilt here with NumPy from the same data; ``lr_t λ1`` settles at 2
  (median of the second half within 1%, every value within 10%);
* matrix completion without BN: ``lr_t λ1`` within 10% of 2 over the second half;
* both: period two — the sign of ``⟨w_t − w_{t−1}, v1⟩`` flips at >= 95% of the window's steps;
  the measured ``lr_t`` is exact (fit residual <= 1e-12);
* BN losses: the no-WD optimizers do not move after the fit (sharpness and test loss within 1%);
  with WD, matrix completion's sharpness falls after the fit (seed-0 observation, AdamW and
  momentum+WD) and the summary's numbers are those of the arrays.
"""

from __future__ import annotations

import jax
import matplotlib.image as mpimg
import numpy as np
import pytest
from _helpers import PNG_MAGIC, quick_run  # noqa: E402

from eosflow.losses import make_linear_regression_data

FIGURES = ["rmsprop_plain.png", "bn_optimizers.png"]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out, _, arrays, summary = quick_run(tmp_path_factory, "rmsprop", timeout=900)
    return out, arrays, summary


def test_outputs(quick):
    out, a, s = quick
    assert s["experiment"] == "rmsprop" and s["config"]["quick"] is True
    assert s["figures"] == FIGURES
    for name in FIGURES:
        p = out / name
        assert p.read_bytes()[:8] == PNG_MAGIC and p.stat().st_size > 10_000
        img = mpimg.imread(p)
        assert img.std() > 0.01  # not blank
    assert not (out / "arrays.partial.npz").exists()
    for k in ("lin_rmsprop", "mc_rmsprop", "lin_bn", "mc_bn"):
        assert k in s["key_numbers"]


def test_linear_regression_sharpness_is_the_constant_hessian(quick):
    _, a, s = quick
    c = s["config"]
    kd = jax.random.split(jax.random.PRNGKey(c["seed"]), 4)[0]
    data = make_linear_regression_data(kd, n=c["n"], d=c["d"], n_test=c["n_test"])
    X1 = np.hstack([np.asarray(data.X), np.ones((c["n"], 1))])
    lam_ref = np.linalg.eigvalsh(2.0 / c["n"] * X1.T @ X1)[-1]
    np.testing.assert_allclose(a["lin_sharpness"], lam_ref, rtol=1e-9)


@pytest.mark.parametrize("name", ["lin", "mc"])
def test_rmsprop_settles_at_two_with_period_two(quick, name):
    _, a, s = quick
    prod = a[f"{name}_lr_at_sharp"] * a[f"{name}_sharpness"]
    assert prod[0] < 1.9  # starts stable: the learning rate has to grow into EoS
    late = prod[len(prod) // 2 :]
    assert np.all(np.abs(late / 2 - 1) <= 0.1), late
    if name == "lin":
        assert abs(np.median(late) / 2 - 1) <= 0.01
    h = a[f"{name}_win_h"]
    assert np.mean(np.sign(h[1:]) * np.sign(h[:-1]) < 0) >= 0.95
    assert np.max(a[f"{name}_fit_residual"]) <= 1e-12
    kn = s["key_numbers"][f"{name}_rmsprop"]
    assert kn["eos_step"] is not None
    np.testing.assert_allclose(kn["sharpness_end"], a[f"{name}_sharpness"][-1], rtol=1e-12)


@pytest.mark.parametrize("prob", ["lin", "mc"])
def test_bn_optimizers(quick, prob):
    _, a, s = quick
    kn = s["key_numbers"][f"{prob}_bn"]
    for opt in ("adamw", "adam", "momentum_wd", "momentum"):
        p = f"{prob}_bn_{opt}_"
        lam, sstep, step = a[p + "sharpness"], a[p + "sharp_step"], a[p + "step"]
        assert np.isfinite(lam).all() and kn[opt]["nonfinite_step"] == -1
        assert kn[opt]["fit_step"] is not None
        j = np.flatnonzero(sstep >= kn[opt]["fit_step"])[0]
        np.testing.assert_allclose(kn[opt]["sharpness_fit_to_end"], lam[-1] / lam[j], rtol=1e-12)
        i = np.flatnonzero(step >= kn[opt]["fit_step"])[0]
        drop_test = a[p + "test"][-1] / a[p + "test"][i]
        if opt in ("adam", "momentum"):  # no WD: nothing moves once the loss is fit
            assert abs(lam[-1] / lam[j] - 1) < 0.01 and abs(drop_test - 1) < 0.01
        elif prob == "mc":  # seed-0 observation: with WD, sharpness falls after the fit
            # below its value at the fit (minimum 0.55x / 0.73x in runs with the autodiff and
            # the closed-form gradient of the loss, equal to 1e-16); AdamW ends there (0.30x /
            # 0.32x). Where momentum+WD *ends* depends on round-off (it spikes at the heavy-ball
            # limit: end/fit 0.72x with one gradient, 0.99x with the other), so it is not asserted.
            assert lam[j:].min() / lam[j] < 0.9
            if opt == "adamw":
                assert lam[-1] / lam[j] < 0.9
    # momentum+WD reaches the heavy-ball stability limit lr·λ1(∇²L(w)) = 2(1+β) (ratio ~1)
    assert 0.7 < kn["momentum_wd"]["heavy_ball_ratio_max"] < 1.5
    assert kn["momentum"]["heavy_ball_ratio_max"] < 0.1
