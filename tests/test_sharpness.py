"""Spherical sharpness (Definition 1.1): Lanczos and power iteration against dense ``eigh`` of
``jax.hessian``, the algebraic-vs-dominant eigenvalue trap, scale laws, warm starts, HVP counts.

Tolerance policy: both iterative methods stop on a relative residual (Lanczos 1e-10, power 1e-7 by
default); the eigenvalue error is O(residual² / gap), so 1e-8 relative to |λ1| is met with orders
of magnitude to spare unless the method converged to the *wrong* eigenvalue, which is what these
tests are there to catch. The dense reference (``jax.hessian`` + ``numpy.linalg.eigh``) is exact
to ~1e-14 relative for D <= 200.

Every call is jitted once per (loss, method, k) and reused for all points. (Eager calls of the
public functions compile once per loss and argument shapes too, since issue 13: tested at the end,
with a compile counter.)

``sharpness_along`` (end of the file) is checked on real ``simulate``/``sweep`` trajectories against
per-point ``spherical_sharpness`` / ``hessian_top_eigs`` and against dense ``eigh``, at 1e-8
relative to |λ1| like everything here.
"""

import contextlib
import doctest
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eosflow
from eosflow import sharpness as S
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
    default_v0,
    dense_hessian,
    dense_top_eigs,
    hessian_top_eigs,
    hvp,
    lanczos_top_eigs,
    power_iteration,
    spherical_sharpness,
)
from eosflow.sharpness_path import SharpnessAlong, sharpness_along

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


# --------------------------------------------------------------------------------------------
# Eager calls compile once (issue 13, item 7)
# --------------------------------------------------------------------------------------------

_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"  # jax.monitoring, one per XLA compile


@contextlib.contextmanager
def _compiles():
    """The names of the programs XLA compiles inside the block (``jax.monitoring`` events)."""
    names = []

    def listener(event, duration_secs, **kwargs):
        if event == _COMPILE_EVENT:
            names.append(kwargs.get("fun_name", "?"))

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield names
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def test_default_v0_is_the_simulators_first_warm_start():
    """``default_v0`` is a unit vector, and the one the driver's sharpness chain starts from (the
    claim its docstring makes), so per-point sharpness and ``simulate``'s agree from step 0."""
    from eosflow.driver import init_run_state

    v = default_v0(200, jnp.float64)
    np.testing.assert_allclose(float(jnp.linalg.norm(v)), 1.0, rtol=1e-15)
    rs = init_run_state(eosflow.gd_wd, jnp.ones(200), eosflow.GDWDHparams(0.1, 0.01))
    np.testing.assert_array_equal(np.asarray(rs.v1), np.asarray(v))


def test_operator_methods_hold_no_reference_to_a_callers_matvec():
    """``lanczos_top_eigs``/``power_iteration`` take an operator closure, new on every call: they
    are plain code, so nothing caches (and keeps alive) the closure and the arrays it holds."""
    import gc
    import weakref

    loss, w = LOSSES["linreg"], _points("linreg")["random"]
    refs = []
    for scale in (1.0, 2.0):
        matvec = lambda u, scale=scale: scale * hvp(loss, w, u)  # noqa: E731
        refs.append(weakref.ref(matvec))
        r = lanczos_top_eigs(matvec, default_v0(200, jnp.float64), 1, num_iter=20)
        p = power_iteration(matvec, default_v0(200, jnp.float64), tol=1e-9)
        lam = _dense("linreg", "random")[1][0] * scale
        np.testing.assert_allclose(float(r.eigenvalues[0]), lam, rtol=1e-8)
        np.testing.assert_allclose(float(p.eigenvalues[0]), lam, rtol=1e-6)
        del matvec, r, p
    gc.collect()
    assert [ref() for ref in refs] == [None, None]


