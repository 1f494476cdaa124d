"""Scale-invariant losses (issue 2, "Must show", first item), each against an independent computation.

Identities (Lemma D.1 / THEORY.md) checked on every built-in loss and on ``scale_invariant(f)`` of a
generic non-invariant ``f`` (flat and pytree input): ``L(cw) = L(w)``, ``∇L(cw) = ∇L(w)/c``,
``<∇L(w), w> = 0``, ``∇²L(w) w = −∇L(w)`` (by HVP and by the dense Hessian). Model-specific
checks compare with NumPy re-implementations of the paper's formulas, closed forms, and a KKT
solve of problem (M).

Tolerances are float64 round-off budgets: eps = 2.2e-16 times the size of the computation
(a few hundred flops, condition numbers O(10-100)), hence 1e-12 relative unless stated.

The identities, the scale-invariance check and the closed forms run twice, with and without
``jax.jit`` (``chex.variants`` in a ``chex.TestCase``: ``@chex.variants`` only works on
``absl.parameterized``-style test classes; on a plain pytest function it yields an object pytest
silently does not collect). Op-by-op dispatch and the compiled program must meet the same budgets.
"""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from jax.flatten_util import ravel_pytree

import eosflow
from eosflow.losses import (
    TOY3D_ROTATION,
    LinearRegressionData,
    MatrixCompletionData,
    ResidualLoss,
    check_scale_invariance,
    effective_rank,
    induced_linear_model,
    linear_regression_bn,
    linear_regression_bn_predict,
    linear_regression_bn_test_loss,
    make_linear_regression_data,
    make_matrix_completion_data,
    matrix_completion_bn,
    matrix_completion_gathered_loss,
    matrix_completion_test_mse,
    min_norm_solution,
    scale_invariant,
    singular_values,
    split_factors,
    toy3d,
    toy3d_curve,
    toy3d_flattest_point,
    toy3d_normal,
    toy3d_sharpness_on_curve,
)
from eosflow.sharpness import dense_hessian, hvp

# --------------------------------------------------------------------------------------------
# Problems
# --------------------------------------------------------------------------------------------


def _np_linreg_data(seed, n, d, n_test):
    """Section 5 data built with NumPy (same convention as ``make_linear_regression_data``, which
    is tested once below): eager ``jax.random`` compiles each shape and costs seconds per call."""
    rng = np.random.default_rng(seed)
    X, X_test = 1.0 + rng.normal(size=(n, d)), 1.0 + rng.normal(size=(n_test, d))
    w_t, b_t = rng.normal(size=d) / np.sqrt(d), rng.normal()
    return LinearRegressionData(
        *(jnp.asarray(a) for a in (X, X @ w_t + b_t, X_test, X_test @ w_t + b_t, w_t, b_t))
    )


def _np_mc_data(seed, m, n, rank, num_observed, k):
    """Figure 1 data built with NumPy (convention of ``make_matrix_completion_data``)."""
    rng = np.random.default_rng(seed)
    M = rng.normal(size=(m, rank)) @ rng.normal(size=(n, rank)).T / np.sqrt(rank)
    idx = np.sort(rng.choice(m * n, num_observed, replace=False))
    rows, cols = idx // n, idx % n
    mask = np.zeros((m, n))
    mask[rows, cols] = 1.0
    return MatrixCompletionData(
        jnp.asarray(M), jnp.asarray(rows), jnp.asarray(cols), jnp.asarray(mask), k
    )


LR_DATA = _np_linreg_data(0, n=12, d=30, n_test=50)
MC_SMALL = _np_mc_data(1, 8, 8, rank=2, num_observed=30, k=8)
MC_FULL = _np_mc_data(2, 50, 50, rank=2, num_observed=800, k=50)  # Figure 1 size: D = 5000


def _generic_f(x):
    """A smooth function with no scale symmetry at all (used through ``scale_invariant``)."""
    a = jnp.arange(1.0, x.shape[0] + 1.0)
    return jnp.sum(jnp.sin(a * x)) + (a @ x) ** 3 + jnp.exp(x[0] - x[-1])


