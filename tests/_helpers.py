"""Helpers shared by the test files: the ``eosflow`` command in a subprocess, a quick experiment
run with its outputs loaded, a simulated Ctrl-C after the n-th saved chunk, and a real
``kill -9`` once a checkpoint file appears."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np

import eosflow

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_cli(args, cwd, timeout=600):
    """``python -m eosflow.cli ARGS`` in ``cwd`` (a folder outside the repository)."""
    return subprocess.run(
        [sys.executable, "-m", "eosflow.cli", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def kill_9_after_checkpoint(args, cwd, ckpt, timeout=300):
    """Start ``python -m eosflow.cli ARGS`` in ``cwd``, SIGKILL it as soon as the checkpoint file
    ``ckpt`` exists (or it ended, or ``timeout`` s passed), and wait for it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "eosflow.cli", *map(str, args)],
        cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.time() + timeout
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.kill()  # SIGKILL on POSIX; a no-op once the process has been reaped (no stray pid)
    proc.wait()


def quick_run(tmp_path_factory, name, *extra, timeout=600):
    """``eosflow run NAME --quick [EXTRA]`` from a fresh folder; asserts success and returns
    ``(out, completed process, arrays, summary)``."""
    base = tmp_path_factory.mktemp(name)
    out = base / "out"
    r = run_cli(["run", name, "--quick", "--out", out, *extra], cwd=base, timeout=timeout)
    assert r.returncode == 0, f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    with np.load(out / "arrays.npz") as z:
        arrays = {k: z[k] for k in z.files}
    return out, r, arrays, json.loads((out / "summary.json").read_text())


def interrupt_after_chunks(monkeypatch, n: int) -> None:
    """Make ``RunRecorder.update`` raise ``KeyboardInterrupt`` (as Ctrl-C would) right after it
    has saved its ``n``-th chunk."""
    from eosflow import runio

    calls = {"n": 0}
    original = runio.RunRecorder.update

    def update(self, **arrays):
        original(self, **arrays)
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt

    monkeypatch.setattr(runio.RunRecorder, "update", update)


def group_masks(params):
    """One flat 0/1 mask per parameter leaf (``ravel_pytree`` order), and the leaves' names.

    For the scale-invariant nets every leaf is one conv/dense kernel, i.e. one invariant group."""
    import jax
    import jax.numpy as jnp
    from jax.flatten_util import ravel_pytree

    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
    leaves, treedef = jax.tree_util.tree_flatten(params)
    masks = []
    for i in range(len(leaves)):
        tree = [jnp.full_like(x, float(j == i)) for j, x in enumerate(leaves)]
        masks.append(np.asarray(ravel_pytree(jax.tree_util.tree_unflatten(treedef, tree))[0]))
    return paths, np.stack(masks)


def invariance_measurements(loss, w, masks, seed=0):
    """Loss and gradient of ``loss`` at ``w`` scaled jointly, per group, and per group with
    different factors at once, in one compiled ``lax.map`` (one compilation per net, with
    :data:`FAST_COMPILE`).

    Scalings: ``c w`` for ``c`` in ``JOINT_SCALES``; group ``l`` alone by ``c_l`` (alternating
    0.2 and 7.0); all groups at once by i.i.d. log-uniform factors in ``[0.1, 10]``.

    Returns a dict of float64 numpy arrays:
      ``joint``, ``group``, ``mixed``: relative loss changes ``|L(w') − L(w)| / |L(w)|``;
      ``cos_joint``: ``|<∇L(w), w>| / (||∇L(w)|| ||w||)``;
      ``cos_group``: the same per group, ``|<∇_l L, w_l>| / (||∇_l L|| ||w_l||)``;
      ``grad_scaling``: ``||∇L(c w) − ∇L(w)/c|| / ||∇L(w)/c||`` for each joint ``c``
      (the gradient of an invariant loss is homogeneous of degree −1).
    """
    import jax
    import jax.numpy as jnp

    w = np.asarray(w)
    masks = np.asarray(masks)
    rng = np.random.default_rng(seed)
    c_group = np.where(np.arange(len(masks)) % 2 == 0, 0.2, 7.0)
    c_mixed = np.exp(rng.uniform(np.log(0.1), np.log(10.0), len(masks)))
    points = [w]
    points += [c * w for c in JOINT_SCALES]
    points += [w * (1 + (c - 1) * m) for c, m in zip(c_group, masks, strict=True)]
    points.append(w * (c_mixed @ masks))
    program = jax.jit(lambda W: jax.lax.map(jax.value_and_grad(loss), W), **FAST_COMPILE)
    vals, grads = program(jnp.stack(points))
    vals, grads = np.asarray(vals), np.asarray(grads)
    rel = np.abs(vals[1:] - vals[0]) / abs(vals[0])
    nj, ng = len(JOINT_SCALES), len(masks)
    g = grads[0]
    per_group = [
        abs(g[m > 0] @ w[m > 0]) / (np.linalg.norm(g[m > 0]) * np.linalg.norm(w[m > 0]))
        for m in masks
    ]
    scaling = [
        np.linalg.norm(grads[1 + i] - g / c) / np.linalg.norm(g / c)
        for i, c in enumerate(JOINT_SCALES)
    ]
    return dict(
        joint=rel[:nj],
        group=rel[nj : nj + ng],
        mixed=rel[nj + ng :],
        cos_joint=abs(g @ w) / (np.linalg.norm(g) * np.linalg.norm(w)),
        cos_group=np.array(per_group),
        grad_scaling=np.array(scaling),
    )


