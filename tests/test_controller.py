"""Tests of minimum-energy schedules, constrained plans and heuristic schedules."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import cvxpy as cp
import numpy as np
import pytest

from steercontrol.controller import Controller
from steercontrol.exceptions import (
    ConfigurationError,
    IllConditionedGramianWarning,
    InfeasibleError,
    ShapeError,
    SolverAccuracyWarning,
    SolverError,
    UnreachableTargetError,
)
from steercontrol.gramian import output_gramian
from steercontrol.heuristics import (
    best_single_layer,
    early_layer,
    heuristic_schedules,
    last_layer,
    middle_layer,
    random_single_layer,
    single_layer,
    uniform_all,
)
from steercontrol.schedule import Schedule
from steercontrol.system import LayerVaryingSurrogate, TimeInvariantSurrogate

RTOL = 1e-10
SOLVER_TOL = 1e-6


def random_surrogate(
    seed: int, n_layers: int = 8, *, d: int = 4, widths: list[int] | None = None, n_out: int = 1, **kwargs
) -> LayerVaryingSurrogate:
    """Return a random surrogate with state dimension ``d`` at every layer except d_0 = 1."""
    rng = np.random.default_rng(seed)
    widths = widths or [1] * n_layers
    dims = [1] + [d] * n_layers
    A = [rng.standard_normal((dims[k + 1], dims[k])) / np.sqrt(dims[k]) for k in range(n_layers)]
    B = [rng.standard_normal((d, widths[k])) for k in range(n_layers)]
    return LayerVaryingSurrogate(A=A, B=B, C=rng.standard_normal((n_out, d)), **kwargs)


def scalar_surrogate(gains: list[float], **kwargs) -> LayerVaryingSurrogate:
    """Return a one-dimensional surrogate with identity dynamics, so g_k = B_k."""
    n_layers = len(gains)
    return LayerVaryingSurrogate(A=[np.eye(1)] * n_layers, B=[np.array([[g]]) for g in gains], C=np.eye(1), **kwargs)


def stacked_gains(controller: Controller) -> np.ndarray:
    return np.hstack(controller.gains)


def stacked_amplitudes(schedule: Schedule) -> np.ndarray:
    return np.concatenate(schedule.amplitudes)


def binding_cap(controller: Controller, target) -> float:
    """Return a cap between the smallest feasible one and the closed-form schedule's largest input norm."""
    G = stacked_gains(controller)
    widths = controller.input_widths
    starts = np.concatenate([[0], np.cumsum(widths)])
    u = cp.Variable(G.shape[1])
    largest = cp.max(cp.hstack([cp.norm(u[a:b], 2) for a, b in zip(starts[:-1], starts[1:], strict=True)]))
    problem = cp.Problem(cp.Minimize(largest), [G @ u == np.atleast_1d(target)])
    problem.solve(solver="CLARABEL")
    assert problem.status == cp.OPTIMAL
    smallest_feasible = problem.value
    closed_form_largest = np.max(controller.min_energy(target).amplitude_profile() ** 2) ** 0.5
    assert smallest_feasible < closed_form_largest
    return 0.5 * (smallest_feasible + closed_form_largest)


# Closed-form minimum energy


def test_min_energy_reaches_target():
    sys = random_surrogate(0)
    schedule = Controller(sys).min_energy(1.5)
    np.testing.assert_allclose(schedule.predicted_shift, [1.5], rtol=RTOL)
    np.testing.assert_allclose(sys.simulate(schedule.amplitudes), [1.5], rtol=1e-9)
    assert schedule.status == "closed_form"


def test_min_energy_energy_formula():
    sys = random_surrogate(1)
    target = np.array([0.7])
    schedule = Controller(sys).min_energy(target)
    W = output_gramian(sys.gains())
    expected = float(target @ np.linalg.solve(W, target))
    assert schedule.energy == pytest.approx(expected, rel=1e-10)
    assert schedule.energy == pytest.approx(
        float(stacked_amplitudes(schedule) @ stacked_amplitudes(schedule)), rel=RTOL
    )


