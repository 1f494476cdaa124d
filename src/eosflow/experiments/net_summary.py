"""Figure 2's key numbers for :mod:`eosflow.experiments.net`, from one run's records (either
engine). Not an experiment itself (no ``NAME``).

Records may hold NaN where a quantity was not computed (sharpness between Lanczos calls;
accuracies between evaluations of the ``fullbatch`` engine, every ``eval_every`` steps): "at
init", "at fit" and "end" then mean the first and last *computed* values.
"""

from __future__ import annotations

import numpy as np

from eosflow.experiments._common import as_float, first_index

__all__ = ["median_tail", "summarize", "summarize_run", "sharpness_at_bn_eos", "claims"]


def median_tail(step, values, frac=0.25):
    """Median of the finite ``values`` recorded in the last ``frac`` of the steps."""
    ok = np.isfinite(values)
    if not ok.any():
        return None
    cut = step[-1] - frac * (step[-1] - step[0])
    tail = values[ok & (step >= cut)]
    return as_float(np.median(tail if tail.size else values[ok][-1:]))


def _first_last(values):
    ok = np.flatnonzero(np.isfinite(values))
    return (as_float(values[ok[0]]), as_float(values[ok[-1]])) if ok.size else (None, None)


def summarize(step, loss, eff_lr, sharp, train_acc, test_acc) -> dict:
    """Figure 2's numbers of one run: fit step (first record with 100% training accuracy), EoS
    step (first sharpness record after the fit with ``η̃·λ1 >= 2``), accuracies and sharpness at
    init / fit / end (``sharpness_end``: :func:`median_tail`; ``test_acc_end_mean``: mean of the
    computed test accuracies over the last 10% of the steps)."""
    i_fit = first_index(train_acc >= 1.0)
    ok = np.flatnonzero(np.isfinite(sharp))
    s_fit = None
    eos = None
    if i_fit is not None and ok.size:
        after = ok[ok >= i_fit]
        s_fit = sharp[after[0]] if after.size else None
        hit = after[eff_lr[after] * sharp[after] >= 2.0]
        eos = int(step[hit[0]]) if hit.size else None
    s_end = median_tail(step, sharp)
    tail = (step >= step[-1] - 0.1 * (step[-1] - step[0])) & np.isfinite(test_acc)
    test_init, test_end = _first_last(test_acc)
    return {
        "fit_step": None if i_fit is None else int(step[i_fit]),
        "eos_step": eos,
        "train_acc_end": _first_last(train_acc)[1],
        "train_loss_end": as_float(loss[-1]),
        "test_acc_init": test_init,
        "test_acc_at_fit": None if i_fit is None else as_float(test_acc[i_fit]),
        "test_acc_end": test_end,
        "test_acc_end_mean": as_float(np.mean(test_acc[tail])) if tail.any() else test_end,
        "sharpness_init": as_float(sharp[ok[0]]) if ok.size else None,
        "sharpness_at_fit": as_float(s_fit),
        "sharpness_end": s_end,
        "sharpness_last": as_float(sharp[ok[-1]]) if ok.size else None,
        "sharpness_ratio_fit_to_end": (
            None if s_fit is None or not s_end else as_float(s_fit / s_end)
        ),
        "last_step": int(step[-1]),
    }


def summarize_run(r: str, arrays: dict, wall_s: float) -> dict:
    """:func:`summarize` of run ``r`` from its saved arrays (``{r}_step``, ...); for ``no_bn`` the
    sharpness numbers are those of the plain ``λ1(∇²L(w))`` (``{r}_hess_top``), renamed
    ``hess_top_*``, and there is no EoS step."""
    a = {k[len(r) + 1 :]: v for k, v in arrays.items() if k.startswith(f"{r}_")}
    sharp = a["hess_top"] if r == "no_bn" else a["sharpness"]
    nums = summarize(a["step"], a["loss"], a["eff_lr"], sharp, a["train_acc"], a["test_acc"])
    nums["wall_s"] = wall_s
    if r == "no_bn":
        for k in list(nums):
            if k.startswith("sharpness"):
                nums[k.replace("sharpness", "hess_top")] = nums.pop(k)
        nums["eos_step"] = None
    return nums


def sharpness_at_bn_eos(key_numbers: dict, arrays: dict) -> None:
    """Figure 2b at the bn run's EoS entry: each BN run's sharpness there and its ratio to the
    end (added to ``key_numbers`` in place)."""
    eos = key_numbers.get("bn", {}).get("eos_step")
    for r in ("bn", "no_wd"):
        if r not in key_numbers:
            continue
        nums = key_numbers[r]
        i = None if eos is None else int(np.searchsorted(arrays[f"{r}_step"], eos))
        s_eos = None if i is None else as_float(arrays[f"{r}_sharpness"][i])
        nums["sharpness_at_bn_eos"] = s_eos
        nums["sharpness_ratio_bn_eos_to_end"] = (
            None if s_eos is None or not nums["sharpness_end"] else s_eos / nums["sharpness_end"]
        )


def claims(key_numbers: dict) -> dict:
    """Figure 2's claims: with BN and WD the sharpness falls after the fit; without WD, not."""
    out = {}
    b, nw = key_numbers.get("bn"), key_numbers.get("no_wd")
    if b is not None:
        out["bn: 100% train accuracy reached"] = b["fit_step"] is not None
        ratio = b["sharpness_ratio_fit_to_end"]
        out["bn: spherical sharpness falls >= 2x from fit to end"] = bool(ratio and ratio >= 2)
    if nw is not None:
        s0, s1 = nw["sharpness_at_fit"], nw["sharpness_end"]
        out["no_wd: spherical sharpness changes < 10% from fit to end"] = bool(
            s0 and s1 and abs(s1 / s0 - 1) < 0.1
        )
        s0 = nw.get("sharpness_at_bn_eos")
        out["no_wd: spherical sharpness changes < 10% from the bn run's EoS entry to end"] = bool(
            s0 and s1 and abs(s1 / s0 - 1) < 0.1
        )
    if b is not None and b.get("sharpness_ratio_bn_eos_to_end") is not None:
        out["bn: spherical sharpness falls >= 2x from its EoS entry to end"] = (
            b["sharpness_ratio_bn_eos_to_end"] >= 2
        )
    return out
