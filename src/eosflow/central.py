"""The central flow of normalized GD+WD at a finite ``η_in = lr·wd`` (THEORY.md, "Beyond the paper").

Flow (3) is the ``η_in → 0`` limit of GD+WD: it starts on the minimizer manifold Γ and runs in flow
time. The *central flow* (Cohen, Damian, Talwalkar, Kolter, Lee, ICLR 2025) is an ODE for the
time-averaged trajectory of GD at a finite step size. For the sphere form of GD+WD, eq. (2), with
state ``θ`` (unit) and the effective-LR rule's state ``s`` (GD+WD: ``s = η̃``), in step time ``t``::

    θ' = −η̃ P_θ [∇L(θ) + ½ ∇_θ⟨Σ, ∇²L(θ)⟩]                 P_θ = I − θθᵀ
    s' = E_Σ[update(s, ||∇L||²)] − s                        (GD+WD: u = 1/η̃,
                                                             u' = ((1−η_in)²−1)u + (1−η_in)²η̃ E||∇L||²)
    Σ = V X Vᵀ, X ⪰ 0 (k×k, V the top-k eigenvectors of ∇²L(θ));
    2/η̃ − Vᵀ∇²L V ⪰ 0  and  X complementary to it           (an SDCP)

``E_Σ`` averages over the period-two oscillation ``θ ± x``, ``Cov x = Σ``, to second order:
``E||∇L||² = ||∇L||² + ⟨Σ, H²⟩`` (plus ``4 gᵀHΣHg`` through the rule's curvature in ``||g||²``).
Predicted time averages: loss ``L + ½⟨Σ, H⟩``, squared gradient norm ``||∇L||² + ⟨Σ, H²⟩``.

How the constraint is kept (the anchor's choice, written for our state): each substep of length
``dt`` solves for ``X`` so that the *predicted* constraint matrix after the substep,
``A(X) = A₀ + dt·(Ȧ_stable + Ȧ_X(X))``, is ⪰ 0 and complementary to ``X`` (semi-implicit: the
current violation ``A₀ = diag(2/η̃ − λ)`` enters, so drift off the edge is corrected at every
substep instead of accumulating), then takes an explicit Euler step and retracts ``θ`` to the
sphere. ``substeps`` Euler substeps make one GD step; the result converges at first order in
``1/substeps`` (tests/test_central.py measures it). The SDCP's data come from
:func:`eosflow.sphere_sdcp.sdcp_from_rates` (the rule enters only through ``u' = du0 +
⟨du_rate, X⟩``, linearized in ``X``) and it is solved by :func:`eosflow.solve_sdcp` (smoothing
Newton; closed form for ``k = 1``). The operator is exact, not symmetrized: its ``u'`` part is
``edge·δ_ij Σ_l λ_l² X_ll``, non-symmetric where the ``λ_l`` differ, which the solver handles
(strongly monotone).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from eosflow.dynamics import Dynamics, SphereHparams
from eosflow.eigensolvers import default_v0, hvp, lanczos_top_eigs
from eosflow.gd import GDWDHparams, effective_lr
from eosflow.schedulers import EffLRScheduler, gd_wd_scheduler, scheduler_norm
from eosflow.sdcp import solve_sdcp
from eosflow.simulation import simulate
from eosflow.sphere_sdcp import hessian_derivative_terms, sdcp_from_rates, tangent_velocity

Array = jax.Array

__all__ = [
    "CentralFlowState",
    "CentralFlowInfo",
    "central_flow_dynamics",
    "central_substep",
    "CentralFlow",
    "central_flow",
]


class CentralFlowState(NamedTuple):
    """State of the central flow: unit ``θ`` ``(D,)``, the rule's state, and the last top-k
    eigenvectors ``(k, D)`` (Lanczos warm start)."""

    theta: Array
    sched: Any
    basis: Array


class CentralFlowInfo(NamedTuple):
    """Diagnostics at the start of a GD step (the :class:`eosflow.gd.StepInfo` fields first).

    Attributes:
      loss: ``L(θ)``; grad_norm: ``||∇L(θ)||``; norm: the ``||w||`` the rule implies;
      eff_lr: ``η̃``.
      eigs: ``(k,)`` top eigenvalues of ``∇²L(θ)``, descending.
      sigma: ``(k, k)`` ``X``: the oscillation covariance ``Σ = V X Vᵀ`` in the top eigenbasis.
      loss_avg: predicted time-averaged loss ``L + ½⟨Σ, ∇²L⟩``.
      grad_norm_avg: predicted root-mean-square gradient norm ``√(||∇L||² + ⟨Σ, (∇²L)²⟩)``.
      active: number of eigen-directions that oscillate (eigenvalues of ``X`` above
        ``1e-9·max(1, tr X)``... see :func:`active_count`).
      num_hvps: Hessian-vector products of the step's first substep (Lanczos + third
        derivatives counted as one HVP each).
    """

    loss: Array
    grad_norm: Array
    norm: Array
    eff_lr: Array
    eigs: Array
    sigma: Array
    loss_avg: Array
    grad_norm_avg: Array
    active: Array
    num_hvps: Array


def active_count(X: Array) -> Array:
    """How many eigenvalues of the k×k ``X`` are positive (above ``1e-8`` of the largest, and
    above the float's tiny): the number of Hessian eigenvalues at the edge that oscillate."""
    ev = jnp.linalg.eigvalsh(X)
    top = jnp.max(ev)
    floor = jnp.maximum(1e-8 * top, jnp.finfo(X.dtype).tiny)
    return jnp.sum((ev > floor) & (top > 0)).astype(jnp.int32)


class _RuleTerms(NamedTuple):
    """The rule's part of the flow at state ``s`` and ``||∇L||² = g2`` (:func:`_rule_terms`)."""

    u: Array  # 1/η̃ of the current step at g2
    p1: Array  # ∂u/∂g2: a step size that depends on the current gradient (RMSprop); 0 for GD+WD
    p2: Array  # ∂²u/∂g2²
    ds: tuple  # ṡ(g2) = update(s, g2) − s and its first two derivatives in g2 (pytrees like s)
    q: tuple  # q_i = D_s u[ds_i]: how each moves u


def _rule_terms(rule: EffLRScheduler, s, g2: Array, hp) -> _RuleTerms:
    """Expand the rule to second order in ``g2`` (the oscillation enters through
    ``E||∇L||² = g2 + ⟨Σ, H²⟩`` and ``E(δg2)² = 4 gᵀHΣHg``)."""

    def sdot(x):
        new, _ = rule.update(s, x, hp)
        return jax.tree_util.tree_map(lambda a, b: a - b, new, s)

    def u_of(state, x):
        return 1.0 / rule.update(state, x, hp)[1]

    one = jnp.ones_like(g2)
    ds0, ds1 = jax.jvp(sdot, (g2,), (one,))
    ds2 = jax.jvp(lambda x: jax.jvp(sdot, (x,), (one,))[1], (g2,), (one,))[1]
    du = lambda x: jax.jvp(lambda y: u_of(s, y), (x,), (one,))[1]  # noqa: E731
    u, p1 = jax.jvp(lambda y: u_of(s, y), (g2,), (one,))
    p2 = jax.jvp(du, (g2,), (one,))[1]
    q = tuple(jax.jvp(lambda st: u_of(st, g2), (s,), (d,))[1] for d in (ds0, ds1, ds2))
    return _RuleTerms(u, p1, p2, (ds0, ds1, ds2), q)


def central_substep(
    f: Callable, rule: EffLRScheduler, hp, state: CentralFlowState, dt, *, k: int,
    lanczos_iter: int, edge: float = 2.0,
):  # fmt: skip
    """One explicit-Euler substep of length ``dt`` (in GD steps) of the central flow (module
    docstring), with the semi-implicit SDCP for ``X``.

    Returns ``(new state, CentralFlowInfo at the substep's start)``.
    """
    theta, s = state.theta, state.sched
    L, g = jax.value_and_grad(f)(theta)
    g2 = jnp.vdot(g, g)
    m = min(lanczos_iter, theta.shape[0])
    eig = lanczos_top_eigs(lambda v: hvp(f, theta, v), state.basis, k, num_iter=m)
    lam, V = eig.eigenvalues, eig.eigenvectors
    dH = hessian_derivative_terms(f, theta, V.T)  # (k, k, D)
    r = _rule_terms(rule, s, g2, hp)
    # Averaged over the oscillation, a function F of ||grad L||^2 is, to second order in x,
    # F(g2) + F' <Sigma, H^2> + 1/2 F'' E[(2 g^T H x)^2], and E[(2 g^T H x)^2] = 4 c^T X c:
    c = lam * (V @ g)  # (k,): H g in the eigenbasis
    rate = lambda d1, d2: d1 * jnp.diag(lam**2) + 2.0 * d2 * jnp.outer(c, c)  # noqa: E731
    # u' = q0 + <rate(q1, q2), X>; E u = u + <rate(p1, p2), X> (the step's own eta~)
    data = sdcp_from_rates(
        theta, g, lam, dH, r.u, r.q[0], rate(r.q[1], r.q[2]), dt, edge=edge,
        u_rate=rate(r.p1, r.p2),
    )  # fmt: skip
    X = solve_sdcp(data.A, data.b).X

    m1 = jnp.sum(jnp.diag(X) * lam**2)  # <Sigma, H^2>
    m2 = 4.0 * c @ X @ c
    eta = 1.0 / (r.u + r.p1 * m1 + 0.5 * r.p2 * m2)  # the time-averaged step size
    new_theta = theta + dt * tangent_velocity(theta, g, dH, X, eta)
    new_theta = new_theta / jnp.linalg.norm(new_theta)
    d0, d1, d2 = r.ds
    new_s = jax.tree_util.tree_map(
        lambda a, x0, x1, x2: a + dt * (x0 + m1 * x1 + 0.5 * m2 * x2), s, d0, d1, d2
    )
    info = CentralFlowInfo(
        L, jnp.sqrt(g2), scheduler_norm(rule, s, hp, theta.dtype), eta, lam, X,
        L + 0.5 * jnp.sum(jnp.diag(X) * lam), jnp.sqrt(g2 + m1), active_count(X),
        eig.num_hvps + k * (k + 1) // 2,
    )  # fmt: skip
    return CentralFlowState(new_theta, new_s, V), info


def central_flow_dynamics(
    rule: EffLRScheduler = gd_wd_scheduler, *, k: int = 1, substeps: int = 4,
    lanczos_iter: int = 30, edge: float = 2.0,
):  # fmt: skip
    """The central flow as a :class:`eosflow.Dynamics` (one "step" = ``substeps`` Euler
    substeps = one GD step of time), hparams :class:`eosflow.SphereHparams` ``(lr, wd, rule)``
    as for :func:`eosflow.sphere_dynamics`. Cached: equal arguments give the same object (one
    compiled program)."""
    for name, v, lo in (("k", k, 1), ("substeps", substeps, 1), ("lanczos_iter", lanczos_iter, 2)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"central_flow: {name} must be an integer >= {lo}, got {v!r}")
    if isinstance(edge, bool) or not isinstance(edge, int | float) or not 0 < edge < 4:
        raise ValueError(
            f"central_flow: edge must be a number in (0, 4) (the paper's 2), got {edge!r}"
        )
    if not isinstance(rule, EffLRScheduler):
        raise TypeError(f"central_flow: rule must be an eosflow.EffLRScheduler, got {rule!r}")
    return _dynamics(rule, k, substeps, lanczos_iter, float(edge))


@functools.lru_cache(maxsize=64)
def _dynamics(rule: EffLRScheduler, k: int, substeps: int, lanczos_iter: int, edge: float):
    def init(w0: Array, hp) -> CentralFlowState:
        norm0 = jnp.linalg.norm(w0)
        D = w0.shape[0]
        basis = jnp.zeros((k, D), w0.dtype).at[0].set(default_v0(D, w0.dtype))
        return CentralFlowState(
            w0 / norm0, rule.init(effective_lr(norm0, hp.lr, hp.wd), hp.rule), basis
        )

    def step(f, state: CentralFlowState, hp):
        dt = 1.0 / substeps

        def sub(st, _):
            return central_substep(
                f, rule, hp.rule, st, dt, k=k, lanczos_iter=lanczos_iter, edge=edge
            )

        state, infos = jax.lax.scan(sub, state, None, length=substeps)
        info = jax.tree_util.tree_map(lambda x: x[0], infos)
        return state, info._replace(num_hvps=jnp.sum(infos.num_hvps))

    def params(state: CentralFlowState, hp) -> Array:
        return state.theta * scheduler_norm(rule, state.sched, hp.rule, state.theta.dtype)

    return Dynamics(init, step, params)


class CentralFlow(NamedTuple):
    """A central-flow run (:func:`central_flow`). Per-record fields have leading axis
    ``T = ceil(steps/record_every)`` and hold values at the recorded integer steps ``t`` (GD step
    time: one GD step is ``substeps`` Euler substeps), like :class:`eosflow.Trajectory`.

    Attributes:
      step: ``(T,)`` step numbers.
      theta: ``(T, D)`` the flow's unit point ``θ(t)`` (flat, ``ravel_pytree`` order).
      norm: ``(T,)`` the ``||w||`` the rule implies (GD+WD: ``√(lr/((1−lr·wd)η̃))``).
      eff_lr: ``(T,)`` ``η̃(t)``.
      sharpness: ``(T, k)`` top-k eigenvalues of ``∇²L(θ(t))``.
      sigma: ``(T, k, k)`` the oscillation covariance in the top eigenbasis (``Σ = V X Vᵀ``);
        with one eigenvalue at the edge ``sigma[:, 0, 0]`` is ``σ²``.
      loss: ``(T,)`` ``L(θ(t))``; loss_avg: predicted time average ``L + ½⟨Σ, ∇²L⟩``.
      grad_norm: ``(T,)`` ``||∇L(θ)||``; grad_norm_avg: predicted RMS ``√(||∇L||² + ⟨Σ, H²⟩)``.
      active: ``(T,)`` how many eigen-directions oscillate (rank of ``Σ``).
      num_hvps: ``(T,)`` Hessian-vector products per GD step (Lanczos + third derivatives).
      w_final: ``θ·norm`` after the last step, with the structure of ``w0``.
      nonfinite_step: ``-1`` or the first step whose update was not finite.
      hparams: the :class:`eosflow.SphereHparams` of the run.
    """

    step: Array
    theta: Array
    norm: Array
    eff_lr: Array
    sharpness: Array
    sigma: Array
    loss: Array
    loss_avg: Array
    grad_norm: Array
    grad_norm_avg: Array
    active: Array
    num_hvps: Array
    w_final: Any
    nonfinite_step: Array
    hparams: Any


def from_trajectory(traj) -> CentralFlow:
    """A :class:`CentralFlow` from the :class:`eosflow.Trajectory` of the driver run."""
    e = traj.extra
    return CentralFlow(
        traj.step, traj.theta, traj.norm, traj.eff_lr, e["eigs"], e["sigma"], traj.loss,
        e["loss_avg"], traj.grad_norm, e["grad_norm_avg"], e["active"], e["num_hvps"],
        traj.w_final, traj.nonfinite_step, traj.hparams,
    )  # fmt: skip


def central_flow(
    loss: Callable,
    w0,
    lr,
    wd,
    steps: int = 1000,
    *,
    record_every: int = 1,
    k: int = 1,
    substeps: int = 4,
    lanczos_iter: int = 10,
    edge: float = 2.0,
    rule: EffLRScheduler | None = None,
    rule_hparams: Any = None,
    check_invariance: bool = True,
    on_nonfinite: str = "raise",
) -> CentralFlow:
    """The central flow of GD+WD (or of the sphere form with another effective-LR rule) from
    ``w0``: the predicted time-averaged trajectory at a finite ``η_in = lr·wd`` (module docstring;
    THEORY.md "Beyond the paper"; docs/theory.md).

    Same conventions as :func:`eosflow.simulate`: float64 for theory (``eosflow.enable_x64()``),
    ``w0`` an array or pytree, records at integer steps, :class:`eosflow.NonFiniteError` on
    NaN/Inf, a ``ValueError`` naming the problem for a loss that is not scale-invariant,
    ``lr·wd >= 1``, ``w0 = 0`` or bad counts. One compiled program (driver + ``lax.scan``);
    Hessian-free: per substep one warm-started Lanczos (top-``k``) and ``k(k+1)/2``
    third-derivative HVPs, no dense Hessian.

    Args:
      loss: scale-invariant loss.
      w0: initial parameters (``θ0 = w0/||w0||``, ``η̃0 = lr/((1−lr·wd)||w0||²)``, Lemma 3.1).
      lr, wd: GD+WD's learning rate and weight decay.
      steps: GD steps of flow time.
      record_every: record every this many steps.
      k: how many top eigenvalues may reach the edge (the SDCP is k×k). 1 when the top
        eigenvalue is isolated; more where it is clustered (matrix completion).
      substeps: Euler substeps per GD step (first-order convergence in ``1/substeps``).
      lanczos_iter: Krylov dimension per Lanczos cycle (warm-started every substep).
      edge: the stability edge ``η̃λ ≤ edge`` (THEORY.md: 2; GD+WD's exact linear threshold is
        ``(2 − η_in)/(1 − η_in) = 2 + η_in + O(η_in²)``, see :func:`eosflow.sdcp_operator`).
      rule, rule_hparams: another effective-LR rule (:mod:`eosflow.schedulers`, e.g.
        ``scalar_rmsprop_scheduler`` with :class:`eosflow.RMSpropHparams`); default GD+WD's own.
      check_invariance, on_nonfinite: as in :func:`eosflow.simulate`.

    Returns:
      a :class:`CentralFlow`.
    """
    if rule is None:
        rule = gd_wd_scheduler
        if rule_hparams is not None:
            raise TypeError("central_flow: rule_hparams= needs rule=")
        rule_hparams = GDWDHparams(lr, wd)
    elif rule_hparams is None:
        raise TypeError("central_flow: rule= needs rule_hparams=")
    dyn = central_flow_dynamics(rule, k=k, substeps=substeps, lanczos_iter=lanczos_iter, edge=edge)
    traj = simulate(
        loss, w0, steps=steps, dynamics=dyn, hparams=SphereHparams(lr, wd, rule_hparams),
        record_every=record_every, check_invariance=check_invariance, on_nonfinite=on_nonfinite,
    )  # fmt: skip
    return from_trajectory(traj)