def test_min_energy_beats_null_space_perturbation():
    sys = random_surrogate(2, widths=[1, 2, 1, 3, 1, 1, 2, 1], n_out=2)
    controller = Controller(sys)
    target = np.array([1.0, -0.5])
    schedule = controller.min_energy(target)
    G = stacked_gains(controller)
    rng = np.random.default_rng(3)
    for _ in range(5):
        z = rng.standard_normal(G.shape[1])
        # remove the part of z that moves the output: z - G^T W^-1 G z
        null_z = z - G.T @ np.linalg.solve(G @ G.T, G @ z)
        other = stacked_amplitudes(schedule) + null_z
        np.testing.assert_allclose(G @ other, target, atol=1e-10)
        assert other @ other > schedule.energy


def test_min_energy_several_outputs():
    sys = random_surrogate(4, widths=[2, 1, 3, 1, 1, 2, 1, 1], n_out=3)
    target = np.array([0.3, -1.0, 2.0])
    schedule = Controller(sys).min_energy(target)
    np.testing.assert_allclose(sys.simulate(schedule.amplitudes), target, rtol=1e-9)
    assert [a.shape for a in schedule.amplitudes] == [(w,) for w in sys.input_widths]


def test_min_energy_layer_subset_zero_elsewhere():
    sys = random_surrogate(5)
    schedule = Controller(sys).min_energy(1.0, layers=[2, 5])
    profile = schedule.amplitude_profile()
    assert np.all(profile[[0, 1, 3, 4, 6, 7]] == 0.0)
    assert schedule.layers == (2, 5)
    assert schedule.status == "closed_form"
    np.testing.assert_allclose(sys.simulate(schedule.amplitudes), [1.0], rtol=1e-9)


def test_min_energy_layer_subset_energy():
    sys = random_surrogate(6)
    gains = sys.gain_profile()
    schedule = Controller(sys).min_energy(2.0, layers=(1, 3, 4))
    assert schedule.energy == pytest.approx(4.0 / np.sum(gains[[1, 3, 4]] ** 2), rel=1e-10)


def test_min_energy_time_invariant_surrogate():
    rng = np.random.default_rng(7)
    sys = TimeInvariantSurrogate(
        A=0.3 * rng.standard_normal((3, 3)), B=rng.standard_normal((3, 1)), C=rng.standard_normal((1, 3)), n_steps=6
    )
    schedule = Controller(sys).min_energy(1.0)
    np.testing.assert_allclose(sys.as_layer_varying().simulate(schedule.amplitudes), [1.0], rtol=1e-9)


def test_min_energy_rank_deficient_reachable_target():
    # every layer moves both outputs along (1, 2), so only that direction is reachable
    rng = np.random.default_rng(8)
    sys = LayerVaryingSurrogate(
        A=[np.eye(1)] * 4, B=[rng.standard_normal((1, 1)) for _ in range(4)], C=np.array([[1.0], [2.0]])
    )
    with pytest.warns(IllConditionedGramianWarning):
        schedule = Controller(sys).min_energy([0.5, 1.0])
    np.testing.assert_allclose(schedule.predicted_shift, [0.5, 1.0], rtol=1e-9)


def test_gramian_method_matches_output_gramian():
    sys = random_surrogate(9, n_out=2)
    controller = Controller(sys)
    gains = sys.gains()
    np.testing.assert_allclose(controller.gramian(), output_gramian(gains), rtol=RTOL)
    np.testing.assert_allclose(controller.gramian([0, 3]), output_gramian([gains[0], gains[3]]), rtol=RTOL)


def test_reachable_fraction_of_span():
    sys = LayerVaryingSurrogate(A=[np.eye(1)] * 2, B=[np.ones((1, 1))] * 2, C=np.array([[1.0], [0.0]]))
    controller = Controller(sys)
    assert controller.reachable_fraction([3.0, 0.0]) == pytest.approx(1.0)
    assert controller.reachable_fraction([1.0, 1.0]) == pytest.approx(np.sqrt(0.5))


