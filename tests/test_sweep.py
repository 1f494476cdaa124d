"""eosflow.sweep (eosflow.sweeps): many GD+WD runs in one compiled call (issue 6).

References are independent :func:`eosflow.simulate` runs, one per configuration. Tolerances:
sweep vs simulate and sharded vs unsharded agree to round-off, ``max_t |a_t − b_t| <= tol ·
max_t |a_t|`` per field and configuration (1e-12 and 1e-14), in the stable phase before EoS: the
batched linear algebra rounds differently from the unbatched one (XLA's kernels depend on the
batch size, ~1 ulp per step), and past EoS entry the period-two oscillation amplifies round-off
to O(1) within tens of steps, as it does between any two machines. Chunked vs unchunked and
resumed vs uninterrupted run the very same ops and must agree bit for bit, EoS included.
"""

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eosflow
from eosflow.sweeps import configurations, load_sweep, sweep, take_config

FIELDS = ("w", "theta", "norm", "eff_lr", "loss", "grad_norm", "sharpness")
LRS, WDS = [0.1, 0.2], [0.01, 0.02, 0.05]
STEPS = 150  # all six configurations are still before EoS (the earliest entry is at step 160)
KW = dict(record_every=2, sharpness_every=4)


def _problem():
    data = eosflow.make_linear_regression_data(jax.random.PRNGKey(0), n=10, d=30)
    return eosflow.linear_regression_bn(data.X, data.y)


LOSS = _problem()  # one object: the compiled programs are reused across tests
W0 = jax.random.normal(jax.random.PRNGKey(1), (30,))


