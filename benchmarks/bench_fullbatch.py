"""Full-batch GD+WD on CIFAR-shaped images (issue 15, items 2 and 6): one step of eq. (1) on a
scale-invariant VGG-11 and ResNet-20 (width 1, 10 classes, Swish), float32, data as an argument,
batch split over every device JAX sees (:mod:`eosflow.batch_sharding`).

For each model and ``remat`` choice (``None``, ``"dots"``):

* time per step: the compiled step (:func:`eosflow.fullbatch_memory.compile_step`: forward,
  backward, update) on synthetic images, median of the repeats after a warm-up call;
* FLOPs: XLA's ``cost_analysis()`` of the per-device program;
* MFU: ``FLOPs / time / peak``, the peak being this run's float32 ``N×N`` matmul (per device);
* memory per device: ``memory_analysis()`` of that program (arguments + outputs + temporaries −
  aliases) and the autodiff residuals (:func:`eosflow.fullbatch_memory.residual_bytes`), at the
  timed size and, compiled from abstract inputs only, at all 50,000 CIFAR-10 images.

Sizes: 256 images on a CPU (64 with ``--quick``), 50,000 on an accelerator. :data:`MODELS`
holds any flax module with the ``(x, stats) -> (logits, stats)`` call.
"""

from __future__ import annotations

import _paths  # noqa: F401  (sys.path, float64): first

# isort: split
import jax
import jax.numpy as jnp
import numpy as np
from _common import table, time_call

from eosflow.batch_sharding import batch_mesh, replicate, shard_batch
from eosflow.fullbatch_memory import compile_step, compiled_memory, step_memory
from eosflow.nets import VGG, VGG11
from eosflow.resnet import ResNet20

IMAGE = (32, 32, 3)
CIFAR_N = 50_000


#: Name -> flax module.
MODELS = {"VGG-11": VGG(VGG11, num_classes=10), "ResNet-20": ResNet20(num_classes=10)}


def _gib(b) -> str:
    return f"{b / 2**30:.2f}"


def _one(name, model, n, remat, peak_gflops, repeats, log) -> dict:
    compiled, net, w0 = compile_step(model, n, IMAGE, dtype=np.float32, remat=remat)
    rng = np.random.default_rng(0)
    mesh = batch_mesh()
    x, y = shard_batch(
        mesh, rng.standard_normal((n, *IMAGE), np.float32), (np.arange(n) % 10).astype(np.int32)
    )
    w, lr, wd = replicate(mesh, (w0, np.float32(0.1), np.float32(5e-4)))
    t = time_call(lambda: compiled(w, x, y, lr, wd), repeats=repeats)
    mem = compiled_memory(compiled, net, w0, n, IMAGE, len(jax.devices()), np.float32)
    big = step_memory(model, CIFAR_N, IMAGE, dtype=np.float32, remat=remat)
    mfu = mem.flops / t.median_s / (peak_gflops * 1e9)
    log(f"{name} remat={remat} n={n}: {t.median_s * 1e3:.1f} ms/step, MFU {mfu:.1%}")
    return {
        "model": name, "remat": remat, "n": n, "devices": mem.devices, "D": mem.params,
        "step_s": t.median_s, "first_s": t.first_s, "flops": mem.flops, "mfu": mfu,
        "peak_bytes": mem.peak, "residual_bytes": mem.residuals,
        "cifar_peak_bytes": big.peak, "cifar_residual_bytes": big.residuals,
        "cifar_flops": big.flops,
    }  # fmt: skip


def run(quick: bool, peaks: dict, log) -> tuple[str, dict]:
    gpu = jax.default_backend() != "cpu"
    n = CIFAR_N if gpu else (64 if quick else 256)
    ndev = len(jax.devices())
    n = n // ndev * ndev
    peak = peaks["matmul_gflops"]["float32"]
    rows = []
    for name, model in MODELS.items():
        for remat in (None, "dots"):
            rows.append(_one(name, model, n, remat, peak, 3 if quick else 7, log))
    headers = [
        "model", "remat", "images", "devices", "D", "ms/step", "GFLOP/step/dev", "MFU",
        f"GiB/dev ({n})", f"residuals GiB/dev ({n})", f"GiB/dev ({CIFAR_N:,})",
        f"residuals GiB/dev ({CIFAR_N:,})",
    ]  # fmt: skip
    body = [
        [
            r["model"], r["remat"] or "none", r["n"], r["devices"], f"{r['D']:,}",
            f"{r['step_s'] * 1e3:.1f}", f"{r['flops'] / 1e9:.1f}", f"{r['mfu']:.1%}",
            _gib(r["peak_bytes"]), _gib(r["residual_bytes"]), _gib(r["cifar_peak_bytes"]),
            _gib(r["cifar_residual_bytes"]),
        ]
        for r in rows
    ]  # fmt: skip
    md = (
        f"One full-batch GD+WD step (eq. 1), float32, synthetic CIFAR-shaped images, batch split "
        f"over {ndev} {jax.default_backend()} device(s). MFU against this run's float32 matmul "
        f"peak ({peak:.1f} GFLOP/s per device). GiB/dev: XLA memory analysis of the compiled "
        "step (arguments + outputs + temporaries − aliases); residuals: what autodiff keeps "
        f"between forward and backward. The {CIFAR_N:,}-image columns are compiled from abstract "
        "inputs (nothing allocated).\n\n" + table(headers, body)
    )
    return md, {"rows": rows, "peak_gflops_f32": peak, "n": n, "devices": ndev}


if __name__ == "__main__":  # pragma: no cover - a quick look without run.py
    import _common as C

    jnp.zeros(1)
    print(run(True, C.measure_peaks(True), print)[0])