# Constrained minimum energy (cvxpy)


def test_loose_cap_matches_closed_form():
    sys = random_surrogate(10, n_layers=12)
    controller = Controller(sys)
    closed = controller.min_energy(1.0)
    solved = controller.min_energy(1.0, max_amplitude=1e6)
    np.testing.assert_allclose(stacked_amplitudes(solved), stacked_amplitudes(closed), atol=SOLVER_TOL)
    assert solved.energy == pytest.approx(closed.energy, rel=SOLVER_TOL)
    assert solved.status == "optimal"


def test_loose_cap_matches_closed_form_vector_inputs():
    sys = random_surrogate(11, widths=[2, 1, 3, 2, 1, 1, 2, 2], n_out=2)
    controller = Controller(sys)
    target = np.array([1.0, -2.0])
    closed = controller.min_energy(target)
    solved = controller.min_energy(target, max_amplitude=1e6)
    np.testing.assert_allclose(stacked_amplitudes(solved), stacked_amplitudes(closed), atol=SOLVER_TOL)


def test_zero_sparsity_matches_closed_form():
    controller = Controller(random_surrogate(12))
    closed = controller.min_energy(-0.8)
    solved = controller.min_energy(-0.8, sparsity=0.0)
    np.testing.assert_allclose(stacked_amplitudes(solved), stacked_amplitudes(closed), atol=SOLVER_TOL)


def test_binding_cap_respected():
    sys = random_surrogate(13, n_layers=10)
    controller = Controller(sys)
    closed = controller.min_energy(1.0)
    cap = binding_cap(controller, 1.0)
    capped = controller.min_energy(1.0, max_amplitude=cap)
    assert np.max(np.abs(capped.amplitude_profile())) <= cap * (1 + 1e-12)
    assert np.max(np.abs(capped.amplitude_profile())) == pytest.approx(cap, rel=1e-6)
    np.testing.assert_allclose(capped.predicted_shift, [1.0], rtol=SOLVER_TOL)
    assert capped.energy > closed.energy


def test_per_layer_cap_respected():
    sys = random_surrogate(14, n_layers=6)
    controller = Controller(sys)
    caps = np.array([np.inf, 0.0, 0.05, np.inf, 0.0, 0.1])
    schedule = controller.min_energy(0.5, max_amplitude=caps)
    profile = np.abs(schedule.amplitude_profile())
    assert np.all(profile <= caps * (1 + 1e-12))
    np.testing.assert_allclose(schedule.predicted_shift, [0.5], rtol=SOLVER_TOL)


def test_vector_input_cap_bounds_norm():
    sys = random_surrogate(15, widths=[2] * 8, n_out=2)
    controller = Controller(sys)
    target = np.array([1.0, 1.0])
    cap = binding_cap(controller, target)
    schedule = controller.min_energy(target, max_amplitude=cap)
    assert np.max(schedule.amplitude_profile()) <= cap * (1 + 1e-12)
    np.testing.assert_allclose(schedule.predicted_shift, target, rtol=SOLVER_TOL)


def test_relative_cap_uses_state_norms():
    norms = np.linspace(1.0, 4.0, 8)
    sys = random_surrogate(16, state_norms=norms)
    controller = Controller(sys)
    # A uniform relative cap c means |u_k| <= c * norms[k], so the smallest feasible c is 1 / sum |g_k| norms[k].
    smallest = 1.0 / np.sum(np.abs(sys.gain_profile()) * norms)
    closed = controller.min_energy(1.0)
    fraction = 0.5 * (smallest + np.max(np.abs(closed.amplitude_profile()) / norms))
    schedule = controller.min_energy(1.0, relative_cap=fraction)
    assert np.all(np.abs(schedule.amplitude_profile()) <= fraction * norms * (1 + 1e-12))
    np.testing.assert_allclose(schedule.predicted_shift, [1.0], rtol=SOLVER_TOL)