def _rel(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    assert np.array_equal(np.isnan(a), np.isnan(b))
    if not np.isfinite(a).any():
        return 0.0
    return float(np.nanmax(np.abs(a - b)) / np.nanmax(np.abs(a)))


def _assert_matches_simulate(tr, b, w0, tol=1e-12, steps=STEPS, loss=LOSS, **kw):
    kw = kw or KW
    ref = eosflow.simulate(loss, w0, float(tr.lr[b]), float(tr.wd[b]), steps, **kw)
    one = take_config(tr, b)
    np.testing.assert_array_equal(one.step, ref.step)
    errs = {k: _rel(getattr(ref, k), getattr(one, k)) for k in FIELDS}
    errs["w_final"] = _rel(ref.w_final, one.w_final)
    assert max(errs.values()) <= tol, (b, errs)
    assert int(one.nonfinite_step) == -1
    return max(errs.values())


@pytest.fixture(scope="module")
def grid():
    return sweep(LOSS, W0, LRS, WDS, STEPS, progress=False, **KW)


def test_grid_sweep_equals_simulate_per_configuration(grid):
    tr = grid
    B, T = 6, STEPS // 2
    assert tr.loss.shape == (B, T) and tr.w.shape == (B, T, 30) and tr.w_final.shape == (B, 30)
    np.testing.assert_array_equal(tr.lr, np.repeat(LRS, 3))  # lr outermost
    np.testing.assert_array_equal(tr.wd, np.tile(WDS, 2))
    assert np.isfinite(tr.sharpness[:, ::2]).all() and np.isnan(tr.sharpness[:, 1::2]).all()
    worst = max(_assert_matches_simulate(tr, b, W0) for b in range(B))
    print(f"grid sweep vs simulate: max relative difference {worst:.2e}")


def test_zipped_per_config_w0_and_seeds_equal_simulate():
    lrs = np.array([0.1, 0.1, 0.15, 0.2, 0.2, 0.25])
    wds = np.array([0.01, 0.05, 0.02, 0.01, 0.03, 0.02])
    W = jax.random.normal(jax.random.PRNGKey(2), (6, 30))
    tr = sweep(LOSS, W, lrs, wds, STEPS, grid=False, progress=False, **KW)
    np.testing.assert_array_equal(tr.lr, lrs)
    for b in range(6):
        _assert_matches_simulate(tr, b, W[b])

    init = lambda key: jax.random.normal(key, (30,))
    tr = sweep(LOSS, None, LRS, 0.02, STEPS, seeds=[3, 4, 5], init_fn=init, progress=False, **KW)
    cfg = configurations(LRS, 0.02, seeds=[3, 4, 5])
    np.testing.assert_array_equal(cfg.seed, [3, 4, 5, 3, 4, 5])  # seed innermost
    for b in range(6):
        _assert_matches_simulate(tr, b, init(jax.random.PRNGKey(int(cfg.seed[b]))))


class _Stop(Exception):
    pass


def test_chunked_interrupted_and_resumed_equal_uninterrupted(grid, tmp_path):
    steps, chunk, ref = STEPS, 30, grid  # 5 chunks
    out = tmp_path / "sw"

    def stop_after_two(i, done):
        if i == 1:
            raise _Stop

    with pytest.raises(_Stop):
        sweep(LOSS, W0, LRS, WDS, steps, chunk=chunk, out_dir=out, progress=False,
              on_chunk=stop_after_two, **KW)  # fmt: skip
    saved = sorted(out.glob("chunk_*.npz"))
    assert [p.name for p in saved] == ["chunk_00000.npz", "chunk_00001.npz"]
    stamps = {p: p.stat().st_mtime_ns for p in saved}
    assert json.loads((out / "manifest.json").read_text())["config"]["chunk"] == chunk

    computed = []
    res = sweep(LOSS, W0, LRS, WDS, steps, chunk=chunk, out_dir=out, progress=False,
                on_chunk=lambda i, done: computed.append(i), **KW)  # fmt: skip
    assert computed == [2, 3, 4]  # nothing saved was recomputed
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    for k in ref._fields:
        np.testing.assert_array_equal(getattr(res, k), getattr(ref, k), err_msg=k)
    disk = load_sweep(out)
    for k in ("step", *FIELDS, "w_final", "nonfinite_step"):
        np.testing.assert_array_equal(getattr(disk, k), getattr(ref, k), err_msg=k)

    # A finished sweep resumes to the same result without computing anything.
    computed.clear()
    again = sweep(LOSS, W0, LRS, WDS, steps, chunk=chunk, out_dir=out, progress=False,
                  keep_records=False, on_chunk=lambda i, done: computed.append(i), **KW)  # fmt: skip
    assert computed == [] and again.loss.shape == (6, 0)
    np.testing.assert_array_equal(again.w_final, ref.w_final)
    # Another configuration in the same folder is refused.
    with pytest.raises(ValueError, match="different configuration.*wd"):
        sweep(LOSS, W0, LRS, [0.01, 0.02, 0.04], steps, chunk=chunk, out_dir=out, progress=False,
              **KW)  # fmt: skip


def test_bad_inputs_name_the_configuration():
    with pytest.raises(ValueError, match=r"configuration 3 \(lr=20, wd=0.06\).*lr\*wd = 1.2"):
        sweep(LOSS, W0, [0.1, 20.0], [0.01, 0.06], 10, progress=False)
    with pytest.raises(ValueError, match=r"configuration 1 \(lr=-0.1.*lr must be finite and > 0"):
        sweep(LOSS, W0, [0.1, -0.1], 0.01, 10, progress=False)
    with pytest.raises(ValueError, match="leading .*axis of size 4 but the sweep has 6 config"):
        sweep(LOSS, jnp.ones((4, 30)), LRS, WDS, 10, progress=False)
    with pytest.raises(ValueError, match="same length .* got 2 lrs and 3 wds"):
        sweep(LOSS, W0, LRS, WDS, 10, grid=False, progress=False)
    W = jnp.ones((2, 30)).at[1].set(0.0)
    with pytest.raises(ValueError, match=r"configuration 1 .*w0 is zero"):
        sweep(LOSS, W, LRS, 0.01, 10, grid=False, progress=False)
    with pytest.raises(ValueError, match="not scale-invariant"):
        sweep(lambda w: jnp.sum(w**2), W0, LRS, 0.01, 10, progress=False)
    # a shared w0 (checked once, not per row): the error is about w0 itself
    with pytest.raises(ValueError, match=r"^sweep: w0 is zero"):
        sweep(LOSS, jnp.zeros(30), LRS, 0.01, 10, progress=False)
    with pytest.raises(ValueError, match=r"^sweep: w0 contains NaN or Inf"):
        sweep(LOSS, W0.at[3].set(jnp.nan), LRS, 0.01, 10, progress=False)
    with pytest.raises(ValueError, match="multiple of record_every"):
        sweep(LOSS, W0, LRS, 0.01, 10, chunk=3, record_every=2, progress=False)
    with pytest.raises(ValueError, match="seeds needs init_fn"):
        sweep(LOSS, None, LRS, 0.01, 10, seeds=[0, 1], progress=False)
    with pytest.raises(ValueError, match="keep_records=False needs out_dir"):
        sweep(LOSS, W0, LRS, 0.01, 10, keep_records=False, progress=False)


def test_diverging_configuration_does_not_break_the_others_pytree_w0():
    # sqrt(θ_0) is NaN once θ_0 < 0: a large step crosses there at once, small ones do not.
    # w0 is a pytree {"a": (1,), "b": (2,)}, shared by the configurations.
    flat = lambda p: jnp.concatenate([p["a"], p["b"]])
    loss = eosflow.scale_invariant(lambda p: jnp.sqrt(p["a"][0]) + (p["b"][0] - 0.5) ** 2)
    w0 = {"a": jnp.array([0.5]), "b": jnp.array([0.5, 0.7])}
    steps = 40
    tr = sweep(loss, w0, [0.002, 0.3, 0.005], 0.01, steps, progress=False)
    assert tr.w_final["a"].shape == (3, 1) and tr.w_final["b"].shape == (3, 2)
    assert tr.w.shape == (3, steps, 3)  # flat, ravel_pytree order
    assert tr.nonfinite_step.tolist()[0] == -1 and tr.nonfinite_step.tolist()[2] == -1
    with pytest.raises(eosflow.NonFiniteError) as e:
        eosflow.simulate(loss, w0, 0.3, 0.01, steps)
    bad = e.value.step
    assert bad > 0 and int(tr.nonfinite_step[1]) == bad
    # Records up to `bad` as simulate's (the one at `bad` may hold the first NaN), then NaN.
    assert np.isnan(tr.loss[1, bad + 1 :]).all() and np.isfinite(tr.loss[1, :bad]).all()
    cut = take_config(tr, 1)
    for k in FIELDS:
        assert _rel(getattr(e.value.trajectory, k), getattr(cut, k)) <= 1e-12, k
    w_final = lambda b: flat(jax.tree_util.tree_map(lambda x: x[b], tr.w_final))
    np.testing.assert_array_equal(w_final(1), cut.w[-1])  # frozen at the last finite iterate
    for b in (0, 2):
        ref = eosflow.simulate(loss, w0, float(tr.lr[b]), 0.01, steps)
        for k in FIELDS:
            assert _rel(getattr(ref, k), getattr(tr, k)[b]) <= 1e-12, k
        assert _rel(flat(ref.w_final), w_final(b)) <= 1e-12


SHARDED = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np
    import eosflow
    assert eosflow.use_cpu_devices(4) == 4  # the public switch (jax_num_cpu_devices)
    eosflow.enable_x64()
    import eosflow.sweeps.batched as S
    assert jax.device_count() == 4, jax.devices()
    data = eosflow.make_linear_regression_data(jax.random.PRNGKey(0), n=10, d=30)
    loss = eosflow.linear_regression_bn(data.X, data.y)
    w0 = jax.random.normal(jax.random.PRNGKey(1), (30,))
    seen = []
    to_host = S.to_host_tree
    def spy(tree):
        seen.extend(len(x.sharding.device_set) for x in jax.tree_util.tree_leaves(tree))
        return to_host(tree)
    S.to_host_tree = spy
    kw = dict(record_every=2, sharpness_every=4, progress=False)
    a = S.sweep(loss, w0, [0.1, 0.2], [0.01, 0.02, 0.05], 150, **kw)
    b = np.load(sys.argv[1])  # the parent's single-device sweep
    out = {"devices_used": max(seen), "shape": list(a.w.shape)}
    for k in ("w", "theta", "norm", "eff_lr", "loss", "grad_norm", "sharpness", "w_final"):
        x, y = np.asarray(getattr(a, k)), b[k]
        out[k] = [float(np.nanmax(np.abs(x[i] - y[i])) / np.nanmax(np.abs(y[i]))) for i in range(6)]
        out[k + "_nan_same"] = bool(np.array_equal(np.isnan(x), np.isnan(y)))
        out[k + "_bitwise"] = bool(np.array_equal(x, y, equal_nan=True))
    out["bad_same"] = a.nonfinite_step.tolist() == b["nonfinite_step"].tolist()
    json.dump(out, sys.stdout)
    """
)


def test_use_cpu_devices_refuses_after_jax_started_and_bad_n():
    jnp.zeros(1).block_until_ready()  # JAX has started in this process (one CPU device)
    have = len(jax.devices("cpu"))
    assert eosflow.use_cpu_devices(have) == have  # asking for what is there is fine
    with pytest.raises(RuntimeError, match="right after `import eosflow`"):
        eosflow.use_cpu_devices(have + 1)
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="n must be an integer >= 1"):
            eosflow.use_cpu_devices(bad)


def test_repeated_sweep_reuses_every_compiled_program():
    """A second sweep with the same loss and shapes compiles nothing and traces nothing (no
    per-call fixed cost): the jit caches keep their sizes, the Python caches only get hits."""
    import eosflow.losses.base as B
    import eosflow.params as Pm
    import eosflow.sweeps.compiled as K
    import eosflow.sweeps.config as C

    fns = (K.sweep_chunk, C._batched_values, B._scaled_values)
    caches = (Pm._output_struct,)
    sweep(LOSS, W0, LRS, WDS, 20, progress=False)
    before = [f._cache_size() for f in fns]
    misses = [c.cache_info().misses for c in caches]
    hits = [c.cache_info().hits for c in caches]
    sweep(LOSS, W0 * 2.0, [0.3, 0.4], WDS, 20, progress=False)
    assert [f._cache_size() for f in fns] == before
    assert [c.cache_info().misses for c in caches] == misses
    assert all(c.cache_info().hits > h for c, h in zip(caches, hits, strict=True))


def test_single_cpu_device_on_a_multicore_machine_hints_once(monkeypatch):
    """One SingleDeviceWarning per process, naming eosflow.use_cpu_devices; none when the caller
    chose the devices, when the machine has one core, or for a single configuration."""
    import eosflow.sweeps.config as S

    if len(jax.devices()) != 1 or jax.devices()[0].platform != "cpu":
        pytest.skip("needs JAX's single CPU device")
    monkeypatch.setattr(S, "cpu_cores", lambda: 4)
    monkeypatch.setattr(S, "_HINTED", [])
    with pytest.warns(
        eosflow.SingleDeviceWarning, match=r"1 CPU device of a 4-core.*use_cpu_devices"
    ):
        sweep(LOSS, W0, LRS, WDS, 4, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", eosflow.SingleDeviceWarning)
        sweep(LOSS, W0, LRS, WDS, 4, progress=False)  # already hinted in this process
        monkeypatch.setattr(S, "_HINTED", [])
        sweep(LOSS, W0, LRS, WDS, 4, progress=False, devices=jax.devices())
        sweep(LOSS, W0, [0.1], [0.01], 4, progress=False)
        monkeypatch.setattr(S, "cpu_cores", lambda: 1)
        sweep(LOSS, W0, LRS, WDS, 4, progress=False)


def test_sharded_over_four_devices_equals_unsharded(grid, tmp_path):
    ref = tmp_path / "unsharded.npz"
    np.savez(
        ref, **{k: np.asarray(getattr(grid, k)) for k in (*FIELDS, "w_final", "nonfinite_step")}
    )
    env = dict(os.environ)
    env.pop("JAX_PLATFORMS", None)
    proc = subprocess.run(
        [sys.executable, "-c", SHARDED, str(ref)], env=env, capture_output=True, text=True, timeout=300,
        cwd=Path(__file__).parent,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["devices_used"] == 4  # 6 configurations padded to 8, two per device
    assert out["shape"] == [6, 75, 30]  # padding stripped
    assert out["bad_same"]
    worst = max(max(out[k]) for k in (*FIELDS, "w_final"))
    assert all(out[k + "_nan_same"] for k in (*FIELDS, "w_final"))
    assert worst <= 1e-14, out
    bitwise = all(out[k + "_bitwise"] for k in (*FIELDS, "w_final"))
    print(f"sharded vs unsharded: max relative difference {worst:.2e}, bitwise {bitwise}")


TWO_PROCESSES = textwrap.dedent(
    """
    import sys
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    pid, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=pid)
    jax.config.update("jax_enable_x64", True)
    import numpy as np, eosflow
    from eosflow.sweeps import sweep
    assert jax.process_count() == 2 and jax.device_count() == 4
    data = eosflow.make_linear_regression_data(jax.random.PRNGKey(0), n=10, d=30)
    loss = eosflow.linear_regression_bn(data.X, data.y)
    w0 = jax.random.normal(jax.random.PRNGKey(1), (30,))
    tr = sweep(loss, w0, [0.1, 0.2], [0.01, 0.02, 0.05], 150, record_every=2, sharpness_every=4,
               chunk=50, out_dir=out + "/sweep", progress=False)
    np.savez(f"{out}/result_{pid}.npz", **{k: np.asarray(getattr(tr, k)) for k in sys.argv[4:]})
    """
)


@pytest.mark.slow
def test_two_processes(grid, tmp_path):
    """jax.distributed with 2 processes x 2 CPU devices: every process returns the full result,
    equal to the single-device sweep to round-off; only process 0 writes the chunk files."""
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = str(s.getsockname()[1])
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    env.pop("JAX_PLATFORMS", None)
    fields = [*FIELDS, "w_final", "nonfinite_step"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", TWO_PROCESSES, str(i), port, str(tmp_path), *fields],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in (0, 1)
    ]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    assert sorted(p.name for p in (tmp_path / "sweep").glob("chunk_*.npz")) == [
        f"chunk_0000{i}.npz" for i in range(3)
    ]
    r0, r1 = (np.load(tmp_path / f"result_{i}.npz") for i in (0, 1))
    for k in fields:
        np.testing.assert_array_equal(r0[k], r1[k], err_msg=k)
        assert _rel(getattr(grid, k), r0[k]) <= 1e-14, k
