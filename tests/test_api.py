"""The public API imports, every exported name exists, and the documented example runs."""

import doctest

import eosflow
import eosflow.losses


def test_import_and_all_names_exist():
    assert eosflow.__all__, "eosflow.__all__ is empty"
    missing = [name for name in eosflow.__all__ if not hasattr(eosflow, name)]
    assert not missing, missing
    assert len(set(eosflow.__all__)) == len(eosflow.__all__), "duplicate names in __all__"


def test_losses_all_names_exist():
    missing = [name for name in eosflow.losses.__all__ if not hasattr(eosflow.losses, name)]
    assert not missing, missing
    assert len(set(eosflow.losses.__all__)) == len(eosflow.losses.__all__)


def test_core_names_are_exported():
    # issue 2's deliverables, by name
    for name in (
        "simulate",
        "simulate_sphere",
        "Trajectory",
        "NonFiniteError",
        "hvp",
        "power_iteration",
        "lanczos",
        "lanczos_top_eigs",
        "hessian_top_eigs",
        "spherical_sharpness",
        "dense_top_eigs",
        "eos_onset",
        "scale_invariant",
        "check_scale_invariance",
        "linear_regression_bn",
        "matrix_completion_bn",
        "toy3d",
    ):
        assert name in eosflow.__all__, name
    for name in ("min_norm_solution", "induced_linear_model", "effective_rank"):
        assert name in eosflow.losses.__all__, name


def test_simulate_docstring_example_runs():
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tests = finder.find(eosflow.simulate, "simulate", globs={})
    assert sum(len(t.examples) for t in tests) > 0, "simulate's docstring has no example"
    for t in tests:
        runner.run(t)
    result = runner.summarize(verbose=False)
    assert result.failed == 0 and result.attempted > 0