def test_smaller_of_two_caps_applies():
    sys = random_surrogate(17, state_norms=np.full(8, 10.0))
    controller = Controller(sys)
    cap = binding_cap(controller, 1.0)
    schedule = controller.min_energy(1.0, max_amplitude=cap, relative_cap=1.0)
    assert np.max(np.abs(schedule.amplitude_profile())) <= cap * (1 + 1e-12)


def test_positive_sign_respected():
    sys = random_surrogate(18)
    assert np.any(sys.gain_profile() > 0)
    schedule = Controller(sys).min_energy(1.0, sign="positive")
    assert np.all(schedule.amplitude_profile() >= 0.0)
    np.testing.assert_allclose(schedule.predicted_shift, [1.0], rtol=SOLVER_TOL)


def test_sign_array_respected():
    sys = scalar_surrogate([1.0, -2.0, 0.5, 1.5, -1.0])
    signs = np.array([1, -1, 0, -1, 1])
    schedule = Controller(sys).min_energy(2.0, sign=signs)
    profile = schedule.amplitude_profile()
    assert np.all(profile[signs > 0] >= 0.0)
    assert np.all(profile[signs < 0] <= 0.0)
    np.testing.assert_allclose(schedule.predicted_shift, [2.0], rtol=SOLVER_TOL)


def test_sparsity_reduces_active_layers():
    sys = random_surrogate(19, n_layers=16)
    controller = Controller(sys)
    closed = controller.min_energy(1.0)
    sparse = controller.min_energy(1.0, sparsity=2.0 * np.max(np.abs(closed.amplitude_profile())))
    active = np.abs(sparse.amplitude_profile()) > 1e-6 * np.max(np.abs(sparse.amplitude_profile()))
    assert np.sum(active) < 16
    np.testing.assert_allclose(sparse.predicted_shift, [1.0], rtol=SOLVER_TOL)


def test_constrained_layer_subset_zero_elsewhere():
    sys = random_surrogate(20)
    schedule = Controller(sys).min_energy(1.0, layers=[1, 4, 6], max_amplitude=1e6)
    profile = schedule.amplitude_profile()
    assert np.all(profile[[0, 2, 3, 5, 7]] == 0.0)
    np.testing.assert_allclose(schedule.predicted_shift, [1.0], rtol=SOLVER_TOL)


def test_constrained_several_outputs():
    sys = random_surrogate(21, n_layers=10, n_out=2)
    controller = Controller(sys)
    target = np.array([0.5, -0.5])
    cap = binding_cap(controller, target)
    schedule = controller.min_energy(target, max_amplitude=cap)
    np.testing.assert_allclose(schedule.predicted_shift, target, rtol=SOLVER_TOL)
    assert np.max(np.abs(schedule.amplitude_profile())) <= cap * (1 + 1e-12)


def test_resolve_reuses_problem():
    sys = random_surrogate(22, n_layers=10)
    controller = Controller(sys)
    controller.min_energy(1.0, max_amplitude=0.5)
    again = controller.min_energy(-0.3, max_amplitude=0.2)
    fresh = Controller(sys).min_energy(-0.3, max_amplitude=0.2)
    assert len(controller._problems) == 1
    np.testing.assert_allclose(stacked_amplitudes(again), stacked_amplitudes(fresh), atol=SOLVER_TOL)


def test_constrained_metadata_names_solver():
    schedule = Controller(random_surrogate(23)).min_energy(1.0, max_amplitude=1e6)
    assert schedule.metadata["solver"] == "CLARABEL"
    assert schedule.metadata["constraints"] == {"max_amplitude": 1e6}


def test_infeasible_cap_raises():
    controller = Controller(scalar_surrogate([1.0, 2.0, -1.0]))
    with pytest.raises(InfeasibleError, match=r"max_amplitude=0\.1.*\[-0\.4, 0\.4\]"):
        controller.min_energy(1.0, max_amplitude=0.1)


