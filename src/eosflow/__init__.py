"""eosflow: the sharpness-reduction theory of normalization + weight decay, on JAX.

Implements Lyu, Li & Arora, *Understanding the Generalization Benefit of Normalization Layers:
Sharpness Reduction* (NeurIPS 2022): scale-invariant losses, GD+WD (eq. 1) and its sphere form
(eq. 2), spherical sharpness (Definition 1.1), Edge-of-Stability diagnostics, the minimizer
manifold and the sharpness-reduction flow (eq. 3) with our own ODE integrators, and the tracking
analysis of Theorem 4.7.

Turn on float64 for theory checks: ``eosflow.enable_x64()`` (see :mod:`eosflow.precision`).
"""

from eosflow import (
    analysis,
    central,
    driver,
    dynamics,
    flow,
    losses,
    manifold,
    ode,
    optim,
    scaling_laws,
    schedulers,
    sdcp,
    sweeps,
)
from eosflow.analysis import (
    OscillationResult,
    TrackingResult,
    eos_init,
    oscillation,
    tracking,
)
from eosflow.batch_sharding import batch_mesh, shard_batch
from eosflow.central import (
    CentralFlow,
    CentralFlowInfo,
    CentralFlowState,
    central_flow,
    central_flow_dynamics,
)
from eosflow.devices import cpu_cores, use_cpu_devices
from eosflow.driver import RunState
from eosflow.dynamics import Dynamics, SphereHparams, gd_wd, sphere_dynamics
from eosflow.eff_lr_fit import measured_eff_lr
from eosflow.eos import eos_onset, fit_step
from eosflow.flow import FlowError, FlowSolution, flow_vector_field, sharpness_reduction_flow
from eosflow.gd import GDState, GDWDHparams, StepInfo, effective_lr, gd_wd_step
from eosflow.losses import (
    ResidualLoss,
    check_scale_invariance,
    linear_regression_bn,
    make_linear_regression_data,
    make_matrix_completion_data,
    matrix_completion_bn,
    scale_invariant,
    toy3d,
)
from eosflow.manifold import (
    Geometry,
    Projection,
    grad_gamma,
    grad_log_sharpness,
    grad_sharpness,
    local_geometry,
    project_tangent,
    project_to_manifold,
)
from eosflow.optim import OptimRun, from_optax, scalar_rmsprop
from eosflow.precision import Float32Warning, enable_x64, x64_enabled
from eosflow.scaling_laws import (
    EntryGeometry,
    ExponentFit,
    OscillationAmplitude,
    eos_entry_geometry,
    eos_entry_step,
    fit_exponent,
    near_minimizer_init,
    oscillation_amplitude,
)
from eosflow.schedulers import (
    EffLRScheduler,
    RMSpropHparams,
    gd_wd_scheduler,
    quasi_rmsprop_check,
    scalar_rmsprop_scheduler,
)
from eosflow.sdcp import SDCPResult, sdcp_diagonal, solve_sdcp
from eosflow.sharpness import (
    EigResult,
    Sharpness,
    dense_hessian,
    dense_top_eigs,
    hessian_top_eigs,
    hvp,
    lanczos,
    lanczos_top_eigs,
    power_iteration,
    spherical_sharpness,
)
from eosflow.sharpness_path import SharpnessAlong, sharpness_along
from eosflow.simulation import simulate, simulate_optax, simulate_rmsprop, simulate_sphere
from eosflow.sphere import SphereState, gd_wd_eff_lr_update, norm_from_eff_lr, sphere_step
from eosflow.sphere_sdcp import (
    SphereSDCP,
    central_velocity,
    hessian_derivative_terms,
    sdcp_from_rates,
    sdcp_operator,
    tangent_velocity,
)
from eosflow.sweeps import SingleDeviceWarning, SweepConfig, load_sweep, sweep, take_config
from eosflow.sweeps import configurations as sweep_configurations
from eosflow.trajectory import NonFiniteError, Trajectory
from eosflow.validation import validate_hyperparams
from eosflow.version import __version__ as __version__

