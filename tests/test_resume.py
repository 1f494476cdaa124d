"""``eosflow run NAME --resume``: an interrupted run (Ctrl-C or ``kill -9``) continues from its
last saved chunk and ends with the arrays of an uninterrupted run, bit for bit (issue #13)."""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import kill_9_after_checkpoint, run_cli

# norm-dynamics at quick size, made long enough (~10 chunks) to be killed between two chunks.
ARGS = ["run", "norm-dynamics", "--quick", "--steps", "6000", "--no-plot"]


def _arrays(out):
    with np.load(out / "arrays.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    base = tmp_path_factory.mktemp("ref")
    r = run_cli([*ARGS, "--out", base / "out"], cwd=base)
    assert r.returncode == 0, r.stderr
    return _arrays(base / "out")


def test_resume_after_kill_9_equals_an_uninterrupted_run(tmp_path, uninterrupted):
    out = tmp_path / "out"
    ckpt = out / ".checkpoints" / "run.npz"
    kill_9_after_checkpoint([*ARGS, "--out", out], tmp_path, ckpt)
    assert ckpt.exists() and not (out / "arrays.npz").exists(), "killed mid-run, checkpoint saved"
    with np.load(ckpt) as z:
        done = int(z["done"])
    assert 0 < done < 6000

    again = run_cli([*ARGS, "--out", out], cwd=tmp_path)  # no --resume: refused, hint given
    assert again.returncode == 2 and "--resume" in again.stderr

    r = run_cli([*ARGS, "--out", out, "--resume"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    # The finished chunks are loaded, not recomputed: the bar starts where the kill left it.
    bars = [line for line in r.stderr.splitlines() if "/6000 steps" in line]
    assert bars and f"] {done}/6000 steps" in bars[0], bars[:2]
    got = _arrays(out)
    assert sorted(got) == sorted(uninterrupted)
    for k, v in uninterrupted.items():
        assert np.array_equal(got[k], v, equal_nan=True), k
    assert not (out / ".checkpoints").exists(), "checkpoints are removed when the run finishes"


def _cli(args, capsys):
    """``eosflow ARGS`` in this process (no interpreter start-up): ``(exit status, stderr)``."""
    from eosflow import cli

    rc = cli.main([str(a) for a in args])
    return rc, capsys.readouterr().err


def test_resume_refuses_other_settings_and_finished_runs(tmp_path, capsys):
    out = tmp_path / "out"
    rc, err = _cli([*ARGS, "--out", out, "--resume"], capsys)
    assert rc == 2 and "no interrupted run" in err
    assert not out.exists(), "a refused --resume creates nothing"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    rc, err = _cli([*ARGS, "--out", out, "--resume"], capsys)
    assert rc == 2 and "holds a finished run" in err
    (out / "summary.json").unlink()
    (out / ".checkpoints").mkdir(parents=True)
    (out / ".checkpoints" / "settings.json").write_text(
        '{"experiment": "norm-dynamics", "config": {"steps": 1}}'
    )
    rc, err = _cli([*ARGS, "--out", out, "--resume"], capsys)
    assert rc == 2 and "other settings" in err and "steps" in err
    rc, err = _cli([*ARGS, "--out", out, "--resume", "--force"], capsys)
    assert rc == 2 and "exclude" in err
    (out / ".checkpoints" / "settings.json").write_text("{not json")
    rc, err = _cli([*ARGS, "--out", out, "--resume"], capsys)
    assert rc == 2 and "cannot read" in err and len(err.strip().splitlines()) == 1


def test_force_clears_stale_checkpoints(tmp_path, capsys):
    """``--force`` over an interrupted run starts afresh: its stale checkpoint (here one of a
    run with other arguments, which ``run_chunked`` would refuse) is removed, not resumed."""
    out = tmp_path / "out"
    (out / ".checkpoints").mkdir(parents=True)
    (out / ".checkpoints" / "settings.json").write_text('{"experiment": "x", "config": {}}')
    np.savez(out / ".checkpoints" / "run.npz", fingerprint=np.asarray("another run"))
    rc, err = _cli([*ARGS, "--steps", "300", "--out", out], capsys)
    assert rc == 2 and "--resume" in err and "--force" in err
    rc, err = _cli([*ARGS, "--steps", "300", "--out", out, "--force", "--no-progress"], capsys)
    assert rc == 0, err
    assert (out / "arrays.npz").exists() and not (out / ".checkpoints").exists()


def test_force_removes_only_the_runs_own_files(tmp_path):
    """``--force`` clears an earlier run's arrays, summary, the figures its summary lists and its
    checkpoints; a PNG (or anything else) the user put in the folder stays."""
    from eosflow import run_folder

    out = tmp_path / "out"
    (out / ".checkpoints").mkdir(parents=True)
    for name in ("arrays.npz", "arrays.partial.npz", "figure3.png", "mine.png", "notes.txt"):
        (out / name).write_bytes(b"x")
    (out / "summary.json").write_text('{"figures": ["figure3.png"]}')
    (out / ".checkpoints" / "run.npz").write_bytes(b"x")
    listed = sorted(p.name for p in run_folder.run_files(out))
    assert listed == ["arrays.npz", "arrays.partial.npz", "figure3.png", "summary.json"]
    run_folder.prepare_out(out, True, False, "toy3d", {"steps": 1})
    assert sorted(p.name for p in out.iterdir()) == [".checkpoints", "mine.png", "notes.txt"]
    assert [p.name for p in (out / ".checkpoints").iterdir()] == ["settings.json"]
    with pytest.raises(run_folder.RunFolderError, match="not empty"):
        run_folder.prepare_out(out, False, False, "toy3d", {"steps": 1})


def test_a_full_disk_during_a_run_is_one_line(tmp_path, monkeypatch, capsys):
    """An ``OSError`` while saving (here: no space left, simulated) ends the command with one
    line, exit 1, not a traceback; the folder can be resumed once fixed."""
    import errno

    from eosflow import cli, runio

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runio, "save_npz", full)
    out = tmp_path / "out"
    assert cli.main([*ARGS, "--steps", "300", "--no-progress", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[0].startswith("eosflow: running"), err
    assert "No space left on device" in err[1] and "--resume" in err[1]
    assert (out / ".checkpoints" / "settings.json").exists()
