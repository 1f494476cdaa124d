"""Experiment ``phase-diagram`` (issue 6, item 3), end to end through the command line.

One quick run (``eosflow run phase-diagram --quick``) from a folder outside the repository; the
checks recompute everything from the saved arrays with independent NumPy code:

* the Section 4.1 prediction: after the fit (loss <= fit_tol) ``η̃`` grows by ``(1 − η_in)^{-2}``
  per step while ``λ1`` stays put, so EoS (``η̃λ1 = 2``) comes ``ln(2/(η̃_fit λ1_fit))/(2η_in)``
  steps after the fit. Measured (first record with ``η̃λ1 >= 2``) and predicted agree within 15%
  wherever EoS is reached (quick mode: 7 of 9 runs, worst 6.6%, limited by the 5-step records);
* the assumption behind it: ``λ1`` changes by < 0.1% between the fit and EoS entry;
* the final distance to (M), recomputed with ``numpy.linalg.pinv`` (eq. (4), Theorem 5.1);
* the files: arrays, summary, two non-blank PNGs, no leftovers (partial file, sweep chunks).
"""

from __future__ import annotations

import chex
import matplotlib.image as mpimg
import numpy as np
import pytest
from _helpers import PNG_MAGIC, quick_run  # noqa: E402

FIGURES = ["phase_diagram.png", "eos_prediction.png"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return quick_run(tmp_path_factory, "phase-diagram")


def test_outputs(run):
    out, r, a, s = run
    assert s["experiment"] == "phase-diagram" and s["config"]["quick"] is True
    assert s["dtype"] == "float64" and s["figures"] == FIGURES
    assert not (out / "arrays.partial.npz").exists() and not list(out.glob("sweep-*"))
    assert not list(out.glob(".*.tmp"))
    for name in FIGURES:
        p = out / name
        assert p.read_bytes()[:8] == PNG_MAGIC
        img = mpimg.imread(p)
        assert img.shape[0] > 200 and img.shape[1] > 200
        assert float(np.var(img[..., :3])) > 1e-3, f"{name} looks blank"
    assert "steps/s" in r.stderr and "Traceback" not in r.stderr
    B = len(s["config"]["lrs"]) * len(s["config"]["wds"])
    chex.assert_shape([a["loss"], a["w_final"]], [(B, a["step"].size), (B, s["config"]["d"])])
    np.testing.assert_array_equal(a["lr"], np.repeat(a["lrs"], a["wds"].size))
    assert (a["nonfinite_step"] == -1).all()


def _recompute(a, fit_tol):
    """Independent: per run (fit step, measured EoS step, predicted steps fit -> EoS, λ1 drift)."""
    rows = []
    for b in range(a["lr"].size):
        loss, eff, lam, st = a["loss"][b], a["eff_lr"][b], a["sharpness"][b], a["step"]
        fit = np.flatnonzero(loss <= fit_tol)
        if not fit.size:
            rows.append(None)
            continue
        i = fit[0]
        ratio = eff * lam
        hit = np.flatnonzero((np.arange(st.size) >= i) & (ratio >= 2.0))
        eta = a["lr"][b] * a["wd"][b]
        pred = np.log(2.0 / (eff[i] * lam[i])) / (2.0 * eta)
        j = hit[0] if hit.size else None
        drift = abs(lam[j - 1] / lam[i] - 1.0) if j is not None and j > i else None
        prev = st[j - 1] if j is not None and j > i else None
        rows.append((st[i], st[j] if j is not None else None, pred, drift, ratio[i], prev))
    return rows


def test_time_to_eos_matches_section_4_1_prediction(run):
    _, _, a, s = run
    c = s["config"]
    rows = _recompute(a, c["fit_tol"])
    compared = []
    for b, row in enumerate(rows):
        assert row is not None, f"run {b} never fit the data"
        t_fit, t_eos, pred, drift, ratio0, t_prev = row
        assert a["fit_step"][b] == t_fit
        assert a["eos_step"][b] == (t_eos if t_eos is not None else -1)
        if t_eos is None or ratio0 >= 2:
            continue
        rel = (t_eos - t_fit) / pred - 1.0
        compared.append(rel)
        assert abs(rel) <= 0.15, (a["lr"][b], a["wd"][b], t_fit, t_eos, pred)
        assert rel >= -1e-9  # records every `every` steps: the measurement can only overshoot
        chex.assert_trees_all_close(a["rel_err"][b], rel, rtol=0, atol=1e-12)
        assert drift is not None and drift < 1e-3, drift  # λ1 stays put until EoS
        # resolved error: distance of the predicted step to the record window (t_prev, t_eos]
        t_pred = t_fit + pred
        resolved = max(0.0, t_prev - t_pred, t_pred - t_eos) / pred
        chex.assert_trees_all_close(a["resolved_err"][b], resolved, rtol=0, atol=1e-12)
        assert resolved <= 0.15
    assert len(compared) >= 5, compared
    kn = s["key_numbers"]
    assert kn["compared"] == len(compared) and kn["prediction_within_tolerance"] is True
    chex.assert_trees_all_close(kn["max_abs_rel_err"], max(map(abs, compared)), rtol=0, atol=1e-12)
    print(f"phase-diagram: {len(compared)} runs, |rel err| max {max(map(abs, compared)):.3f}, "
          f"median {np.median(np.abs(compared)):.4f}")  # fmt: skip


def test_final_distance_to_min_norm_solution(run):
    _, _, a, _ = run
    X, y = a["X"], a["y"]
    mu_x, mu_y, sd_y = X.mean(0), y.mean(), y.std()
    Xc = X - mu_x
    w_m = np.linalg.pinv(Xc) @ (y - mu_y)
    b_m = mu_y - w_m @ mu_x
    for b, w in enumerate(a["w_final"]):
        w_t = sd_y * w / np.sqrt(w @ (Xc.T @ Xc / X.shape[0]) @ w)  # eq. (4), population Σ
        b_t = mu_y - w_t @ mu_x
        d = np.sqrt(np.sum((w_t - w_m) ** 2) + (b_t - b_m) ** 2) / np.sqrt(w_m @ w_m + b_m**2)
        chex.assert_trees_all_close(a["final_rel_dist"][b], d, rtol=0, atol=1e-8 * max(d, 1.0))
    # Runs that reached EoS early have moved towards (M); those that did not have not.
    early = (a["eos_step"] >= 0) & (a["eos_step"] < a["step"][-1] // 2)
    none = a["eos_step"] < 0
    assert early.any() and none.any()
    assert a["final_rel_dist"][early].max() < a["final_rel_dist"][none].min()
    assert a["final_sharpness"][early].max() < a["final_sharpness"][none].min()
