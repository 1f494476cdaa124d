"""Figure 1: matrix completion with BatchNorm, GD+WD, and the no-WD / no-BN ablations.

Setting (paper, Figure 1): rank-2 ``M ∈ R^{50×50}``, ``|Ω| = 800`` observed entries, factors
``U, V ∈ R^{50×50}``, loss ``L(U,V) = mean_Ω (BN([UVᵀ]_Ω) − M_Ω)²`` (:func:`eosflow.losses.
matrix_completion_bn`), trained by GD+WD, eq. (1). The paper reports that after the training set
is fit the spherical sharpness (Definition 1.1) drops, ``UVᵀ`` becomes effectively rank 2 and the
test MSE over all entries falls from 1.12 to 0.013. Its ``lr``, ``wd`` and initialization are not
in the main text (Appendix P.1 is unavailable); ours are in :func:`default_config`.

Three runs from the same ``w0`` (``init_scale · N(0, I)``, so the initial effective LR
``η̃_0 = lr/((1−lr·wd)||w0||²)`` is small and the first phase is stable):

* ``bn``: the BN loss with WD — the paper's run.
* ``no_wd``: the BN loss with ``wd = 0``. ``||w||`` cannot shrink, ``η̃`` stays put, GD stays in
  the stable regime and stops moving once the loss is fit (the paper's Section 6 ablation).
* ``no_bn``: the same factorization without normalization, ``mean_Ω ([UVᵀ]_Ω − M_Ω)²``, WD on.
  It is not scale-invariant, so spherical sharpness is undefined; we record the plain top Hessian
  eigenvalue ``λ1(∇²L(w_t))`` instead (Lanczos on HVPs, after the run, every
  ``no_bn_hess_every`` steps) and plot it on the same axes, labelled as such. Note that WD on a
  plain factorization is the nuclear-norm regularizer ``(λ̂/2)(||U||² + ||V||²)``, which has a
  low-rank bias of its own.

Recorded every ``record_every`` steps: train loss, ``||w||``, ``η̃``, spherical sharpness (every
``sharpness_every`` steps, BN runs), and, computed after each run from the recorded ``w`` with
``vmap``: test MSE over all ``m·n`` entries (:func:`eosflow.losses.matrix_completion_test_mse`;
plain MSE of ``UVᵀ`` for ``no_bn``), singular values of ``UVᵀ`` and their entropy effective rank.

"Training set fit" = the first recorded step with train loss ``<= fit_tol`` (default 1e-6). At the
Edge of Stability the train loss oscillates around 1e-3..1e-2 again; that is the EoS, not a
failure to fit.

Seeds: the data come from ``PRNGKey(seed)``, ``w0`` from ``PRNGKey(seed + 1)``. The size of the
effect depends on the draw: at the default seed 0 the test MSE falls ~90x and the effective rank
ends below 3; over seeds 0-5 the drop is 6.7-95x and the final rank 2.7-7.5 in quick mode
(``experiments/README.md`` has the table).
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from eosflow.chunks import run_chunked
from eosflow.eos import eos_onset
from eosflow.experiments._common import (
    COLORS,
    LABELS,
    RUNS,
    as_float,
    first_index,
    load_arrays,
    load_summary,
    new_figure,
    phase,
    save_figure,
)
from eosflow.losses import (
    effective_rank,
    make_matrix_completion_data,
    matrix_completion_bn,
    matrix_completion_test_mse,
    singular_values,
    split_factors,
)
from eosflow.runio import RunRecorder
from eosflow.sharpness import hessian_top_eigs
from eosflow.trajectory import PER_RECORD

NAME = "matrix-completion-bn"
DESCRIPTION = "matrix completion with BN: GD+WD lowers sharpness, rank and test MSE after fitting"
PAPER = "Figure 1"

_FIELDS = PER_RECORD


def default_config(quick: bool) -> dict:
    """Quick: 5000 steps at ``lr·wd = 2.5e-3`` (about 40 s of CPU time on 2 cores, most of it
    compilation). Full: 10000 steps at ``lr·wd = 1e-3`` (closer to the small-``η_in`` regime of the
    theory)."""
    return {
        "quick": bool(quick),
        "seed": 0,
        "m": 50,
        "n": 50,
        "rank": 2,
        "num_observed": 800,
        "k": 50,
        "init_scale": 0.1,
        "lr": 0.5,
        "wd": 0.005 if quick else 0.002,
        "steps": 5000 if quick else 10000,
        "record_every": 50,
        "sharpness_every": 100,
        "no_bn_hess_every": 500,
        "fit_tol": 1e-6,
    }


def validate_config(config: dict) -> None:
    """Raise ``ValueError`` on settings the run cannot use."""
    c = config
    if not (1 <= c["rank"] <= min(c["m"], c["n"])):
        raise ValueError(f"rank must be in [1, min(m, n)], got {c['rank']}")
    if not (0 < c["num_observed"] <= c["m"] * c["n"]):
        raise ValueError(f"num_observed must be in (0, m*n], got {c['num_observed']}")
    if min(c["k"], c["record_every"], c["sharpness_every"], c["no_bn_hess_every"]) < 1:
        raise ValueError("k, record_every, sharpness_every and no_bn_hess_every must be >= 1")
    if c["sharpness_every"] % c["record_every"] or c["no_bn_hess_every"] % c["record_every"]:
        raise ValueError(
            f"sharpness_every ({c['sharpness_every']}) and no_bn_hess_every "
            f"({c['no_bn_hess_every']}) must be multiples of record_every ({c['record_every']})"
        )
    if c["steps"] < c["record_every"]:
        raise ValueError(f"steps ({c['steps']}) must be >= record_every ({c['record_every']})")
    if not c["init_scale"] > 0 or not c["fit_tol"] > 0:
        raise ValueError("init_scale and fit_tol must be > 0")


def plain_loss(data):
    """The no-BN ablation: ``mean_Ω ([UVᵀ]_Ω − M_Ω)²`` (dense-mask form, not scale-invariant)."""
    m, n = data.M.shape
    mask, count = data.mask, jnp.sum(data.mask)

    def loss(w):
        U, V = split_factors(w, m, n, data.k)
        return jnp.sum(jnp.square((U @ V.T - data.M) * mask)) / count

    return loss


def plain_test_mse(data, w):
    """Test MSE of the no-BN model: ``mean over all entries of (UVᵀ − M)²``."""
    m, n = data.M.shape
    U, V = split_factors(w, m, n, data.k)
    return jnp.mean(jnp.square(U @ V.T - data.M))


def _summarize(step, loss, test, sharp, erank, fit_tol) -> dict:
    """Key numbers of one run: at the fit step, and at the last record."""
    i_fit = first_index(loss <= fit_tol)
    ok = np.flatnonzero(np.isfinite(sharp))
    s_fit = None
    if i_fit is not None and ok.size:
        after = ok[ok >= i_fit]
        s_fit = sharp[after[0]] if after.size else None
    return {
        "fit_step": None if i_fit is None else int(step[i_fit]),
        "train_loss_end": as_float(loss[-1]),
        "test_mse_init": as_float(test[0]),
        "test_mse_at_fit": None if i_fit is None else as_float(test[i_fit]),
        "test_mse_end": as_float(test[-1]),
        "test_mse_drop": None if i_fit is None else as_float(test[i_fit] / test[-1]),
        "sharpness_init": as_float(sharp[ok[0]]) if ok.size else None,
        "sharpness_at_fit": as_float(s_fit),
        "sharpness_end": as_float(sharp[ok[-1]]) if ok.size else None,
        "eff_rank_at_fit": None if i_fit is None else as_float(erank[i_fit]),
        "eff_rank_end": as_float(erank[-1]),
        "last_step": int(step[-1]),
    }


def run(config: dict, out: Path, progress: bool = True) -> dict:
    """Run the three trainings, save ``arrays.npz`` and ``summary.json`` in ``out``.

    Arrays (``R`` in ``bn, no_wd, no_bn``): ``R_step, R_w, R_norm, R_eff_lr, R_loss,
    R_grad_norm, R_sharpness`` (per record; for ``no_bn`` the sharpness field is NaN and
    ``no_bn_hess_top`` holds ``λ1(∇²L(w_t))``), ``R_test_mse``, ``R_sv`` (records × min(m, n)),
    ``R_eff_rank``, ``R_w_final``; and the data ``M, rows, cols, w0``.

    Returns:
      the key numbers: per run, ``fit_step``, test MSE at init/fit/end and its drop, sharpness
      at init/fit/end, effective rank at fit/end, final train loss; and the EoS entry step.
    """
    c = config
    validate_config(c)
    phase(
        NAME,
        f"data: rank-{c['rank']} {c['m']}x{c['n']} matrix, {c['num_observed']} entries observed",
        progress,
    )
    seed = int(c["seed"])
    kd, kw = jax.random.PRNGKey(seed), jax.random.PRNGKey(seed + 1)
    data = make_matrix_completion_data(kd, c["m"], c["n"], c["rank"], c["num_observed"], k=c["k"])
    D = (c["m"] + c["n"]) * c["k"]
    w0 = c["init_scale"] * jax.random.normal(kw, (D,))
    rec = RunRecorder(out, NAME, c)
    rec.update(M=data.M, rows=data.rows, cols=data.cols, w0=w0)

    bn_loss, nobn_loss = matrix_completion_bn(data), plain_loss(data)
    settings = {
        "bn": (bn_loss, c["wd"], c["sharpness_every"], True),
        "no_wd": (bn_loss, 0.0, c["sharpness_every"], True),
        "no_bn": (nobn_loss, c["wd"], 0, False),
    }
    evals = _evaluators(data, nobn_loss)
    key_numbers: dict = {}
    for r in RUNS:
        key_numbers[r] = _train(c, rec, r, settings[r], w0, evals, progress)
    claims = _claims(key_numbers["bn"], key_numbers["no_wd"])
    notes = [
        "fit step = first recorded step with train loss <= fit_tol",
        "no_bn: spherical sharpness is undefined without normalization; hess_top_* is the plain "
        "top Hessian eigenvalue lambda_1(grad^2 L(w_t)), on a different scale",
        "test MSE is over all m*n entries; 'end' = the last recorded step",
    ]
    rec.finish(
        key_numbers,
        dtype=w0.dtype,
        notes=notes,
        description=DESCRIPTION,
        paper=PAPER,
        claims=claims,
    )
    return key_numbers


def _evaluators(data, nobn_loss) -> dict:
    """The jitted per-record measurements of Figure 1: test MSE, singular values, plain λ1."""
    return {
        "test_bn": jax.jit(jax.vmap(lambda w: matrix_completion_test_mse(data, w))),
        "test_plain": jax.jit(jax.vmap(lambda w: plain_test_mse(data, w))),
        "svals": jax.jit(jax.vmap(lambda w: singular_values(data, w))),
        "hess_top": jax.jit(
            lambda ws: jax.lax.map(lambda w: hessian_top_eigs(nobn_loss, w).eigenvalues[0], ws)
        ),
    }


def _train(c, rec, r, setting, w0, evals, progress) -> dict:
    """One run of Figure 1 (GD+WD, eq. (1), or an ablation) and its test MSE, rank, sharpness."""
    loss, wd, sharp_every, bn = setting
    label = f"{NAME} [{r}]"
    phase(label, f"GD, wd = {wd:g}, {c['steps']} steps (the first chunk compiles)", progress)
    traj = run_chunked(
        loss,
        w0,
        c["lr"],
        wd,
        int(c["steps"]),
        record_every=int(c["record_every"]),
        sharpness_every=int(sharp_every),
        progress=progress,
        label=label,
        on_chunk=rec.on_chunk(f"{r}_", _FIELDS),
        checkpoint=rec.checkpoint(f"{r}_"),
        check_invariance=bn,
    )
    w = jnp.asarray(traj.w)
    phase(label, f"test MSE and singular values at {len(w)} records", progress)
    test = np.asarray((evals["test_bn"] if bn else evals["test_plain"])(w))
    sv = np.asarray(evals["svals"](w))
    erank = np.asarray(jax.vmap(effective_rank)(jnp.asarray(sv)))
    extra = {f"{r}_test_mse": test, f"{r}_sv": sv, f"{r}_eff_rank": erank}
    if bn:
        sharp = np.asarray(traj.sharpness)
    else:
        on = np.asarray(traj.step) % c["no_bn_hess_every"] == 0
        sharp = np.full(len(traj.step), np.nan)
        phase(label, f"top Hessian eigenvalue at {int(on.sum())} records", progress)
        sharp[on] = np.asarray(evals["hess_top"](w[on]))
        extra[f"{r}_hess_top"] = sharp
    rec.update(**extra)
    nums = _summarize(
        np.asarray(traj.step), np.asarray(traj.loss), test, sharp, erank, c["fit_tol"]
    )
    if bn:
        try:
            nums["eos_step"] = eos_onset(traj, fit_tol=c["fit_tol"])
        except ValueError:
            nums["eos_step"] = None
    else:
        for k in ("sharpness_init", "sharpness_at_fit", "sharpness_end"):
            nums[k.replace("sharpness", "hess_top")] = nums.pop(k)
    return nums


def _claims(b: dict, nw: dict) -> dict:
    """Figure 1's claims: after the fit, test MSE, sharpness and rank fall with WD, not without."""

    def _drop_ok(d):
        return d["test_mse_drop"] is not None and d["test_mse_drop"] >= 10

    def _sharp_falls(d):
        return None not in (d["sharpness_at_fit"], d["sharpness_end"]) and (
            d["sharpness_end"] < d["sharpness_at_fit"]
        )

    return {
        "bn: test MSE falls >= 10x from fit to end": _drop_ok(b),
        "bn: spherical sharpness falls from fit to end": _sharp_falls(b),
        "bn: effective rank ends below 5": b["eff_rank_end"] < 5,
        "no_wd: test MSE does not fall >= 10x": not _drop_ok(nw),
        "no_wd: sharpness does not fall by more than 1%": not (
            _sharp_falls(nw) and nw["sharpness_end"] < 0.99 * nw["sharpness_at_fit"]
        ),
        "no_wd: effective rank does not end below 5": nw["eff_rank_end"] >= 5,
    }


