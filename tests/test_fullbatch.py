"""Full-batch GD+WD with the data as an argument (eosflow.fullbatch), sharded over devices
(eosflow.batch_sharding), and its memory analysis (eosflow.fullbatch_memory); issue 15.

Independent checks: the data-argument runner against ``eosflow.simulate`` on
``nets.make_net_loss`` (data closed over as a constant); per-layer norms and accuracies against
NumPy on the recorded ``w``; sharded (4 CPU devices, in a subprocess) against one device; two
processes with ``jax.distributed`` against one process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eosflow
from eosflow.batch_sharding import check_batch
from eosflow.fullbatch import (
    fullbatch_loss,
    fullbatch_run,
    fullbatch_start,
    layer_norms,
    make_fullbatch,
)
from eosflow.fullbatch_memory import residual_bytes
from eosflow.nets import MLP, VGG, make_net_loss, vgg_config

HERE = Path(__file__).parent
SRC = str(HERE.parent / "src")


def _data(n=24, shape=(4, 4, 3), k=10, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, *shape)), (np.arange(n) % k).astype(np.int32)


def _rel(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.nanmax(np.abs(a - b)) / max(np.nanmax(np.abs(a)), 1e-300))


@pytest.fixture(scope="module")
def mlp_run():
    """40 steps of GD+WD on a scale-invariant MLP: simulate (data closed over) and two calls of
    fullbatch_run (data as an argument, 20 steps each)."""
    x, y = _data()
    xt, yt = _data(12, seed=1)
    model = MLP(widths=(16, 16))
    nl = make_net_loss(model, x, y)
    tr = eosflow.simulate(nl.loss, nl.w0, 0.1, 0.01, 40, record_every=2, sharpness_every=10)
    net, w0 = make_fullbatch(model, x)
    rs, hp = fullbatch_start(w0, 0.1, 0.01)
    parts = []
    for _ in range(2):
        rs, rec = fullbatch_run(
            net, rs, hp, x, y, xt, yt, n_rec=10, record_every=2, sharpness_every=10,
            eval_every=10,
        )  # fmt: skip
        parts.append(rec)
    rec = jax.tree_util.tree_map(lambda *a: np.concatenate(a), *parts)
    return dict(nl=nl, tr=tr, net=net, w0=w0, rs=rs, rec=rec, x=x, y=y, xt=xt, yt=yt)


def test_runner_equals_simulate_with_data_closed_over(mlp_run):
    """(c) The same steps as simulate on make_net_loss: the data-argument program is the same
    computation (bitwise here; sharpness, by Lanczos, to round-off)."""
    r = mlp_run
    tr, rec = r["tr"], r["rec"]
    assert np.array_equal(np.asarray(r["w0"]), np.asarray(r["nl"].w0))
    np.testing.assert_array_equal(rec.step, tr.step)
    for k in ("loss", "norm", "eff_lr", "grad_norm"):
        assert _rel(getattr(tr, k), getattr(rec, k)) <= 1e-13, k
    assert np.array_equal(np.isnan(tr.sharpness), np.isnan(rec.sharpness))
    assert np.isnan(rec.sharpness).sum() == 16  # computed at steps 0, 10, 20, 30 only
    assert _rel(tr.sharpness, rec.sharpness) <= 1e-10
    assert _rel(tr.w_final, r["rs"].state.w) <= 1e-13
    assert int(r["rs"].step) == 40 and int(r["rs"].bad) == -1


def test_records_against_numpy(mlp_run):
    """Per-layer norms and effective LRs from simulate's recorded w by NumPy; accuracies from
    nets' own predict (training-batch BN statistics for the test data)."""
    r = mlp_run
    tr, rec, nl = r["tr"], r["rec"], r["nl"]
    assert r["net"].layers == ("Dense_0", "Dense_1", "Dense_2")
    for i, w in enumerate(np.asarray(tr.w)):
        p = nl.unravel(jnp.asarray(w))
        ref = np.array([np.linalg.norm(np.asarray(p[n]["kernel"])) for n in r["net"].layers])
        assert _rel(ref, rec.layer_norm[i]) <= 1e-12
        assert _rel(0.1 / (0.999 * ref**2), rec.layer_eff_lr[i]) <= 1e-12
        if tr.step[i] % 10 == 0:
            assert rec.train_acc[i] == float(nl.accuracy(w, r["x"], r["y"]))
            assert rec.test_acc[i] == float(nl.accuracy(w, r["xt"], r["yt"]))
        else:
            assert np.isnan(rec.train_acc[i]) and np.isnan(rec.test_acc[i])
    assert np.sqrt(np.sum(rec.layer_norm**2, axis=1)) == pytest.approx(rec.norm, rel=1e-13)