def test_infeasible_sign_raises():
    controller = Controller(scalar_surrogate([1.0, 2.0, 3.0]))
    with pytest.raises(InfeasibleError, match="sign='positive'"):
        controller.min_energy(-1.0, sign="positive")


def test_scs_fallback_when_clarabel_fails(monkeypatch):
    original = cp.Problem.solve

    def failing_clarabel(self, *args, **kwargs):
        if kwargs.get("solver") == "CLARABEL":
            raise cp.error.SolverError("planted failure")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cp.Problem, "solve", failing_clarabel)
    with warnings.catch_warnings():
        # SCS stops at a looser tolerance than CLARABEL; the miss is checked below
        warnings.simplefilter("ignore", SolverAccuracyWarning)
        schedule = Controller(random_surrogate(24)).min_energy(1.0, max_amplitude=1e6)
    assert schedule.metadata["solver"] == "SCS"
    np.testing.assert_allclose(schedule.predicted_shift, [1.0], rtol=1e-3)


def test_explicit_solver_failure_raises(monkeypatch):
    def failing(self, *args, **kwargs):
        raise cp.error.SolverError("planted failure")

    monkeypatch.setattr(cp.Problem, "solve", failing)
    with pytest.raises(SolverError, match="CLARABEL failed"):
        Controller(random_surrogate(25)).min_energy(1.0, max_amplitude=1e6, solver="CLARABEL")


def planted_status(monkeypatch, status: str) -> None:
    """Make every cvxpy solve report ``status`` after solving normally."""
    original = cp.Problem.solve

    def solve_with_status(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        self._status = status
        return result

    monkeypatch.setattr(cp.Problem, "solve", solve_with_status)


def test_inaccurate_status_warns(monkeypatch):
    planted_status(monkeypatch, cp.OPTIMAL_INACCURATE)
    with pytest.warns(SolverAccuracyWarning, match="optimal_inaccurate") as record:
        Controller(random_surrogate(26)).min_energy(1.0, max_amplitude=1e6)
    assert record[0].filename == __file__


def test_unbounded_status_raises(monkeypatch):
    planted_status(monkeypatch, cp.UNBOUNDED)
    with pytest.raises(SolverError, match="unbounded"):
        Controller(random_surrogate(27)).min_energy(1.0, max_amplitude=1e6)


# Error paths


@pytest.mark.parametrize(
    ("target", "error", "match"),
    [
        ([np.nan, 1.0], ConfigurationError, "finite"),
        ([np.inf, 1.0], ConfigurationError, "finite"),
        (0.0, ShapeError, r"shape \(2,\)"),
        ([0.0, 0.0], ConfigurationError, "zero target needs no injection"),
        ([1.0, 2.0, 3.0], ShapeError, r"shape \(2,\)"),
        ([[1.0, 2.0]], ShapeError, r"shape \(2,\)"),
    ],
)
def test_min_energy_rejects_target(target, error, match):
    controller = Controller(random_surrogate(30, n_out=2))
    with pytest.raises(error, match=match):
        controller.min_energy(target)


def test_min_energy_rejects_scalar_zero_target():
    with pytest.raises(ConfigurationError, match="zero target needs no injection"):
        Controller(random_surrogate(30)).min_energy(0.0)


@pytest.mark.parametrize("layers", [[8], [-1], [0, 9]])
def test_min_energy_rejects_unknown_layer(layers):
    with pytest.raises(ConfigurationError, match=r"valid layers are 0\.\.7"):
        Controller(random_surrogate(31)).min_energy(1.0, layers=layers)


def test_min_energy_rejects_empty_layers():
    with pytest.raises(ConfigurationError, match="layers is empty"):
        Controller(random_surrogate(31)).min_energy(1.0, layers=[])


def test_min_energy_rejects_float_layer():
    with pytest.raises(ConfigurationError, match="integers"):
        Controller(random_surrogate(31)).min_energy(1.0, layers=[1.5])


def test_unreachable_zero_gains():
    controller = Controller(scalar_surrogate([1.0, 0.0, 0.0, 2.0]))
    with pytest.raises(UnreachableTargetError, match=r"layers \[1, 2\]: all their gains are zero"):
        controller.min_energy(1.0, layers=[1, 2])


def test_unreachable_zero_gains_constrained():
    controller = Controller(scalar_surrogate([1.0, 0.0, 0.0, 2.0]))
    with pytest.raises(UnreachableTargetError, match="Allow other layers"):
        controller.min_energy(1.0, layers=[1, 2], max_amplitude=1.0)


def test_unreachable_outside_span():
    sys = LayerVaryingSurrogate(A=[np.eye(1)] * 3, B=[np.ones((1, 1))] * 3, C=np.array([[1.0], [1.0]]))
    with pytest.raises(UnreachableTargetError, match="outside the span"):
        Controller(sys).min_energy([1.0, -1.0])


def test_ill_conditioned_gramian_warns():
    # the second output is reachable only through tiny gains
    sys = LayerVaryingSurrogate(A=[np.eye(2)] * 2, B=[np.array([[1.0], [0.0]]), np.array([[1.0], [1e-7]])], C=np.eye(2))
    with pytest.warns(IllConditionedGramianWarning, match="ill-conditioned") as record:
        Controller(sys).min_energy([1.0, 1.0])
    assert record[0].filename == __file__


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_amplitude": -1.0}, ConfigurationError, "non-negative"),
        ({"max_amplitude": np.ones(3)}, ShapeError, r"max_amplitude must be a scalar or have shape \(8,\)"),
        ({"relative_cap": 0.1}, ConfigurationError, "needs state_norms"),
        ({"sign": "up"}, ConfigurationError, "'positive', 'negative'"),
        ({"sign": np.ones(3)}, ShapeError, r"sign must have shape \(8,\)"),
        ({"sign": np.full(8, 2)}, ConfigurationError, r"\+1, -1 or 0"),
        ({"sparsity": -1.0}, ConfigurationError, "sparsity"),
        ({"sparsity": np.nan}, ConfigurationError, "sparsity"),
        ({"max_amplitude": 1.0, "solver": "NOSUCHSOLVER"}, ConfigurationError, "installed cvxpy solvers"),
    ],
)
def test_min_energy_rejects_option(kwargs, error, match):
    with pytest.raises(error, match=match):
        Controller(random_surrogate(32)).min_energy(1.0, **kwargs)


