"""The benchmark problems (issue 2's sizes), built in a given dtype, and their PyTorch twins.

* ``linreg-200``: linear regression with BN, n=40, d=200 (D=200).
* ``linreg-5000``: linear regression with BN, n=50, d=5000 (D=5000).
* ``mc``: matrix completion with BN, U, V in R^{50x50} (k=50), rank-2 M, 800 observed entries
  (D=5000), our dense-mask loss ``matrix_completion_bn``.
* ``mc-gathered``: the same loss computed by gathering the 800 entries
  (``matrix_completion_gathered_loss``, the obvious implementation and the baseline).
* ``toy3d``: the 3-D toy loss.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import eosflow
from eosflow.losses import matrix_completion_gathered_loss


class Problem(NamedTuple):
    name: str
    label: str
    loss: Any  # callable w -> scalar
    w0: jax.Array
    lr: float
    wd: float
    small: bool  # a "small problem" of issue 2's >= 5x target
    kind: str  # linreg | mc | mc-gathered | toy3d
    data: Any


LR, WD = 0.1, 0.01  # any values do for timing; GD+WD on a scale-invariant loss stays finite

NAMES = ("linreg-200", "linreg-5000", "mc", "mc-gathered", "toy3d")


def build(name: str, dtype: str = "float64") -> Problem:
    """A fresh :class:`Problem` (a new loss object, so a new compile) in ``dtype``."""
    dt = jnp.dtype(dtype)
    key = jax.random.PRNGKey(0)
    kw = jax.random.PRNGKey(1)
    if name.startswith("linreg"):
        n, d = {
            "linreg-200": (40, 200),
            "linreg-500": (50, 500),
            "linreg-2000": (50, 2000),
            "linreg-5000": (50, 5000),
        }[name]
        data = eosflow.make_linear_regression_data(key, n, d, n_test=10, dtype=dt)
        loss = eosflow.linear_regression_bn(data.X, data.y)
        w0 = jax.random.normal(kw, (d,), dt)
        label = f"linreg BN n={n} d={d}"
        return Problem(name, label, loss, w0, LR, WD, d <= 200, "linreg", data)
    if name in ("mc", "mc-gathered"):
        data = eosflow.make_matrix_completion_data(key, 50, 50, 2, 800, k=50, dtype=dt)
        if name == "mc":
            loss, label = (
                eosflow.matrix_completion_bn(data),
                "MC BN 50x50 k=50 |Ω|=800 (dense mask)",
            )
        else:
            loss, label = matrix_completion_gathered_loss(data), "MC BN, gathered (baseline)"
        w0 = jax.random.normal(kw, (2 * 50 * 50,), dt)
        return Problem(name, label, loss, w0, LR, WD, False, name, data)
    if name == "toy3d":
        loss = eosflow.toy3d()
        w0 = jnp.asarray([0.3, 0.5, 0.4], dt)
        return Problem(name, "toy3d", loss, w0, LR, WD, True, "toy3d", 2.0)
    raise ValueError(f"unknown problem {name!r}; choose from {NAMES}, linreg-500 or linreg-2000")


# ----------------------------------------------------------------------------- PyTorch


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True


def torch_device() -> str:
    """The torch device matching JAX's platform (cuda when JAX runs on a GPU and torch sees one)."""
    import torch

    if jax.default_backend() == "gpu" and torch.cuda.is_available():
        return "cuda"
    return "cpu"


def torch_loop(p: Problem, steps: int, dtype: str):
    """The PyTorch eager GD+WD loop a paper author would write, as ``(run, sync, loss_at_w0)``.

    ``run()`` does ``steps`` steps (``loss.backward()``-style autograd, in-place update under
    ``no_grad``), keeping each step's loss as a tensor (no ``.item()``, so no host sync per step —
    the charitable version). Matrix completion gathers the observed entries, as the obvious code does.
    """
    import torch

    dev = torch_device()
    tdt = {"float64": torch.float64, "float32": torch.float32}[dtype]

    def T(a):
        return torch.as_tensor(np.asarray(a), device=dev).to(tdt)

    if p.kind == "linreg":
        X, y = T(p.data.X), T(p.data.y)
        Xc = X - X.mean(0)
        yc = y - y.mean()
        sy = torch.sqrt((yc * yc).mean())

        def loss_fn(w):
            z = Xc @ w
            r = sy * z / torch.sqrt((z * z).mean()) - yc
            return (r * r).mean()

    elif p.kind in ("mc", "mc-gathered"):
        d = p.data
        m, n = d.M.shape
        k = d.k
        rows = torch.as_tensor(np.asarray(d.rows), device=dev, dtype=torch.long)
        cols = torch.as_tensor(np.asarray(d.cols), device=dev, dtype=torch.long)
        obs = T(d.M)[rows, cols]
        obs_c = obs - obs.mean()
        s_m = torch.sqrt((obs_c * obs_c).mean())

        def loss_fn(w):
            U = w[: m * k].view(m, k)
            V = w[m * k :].view(n, k)
            pr = (U[rows] * V[cols]).sum(-1)
            pc = pr - pr.mean()
            r = s_m * pc / torch.sqrt((pc * pc).mean()) - obs_c
            return (r * r).mean()

    elif p.kind == "toy3d":
        c = float(p.data)

        def loss_fn(w):
            th = w / w.norm()
            return (c + th[0]) * th[2] ** 2

    else:
        raise ValueError(p.kind)

    w0 = T(p.w0)
    lr, wd = p.lr, p.wd

    def run():
        w = w0.clone().requires_grad_(True)
        losses = []
        for _ in range(steps):
            loss = loss_fn(w)
            (g,) = torch.autograd.grad(loss, w)
            with torch.no_grad():
                w.mul_(1.0 - lr * wd).sub_(lr * g)
            losses.append(loss.detach())
        return w, losses

    def sync(_):
        if dev == "cuda":
            torch.cuda.synchronize()

    with torch.no_grad():
        l0 = float(loss_fn(w0))
    return run, sync, l0