def plot(out: Path) -> list[Path]:
    """``figure1.png`` (test MSE, train loss, sharpness, effective rank, ``η̃·λ1``, final singular
    values; all three runs) and ``singular_values.png`` (normalized singular values over steps)."""
    out = Path(out)
    a = load_arrays(out)
    summary = load_summary(out)
    fit = summary["key_numbers"]["bn"]["fit_step"]
    fig, ax = new_figure(2, 3, (14, 7.5))
    (a_test, a_loss, a_sharp), (a_rank, a_eos, a_sv) = ax
    for r in RUNS:
        st, col, lab = a[f"{r}_step"], COLORS[r], LABELS[r]
        a_test.semilogy(st, a[f"{r}_test_mse"], color=col, label=lab)
        a_loss.semilogy(st, np.maximum(a[f"{r}_loss"], 1e-32), color=col, label=lab)
        sharp = a[f"{r}_hess_top"] if r == "no_bn" else a[f"{r}_sharpness"]
        ok = np.isfinite(sharp)
        slab = lab + (" — λ1(∇²L(w)), not spherical" if r == "no_bn" else "")
        a_sharp.semilogy(st[ok], sharp[ok], ".-" if r == "no_bn" else "-", color=col, label=slab)
        a_rank.plot(st, a[f"{r}_eff_rank"], color=col, label=lab)
        if r != "no_bn":
            a_eos.plot(st[ok], (a[f"{r}_eff_lr"] * sharp)[ok], color=col, label=lab)
        s = a[f"{r}_sv"][-1]
        a_sv.semilogy(np.arange(1, len(s) + 1), s / s.sum(), "o-", ms=3, color=col, label=lab)
    for axis in (a_test, a_loss, a_sharp, a_rank, a_eos):
        if fit is not None:
            axis.axvline(fit, color="gray", ls=":", lw=1)
        axis.set_xlabel("step")
    a_test.set(title="(a) test MSE (all entries)", ylabel="MSE")
    a_loss.set(title="(b) train loss", ylabel="loss")
    a_sharp.set(title="(c) spherical sharpness λ1(∇²L(θ_t))", ylabel="λ1")
    a_rank.set(title="(d) effective rank of UVᵀ", ylabel="exp(entropy)")
    a_eos.axhline(2.0, color="k", lw=0.8, ls="--")
    a_eos.set(title="(e) η̃_t·λ1 (EoS at 2)", ylabel="η̃ λ1")
    a_sv.set(title="(f) singular values of UVᵀ at the end", xlabel="index i", ylabel="σ_i / Σσ")
    a_sv.set_ylim(1e-8, 1.5)
    for axis in ax.flat:
        axis.legend(fontsize=7)
    c = summary["config"]
    fig.suptitle(
        f"Figure 1: matrix completion with BN — lr={c['lr']}, wd={c['wd']}, "
        f"{c['steps']} steps (dotted: training set fit)"
    )
    paths = [save_figure(fig, out / "figure1.png")]

    fig, ax = new_figure(1, 3, (14, 4))
    for i, r in enumerate(RUNS):
        sv = a[f"{r}_sv"]
        p = sv / sv.sum(axis=1, keepdims=True)
        for j in range(min(8, p.shape[1])):
            ax[0, i].semilogy(a[f"{r}_step"], np.maximum(p[:, j], 1e-12), lw=1, label=f"σ_{j + 1}")
        ax[0, i].set(title=f"{LABELS[r]}: top singular values of UVᵀ", xlabel="step")
        ax[0, i].set_ylim(1e-6, 1.5)
    ax[0, 0].set_ylabel("σ_i / Σσ")
    ax[0, 0].legend(fontsize=7, ncol=2)
    paths.append(save_figure(fig, out / "singular_values.png"))
    return paths
