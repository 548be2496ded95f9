"""Tests of the reachability Gramians and their diagnostics."""

from __future__ import annotations

import warnings

import control
import numpy as np
import pytest

from steercontrol.exceptions import ConfigurationError, IllConditionedGramianWarning, ShapeError
from steercontrol.gramian import (
    check_gramian,
    gramian_diagnostics,
    infinite_horizon_gramian,
    output_gramian,
    state_reachability_gramian,
)
from steercontrol.system import LayerVaryingSurrogate, TimeInvariantSurrogate

RTOL = 1e-10


def random_layer_varying(seed: int, dims: list[int], widths: list[int], n_out: int) -> LayerVaryingSurrogate:
    rng = np.random.default_rng(seed)
    A = [rng.standard_normal((dims[k + 1], dims[k])) / np.sqrt(dims[k]) for k in range(len(widths))]
    B = [rng.standard_normal((dims[k + 1], widths[k])) for k in range(len(widths))]
    return LayerVaryingSurrogate(A=A, B=B, C=rng.standard_normal((n_out, dims[-1])))


def random_stable(seed: int, d: int, m: int, p: int, n_steps: int = 10, radius: float = 0.8) -> TimeInvariantSurrogate:
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((d, d))
    A *= radius / np.max(np.abs(np.linalg.eigvals(A)))
    return TimeInvariantSurrogate(A=A, B=rng.standard_normal((d, m)), C=rng.standard_normal((p, d)), n_steps=n_steps)


def transition(sys: LayerVaryingSurrogate, start: int) -> np.ndarray:
    """Return Phi(L, start) = A_{L-1} ... A_start."""
    product = np.eye(sys.state_dims[-1])
    for j in range(sys.n_layers - 1, start - 1, -1):
        product = product @ sys.A[j]
    return product


# Output Gramian


def test_output_gramian_equals_sum():
    sys = random_layer_varying(0, dims=[2, 3, 1, 4, 3], widths=[1, 2, 3, 1], n_out=3)
    gains = sys.gains()
    expected = sum(gain @ gain.T for gain in gains)
    np.testing.assert_allclose(output_gramian(gains), expected, rtol=RTOL)


def test_output_gramian_is_symmetric_psd():
    sys = random_layer_varying(1, dims=[3, 3, 3, 3], widths=[2, 2, 2], n_out=4)
    W = output_gramian(sys.gains())
    np.testing.assert_allclose(W, W.T, rtol=RTOL)
    assert np.min(np.linalg.eigvalsh(W)) >= -1e-12


def test_output_gramian_rejects_empty():
    with pytest.raises(ShapeError, match="empty"):
        output_gramian([])


def test_output_gramian_rejects_mixed_rows():
    with pytest.raises(ShapeError, match=r"gains\[1\] must have shape \(n_out, m_k\) with n_out=2"):
        output_gramian([np.ones((2, 1)), np.ones((3, 1))])


# State reachability Gramian


def test_state_gramian_equals_defining_sum():
    sys = random_layer_varying(2, dims=[1, 3, 5, 2, 4], widths=[1, 2, 1, 3], n_out=1)
    expected = np.zeros((4, 4))
    for k in range(sys.n_layers):
        propagated = transition(sys, k + 1) @ sys.B[k]
        expected += propagated @ propagated.T
    np.testing.assert_allclose(state_reachability_gramian(sys), expected, rtol=RTOL, atol=1e-12)


def test_state_gramian_lti_matches_layer_varying():
    sys = random_stable(3, d=4, m=2, p=1, n_steps=7)
    np.testing.assert_allclose(
        state_reachability_gramian(sys), state_reachability_gramian(sys.as_layer_varying()), rtol=RTOL
    )


def test_state_gramian_output_projection():
    sys = random_layer_varying(4, dims=[2, 3, 3, 3], widths=[1, 1, 2], n_out=2)
    # C W_x C^T is the output Gramian
    projected = sys.C @ state_reachability_gramian(sys) @ sys.C.T
    np.testing.assert_allclose(projected, output_gramian(sys.gains()), rtol=1e-9)


def test_state_gramian_converges_to_infinite_horizon():
    sys = random_stable(5, d=4, m=2, p=1, n_steps=300, radius=0.7)
    np.testing.assert_allclose(state_reachability_gramian(sys), infinite_horizon_gramian(sys), rtol=1e-9)


def test_state_gramian_rejects_other_types():
    with pytest.raises(ConfigurationError, match="LayerVaryingSurrogate"):
        state_reachability_gramian(np.eye(2))


# Infinite-horizon Gramian