def test_eager_spherical_sharpness_and_dense_top_eigs_compile_once():
    """A second eager call on a new ``w`` of the same shape and dtype compiles nothing (it used
    to retrace and recompile the whole Lanczos loop: 0.6-2.7 s per call), and its value is right
    (dense ``eigh`` reference, 1e-8 relative)."""
    # A loss object of its own, so that no other test has compiled for it.
    loss = linear_regression_bn(LR.X, LR.y)
    w1 = 2.0 * _points("linreg")["random"]
    w2 = 0.5 * _points("linreg")["near-min"]
    w3 = np.asarray(_points("linreg")["random"])  # a NumPy array: same program
    ref = {
        "w1": _dense("linreg", "random")[1][0],
        "w2": _dense("linreg", "near-min")[1][0],
    }
    with _compiles() as first:
        s1 = spherical_sharpness(loss, w1)
    assert first, "the first call compiles"
    size = S._spherical_sharpness_jit._cache_size()
    with _compiles() as second:
        s2 = jax.block_until_ready(spherical_sharpness(loss, w2))
        s3 = jax.block_until_ready(spherical_sharpness(loss, w3))
    assert second == [], second
    assert S._spherical_sharpness_jit._cache_size() <= size + 1  # (NumPy args: a dispatch entry)
    np.testing.assert_allclose(float(s1.value), ref["w1"], rtol=1e-8)
    np.testing.assert_allclose(float(s2.value), ref["w2"], rtol=1e-8)
    np.testing.assert_allclose(float(s3.value), ref["w1"], rtol=1e-8)

    with _compiles() as first:
        lam1, _ = dense_top_eigs(loss, _points("linreg")["random"], 2)
    assert first
    with _compiles() as second:
        lam2, vec2 = jax.block_until_ready(dense_top_eigs(loss, _points("linreg")["near-min"], 2))
    assert second == [], second
    np.testing.assert_allclose(np.asarray(lam1), _dense("linreg", "random")[1][:2], rtol=1e-12)
    np.testing.assert_allclose(np.asarray(lam2), _dense("linreg", "near-min")[1][:2], rtol=1e-12)
    assert vec2.shape == (2, 200)

    # Another option is another program; then that one is reused as well.
    with _compiles() as first:
        spherical_sharpness(loss, w1, method="power", tol=1e-10)
    assert first
    with _compiles() as second:
        s4 = jax.block_until_ready(spherical_sharpness(loss, w2, method="power", tol=1e-10))
    assert second == [], second
    np.testing.assert_allclose(float(s4.value), ref["w2"], rtol=1e-8)


def test_public_functions_still_work_inside_jit_and_vmap():
    """Under a trace the public functions run as plain code (no nested cached program)."""
    loss = LOSSES["linreg"]
    W = jnp.stack([_points("linreg")["random"], 3.0 * _points("linreg")["near-min"]])
    size = S._spherical_sharpness_jit._cache_size()
    lam = jax.jit(jax.vmap(lambda w: spherical_sharpness(loss, w).value))(W)
    ref = [_dense("linreg", "random")[1][0], _dense("linreg", "near-min")[1][0]]
    np.testing.assert_allclose(np.asarray(lam), ref, rtol=1e-8)
    assert S._spherical_sharpness_jit._cache_size() == size  # plain code under the trace


# --------------------------------------------------------------------------------------------
# sharpness_along: the spherical sharpness at the records of a trajectory, one compiled call
# --------------------------------------------------------------------------------------------

LR30 = _linreg(7, n=20, d=30)
LOSS30 = linear_regression_bn(LR30.X, LR30.y)  # D = 30: small enough for dense eigh references
W30 = jnp.asarray(np.random.default_rng(9).normal(size=30))


@functools.cache
def _traj30(lr=0.5):
    # sharpness recorded at every record by the simulator (its own warm-started Lanczos chain)
    return eosflow.simulate(LOSS30, W30, lr, 0.05, steps=200, record_every=10, sharpness_every=10)


def _theta(w):
    w = np.asarray(w, dtype=float)
    return jnp.asarray(w / np.linalg.norm(w))


def _dense_top(loss, theta, k):
    """Dense reference at θ (jitted once per loss and k)."""
    return np.asarray(_dense_top_jit(loss, k)(theta)[0])


@functools.cache
def _dense_top_jit(loss, k):
    return jax.jit(lambda th: dense_top_eigs(loss, th, k))