def test_sign_rejects_vector_inputs():
    controller = Controller(random_surrogate(33, widths=[2] * 8))
    with pytest.raises(ConfigurationError, match="one input per layer"):
        controller.min_energy(1.0, sign="positive")


def test_controller_rejects_other_types():
    with pytest.raises(TypeError, match="LayerVaryingSurrogate"):
        Controller(np.eye(2))


def test_controller_rejects_bad_max_condition():
    with pytest.raises(ConfigurationError, match="max_condition"):
        Controller(random_surrogate(34), max_condition=1.0)


# Heuristic schedules


def test_uniform_energy_ratio():
    gains = np.array([0.5, -0.2, 1.0, 0.8, 0.1, 0.3])
    sys = scalar_surrogate(list(gains))
    optimal = Controller(sys).min_energy(1.0)
    uniform = uniform_all(sys, 1.0)
    expected = len(gains) * np.sum(gains**2) / np.sum(gains) ** 2
    assert uniform.energy / optimal.energy == pytest.approx(expected, rel=1e-10)


def test_single_layer_energy_ratio():
    gains = np.array([0.5, -0.2, 1.0, 0.8, 0.1, 0.3])
    sys = scalar_surrogate(list(gains))
    optimal = Controller(sys).min_energy(1.0)
    for layer in range(len(gains)):
        schedule = single_layer(sys, 1.0, layer)
        expected = np.sum(gains**2) / gains[layer] ** 2
        assert schedule.energy / optimal.energy == pytest.approx(expected, rel=1e-10)