# Loaded on first access (PEP 562): flax and scikit-learn are imported only by those who use them.
_LAZY = {
    "nets": ("eosflow.nets", None),
    "resnet": ("eosflow.resnet", None),
    "data": ("eosflow.data", None),
    "runio": ("eosflow.runio", None),
    "MLP": ("eosflow.nets", "MLP"),
    "VGG": ("eosflow.nets", "VGG"),
    "VGG11": ("eosflow.nets", "VGG11"),
    "ResNet20": ("eosflow.resnet", "ResNet20"),
    "NetLoss": ("eosflow.nets", "NetLoss"),
    "make_net_loss": ("eosflow.nets", "make_net_loss"),
    "Dataset": ("eosflow.data", "Dataset"),
    "load_digits": ("eosflow.data", "load_digits"),
    "load_cifar10": ("eosflow.data", "load_cifar10"),
    "load_mnist1d": ("eosflow.data", "load_mnist1d"),
    "CNN1D": ("eosflow.nets1d", "CNN1D"),
    "Conv1D": ("eosflow.nets1d", "Conv1D"),
    "nets1d": ("eosflow.nets1d", None),
    "run_chunked": ("eosflow.chunks", "run_chunked"),
    "RunRecorder": ("eosflow.runio", "RunRecorder"),
    "fullbatch": ("eosflow.fullbatch", None),
    "fullbatch_memory": ("eosflow.fullbatch_memory", None),
    "FullBatchNet": ("eosflow.fullbatch", "FullBatchNet"),
    "FullBatchRecords": ("eosflow.fullbatch", "FullBatchRecords"),
    "make_fullbatch": ("eosflow.fullbatch", "make_fullbatch"),
    "fullbatch_loss": ("eosflow.fullbatch", "fullbatch_loss"),
    "fullbatch_accuracy": ("eosflow.fullbatch", "fullbatch_accuracy"),
    "fullbatch_step": ("eosflow.fullbatch", "fullbatch_step"),
    "fullbatch_run": ("eosflow.fullbatch", "fullbatch_run"),
    "fullbatch_start": ("eosflow.fullbatch", "fullbatch_start"),
    "layer_norms": ("eosflow.fullbatch", "layer_norms"),
    "StepMemory": ("eosflow.fullbatch_memory", "StepMemory"),
    "step_memory": ("eosflow.fullbatch_memory", "step_memory"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        mod = importlib.import_module(module)
        return mod if attr is None else getattr(mod, attr)
    raise AttributeError(f"module 'eosflow' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "analysis",
    "batch_mesh",
    "shard_batch",
    "flow",
    "losses",
    "manifold",
    "ode",
    "OscillationResult",
    "TrackingResult",
    "eos_init",
    "oscillation",
    "tracking",
    "FlowError",
    "FlowSolution",
    "flow_vector_field",
    "sharpness_reduction_flow",
    "Geometry",
    "Projection",
    "grad_gamma",
    "grad_log_sharpness",
    "grad_sharpness",
    "local_geometry",
    "project_tangent",
    "project_to_manifold",
    "eos_onset",
    "fit_step",
    "scaling_laws",
    "EntryGeometry",
    "ExponentFit",
    "OscillationAmplitude",
    "eos_entry_geometry",
    "eos_entry_step",
    "fit_exponent",
    "near_minimizer_init",
    "oscillation_amplitude",
    "GDState",
    "StepInfo",
    "effective_lr",
    "gd_wd_step",
    "ResidualLoss",
    "check_scale_invariance",
    "linear_regression_bn",
    "make_linear_regression_data",
    "make_matrix_completion_data",
    "matrix_completion_bn",
    "scale_invariant",
    "toy3d",
    "use_cpu_devices",
    "cpu_cores",
    "enable_x64",
    "x64_enabled",
    "Float32Warning",
    "EigResult",
    "Sharpness",
    "SharpnessAlong",
    "dense_hessian",
    "dense_top_eigs",
    "hessian_top_eigs",
    "hvp",
    "lanczos",
    "lanczos_top_eigs",
    "power_iteration",
    "spherical_sharpness",
    "sharpness_along",
    "NonFiniteError",
    "Trajectory",
    "simulate",
    "simulate_sphere",
    "validate_hyperparams",
    "SphereState",
    "gd_wd_eff_lr_update",
    "norm_from_eff_lr",
    "sphere_step",
    "optim",
    "schedulers",
    "driver",
    "dynamics",
    "Dynamics",
    "RunState",
    "SphereHparams",
    "gd_wd",
    "sphere_dynamics",
    "from_optax",
    "OptimRun",
    "measured_eff_lr",
    "scalar_rmsprop",
    "simulate_optax",
    "simulate_rmsprop",
    "EffLRScheduler",
    "GDWDHparams",
    "RMSpropHparams",
    "gd_wd_scheduler",
    "quasi_rmsprop_check",
    "scalar_rmsprop_scheduler",
    "SweepConfig",
    "SingleDeviceWarning",
    "load_sweep",
    "sweep",
    "sweep_configurations",
    "sweeps",
    "take_config",
    "sdcp",
    "SDCPResult",
    "solve_sdcp",
    "sdcp_diagonal",
    "SphereSDCP",
    "sdcp_operator",
    "central_velocity",
    "hessian_derivative_terms",
    "sdcp_from_rates",
    "tangent_velocity",
    "central",
    "CentralFlow",
    "CentralFlowInfo",
    "CentralFlowState",
    "central_flow",
    "central_flow_dynamics",
    *_LAZY,
]
