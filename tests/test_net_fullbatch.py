"""The ``net`` experiment (Figure 2) on the ``fullbatch`` engine through the command line
(issue 15, items 3 and 5): resumable after ``kill -9``, bit for bit, and equal to the ``closure``
engine to round-off.

The command exposes one CPU device per core (``eosflow.use_cpu_devices``), so on a machine with
>= 2 cores the fullbatch runs here split the 100 training and 100 test digits over 2 devices
(BN's statistics become cross-device reductions); the closure engine runs on one device with the
data closed over — the independent computation the sharded one is checked against.
"""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import kill_9_after_checkpoint, run_cli

STEPS = 400
SMALL = [
    "--steps", str(STEPS), "--set", "subset=10", "--set", "test_subset=10",
    "--set", "widths=[16, 16]", "--set", "no_bn_hess_every=200", "--set", "eval_every=40",
    "--set", 'runs=["bn", "no_bn"]',
]  # fmt: skip
ARGS = ["run", "net", "--quick", "--no-plot", *SMALL, "--set", "engine=fullbatch",
        "--set", "checkpoint_every=40"]  # fmt: skip
WALL = ("bn_wall_s", "no_bn_wall_s")  # wall-clock fields: the only ones allowed to differ


def _arrays(out):
    with np.load(out / "arrays.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    base = tmp_path_factory.mktemp("ref")
    r = run_cli([*ARGS, "--out", base / "out"], cwd=base)
    assert r.returncode == 0, r.stderr
    return base / "out", _arrays(base / "out"), r


def test_fullbatch_run_outputs(uninterrupted):
    """Records every 20 steps, no ``w`` kept, accuracies every 40 steps (NaN between), the
    no-BN run's plain λ1 every 200 steps, per-layer norms whose root sum of squares is ``||w||``;
    the figure draws with the NaN gaps; the checkpoints are gone after the run."""
    from eosflow.experiments import net_plots

    out, a, r = uninterrupted
    assert "fullbatch engine" in r.stderr and not (out / ".checkpoints").exists()
    assert not any(k.endswith("_w") for k in a)
    for run in ("bn", "no_bn"):
        st = a[f"{run}_step"]
        assert np.array_equal(st, np.arange(0, STEPS, 20))
        assert np.array_equal(np.isfinite(a[f"{run}_test_acc"]), st % 40 == 0)
        assert np.array_equal(np.isfinite(a[f"{run}_train_acc"]), st % 40 == 0)
        ln = a[f"{run}_layer_norm"]
        assert ln.shape == (len(st), 3) and list(a[f"{run}_layer_names"]) == [
            "Dense_0", "Dense_1", "Dense_2",
        ]  # fmt: skip
        np.testing.assert_allclose(np.sqrt((ln**2).sum(1)), a[f"{run}_norm"], rtol=1e-13)
        lr, wd = 0.1, 0.01
        np.testing.assert_allclose(
            a[f"{run}_layer_eff_lr"], lr / ((1 - lr * wd) * ln**2), rtol=1e-13
        )
        assert int(a[f"{run}_steps_done"]) == STEPS and int(a[f"{run}_nonfinite_step"]) == -1
    assert np.array_equal(np.isfinite(a["bn_sharpness"]), a["bn_step"] % 100 == 0)
    assert np.array_equal(np.isfinite(a["no_bn_hess_top"]), a["no_bn_step"] % 200 == 0)
    assert not np.isfinite(a["no_bn_sharpness"]).any()
    png = net_plots.plot(out)[0].read_bytes()
    assert len(png) > 20_000


@pytest.mark.parametrize("run", ["no_bn", pytest.param("bn", marks=pytest.mark.slow)])
def test_fullbatch_equals_the_closure_engine(uninterrupted, tmp_path, run):
    """The same run on the closure engine (data closed over, one device, ``w`` recorded and
    evaluated after the run, the no-BN λ1 by a cold-started Lanczos on each recorded ``w``):
    every shared array equal to round-off, accuracies exactly, and the same sharpness and loss
    key numbers. (The
    bn run is marked slow: ``tests/test_fullbatch.py`` checks its driver against ``simulate``.)"""
    import json

    import jax

    from eosflow.experiments import net

    out, a, _ = uninterrupted
    c = dict(net.default_config(True), steps=STEPS, subset=10, test_subset=10, widths=[16, 16],
             no_bn_hess_every=200, runs=[run], engine="closure")  # fmt: skip
    assert jax.config.read("jax_enable_x64")
    net.run(c, tmp_path / "closure", progress=False)
    b = _arrays(tmp_path / "closure")
    b.pop(f"{run}_wall_s")
    mine = {k for k in a if k.startswith(f"{run}_")}
    assert mine - set(b) == {f"{run}_{k}" for k in ("layer_norm", "layer_eff_lr", "layer_names",
                                                     "wall_s")}  # fmt: skip
    # Lanczos: warm-started (fullbatch) vs. a cold start (closure's no-BN λ1), both to tol 1e-10
    tol = {"bn_sharpness": 1e-12, "no_bn_hess_top": 1e-9}
    for k in sorted(b):
        x, y = np.asarray(a[k]), np.asarray(b[k])
        if k.endswith(("_acc", "_test_loss")):  # fullbatch: every 40 steps; closure: every record
            ok = np.isfinite(x)
            x, y = x[ok], y[ok]
        assert x.shape == y.shape and np.array_equal(np.isnan(x), np.isnan(y)), k
        if x.dtype.kind in "iu" or k.endswith("_acc"):
            assert x.dtype == y.dtype and np.array_equal(x, y), k
            continue
        rel = np.nanmax(np.abs(x - y), initial=0) / max(np.nanmax(np.abs(y), initial=0), 1e-300)
        assert rel <= tol.get(k, 1e-12), (k, rel)
    kn_a = json.loads((out / "summary.json").read_text())["key_numbers"][run]
    kn_b = json.loads((tmp_path / "closure" / "summary.json").read_text())["key_numbers"][run]
    for k, v in kn_b.items():  # accuracies (hence fit, EoS) are recorded at other steps here
        if not any(word in k for word in ("acc", "fit", "eos", "wall")):
            assert kn_a[k] == (v if not isinstance(v, float) else pytest.approx(v, rel=1e-9)), k


def test_resume_after_kill_9_equals_an_uninterrupted_run(tmp_path, uninterrupted):
    """Killed (SIGKILL) during the second run, after its first checkpoint: ``--resume`` loads the
    finished bn run and the no_bn run's last chunk, and ends with arrays bit-identical to the
    uninterrupted run's (wall-clock fields aside)."""
    _, ref, _ = uninterrupted
    out = tmp_path / "out"
    ckpt = out / ".checkpoints" / "no_bn_.npz"
    kill_9_after_checkpoint([*ARGS, "--out", out], tmp_path, ckpt)
    assert ckpt.exists() and not (out / "arrays.npz").exists(), "killed mid-run, checkpoint saved"
    with np.load(ckpt) as z:
        done = int(z["done"])
        assert int(z["rs.1"]) == done  # the RunState's step
    assert 0 < done < STEPS
    with np.load(out / ".checkpoints" / "bn_.npz") as z:
        assert int(z["done"]) == STEPS

    r = run_cli([*ARGS, "--out", out, "--resume"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    bars = [line for line in r.stderr.splitlines() if "[no_bn]" in line and f"/{STEPS} " in line]
    assert bars and f"] {done}/{STEPS} steps" in bars[0], bars[:2]
    got = _arrays(out)
    assert sorted(got) == sorted(ref)
    for k, v in ref.items():
        if k not in WALL:
            nan = v.dtype.kind == "f"
            assert got[k].dtype == v.dtype and np.array_equal(got[k], v, equal_nan=nan), k
    assert not (out / ".checkpoints").exists()


def test_fullbatch_checkpoint_of_another_run_is_refused(tmp_path):
    """A checkpoint whose fingerprint (config, run, w0, data) differs is refused, naming it."""
    from eosflow.experiments import net
    from eosflow.validation import CheckpointMismatch

    out = tmp_path / "out"
    (out / ".checkpoints").mkdir(parents=True)
    np.savez(out / ".checkpoints" / "bn_.npz", fingerprint=np.asarray("another run"))
    c = dict(net.default_config(True), steps=STEPS, subset=10, test_subset=10, widths=[16, 16],
             engine="fullbatch")  # fmt: skip
    with pytest.raises(CheckpointMismatch, match="bn_.npz holds another run"):
        net.run(c, out, progress=False)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"engine": "gpu"}, "engine"),
        ({"engine": "fullbatch", "steps": 410}, "multiple of record_every"),
        ({"checkpoint_every": 30}, "checkpoint_every"),
        ({"eval_every": 0}, "eval_every"),
        ({"remat": "all"}, "remat"),
        ({"remat": "dots"}, "needs engine 'fullbatch'"),
        ({"activation": "relu"}, "relu: resnet20 only"),
        ({"arch": "resnet20", "resnet_shortcut": "C"}, "resnet_shortcut"),
        ({"lanczos_iter": 1}, "lanczos_iter"),
    ],
)
def test_net_validate_engine_settings(change, match):
    from eosflow.experiments import net

    with pytest.raises(ValueError, match=match):
        net.validate_config({**net.default_config(True), **change})


def test_choose_devices():
    from eosflow.experiments.net_fullbatch import choose_devices

    assert choose_devices(50_000, 10_000, 8) == 8
    assert choose_devices(100, 449, 2) == 1  # digits' full test split: one device
    assert choose_devices(200, 100, 3) == 2


def test_set_null_clears_only_nullable_settings():
    """``--set subset=null`` (all the data) is accepted for the keys the experiment lists in
    ``NULLABLE``; null for a number without that is refused on one line."""
    from eosflow import cli
    from eosflow.experiments import net

    def config(*sets):
        args = cli.build_parser().parse_args(
            ["run", "net", *(a for s in sets for a in ("--set", s))]
        )
        return cli._apply_overrides("net", net.default_config(True), args)

    c = config("subset=null", "test_subset=null", "eval_every=100")
    assert c["subset"] is None and c["test_subset"] is None and c["eval_every"] == 100
    with pytest.raises(cli.UsageError, match="expected an integer"):
        config("record_every=null")
