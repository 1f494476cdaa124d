"""The experiments end to end through the command line, and the run infrastructure they use.

* Every experiment runs from ``eosflow run NAME --quick --out DIR`` and writes ``arrays.npz``,
  ``summary.json`` and non-blank PNGs (one quick run per experiment, shared by module fixtures).
* Figure 1 (matrix completion with BN) — the claims of issue 4 in quick mode, recomputed here from
  the saved parameters with independent NumPy code: test MSE falls >= 10x from the fit step to the
  end, spherical sharpness falls, effective rank ends below 5; the no-WD ablation shows none of it.
  These hold at the default seed (0). They are *not* seed-robust (they hold for seeds 0, 1, 3 of
  0-5 in quick mode): see ``src/eosflow/experiments/README.md`` for the other seeds.
* Figure 3 (norm dynamics) — ``||w||`` rises exactly when ``||∇L(θ_t)||`` exceeds the threshold of
  eq. (1), checked against the saved arrays; the run has both phases and reaches EoS.
* :func:`eosflow.chunks.run_chunked` equals one :func:`eosflow.simulate` call bit for bit; an
  interrupted run leaves readable partial arrays; the writers are atomic.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.image as mpimg
import numpy as np
import pytest
from _helpers import PNG_MAGIC, interrupt_after_chunks, quick_run  # noqa: E402

import eosflow
from eosflow import chunks, runio
from eosflow.losses import linear_regression_bn, make_linear_regression_data, toy3d


@pytest.fixture(scope="module")
def mc(tmp_path_factory):
    return quick_run(tmp_path_factory, "matrix-completion-bn")


@pytest.fixture(scope="module")
def nd(tmp_path_factory):
    return quick_run(tmp_path_factory, "norm-dynamics")


# ----------------------------------------------------------------------------- outputs


def check_outputs(out: Path, r, summary: dict, figures: list[str]):
    assert (out / "arrays.npz").is_file() and (out / "summary.json").is_file()
    assert not (out / runio.PARTIAL).exists(), "the partial file is removed at the end"
    assert not list(out.glob(".*.tmp")), "no temporary files left behind"
    assert summary["figures"] == figures
    for name in figures:
        p = out / name
        assert p.read_bytes()[:8] == PNG_MAGIC
        img = mpimg.imread(p)
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 200
        assert float(np.var(img[..., :3])) > 1e-3, f"{name} looks blank"
        assert str(p) in r.stdout
    assert str(out / "summary.json") in r.stdout and "key numbers:" in r.stdout
    # summary contents
    assert summary["seed"] == summary["config"]["seed"] == 0
    assert summary["config"]["quick"] is True
    assert summary["dtype"] == "float64"
    assert summary["wall_time_s"] > 0
    env = summary["environment"]
    assert set(env["versions"]) == {"python", "jax", "jaxlib", "numpy", "eosflow"}
    assert env["versions"]["jax"] == jax.__version__
    assert env["device"]["platform"] == jax.devices()[0].platform
    assert env["x64"] is True
    # progress was reported on stderr (plain lines, not a TTY)
    assert "steps/s" in r.stderr and "Traceback" not in r.stderr


def test_matrix_completion_outputs(mc):
    out, r, _, summary = mc
    check_outputs(out, r, summary, ["figure1.png", "singular_values.png"])


def test_norm_dynamics_outputs(nd):
    out, r, _, summary = nd
    check_outputs(out, r, summary, ["figure3.png"])


# ----------------------------------------------------------------------------- Figure 1


def mc_test_mse_numpy(M, rows, cols, w, k, bn=True):
    """Independent NumPy test MSE over all entries; BN uses the Ω statistics of UVᵀ and M."""
    m, n = M.shape
    U, V = w[: m * k].reshape(m, k), w[m * k :].reshape(n, k)
    P = U @ V.T
    if bn:
        p, obs = P[rows, cols], M[rows, cols]
        P = obs.std() * (P - p.mean()) / p.std() + obs.mean()
    return np.mean((P - M) ** 2)


def eff_rank_numpy(w, m, n, k):
    U, V = w[: m * k].reshape(m, k), w[m * k :].reshape(n, k)
    s = np.linalg.svd(U @ V.T, compute_uv=False)
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-np.sum(p * np.log(p))))


@pytest.fixture(scope="module")
def mc_numbers(mc):
    """Per run: fit index (train loss <= fit_tol), and test MSE / effective rank recomputed with
    NumPy at the fit record and the last record."""
    _, _, a, s = mc
    c = s["config"]
    m, n, k = c["m"], c["n"], c["k"]
    res = {}
    for r in ("bn", "no_wd"):
        loss, step = a[f"{r}_loss"], a[f"{r}_step"]
        fit = np.flatnonzero(loss <= c["fit_tol"])
        assert fit.size, f"{r}: the training set is never fit"
        i = int(fit[0])
        w = a[f"{r}_w"]
        sharp = a[f"{r}_sharpness"]
        ok = np.flatnonzero(np.isfinite(sharp))
        j = ok[ok >= i][0]
        res[r] = {
            "i_fit": i,
            "fit_step": int(step[i]),
            "test_fit": mc_test_mse_numpy(a["M"], a["rows"], a["cols"], w[i], k),
            "test_end": mc_test_mse_numpy(a["M"], a["rows"], a["cols"], w[-1], k),
            "sharp_fit": float(sharp[j]),
            "sharp_end": float(sharp[ok[-1]]),
            "rank_end": eff_rank_numpy(w[-1], m, n, k),
        }
    return res


def test_matrix_completion_saved_numbers_are_consistent(mc, mc_numbers):
    """Saved test MSE and effective rank equal an independent NumPy computation (rtol 1e-9), and
    the summary's key numbers are the saved arrays'."""
    _, _, a, s = mc
    for r, nums in mc_numbers.items():
        np.testing.assert_allclose(a[f"{r}_test_mse"][nums["i_fit"]], nums["test_fit"], rtol=1e-9)
        np.testing.assert_allclose(a[f"{r}_test_mse"][-1], nums["test_end"], rtol=1e-9)
        np.testing.assert_allclose(a[f"{r}_eff_rank"][-1], nums["rank_end"], rtol=1e-9)
        kn = s["key_numbers"][r]
        assert kn["fit_step"] == nums["fit_step"]
        np.testing.assert_allclose(kn["test_mse_end"], nums["test_end"], rtol=1e-9)
        np.testing.assert_allclose(kn["sharpness_end"], nums["sharp_end"], rtol=1e-12)
    # the no-BN run: plain MSE, never scale-invariant
    c = s["config"]
    np.testing.assert_allclose(
        a["no_bn_test_mse"][-1],
        mc_test_mse_numpy(a["M"], a["rows"], a["cols"], a["no_bn_w"][-1], c["k"], bn=False),
        rtol=1e-9,
    )


def test_matrix_completion_sharpness_by_a_second_method(mc):
    """The recorded spherical sharpness (warm-started Lanczos inside simulate) at the last
    sharpness record equals power iteration from a fresh start: residual <= 1e-6·λ gives an
    eigenvalue error ~1e-12·λ²/gap, so rtol 1e-8."""
    _, _, a, s = mc
    from eosflow.losses import make_matrix_completion_data, matrix_completion_bn

    c = s["config"]
    data = make_matrix_completion_data(
        jax.random.PRNGKey(c["seed"]), c["m"], c["n"], c["rank"], c["num_observed"], k=c["k"]
    )
    np.testing.assert_array_equal(np.asarray(data.M), a["M"])
    loss = matrix_completion_bn(data)
    sharp = a["bn_sharpness"]
    i = np.flatnonzero(np.isfinite(sharp))[-1]
    ref = eosflow.spherical_sharpness(loss, jnp.asarray(a["bn_w"][i]), method="power", tol=1e-6)
    np.testing.assert_allclose(sharp[i], float(ref.value), rtol=1e-8)


def test_matrix_completion_claims_bn(mc_numbers):
    """Issue 4, quick mode, default seed: test MSE falls >= 10x from fit to end, spherical
    sharpness falls, effective rank ends below 5 (paper: 1.12 -> 0.013, rank ~2)."""
    b = mc_numbers["bn"]
    assert b["test_fit"] / b["test_end"] >= 10, b
    assert b["sharp_end"] < b["sharp_fit"], b
    assert b["rank_end"] < 5, b


def test_matrix_completion_claims_no_wd(mc_numbers):
    """Without WD the norm cannot shrink, GD never reaches EoS, and nothing moves after fitting:
    no test-MSE drop (< 1.1x), sharpness within 1%, effective rank stays >= 5."""
    nw = mc_numbers["no_wd"]
    assert nw["test_fit"] / nw["test_end"] < 1.1, nw
    assert abs(nw["sharp_end"] / nw["sharp_fit"] - 1) < 0.01, nw
    assert nw["rank_end"] >= 5, nw


def test_matrix_completion_eos_only_with_wd(mc):
    """BN+WD enters the EoS (η̃·λ1 >= 2 after fitting, Theorem 4.4); no-WD stays below 2."""
    _, _, a, s = mc
    ratio = a["bn_eff_lr"] * a["bn_sharpness"]
    assert np.nanmax(ratio) >= 2.0
    ratio_nw = a["no_wd_eff_lr"] * a["no_wd_sharpness"]
    assert np.nanmax(ratio_nw) < 2.0
    assert s["key_numbers"]["bn"]["eos_step"] is not None
    assert s["key_numbers"]["no_wd"]["eos_step"] is None


# ----------------------------------------------------------------------------- Figure 3


def test_norm_dynamics_norm_follows_gradient(nd):
    """Eq. (1) with ∇L(w) ⊥ w: ||w_{t+1}||² = (1−η̂λ̂)²||w_t||² + η̂²||∇L(θ_t)||²/||w_t||² (checked
    on the saved arrays, rtol 1e-10), so ||w|| rises iff ||∇L(θ_t)|| > g*_t (agreement >= 99.9%,
    ties aside); both phases occur, and the effective LR climbs to the EoS."""
    _, _, a, s = nd
    lr, wd = float(a["lr"]), float(a["wd"])
    norm, g = a["norm"], a["grad_norm"]
    pred = (1 - lr * wd) ** 2 * norm[:-1] ** 2 + lr**2 * g[:-1] ** 2 / norm[:-1] ** 2
    np.testing.assert_allclose(norm[1:] ** 2, pred, rtol=1e-10)
    thr = norm**2 * math.sqrt(1 - (1 - lr * wd) ** 2) / lr
    np.testing.assert_allclose(a["threshold"], thr, rtol=1e-12)
    up, above = np.diff(norm) > 0, (g > thr)[:-1]
    assert np.mean(up == above) >= 0.999
    assert up.sum() >= 10 and (~up).sum() >= 10
    kn = s["key_numbers"]
    assert kn["norm_max_before_fit"] > kn["norm_init"]  # large early gradient: norm up
    assert kn["norm_min"] < 0.7 * kn["norm_max_before_fit"]  # small gradient: WD shrinks it
    ratio = a["eff_lr"] * a["sharpness"]
    assert np.nanmax(ratio[kn["fit_step"] :]) >= 2.0 and kn["eos_step"] is not None


# ----------------------------------------------------------------------------- infrastructure


@pytest.fixture(scope="module")
def linreg():
    data = make_linear_regression_data(jax.random.PRNGKey(3), n=12, d=30)
    loss = linear_regression_bn(data.X, data.y)
    w0 = jax.random.normal(jax.random.PRNGKey(4), (30,)) / 5.0
    return loss, w0


@pytest.mark.parametrize(
    "chunk, sharpness_every",
    [(96, 24), (150, 0)],  # equal chunks with sharpness; an uneven last chunk (150,150,150,30)
)
def test_run_chunked_equals_one_simulate(linreg, chunk, sharpness_every):
    """Chunks reproduce one long simulate call bit for bit, sharpness included (each chunk
    continues the previous chunk's RunState, Lanczos warm start and global step included)."""
    loss, w0 = linreg
    kw = dict(record_every=3, sharpness_every=sharpness_every)
    one = eosflow.simulate(loss, w0, 0.3, 0.02, 480, **kw)
    seen = []
    ch = chunks.run_chunked(
        loss,
        w0,
        0.3,
        0.02,
        480,
        chunk=chunk,
        progress=False,
        on_chunk=lambda t, d: seen.append((d, len(t.step), int(t.step[-1]))),
        **kw,
    )
    assert [d for d, _, _ in seen] == list(range(chunk, 480, chunk)) + [480]
    assert all(n == math.ceil(d / 3) and last == 3 * (n - 1) for d, n, last in seen)
    for f in ("step", "w", "theta", "norm", "eff_lr", "loss", "grad_norm"):
        assert np.array_equal(np.asarray(getattr(one, f)), getattr(ch, f)), f
    assert np.array_equal(np.asarray(one.w_final), np.asarray(ch.w_final))
    s1, s2 = np.asarray(one.sharpness), ch.sharpness
    assert np.array_equal(s1, s2, equal_nan=True)
    assert np.isfinite(s2).sum() == (480 // sharpness_every if sharpness_every else 0)
    assert int(ch.nonfinite_step) == -1


def test_run_chunked_rejects_misaligned_chunks(linreg):
    loss, w0 = linreg
    with pytest.raises(ValueError, match="multiple of record_every"):
        chunks.run_chunked(loss, w0, 0.1, 0.01, 100, chunk=25, record_every=10, progress=False)
    with pytest.raises(ValueError, match="steps"):
        chunks.run_chunked(loss, w0, 0.1, 0.01, 0, progress=False)


def test_run_chunked_nonfinite_step_is_global():
    """A run that blows up in its third chunk reports the same (global) step as one simulate call.
    ``L(w) = log(θ_1)`` is scale-invariant; GD drives θ_1 through 0, where the log is NaN."""
    loss = eosflow.scale_invariant(lambda th: jnp.log(th[0]))
    w0 = jnp.array([1.0, 0.3, 0.2])
    with pytest.raises(eosflow.NonFiniteError) as ref:
        eosflow.simulate(loss, w0, 0.05, 0.0, 400)
    bad = ref.value.step
    chunk = max(1, bad // 2 - 1)
    with pytest.raises(eosflow.NonFiniteError) as e:
        chunks.run_chunked(loss, w0, 0.05, 0.0, 400, chunk=chunk, progress=False)
    assert e.value.step == bad
    np.testing.assert_array_equal(e.value.trajectory.step, np.asarray(ref.value.trajectory.step))
    got = chunks.run_chunked(
        loss, w0, 0.05, 0.0, 400, chunk=chunk, progress=False, on_nonfinite="return"
    )
    assert int(got.nonfinite_step) == bad and got.step[-1] <= bad


def test_interrupted_experiment_leaves_readable_partial_arrays(tmp_path, monkeypatch):
    """Stop the norm-dynamics experiment after its third chunk (an exception from the saver, as
    Ctrl-C would): ``arrays.partial.npz`` holds exactly the first three chunks, equal to a direct
    simulate of that many steps; no final files, no temporary files."""
    from eosflow.experiments import norm_dynamics

    interrupt_after_chunks(monkeypatch, 3)
    cfg = norm_dynamics.default_config(True) | {"steps": 1000, "sharpness_every": 0}
    with pytest.raises(KeyboardInterrupt):
        norm_dynamics.run(cfg, tmp_path, progress=False)
    assert not (tmp_path / "arrays.npz").exists() and not (tmp_path / "summary.json").exists()
    assert not list(tmp_path.glob(".*.tmp"))
    with np.load(tmp_path / runio.PARTIAL) as z:
        part = {k: z[k] for k in z.files}
    done = int(part["steps_done"])
    assert done == 300  # default chunks: 1000 steps in 10 chunks of 100
    np.testing.assert_array_equal(part["step"], np.arange(done))

    kd, kw = jax.random.split(jax.random.PRNGKey(cfg["seed"]))
    data = make_linear_regression_data(kd, n=cfg["n"], d=cfg["d"])
    w0 = cfg["init_scale"] * jax.random.normal(kw, (cfg["d"],)) / np.sqrt(cfg["d"])
    ref = eosflow.simulate(linear_regression_bn(data.X, data.y), w0, cfg["lr"], cfg["wd"], done)
    np.testing.assert_array_equal(part["w"], np.asarray(ref.w))
    np.testing.assert_array_equal(part["loss"], np.asarray(ref.loss))


def test_save_npz_is_atomic(tmp_path, monkeypatch):
    """A writer that dies halfway leaves the previous file intact and no temporary file."""
    path = tmp_path / "a.npz"
    runio.save_npz(path, x=np.arange(3))

    def broken_savez(f, **arrays):
        f.write(b"half-written garbage")
        raise OSError("disk full")

    monkeypatch.setattr(runio.np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        runio.save_npz(path, x=np.arange(5))
    with np.load(path) as z:
        np.testing.assert_array_equal(z["x"], np.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz"]


def test_save_json_strict(tmp_path):
    obj = {
        "a": np.float64(1.5),
        "b": np.arange(3),
        "c": float("nan"),
        "d": jnp.asarray(2.0),
        "e": Path("x/y"),
        "f": (1, np.int32(2)),
        "g": None,
    }
    p = runio.save_json(tmp_path / "s.json", obj)
    text = p.read_text()
    assert "NaN" not in text
    assert json.loads(text) == {
        "a": 1.5,
        "b": [0, 1, 2],
        "c": None,
        "d": 2.0,
        "e": "x/y",
        "f": [1, 2],
        "g": None,
    }


class _TTY(io.StringIO):
    def isatty(self):
        return True


def test_progress_lines():
    """Non-TTY: plain lines (first, final), no carriage returns. TTY: redrawn with \\r. The line
    shows done/total, rate and ETA (unknown until the second update, which excludes compile)."""
    s = io.StringIO()
    p = runio.Progress(100, "lbl", stream=s, min_interval=0.0)
    p.update(25)
    p.update(50)
    p.update(100)
    lines = s.getvalue().splitlines()
    assert len(lines) == 3 and "\r" not in s.getvalue()
    assert lines[0].startswith("lbl [") and "25/100 steps" in lines[0] and "ETA ?" in lines[0]
    assert "steps/s" in lines[1] and "ETA" in lines[1] and "?" not in lines[1].split("ETA")[1]
    assert "100/100 steps" in lines[2] and "ETA" not in lines[2]

    s = io.StringIO()
    p = runio.Progress(100, stream=s, min_interval=3600)
    p.update(10)
    p.update(20)
    p.update(100)
    assert len(s.getvalue().splitlines()) == 2  # first and final only

    t = _TTY()
    p = runio.Progress(10, stream=t)
    p.update(5)
    p.update(10)
    assert t.getvalue().count("\r") == 2 and t.getvalue().endswith("\n")

    s = io.StringIO()
    runio.Progress(10, stream=s, enabled=False).update(10)
    assert s.getvalue() == ""


def test_run_chunked_progress_goes_to_stderr(capfd):
    loss = toy3d()
    w0 = jnp.array([0.3, 0.5, 0.4])
    chunks.run_chunked(loss, w0, 0.1, 0.01, 40, chunk=10, label="toy")
    err = capfd.readouterr().err
    assert "toy [" in err and "40/40 steps" in err


def test_experiment_modules_follow_the_contract():
    from eosflow import experiments

    entries = experiments.discover()
    for name in ("matrix-completion-bn", "norm-dynamics"):
        mod = experiments.get(name)
        assert mod.NAME == name and entries[name].module is mod
        for quick in (True, False):
            cfg = mod.default_config(quick)
            json.dumps(cfg)
            assert cfg["quick"] is quick and {"seed", "steps", "lr", "wd"} <= set(cfg)
            mod.validate_config(cfg)
    with pytest.raises(KeyError, match="unknown experiment"):
        experiments.get("nope")


def test_run_chunked_resumes_from_its_checkpoint_bit_for_bit(linreg, tmp_path):
    """Interrupted after its second chunk (the callback raises, as Ctrl-C would), a run with a
    checkpoint continues from there when called again and ends equal to an uninterrupted run,
    sharpness included; the resumed call computes only the missing chunks. A checkpoint of a run
    with other arguments is refused."""
    loss, w0 = linreg
    kw = dict(record_every=3, sharpness_every=6, chunk=96, progress=False)
    ref = chunks.run_chunked(loss, w0, 0.3, 0.02, 480, **kw)
    path = tmp_path / "run.npz"

    def stop(traj, done):
        if done == 192:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        chunks.run_chunked(loss, w0, 0.3, 0.02, 480, checkpoint=path, on_chunk=stop, **kw)
    seen = []
    got = chunks.run_chunked(loss, w0, 0.3, 0.02, 480, checkpoint=path,
                             on_chunk=lambda t, d: seen.append(d), **kw)  # fmt: skip
    assert seen == [192, 288, 384, 480]  # the loaded part is reported once, then new chunks
    for f in ("step", "w", "norm", "eff_lr", "loss", "grad_norm", "sharpness"):
        assert np.array_equal(getattr(ref, f), getattr(got, f), equal_nan=True), f
    assert np.array_equal(np.asarray(ref.w_final), np.asarray(got.w_final))
    with pytest.raises(chunks.CheckpointMismatch, match="other arguments"):
        chunks.run_chunked(loss, w0, 0.3, 0.03, 480, checkpoint=path, **kw)


def test_run_chunked_any_dynamics_with_extra_records(linreg):
    """An optax dynamics in chunks equals one simulate call, its fit residual (a per-record
    extra field) included."""
    import optax

    loss, w0 = linreg
    dyn = eosflow.from_optax(lambda lr: optax.adam(lr))
    one = eosflow.simulate(loss, w0, dynamics=dyn, hparams=0.01, steps=120, sharpness_every=10)
    ch = chunks.run_chunked(loss, w0, dynamics=dyn, hparams=0.01, steps=120, chunk=50,
                            sharpness_every=10, progress=False)  # fmt: skip
    for f in ("w", "loss", "eff_lr", "sharpness"):
        assert np.array_equal(np.asarray(getattr(one, f)), getattr(ch, f), equal_nan=True), f
    assert np.array_equal(np.asarray(one.extra["fit_residual"]), ch.extra["fit_residual"])
