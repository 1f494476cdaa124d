"""Full-batch GD+WD on a network with the data as an *argument* of the compiled program.

Figure 2 of the paper trains a scale-invariant VGG-11 by full-batch GD+WD, eq. (1),
``w_{t+1} = (1 − lr·wd) w_t − lr ∇L(w_t)``, on all 50,000 CIFAR-10 images. :func:`eosflow.nets.
make_net_loss` closes the loss over its training batch, so a jitted run embeds the batch as a
compile-time constant (600 MB of float32 for CIFAR-10) and cannot shard it. Here the loss is
built *inside* the traced function from traced ``x, y`` (:func:`fullbatch_loss`), so

* the data is an ordinary input: one compiled program serves any batch of the same shape;
* the batch can be sharded over devices (:mod:`eosflow.batch_sharding`): BN's full-batch means
  and variances (the ``μ, σ`` of Section 5's "whole training set") and the cross-entropy mean
  become cross-device reductions inserted by the SPMD partitioner, so the loss, its gradient and
  its Hessian are those of the whole batch, exactly (tested to round-off);
* a run records no ``w`` (9.2M floats for VGG-11): :func:`fullbatch_run` keeps the norm, the
  per-layer norms ``||w_l||`` and per-layer effective LRs ``lr/((1 − lr·wd)||w_l||²)`` (Lemma 3.1
  applied to each layer's own scale-invariant group), the loss, the spherical sharpness
  (Definition 1.1, warm-started Lanczos on the full batch every ``sharpness_every`` steps;
  ``geometry="plain"``: the plain ``λ1(∇²L(w_t))`` of a net without BN) and train/test accuracy
  and test loss every ``eval_every`` steps.

:func:`fullbatch_run` is the one driver (:func:`eosflow.driver.run_records`) with the
:data:`eosflow.gd_wd` dynamics and a record hook; its carry is the driver's resumable
:class:`~eosflow.driver.RunState`, so consecutive calls equal one long call.

**Rematerialization.** ``remat="dots"`` wraps the loss in ``jax.checkpoint`` with the policy
``jax.checkpoint_policies.dots_saveable``: only the outputs of convolutions and matrix products
are kept for the backward pass; BN, the activation and pooling are recomputed from them. It
changes memory, not values (tested). Numbers in docs/scaling.md.
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree

from eosflow.batch_sharding import BATCH_AXIS, check_batch, constrain, replicate
from eosflow.driver import RunState, init_run_state, run_records
from eosflow.dynamics import GEOMETRIES, GDWDHparams, gd_wd
from eosflow.gd import GDState, StepInfo, effective_lr, gd_wd_step
from eosflow.nets import cross_entropy, init_params

Array = jax.Array

__all__ = [
    "FullBatchNet",
    "FullBatchRecords",
    "REMAT",
    "make_fullbatch",
    "fullbatch_loss",
    "fullbatch_accuracy",
    "fullbatch_step",
    "fullbatch_run",
    "fullbatch_start",
    "layer_norms",
]

#: Rematerialization choices: ``None`` (keep what autodiff keeps) or ``"dots"`` (keep only
#: conv/matmul outputs, recompute BN, activations and pooling in the backward pass).
REMAT = (None, "dots")

# GD+WD with the sharpness measured at ``w_t`` itself (nets without BN); built once so that
# every call shares its compiled program.
_GD_WD_PLAIN = gd_wd._replace(geometry="plain")


class FullBatchNet(NamedTuple):
    """A network as a loss of ``(w, x, y)``: what the compiled programs need (hashable, static).

    Attributes:
      model: a flax module called as ``model.apply({"params": p}, x, stats) -> (logits, stats)``
        (:class:`eosflow.nets.MLP`, :class:`eosflow.nets.VGG`, or any module with that
        signature).
      unravel: flat ``(D,)`` vector -> the ``"params"`` pytree (``ravel_pytree`` order).
      layers: names of the parameter groups (one per module holding parameters, ``"/"``-joined
        path), the order of :func:`layer_norms`.
      remat: one of :data:`REMAT`.
    """

    model: nn.Module
    unravel: Any
    layers: tuple[str, ...]
    remat: str | None = None


class FullBatchRecords(NamedTuple):
    """What :func:`fullbatch_run` records (leading axis ``T``, at ``w_t`` before step ``t``).

    Attributes:
      step: ``(T,)``; loss, grad_norm, norm, eff_lr: ``(T,)`` as in :class:`eosflow.StepInfo`
        (``grad_norm`` on the unit sphere, ``eff_lr = lr/((1−lr·wd)||w||²)``, Lemma 3.1).
      layer_norm: ``(T, L)`` ``||w_l||`` per layer (order of ``FullBatchNet.layers``).
      layer_eff_lr: ``(T, L)`` ``lr/((1 − lr·wd)||w_l||²)``, each layer's own effective LR.
      sharpness: ``(T,)`` spherical sharpness ``λ1(∇²L(w_t/||w_t||))`` (NaN where not computed;
        with ``geometry="plain"`` the plain ``λ1(∇²L(w_t))``).
      train_acc, test_acc: ``(T,)`` accuracies (NaN where not computed or no test data); the
        test data is normalized with the training batch's BN statistics.
      test_loss: ``(T,)`` cross-entropy on the test data with those statistics (NaN as
        ``test_acc``).
    """

    step: Array
    loss: Array
    grad_norm: Array
    norm: Array
    eff_lr: Array
    layer_norm: Array
    layer_eff_lr: Array
    sharpness: Array
    train_acc: Array
    test_acc: Array
    test_loss: Array


def _layer_names(params) -> tuple[str, ...]:
    names: list[str] = []
    for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = "/".join(str(getattr(k, "key", k)) for k in path[:-1])
        if name not in names:
            names.append(name)
    return tuple(names)


def make_fullbatch(model: nn.Module, x_like, *, seed: int = 0, dtype=None, remat=None):
    """Wrap ``model`` for full-batch training with the data as an argument.

    The initial parameters are those of :func:`eosflow.nets.make_net_loss` with the same
    ``model``, ``seed`` and ``dtype`` (:func:`eosflow.nets.init_params`, LeCun-normal from
    ``numpy.random.default_rng(seed)``), so both give the same ``w0``.

    Args:
      model: the flax module (signature in :class:`FullBatchNet`).
      x_like: an array (or ``jax.ShapeDtypeStruct``) shaped like the inputs; only
        ``x_like.shape[1:]`` is used (nothing is computed on it).
      seed: initialization seed.
      dtype: parameter dtype (default JAX's default float).
      remat: one of :data:`REMAT`.

    Returns:
      ``(FullBatchNet, w0)`` with ``w0`` the flat ``(D,)`` initial parameters.
    """
    if remat not in REMAT:
        raise ValueError(f"make_fullbatch: remat must be one of {REMAT}, got {remat!r}")
    shape = tuple(getattr(x_like, "shape", ()))
    if len(shape) < 2:
        raise ValueError(f"make_fullbatch: x_like must be (N, ...) inputs, got shape {shape}")
    dtype = jnp.result_type(float) if dtype is None else jnp.dtype(dtype)
    params = init_params(model, jax.ShapeDtypeStruct((2, *shape[1:]), dtype), seed, dtype)
    w0, unravel = ravel_pytree(params)
    return FullBatchNet(model, unravel, _layer_names(params), remat), w0


def _forward(net: FullBatchNet, w: Array, x: Array, stats=None):
    return net.model.apply({"params": net.unravel(w)}, x.astype(w.dtype), stats)


def fullbatch_loss(net: FullBatchNet, w: Array, x: Array, y: Array) -> Array:
    """The full-batch loss ``L(w) = mean_i CE(f(x_i; w), y_i)`` with BN statistics of the whole
    batch ``x`` (the loss of :func:`eosflow.nets.make_net_loss`, Figure 2's training loss),
    ``x`` and ``y`` traced. Scale-invariant in ``w`` when the model has ``bn=True``.
    ``x`` is cast to ``w``'s dtype."""

    def loss(w, x):
        logits, _ = _forward(net, w, x)
        return cross_entropy(logits, y)

    if net.remat == "dots":
        loss = jax.checkpoint(loss, policy=jax.checkpoint_policies.dots_saveable)
    return loss(w, x)


def fullbatch_accuracy(net: FullBatchNet, w, x, y, x_eval=None, y_eval=None) -> Array:
    """Accuracy on ``(x_eval, y_eval)`` (default the training batch ``(x, y)``) with BN
    statistics of the training batch ``x`` (the nets module's "statistics for other data")."""
    logits, stats = _forward(net, w, x)
    if x_eval is not None:
        logits, _ = _forward(net, w, x_eval, stats)
        y = y_eval
    return jnp.mean(jnp.argmax(logits, axis=-1) == y)


def layer_norms(net: FullBatchNet, w: Array) -> Array:
    """``(L,)`` the norm ``||w_l||`` of each layer's parameters (order ``net.layers``)."""
    sums = dict.fromkeys(net.layers, 0.0)
    for path, leaf in jax.tree_util.tree_flatten_with_path(net.unravel(w))[0]:
        sums["/".join(str(getattr(k, "key", k)) for k in path[:-1])] += jnp.sum(leaf * leaf)
    return jnp.sqrt(jnp.stack([sums[n] for n in net.layers]))


def fullbatch_step(net: FullBatchNet, w, x, y, lr, wd) -> tuple[Array, StepInfo]:
    """One step of GD+WD, eq. (1), on the full batch: ``(w_{t+1}, StepInfo at w_t)``
    (:func:`eosflow.gd.gd_wd_step` on :func:`fullbatch_loss`). Not jitted (the benchmark and
    :func:`eosflow.fullbatch_memory.step_memory` compile it)."""
    state, info = gd_wd_step(lambda v: fullbatch_loss(net, v, x, y), GDState(w), lr, wd)
    return state.w, info


def fullbatch_start(w0: Array, lr, wd, mesh=None) -> tuple[RunState, GDWDHparams]:
    """The driver's :class:`~eosflow.driver.RunState` at step 0 for GD+WD from ``w0`` and the
    hparams ``GDWDHparams(lr, wd)`` (``w0``'s dtype), replicated over ``mesh`` if given."""
    hp = GDWDHparams(jnp.asarray(lr, w0.dtype), jnp.asarray(wd, w0.dtype))
    rs = init_run_state(gd_wd, jnp.asarray(w0), hp)
    if mesh is not None:
        rs, hp = replicate(mesh, (rs, hp))
    return rs, hp


def _observe(net, x, y, x_test, y_test, eval_every):
    """The record hook: per-layer norms always; ``(train accuracy, test accuracy, test loss)`` at
    steps divisible by ``eval_every`` (NaN elsewhere), from one forward pass over the training
    batch (its BN statistics then normalize the test data)."""

    def accs(w):
        logits, stats = _forward(net, w, x)
        train = jnp.mean(jnp.argmax(logits, axis=-1) == y).astype(w.dtype)
        if x_test is None:
            return jnp.stack(
                [train, jnp.full((), jnp.nan, w.dtype), jnp.full((), jnp.nan, w.dtype)]
            )
        logits, _ = _forward(net, w, x_test, stats)
        test = jnp.mean(jnp.argmax(logits, axis=-1) == y_test).astype(w.dtype)
        return jnp.stack([train, test, cross_entropy(logits, y_test).astype(w.dtype)])

    def observe(w, t):
        nan = jnp.full((3,), jnp.nan, w.dtype)
        if not eval_every:
            return layer_norms(net, w), nan
        return layer_norms(net, w), lax.cond(t % eval_every == 0, accs, lambda _: nan, w)

    return observe


@partial(
    jax.jit,
    static_argnames=(
        "net", "n_rec", "record_every", "sharpness_every", "eval_every", "lanczos_iter", "mesh",
        "geometry",
    ),
)  # fmt: skip
def fullbatch_run(
    net: FullBatchNet, rs: RunState, hparams: GDWDHparams, x, y, x_test=None, y_test=None, *,
    n_rec: int, record_every: int = 1, sharpness_every: int = 0, eval_every: int = 0,
    lanczos_iter: int = 20, mesh=None, geometry: str = "sphere",
) -> tuple[RunState, FullBatchRecords]:  # fmt: skip
    """``n_rec · record_every`` steps of full-batch GD+WD, eq. (1), from ``rs``, in one program.

    The driver (:func:`eosflow.driver.run_records`, dynamics :data:`eosflow.gd_wd`) on the loss
    :func:`fullbatch_loss` built from the traced ``x, y``. The sharpness is the spherical one
    (Definition 1.1) by Lanczos warm-started from ``rs.v1``, at global steps divisible by
    ``sharpness_every``; accuracies at steps divisible by ``eval_every`` (``0``: never). Both
    must be multiples of ``record_every``. Returns ``(RunState after the call,
    FullBatchRecords)``; pass the state back to continue (bit-identical to one longer call).

    Args:
      net: from :func:`make_fullbatch` (static).
      rs, hparams: from :func:`fullbatch_start` or a previous call.
      x, y: the training batch ``(N, ...)``, ``(N,)`` integer labels; x_test, y_test: optional.
      mesh: a mesh with axis ``"batch"`` (:func:`eosflow.batch_sharding.batch_mesh`) to pin the
        data's sharding and replicate the state and records; ``None``: whatever the inputs carry.
      geometry: ``"sphere"`` (default): the spherical sharpness at ``w_t/||w_t||``; ``"plain"``:
        ``λ1(∇²L(w_t))`` at ``w_t`` itself, for a net without BN (Figure 2's no-BN ablation).
    """
    if geometry not in GEOMETRIES:
        raise ValueError(f"fullbatch_run: geometry must be one of {GEOMETRIES}, got {geometry!r}")
    for k, every in (("sharpness_every", sharpness_every), ("eval_every", eval_every)):
        if every % record_every:
            raise ValueError(f"fullbatch_run: {k}={every} is not a multiple of {record_every=}")
    check_batch(x, y, mesh, "fullbatch_run")
    if x_test is not None:
        check_batch(x_test, y_test, mesh, "fullbatch_run (test data)")
    if mesh is not None:
        x, y, x_test, y_test = constrain(mesh, BATCH_AXIS, (x, y, x_test, y_test))
    rs, rec = run_records(
        lambda w: fullbatch_loss(net, w, x, y), gd_wd if geometry == "sphere" else _GD_WD_PLAIN,
        rs, hparams, n_rec=n_rec,
        steps=rs.step + n_rec * record_every, record_every=record_every,
        sharpness_every=sharpness_every, lanczos_iter=lanczos_iter, full_records=True,
        observe=_observe(net, x, y, x_test, y_test, eval_every),
    )  # fmt: skip
    norms, accs = rec.w
    out = FullBatchRecords(
        rec.step, rec.info.loss, rec.info.grad_norm, rec.info.norm, rec.info.eff_lr, norms,
        effective_lr(norms, hparams.lr, hparams.wd), rec.sharpness, accs[:, 0], accs[:, 1],
        accs[:, 2],
    )  # fmt: skip
    if mesh is not None:
        rs, out = constrain(mesh, None, (rs, out))
    return rs, out
