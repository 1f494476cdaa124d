"""The ``eosflow`` command: list and run the paper's experiments (:mod:`eosflow.experiments`).

``eosflow list`` shows the experiments; ``eosflow run NAME`` runs one, with a progress bar on
stderr, and writes to its output folder (default ``runs/NAME``, ``runs/NAME-quick`` with
``--quick``): ``arrays.npz``, ``summary.json`` and PNG figures. ``eosflow run NAME --help`` lists
the experiment's settings (``--set KEY=VALUE``) with their defaults. Every run is in float64
(:func:`eosflow.enable_x64` is called first, and :func:`eosflow.use_cpu_devices` so that sweeps
use every core) and deterministic: the same seed and settings give the
same numbers.

Bad arguments (unknown experiment, ``lr <= 0``, ``lr·wd >= 1``, ``steps < 1``, an output folder
that exists and is not empty without ``--force`` or cannot be written, a missing or corrupt data
file, ...) print one line on stderr and exit with status 2. A run that diverges exits 1; an
interrupted one (Ctrl-C, or killed) leaves the chunks finished so far in ``arrays.partial.npz``
and its checkpoints in ``.checkpoints/``; Ctrl-C exits 130 and prints the command that continues
it: the same one with ``--resume``, which goes on from the last saved chunk and ends with the
arrays an uninterrupted run would have written.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from pathlib import Path

import eosflow
from eosflow import experiments
from eosflow.data import DataError
from eosflow.run_folder import RunFolderError, forget_run, prepare_out
from eosflow.runio import ARRAYS, PARTIAL, SUMMARY, save_json
from eosflow.validation import CheckpointMismatch

__all__ = ["main", "build_parser"]

EPILOG = """\
examples:
  eosflow list
  eosflow run linreg-bn --help                      # its settings (--set KEY=VALUE), defaults
  eosflow run matrix-completion-bn --quick          # ~35 s on 2 CPU cores -> runs/matrix-completion-bn-quick
  eosflow run matrix-completion-bn                  # full size -> runs/matrix-completion-bn
  eosflow run norm-dynamics --lr 0.2 --wd 0.005 --steps 5000 --out runs/nd-lr0.2
  eosflow run matrix-completion-bn --quick --seed 3 --set init_scale=0.05 --force

Each run writes arrays.npz, summary.json (config, seed, versions, device, wall time, key numbers)
and PNG figures to its folder. Bad arguments exit with status 2.
"""


class UsageError(Exception):
    """A bad command line: reported on one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print usage + message and exit
        raise UsageError(message)


def settings_help(name: str) -> str:
    """The ``--set`` keys of experiment ``name`` with their defaults (as JSON, the form ``--set``
    takes) and, where it differs, the ``--quick`` value; for an unknown ``name``, a line saying
    so."""
    try:
        module = experiments.get(name)
    except KeyError as e:
        return f"{e.args[0]}\n\n"
    full, quick = module.default_config(False), module.default_config(True)
    rows = [
        (key, json.dumps(value), "" if quick.get(key) == value else json.dumps(quick.get(key)))
        for key, value in full.items()
        if key != "quick"
    ]
    width = max((len(k) + len(v) for k, v, _ in rows), default=0) + 3
    lines = [
        f"{name}: {experiments.discover()[name].description}",
        "",
        f"settings of {name} (--set KEY=VALUE, VALUE as JSON; the default, and the --quick value",
        "where it differs; --steps/--lr/--wd/--seed set those keys too):",
    ]
    for key, value, q in rows:
        text = f"{key} = {value}"
        lines.append(f"  {text:<{width}}  (--quick: {q})" if q else f"  {text}")
    return "\n".join(lines) + "\n\n"


def _help_target(argv: list[str]) -> str | None:
    """The NAME of ``eosflow run NAME ... --help`` (wherever the options are), else ``None``."""
    if not {"-h", "--help"} & set(argv):
        return None
    rest = [a for a in argv if a not in ("-h", "--help")]
    try:
        args, _ = build_parser().parse_known_args(rest)
    except (UsageError, SystemExit):
        return None
    return args.name if args.command == "run" else None


