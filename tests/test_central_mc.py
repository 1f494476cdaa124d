"""Issue 14, item 6 on matrix completion with BN: the central flow (k = 3) against GD+WD from a
random initialization at three values of ``η_in``, where several eigenvalues reach the edge.

The issue asks to measure the one-eigenvalue bounds here and assert what holds. Measured
(14×14, rank 2, 100 entries, lr 0.5, 800 steps; ``central_vs_gd``'s window): median loss ratio
0.986–0.990, ``tr Σ / mean ‖x_t‖²`` ≈ 0.97–0.98, two directions active, the flow closer to GD's
two-step average than to the iterate (5.8e-2 vs 6.5–6.9e-2). ``η̃`` is 2.4–2.7% low, outside the
issue's 2% (docs/results.md discusses why: GD's ``η̃λ1`` at the iterate sits at ~2.09, and the
landing offset on Γ is not forgotten in 800 steps); asserted here at 5%, which holds, so that a
regression shows. ~4 min on 2 cores: slow.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from _helpers import central_vs_gd

import eosflow
from eosflow.losses import make_matrix_completion_data, matrix_completion_bn

pytestmark = pytest.mark.slow

M, LR, STEPS = 14, 0.5, 800
ETA_INS = (2e-3, 2.5e-3, 3e-3)


@pytest.fixture(scope="module")
def problem():
    data = make_matrix_completion_data(jax.random.PRNGKey(0), M, M, 2, 100, k=M)
    loss = matrix_completion_bn(data)
    w0 = (2.0 / M) * jax.random.normal(jax.random.PRNGKey(1), (2 * M * M,))
    return loss, w0


@pytest.fixture(scope="module", params=ETA_INS)
def measured(request, problem):
    loss, w0 = problem
    wd = request.param / LR
    gd = eosflow.simulate(loss, w0, LR, wd, steps=STEPS, sharpness_every=1)
    cf = eosflow.central_flow(loss, w0, LR, wd, STEPS, k=3)
    r = central_vs_gd(loss, gd, cf, tail=150)
    r["active_max"] = int(np.max(cf.active))
    return r


def test_matrix_completion_against_gd(measured):
    r = measured
    assert 0.9 <= r["loss_ratio_median"] <= 1.1, r
    # Several directions at the edge: Σ's trace against GD's whole offset from Γ (not h_t² alone).
    assert r["active_max"] >= 2, r
    assert abs(r["trace_over_x2"] - 1.0) <= 0.10, r
    assert abs(r["eff_lr_ratio"] - 1.0) <= 0.05, r  # the 2% does NOT hold here (2.4-2.7%)
    assert r["dist_avg"] < r["dist_iterate"], r
    assert r["e_gd"] > r["e_cf"], r  # GD's oscillation grows from round-off: it enters later