def test_sharpness_along_simulate_trajectory_flat_loss():
    traj = _traj30()
    with _compiles() as first:
        r = sharpness_along(LOSS30, traj, every=3)
    assert first
    assert isinstance(r, SharpnessAlong)
    np.testing.assert_array_equal(r.index, np.arange(0, 20, 3))
    np.testing.assert_array_equal(np.asarray(r.step), np.asarray(traj.step)[::3])
    assert r.eigenvalues.shape == (7, 1) and r.num_hvps.shape == (7,) and r.eigenvectors is None
    lam = np.asarray(r.sharpness)
    W = np.asarray(traj.w)
    for j in (0, 3, 6):  # a few points: per-point spherical_sharpness and dense eigh
        w = W[r.index[j]]
        dense = _dense_top(LOSS30, _theta(w), 1)[0]
        np.testing.assert_allclose(lam[j], dense, rtol=1e-8)
        np.testing.assert_allclose(lam[j], float(spherical_sharpness(LOSS30, w).value), rtol=1e-8)
    # the simulator's own record (Lanczos warm-started along the run) at the same steps
    np.testing.assert_allclose(lam, np.asarray(traj.sharpness)[::3], rtol=1e-8)
    assert np.all(np.asarray(r.residuals) <= 1e-10 * np.abs(lam)[:, None])

    # Another run of the same shapes: no compilation, values right.
    other = _traj30(0.8)
    with _compiles() as second:
        r2 = jax.block_until_ready(sharpness_along(LOSS30, other, every=3))
    assert second == [], second
    w = np.asarray(other.w)[r2.index[4]]
    np.testing.assert_allclose(
        float(r2.sharpness[4]), _dense_top(LOSS30, _theta(w), 1)[0], rtol=1e-8
    )


def test_sharpness_along_top3_with_vectors():
    traj = _traj30()
    r = sharpness_along(LOSS30, traj, every=4, num=3, vectors=True)
    assert r.eigenvalues.shape == (5, 3) and r.eigenvectors.shape == (5, 3, 30)
    W = np.asarray(traj.w)
    H_of = _dense_hessian_jit30()
    for j in (1, 4):
        theta = _theta(W[r.index[j]])
        ref = _dense_top(LOSS30, theta, 3)
        lam1 = abs(ref[0])
        np.testing.assert_allclose(np.asarray(r.eigenvalues[j]), ref, rtol=0, atol=1e-8 * lam1)
        hk = hessian_top_eigs(LOSS30, theta, 3)  # per-point Lanczos, cold start
        np.testing.assert_allclose(
            np.asarray(r.eigenvalues[j]), np.asarray(hk.eigenvalues), rtol=0, atol=1e-8 * lam1
        )
        # the vectors are eigenvectors of the dense H (residual <= 1e-6 |λ1|)
        H = np.asarray(H_of(theta))
        for lam, v in zip(np.asarray(r.eigenvalues[j]), np.asarray(r.eigenvectors[j]), strict=True):
            np.testing.assert_allclose(np.linalg.norm(v), 1.0, rtol=1e-12)
            assert np.linalg.norm(H @ v - lam * v) <= 1e-6 * lam1


@functools.cache
def _dense_hessian_jit30():
    return jax.jit(lambda th: dense_hessian(LOSS30, th))


def _tree(w):
    """Flat (30,) -> {"a": (4, 5), "b": (10,)} in ``ravel_pytree`` order (keys sorted)."""
    return {"a": jnp.asarray(w[:20]).reshape(4, 5), "b": jnp.asarray(w[20:])}


TREE_LOSS = eosflow.scale_invariant(lambda p: LOSS30(jnp.concatenate([p["a"].ravel(), p["b"]])))


def test_sharpness_along_pytree_w0():
    traj = eosflow.simulate(TREE_LOSS, _tree(W30), 0.5, 0.05, steps=100, record_every=10)
    assert traj.w.shape == (10, 30) and traj.w_final["a"].shape == (4, 5)
    r = sharpness_along(TREE_LOSS, traj, every=2)
    lam = np.asarray(r.sharpness)
    W = np.asarray(traj.w)
    for j in (0, 2, 4):
        w = W[r.index[j]]
        # per point on the pytree (spherical_sharpness normalizes by the norm of all leaves)
        np.testing.assert_allclose(
            lam[j], float(spherical_sharpness(TREE_LOSS, _tree(w)).value), rtol=1e-8
        )
        # dense eigh of the same function of the flat vector (TREE_LOSS(tree(w)) = LOSS30(w))
        np.testing.assert_allclose(lam[j], _dense_top(LOSS30, _theta(w), 1)[0], rtol=1e-8)
    # A plain (T, D) array with w_like: the same program and numbers.
    with _compiles() as again:
        r2 = jax.block_until_ready(sharpness_along(TREE_LOSS, traj.w, every=2, w_like=_tree(W30)))
    assert again == [], again
    np.testing.assert_array_equal(np.asarray(r2.eigenvalues), np.asarray(r.eigenvalues))
    assert r2.step is None
    with pytest.raises(ValueError, match="w_like has 20 parameters"):
        sharpness_along(TREE_LOSS, traj.w, w_like={"a": jnp.zeros((4, 5))})