def test_infinite_gramian_matches_control_gram():
    sys = random_stable(6, d=5, m=2, p=3)
    expected = control.gram(sys.to_statespace(), "c")
    np.testing.assert_allclose(infinite_horizon_gramian(sys), expected, rtol=1e-9, atol=1e-12)


def test_observability_gramian_matches_control_gram():
    sys = random_stable(7, d=5, m=2, p=3)
    expected = control.gram(sys.to_statespace(), "o")
    np.testing.assert_allclose(infinite_horizon_gramian(sys, kind="observability"), expected, rtol=1e-9, atol=1e-12)


def test_infinite_gramian_solves_lyapunov():
    sys = random_stable(8, d=6, m=1, p=1, radius=0.95)
    W = infinite_horizon_gramian(sys)
    residual = sys.A @ W @ sys.A.T - W + sys.B @ sys.B.T
    assert np.max(np.abs(residual)) <= 1e-10 * np.max(np.abs(W))


def test_infinite_gramian_rejects_unstable():
    with pytest.raises(ConfigurationError, match="stable A"):
        infinite_horizon_gramian(random_stable(9, d=3, m=1, p=1, radius=1.05))


def test_infinite_gramian_rejects_unknown_kind():
    with pytest.raises(ConfigurationError, match="kind"):
        infinite_horizon_gramian(random_stable(9, d=3, m=1, p=1), kind="controllability")


# Diagnostics


def planted_gramian(eigenvalues: list[float], seed: int = 10) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((len(eigenvalues), len(eigenvalues))))[0]
    return basis @ np.diag(eigenvalues) @ basis.T, basis


def test_diagnostics_on_singular_gramian():
    W, basis = planted_gramian([5.0, 2.0, 0.0])
    diagnostics = gramian_diagnostics(W)
    assert diagnostics.rank == 2
    assert diagnostics.condition_number == float("inf")
    assert not diagnostics.is_full_rank
    assert abs(diagnostics.least_reachable_direction @ basis[:, 2]) == pytest.approx(1.0, abs=1e-10)


def test_diagnostics_on_full_rank_gramian():
    W, basis = planted_gramian([8.0, 2.0, 0.5])
    diagnostics = gramian_diagnostics(W)
    assert diagnostics.rank == 3
    assert diagnostics.condition_number == pytest.approx(16.0, rel=1e-10)
    assert diagnostics.min_eigenvalue == pytest.approx(0.5, rel=1e-10)
    np.testing.assert_allclose(diagnostics.eigenvalues, [0.5, 2.0, 8.0], rtol=1e-10)
    assert abs(diagnostics.least_reachable_direction @ basis[:, 2]) == pytest.approx(1.0, abs=1e-10)


def test_diagnostics_tolerance_convention():
    W, _ = planted_gramian([4.0, 1.0])
    assert gramian_diagnostics(W).tolerance == pytest.approx(2 * np.finfo(float).eps * 4.0, rel=1e-8)


def test_diagnostics_on_zero_gramian():
    diagnostics = gramian_diagnostics(np.zeros((2, 2)))
    assert diagnostics.rank == 0
    assert diagnostics.condition_number == float("inf")


@pytest.mark.parametrize(
    ("W", "error", "match"),
    [
        (np.ones((2, 3)), ShapeError, "square"),
        (np.array([[1.0, 2.0], [0.0, 1.0]]), ConfigurationError, "not symmetric"),
        (np.array([[np.nan]]), ConfigurationError, "NaN"),
    ],
)
def test_diagnostics_reject_invalid(W, error, match):
    with pytest.raises(error, match=match):
        gramian_diagnostics(W)


def test_check_gramian_warns_when_ill_conditioned():
    W, _ = planted_gramian([1.0, 1e-12])
    with pytest.warns(IllConditionedGramianWarning, match="ill-conditioned") as record:
        check_gramian(W)
    # stacklevel=2 points the warning at this test, the caller
    assert record[0].filename == __file__


def test_check_gramian_warns_on_singular():
    W, _ = planted_gramian([3.0, 0.0])
    with pytest.warns(IllConditionedGramianWarning, match="rank 1 of 2"):
        check_gramian(W)


def test_check_gramian_quiet_when_well_conditioned():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        diagnostics = check_gramian(np.diag([1.0, 1e-3]))
    assert diagnostics.condition_number == pytest.approx(1e3)


def test_check_gramian_respects_threshold():
    with pytest.warns(IllConditionedGramianWarning):
        check_gramian(np.diag([1.0, 1e-3]), max_condition=100.0)


def test_check_gramian_rejects_bad_threshold():
    with pytest.raises(ConfigurationError, match="max_condition"):
        check_gramian(np.eye(2), max_condition=0.5)