def test_loss_remat_and_vgg_against_make_net_loss():
    """fullbatch_loss (data traced) equals make_net_loss's loss (data a constant) on a small VGG,
    and remat="dots" changes neither the loss nor the gradient beyond round-off."""
    x, y = _data(16, (4, 4, 3))
    model = VGG(config=vgg_config((64, "M", 128), 0.0625))
    nl = make_net_loss(model, x, y)
    ref_v, ref_g = jax.jit(jax.value_and_grad(nl.loss))(nl.w0)
    for remat in (None, "dots"):
        net, w0 = make_fullbatch(model, x, remat=remat)
        v, g = jax.jit(jax.value_and_grad(fullbatch_loss, argnums=1), static_argnums=0)(
            net, w0, x, y
        )
        assert abs(float(v - ref_v)) <= 1e-13 * abs(float(ref_v)), remat
        assert _rel(ref_g, g) <= 1e-12, remat
    assert float(jnp.vdot(g, w0)) == pytest.approx(0.0, abs=1e-12)  # scale invariance
    assert layer_norms(net, w0).shape == (3,)


def test_remat_shrinks_the_saved_residuals():
    """The autodiff residuals of VGG-shaped nets: remat="dots" keeps about one tensor per layer
    (the conv outputs) instead of seven (BN's intermediates and Swish's)."""
    model = VGG(config=vgg_config((64, "M", 128), 0.25))
    x = jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32)
    sizes = {}
    for remat in (None, "dots"):
        net, w0 = make_fullbatch(model, x, dtype=jnp.float32, remat=remat)
        sizes[remat] = residual_bytes(net, w0, 64, (8, 8, 3))
    # dots: inputs 64*8*8*3 + w + conv outputs 64*(8*8*16 + 4*4*32) + logits, all float32
    net, w0 = make_fullbatch(model, x, dtype=jnp.float32)
    expected = 4 * (64 * 8 * 8 * 3 + w0.size + 64 * (8 * 8 * 16 + 4 * 4 * 32) + 64 * 10) + 4 * 64
    assert sizes["dots"] == expected
    assert sizes[None] > 4 * sizes["dots"]


def test_bad_input_is_named():
    x, y = _data(30)
    with pytest.raises(ValueError, match="30 examples does not split evenly over 4 devices"):
        check_batch(x, y, None, "here", n_parts=4)
    with pytest.raises(TypeError, match="labels must be integers"):
        check_batch(x, y.astype(float), None, "here")
    with pytest.raises(ValueError, match=r"labels must have shape \(30,\)"):
        check_batch(x, y[:5], None, "here")
    with pytest.raises(ValueError, match="remat must be one of"):
        make_fullbatch(MLP(), x, remat="all")
    net, w0 = make_fullbatch(MLP(widths=(4,)), x)
    rs, hp = fullbatch_start(w0, 0.1, 0.01)
    with pytest.raises(ValueError, match="eval_every=3 is not a multiple of record_every=2"):
        fullbatch_run(net, rs, hp, x, y, n_rec=1, record_every=2, eval_every=3)


SHARDED = textwrap.dedent(
    """
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_enable_x64", True)
    from eosflow.batch_sharding import batch_mesh, shard_batch
    from eosflow.fullbatch import fullbatch_loss, fullbatch_run, fullbatch_start, make_fullbatch
    from eosflow.nets import MLP, VGG, vgg_config
    assert jax.device_count() == 4
    rng = np.random.default_rng(0)
    mesh, one = batch_mesh(), jax.devices()[0]
    def rel(a, b):
        a, b = np.asarray(a), np.asarray(b)
        return float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-300))
    out = {}
    for name, model, shape in [("vgg", VGG(config=vgg_config((64, "M", 128), 0.125)), (8, 8, 3)),
                               ("mlp", MLP(widths=(16, 16)), (6,))]:
        x = rng.standard_normal((32, *shape)); y = (np.arange(32) % 10).astype(np.int32)
        net, w0 = make_fullbatch(model, x)
        vg = jax.jit(jax.value_and_grad(fullbatch_loss, argnums=1), static_argnums=0)
        xs, ys = shard_batch(mesh, x, y)
        assert len(xs.sharding.device_set) == 4 and xs.addressable_shards[0].data.shape[0] == 8
        v1, g1 = vg(net, jax.device_put(w0, one), jax.device_put(x, one), jax.device_put(y, one))
        v4, g4 = vg(net, w0, xs, ys)
        hlo = vg.lower(net, w0, xs, ys).compile().as_text()
        # sharpness (a second compile of the net's HVP, ~10 s) on the MLP only
        kw = dict(n_rec=3, sharpness_every=2 * (name == "mlp"), eval_every=2, lanczos_iter=8)
        rs, hp = fullbatch_start(jax.device_put(w0, one), 0.2, 0.01)
        rs1, r1 = fullbatch_run(net, rs, hp, jax.device_put(x, one), jax.device_put(y, one), **kw)
        rs, hp = fullbatch_start(w0, 0.2, 0.01, mesh=mesh)
        rs4, r4 = fullbatch_run(net, rs, hp, xs, ys, mesh=mesh, **kw)
        out[name] = dict(
            loss=abs(float(v1) - float(v4)) / abs(float(v1)), grad=rel(g1, g4),
            all_reduce=hlo.count("all-reduce"), w=rel(rs1.state.w, rs4.state.w),
            rec={k: rel(jnp.nan_to_num(getattr(r1, k)), jnp.nan_to_num(getattr(r4, k)))
                 for k in ("loss", "norm", "sharpness", "layer_norm", "train_acc")},
            replicated=bool(rs4.state.w.sharding.is_fully_replicated))
    try:
        shard_batch(mesh, np.zeros((30, 6)), np.zeros(30, np.int32))
    except ValueError as e:
        out["error"] = str(e)
    print(json.dumps(out))
    """
)


