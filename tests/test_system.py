"""Tests of the linear surrogates, the time-invariant fit and balanced truncation."""

from __future__ import annotations

import control
import numpy as np
import pytest
import scipy.linalg

from steercontrol.exceptions import ConfigurationError, ShapeError
from steercontrol.reduction import balanced_truncation, fit_time_invariant, hankel_singular_values, realize_gains
from steercontrol.system import LayerVaryingSurrogate, TimeInvariantSurrogate

RTOL = 1e-10


def random_layer_varying(
    seed: int, dims: list[int], widths: list[int], n_out: int = 1, **kwargs
) -> LayerVaryingSurrogate:
    """Return a random surrogate with state dimensions ``dims`` (L + 1) and input ``widths`` (L)."""
    rng = np.random.default_rng(seed)
    A = [rng.standard_normal((dims[k + 1], dims[k])) / np.sqrt(dims[k]) for k in range(len(widths))]
    B = [rng.standard_normal((dims[k + 1], widths[k])) for k in range(len(widths))]
    C = rng.standard_normal((n_out, dims[-1]))
    return LayerVaryingSurrogate(A=A, B=B, C=C, **kwargs)


def random_stable(seed: int, d: int, m: int, p: int, n_steps: int = 12, radius: float = 0.8) -> TimeInvariantSurrogate:
    """Return a random time-invariant surrogate whose A has spectral radius ``radius``."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((d, d))
    A *= radius / np.max(np.abs(np.linalg.eigvals(A)))
    return TimeInvariantSurrogate(A=A, B=rng.standard_normal((d, m)), C=rng.standard_normal((p, d)), n_steps=n_steps)


def brute_force_gain(sys: LayerVaryingSurrogate, k: int) -> np.ndarray:
    product = sys.C
    for j in range(sys.n_layers - 1, k, -1):
        product = product @ sys.A[j]
    return product @ sys.B[k]


# Layer-varying surrogate


def test_gains_match_brute_force_product():
    sys = random_layer_varying(0, dims=[1, 3, 5, 2, 4], widths=[1, 2, 1, 3], n_out=2)
    gains = sys.gains()
    for k in range(sys.n_layers):
        np.testing.assert_allclose(gains[k], brute_force_gain(sys, k), rtol=RTOL, atol=1e-12)


def test_gains_match_unit_impulses():
    sys = random_layer_varying(1, dims=[2, 4, 3, 3, 5, 2], widths=[2, 1, 3, 1, 2], n_out=3)
    gains = sys.gains()
    for k, width in enumerate(sys.input_widths):
        for j in range(width):
            u = [np.zeros(m) for m in sys.input_widths]
            u[k][j] = 1.0
            np.testing.assert_allclose(sys.simulate(u), gains[k][:, j], rtol=RTOL, atol=1e-12)


def test_simulate_is_sum_of_gain_products():
    sys = random_layer_varying(2, dims=[1, 4, 4, 4], widths=[1, 2, 1], n_out=2)
    rng = np.random.default_rng(3)
    u = [rng.standard_normal(m) for m in sys.input_widths]
    expected = sum(gain @ uk for gain, uk in zip(sys.gains(), u, strict=True))
    np.testing.assert_allclose(sys.simulate(u), expected, rtol=RTOL)


def test_simulate_accepts_scalar_inputs():
    sys = random_layer_varying(4, dims=[3, 3, 3], widths=[1, 1])
    assert sys.simulate([1.0, 0.0]).shape == (1,)


def test_simulate_rejects_wrong_width():
    sys = random_layer_varying(4, dims=[3, 3, 3], widths=[1, 2])
    with pytest.raises(ShapeError, match=r"u\[1\] must have shape \(2,\)"):
        sys.simulate([1.0, 1.0])


def test_simulate_rejects_wrong_length():
    sys = random_layer_varying(4, dims=[3, 3, 3], widths=[1, 1])
    with pytest.raises(ShapeError, match="one input per layer"):
        sys.simulate([1.0])


def test_properties_report_dimensions():
    sys = random_layer_varying(5, dims=[1, 3, 2], widths=[2, 1], n_out=4)
    assert sys.n_layers == 2
    assert sys.n_outputs == 4
    assert sys.input_widths == (2, 1)
    assert sys.state_dims == (1, 3, 2)


def test_gain_profile_scalar_system():
    sys = random_layer_varying(6, dims=[2, 2, 2, 2], widths=[1, 1, 1])
    expected = np.array([brute_force_gain(sys, k)[0, 0] for k in range(3)])
    np.testing.assert_allclose(sys.gain_profile(), expected, rtol=RTOL)


def test_gain_profile_rejects_vector_inputs():
    sys = random_layer_varying(6, dims=[2, 2, 2], widths=[1, 2])
    with pytest.raises(ShapeError, match="Use gains"):
        sys.gain_profile()


def test_markov_parameters_reverse_gains():
    sys = random_layer_varying(7, dims=[2, 3, 3, 2], widths=[1, 2, 1], n_out=2)
    reversed_gains = sys.gains()[::-1]
    for parameter, gain in zip(sys.markov_parameters(), reversed_gains, strict=True):
        np.testing.assert_array_equal(parameter, gain)


def test_restrict_inputs_zeroes_other_layers():
    sys = random_layer_varying(8, dims=[2, 2, 2, 2], widths=[1, 1, 1])
    restricted = sys.restrict_inputs([1])
    profile = restricted.gain_profile()
    assert profile[0] == 0.0
    assert profile[2] == 0.0
    assert profile[1] == pytest.approx(sys.gain_profile()[1], rel=RTOL)


def test_restrict_inputs_rejects_unknown_layer():
    sys = random_layer_varying(8, dims=[2, 2, 2], widths=[1, 1])
    with pytest.raises(ConfigurationError, match=r"valid layers are 0\.\.1"):
        sys.restrict_inputs([2])


def test_one_dimensional_matrices_promoted():
    sys = LayerVaryingSurrogate(A=[np.eye(2)], B=[np.ones(2)], C=np.ones(2))
    assert sys.B[0].shape == (2, 1)
    assert sys.C.shape == (1, 2)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"A": [], "B": [], "C": np.ones((1, 2))}, ShapeError, "at least one layer"),
        (
            {"A": [np.eye(2), np.eye(3)], "B": [np.ones((2, 1)), np.ones((3, 1))], "C": np.ones((1, 3))},
            ShapeError,
            "both must equal d_1",
        ),
        ({"A": [np.eye(2)], "B": [np.ones((3, 1))], "C": np.ones((1, 2))}, ShapeError, r"B\[0\] has 3 rows"),
        ({"A": [np.eye(2)], "B": [np.ones((2, 1))], "C": np.ones((1, 3))}, ShapeError, "C has 3 columns"),
        ({"A": [np.eye(2)] * 2, "B": [np.ones((2, 1))], "C": np.ones((1, 2))}, ShapeError, "one matrix per layer"),
        (
            {"A": [np.full((2, 2), np.nan)], "B": [np.ones((2, 1))], "C": np.ones((1, 2))},
            ConfigurationError,
            "NaN or infinite",
        ),
        (
            {"A": [np.eye(2)], "B": [np.ones((2, 1))], "C": np.ones((1, 2)), "state_norms": np.ones(2)},
            ShapeError,
            r"state_norms must have shape \(1,\)",
        ),
        (
            {"A": [np.eye(2)], "B": [np.ones((2, 1))], "C": np.ones((1, 2)), "state_norms": -np.ones(1)},
            ConfigurationError,
            "non-negative",
        ),
        (
            {"A": [np.eye(2)], "B": [np.ones((2, 1))], "C": np.ones((1, 2)), "input_directions": [np.ones((5, 2))]},
            ShapeError,
            r"input_directions\[0\] must have shape \(5, 1\)",
        ),
        ({"A": [np.ones((2, 2, 2))], "B": [np.ones((2, 1))], "C": np.ones((1, 2))}, ShapeError, "2-D array"),
    ],
)
def test_layer_varying_rejects_invalid(kwargs, error, match):
    with pytest.raises(error, match=match):
        LayerVaryingSurrogate(**kwargs)


def test_shared_input_direction_is_repeated():
    directions = np.ones((6, 1))
    sys = LayerVaryingSurrogate(
        A=[np.eye(2)] * 3, B=[np.ones((2, 1))] * 3, C=np.ones((1, 2)), input_directions=directions
    )
    assert len(sys.input_directions) == 3


# Time-invariant surrogate


def test_lti_gains_equal_markov_parameters():
    sys = random_stable(10, d=4, m=2, p=3, n_steps=7)
    markov = sys.markov_parameters(7)
    gains = sys.gains()
    for k in range(7):
        np.testing.assert_allclose(gains[k], markov[7 - 1 - k], rtol=RTOL, atol=1e-13)


def test_lti_markov_parameters_are_powers():
    sys = random_stable(11, d=4, m=2, p=3)
    markov = sys.markov_parameters(5)
    for j in range(5):
        expected = sys.C @ np.linalg.matrix_power(sys.A, j) @ sys.B
        np.testing.assert_allclose(markov[j], expected, rtol=RTOL, atol=1e-13)


def test_lti_markov_matches_control_impulse_response():
    sys = random_stable(12, d=5, m=2, p=2)
    response = control.impulse_response(sys.to_statespace(), T=np.arange(9))
    # outputs (p, m, T); sample j + 1 is C A^j B
    expected = np.moveaxis(response.outputs, -1, 0)[1:]
    np.testing.assert_allclose(sys.markov_parameters(8), expected, rtol=1e-9, atol=1e-12)


def test_lti_markov_matches_control_markov_estimate():
    sys = random_stable(13, d=4, m=1, p=1, radius=0.5)
    rng = np.random.default_rng(14)
    n_samples = 400
    response = control.forced_response(sys.to_statespace(), T=np.arange(n_samples), U=rng.standard_normal(n_samples))
    # control.markov returns [D, CB, CAB, ...]. With radius 0.5, C A^j B is negligible beyond j = 60.
    estimate = control.markov(response, 62)
    np.testing.assert_allclose(estimate[1:11], sys.markov_parameters(10)[:, 0, 0], atol=1e-8)


def test_lti_simulate_matches_forced_response():
    sys = random_stable(15, d=3, m=1, p=1, n_steps=10)
    rng = np.random.default_rng(16)
    u = rng.standard_normal(10)
    response = control.forced_response(sys.to_statespace(), T=np.arange(11), U=np.append(u, 0.0))
    assert sys.as_layer_varying().simulate(list(u))[0] == pytest.approx(response.outputs[-1], rel=1e-9)


def test_statespace_round_trip():
    sys = random_stable(17, d=4, m=2, p=3, n_steps=9)
    ss = sys.to_statespace()
    back = TimeInvariantSurrogate.from_statespace(ss, n_steps=9)
    assert ss.dt == 1
    np.testing.assert_array_equal(back.A, sys.A)
    np.testing.assert_array_equal(back.B, sys.B)
    np.testing.assert_array_equal(back.C, sys.C)
    assert back.n_steps == 9


def test_from_statespace_rejects_continuous():
    ss = control.ss(np.eye(2) * -1.0, np.ones((2, 1)), np.ones((1, 2)), 0)
    with pytest.raises(ConfigurationError, match="discrete-time"):
        TimeInvariantSurrogate.from_statespace(ss, n_steps=3)


def test_from_statespace_rejects_feedthrough():
    ss = control.ss(np.eye(2) * 0.5, np.ones((2, 1)), np.ones((1, 2)), 1.0, dt=1)
    with pytest.raises(ConfigurationError, match="D = 0"):
        TimeInvariantSurrogate.from_statespace(ss, n_steps=3)


def test_as_layer_varying_keeps_gains():
    sys = random_stable(18, d=3, m=2, p=2, n_steps=6)
    for lti_gain, lv_gain in zip(sys.gains(), sys.as_layer_varying().gains(), strict=True):
        np.testing.assert_allclose(lti_gain, lv_gain, rtol=RTOL)


def test_lti_gain_profile_scalar():
    sys = TimeInvariantSurrogate(A=0.5 * np.eye(1), B=np.ones((1, 1)), C=2 * np.ones((1, 1)), n_steps=3)
    np.testing.assert_allclose(sys.gain_profile(), [0.5, 1.0, 2.0])


def test_lti_gain_profile_rejects_mimo():
    sys = random_stable(19, d=3, m=2, p=1)
    with pytest.raises(ShapeError, match="one input and one output"):
        sys.gain_profile()


def test_is_stable_by_spectral_radius():
    assert random_stable(20, d=4, m=1, p=1, radius=0.9).is_stable()
    assert not random_stable(20, d=4, m=1, p=1, radius=1.1).is_stable()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"A": np.ones((2, 3)), "B": np.ones((2, 1)), "C": np.ones((1, 2)), "n_steps": 2}, ShapeError, "square"),
        ({"A": np.eye(2), "B": np.ones((3, 1)), "C": np.ones((1, 2)), "n_steps": 2}, ShapeError, "2 rows"),
        ({"A": np.eye(2), "B": np.ones((2, 1)), "C": np.ones((1, 3)), "n_steps": 2}, ShapeError, "2 columns"),
        ({"A": np.eye(2), "B": np.ones((2, 1)), "C": np.ones((1, 2)), "n_steps": 0}, ConfigurationError, "positive"),
        (
            {"A": np.eye(2), "B": np.ones((2, 1)), "C": np.ones((1, 2)), "n_steps": 2, "state_norms": np.ones(3)},
            ShapeError,
            "state_norms",
        ),
    ],
)
def test_time_invariant_rejects_invalid(kwargs, error, match):
    with pytest.raises(error, match=match):
        TimeInvariantSurrogate(**kwargs)


# Time-invariant fit


def test_fit_is_mean_of_layer_matrices():
    sys = random_layer_varying(21, dims=[3, 3, 3, 3], widths=[2, 2, 2], n_out=2)
    fit = fit_time_invariant(sys)
    np.testing.assert_allclose(fit.A, np.mean(sys.A, axis=0), rtol=RTOL)
    np.testing.assert_allclose(fit.B, np.mean(sys.B, axis=0), rtol=RTOL)
    np.testing.assert_array_equal(fit.C, sys.C)
    assert fit.n_steps == 3


def test_fit_recovers_constant_sequence():
    lti = random_stable(22, d=3, m=1, p=1, n_steps=5)
    fit = fit_time_invariant(lti.as_layer_varying())
    np.testing.assert_allclose(fit.A, lti.A, rtol=RTOL)
    assert fit.metadata["fit"]["gain_error"] < 1e-20


def test_fit_with_overlaps_undoes_rotations():
    lti = random_stable(23, d=3, m=2, p=2, n_steps=4)
    rng = np.random.default_rng(24)
    # per-layer bases P_k = P Q_k span the same subspace, so T_k = P^T P_k = Q_k
    rotations = [np.linalg.qr(rng.standard_normal((3, 3)))[0] for _ in range(5)]
    rotated = LayerVaryingSurrogate(
        A=[rotations[k + 1].T @ lti.A @ rotations[k] for k in range(4)],
        B=[rotations[k + 1].T @ lti.B for k in range(4)],
        C=lti.C @ rotations[4],
    )
    fit = fit_time_invariant(rotated, rotations)
    np.testing.assert_allclose(fit.A, lti.A, atol=1e-12)
    np.testing.assert_allclose(fit.B, lti.B, atol=1e-12)
    np.testing.assert_allclose(fit.C, lti.C, atol=1e-12)


def test_fit_gain_refinement_lowers_error():
    lti = random_stable(25, d=4, m=1, p=1, n_steps=8, radius=0.9)
    rng = np.random.default_rng(26)
    noisy = LayerVaryingSurrogate(
        A=[lti.A + 0.05 * rng.standard_normal((4, 4)) for _ in range(8)],
        B=[lti.B + 0.2 * rng.standard_normal((4, 1)) for _ in range(8)],
        C=lti.C,
    )
    plain = fit_time_invariant(noisy)
    refined = fit_time_invariant(noisy, refine="gains")
    np.testing.assert_array_equal(refined.A, plain.A)
    assert refined.metadata["fit"]["gain_error"] < plain.metadata["fit"]["gain_error"]


def test_fit_rejects_varying_dims_without_overlaps():
    sys = random_layer_varying(27, dims=[1, 3, 3], widths=[1, 1])
    with pytest.raises(ShapeError, match="basis_overlaps"):
        fit_time_invariant(sys)


def test_fit_rejects_varying_widths():
    sys = random_layer_varying(27, dims=[3, 3, 3], widths=[1, 2])
    with pytest.raises(ShapeError, match="same input width"):
        fit_time_invariant(sys)


def test_fit_rejects_wrong_overlap_count():
    sys = random_layer_varying(27, dims=[3, 3, 3], widths=[1, 1])
    with pytest.raises(ShapeError, match="L \\+ 1 = 3"):
        fit_time_invariant(sys, [np.eye(3)] * 2)


def test_fit_rejects_unknown_refine():
    sys = random_layer_varying(27, dims=[3, 3, 3], widths=[1, 1])
    with pytest.raises(ConfigurationError, match="refine"):
        fit_time_invariant(sys, refine="markov")


# Balanced truncation


@pytest.mark.parametrize("method", ["slycot", "square_root"])
def test_full_order_realization_is_balanced(method):
    sys = random_stable(30, d=8, m=2, p=2)
    balanced, hsv = balanced_truncation(sys, 8, method=method)
    reachability = scipy.linalg.solve_discrete_lyapunov(balanced.A, balanced.B @ balanced.B.T)
    observability = scipy.linalg.solve_discrete_lyapunov(balanced.A.T, balanced.C.T @ balanced.C)
    np.testing.assert_allclose(reachability, np.diag(hsv), atol=1e-10 * hsv[0])
    np.testing.assert_allclose(observability, np.diag(hsv), atol=1e-10 * hsv[0])


@pytest.mark.parametrize("method", ["slycot", "square_root"])
def test_truncation_is_leading_block(method):
    sys = random_stable(30, d=8, m=2, p=2)
    balanced, _ = balanced_truncation(sys, 8, method=method)
    reduced, _ = balanced_truncation(sys, 4, method=method)
    np.testing.assert_allclose(reduced.A, balanced.A[:4, :4], atol=1e-10)
    np.testing.assert_allclose(reduced.B, balanced.B[:4], atol=1e-10)
    np.testing.assert_allclose(reduced.C, balanced.C[:, :4], atol=1e-10)


def test_truncation_hsv_bounded_by_leading():
    sys = random_stable(30, d=8, m=2, p=2)
    reduced, hsv = balanced_truncation(sys, 4)
    # in discrete time the truncated Gramians are Sigma_1 minus a PSD term, so they only shrink
    assert np.all(hankel_singular_values(reduced) <= hsv[:4] * (1 + 1e-10))


def test_truncation_hsv_near_leading_when_tail_small():
    # two slow modes carry the response; two fast ones are barely reachable
    sys = TimeInvariantSurrogate(
        A=np.diag([0.9, -0.7, 0.05, 0.02]),
        B=np.array([[1.0], [1.0], [1e-3], [1e-3]]),
        C=np.array([[1.0, 0.5, 1e-3, 1e-3]]),
        n_steps=8,
    )
    reduced, hsv = balanced_truncation(sys, 2)
    np.testing.assert_allclose(hankel_singular_values(reduced), hsv[:2], rtol=1e-4)


def test_truncation_hsv_match_full_system():
    sys = random_stable(31, d=6, m=1, p=2)
    _, hsv = balanced_truncation(sys, 3)
    np.testing.assert_allclose(hsv, hankel_singular_values(sys), rtol=1e-8)


def test_truncation_keeps_unit_time_step():
    reduced, _ = balanced_truncation(random_stable(32, d=6, m=1, p=1), 2)
    assert reduced.to_statespace().dt == 1
    assert reduced.A.shape == (2, 2)


def test_truncation_markov_error_bound():
    sys = random_stable(33, d=8, m=2, p=3)
    order = 3
    reduced, hsv = balanced_truncation(sys, order)
    bound = 2 * np.sum(hsv[order:])
    errors = sys.markov_parameters(60) - reduced.markov_parameters(60)
    # every Markov parameter error is bounded by the H-infinity error norm
    largest = max(np.linalg.norm(error, 2) for error in errors)
    assert largest <= bound


def test_truncation_siso_impulse_l2_bound():
    sys = random_stable(34, d=8, m=1, p=1, radius=0.85)
    order = 3
    reduced, hsv = balanced_truncation(sys, order)
    error = (sys.markov_parameters(400) - reduced.markov_parameters(400))[:, 0, 0]
    # H2 <= H-infinity for a scalar system, and the H2 norm is the impulse response's l2 norm
    assert np.linalg.norm(error) <= 2 * np.sum(hsv[order:])


def test_truncation_gains_within_bound():
    sys = random_stable(35, d=7, m=1, p=1, n_steps=24)
    reduced, hsv = balanced_truncation(sys, 4)
    difference = np.abs(sys.gain_profile() - reduced.gain_profile())
    assert np.max(difference) <= 2 * np.sum(hsv[4:])


def test_truncation_methods_agree():
    sys = random_stable(36, d=6, m=2, p=2)
    by_slycot, hsv_slycot = balanced_truncation(sys, 3, method="slycot")
    by_scipy, hsv_scipy = balanced_truncation(sys, 3, method="square_root")
    np.testing.assert_allclose(hsv_scipy, hsv_slycot, rtol=1e-8)
    np.testing.assert_allclose(by_scipy.markov_parameters(20), by_slycot.markov_parameters(20), atol=1e-8)


def test_truncation_full_order_is_exact():
    sys = random_stable(37, d=4, m=1, p=1)
    reduced, _ = balanced_truncation(sys, 4, method="square_root")
    np.testing.assert_allclose(reduced.markov_parameters(20), sys.markov_parameters(20), atol=1e-10)


def test_truncation_rejects_unstable():
    sys = random_stable(38, d=4, m=1, p=1, radius=1.2)
    with pytest.raises(ConfigurationError, match="stable A"):
        balanced_truncation(sys, 2)


@pytest.mark.parametrize("order", [0, 5, 2.0])
def test_truncation_rejects_bad_order(order):
    sys = random_stable(39, d=4, m=1, p=1)
    with pytest.raises(ConfigurationError, match=r"order must be an integer in 1\.\.4"):
        balanced_truncation(sys, order)


def test_truncation_rejects_unknown_method():
    sys = random_stable(39, d=4, m=1, p=1)
    with pytest.raises(ConfigurationError, match="method"):
        balanced_truncation(sys, 2, method="hankel")


def test_hankel_singular_values_reject_unstable():
    with pytest.raises(ConfigurationError, match="spectral radius"):
        hankel_singular_values(random_stable(40, d=3, m=1, p=1, radius=1.0 + 1e-3))


def _scalar_gain_surrogate(gains):
    return LayerVaryingSurrogate(A=[np.eye(1)] * len(gains), B=[np.array([[g]]) for g in gains], C=np.eye(1))


def test_realize_gains_recovers_planted_order():
    rng = np.random.default_rng(3)
    A = rng.standard_normal((3, 3))
    A /= 1.2 * np.abs(np.linalg.eigvals(A)).max()
    planted = TimeInvariantSurrogate(A=A, B=rng.standard_normal((3, 1)), C=rng.standard_normal((1, 3)), n_steps=20)
    llv = _scalar_gain_surrogate(planted.gain_profile())
    exact = realize_gains(llv, 3)
    assert np.allclose(exact.gain_profile(), planted.gain_profile(), atol=1e-10)
    assert exact.metadata["fit"]["gain_error"] < 1e-18
    assert realize_gains(llv, 6).metadata["order"] == 3  # capped at the Hankel rank
    assert realize_gains(llv, 1).metadata["fit"]["gain_error"] > 1e-3


def test_realize_gains_vector_outputs():
    rng = np.random.default_rng(4)
    planted = TimeInvariantSurrogate(
        A=0.5 * np.eye(2) + 0.1 * rng.standard_normal((2, 2)),
        B=rng.standard_normal((2, 2)),
        C=rng.standard_normal((3, 2)),
        n_steps=10,
    )
    llv = planted.as_layer_varying()
    realized = realize_gains(llv, 2)
    assert all(np.allclose(a, b, atol=1e-9) for a, b in zip(realized.gains(), planted.gains(), strict=True))
    assert realized.to_statespace().dt == 1


@pytest.mark.parametrize("order", [0, 11, 2.5, True])
def test_realize_gains_rejects_bad_order(order):
    with pytest.raises(ConfigurationError, match=r"order must be an integer in 1\.\.10"):
        realize_gains(_scalar_gain_surrogate(np.linspace(1.0, 2.0, 20)), order)


def test_realize_gains_rejects_zero_gains():
    with pytest.raises(ConfigurationError, match="All gains are zero"):
        realize_gains(_scalar_gain_surrogate(np.zeros(6)), 2)