def _generic_tree_f(p):
    x = jnp.concatenate([p["a"].ravel(), p["b"]])
    return _generic_f(x) + jnp.sum(p["a"] @ p["b"][:2]) ** 2


def _random_w(seed, D, scale=3.7):
    # ||w|| far from 1, so the identities' c-dependence is exercised even at c = 1.
    return jnp.asarray(scale * np.random.default_rng(seed).normal(size=D))


TREE_W = {"a": _random_w(7, 6, 2.3).reshape(3, 2), "b": _random_w(8, 4, 2.3)}

# (name, loss, w, dense_ok): dense_ok is False where the dense Hessian would be 5000 x 5000.
CASES = [
    ("linreg-bn", linear_regression_bn(LR_DATA.X, LR_DATA.y), _random_w(10, 30), True),
    ("mc-bn-8x8", matrix_completion_bn(MC_SMALL), _random_w(11, 128), True),
    ("mc-bn-50x50", matrix_completion_bn(MC_FULL), _random_w(12, 5000), False),
    ("toy3d", toy3d(), _random_w(13, 3), True),
    ("scale_invariant(f)", scale_invariant(_generic_f), _random_w(15, 7, 0.4), True),
    ("scale_invariant(f)-pytree", scale_invariant(_generic_tree_f), TREE_W, True),
]
IDS = [c[0] for c in CASES]


def _flat(x):
    return np.asarray(ravel_pytree(x)[0])


def _scale(w, c):
    return jax.tree_util.tree_map(lambda x: c * x, w)


# --------------------------------------------------------------------------------------------
# The four identities on every loss, with and without jit
# --------------------------------------------------------------------------------------------


SCALES = (0.03, 0.61, 4.0, 250.0)
# absl test-name suffixes: "scale_invariant(f)-pytree" -> "scale_invariant_f_pytree".
NAMED_CASES = [(re.sub(r"\W+", "_", name).strip("_"), name) for name in IDS]
_QUANTITIES: dict = {}


def _identity_quantities(loss):
    def compute(w):
        scales = jnp.asarray(SCALES)
        return {
            "L": loss(w),
            "g": ravel_pytree(jax.grad(loss)(w))[0],
            "Hw": ravel_pytree(hvp(loss, w, w))[0],  # hvp accepts pytrees
            "Lc": jax.vmap(lambda c: loss(_scale(w, c)))(scales),
            "gc": jax.vmap(lambda c: ravel_pytree(jax.grad(loss)(_scale(w, c)))[0])(scales),
            # True when this runs under jit: the variant really is what it claims to be.
            "traced": isinstance(jax.tree_util.tree_leaves(w)[0], jax.core.Tracer),
        }

    return compute


def _quantities(variant, name):
    """Everything the identity tests need for one case, in one call of ``variant(compute)``
    (jitted: one compilation per case instead of one per primitive; not jitted: op by op), cached
    per (case, variant). ``variant`` is applied on every call: chex requires each variant test to
    use it."""
    _, loss, w, _ = CASES[IDS.index(name)]
    compute = variant(_identity_quantities(loss))
    key = (name, variant.type)
    if key not in _QUANTITIES:
        q = compute(w)
        traced = q.pop("traced")
        assert traced == (variant.type == chex.ChexVariantType.WITH_JIT), variant.type
        _QUANTITIES[key] = jax.tree_util.tree_map(np.asarray, q)
    return _QUANTITIES[key], _flat(w)