def build_parser(help_for: str | None = None) -> argparse.ArgumentParser:
    """The argument parser (subcommands ``list`` and ``run``); ``help_for`` names an experiment
    whose settings ``run --help`` lists (:func:`settings_help`)."""
    p = _Parser(
        prog="eosflow",
        description="Reproduce the experiments of Lyu, Li & Arora (2022), 'Understanding the "
        "Generalization Benefit of Normalization Layers: Sharpness Reduction'.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"eosflow {eosflow.__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    sub.add_parser(
        "list",
        help="list the experiments",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r = sub.add_parser(
        "run",
        help="run one experiment",
        description="Run one experiment: compute, save arrays.npz and summary.json, draw figures.\n"
        "'eosflow run NAME --help' lists the settings of experiment NAME.",
        epilog=(settings_help(help_for) if help_for else "") + EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("name", metavar="NAME", help="experiment name (see 'eosflow list')")
    r.add_argument("--quick", action="store_true", help="small, fast version (<= 60 s on 2 cores)")
    r.add_argument("--steps", type=int, help="number of GD steps")
    r.add_argument("--lr", type=float, help="learning rate η̂ (> 0)")
    r.add_argument("--wd", type=float, help="weight decay λ̂ (>= 0, lr*wd < 1)")
    r.add_argument("--seed", type=int, help="random seed (data and initialization)")
    r.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config entry (value parsed as JSON), repeatable",
    )
    r.add_argument("--dataset", help="dataset (experiments with a 'dataset' setting, e.g. net)")
    r.add_argument("--arch", help="architecture (experiments with an 'arch' setting, e.g. net)")
    r.add_argument("--data-dir", dest="data_dir", help="data folder (e.g. CIFAR-10 for net)")
    r.add_argument(
        "--no-wd",
        dest="no_wd",
        action="store_true",
        help="run only the no-weight-decay ablation (experiments with 'runs')",
    )
    r.add_argument(
        "--no-bn",
        dest="no_bn",
        action="store_true",
        help="run only the no-BatchNorm ablation (experiments with 'runs')",
    )
    r.add_argument("--out", type=Path, help="output folder (default runs/NAME[-quick])")
    r.add_argument(
        "--force",
        action="store_true",
        help="write into an existing non-empty folder (replacing earlier run files)",
    )
    r.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run in --out from its last saved chunk (same settings)",
    )
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument("--no-plot", action="store_true", help="skip the figures")
    return p


# ----------------------------------------------------------------------------- config checks


def _coerce(key: str, value, default):
    """Give an override the type of the default (int/float/bool/str), or raise UsageError."""
    if default is None or isinstance(default, list | dict):
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise UsageError(f"--set {key}: expected true or false, got {value!r}")
    if isinstance(default, int):
        if isinstance(value, bool) or not (
            isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        ):
            raise UsageError(f"--set {key}: expected an integer, got {value!r}")
        return int(value)
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise UsageError(f"--set {key}: expected a number, got {value!r}")
        return float(value)
    return str(value)


def _apply_overrides(name: str, config: dict, args) -> dict:
    config = dict(config)
    given = {"steps": args.steps, "lr": args.lr, "wd": args.wd, "seed": args.seed}
    for key in ("dataset", "arch", "data_dir"):
        given[key] = getattr(args, key, None)
    for key, value in given.items():
        if value is None:
            continue
        if key not in config:
            raise UsageError(f"experiment {name!r} has no --{key.replace('_', '-')} setting")
        config[key] = value
    ablations = [r for r, on in (("no_wd", getattr(args, "no_wd", False)),
                                 ("no_bn", getattr(args, "no_bn", False))) if on]  # fmt: skip
    if ablations:
        if "runs" not in config:
            raise UsageError(f"experiment {name!r} has no ablations (--no-wd/--no-bn)")
        config["runs"] = ablations
    for item in args.overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--set expects KEY=VALUE, got {item!r}")
        if key not in config:
            raise UsageError(
                f"experiment {name!r} has no setting {key!r}; settings: {', '.join(config)}"
            )
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        if value is None and key in getattr(experiments.get(name), "NULLABLE", ()):
            config[key] = None  # e.g. net's subset=null: all the data
        else:
            config[key] = _coerce(key, value, config[key])
    return config


def _check_config(config: dict) -> None:
    """The checks every experiment shares: steps, lr, wd (eq. (1) needs 0 <= lr·wd < 1)."""
    if "steps" in config:
        s = config["steps"]
        if isinstance(s, bool) or not isinstance(s, int) or s < 1:
            raise UsageError(f"steps must be a positive integer, got {s!r}")
    if "seed" in config:
        s = config["seed"]
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise UsageError(f"seed must be a non-negative integer, got {s!r}")
    lr, wd = config.get("lr"), config.get("wd")
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise UsageError(f"lr must be a finite number > 0, got {lr!r}")
    if wd is not None and not (math.isfinite(wd) and wd >= 0):
        raise UsageError(f"wd must be a finite number >= 0, got {wd!r}")
    if lr is not None and wd is not None and not lr * wd < 1:
        raise UsageError(
            f"need lr*wd < 1 (eq. (1) multiplies w by 1 - lr*wd each step), got lr*wd = {lr * wd:g}"
        )


# ----------------------------------------------------------------------------- commands


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    items = []
    for k, v in d.items():
        if isinstance(v, dict):
            items += _flatten(v, f"{prefix}{k}.")
        else:
            items.append((f"{prefix}{k}", v))
    return items


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "—" if v is None else str(v)


def _cmd_list() -> int:
    entries = experiments.discover()
    if not entries:
        print("no experiments found")
        return 0
    width = max(len(n) for n in entries)
    for name, entry in entries.items():
        print(f"{name:<{width}}  {entry.description}")
    return 0


def _cmd_run(args, argv: list[str] | None = None) -> int:
    try:
        module = experiments.get(args.name)
    except KeyError as e:
        raise UsageError(e.args[0]) from None
    config = _apply_overrides(args.name, module.default_config(args.quick), args)
    _check_config(config)
    validate = getattr(module, "validate_config", None)
    if validate is not None:
        try:
            validate(config)
        except (ValueError, TypeError, KeyError, DataError) as e:
            raise UsageError(f"bad settings for {args.name}: {e}") from None
    out = args.out or Path("runs") / (args.name + ("-quick" if args.quick else ""))
    try:
        created = prepare_out(out, args.force, args.resume, args.name, config)
    except RunFolderError as e:
        raise UsageError(str(e)) from None

    mode = "quick" if args.quick else "full"
    print(f"eosflow: running {args.name} ({mode}) -> {out}", file=sys.stderr)
    try:
        key_numbers = module.run(config, out, progress=not args.no_progress)
    except DataError as e:
        forget_run(out, created)
        raise UsageError(f"bad data for {args.name}: {e}") from None
    except KeyboardInterrupt:
        partial = out / PARTIAL
        where = f"; chunks saved so far are in {partial}" if partial.exists() else ""
        again = list(argv) if argv is not None else sys.argv[1:]
        again = [a for a in again if a != "--force"] + ([] if "--resume" in again else ["--resume"])
        if args.out is None:
            again += ["--out", str(out)]
        print(f"eosflow: interrupted{where}; continue with: eosflow {shlex.join(again)}",
              file=sys.stderr)  # fmt: skip
        return 130
    except CheckpointMismatch as e:
        raise UsageError(f"{e}; with the eosflow command: --force starts over") from None
    except eosflow.NonFiniteError as e:
        forget_run(out, False)  # resuming would diverge again
        print(f"eosflow: error: the run diverged: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    except OSError as e:  # e.g. the disk filled up while saving
        print(
            f"eosflow: error: cannot write the results to {out}: {e.strerror or e}; what was "
            "saved before is kept (continue with --resume once this is fixed)",
            file=sys.stderr,
        )
        return 1

    if not args.no_plot and not args.no_progress:
        print(f"eosflow: drawing the figures of {args.name} ...", file=sys.stderr, flush=True)
    figures = [] if args.no_plot else [Path(p) for p in module.plot(out)]
    summary_path = out / SUMMARY
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        summary["figures"] = [p.name for p in figures]
        save_json(summary_path, summary)

    print(f"summary: {summary_path}")
    print(f"arrays:  {out / ARRAYS}")
    for p in figures:
        print(f"figure:  {p}")
    print("key numbers:")
    for k, v in _flatten(key_numbers or {}):
        print(f"  {k} = {_fmt(v)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``eosflow`` command. Returns the exit status."""
    try:  # sweeps (phase-diagram) shard over the CPU cores; a no-op once JAX has started
        eosflow.use_cpu_devices()
    except RuntimeError:
        pass
    eosflow.enable_x64()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        parser = build_parser(help_for=_help_target(argv))
        args = parser.parse_args(argv)
        if args.command == "list":
            return _cmd_list()
        if args.command == "run":
            return _cmd_run(args, argv)
        parser.print_help()
        return 2
    except UsageError as e:
        msg = " ".join(str(e).split())
        print(f"eosflow: error: {msg} (see 'eosflow --help')", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
