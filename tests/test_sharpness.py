"""Spherical sharpness (Definition 1.1): Lanczos and power iteration against dense ``eigh`` of
``jax.hessian``, the algebraic-vs-dominant eigenvalue trap, scale laws, warm starts, HVP counts.

Tolerance policy: both iterative methods stop on a relative residual (Lanczos 1e-10, power 1e-7 by
default); the eigenvalue error is O(residual² / gap), so 1e-8 relative to |λ1| is met with orders
of magnitude to spare unless the method converged to the *wrong* eigenvalue, which is what these
tests are there to catch. The dense reference (``jax.hessian`` + ``numpy.linalg.eigh``) is exact
to ~1e-14 relative for D <= 200.

Every call is jitted once per (loss, method, k) and reused for all points: eager calls compile the
Lanczos loop anew each time (seconds each on a 2-core CPU).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eosflow.losses import (
    LinearRegressionData,
    MatrixCompletionData,
    linear_regression_bn,
    matrix_completion_bn,
    min_norm_solution,
    toy3d,
    toy3d_curve,
)
from eosflow.sharpness import (
    dense_hessian,
    dense_top_eigs,
    hessian_top_eigs,
    hvp,
    lanczos_top_eigs,
    power_iteration,
    spherical_sharpness,
)

# --------------------------------------------------------------------------------------------
# Problems (NumPy-built data, see tests/test_losses.py for the generators themselves)
# --------------------------------------------------------------------------------------------


def _linreg(seed, n, d):
    rng = np.random.default_rng(seed)
    X = 1.0 + rng.normal(size=(n, d))
    y = X @ (rng.normal(size=d) / np.sqrt(d)) + rng.normal()
    return LinearRegressionData(jnp.asarray(X), jnp.asarray(y), None, None, None, None)


def _mc(seed, m, n, rank, num_observed, k):
    rng = np.random.default_rng(seed)
    M = rng.normal(size=(m, rank)) @ rng.normal(size=(n, rank)).T / np.sqrt(rank)
    idx = np.sort(rng.choice(m * n, num_observed, replace=False))
    mask = np.zeros((m, n))
    mask[idx // n, idx % n] = 1.0
    return MatrixCompletionData(
        jnp.asarray(M), jnp.asarray(idx // n), jnp.asarray(idx % n), jnp.asarray(mask), k
    )


def _unit(x):
    x = np.asarray(x, dtype=float)
    return jnp.asarray(x / np.linalg.norm(x))


LR = _linreg(0, n=40, d=200)
MC10 = _mc(1, 10, 10, rank=2, num_observed=60, k=10)  # D = 200
MC50 = _mc(2, 50, 50, rank=2, num_observed=800, k=50)  # Figure 1 size: D = 5000


def _mc_minimizer(data):
    """Zero-padded factors of the rank-2 M: UVᵀ = M, so the BN loss is exactly 0 there."""
    M = np.asarray(data.M)
    m, n = M.shape
    Us, s, Vt = np.linalg.svd(M)
    U, V = np.zeros((m, data.k)), np.zeros((n, data.k))
    U[:, :2] = Us[:, :2] * np.sqrt(s[:2])
    V[:, :2] = Vt[:2].T * np.sqrt(s[:2])
    return np.concatenate([U.ravel(), V.ravel()])


@functools.cache
def _points(name):
    """A random point and a point 1e-3 away from a known minimizer (both on the unit sphere)."""
    rng = np.random.default_rng(100)
    if name == "linreg":
        w_min = np.asarray(min_norm_solution(LR.X, LR.y)[0])
        D = 200
    elif name == "mc10":
        w_min = _mc_minimizer(MC10)
        D = 200
    else:
        w_min = np.asarray(toy3d_curve(2.0))
        D = 3
    near = w_min / np.linalg.norm(w_min) + 1e-3 * rng.normal(size=D) / np.sqrt(D)
    # seed 105: at this point the MC Hessian's most negative eigenvalue (-9.68) exceeds its top
    # one (9.15) in magnitude (checked against eigh in the test that relies on it)
    return {"random": _unit(np.random.default_rng(105).normal(size=D)), "near-min": _unit(near)}


LOSSES = {
    "linreg": linear_regression_bn(LR.X, LR.y),
    "mc10": matrix_completion_bn(MC10),
    "toy3d": toy3d(2.0),
}


@functools.cache
def _dense_hessian_jit(name):
    return jax.jit(lambda w: dense_hessian(LOSSES[name], w))


@functools.cache
def _dense(name, point):
    """Reference: numpy eigh of the (jitted) dense jax.hessian at the point."""
    H = np.asarray(_dense_hessian_jit(name)(_points(name)[point]))
    np.testing.assert_allclose(H, H.T, atol=1e-12 * np.abs(H).max())
    evals, evecs = np.linalg.eigh(H)
    return H, evals[::-1], evecs[:, ::-1]


@functools.cache
def _top_eigs_jit(name, method, k):
    return jax.jit(lambda w: hessian_top_eigs(LOSSES[name], w, k, method=method))


# --------------------------------------------------------------------------------------------
# Lanczos / power vs dense eigh on each built-in loss
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,method,k",
    [
        (name, method, k)
        for name in ("linreg", "mc10", "toy3d")
        for method, k in (("lanczos", 1), ("lanczos", 3), ("power", 1))
        # toy3d, k = 3 is its whole 3x3 spectrum; the small-D code path of top-k is exercised
        # by the quadratic test below (compiling it here too would cost ~10 s)
        if (name, k) != ("toy3d", 3)
    ],
)
def test_top_eigs_match_dense_eigh(name, method, k):
    f = _top_eigs_jit(name, method, k)
    for point, w in _points(name).items():
        H, evals, _ = _dense(name, point)
        r = f(w)
        lam1 = abs(evals[0])
        # <= 1e-8 relative to |λ1| (issue 2); see the module docstring for why this is loose.
        np.testing.assert_allclose(
            np.asarray(r.eigenvalues), evals[:k], rtol=0, atol=1e-8 * lam1, err_msg=point
        )
        # Eigenvectors: unit, and true eigenvectors of the *dense* H (gap-free check):
        # ||H v − λ v|| <= 1e-6 |λ1| (power stops at residual 1e-7 |λ|; Lanczos at 1e-10).
        V = np.asarray(r.eigenvectors)
        assert V.shape == (k, H.shape[0])
        np.testing.assert_allclose(np.linalg.norm(V, axis=1), 1.0, rtol=1e-12)
        for lam, v in zip(np.asarray(r.eigenvalues), V, strict=True):
            assert np.linalg.norm(H @ v - lam * v) <= 1e-6 * lam1, (point, lam)
        if k > 1:  # the top-k vectors are mutually orthogonal
            np.testing.assert_allclose(V @ V.T, np.eye(k), atol=1e-8)
        assert int(r.num_hvps) >= 1


def test_dense_top_eigs_matches_numpy():
    H, evals, evecs = _dense("toy3d", "random")
    f = jax.jit(lambda w: dense_top_eigs(LOSSES["toy3d"], w, k=2))
    lam, vec = f(_points("toy3d")["random"])
    np.testing.assert_allclose(lam, evals[:2], rtol=1e-12)
    np.testing.assert_allclose(np.abs(np.asarray(vec) @ evecs[:, :2]), np.eye(2), atol=1e-8)


def test_lanczos_k3_clustered_spectrum_converges():
    """At the random MC point λ2, λ3, λ4 lie within 0.07 of each other (|λ1| = 9.2). Top-3 must
    converge (reported residuals at the 1e-10 tolerance, confirmed with the dense H) rather than
    run out of restarts."""
    H, evals, _ = _dense("mc10", "random")
    assert evals[1] - evals[3] < 1e-2 * evals[0]  # a tight cluster below λ1
    r = _top_eigs_jit("mc10", "lanczos", 3)(_points("mc10")["random"])
    np.testing.assert_allclose(r.eigenvalues, evals[:3], rtol=0, atol=1e-8 * evals[0])
    # the default tolerance: residual <= 1e-10 max(|λ1|, |λ_i|)
    assert np.all(np.asarray(r.residuals) <= 1e-10 * evals[0])
    for lam, v in zip(np.asarray(r.eigenvalues), np.asarray(r.eigenvectors), strict=True):
        # the Lanczos residual bound vs the true residual: agree to round-off (1e-9 relative)
        assert np.linalg.norm(H @ v - lam * v) <= 1e-9 * evals[0]
    # far fewer than the 50-restart cap (3 pairs x 50 cycles x 30 = 4500 HVPs)
    assert int(r.num_hvps) < 1500, int(r.num_hvps)


# --------------------------------------------------------------------------------------------
# The algebraic top eigenvalue, not the dominant one
# --------------------------------------------------------------------------------------------


def _counting_matvec(A):
    """``v -> A v`` that counts its *executions* with a host callback (a Python counter in the
    function body would count traces: inside ``lax`` loops the body is traced once)."""
    calls = []

    def matvec(v):
        jax.debug.callback(lambda: calls.append(1))
        return A @ v

    return matvec, calls


def _count(calls, result):
    jax.block_until_ready(result)
    jax.effects_barrier()
    return len(calls)


def _indefinite_quadratic(D=12):
    """Hessian of ``L(w) = ½ wᵀAw`` with ``A = Q diag(−5, 1, 0.5, 0.5, 0.2, ...) Qᵀ``: the
    dominant eigenvalue is −5, the algebraic top is 1, then a repeated 0.5 (closed form)."""
    diag = np.array([-5.0, 1.0, 0.5, 0.5, 0.2] + [0.1 * i - 0.9 for i in range(D - 5)])
    Q, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(D, D)))
    A = jnp.asarray(Q @ np.diag(diag) @ Q.T)
    # The matvec goes through the library's HVP of the quadratic loss (Hessian = A everywhere).
    H = np.asarray(jax.jit(jax.hessian(lambda w: 0.5 * w @ A @ w))(jnp.ones(D)))
    np.testing.assert_allclose(H, np.asarray(A), atol=1e-14)
    return A, Q, _unit(np.random.default_rng(4).normal(size=D))


@pytest.mark.parametrize("method", ["power", "lanczos-1", "lanczos-3"])
def test_algebraic_top_eigenvalue_of_indefinite_quadratic(method):
    A, Q, v0 = _indefinite_quadratic()
    # Plain power iteration (what the library must not return) converges to the −5 eigenvector.
    v = np.asarray(v0)
    for _ in range(200):
        v = np.asarray(A) @ v
        v /= np.linalg.norm(v)
    np.testing.assert_allclose(v @ np.asarray(A) @ v, -5.0)

    counted, calls = _counting_matvec(A)
    loss = lambda w: 0.5 * w @ A @ w
    matvec = lambda v: counted(v) + 0.0 * hvp(loss, jnp.ones(A.shape[0]), v)  # = A v
    if method == "power":
        r = power_iteration(matvec, v0, tol=1e-10)
    else:
        # k = 3 with num_iter = 11 > D − (k − 1) = 10 takes the small-D path (a Krylov space
        # shrinking with each locked pair); k = 1 the plain one
        r = lanczos_top_eigs(matvec, v0, int(method[-1]), num_iter=8 if method[-1] == "1" else 11)
    # num_hvps is the number of matvec executions (both runs of the shifted power iteration,
    # every Lanczos cycle of every locked eigenpair).
    assert _count(calls, r) == int(r.num_hvps) > 0
    k = r.eigenvalues.shape[0]
    # exact answers 1, 0.5, 0.5; 1e-8 relative as everywhere in this file. The repeated 0.5 is
    # the hard part: a single Krylov sequence sees one direction of its eigenspace, and without
    # locking top-3 returns (1, 0.5, 0.2) with small residuals, a silently wrong answer.
    np.testing.assert_allclose(r.eigenvalues, [1.0, 0.5, 0.5][:k], rtol=1e-8)
    V, Qn = np.asarray(r.eigenvectors), np.asarray(Q)
    np.testing.assert_allclose(abs(V[0] @ Qn[:, 1]), 1.0, atol=1e-8)
    if k == 3:
        # the two 0.5-vectors span the 0.5-eigenspace (any orthonormal basis of it)
        P = Qn[:, 2:4] @ Qn[:, 2:4].T
        np.testing.assert_allclose(V[1:] @ P @ V[1:].T, np.eye(2), atol=1e-8)
        assert int(r.num_hvps) > 11 + 10 + 9  # restart cycles happened (and were counted)


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_algebraic_top_eigenvalue_matrix_completion_random_point(method):
    # Issue 2: at a random point the MC Hessian's most negative eigenvalue is larger in magnitude
    # than its top one. Verify that this is the case here (dense eigh), then the methods.
    _, evals, _ = _dense("mc10", "random")
    assert evals[-1] < 0 and abs(evals[-1]) > evals[0], (evals[0], evals[-1])
    r = _top_eigs_jit("mc10", method, 1)(_points("mc10")["random"])
    np.testing.assert_allclose(float(r.eigenvalues[0]), evals[0], rtol=1e-8)


# --------------------------------------------------------------------------------------------
# Matrix completion at Figure 1 size (D = 5000): Lanczos vs power iteration, warm starts
# --------------------------------------------------------------------------------------------


@functools.cache
def _mc50_results():
    loss = matrix_completion_bn(MC50)
    w = _unit(np.random.default_rng(5).normal(size=5000))
    lanczos = jax.jit(lambda w, v0: hessian_top_eigs(loss, w, 1, method="lanczos", v0=v0))
    power = jax.jit(
        lambda w, v0: hessian_top_eigs(loss, w, 1, method="power", v0=v0, max_iter=20000)
    )
    v_cold = _unit(np.random.default_rng(6).normal(size=5000))
    r_l = lanczos(w, v_cold)
    r_p = power(w, v_cold)
    v1 = r_l.eigenvectors[0]
    return {
        "lanczos": r_l,
        "power": r_p,
        "lanczos_warm": lanczos(w, v1),
        "power_warm": power(w, v1),
    }


def test_mc50_lanczos_matches_power_iteration():
    res = _mc50_results()
    r_l, r_p = res["lanczos"], res["power"]
    lam_l, lam_p = float(r_l.eigenvalues[0]), float(r_p.eigenvalues[0])
    # Two independent methods, 1e-8 relative (issue 2). HVP counts (2-core CPU, this seed):
    # Lanczos 60, power ~300 (the dominant eigenvalue here is negative: power needs its shifted
    # second run). Printed for the record with -s.
    print(
        f"MC 50x50 D=5000: lanczos {lam_l:.15g} ({int(r_l.num_hvps)} HVPs), "
        f"power {lam_p:.15g} ({int(r_p.num_hvps)} HVPs)"
    )
    np.testing.assert_allclose(lam_p, lam_l, rtol=1e-8)
    assert lam_l > 0
    # Same eigenvector (residual of power <= 1e-7 |λ|; angle <= residual/gap).
    assert abs(float(r_l.eigenvectors[0] @ r_p.eigenvectors[0])) >= 1 - 1e-6


def test_warm_start_uses_fewer_hvps():
    res = _mc50_results()
    lam = float(res["lanczos"].eigenvalues[0])
    for cold, warm in (("lanczos", "lanczos_warm"), ("power", "power_warm")):
        n_cold, n_warm = int(res[cold].num_hvps), int(res[warm].num_hvps)
        assert n_warm < n_cold, (cold, n_cold, n_warm)
        np.testing.assert_allclose(float(res[warm].eigenvalues[0]), lam, rtol=1e-8)
    # Lanczos from the exact eigenvector converges in its first cycle (num_iter = 30 HVPs);
    # power iteration from it stops after a couple of products.
    assert int(res["lanczos_warm"].num_hvps) == 30
    assert int(res["power_warm"].num_hvps) <= 3


# --------------------------------------------------------------------------------------------
# Scale laws
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mc10"])  # the indefinite-Hessian case (one loss: ~4 s each)
def test_sharpness_scale_laws(name):
    loss = LOSSES[name]
    w = _points(name)["random"] * 1.7
    # (power iteration at a tight tolerance: its compile is 4x cheaper than Lanczos', and the
    # Lanczos path of the same function is checked through simulate's recorded sharpness)
    sph = jax.jit(lambda w: spherical_sharpness(loss, w, method="power", tol=1e-10, max_iter=20000))
    top = _top_eigs_jit(name, "lanczos", 1)
    ref = _dense(name, "random")[1][0]  # λ1 at θ = w/||w|| (the points are unit vectors)
    s1 = float(sph(w).value)
    np.testing.assert_allclose(s1, ref, rtol=1e-8)  # vs dense eigh
    lam_w = float(top(w).eigenvalues[0])
    for c in (0.2, 9.0):
        # spherical sharpness depends only on the direction (1e-10: two Lanczos solves at
        # residual 1e-10, eigenvalue error ~residual²/gap)
        np.testing.assert_allclose(float(sph(c * w).value), s1, rtol=1e-10)
        # ∇²L(cw) = ∇²L(w)/c², so λ1 scales as 1/c²
        np.testing.assert_allclose(float(top(c * w).eigenvalues[0]), lam_w / c**2, rtol=1e-10)
    # and spherical sharpness = ||w||² λ1(∇²L(w))
    np.testing.assert_allclose(s1, float(jnp.sum(w**2)) * lam_w, rtol=1e-10)


def test_spherical_sharpness_pytree():
    loss = LOSSES["linreg"]
    w = _points("linreg")["random"] * 3.0
    tree = {"a": w[:150].reshape(10, 15), "b": w[150:]}
    tree_loss = lambda p: loss(jnp.concatenate([p["a"].ravel(), p["b"]]))
    s = jax.jit(lambda p: spherical_sharpness(tree_loss, p, method="power", tol=1e-10))(tree)
    np.testing.assert_allclose(float(s.value), _dense("linreg", "random")[1][0], rtol=1e-8)
    assert s.vector.shape == (200,)


# --------------------------------------------------------------------------------------------
# HVP counts (the shifted power iteration and Lanczos k=1, 3 with restarts are counted above)
# --------------------------------------------------------------------------------------------


def test_num_hvps_counts_matvec_executions_power_unshifted():
    D = 40
    rng = np.random.default_rng(8)
    Q, _ = np.linalg.qr(rng.normal(size=(D, D)))
    diag = np.concatenate([[3.0, 2.5, 2.0], rng.uniform(-1, 1.5, D - 3)])
    A = jnp.asarray(Q @ np.diag(diag) @ Q.T)
    matvec, calls = _counting_matvec(A)
    v0 = _unit(rng.normal(size=D))
    r = power_iteration(matvec, v0, tol=1e-9)  # dominant eigenvalue positive: a single run
    assert _count(calls, r) == int(r.num_hvps) > 0
    top = np.sort(diag)[::-1][: r.eigenvalues.shape[0]]
    np.testing.assert_allclose(r.eigenvalues, top, rtol=1e-8)