def test_sharpness_along_sweep_with_a_diverging_configuration():
    """A sweep (pytree w0) where configuration 1 hits NaN: its later rows give NaN eigenvalues
    and 0 HVPs; every finite row equals per-point spherical_sharpness and dense eigh."""
    # sqrt(θ_a) is NaN once θ_a < 0: lr = 0.3 crosses there (tests/test_sweep.py), 0.002 and 0.005
    # do not. D = 3.
    loss = eosflow.scale_invariant(lambda p: jnp.sqrt(p["a"][0]) + (p["b"][0] - 0.5) ** 2)
    w0 = {"a": jnp.array([0.5]), "b": jnp.array([0.5, 0.7])}
    tr = eosflow.sweep(loss, w0, [0.002, 0.3, 0.005], 0.01, 40, record_every=2, progress=False)
    bad = int(tr.nonfinite_step[1])
    assert bad > 0 and tr.nonfinite_step[0] == tr.nonfinite_step[2] == -1
    r = sharpness_along(loss, tr, num=2)
    assert r.eigenvalues.shape == (3, 20, 2) and r.num_hvps.shape == (3, 20)
    np.testing.assert_array_equal(np.asarray(r.step), np.asarray(tr.step))
    W = np.asarray(tr.w)
    finite = np.isfinite(W).all(axis=-1)
    assert not finite[1].all() and finite[0].all() and finite[2].all()
    lam = np.asarray(r.eigenvalues)
    assert np.isnan(lam[~finite]).all() and (np.asarray(r.num_hvps)[~finite] == 0).all()
    unravel = lambda w: {"a": jnp.asarray(w[:1]), "b": jnp.asarray(w[1:])}
    f_flat = lambda w: loss(unravel(w))
    checked = 0
    for b in range(3):
        for t in (0, 7, 19):
            w = W[b, t]
            if not np.isfinite(w).all():
                continue
            one = spherical_sharpness(loss, unravel(w))
            ref = _dense_top(f_flat, _theta(w), 2)
            if not np.isfinite(ref).all():  # a finite w where the loss is NaN already
                assert np.isnan(lam[b, t]).all()
                continue
            np.testing.assert_allclose(lam[b, t, 0], float(one.value), rtol=1e-8)
            np.testing.assert_allclose(lam[b, t], ref, rtol=0, atol=1e-8 * abs(ref[0]))
            checked += 1
    assert checked >= 7
    # the rows of configuration 0 equal a sharpness_along of its own trajectory
    r0 = sharpness_along(loss, eosflow.take_config(tr, 0), num=2)
    np.testing.assert_allclose(np.asarray(r0.eigenvalues), lam[0], rtol=1e-8)


def test_sharpness_along_bad_input():
    with pytest.raises(ValueError, match="every"):
        sharpness_along(LOSS30, _traj30(), every=0)
    with pytest.raises(ValueError, match="num <= min"):
        sharpness_along(LOSS30, _traj30(), num=21)
    with pytest.raises(ValueError, match="record_params=False"):
        sharpness_along(LOSS30, np.zeros((3, 4, 0)))
    with pytest.raises(ValueError, match=r"\(T, D\) or \(B, T, D\)"):
        sharpness_along(LOSS30, W30)


def test_sharpness_along_docstring_example_runs():
    tests = doctest.DocTestFinder().find(sharpness_along, "sharpness_along", globs={})
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for t in tests:
        runner.run(t)
    result = runner.summarize(verbose=False)
    assert result.failed == 0 and result.attempted > 0
