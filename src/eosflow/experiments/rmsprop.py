"""Quasi-RMSprop beyond GD+WD: scalar RMSprop on plain losses; Adam(W) and SGD+momentum with BN.

The paper (Section 4.2.3; Appendix B, unavailable) says its Edge-of-Stability mechanism is not
specific to GD+WD: an effective learning rate that grows while gradients are small and shrinks when
they are large ("Quasi-RMSprop") drives the iterate to ``lr·λ1 ≈ 2``, where it oscillates with
period two; for GD+WD on a scale-invariant loss the oscillation then drifts toward flatter
minimizers (Theorem 4.7). This experiment tests the first half of that statement and asks, without
assuming the answer, whether the second half (sharpness falls after the fit) carries over.

**Part A — scalar RMSprop on losses WITHOUT normalization** (:func:`eosflow.optim.simulate_rmsprop`):
plain GD ``w ← w − lr_t ∇L(w)`` with ``v_{t+1} = βv_t + (1−β)||∇L(w_t)||²``,
``lr_t = η/√(v_{t+1}+ε)``:

* linear regression ``L(w, b) = mean_i (wᵀx_i + b − y_i)²`` (``n = 40``, ``d = 100``, the data of
  :func:`eosflow.losses.make_linear_regression_data`). The loss is quadratic, so its Hessian —
  and ``λ1`` — is constant: sharpness *cannot* change; the point is ``lr_t λ1 → 2`` and the
  oscillation. ``λ1`` and ``v1`` from the dense Hessian.
* matrix completion ``L(U, V) = mean_Ω ([UVᵀ]_Ω − M_Ω)²`` (Figure 1's data: rank-2 ``M``,
  50×50, 800 entries, ``U, V ∈ R^{50×50}``, ``w0 = 0.1·N(0, I)``); ``λ1(∇²L(w_t))`` by
  warm-started Lanczos every ``sharpness_every`` steps.

Recorded: ``lr_t`` (the measured plain LR, exact for this optimizer), ``L(w_t)``, ``λ1``, test MSE
(and the effective rank of ``UVᵀ``). EoS entry = first sharpness record with ``lr_t λ1 >=
eos_threshold`` (1.8). Period two: over ``window`` consecutive steps at the end (a continuation
run from the final state), the share of steps where the sign of ``⟨w_t − w_{t−1}, v1⟩`` flips
(``v1`` = top Hessian eigenvector at the last sharpness record), and the share with
``⟨Δw_t, Δw_{t−1}⟩ < 0``.

**Part B — the BN losses with optax optimizers** (:func:`eosflow.optim.simulate_optax`, sphere
geometry): :func:`eosflow.losses.linear_regression_bn` (same data) and
:func:`eosflow.losses.matrix_completion_bn` (same data and ``w0``), each with AdamW (decoupled
WD), Adam (the same object with ``weight_decay = 0`` in its injected hyperparameters), SGD with
heavy-ball momentum and coupled WD (``chain(add_decayed_weights(wd), sgd(lr, momentum))``) and
the same without WD. Recorded: spherical sharpness ``λ1(∇²L(θ_t))``, the measured PGD effective
LR ``η̃_t`` and its fit residual (momentum and Adam steps are not PGD steps: the residual says how
far), ``||w_t||``, test loss (and effective rank). "Fit" = first record with ``L <= fit_tol``.

What we found (seed 0, quick mode, 3000 steps; all numbers in ``summary.json``):

* Scalar RMSprop reaches the EoS on both plain losses and stays there with a clean period-two
  oscillation (sign of ``⟨Δw_t, v1⟩`` flips at 100% of the window's steps, median
  ``|cos(Δw_t, v1)|`` 0.975–1.000). Linear regression: ``lr_t λ1`` overshoots to 2.33 at entry
  (step 600), then spirals in: within 1.5% of 2 from step 800, within 0.02% from 2000 on; the
  oscillation along ``v1`` has amplitude ``η/2`` (the fixed point ``v = (ηλ1/2)²``), so the
  training loss stays at 2.5e-3 instead of reaching 0, and ``λ1 = 201.47`` is constant (quadratic).
  Matrix completion: ``lr_t λ1`` settles at 2.13 (``λ1`` measured at the oscillating iterate, not
  at a minimizer); sharpness falls only 3% after EoS (0.0793 → 0.0769) while the test MSE *rises*
  (0.253 → 0.371) and the effective rank of ``UVᵀ`` rises (13.8 → 15.5). So the EoS regime
  carries over, the GD+WD sharpness reduction does not in any useful sense: with ``lr_t`` pinned
  at ``2/λ1`` nothing keeps pushing (unlike WD's ever-growing ``η̃``), and on a plain factorization
  "flatter" means a smaller top singular value, not a lower rank. (An exploratory 10000-step run
  with the same hyperparameters on another data draw: sharpness −17%, test MSE 0.26 → 0.82,
  effective rank 16 → 24.)
* BN losses: the no-WD optimizers (Adam, momentum) fit and then freeze (sharpness and test loss
  change < 0.1% after the fit). With WD the loss leaves round-off again, spikes repeatedly and the
  sharpness falls: matrix completion, momentum+WD 26.0 → 25.8 at the end but minimum 18.9
  (test MSE 0.680 → 0.018, effective rank 25.3 → 3.4); AdamW 73.1 → 23.2, test 1.48 → 0.62,
  rank 33 → 23. Momentum+WD's path after the fit is chaotic: with the autodiff gradient of the
  same loss (equal to 1e-16) it went 26.0 → 18.7 (minimum 14.4, test 0.050, rank 4.5).
  Linear regression: AdamW 30.7 → 14.2 (test 3.15 → 1.22), momentum+WD 8.15 → 7.56
  (test 0.79 → 0.64). Momentum+WD climbs toward the heavy-ball stability limit
  ``lr λ1(∇²L(w)) = 2(1+β)`` (ratio max 1.13 on linear regression, 0.92 on matrix completion;
  1.14 in the autodiff-gradient run) before each spike. Their steps are far from PGD
  steps (median fit residual 0.59–0.65), so their measured ``η̃`` is only indicative.

Hyperparameters are ours (the paper gives none for these runs). Everything is float64.

The runs themselves are in :mod:`eosflow.experiments.rmsprop_runs`, the figures in
:mod:`eosflow.experiments.rmsprop_plots`.
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from eosflow.experiments import rmsprop_plots
from eosflow.experiments._common import phase
from eosflow.experiments.rmsprop_runs import OPTS, run_bn, run_plain
from eosflow.losses import (
    linear_regression_bn,
    make_linear_regression_data,
    make_matrix_completion_data,
    matrix_completion_bn,
)
from eosflow.losses.linear_regression import linear_regression_bn_test_loss
from eosflow.losses.matrix_completion import (
    effective_rank,
    matrix_completion_test_mse,
    singular_values,
    split_factors,
)
from eosflow.optim import plain_top_eigs
from eosflow.runio import Progress, RunRecorder
from eosflow.sharpness import dense_top_eigs
from eosflow.sharpness_path import sharpness_along

NAME = "rmsprop"
DESCRIPTION = "scalar RMSprop at EoS on plain losses; Adam(W) / SGD+momentum on the BN losses"
PAPER = "Section 4.2.3 (Quasi-RMSprop, Appendix B)"

PLAIN = ("lin", "mc")
BN = ("lin_bn", "mc_bn")


def default_config(quick: bool) -> dict:
    """Quick: 3000 steps per run; full: 20000."""
    return {
        "quick": bool(quick),
        "seed": 0,
        "steps": 3000 if quick else 20000,
        "n": 40,
        "d": 100,
        "n_test": 500,
        "mc_init_scale": 0.1,
        "lin_eta": 0.01,
        "lin_beta": 0.99,
        "mc_eta": 0.3,
        "mc_beta": 0.99,
        "eps": 1e-12,
        "adamw_lr": 1e-3,
        "adamw_wd": 1.0,
        "lin_momentum_lr": 0.01,
        "lin_momentum_wd": 0.025,
        "mc_momentum_lr": 0.05,
        "mc_momentum_wd": 0.005,
        "momentum": 0.9,
        "record_every": 10,
        "sharpness_every": 200 if quick else 500,
        "window": 40,
        "fit_tol": 1e-6,
        "eos_threshold": 1.8,
    }


def validate_config(config: dict) -> None:
    """Raise ``ValueError`` on settings the run cannot use."""
    c = config
    if c["record_every"] < 1 or c["sharpness_every"] < 1 or c["window"] < 4:
        raise ValueError("record_every, sharpness_every must be >= 1 and window >= 4")
    if c["sharpness_every"] % c["record_every"]:
        raise ValueError(
            f"sharpness_every ({c['sharpness_every']}) must be a multiple of record_every "
            f"({c['record_every']})"
        )
    if c["steps"] < 4 * c["sharpness_every"]:
        raise ValueError(
            f"steps ({c['steps']}) must be >= 4 * sharpness_every ({4 * c['sharpness_every']})"
        )
    for k in ("lin_beta", "mc_beta", "momentum"):
        if not 0 <= c[k] < 1:
            raise ValueError(f"{k} must be in [0, 1)")
    if (
        min(c["lin_eta"], c["mc_eta"], c["adamw_lr"], c["lin_momentum_lr"], c["mc_momentum_lr"])
        <= 0
    ):
        raise ValueError("learning rates must be > 0")
    if c["eps"] < 0 or c["adamw_wd"] < 0 or c["lin_momentum_wd"] < 0 or c["mc_momentum_wd"] < 0:
        raise ValueError("eps and weight decays must be >= 0")
    if c["d"] <= c["n"]:
        raise ValueError("need d > n (over-parameterized linear regression)")


# ----------------------------------------------------------------------------- problems


def linreg_plain_loss(X, y):
    """``L(w, b) = mean_i (wᵀx_i + b − y_i)²`` on the flat vector ``(w, b)`` (no BN)."""
    d = X.shape[1]
    return lambda p: jnp.mean(jnp.square(X @ p[:d] + p[d] - y))


def mc_plain_loss(data):
    """``L(U, V) = mean_Ω ([UVᵀ]_Ω − M_Ω)²`` on flat ``(U, V)`` (no BN; gathered form)."""
    m, n = data.M.shape
    target = data.M[data.rows, data.cols]

    def loss(w):
        U, V = split_factors(w, m, n, data.k)
        return jnp.mean(jnp.square(jnp.sum(U[data.rows] * V[data.cols], axis=-1) - target))

    return loss


def _mc_plain_test(data, w):
    m, n = data.M.shape
    U, V = split_factors(w, m, n, data.k)
    return jnp.mean(jnp.square(U @ V.T - data.M))


def _mc_plain_rank(data, w):
    m, n = data.M.shape
    U, V = split_factors(w, m, n, data.k)
    return effective_rank(jnp.linalg.svd(U @ V.T, compute_uv=False))


def _dense_top(loss, spherical: bool):
    """Jitted ``ws (S, D) -> (λ1 (S,), v1 (S, D))`` of the dense Hessian at ``w`` (or ``θ``):
    :func:`eosflow.dense_top_eigs` (``jax.hessian`` + ``eigh``) on each row."""

    def one(w):
        x = w / jnp.linalg.norm(w) if spherical else w
        lam, vec = dense_top_eigs(loss, x, 1)
        return lam[0], vec[0]

    return jax.jit(jax.vmap(one))


def _lanczos_top(loss, spherical: bool):
    """``ws (S, D) -> (λ1, v1)`` by Lanczos (Krylov dimension 20, relative residual 1e-10)
    warm-started from the previous row's eigenvector, all rows in one compiled call:
    :func:`eosflow.sharpness_along` at ``θ = w/||w||`` (spherical) or
    :func:`eosflow.optim.plain_top_eigs` at ``w`` (plain)."""
    if spherical:

        def series(ws):
            r = sharpness_along(loss, np.asarray(ws), lanczos_iter=20, vectors=True)
            return np.asarray(r.sharpness), np.asarray(r.eigenvectors[:, 0])

        return series
    top = jax.jit(functools.partial(plain_top_eigs, loss, lanczos_iter=20))

    def series(ws):
        lam, vec = top(jnp.asarray(ws))
        return np.asarray(lam), np.asarray(vec)

    return series


def _batched(fn):
    """``fn`` on each row of ``ws (T, D)``, one compiled call (``jit(vmap(fn))``)."""
    return jax.jit(jax.vmap(fn))


# ----------------------------------------------------------------------------- run / plot


def run(config: dict, out: Path, progress: bool = True) -> dict:
    """Parts A and B; save arrays and summary; return the key numbers per run."""
    c = config
    validate_config(c)
    phase(
        NAME,
        f"data, then {2 + 2 * len(OPTS)} runs: scalar RMSprop on linear regression and "
        f"matrix completion (no BN), then {', '.join(OPTS)} on their BN versions",
        progress,
    )
    rec = RunRecorder(out, NAME, c)
    lin, mc, w_lin, w_mc = _problems(c)
    bar = Progress(2 + 2 * len(OPTS), NAME, enabled=progress, unit="runs", min_interval=2.0)
    done = [0]

    def tick():
        done[0] += 1
        bar.update(done[0])

    key: dict = {}
    key.update(_part_a(c, rec, lin, mc, w_lin, w_mc, tick))
    key.update(_part_b(c, rec, lin, mc, w_lin, w_mc, tick))
    bar.close()
    rec.finish(
        key,
        dtype=w_mc.dtype,
        description=DESCRIPTION,
        paper=PAPER,
        notes=[
            "Part A (no BN): scalar RMSprop v' = beta v + (1-beta)||g||^2, lr = eta/sqrt(v'+eps); "
            "lr_t is the measured plain LR (exact here); sharpness = lambda1 of the plain Hessian "
            "at w_t (dense for linear regression, Lanczos for matrix completion)",
            "linear regression without BN is quadratic: its Hessian, hence lambda1, is constant",
            "eos_step = first sharpness record with lr_t*lambda1 >= eos_threshold",
            "window_*: continuation of window steps from the final state; sign_flip_share = "
            "share of t with sign<dw_t, v1> != sign<dw_{t-1}, v1>",
            "Part B (BN): sharpness = spherical lambda1(Hess L(theta_t)); eff_lr = measured PGD "
            "effective LR, fit_residual its relative residual (0 for a PGD step)",
            "adam / momentum are the adamw / momentum_wd optimizer objects with weight_decay = 0",
        ],
    )
    return key


def _problems(c):
    """The data of both parts: ``(lin, mc, w_lin, w_mc)`` (linear regression, matrix completion)."""
    kd, kw, km, kmw = jax.random.split(jax.random.PRNGKey(int(c["seed"])), 4)
    lin = make_linear_regression_data(kd, n=c["n"], d=c["d"], n_test=c["n_test"])
    d = lin.X.shape[1]
    mc = make_matrix_completion_data(km)
    D_mc = (mc.M.shape[0] + mc.M.shape[1]) * mc.k
    w_lin = jax.random.normal(kw, (d,)) / np.sqrt(d)
    w_mc = c["mc_init_scale"] * jax.random.normal(kmw, (D_mc,))
    return lin, mc, w_lin, w_mc


def _part_a(c, rec, lin, mc, w_lin, w_mc, tick) -> dict:
    """Part A (Section 4.2.3, Quasi-RMSprop): scalar RMSprop on the losses without normalization."""
    d = lin.X.shape[1]
    key: dict = {}
    lin_loss = linreg_plain_loss(lin.X, lin.y)
    key["lin_rmsprop"] = run_plain(
        "lin", lin_loss, jnp.concatenate([w_lin, jnp.zeros(1)]), c["lin_eta"], c["lin_beta"], c,
        _dense_top(lin_loss, False),
        _batched(lambda p: jnp.mean(jnp.square(lin.X_test @ p[:d] + p[d] - lin.y_test))), None,
        rec,
    )  # fmt: skip
    tick()
    mc_loss = mc_plain_loss(mc)
    key["mc_rmsprop"] = run_plain(
        "mc", mc_loss, w_mc, c["mc_eta"], c["mc_beta"], c, _lanczos_top(mc_loss, False),
        _batched(lambda w: _mc_plain_test(mc, w)), _batched(lambda w: _mc_plain_rank(mc, w)), rec,
    )  # fmt: skip
    tick()
    return key


def _part_b(c, rec, lin, mc, w_lin, w_mc, tick) -> dict:
    """Part B (Appendix B's comparison): Adam(W) and SGD+momentum on the BN losses."""
    key: dict = {}
    lin_bn = linear_regression_bn(lin.X, lin.y)
    key["lin_bn"] = run_bn(
        "lin", lin_bn, w_lin, c, _dense_top(lin_bn, True),
        _batched(lambda w: linear_regression_bn_test_loss(lin.X, lin.y, w, lin.X_test, lin.y_test)),
        None, rec, tick,
    )  # fmt: skip
    mc_bn = matrix_completion_bn(mc)
    key["mc_bn"] = run_bn(
        "mc", mc_bn, w_mc, c, _lanczos_top(mc_bn, True),
        _batched(lambda w: matrix_completion_test_mse(mc, w)),
        _batched(lambda w: effective_rank(singular_values(mc, w))), rec, tick,
    )  # fmt: skip
    return key


def plot(out: Path) -> list[Path]:
    """``rmsprop_plain.png`` (part A) and ``bn_optimizers.png`` (part B)
    (:func:`eosflow.experiments.rmsprop_plots.plot`)."""
    return rmsprop_plots.plot(out)
