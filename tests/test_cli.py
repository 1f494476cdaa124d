"""The ``eosflow`` command line: help, list, argument errors (exit 2, one line, no traceback),
``--force``, determinism. End-to-end runs of the experiments are in ``test_experiments.py``.

Most bad-argument cases call :func:`eosflow.cli.main` in-process (fast); two go through a real
subprocess to check the exit status and stderr of the installed module.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
from _helpers import interrupt_after_chunks, run_cli  # noqa: E402

from eosflow import cli


def assert_one_line_error(stderr: str):
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert lines[0].startswith("eosflow: error: "), lines[0]
    assert "Traceback" not in stderr


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "eosflow run matrix-completion-bn --quick" in out


def test_list_from_another_directory(tmp_path):
    """The experiments are importable from any working directory (installed, not found via cwd)."""
    r = run_cli(["list"], cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    names = [line.split()[0] for line in r.stdout.splitlines() if line.strip()]
    assert "matrix-completion-bn" in names and "norm-dynamics" in names
    assert "unavailable" not in r.stdout.split("matrix-completion-bn", 1)[1].splitlines()[0]


def test_foreign_experiments_package_in_cwd_is_ignored(tmp_path):
    """``python -m`` puts the cwd first on sys.path; the experiments live in ``eosflow.experiments``,
    so a user's own ``experiments/`` package there changes nothing."""
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "__init__.py").write_text("raise ImportError('not ours')\n")
    r = run_cli(["list"], cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "matrix-completion-bn" in r.stdout


def test_installed_script_lists(tmp_path):
    exe = shutil.which("eosflow")
    if exe is None:
        pytest.skip("the eosflow console script is not on PATH (package not installed)")
    r = subprocess.run([exe, "list"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "norm-dynamics" in r.stdout


BAD = {
    "no command": [],
    "unknown experiment": ["run", "no-such-experiment"],
    "lr*wd = 1": ["run", "norm-dynamics", "--lr", "10", "--wd", "0.1"],
    "lr*wd > 1": ["run", "norm-dynamics", "--lr", "50", "--wd", "0.1"],
    "lr = 0": ["run", "norm-dynamics", "--lr", "0"],
    "lr < 0": ["run", "norm-dynamics", "--lr", "-0.1"],
    "lr = nan": ["run", "norm-dynamics", "--lr", "nan"],
    "wd < 0": ["run", "norm-dynamics", "--wd", "-1"],
    "steps < 0": ["run", "norm-dynamics", "--steps", "-5"],
    "steps = 0": ["run", "norm-dynamics", "--steps", "0"],
    "steps not int": ["run", "norm-dynamics", "--steps", "1.5"],
    "seed < 0": ["run", "norm-dynamics", "--seed", "-1"],
    "unknown --set key": ["run", "norm-dynamics", "--set", "nope=1"],
    "--set without =": ["run", "norm-dynamics", "--set", "lr"],
    "--set wrong type": ["run", "norm-dynamics", "--set", "n=abc"],
    "experiment-specific check": ["run", "matrix-completion-bn", "--set", "rank=99"],
    "unknown option": ["run", "norm-dynamics", "--bogus"],
    "--no-wd on an experiment without ablations": ["run", "linreg-bn", "--no-wd"],
    "--dataset on an experiment without datasets": ["run", "toy3d", "--dataset", "digits"],
    "net: unknown dataset": ["run", "net", "--dataset", "mnist"],
    "net: cifar10 without --data-dir": ["run", "net", "--dataset", "cifar10"],
    "net: missing --data-dir folder": [
        "run",
        "net",
        "--dataset",
        "cifar10",
        "--data-dir",
        "/no/such/dir",
    ],
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_arguments_exit_2_one_line(case, tmp_path, capsys):
    out = tmp_path / "out"
    args = BAD[case] + (["--out", str(out)] if BAD[case][:1] == ["run"] else [])
    assert cli.main(args) == 2
    cap = capsys.readouterr()
    assert_one_line_error(cap.err)
    assert not out.exists(), "validation must happen before anything is written"


def test_existing_nonempty_folder_needs_force(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert cli.main(["run", "norm-dynamics", "--quick", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert_one_line_error(err)
    assert "--force" in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_output_path_is_a_file(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert cli.main(["run", "norm-dynamics", "--out", str(f)]) == 2
    assert_one_line_error(capsys.readouterr().err)


@pytest.mark.parametrize("case", ["unknown experiment", "lr*wd = 1"])
def test_bad_arguments_subprocess(case, tmp_path):
    r = run_cli(BAD[case] + ["--out", tmp_path / "out"], cwd=tmp_path, timeout=120)
    assert r.returncode == 2
    assert_one_line_error(r.stderr)
    assert r.stdout == ""


def test_same_seed_same_numbers_overrides_and_force(tmp_path):
    """Two runs with the same seed and settings give bit-identical arrays; the flags and --set
    reach the saved config with the default's type; ``--force`` replaces an earlier run's files
    and keeps unrelated ones."""
    out = tmp_path / "nd"
    args = ["run", "norm-dynamics", "--quick", "--steps", "600", "--lr", "0.2", "--wd", "0.005",
            "--set", "init_scale=2", "--seed", "1", "--no-plot", "--out", out]  # fmt: skip
    r1 = run_cli(args, cwd=tmp_path)
    assert r1.returncode == 0, r1.stderr
    cfg = json.loads((out / "summary.json").read_text())["config"]
    assert (cfg["steps"], cfg["lr"], cfg["wd"], cfg["init_scale"], cfg["seed"]) == (
        600,
        0.2,
        0.005,
        2.0,
        1,
    )
    assert isinstance(cfg["init_scale"], float)
    with np.load(out / "arrays.npz") as z:
        first = {k: z[k] for k in z.files}
    assert float(first["lr"]) == 0.2 and len(first["step"]) == 600
    (out / "notes.txt").write_text("keep me")
    r2 = run_cli(args, cwd=tmp_path)
    assert r2.returncode == 2  # exists, no --force
    r3 = run_cli(args + ["--force"], cwd=tmp_path)
    assert r3.returncode == 0, r3.stderr
    with np.load(out / "arrays.npz") as z:
        second = {k: z[k] for k in z.files}
    assert first.keys() == second.keys()
    for k in first:
        assert np.array_equal(first[k], second[k], equal_nan=True), k
    assert (out / "notes.txt").read_text() == "keep me"
    assert "summary:" in r3.stdout and "key numbers:" in r3.stdout


def test_interrupted_run_exits_130_and_keeps_partial_arrays(tmp_path, monkeypatch, capsys):
    """Ctrl-C during a run (simulated: KeyboardInterrupt after the second chunk is saved) exits 130,
    says where the partial arrays are, and leaves them readable."""
    from eosflow import runio

    interrupt_after_chunks(monkeypatch, 2)
    out = tmp_path / "nd"
    args = ["run", "norm-dynamics", "--quick", "--steps", "1000", "--set", "sharpness_every=0"]
    assert cli.main(args + ["--no-progress", "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and str(out / runio.PARTIAL) in err and "Traceback" not in err
    with np.load(out / runio.PARTIAL) as z:
        assert int(z["steps_done"]) == 200 and len(z["step"]) == 200
    assert not (out / runio.ARRAYS).exists()