def _env(**extra):
    env = dict(os.environ, **extra)
    env.pop("JAX_PLATFORMS", None)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_sharded_over_four_devices_equals_one_device():
    """(a) Loss and gradient of a small VGG and an MLP with the batch split over 4 CPU devices
    equal one device's to 1e-12 relative (float64); the compiled program reduces across devices
    (all-reduce: BN's batch statistics); three GD+WD steps (with sharpness and accuracy) agree."""
    proc = subprocess.run(
        [sys.executable, "-c", SHARDED], env=_env(JAX_NUM_CPU_DEVICES="4"), capture_output=True,
        text=True, timeout=600, cwd=HERE,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for name in ("vgg", "mlp"):
        r = out[name]
        assert r["loss"] <= 1e-12 and r["grad"] <= 1e-12, (name, r)
        assert r["all_reduce"] >= 1, name
        assert r["w"] <= 1e-12 and max(r["rec"].values()) <= 1e-11, (name, r)
        assert r["replicated"]
        print(name, {k: r[k] for k in ("loss", "grad", "w", "all_reduce")}, r["rec"])
    assert "30 examples does not split evenly over 4 devices" in out["error"]


TWO_PROCESSES = textwrap.dedent(
    """
    import json, sys
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    pid, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=pid)
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp, numpy as np
    from eosflow.batch_sharding import batch_mesh, shard_batch
    from eosflow.fullbatch import fullbatch_loss, fullbatch_run, fullbatch_start, make_fullbatch
    from eosflow.nets import VGG, vgg_config
    assert jax.process_count() == 2 and jax.device_count() == 4
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 8, 8, 3)); y = (np.arange(32) % 10).astype(np.int32)
    net, w0 = make_fullbatch(VGG(config=vgg_config((64, "M", 128), 0.125)), x)
    mesh = batch_mesh()
    half = slice(16 * pid, 16 * (pid + 1))
    xs, ys = shard_batch(mesh, x[half], y[half], process_local=True)
    rs, hp = fullbatch_start(w0, 0.2, 0.01, mesh=mesh)
    vg = jax.jit(jax.value_and_grad(fullbatch_loss, argnums=1), static_argnums=0)
    v, g = vg(net, rs.state.w, xs, ys)
    rs, rec = fullbatch_run(net, rs, hp, xs, ys, n_rec=3, sharpness_every=2, lanczos_iter=8,
                            mesh=mesh)
    # to a file: a stdout pipe the parent is not reading yet would fill and block this process
    np.savez(f"{out}/result_{pid}.npz", loss=float(v), grad=np.asarray(g),
             w=np.asarray(rs.state.w), rec_loss=np.asarray(rec.loss),
             sharpness=np.nan_to_num(np.asarray(rec.sharpness)))
    """
)


@pytest.mark.slow
def test_two_processes_equal_one_process(tmp_path):
    """(b) jax.distributed on localhost, 2 processes x 2 CPU devices (gloo collectives), each
    feeding its half of the batch (make_array_from_process_local_data): loss, gradient and three
    GD+WD steps equal one process's to 1e-12 relative."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = str(s.getsockname()[1])
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", TWO_PROCESSES, str(i), port, str(tmp_path)],
            env=_env(JAX_NUM_CPU_DEVICES="2"),
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / f"err_{i}.txt").open("w"),
            cwd=HERE,
        )
        for i in (0, 1)
    ]
    for i, p in enumerate(procs):
        p.wait(timeout=900)
        assert p.returncode == 0, (tmp_path / f"err_{i}.txt").read_text()[-3000:]
    outs = [dict(np.load(tmp_path / f"result_{i}.npz")) for i in (0, 1)]
    x, y = _data(32, (8, 8, 3))
    net, w0 = make_fullbatch(VGG(config=vgg_config((64, "M", 128), 0.125)), x)
    v, g = jax.jit(jax.value_and_grad(fullbatch_loss, argnums=1), static_argnums=0)(net, w0, x, y)
    rs, hp = fullbatch_start(w0, 0.2, 0.01)
    rs, rec = fullbatch_run(net, rs, hp, x, y, n_rec=3, sharpness_every=2, lanczos_iter=8)
    for o in outs:
        assert abs(float(o["loss"]) - float(v)) <= 1e-12 * abs(float(v))
        assert _rel(g, o["grad"]) <= 1e-12
        assert _rel(rs.state.w, o["w"]) <= 1e-12
        assert _rel(rec.loss, o["rec_loss"]) <= 1e-12
        assert _rel(np.nan_to_num(rec.sharpness), o["sharpness"]) <= 1e-11
    for k in outs[0]:
        np.testing.assert_array_equal(outs[0][k], outs[1][k], err_msg=k)
