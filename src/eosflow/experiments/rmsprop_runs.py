"""The runs of :mod:`eosflow.experiments.rmsprop`: Part A (scalar RMSprop on a loss without
normalization, and its period-two window) and Part B (the optax optimizers on a BN loss), with the
summary numbers they share. Not an experiment itself (no ``NAME``)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax

from eosflow.experiments._common import as_float, first_index
from eosflow.optim import scalar_rmsprop
from eosflow.simulation import simulate_optax, simulate_rmsprop

#: Part B's optimizers, in run order (the no-WD ones share the WD ones' objects).
OPTS = ("adamw", "adam", "momentum_wd", "momentum")
_FIELDS = ("step", "loss", "eff_lr", "norm", "grad_norm")


def _sharp_idx(step, every):
    """Indices of the records where the sharpness is measured (steps divisible by ``every``)."""
    return np.flatnonzero(np.asarray(step) % every == 0)


def _summ(step, loss, test, sharp_step, lam, c) -> dict:
    """Fit step and sharpness / test numbers at the fit and at the end."""
    step, loss = np.asarray(step), np.asarray(loss)
    i_fit = first_index(loss <= c["fit_tol"])
    out = {
        "final_loss": as_float(loss[-1]),
        "fit_step": None if i_fit is None else int(step[i_fit]),
        "test_start": as_float(test[0]),
        "test_end": as_float(test[-1]),
        "sharpness_start": as_float(lam[0]),
        "sharpness_end": as_float(lam[-1]),
    }
    if i_fit is not None:
        j = first_index(sharp_step >= step[i_fit])
        out.update(
            test_at_fit=as_float(test[i_fit]),
            test_fit_to_end=as_float(test[-1] / test[i_fit]),
            sharpness_at_fit=None if j is None else as_float(lam[j]),
            sharpness_fit_to_end=None if j is None else as_float(lam[-1] / lam[j]),
        )
    return out


# ----------------------------------------------------------------------------- part A


def _period_two(dw: np.ndarray, v1: np.ndarray) -> dict:
    """Sign-flip share of ``⟨Δw_t, v1⟩`` and share of ``⟨Δw_t, Δw_{t−1}⟩ < 0`` over a window."""
    h = dw @ v1
    flips = np.sign(h[1:]) * np.sign(h[:-1]) < 0
    anti = np.sum(dw[1:] * dw[:-1], axis=1) < 0
    return {
        "sign_flip_share": float(np.mean(flips)),
        "antiparallel_share": float(np.mean(anti)),
        "median_abs_cos_dw_v1": float(
            np.median(np.abs(h) / np.maximum(np.linalg.norm(dw, axis=1), 1e-300))
        ),
    }


def run_plain(name, loss, w0, eta, beta, c, sharp, test_fn, rank_fn, rec):
    """One scalar-RMSprop run and its period-two window; saves arrays, returns key numbers.

    Linear regression (``D = d + 1``) records every step and takes the window from the run's
    last steps; matrix completion records every ``record_every`` steps and runs the window as a
    continuation from the final state (``w_final``, optimizer state). ``v1`` for the window is
    the top eigenvector at the last sharpness record.
    """
    steps, se, W = int(c["steps"]), int(c["sharpness_every"]), int(c["window"])
    k = 1 if name == "lin" else int(c["record_every"])
    run = simulate_rmsprop(loss, w0, eta, beta, c["eps"], steps, record_every=k)
    tr = run.trajectory
    si = _sharp_idx(tr.step, se)
    lam, vec = sharp(np.asarray(tr.w)[si])
    lr_s = np.asarray(tr.eff_lr)[si]
    prod = lr_s * lam
    ws = np.asarray(tr.w)
    test = np.asarray(test_fn(ws))
    if k == 1:
        win_w, win_step, win_lr = ws[-(W + 1) :], np.asarray(tr.step)[-(W + 1) :], tr.eff_lr[-W:]
    else:
        win = simulate_optax(
            loss, tr.w_final, scalar_rmsprop(eta, beta, c["eps"]), W + 1, geometry="plain",
            opt_state=run.opt_state,
        ).trajectory  # fmt: skip
        win_w, win_step, win_lr = np.asarray(win.w), np.asarray(win.step) + steps, win.eff_lr[:-1]
    dw = np.diff(win_w, axis=0)
    p2 = _period_two(dw, vec[-1])
    arrays = {
        f"{name}_step": tr.step,
        f"{name}_loss": tr.loss,
        f"{name}_lr": tr.eff_lr,
        f"{name}_fit_residual": run.fit_residual,
        f"{name}_norm": tr.norm,
        f"{name}_test": test,
        f"{name}_sharp_step": np.asarray(tr.step)[si],
        f"{name}_sharpness": lam,
        f"{name}_lr_at_sharp": lr_s,
        f"{name}_win_step": win_step[1:],
        f"{name}_win_h": dw @ vec[-1],
        f"{name}_win_lr": win_lr,
    }
    key = _summ(tr.step, tr.loss, test, np.asarray(tr.step)[si], lam, c)
    i_eos = first_index(prod >= c["eos_threshold"])
    after = prod[i_eos:] if i_eos is not None else prod[:0]
    key.update(
        steps=steps,
        eos_step=None if i_eos is None else int(np.asarray(tr.step)[si][i_eos]),
        sharpness_at_eos=None if i_eos is None else as_float(lam[i_eos]),
        sharpness_eos_to_end=None if i_eos is None else as_float(lam[-1] / lam[i_eos]),
        lr_lambda1_median_after_eos=as_float(np.median(after)) if after.size else None,
        lr_lambda1_share_within_10pct=(
            as_float(np.mean(np.abs(after / 2 - 1) <= 0.1)) if after.size else None
        ),
        lr_lambda1_end=as_float(prod[-1]),
        lr_fit_residual_max=as_float(np.max(np.asarray(run.fit_residual))),
        **{f"window_{kk}": v for kk, v in p2.items()},
    )
    if rank_fn is not None:
        rank = np.asarray(rank_fn(ws))
        arrays[f"{name}_rank"] = rank
        key.update(rank_start=as_float(rank[0]), rank_end=as_float(rank[-1]))
        if i_eos is not None:
            j = int(np.asarray(tr.step)[si][i_eos]) // k
            key.update(rank_at_eos=as_float(rank[j]), test_at_eos=as_float(test[j]))
    if k == 1:  # keep the saved arrays small: every record_every-th step
        arrays.update({kk: v[:: int(c["record_every"])] for kk, v in arrays.items()
                       if kk in (f"{name}_{f}" for f in ("step", "loss", "lr", "fit_residual",
                                                          "norm", "test"))})  # fmt: skip
    rec.update(**arrays)
    return key


# ----------------------------------------------------------------------------- part B


def _sgdm(learning_rate, weight_decay, momentum):
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(learning_rate, momentum))


def _optimizers(c, prob):
    """``{name: (optimizer, initial-state maker)}``; the no-WD variants reuse the WD optimizer
    object with ``weight_decay = 0`` in the injected hyperparameters (no recompilation)."""
    adamw = optax.inject_hyperparams(optax.adamw)(
        learning_rate=c["adamw_lr"], weight_decay=c["adamw_wd"]
    )
    mom = optax.inject_hyperparams(_sgdm, static_args=("momentum",))(
        learning_rate=c[f"{prob}_momentum_lr"],
        weight_decay=c[f"{prob}_momentum_wd"],
        momentum=c["momentum"],
    )

    def no_wd(opt):
        def init(w0):
            s = opt.init(w0)
            hp = dict(s.hyperparams)
            hp["weight_decay"] = jnp.zeros_like(hp["weight_decay"])
            return s._replace(hyperparams=hp)

        return init

    return {
        "adamw": (adamw, adamw.init),
        "adam": (adamw, no_wd(adamw)),
        "momentum_wd": (mom, mom.init),
        "momentum": (mom, no_wd(mom)),
    }


def run_bn(prob, loss, w0, c, sharp, test_fn, rank_fn, rec, progress):
    """The four optax runs of :data:`OPTS` on one BN loss; saves arrays, returns key numbers per
    optimizer; calls ``progress()`` after each run."""
    steps, se = int(c["steps"]), int(c["sharpness_every"])
    # Linear regression (D = d) records every step: with record_every = 1 the driver compiles one
    # copy of the step instead of two; the saved per-step arrays are thinned to record_every.
    k = 1 if prob == "lin" else int(c["record_every"])
    keys = {}
    for opt_name, (opt, init) in _optimizers(c, prob).items():
        run = simulate_optax(
            loss, w0, opt, steps, opt_state=init(w0), record_every=k, on_nonfinite="return"
        )
        tr = run.trajectory
        si = _sharp_idx(tr.step, se)
        lam, _ = sharp(np.asarray(tr.w)[si])
        ws = np.asarray(tr.w)
        test = np.asarray(test_fn(ws))
        p = f"{prob}_bn_{opt_name}_"
        arrays = {p + f: getattr(tr, f) for f in _FIELDS}
        arrays.update({
            p + "fit_residual": run.fit_residual, p + "test": test,
            p + "sharp_step": np.asarray(tr.step)[si], p + "sharpness": lam,
        })  # fmt: skip
        key = _summ(tr.step, tr.loss, test, np.asarray(tr.step)[si], lam, c)
        eta_lam = np.asarray(tr.eff_lr)[si] * lam
        key.update(
            steps=steps,
            nonfinite_step=int(tr.nonfinite_step),
            norm_start=as_float(tr.norm[0]),
            norm_end=as_float(tr.norm[-1]),
            eff_lr_lambda1_median_last_half=as_float(np.median(eta_lam[len(eta_lam) // 2 :])),
            fit_residual_median=as_float(np.median(np.asarray(run.fit_residual))),
        )
        if opt_name.startswith("momentum"):
            # heavy ball is stable along v1 iff lr·λ1(∇²L(w)) < 2(1+β); λ1(∇²L(w)) = λ1(θ)/||w||²
            hb = (
                c[f"{prob}_momentum_lr"] * lam / np.asarray(tr.norm)[si] ** 2
                / (2 * (1 + c["momentum"]))
            )  # fmt: skip
            arrays[p + "hb_ratio"] = hb
            key["heavy_ball_ratio_median_last_half"] = as_float(np.median(hb[len(hb) // 2 :]))
            key["heavy_ball_ratio_max"] = as_float(np.max(hb))
        if rank_fn is not None:
            rank = np.asarray(rank_fn(ws))
            arrays[p + "rank"] = rank
            key.update(rank_start=as_float(rank[0]), rank_end=as_float(rank[-1]))
            if key.get("fit_step") is not None:
                key["rank_at_fit"] = as_float(rank[key["fit_step"] // k])
        if k == 1:
            thin = int(c["record_every"])
            arrays.update({kk: v[::thin] for kk, v in arrays.items()
                           if kk[len(p):] in (*_FIELDS, "fit_residual", "test", "rank")})  # fmt: skip
        rec.update(**arrays)
        keys[opt_name] = key
        progress()
    return keys