class TestIdentitiesWithAndWithoutJit(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(*NAMED_CASES)
    def test_loss_invariant_under_scaling(self, name):
        q, _ = _quantities(self.variant, name)
        chex.assert_tree_all_finite(q["L"])
        # relative 1e-13: one evaluation's round-off (normalization + a few hundred flops).
        np.testing.assert_allclose(q["Lc"], q["L"], rtol=0, atol=1e-13 * max(abs(q["L"]), 1.0))

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(*NAMED_CASES)
    def test_gradient_scales_as_one_over_c(self, name):
        q, _ = _quantities(self.variant, name)
        g = q["g"]
        assert np.linalg.norm(g) > 1e-6, "a vanishing gradient would make the test vacuous"
        for c, gc in zip(SCALES, q["gc"], strict=True):
            # 1e-12 relative to ||g||: round-off of a reverse pass, amplified by ~10 at most.
            np.testing.assert_allclose(c * gc, g, rtol=0, atol=1e-12 * np.linalg.norm(g))

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(*NAMED_CASES)
    def test_gradient_orthogonal_to_w(self, name):
        q, wf = _quantities(self.variant, name)
        g = q["g"]
        # cosine of the angle between g and w: exactly 0 in exact arithmetic; round-off ~1e-15.
        cos = abs(g @ wf) / (np.linalg.norm(g) * np.linalg.norm(wf))
        assert cos <= 1e-12, cos

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(*NAMED_CASES)
    def test_hessian_times_w_is_minus_gradient(self, name):
        q, _ = _quantities(self.variant, name)
        g = q["g"]
        # ||Hw + g|| vs ||g||: both sides are O(||g||); forward-over-reverse round-off ~1e-14.
        scale = np.linalg.norm(g)
        assert np.linalg.norm(q["Hw"] + g) <= 1e-11 * scale, np.linalg.norm(q["Hw"] + g) / scale

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(*NAMED_CASES)
    def test_check_scale_invariance_is_round_off(self, name):
        _, loss, w, _ = CASES[IDS.index(name)]
        # A scale-invariant loss gives float64 round-off (~1e-15); 1e-13 leaves a 100x margin.
        assert check_scale_invariance(self.variant(loss), w) <= 1e-13

    @chex.variants(with_jit=True, without_jit=True)
    def test_scale_invariant_wrapper_is_f_of_direction(self):
        w = _random_w(22, 7, 0.4)
        wn = np.asarray(w) / np.linalg.norm(np.asarray(w))
        # The wrapper must be exactly f(w/||w||): compare with the normalization done in NumPy.
        chex.assert_trees_all_close(
            self.variant(scale_invariant(_generic_f))(w), _generic_f(jnp.asarray(wn)), rtol=1e-13
        )
        # pytree: the norm is over all leaves together (not leaf by leaf).
        flat, unravel = ravel_pytree(TREE_W)
        tree_n = unravel(flat / np.linalg.norm(np.asarray(flat)))
        chex.assert_trees_all_close(
            self.variant(scale_invariant(_generic_tree_f))(TREE_W),
            _generic_tree_f(tree_n),
            rtol=1e-13,
        )

    @chex.variants(with_jit=True, without_jit=True)
    def test_linreg_bn_loss_matches_numpy_formula(self):
        loss = self.variant(linear_regression_bn(LR_DATA.X, LR_DATA.y))
        for seed in (30, 31):
            w = _random_w(seed, 30)
            ref = np.mean((_np_bn_model(LR_DATA.X, LR_DATA.y, w, LR_DATA.X) - LR_DATA.y) ** 2)
            chex.assert_trees_all_close(loss(w), ref, rtol=1e-12)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(("c2", 2.0), ("c3_5", 3.5))
    def test_toy3d_hessian_on_curve_closed_form(self, c):
        loss = toy3d(c)
        thetas = toy3d_curve(jnp.asarray(PHIS))
        Hs = np.asarray(self.variant(jax.vmap(lambda th: dense_hessian(loss, th)))(thetas))
        e3 = np.asarray(toy3d_normal())  # the normal b of Γ's plane (e3 before the rotation)
        for phi, H in zip(PHIS, Hs, strict=True):
            lam = float(toy3d_sharpness_on_curve(phi, c))
            np.testing.assert_allclose(lam, 2.0 * (c + np.cos(phi)), rtol=1e-15)
            # The documented Hessian 2(c + cos φ) b bᵀ, entry by entry (O(1) entries, round-off).
            np.testing.assert_allclose(H, lam * np.outer(e3, e3), rtol=0, atol=1e-12)
            ev = np.linalg.eigvalsh(H)
            np.testing.assert_allclose(ev[-1], lam, rtol=1e-12)
            np.testing.assert_allclose(ev[:2], 0.0, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", [c[0] for c in CASES if c[3]])
def test_dense_hessian_times_w_is_minus_gradient(name):
    """The dense-Hessian side of ``∇²L(w) w = −∇L(w)`` (jitted only: op by op, a D x D Hessian
    costs seconds per case and checks nothing the HVP variants above do not)."""
    _, loss, w, _ = CASES[IDS.index(name)]
    g, H = jax.jit(lambda w: (ravel_pytree(jax.grad(loss)(w))[0], dense_hessian(loss, w)))(w)
    g, H, wf = np.asarray(g), np.asarray(H), _flat(w)
    np.testing.assert_allclose(H, H.T, rtol=0, atol=1e-12 * np.abs(H).max())
    # The dense product H @ w sums D terms of size ||H|| ||w||: tolerance relative to that.
    err = np.linalg.norm(H @ wf + g)
    assert err <= 1e-12 * np.linalg.norm(H, 2) * np.linalg.norm(wf), err


def test_check_scale_invariance_detects_non_invariant():
    w = _random_w(20, 5)
    # sum(w²) changes by c² − 1 under w -> cw: the documented scales (0.37, 2.9, 11) give
    # max |c² − 1| = 120. The check must report that, not round-off.
    rel = check_scale_invariance(jax.jit(lambda v: jnp.sum(v**2)), w)
    np.testing.assert_allclose(rel, 11.0**2 - 1.0, rtol=1e-12)
    assert check_scale_invariance(jax.jit(_generic_f), _random_w(21, 7, 0.4)) > 1e-2


# --------------------------------------------------------------------------------------------
# ResidualLoss: loss == mean(residual²)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,loss,w,dense_ok", CASES[:4], ids=IDS[:4])
def test_residual_loss_is_mean_squared_residual(name, loss, w, dense_ok):
    assert isinstance(loss, ResidualLoss)
    value, r = jax.jit(lambda w: (loss(w), loss.residual(w)))(w)
    r = np.asarray(r)
    chex.assert_rank(r, 1)
    # the mean of squares of O(1) residuals: relative round-off ~1e-15.
    np.testing.assert_allclose(float(value), np.mean(r**2), rtol=1e-12)


# --------------------------------------------------------------------------------------------
# Linear regression with BN (Section 5)
# --------------------------------------------------------------------------------------------


def _np_bn_model(X, y, w, X_new):
    """Φ(x; w) = σ_y (wᵀx − μ_1)/σ_1 + μ_y, statistics of {wᵀx_i} over the training set (NumPy)."""
    X, y, w, X_new = (np.asarray(a) for a in (X, y, w, X_new))
    s = X @ w
    mu1, sigma1 = s.mean(), s.std()  # population std, as in THEORY.md
    return y.std() * (X_new @ w - mu1) / sigma1 + y.mean()


def test_induced_linear_model_reproduces_bn_predictions():
    X, y = LR_DATA.X, LR_DATA.y
    w = _random_w(32, 30)
    w_t, b_t = induced_linear_model(X, y, w)
    for X_new in (X, LR_DATA.X_test):  # training and held-out inputs
        ref = _np_bn_model(X, y, w, X_new)
        # O(1) predictions; 1e-12 relative to their scale.
        np.testing.assert_allclose(np.asarray(X_new @ w_t + b_t), ref, rtol=0, atol=1e-12)
        np.testing.assert_allclose(
            np.asarray(linear_regression_bn_predict(X, y, w, X_new)), ref, rtol=0, atol=1e-12
        )
    ref_test = np.mean((_np_bn_model(X, y, w, LR_DATA.X_test) - LR_DATA.y_test) ** 2)
    np.testing.assert_allclose(
        float(linear_regression_bn_test_loss(X, y, w, LR_DATA.X_test, LR_DATA.y_test)),
        ref_test,
        rtol=1e-12,
    )
    # Eq. (4) depends only on the direction of w.
    chex.assert_trees_all_close(induced_linear_model(X, y, 17.0 * w), (w_t, b_t), rtol=1e-13)


def test_min_norm_solution_solves_problem_M():
    X, y = np.asarray(LR_DATA.X), np.asarray(LR_DATA.y)
    n, d = X.shape
    w, b = (np.asarray(a) for a in min_norm_solution(LR_DATA.X, LR_DATA.y))
    # Feasible: interpolates every training point (n < d). Residuals O(1e-14) for O(1) data.
    np.testing.assert_allclose(X @ w + b, y, rtol=0, atol=1e-11)

    # Independent reference 1: the KKT system of min ||w||² s.t. Xw + b1 = y (b free):
    # w = Xᵀλ, [XXᵀ 1; 1ᵀ 0][λ; b] = [y; 0]. No centring involved.
    K = np.block([[X @ X.T, np.ones((n, 1))], [np.ones((1, n)), np.zeros((1, 1))]])
    sol = np.linalg.solve(K, np.concatenate([y, [0.0]]))
    w_kkt, b_kkt = X.T @ sol[:n], sol[n]
    # K has condition number ~1e3-1e4 here: 1e-10 relative leaves ample room.
    np.testing.assert_allclose(w, w_kkt, rtol=0, atol=1e-10 * np.linalg.norm(w_kkt))
    np.testing.assert_allclose(b, b_kkt, rtol=0, atol=1e-10 * (abs(b_kkt) + 1))

    # Independent reference 2: numpy lstsq (minimum-norm) on the centred system.
    Xc, yc = X - X.mean(0), y - y.mean()
    w_ls = np.linalg.lstsq(Xc, yc, rcond=None)[0]
    np.testing.assert_allclose(w, w_ls, rtol=0, atol=1e-10 * np.linalg.norm(w_ls))

    # Optimality: w is orthogonal to every feasible direction dw (X dw + db 1 = 0 <=> Xc dw = 0).
    _, s, Vt = np.linalg.svd(Xc)
    null = Vt[np.sum(s > 1e-10 * s[0]) :]
    assert null.shape[0] >= d - n
    assert np.linalg.norm(null @ w) <= 1e-10 * np.linalg.norm(w)

    # (M) penalizes w only: lstsq of the augmented system [X, 1] minimizes ||(w, b)|| instead and
    # generally gives another point (larger ||w||) - the two must not be confused.
    wb_aug = np.linalg.lstsq(np.hstack([X, np.ones((n, 1))]), y, rcond=None)[0]
    np.testing.assert_allclose(X @ wb_aug[:d] + wb_aug[d], y, atol=1e-10)
    assert np.linalg.norm(w) <= np.linalg.norm(wb_aug[:d]) + 1e-12
    assert abs(wb_aug[d] - b) > 1e-6


def test_min_norm_direction_is_a_zero_loss_point():
    # w_M interpolates, so the BN loss at w = w_M is 0 (up to round-off) and its induced model
    # is w_M itself (eq. (4) with ||w_M||_Σ = σ_y, since X_c w_M = y_c).
    loss = linear_regression_bn(LR_DATA.X, LR_DATA.y)
    w_m, b_m = min_norm_solution(LR_DATA.X, LR_DATA.y)
    assert float(loss(3.0 * w_m)) <= 1e-24
    w_t, b_t = induced_linear_model(LR_DATA.X, LR_DATA.y, 3.0 * w_m)
    np.testing.assert_allclose(w_t, w_m, rtol=0, atol=1e-11 * float(jnp.linalg.norm(w_m)))
    np.testing.assert_allclose(b_t, b_m, rtol=0, atol=1e-11)
    assert float(eosflow.losses.relative_distance_to_min_norm(LR_DATA.X, LR_DATA.y, w_m)) < 1e-11


# --------------------------------------------------------------------------------------------
# Matrix completion with BN (Figure 1)
# --------------------------------------------------------------------------------------------


def _np_mc_loss_and_test(data, w):
    """NumPy re-implementation of the Figure 1 loss and test MSE, from the module's formulas."""
    M = np.asarray(data.M)
    m, n = M.shape
    k = data.k
    w = np.asarray(w)
    U, V = w[: m * k].reshape(m, k), w[m * k :].reshape(n, k)
    P = U @ V.T
    rows, cols = np.asarray(data.rows), np.asarray(data.cols)
    p, obs = P[rows, cols], M[rows, cols]
    bn = obs.std() * (P - p.mean()) / p.std() + obs.mean()
    return np.mean((bn[rows, cols] - obs) ** 2), np.mean((bn - M) ** 2)


@pytest.mark.parametrize("data", [MC_SMALL, MC_FULL], ids=["8x8", "50x50"])
def test_mc_dense_mask_equals_gathered_and_numpy(data):
    loss = matrix_completion_bn(data)
    gathered = matrix_completion_gathered_loss(data)
    D = (data.M.shape[0] + data.M.shape[1]) * data.k
    assert int(jnp.sum(data.mask)) == data.rows.shape[0]

    @jax.jit
    def compute(w):
        l1, g = jax.value_and_grad(loss)(w)
        l2, g_ref = jax.value_and_grad(gathered)(w)
        return l1, l2, matrix_completion_test_mse(data, w), g, g_ref

    for seed in (40, 41):
        w = _random_w(seed, D)
        ref, ref_test = _np_mc_loss_and_test(data, w)
        l1, l2, test_mse, g, g_ref = compute(w)
        # O(1) losses summed over |Ω| <= 800 terms: 1e-12 relative.
        np.testing.assert_allclose(float(l1), ref, rtol=1e-12)
        np.testing.assert_allclose(float(l2), ref, rtol=1e-12)
        np.testing.assert_allclose(float(test_mse), ref_test, rtol=1e-12)
        # Two different reverse passes (dense matmul vs gather/scatter): 1e-11 relative to ||g||.
        np.testing.assert_allclose(g, g_ref, rtol=0, atol=1e-11 * float(jnp.linalg.norm(g_ref)))


def test_mc_closed_form_gradient_higher_derivatives_match_gathered_autodiff():
    """The dense loss's gradient is hand-written (a custom_jvp rule); its Hessian and third
    derivative are autodiff *of that rule*. Check both against plain autodiff of the gathered
    loss (no custom rule anywhere): the dense Hessian on the 8x8 problem, and on the Figure-1
    size a Hessian-vector product (forward-over-reverse and reverse-over-reverse) and the third
    directional derivative ``∇³L[v, v]`` that the flow's sharpness gradient uses."""
    data = MC_SMALL
    dense, gathered = matrix_completion_bn(data), matrix_completion_gathered_loss(data)
    w = _random_w(44, 128)
    H, H_ref = jax.jit(jax.hessian(dense))(w), jax.jit(jax.hessian(gathered))(w)
    # Entries O(1); two differently ordered computations: 1e-12 of the largest entry.
    np.testing.assert_allclose(H, H_ref, rtol=0, atol=1e-12 * float(jnp.max(jnp.abs(H_ref))))

    data = MC_FULL
    dense, gathered = matrix_completion_bn(data), matrix_completion_gathered_loss(data)
    w, v = _random_w(45, 5000), _random_w(46, 5000, 1.0)

    def third(f):
        return lambda x: jax.jvp(lambda y: hvp(f, y, v), (x,), (v,))[1]

    @jax.jit
    def compute(w):
        rev_rev = jax.grad(lambda x: jnp.vdot(jax.grad(dense)(x), v))(w)
        return hvp(dense, w, v), rev_rev, hvp(gathered, w, v), third(dense)(w), third(gathered)(w)

    h, h_rr, h_ref, t, t_ref = compute(w)
    for got, ref in ((h, h_ref), (h_rr, h_ref), (t, t_ref)):
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-11 * float(jnp.linalg.norm(ref)))


def test_mc_generator_and_zero_loss_factorization():
    data = MC_SMALL
    M = np.asarray(data.M)
    s = np.linalg.svd(M, compute_uv=False)
    assert s[2] <= 1e-12 * s[0] and s[1] > 1e-3 * s[0]  # rank exactly 2
    m, n = M.shape
    # A factorization of M itself: [UVᵀ]_Ω = M_Ω, so BN(p) = p = M_Ω and the loss is 0.
    Us, ss, Vts = np.linalg.svd(M)
    U = np.zeros((m, data.k))
    V = np.zeros((n, data.k))
    U[:, :2] = Us[:, :2] * np.sqrt(ss[:2])
    V[:, :2] = Vts[:2].T * np.sqrt(ss[:2])
    w = jnp.asarray(np.concatenate([U.ravel(), V.ravel()]))
    # (NumPy's default rtol, 1e-7: the split is a reshape, exact in practice.)
    chex.assert_trees_all_close(split_factors(w, m, n, data.k), (U, V), rtol=1e-7)
    loss = matrix_completion_bn(data)
    assert float(loss(w)) <= 1e-26
    assert float(matrix_completion_test_mse(data, 0.3 * w)) <= 1e-26
    # singular values of UVᵀ against numpy; the factorization has rank 2.
    np.testing.assert_allclose(singular_values(data, w), ss, rtol=0, atol=1e-12 * ss[0])


# --------------------------------------------------------------------------------------------
# effective rank
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("r", [1, 2, 5])
def test_effective_rank_of_equal_singular_values(r):
    rng = np.random.default_rng(r)
    Q1, _ = np.linalg.qr(rng.normal(size=(20, 20)))
    Q2, _ = np.linalg.qr(rng.normal(size=(20, 20)))
    A = 3.0 * Q1[:, :r] @ Q2[:, :r].T  # rank r, all r non-zero singular values equal to 3
    s = np.linalg.svd(A, compute_uv=False)
    # The 20 − r zero singular values come out ~1e-15 and contribute ~-p log p ~ 1e-13 each.
    np.testing.assert_allclose(float(effective_rank(jnp.asarray(s))), r, rtol=0, atol=1e-10)
    np.testing.assert_allclose(float(effective_rank(jnp.asarray(s[:r]))), r, rtol=1e-13)


def test_effective_rank_general_spectrum():
    s = np.array([4.0, 2.0, 1.0, 0.5, 0.0])
    p = s[:4] / s.sum()
    np.testing.assert_allclose(
        float(effective_rank(jnp.asarray(s))), np.exp(-np.sum(p * np.log(p))), rtol=1e-13
    )


# --------------------------------------------------------------------------------------------
# toy3d
# --------------------------------------------------------------------------------------------

PHIS = [0.0, 0.7, 2.0, np.pi, 4.4]


@pytest.mark.parametrize("c", [2.0, 3.5])
def test_toy3d_curve_is_zero_loss_zero_gradient(c):
    loss = toy3d(c)
    thetas = toy3d_curve(jnp.asarray(PHIS))
    np.testing.assert_allclose(np.linalg.norm(thetas, axis=1), 1.0, rtol=1e-15)
    vg = jax.jit(jax.vmap(jax.value_and_grad(loss)))
    for scale in (1.0, 2.5):
        values, grads = vg(scale * thetas)
        # <b, θ> = 0 on the curve up to round-off (the default rotation makes it inexact on
        # purpose, see the toy3d docstring): loss ~ eps², gradient ∝ <b, θ> ~ eps.
        np.testing.assert_allclose(values, 0.0, rtol=0, atol=1e-30)
        np.testing.assert_allclose(grads, 0.0, rtol=0, atol=1e-14)
    # off the curve the loss is positive: (c + 0.6) * 0.8² at θ' = (0.6, 0, 0.8), θ = Rᵀθ'
    off = jnp.array([0.6, 0.0, 0.8]) @ jnp.asarray(TOY3D_ROTATION)
    np.testing.assert_allclose(float(loss(off)), (c + 0.6) * 0.64, rtol=1e-14)
    # the axis-aligned version (rotation = I) has the exact zeros
    flat = toy3d(c, rotation=jnp.eye(3))
    values, grads = jax.vmap(jax.value_and_grad(flat))(toy3d_curve(jnp.asarray(PHIS), jnp.eye(3)))
    np.testing.assert_array_equal(values, 0.0)
    np.testing.assert_array_equal(grads, 0.0)


def test_toy3d_flattest_point():
    c = 2.0
    phis = np.linspace(0, 2 * np.pi, 721)
    lam = np.asarray(toy3d_sharpness_on_curve(jnp.asarray(phis), c))
    assert np.isclose(phis[np.argmin(lam)], np.pi)
    np.testing.assert_allclose(toy3d_flattest_point(), toy3d_curve(np.pi), atol=1e-15)
    np.testing.assert_allclose(lam.min(), 2 * (c - 1), rtol=1e-15)
    with pytest.raises(ValueError, match="c > 1"):
        toy3d(1.0)


def test_toy3d_keeps_float32():
    # The rotation is stored in float64 (x64 on); a float32 w must give a float32 loss, gradient
    # and residual (it promoted to float64 before), equal to the float64 values to float32
    # round-off.
    loss = toy3d()
    w64 = _random_w(21, 3)
    w32 = w64.astype(jnp.float32)
    v32, g32 = jax.value_and_grad(loss)(w32)
    chex.assert_type([v32, g32, loss.residual(w32)], jnp.float32)
    v64, g64 = jax.value_and_grad(loss)(w64)
    np.testing.assert_allclose(v32, v64, rtol=1e-5)
    np.testing.assert_allclose(g32, g64, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(g64))))


