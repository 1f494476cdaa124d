"""Figure 2's runs on the ``fullbatch`` engine: :func:`eosflow.fullbatch.fullbatch_run` in
checkpointed chunks, the data sharded over the devices. Not an experiment itself (no ``NAME``);
:mod:`eosflow.experiments.net` calls :func:`train_fullbatch` for each run when
``engine="fullbatch"`` (the default for CIFAR-10).

What it does differently from the ``closure`` engine (:func:`eosflow.chunks.run_chunked` on
:func:`eosflow.nets.make_net_loss`):

* the training and test data are *arguments* of the compiled program, split along the batch axis
  over ``d`` devices (:mod:`eosflow.batch_sharding`), ``d`` the largest number of the devices JAX
  sees that divides both the training and the test set size (BN's full-batch statistics allow no
  padding): all 8 GPUs for CIFAR-10's 50,000/10,000 images; a note on stderr when fewer are used;
* no ``w`` is kept: the records are those of :class:`eosflow.fullbatch.FullBatchRecords` (loss,
  ``||w||``, ``η̃``, per-layer norms and effective LRs, sharpness by warm-started Lanczos on the
  full batch every ``sharpness_every`` steps, train/test accuracy and test loss every
  ``eval_every`` steps, NaN in between), so memory does not grow with the run;
* the no-BN ablation's plain ``λ1(∇²L(w_t))`` is taken *during* the run (driver geometry
  ``"plain"``, Lanczos warm-started from the previous one) every ``no_bn_hess_every`` steps.

**Checkpoints.** After every chunk of ``checkpoint_every`` steps (default about a tenth of the
run) ``out/.checkpoints/{run}_.npz`` is rewritten atomically (:func:`eosflow.runio.save_npz`:
temporary file, then ``os.replace``) with the driver's :class:`~eosflow.driver.RunState` (``w``,
step, Lanczos warm start ``v1``, non-finite flag), the records so far, the wall time so far and
the run's fingerprint (config, run, ``w0``, data). ``eosflow run net ... --resume`` loads it and
continues; because every chunk starts from the host copy of the state (in an uninterrupted run
too), the resumed run computes exactly what the uninterrupted one does: arrays bit-identical on
the same devices (tested after ``kill -9``). A checkpoint with another fingerprint is refused.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from eosflow.batch_sharding import batch_mesh, replicate, shard_batch
from eosflow.chunks import default_chunk
from eosflow.fullbatch import fullbatch_run, fullbatch_start
from eosflow.runio import Progress, save_npz
from eosflow.trajectory import NonFiniteError
from eosflow.validation import CheckpointMismatch

__all__ = ["choose_devices", "fingerprint", "run_arrays", "train_fullbatch"]


def choose_devices(n_train: int, n_test: int, available: int | None = None) -> int:
    """The number of devices to split the batch over: the largest ``d <= available`` (default
    ``jax.device_count()``) dividing both ``n_train`` and ``n_test``."""
    available = jax.device_count() if available is None else int(available)
    return max(d for d in range(1, available + 1) if n_train % d == 0 and n_test % d == 0)


def fingerprint(config: dict, run: str, w0, *arrays) -> str:
    """What a checkpoint must match: the config, the run's name, the SHA-256 of ``w0`` and of
    the data ``arrays``."""
    digest = [hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest() for a in (w0, *arrays)]
    return json.dumps({"config": config, "run": run, "sha256": digest}, sort_keys=True, default=str)


def _save(path, fp, rs, recs: dict, done: int, wall: float) -> None:
    leaves = {f"rs.{i}": np.asarray(x) for i, x in enumerate(jax.tree_util.tree_leaves(rs))}
    save_npz(path, fingerprint=np.asarray(fp), done=np.asarray(done), wall_s=np.asarray(wall),
             **leaves, **{f"rec.{k}": v for k, v in recs.items()})  # fmt: skip


def _load(path, fp, rs_like):
    """``(RunState, records, steps done, wall s)`` from ``path``, or ``None`` if there is none."""
    if not path.exists():
        return None
    with np.load(path) as z:
        if str(z["fingerprint"]) != fp:
            raise CheckpointMismatch(
                f"the checkpoint {path} holds another run (other settings or data); delete it "
                "or start over"
            )
        leaves = [z[f"rs.{i}"] for i in range(sum(k.startswith("rs.") for k in z.files))]
        recs = {k[4:]: z[k] for k in z.files if k.startswith("rec.")}
        done, wall = int(z["done"]), float(z["wall_s"])
    rs = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(rs_like), leaves)
    return rs, recs, done, wall


def run_arrays(r: str, recs: dict, rs, layers, lr, wd, done: int) -> dict:
    """The arrays of run ``r`` as the ``closure`` engine names them (``{r}_step``, ``{r}_loss``,
    ..., ``{r}_w_final``; ``no_bn``: the plain ``λ1`` as ``{r}_hess_top``, ``{r}_sharpness`` all
    NaN), plus ``{r}_layer_norm``, ``{r}_layer_eff_lr`` ``(T, L)`` and ``{r}_layer_names``."""
    out = {f"{r}_{k}": v for k, v in recs.items()}
    for k in ("train_acc", "test_acc"):  # float32 means, as the closure engine's (exact)
        out[f"{r}_{k}"] = recs[k].astype(np.float32)
    if r == "no_bn":
        out[f"{r}_hess_top"] = recs["sharpness"]
        out[f"{r}_sharpness"] = np.full_like(recs["sharpness"], np.nan)
    w = np.asarray(rs.state.w)
    out.update({
        f"{r}_w_final": w, f"{r}_layer_names": np.asarray(layers),
        f"{r}_lr": np.asarray(lr, w.dtype), f"{r}_wd": np.asarray(wd, w.dtype),
        f"{r}_nonfinite_step": np.asarray(rs.bad), f"{r}_steps_done": np.asarray(done),
    })  # fmt: skip
    return out


def _place(mesh, x, y, x_test, y_test):
    if mesh is None:
        return tuple(map(jnp.asarray, (x, y, x_test, y_test)))
    return (*shard_batch(mesh, x, y), *shard_batch(mesh, x_test, y_test))


def _setup(data, x_tr, x_te, progress, label):
    """The mesh (or None) and the placed data."""
    d = choose_devices(len(x_tr), len(x_te))
    if progress and d < jax.device_count():
        print(
            f"{label}: using {d} of {jax.device_count()} devices: {len(x_tr)} training and "
            f"{len(x_te)} test examples do not both split evenly over more (BN's full-batch "
            "statistics allow no padding)", file=sys.stderr, flush=True,
        )  # fmt: skip
    mesh = batch_mesh(jax.devices()[:d]) if d > 1 else None
    placed = _place(mesh, x_tr, data.y_train, x_te, data.y_test)
    return mesh, placed


def train_fullbatch(c, rec, r, net, w0, data, x_tr, x_te, progress, label) -> float:
    """Run ``r`` (``bn``, ``no_wd``, ``no_bn``) of Figure 2 on the fullbatch engine (module
    docstring): GD+WD, eq. (1), of ``net`` (:func:`eosflow.fullbatch.make_fullbatch` on
    ``x_tr``) from ``w0``, config ``c``; saves its arrays in ``rec`` (partial
    after every chunk) and checkpoints to ``rec.checkpoint(f"{r}_")``. Returns the wall time
    (seconds, summed over resumed parts).

    Raises:
      NonFiniteError: the run diverged. CheckpointMismatch: the checkpoint holds another run.
    """
    bn, steps, re = r != "no_bn", int(c["steps"]), int(c["record_every"])
    wd = 0.0 if r == "no_wd" else c["wd"]
    mesh, data_args = _setup(data, x_tr, x_te, progress, label)
    rs0, hp = fullbatch_start(w0, c["lr"], wd)
    rs, hp = jax.device_get((rs0, hp))
    hp = hp if mesh is None else replicate(mesh, hp)
    kw = dict(
        record_every=re, sharpness_every=int(c["sharpness_every"] if bn else c["no_bn_hess_every"]),
        eval_every=int(c["eval_every"] or re), lanczos_iter=int(c["lanczos_iter"]), mesh=mesh,
        geometry="sphere" if bn else "plain",
    )  # fmt: skip
    chunk = int(c["checkpoint_every"] or default_chunk(steps, re))
    path, fp = rec.checkpoint(f"{r}_"), fingerprint(c, r, w0, x_tr, data.y_train, x_te)
    recs, done, wall0 = {}, 0, 0.0
    loaded = _load(path, fp, rs)
    if loaded is not None:
        rs, recs, done, wall0 = loaded
    t0 = time.perf_counter()
    bar = Progress(steps, label, enabled=progress)
    try:
        if done:  # resumed: the bar starts there (a first update at 0 would count compiling)
            bar.update(done)
        while done < steps:
            n = min(chunk, steps - done)
            rs_in = rs if mesh is None else replicate(mesh, rs)
            rs, out = jax.device_get(fullbatch_run(net, rs_in, hp, *data_args, n_rec=n // re, **kw))
            recs = {
                k: np.concatenate([recs[k], v]) if recs else v for k, v in out._asdict().items()
            }
            done += n
            if int(rs.bad) >= 0:
                raise NonFiniteError(f"{label}: non-finite update at step {int(rs.bad)}",
                                     int(rs.bad), None)  # fmt: skip
            _save(path, fp, rs, recs, done, wall0 + time.perf_counter() - t0)
            rec.update(**run_arrays(r, recs, rs, net.layers, c["lr"], wd, done))
            bar.update(done)
    finally:
        bar.close()
    rec.update(**run_arrays(r, recs, rs, net.layers, c["lr"], wd, done))
    return wall0 + time.perf_counter() - t0
