"""Problems new users reported, each with a test that fails without its fix: output permissions
under the umask, an unwritable ``--out``, a broken CIFAR-10 folder, float32 in the theory
routines, the README's experiment table, per-experiment ``run NAME --help``, messages that name
the values they compare, and progress lines for every long phase of a run."""

from __future__ import annotations

import os
import stat
from contextlib import nullcontext as _nullcontext

import numpy as np
import pytest
from _helpers import run_cli

from eosflow import cli, run_folder, runio

# --- output files follow the umask ---------------------------------------------------------------


def _writers(folder):
    return {
        "save_npz": lambda: runio.save_npz(folder / "a.npz", x=np.arange(3)),
        "save_json": lambda: runio.save_json(folder / "s.json", {"a": 1}),
        "save_bytes": lambda: runio.save_bytes(folder / "f.png", b"\x89PNG"),
    }


@pytest.mark.parametrize("umask, expect", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_saved_files_get_the_umask_permissions(tmp_path, umask, expect):
    """``mkstemp`` creates 0600 files; the atomic writers must give what ``open`` would give."""
    old = os.umask(umask)
    try:
        for name, write in _writers(tmp_path).items():
            mode = stat.S_IMODE(write().stat().st_mode)
            assert mode == expect, f"{name}: {oct(mode)} under umask {oct(umask)}"
    finally:
        os.umask(old)


def test_current_umask_without_proc_matches_and_is_restored(tmp_path, monkeypatch):
    """The fallback (no ``/proc``) reads the same umask and leaves it as it was."""
    import builtins

    real_open = builtins.open

    def no_proc(file, *args, **kwargs):
        if str(file).startswith("/proc/"):
            raise FileNotFoundError(file)
        return real_open(file, *args, **kwargs)

    old = os.umask(0o027)
    try:
        assert runio._current_umask() == 0o027
        monkeypatch.setattr(builtins, "open", no_proc)
        assert runio._current_umask() == 0o027
        assert os.umask(0o027) == 0o027  # still set after the fallback's set-and-restore
    finally:
        os.umask(old)


# --- --out that cannot be written: one line, exit 2, before computing ----------------------------


def _one_line_error(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert lines[0].startswith("eosflow: error: ") and "Traceback" not in stderr, stderr
    return lines[0]


def _no_run(monkeypatch):
    """Make every experiment's ``run`` fail the test if it is called (nothing may compute)."""
    from eosflow.experiments import toy3d

    def run(*args, **kwargs):
        raise AssertionError("the run started although the output folder is not writable")

    monkeypatch.setattr(toy3d, "run", run)


def test_out_under_a_regular_file_subprocess(tmp_path):
    """A real unwritable path even for root: a folder below a regular file."""
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "out"
    r = run_cli(["run", "toy3d", "--quick", "--out", out], cwd=tmp_path, timeout=120)
    assert r.returncode == 2, r.stderr
    line = _one_line_error(r.stderr)
    assert str(out) in line and "cannot write" in line
    assert "running" not in r.stderr


def test_read_only_out_folder(tmp_path, monkeypatch, capsys):
    """A read-only existing folder (only where permissions bind: not as root)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as root: a read-only mode does not stop writes")
        _no_run(monkeypatch)
        assert cli.main(["run", "toy3d", "--quick", "--out", str(ro / "out")]) == 2
        assert str(ro / "out") in _one_line_error(capsys.readouterr().err)
    finally:
        ro.chmod(0o755)


def test_read_only_file_system_reported_before_computing(tmp_path, monkeypatch, capsys):
    """EROFS (the user's report) from the probe file: one line naming the folder, no run, exit 2."""
    import errno
    import tempfile

    def erofs(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    _no_run(monkeypatch)
    monkeypatch.setattr(tempfile, "mkstemp", erofs)
    out = tmp_path / "out"
    assert cli.main(["run", "toy3d", "--quick", "--out", str(out)]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert str(out) in line and "Read-only file system" in line


def test_writable_out_is_left_clean(tmp_path, monkeypatch):
    """The probe file is removed; a writable folder passes the check and holds only the run's
    settings (for --resume)."""
    out = tmp_path / "new" / "out"
    assert run_folder.prepare_out(out, False, False, "toy3d", {"steps": 1}) is True
    assert out.is_dir() and [p.name for p in out.iterdir()] == [".checkpoints"]
    assert [p.name for p in (out / ".checkpoints").iterdir()] == ["settings.json"]
    assert run_folder.prepare_out(out, True, False, "toy3d", {"steps": 1}) is False  # exists now


# --- a broken CIFAR-10 folder: one line, exit 2 -------------------------------------------------


def _fake_cifar(root):
    """Six small, valid CIFAR-10 batch files in ``root``."""
    import pickle

    from eosflow.data import CIFAR10_FILES

    root.mkdir()
    rng = np.random.default_rng(0)
    for name in CIFAR10_FILES:
        batch = {b"data": rng.integers(0, 256, (10, 3072), dtype=np.uint8),
                 b"labels": list(range(10))}  # fmt: skip
        (root / name).write_bytes(pickle.dumps(batch, protocol=2))
    return root


def _net_cifar(data_dir, out):
    return ["run", "net", "--quick", "--dataset", "cifar10", "--data-dir", data_dir,
            "--steps", "100", "--no-plot", "--out", out]  # fmt: skip


def test_cifar_missing_batch_file_one_line(tmp_path, capsys):
    root = _fake_cifar(tmp_path / "cifar")
    (root / "data_batch_4").unlink()
    out = tmp_path / "out"
    assert cli.main([str(a) for a in _net_cifar(root, out)]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "data_batch_4" in line and "missing" in line
    assert not out.exists(), "a missing file is found before anything is written"


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_cifar_corrupt_batch_file_one_line(tmp_path, damage):
    root = _fake_cifar(tmp_path / "cifar")
    bad = root / "data_batch_2"
    if damage == "truncated":
        bad.write_bytes(bad.read_bytes()[:500])
    else:
        bad.write_bytes(b"\x00garbage" * 100)
    out = tmp_path / "out"
    r = run_cli(_net_cifar(root, out), cwd=tmp_path, timeout=300)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("eosflow: error: ")]
    assert len(errors) == 1 and r.stderr.strip().splitlines()[-1] == errors[0], r.stderr
    assert str(bad) in errors[0] and "not a readable python pickle" in errors[0]
    assert not out.exists(), "the empty output folder made for the run is removed"


def test_data_errors_are_also_the_builtin_exceptions(tmp_path):
    from eosflow.data import DataError, DataFileNotFoundError, DataFormatError, load_cifar10

    root = _fake_cifar(tmp_path / "cifar")
    (root / "test_batch").write_bytes(b"")
    with pytest.raises(DataFormatError, match="test_batch") as e:
        load_cifar10(root)
    assert isinstance(e.value, ValueError) and isinstance(e.value, DataError)
    (root / "test_batch").unlink()
    with pytest.raises(DataFileNotFoundError, match="test_batch") as e:
        load_cifar10(root)
    assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, DataError)


# --- float32 in the theory routines: a warning, and a manifold error that says why ----------------


@pytest.fixture
def fresh_float32_warning(monkeypatch):
    """Forget that the once-per-process warning was shown."""
    from eosflow import precision

    monkeypatch.setitem(precision._warned, "float32", False)


def _toy_point(dtype):
    import jax.numpy as jnp

    import eosflow

    loss = eosflow.toy3d()
    theta = jnp.asarray([0.5, 0.8, 0.3], dtype)  # near, not on, the circle of minimizers
    return loss, theta / jnp.linalg.norm(theta)


def _call(routine, loss, theta):
    import jax

    import eosflow

    if routine == "project_to_manifold":
        return eosflow.project_to_manifold(loss, theta)
    if routine == "local_geometry":
        return eosflow.local_geometry(loss, theta)
    if routine == "eos_init":
        return eosflow.eos_init(loss, theta, 0.1, 0.01, 1e-3, jax.random.PRNGKey(0))
    if routine == "oscillation":
        traj = eosflow.simulate(loss, theta, 0.1, 0.01, 5)
        return eosflow.oscillation(loss, traj)
    with pytest.raises(ValueError):  # sharpness_reduction_flow: theta is off the manifold
        eosflow.sharpness_reduction_flow(loss, theta, 1.0)


ROUTINES = ["project_to_manifold", "local_geometry", "eos_init", "oscillation",
            "sharpness_reduction_flow"]  # fmt: skip


@pytest.mark.parametrize("routine", ROUTINES)
def test_float32_warns_once_with_the_fix(routine, fresh_float32_warning):
    import warnings

    import eosflow

    assert issubclass(eosflow.Float32Warning, UserWarning)
    assert "Float32Warning" in eosflow.__all__
    loss, theta = _toy_point(np.float32)
    with pytest.warns(eosflow.Float32Warning, match=r"enable_x64|float64 arrays") as rec:
        _call(routine, loss, theta)
    found = [w for w in rec if issubclass(w.category, eosflow.Float32Warning)]
    assert len(found) == 1 and routine in str(found[0].message)
    assert found[0].filename == __file__, "the warning points at the caller's line"
    with warnings.catch_warnings():
        warnings.simplefilter("error", eosflow.Float32Warning)
        _call(routine, loss, theta)  # once per process: no second warning
        eosflow.project_to_manifold(loss, theta)


@pytest.mark.parametrize("routine", ROUTINES)
def test_float64_does_not_warn(routine, fresh_float32_warning):
    import warnings

    import eosflow

    loss, theta = _toy_point(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", eosflow.Float32Warning)
        _call(routine, loss, theta)


def test_manifold_error_names_float32_only_in_float32(fresh_float32_warning):
    import eosflow

    for dtype, says_float32 in ((np.float64, False), (np.float32, True)):
        loss, theta = _toy_point(dtype)
        with pytest.warns() if says_float32 else _nullcontext():
            with pytest.raises(ValueError, match="not on the minimizer manifold") as e:
                eosflow.sharpness_reduction_flow(loss, theta, 1.0)
        msg = str(e.value)
        assert ("float32" in msg) is says_float32, msg
        assert ("enable_x64" in msg) is says_float32, msg
        assert "project_to_manifold" in msg


def test_readme_example_in_float32_warns_at_the_projection(fresh_float32_warning):
    """The README's steps on float32 arrays: the projection already warns, then the flow's
    manifold check fails (the user's report: float32 cannot reach its tolerances) and says so."""
    import jax.numpy as jnp

    import eosflow

    loss = eosflow.scale_invariant(lambda w: (2.0 + w[2]) * (w[0] - 0.5) ** 2)
    theta = jnp.asarray([0.52, 0.8, -0.2], jnp.float32)
    with pytest.warns(eosflow.Float32Warning, match="project_to_manifold"):
        zeta0 = eosflow.project_to_manifold(loss, theta).point
    assert zeta0.dtype == jnp.float32
    with pytest.raises(ValueError, match="not on the minimizer manifold") as e:
        eosflow.sharpness_reduction_flow(loss, zeta0, 0.01, num_saves=3)
    assert "float32" in str(e.value) and "enable_x64" in str(e.value)


# --- messages that compare two settings name both values --------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["matrix-completion-bn", "--steps", "50", "--set", "record_every=100"],
         "steps (50) must be >= record_every (100)"),
        (["net", "--steps", "50"], "steps (50) must be >= sharpness_every (100)"),
        (["rmsprop", "--steps", "50", "--set", "sharpness_every=20", "--set", "record_every=10"],
         "steps (50) must be >= 4 * sharpness_every (80)"),
        (["toy3d", "--set", "record_every=3"], "must be a multiple of record_every (3)"),
    ],
)  # fmt: skip
def test_comparison_errors_name_both_values(args, message, tmp_path, capsys):
    assert cli.main(["run", *args, "--quick", "--out", str(tmp_path / "out")]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert message in line, line


# --- eosflow run NAME --help lists NAME's settings ----------------------------------------------


def _help(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as e:
        cli.main(["run", *argv])
    assert e.value.code == 0
    return capsys.readouterr().out


def test_run_name_help_lists_every_setting_with_defaults(capsys):
    import json

    from eosflow import experiments

    names = experiments.names()
    assert len(names) >= 8
    for name in names:
        text = _help(capsys, name, "--help")
        assert f"settings of {name}" in text and "examples:" in text
        full = experiments.get(name).default_config(False)
        quick = experiments.get(name).default_config(True)
        lines = text.splitlines()
        for key, value in full.items():
            if key == "quick":
                continue
            row = [ln for ln in lines if ln.strip().startswith(f"{key} = ")]
            assert len(row) == 1, (name, key, text)
            assert row[0].split(f"{key} = ", 1)[1].startswith(json.dumps(value)), row[0]
            if quick[key] != value:
                assert row[0].endswith(f"(--quick: {json.dumps(quick[key])})"), row[0]
            else:
                assert "--quick" not in row[0], row[0]


def test_run_help_settings_wherever_help_and_name_are(capsys):
    for argv in (["--quick", "--out", "x", "linreg-bn", "-h"], ["-h", "linreg-bn"],
                 ["linreg-bn", "--set", "n=50", "--help"]):  # fmt: skip
        text = _help(capsys, *argv)
        assert "settings of linreg-bn" in text and "steps = 10000" in text, argv
        assert "(--quick: 3000)" in text
    generic = _help(capsys, "--help")
    assert "steps = " not in generic and "eosflow run NAME --help" in generic
    assert "unknown experiment 'nope'" in _help(capsys, "nope", "--help")


# --- the README's table lists every experiment --------------------------------------------------


def _readme_experiment_rows() -> dict[str, str]:
    """``{NAME: row}`` of the table under the README's "## The experiments" heading."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = text.split("## The experiments", 1)[1].split("\n## ", 1)[0]
    rows = [ln for ln in section.splitlines() if ln.startswith("| `")]
    return {row.split("`")[1]: row for row in rows}


def test_readme_table_has_every_listed_experiment(capsys):
    assert cli.main(["list"]) == 0
    listed = [ln.split()[0] for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    assert "phase-diagram" in listed and "rmsprop" in listed
    rows = _readme_experiment_rows()
    assert sorted(rows) == sorted(listed), "README table and 'eosflow list' differ"
    for row in rows.values():
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 3 and all(cells), row  # NAME, paper, what it shows


# --- every long phase of a run says so on stderr ----------------------------------------------------

LINREG_PHASES = [
    "linreg-bn: data (n=40, d=200), then GD+WD, 3000 steps",
    "linreg-bn [",  # run_chunked's bar
    "linreg-bn: projection of θ at EoS entry",
    "linreg-bn: sharpness-reduction flow (3) up to τ =",
    "linreg-bn: tracking: Φ(θ_t) against the flow",
    "linreg-bn tracking [",
    "linreg-bn: Φ(θ_t) at 300 steps (every 10)",
    "linreg-bn Φ(θ_t) [",
    "linreg-bn: oscillation at EoS",
    "linreg-bn oscillation [",
    "linreg-bn: contrast: GD with wd = 0, 3000 steps",
    "linreg-bn contrast [",
]


@pytest.mark.slow  # ~40 s subprocess run of linreg-bn --quick; phase()/bar() are tested below
def test_linreg_quick_names_each_phase_in_order(tmp_path):
    """The user's report: ~14 s of the run were silent. Every phase now starts with a line, and
    the ones made of steps or points draw a bar (plain lines: stderr is not a terminal)."""
    out = tmp_path / "out"
    r = run_cli(["run", "linreg-bn", "--quick", "--out", out], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    err = r.stderr
    at = -1
    for text in LINREG_PHASES:
        i = err.find(text, at + 1)
        assert i > at, f"{text!r} missing or out of order in:\n{err}"
        at = i
    assert "eosflow: drawing the figures of linreg-bn" in err
    assert "300/300 points" in err and "Traceback" not in err


def test_no_progress_silences_phase_lines_and_bars(tmp_path, capsys):
    out = tmp_path / "out"
    args = ["run", "norm-dynamics", "--quick", "--steps", "300", "--no-progress", "--out", str(out)]
    assert cli.main(args) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"eosflow: running norm-dynamics (quick) -> {out}"], err


def test_phase_and_bar_helpers(capsys):
    from eosflow.experiments._common import bar, phase

    phase("x", "step one", enabled=False)
    b = bar("x pts", enabled=False)
    b(0, 4)
    b(4, 4)
    assert capsys.readouterr().err == ""
    phase("x", "step one")
    b = bar("x pts")
    b(0, 4)
    b(4, 4)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "x: step one ..."
    assert len(lines) == 2 and lines[1].startswith("x pts [") and "4/4 points" in lines[1]


def test_project_points_batches_and_reports(monkeypatch):
    """Padded batches give the same points as one projection each; progress sees 0..total."""
    import jax
    import jax.numpy as jnp

    import eosflow
    from eosflow.analysis import project_points

    loss = eosflow.toy3d()
    thetas = np.array(jax.random.normal(jax.random.PRNGKey(3), (7, 3)))
    thetas /= np.linalg.norm(thetas, axis=1, keepdims=True)
    thetas = 0.9 * thetas + 0.1 * np.asarray([-1.0, 0.0, 0.0])  # towards the curve
    calls = []
    got = project_points(loss, thetas, batch=3, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(0, 7), (3, 7), (6, 7), (7, 7)]
    want = np.stack([np.asarray(eosflow.project_to_manifold(loss, jnp.asarray(t)).point)
                     for t in thetas])  # fmt: skip
    np.testing.assert_allclose(got, want, atol=1e-12)
    assert project_points(loss, thetas[:0]).shape == (0, 3)
