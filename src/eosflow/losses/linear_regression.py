"""Linear regression with BatchNorm (Section 5 of the paper, eq. (4), Theorem 5.1).

Model: ``Φ(x; w) = σ_y (wᵀx − μ_1) / σ_1 + μ_y`` where ``μ_1, σ_1`` are the mean and *population*
standard deviation of ``{wᵀx_i}`` over the whole training set (full-batch BN), and ``μ_y, σ_y``
those of the targets (fixed, not trained). There is no epsilon inside the normalization: it would
break exact scale-invariance. Loss ``L(w) = (1/n) Σ_i (Φ(x_i; w) − y_i)²``.

Writing ``X_c = X − 1 μ_xᵀ`` and ``y_c = y − μ_y``, the residuals are
``r(w) = σ_y X_c w / ||X_c w||_n − y_c`` with ``||z||_n = sqrt(mean z²)``, which is what we compute.

Eq. (4): the model is the linear function ``w̃ᵀx + b̃`` with ``w̃ = σ_y w / ||w||_Σ``,
``b̃ = μ_y − w̃ᵀμ_x``, ``||w||_Σ = sqrt(wᵀ Σ_x w)`` (population covariance).

Theorem 5.1: the sharpness-reduction flow converges to the ``w*`` whose ``(w̃, b̃)`` solves (M):
``min ||w||² s.t. wᵀx_i + b = y_i``, i.e. ``w̃ = X_c⁺ y_c``, ``b̃ = μ_y − w̃ᵀμ_x``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from eosflow.losses.base import ResidualLoss

Array = jax.Array

__all__ = [
    "LinearRegressionData",
    "make_linear_regression_data",
    "linear_regression_bn",
    "linear_regression_bn_predict",
    "linear_regression_bn_test_loss",
    "min_norm_solution",
    "induced_linear_model",
    "relative_distance_to_min_norm",
]


class LinearRegressionData(NamedTuple):
    """Training and held-out data for linear regression.

    Attributes:
      X: ``(n, d)`` training inputs.  y: ``(n,)`` training targets.
      X_test: ``(m, d)`` held-out inputs.  y_test: ``(m,)`` held-out targets.
      w_teacher: ``(d,)`` and b_teacher: scalar, the linear model that generated the targets.
    """

    X: Array
    y: Array
    X_test: Array
    y_test: Array
    w_teacher: Array
    b_teacher: Array


def make_linear_regression_data(
    key: Array,
    n: int = 40,
    d: int = 200,
    n_test: int = 1000,
    *,
    noise: float = 0.0,
    input_mean: float = 1.0,
    dtype=None,
) -> LinearRegressionData:
    """Synthetic over-parameterized regression data from a linear teacher (Section 5's setting).

    ``x ~ N(input_mean·1, I_d)``, teacher ``w* ~ N(0, I_d/d)``, ``b* ~ N(0, 1)``,
    ``y = w*ᵀx + b* + noise·ε`` with ``ε ~ N(0, 1)`` (noise on the training targets only).
    The paper does not give its data scaling; this is our convention.

    Returns:
      a :class:`LinearRegressionData`.
    """
    dtype = dtype or jnp.result_type(float)
    kx, kt, kw, kb, ke = jax.random.split(key, 5)
    X = input_mean + jax.random.normal(kx, (n, d), dtype)
    X_test = input_mean + jax.random.normal(kt, (n_test, d), dtype)
    w_t = jax.random.normal(kw, (d,), dtype) / jnp.sqrt(d)
    b_t = jax.random.normal(kb, (), dtype)
    y = X @ w_t + b_t + noise * jax.random.normal(ke, (n,), dtype)
    y_test = X_test @ w_t + b_t
    return LinearRegressionData(X, y, X_test, y_test, w_t, b_t)


def _stats(X: Array, y: Array):
    mu_x = jnp.mean(X, axis=0)
    mu_y = jnp.mean(y)
    sigma_y = jnp.sqrt(jnp.mean(jnp.square(y - mu_y)))
    return mu_x, mu_y, sigma_y


def linear_regression_bn(X: Array, y: Array) -> ResidualLoss:
    """The scale-invariant training loss of linear regression with BN (Section 5).

    ``L(w) = mean_i (σ_y (x_iᵀw − μ_1)/σ_1 + μ_y − y_i)²`` with full-batch statistics.

    Args:
      X: ``(n, d)`` inputs; y: ``(n,)`` targets (not all equal).

    Returns:
      a :class:`ResidualLoss` on ``w ∈ R^d \\ {0}`` (undefined where ``X_c w = 0``).
    """
    X = jnp.asarray(X)
    y = jnp.asarray(y)
    if X.ndim != 2 or y.shape != (X.shape[0],):
        raise ValueError(
            f"linear_regression_bn: need X (n, d) and y (n,), got {X.shape}, {y.shape}"
        )
    mu_x, mu_y, sigma_y = _stats(X, y)
    Xc = X - mu_x
    yc = y - mu_y

    def residual(w: Array) -> Array:
        z = Xc @ w
        return sigma_y * z / jnp.sqrt(jnp.mean(jnp.square(z))) - yc

    def loss(w: Array) -> Array:
        return jnp.mean(jnp.square(residual(w)))

    return ResidualLoss(loss=loss, residual=residual, name="linear-regression-bn")


def linear_regression_bn_predict(X: Array, y: Array, w: Array, X_new: Array) -> Array:
    """Predictions ``Φ(x; w)`` on new inputs, normalized with the *training* statistics."""
    w_t, b_t = induced_linear_model(X, y, w)
    return X_new @ w_t + b_t


def linear_regression_bn_test_loss(X: Array, y: Array, w: Array, X_test: Array, y_test: Array):
    """Held-out MSE ``mean_j (Φ(x_j; w) − y_j)²`` of the BN model trained on ``(X, y)``."""
    return jnp.mean(jnp.square(linear_regression_bn_predict(X, y, w, X_test) - y_test))


def induced_linear_model(X: Array, y: Array, w: Array) -> tuple[Array, Array]:
    """Eq. (4): the linear model ``(w̃, b̃)`` that the BN model with weights ``w`` computes.

    ``w̃ = σ_y w / ||w||_Σ`` and ``b̃ = μ_y − w̃ᵀμ_x``, with ``||w||_Σ² = wᵀΣ_x w`` (population
    covariance of the training inputs). Returns ``(w_tilde (d,), b_tilde scalar)``.
    """
    mu_x, mu_y, sigma_y = _stats(X, y)
    z = (X - mu_x) @ w
    w_t = sigma_y * w / jnp.sqrt(jnp.mean(jnp.square(z)))
    return w_t, mu_y - w_t @ mu_x


def min_norm_solution(X: Array, y: Array, rcond: float | None = None) -> tuple[Array, Array]:
    """Problem (M) of Theorem 5.1: ``min ||w||² s.t. wᵀx_i + b = y_i`` for all i.

    The bias is free, so eliminating it centres the data: ``w = X_c⁺ y_c`` and
    ``b = μ_y − wᵀμ_x`` (pseudo-inverse by SVD). Returns ``(w (d,), b scalar)``.
    """
    mu_x, mu_y, _ = _stats(X, y)
    w = jnp.linalg.pinv(X - mu_x, rtol=rcond) @ (y - mu_y)
    return w, mu_y - w @ mu_x


def relative_distance_to_min_norm(X: Array, y: Array, w: Array) -> Array:
    """``||(w̃, b̃) − (w_M, b_M)|| / ||(w_M, b_M)||``: how far the induced model is from (M)."""
    w_t, b_t = induced_linear_model(X, y, w)
    w_m, b_m = min_norm_solution(X, y)
    num = jnp.sqrt(jnp.sum(jnp.square(w_t - w_m)) + jnp.square(b_t - b_m))
    return num / jnp.sqrt(jnp.sum(jnp.square(w_m)) + jnp.square(b_m))
