"""Scale-invariant losses: the generic wrapper and check, and the paper's three problems."""

from eosflow.losses.base import (
    SCALE_INVARIANCE_RTOL,
    ResidualLoss,
    check_scale_invariance,
    global_norm,
    residual_fn,
    scale_invariant,
)
from eosflow.losses.linear_regression import (
    LinearRegressionData,
    induced_linear_model,
    linear_regression_bn,
    linear_regression_bn_predict,
    linear_regression_bn_test_loss,
    make_linear_regression_data,
    min_norm_solution,
    relative_distance_to_min_norm,
)
from eosflow.losses.matrix_completion import (
    MatrixCompletionData,
    effective_rank,
    make_matrix_completion_data,
    matrix_completion_bn,
    matrix_completion_gathered_loss,
    matrix_completion_prediction,
    matrix_completion_test_mse,
    singular_values,
    split_factors,
)
from eosflow.losses.toy3d import (
    toy3d,
    toy3d_curve,
    toy3d_flattest_point,
    toy3d_sharpness_on_curve,
)

__all__ = [
    "SCALE_INVARIANCE_RTOL",
    "ResidualLoss",
    "check_scale_invariance",
    "global_norm",
    "residual_fn",
    "scale_invariant",
    "LinearRegressionData",
    "induced_linear_model",
    "linear_regression_bn",
    "linear_regression_bn_predict",
    "linear_regression_bn_test_loss",
    "make_linear_regression_data",
    "min_norm_solution",
    "relative_distance_to_min_norm",
    "MatrixCompletionData",
    "effective_rank",
    "make_matrix_completion_data",
    "matrix_completion_bn",
    "matrix_completion_gathered_loss",
    "matrix_completion_prediction",
    "matrix_completion_test_mse",
    "singular_values",
    "split_factors",
    "toy3d",
    "toy3d_curve",
    "toy3d_flattest_point",
    "toy3d_sharpness_on_curve",
]