# --------------------------------------------------------------------------------------------
# Data generators (once each, small: eager jax.random is slow to compile)
# --------------------------------------------------------------------------------------------


def test_make_linear_regression_data():
    data = make_linear_regression_data(jax.random.PRNGKey(0), n=6, d=9, n_test=4)
    chex.assert_shape([data.X, data.y, data.X_test, data.y_test], [(6, 9), (6,), (4, 9), (4,)])
    chex.assert_type(data.X, jnp.float64)
    # noise = 0: targets are exactly the teacher's outputs (O(1) values, round-off only;
    # rtol is NumPy's default)
    teacher = lambda X: X @ data.w_teacher + data.b_teacher
    chex.assert_trees_all_close(
        (teacher(data.X), teacher(data.X_test)), (data.y, data.y_test), rtol=1e-7, atol=1e-13
    )


def test_make_matrix_completion_data():
    data = make_matrix_completion_data(jax.random.PRNGKey(0), 6, 7, rank=2, num_observed=20)
    M = np.asarray(data.M)
    chex.assert_shape(M, (6, 7))
    assert data.k == 7  # k defaults to max(m, n)
    s = np.linalg.svd(M, compute_uv=False)
    assert s[1] > 1e-3 * s[0] and s[2] <= 1e-12 * s[0]  # rank exactly 2
    flat = np.asarray(data.rows) * 7 + np.asarray(data.cols)
    assert len(set(flat.tolist())) == 20  # without replacement
    mask = np.zeros((6, 7))
    mask[np.asarray(data.rows), np.asarray(data.cols)] = 1
    np.testing.assert_array_equal(np.asarray(data.mask), mask)
    with pytest.raises(ValueError, match="num_observed"):
        make_matrix_completion_data(jax.random.PRNGKey(0), 3, 3, num_observed=10)