def test_heuristics_reach_target():
    sys = random_surrogate(40, n_layers=12)
    for name, schedule in heuristic_schedules(sys, 0.75, seed=3).items():
        np.testing.assert_allclose(sys.simulate(schedule.amplitudes), [0.75], rtol=1e-9, err_msg=name)


def test_heuristic_layer_indices():
    controller = Controller(random_surrogate(41, n_layers=12))
    assert last_layer(controller, 1.0).layers == (11,)
    assert middle_layer(controller, 1.0).layers == (6,)
    assert early_layer(controller, 1.0).layers == (3,)


def test_random_single_layer_uses_seed():
    controller = Controller(random_surrogate(42, n_layers=12))
    expected = int(np.random.default_rng(5).integers(12))
    assert random_single_layer(controller, 1.0, seed=5).layers == (expected,)


def test_best_single_layer_measured_gains():
    sys = random_surrogate(43)
    measured = np.array([0.1, -0.3, 2.0, -5.0, 0.2, 0.0, 1.0, 0.4])
    schedule = best_single_layer(sys, 1.0, measured_gains=measured)
    assert schedule.layers == (3,)
    assert schedule.metadata["gain_source"] == "measured"


def test_best_single_layer_defaults_to_surrogate():
    sys = scalar_surrogate([0.1, -3.0, 2.0])
    schedule = best_single_layer(sys, 1.0)
    assert schedule.layers == (1,)
    assert schedule.metadata["gain_source"] == "surrogate"


def test_best_single_layer_vector_inputs_rejected():
    # Twelve input columns over four layers: the error must be about widths, not a column index.
    sys = random_surrogate(46, n_layers=4, widths=[3, 3, 3, 3])
    with pytest.raises(ConfigurationError, match=r"one input per layer.*\(3, 3, 3, 3\)"):
        best_single_layer(sys, 1.0)


def test_best_single_layer_rejects_wrong_length():
    with pytest.raises(ShapeError, match="measured_gains"):
        best_single_layer(random_surrogate(44), 1.0, measured_gains=np.ones(3))


def test_heuristic_schedules_keys():
    schedules = heuristic_schedules(random_surrogate(45), 1.0)
    assert set(schedules) == {
        "uniform_all",
        "last_layer",
        "middle_layer",
        "early_layer",
        "random_single_layer",
        "best_single_layer",
        "min_energy",
    }


def test_min_energy_is_cheapest_heuristic():
    schedules = heuristic_schedules(random_surrogate(46, n_layers=10), 1.0)
    cheapest = min(schedules.values(), key=lambda schedule: schedule.energy)
    assert cheapest.name == "min_energy"


def test_zero_effect_heuristic_raises():
    sys = scalar_surrogate([1.0, 1.0, 0.0, 1.0])
    with pytest.raises(UnreachableTargetError, match="middle_layer"):
        middle_layer(sys, 1.0)


def test_heuristic_rejects_vector_inputs():
    with pytest.raises(ConfigurationError, match="one input per layer"):
        uniform_all(random_surrogate(47, widths=[2] * 8), 1.0)


def test_heuristic_rejects_off_axis_target():
    sys = random_surrogate(48, n_out=2)
    with pytest.raises(UnreachableTargetError, match="uniform_all"):
        uniform_all(sys, [1.0, 0.0])


def test_single_layer_rejects_unknown_layer():
    with pytest.raises(ConfigurationError, match=r"0\.\.7"):
        single_layer(random_surrogate(49), 1.0, 8)


# Schedule


def test_schedule_vectors_map_directions():
    rng = np.random.default_rng(50)
    directions = [rng.standard_normal((5, width)) for width in (1, 2, 1)]
    schedule = Schedule(
        name="demo",
        amplitudes=[np.array([2.0]), np.array([1.0, -1.0]), np.array([0.0])],
        predicted_shift=np.array([1.0]),
        target_shift=np.array([1.0]),
        energy=6.0,
        status="heuristic",
        layers=(0, 1),
    )
    vectors = schedule.vectors(directions)
    assert vectors.shape == (3, 5)
    np.testing.assert_allclose(vectors[1], directions[1][:, 0] - directions[1][:, 1], rtol=RTOL)
    np.testing.assert_allclose(vectors[0], 2.0 * directions[0][:, 0], rtol=RTOL)