#: Joint scale factors of :func:`invariance_measurements`.
JOINT_SCALES = (1e-3, 0.37, 2.9, 11.0, 1e3)

#: ``jax.jit`` options for the test programs of deep nets: XLA's CPU backend optimizations off,
#: which halves the compile time of a ResNet-20 gradient (8 s -> 4 s CPU) and leaves the float64
#: values equal to round-off (the tests' tolerances are unchanged).
FAST_COMPILE = {"compiler_options": {"xla_backend_optimization_level": 0}}


def _eos_entries(gd, cf) -> tuple[int, int, int]:
    """``(later, GD's, flow's)`` EoS entry: GD's first ``eta~*lambda1 >= 2``, the flow's first
    active step."""
    at_edge, active = np.asarray(gd.eff_lr * gd.sharpness) >= 2.0, np.asarray(cf.active) > 0
    assert at_edge.any() and active.any(), "GD or the flow never reached the edge of stability"
    e_gd, e_cf = int(np.argmax(at_edge)), int(np.argmax(active))
    return max(e_gd, e_cf), e_gd, e_cf


def central_vs_gd(loss, gd, cf, tail: int = 200) -> dict:
    """Issue 14's numbers for a central flow ``cf`` against a GD(+WD) run ``gd`` (sharpness every
    step) on the second half of the run after both entered EoS; ``h_t`` over the last ``tail``
    steps."""
    steps = len(gd.step)
    entry, e_gd, e_cf = _eos_entries(gd, cf)
    sl = slice(entry + (steps - entry) // 2, steps - 1)
    th = np.asarray(gd.theta)
    avg = th[:-1] + th[1:]
    avg /= np.linalg.norm(avg, axis=1, keepdims=True)
    gl = np.asarray(gd.loss)
    two_step = 0.5 * (gl[:-1] + gl[1:])
    flow_th = np.asarray(cf.theta)
    osc = eosflow.oscillation(loss, gd, start=steps - tail, stop=steps)
    return {
        "e_gd": e_gd,
        "e_cf": e_cf,
        "loss_ratio_median": float(np.median(two_step[sl] / np.asarray(cf.loss_avg)[sl])),
        "loss_ratio_mean": float(np.mean(two_step[sl]) / np.mean(np.asarray(cf.loss_avg)[sl])),
        "sigma2_over_h2": float(np.mean(np.asarray(cf.sigma)[-tail:, 0, 0]) / np.mean(osc.h**2)),
        "trace_over_x2": float(
            np.mean(np.trace(np.asarray(cf.sigma)[-tail:], axis1=1, axis2=2))
            / np.mean(osc.x_norm**2)
        ),
        "sigma2_over_half_eta": float(np.mean(np.asarray(cf.sigma)[sl, 0, 0]))
        / (0.5 * float(gd.lr * gd.wd) or np.nan),
        "eff_lr_ratio": float(
            np.mean(np.asarray(cf.eff_lr)[sl]) / np.mean(np.asarray(gd.eff_lr)[sl])
        ),
        "dist_avg": float(np.mean(np.linalg.norm(flow_th[sl] - avg[sl], axis=1))),
        "dist_iterate": float(np.mean(np.linalg.norm(flow_th[sl] - th[sl], axis=1))),
        "pre_eos_max_dist": float(np.max(np.linalg.norm(flow_th[:entry] - th[:entry], axis=1))),
    }
