"""Reachability Gramians of linear surrogates and their numerical diagnostics.

The output-reachability Gramian :math:`W = \\sum_k G_k G_k^T` decides which
readout shifts a schedule can reach and at what energy: the minimum energy to
reach :math:`\\delta y` is :math:`\\delta y^T W^{-1} \\delta y`. This module
uses NumPy and SciPy only, never torch.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.linalg

from steercontrol.exceptions import ConfigurationError, IllConditionedGramianWarning, ShapeError
from steercontrol.system import LayerVaryingSurrogate, TimeInvariantSurrogate, _require_stable

__all__ = [
    "GramianDiagnostics",
    "output_gramian",
    "state_reachability_gramian",
    "infinite_horizon_gramian",
    "gramian_diagnostics",
    "check_gramian",
]


def output_gramian(gains: Sequence[np.ndarray]) -> np.ndarray:
    """Compute the output-reachability Gramian of a list of gains.

    Parameters
    ----------
    gains : sequence of ndarray, each (n_out, m_k)
        Gain of every layer, as returned by ``surrogate.gains()``.

    Returns
    -------
    ndarray, (n_out, n_out)
        :math:`W = \\sum_k G_k G_k^T`.

    Raises
    ------
    ShapeError
        If ``gains`` is empty, a gain is not 2-D, or the row counts differ.

    Examples
    --------
    >>> import numpy as np
    >>> output_gramian([np.array([[1.0]]), np.array([[2.0]])])
    array([[5.]])
    """
    if len(gains) == 0:
        raise ShapeError("gains is empty. Pass at least one layer's gain.")
    matrices = [np.asarray(gain, dtype=np.float64) for gain in gains]
    n_outputs = matrices[0].shape[0] if matrices[0].ndim == 2 else -1
    for k, gain in enumerate(matrices):
        if gain.ndim != 2 or gain.shape[0] != n_outputs:
            raise ShapeError(f"gains[{k}] must have shape (n_out, m_k) with n_out={n_outputs}, got {gain.shape}.")
    # (n_out, sum m_k): all inputs side by side
    stacked = np.hstack(matrices)
    return stacked @ stacked.T


def state_reachability_gramian(
    surrogate: LayerVaryingSurrogate | TimeInvariantSurrogate,
) -> np.ndarray:
    """Compute the finite-horizon reachability Gramian of the final state.

    Parameters
    ----------
    surrogate : LayerVaryingSurrogate or TimeInvariantSurrogate

    Returns
    -------
    ndarray, (d_L, d_L)
        :math:`W_x = \\sum_{k=0}^{L-1} \\Phi(L, k+1) B_k B_k^T \\Phi(L, k+1)^T`.

    Notes
    -----
    The sum is accumulated by the forward recursion
    :math:`W_{k+1} = A_k W_k A_k^T + B_k B_k^T` from :math:`W_0 = 0`, so
    :math:`W_x = W_L`.

    Examples
    --------
    >>> import numpy as np
    >>> sys = TimeInvariantSurrogate(A=0.5 * np.eye(1), B=np.ones((1, 1)),
    ...                              C=np.ones((1, 1)), n_steps=2)
    >>> state_reachability_gramian(sys)
    array([[1.25]])
    """
    if isinstance(surrogate, TimeInvariantSurrogate):
        A_seq = [surrogate.A] * surrogate.n_steps
        B_seq = [surrogate.B] * surrogate.n_steps
    elif isinstance(surrogate, LayerVaryingSurrogate):
        A_seq, B_seq = surrogate.A, surrogate.B
    else:
        raise ConfigurationError(
            f"surrogate must be a LayerVaryingSurrogate or TimeInvariantSurrogate, got {type(surrogate).__name__}."
        )

    gramian = np.zeros((A_seq[0].shape[1], A_seq[0].shape[1]))
    for A, B in zip(A_seq, B_seq, strict=True):
        gramian = A @ gramian @ A.T + B @ B.T
    return (gramian + gramian.T) / 2


def infinite_horizon_gramian(
    tis: TimeInvariantSurrogate,
    *,
    kind: Literal["reachability", "observability"] = "reachability",
) -> np.ndarray:
    """Solve the discrete Lyapunov equation for an infinite-horizon Gramian.

    Parameters
    ----------
    tis : TimeInvariantSurrogate
        System with a stable ``A``.
    kind : {"reachability", "observability"}
        ``"reachability"`` solves :math:`A W A^T - W + B B^T = 0`, and
        ``"observability"`` solves :math:`A^T W A - W + C^T C = 0`.

    Returns
    -------
    ndarray, (d, d)

    Raises
    ------
    ConfigurationError
        If ``A`` is not stable (the series diverges) or ``kind`` is unknown.

    Notes
    -----
    For a stable system the reachability result equals
    ``control.gram(tis.to_statespace(), "c")`` and the observability one
    ``control.gram(..., "o")``.

    Examples
    --------
    >>> import numpy as np
    >>> sys = TimeInvariantSurrogate(A=0.5 * np.eye(1), B=np.ones((1, 1)),
    ...                              C=np.ones((1, 1)), n_steps=2)
    >>> infinite_horizon_gramian(sys).round(6)
    array([[1.333333]])
    """
    if kind not in ("reachability", "observability"):
        raise ConfigurationError(f"kind must be 'reachability' or 'observability', got {kind!r}.")
    _require_stable(tis, "infinite_horizon_gramian")
    if kind == "reachability":
        gramian = scipy.linalg.solve_discrete_lyapunov(tis.A, tis.B @ tis.B.T)
    else:
        gramian = scipy.linalg.solve_discrete_lyapunov(tis.A.T, tis.C.T @ tis.C)
    return (gramian + gramian.T) / 2


@dataclass(frozen=True, eq=False)
class GramianDiagnostics:
    """Spectral summary of a symmetric positive semidefinite Gramian.

    Attributes
    ----------
    rank : int
        Number of eigenvalues above ``tolerance``.
    condition_number : float
        :math:`\\lambda_{max} / \\lambda_{min}`, or ``inf`` when
        :math:`\\lambda_{min} \\le` ``tolerance``.
    min_eigenvalue : float
        Smallest eigenvalue (may be slightly negative from rounding).
    least_reachable_direction : ndarray, (n,)
        Unit eigenvector of the smallest eigenvalue, the output direction
        that costs most energy to reach.
    eigenvalues : ndarray, (n,)
        All eigenvalues in increasing order.
    eigenvectors : ndarray, (n, n)
        Orthonormal eigenvectors as columns, in the order of ``eigenvalues``.
    tolerance : float
        :math:`n \\cdot \\varepsilon \\cdot \\max(\\lambda_{max}, 0)`, the
        threshold below which an eigenvalue counts as zero (the NumPy
        ``matrix_rank`` convention).
    """

    rank: int
    condition_number: float
    min_eigenvalue: float
    least_reachable_direction: np.ndarray
    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    tolerance: float

    @property
    def is_full_rank(self) -> bool:
        """Whether every eigenvalue is above the tolerance."""
        return self.rank == self.eigenvalues.size


def _as_gramian(W: np.ndarray) -> np.ndarray:
    gramian = np.asarray(W, dtype=np.float64)
    if gramian.ndim != 2 or gramian.shape[0] != gramian.shape[1] or gramian.size == 0:
        raise ShapeError(f"W must be a non-empty square matrix, got shape {gramian.shape}.")
    if not np.all(np.isfinite(gramian)):
        raise ConfigurationError("W contains NaN or infinite entries.")
    scale = max(float(np.max(np.abs(gramian))), np.finfo(float).tiny)
    if np.max(np.abs(gramian - gramian.T)) > 1e-8 * scale:
        raise ConfigurationError("W is not symmetric, but a Gramian must equal its transpose.")
    return (gramian + gramian.T) / 2


def gramian_diagnostics(W: np.ndarray) -> GramianDiagnostics:
    """Compute rank, condition number and least reachable direction of a Gramian.

    Parameters
    ----------
    W : ndarray, (n, n)
        Symmetric positive semidefinite Gramian.

    Returns
    -------
    GramianDiagnostics

    Raises
    ------
    ShapeError
        If ``W`` is not a non-empty square matrix.
    ConfigurationError
        If ``W`` has non-finite entries or is not symmetric (relative 1e-8).

    Examples
    --------
    >>> import numpy as np
    >>> diagnostics = gramian_diagnostics(np.diag([4.0, 0.0]))
    >>> diagnostics.rank, diagnostics.condition_number
    (1, inf)
    """
    gramian = _as_gramian(W)
    eigenvalues, eigenvectors = np.linalg.eigh(gramian)
    largest = max(float(eigenvalues[-1]), 0.0)
    tolerance = gramian.shape[0] * np.finfo(float).eps * largest
    rank = int(np.sum(eigenvalues > tolerance))
    smallest = float(eigenvalues[0])
    condition = largest / smallest if smallest > tolerance else float("inf")
    return GramianDiagnostics(
        rank=rank,
        condition_number=condition,
        min_eigenvalue=smallest,
        least_reachable_direction=eigenvectors[:, 0].copy(),
        eigenvalues=eigenvalues,
        eigenvectors=eigenvectors,
        tolerance=tolerance,
    )


def check_gramian(W: np.ndarray, *, max_condition: float = 1e10, stacklevel: int = 2) -> GramianDiagnostics:
    """Warn when a Gramian is ill-conditioned and return its diagnostics.

    Parameters
    ----------
    W : ndarray, (n, n)
        Symmetric positive semidefinite Gramian.
    max_condition : float
        Largest condition number accepted without a warning.
    stacklevel : int
        Passed to :func:`warnings.warn`. The default points at the caller.

    Returns
    -------
    GramianDiagnostics

    Warns
    -----
    IllConditionedGramianWarning
        If the condition number exceeds ``max_condition`` (including a
        singular ``W``).

    Raises
    ------
    ConfigurationError
        If ``max_condition`` is not a number greater than 1.

    Examples
    --------
    >>> import numpy as np
    >>> check_gramian(np.eye(2)).condition_number
    1.0
    """
    if not np.isfinite(max_condition) or max_condition <= 1:
        raise ConfigurationError(f"max_condition must be a finite number > 1, got {max_condition!r}.")
    diagnostics = gramian_diagnostics(W)
    if diagnostics.condition_number > max_condition:
        direction = np.array2string(diagnostics.least_reachable_direction, precision=3)
        warnings.warn(
            f"The Gramian is ill-conditioned (condition number {diagnostics.condition_number:.3g} "
            f"> {max_condition:.3g}, rank {diagnostics.rank} of {diagnostics.eigenvalues.size}). "
            f"Targets along {direction} need very large inputs. Allow more layers or inputs, "
            "or drop that output.",
            IllConditionedGramianWarning,
            stacklevel=stacklevel,
        )
    return diagnostics