def test_schedule_vectors_reject_mismatch():
    schedule = Controller(random_surrogate(51)).min_energy(1.0)
    with pytest.raises(ShapeError, match="input_directions"):
        schedule.vectors([np.ones((4, 2))] * 8)


def test_amplitude_profile_vector_norms():
    sys = random_surrogate(52, widths=[2] * 8)
    schedule = Controller(sys).min_energy(1.0)
    expected = [np.linalg.norm(amplitude) for amplitude in schedule.amplitudes]
    np.testing.assert_allclose(schedule.amplitude_profile(), expected, rtol=RTOL)


def test_scaled_schedule_is_consistent():
    schedule = Controller(random_surrogate(53)).min_energy(1.0)
    doubled = schedule.scaled(2.0)
    np.testing.assert_allclose(doubled.amplitude_profile(), 2.0 * schedule.amplitude_profile(), rtol=RTOL)
    np.testing.assert_allclose(doubled.predicted_shift, 2.0 * schedule.predicted_shift, rtol=RTOL)
    assert doubled.energy == pytest.approx(4.0 * schedule.energy, rel=RTOL)
    np.testing.assert_array_equal(doubled.target_shift, schedule.target_shift)
    assert doubled.scaled(1.5).metadata["scale"] == pytest.approx(3.0)


def test_schedule_json_round_trip():
    schedule = Controller(random_surrogate(54)).min_energy(1.0, max_amplitude=np.full(8, 1e3))
    restored = Schedule.from_dict(json.loads(json.dumps(schedule.to_dict())))
    np.testing.assert_array_equal(stacked_amplitudes(restored), stacked_amplitudes(schedule))
    np.testing.assert_array_equal(restored.predicted_shift, schedule.predicted_shift)
    assert restored.layers == schedule.layers
    assert restored.energy == schedule.energy
    assert restored.metadata["constraints"]["max_amplitude"] == [1e3] * 8


def test_schedule_from_dict_rejects_missing_keys():
    with pytest.raises(ConfigurationError, match="missing the keys"):
        Schedule.from_dict({"name": "x"})


def test_schedule_rejects_mismatched_shifts():
    with pytest.raises(ShapeError, match="same length"):
        Schedule(
            name="x",
            amplitudes=[np.zeros(1)],
            predicted_shift=np.zeros(2),
            target_shift=np.zeros(1),
            energy=0.0,
            status="heuristic",
            layers=(),
        )


# Dependencies


def test_linear_modules_do_not_import_torch():
    code = (
        "import sys; import steercontrol.system, steercontrol.reduction, steercontrol.gramian, "
        "steercontrol.schedule, steercontrol.controller, steercontrol.heuristics; "
        "print('torch' in sys.modules)"
    )
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=True)
    assert result.stdout.strip() == "False"


def test_heuristics_respect_allowed_layers():
    sys = scalar_surrogate([5.0, 0.1, 2.0, 1.0, 0.5])
    allowed = (1, 2, 3)
    uniform = uniform_all(sys, 1.0, layers=allowed)
    assert uniform.layers == allowed
    assert np.allclose(uniform.amplitude_profile(), [0.0, 1 / 3.1, 1 / 3.1, 1 / 3.1, 0.0])
    assert last_layer(sys, 1.0, layers=allowed).layers == (3,)
    assert best_single_layer(sys, 1.0, layers=allowed).layers == (2,)
    assert best_single_layer(sys, 1.0).layers == (0,)


def test_heuristic_layers_out_of_range_rejected():
    with pytest.raises(ConfigurationError, match="Layer index 7 is out of range"):
        uniform_all(scalar_surrogate([1.0, 2.0]), 1.0, layers=[7])
