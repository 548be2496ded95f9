"""Reduce the layer dependence or the order of a linear surrogate.

:func:`fit_time_invariant` fits one time-invariant surrogate to a
layer-varying one by least squares. :func:`balanced_truncation` lowers the
state dimension of a stable time-invariant surrogate and keeps its horizon.
Its H-infinity error is at most twice the sum of the discarded
:func:`hankel_singular_values`. This module uses NumPy, SciPy and, when
installed, slycot. It never imports torch.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
import scipy.linalg

from steercontrol.exceptions import ConfigurationError, ShapeError
from steercontrol.system import (
    LayerVaryingSurrogate,
    TimeInvariantSurrogate,
    _as_matrix,
    _backward_gains,
    _require_stable,
)

__all__ = [
    "fit_time_invariant",
    "realize_gains",
    "balanced_truncation",
    "hankel_singular_values",
]

logger = logging.getLogger(__name__)


def _common_basis_sequence(
    llv: LayerVaryingSurrogate, basis_overlaps: Sequence[np.ndarray] | None
) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Return (A_k, B_k, C) expressed in one basis, mapping through the overlaps if given."""
    if basis_overlaps is None:
        dims = llv.state_dims
        if len(set(dims)) != 1:
            raise ShapeError(
                f"The layer bases differ in dimension (d_k = {list(dims)}). Pass basis_overlaps "
                "to map each layer's basis into a common one."
            )
        return list(llv.A), list(llv.B), llv.C

    overlaps = [_as_matrix(t, f"basis_overlaps[{k}]") for k, t in enumerate(basis_overlaps)]
    if len(overlaps) != llv.n_layers + 1:
        raise ShapeError(
            f"basis_overlaps must have L + 1 = {llv.n_layers + 1} matrices, one per state "
            f"x_0..x_L, got {len(overlaps)}."
        )
    common_dim = overlaps[0].shape[0]
    for k, (overlap, dim) in enumerate(zip(overlaps, llv.state_dims, strict=True)):
        if overlap.shape != (common_dim, dim):
            raise ShapeError(f"basis_overlaps[{k}] must have shape ({common_dim}, {dim}), got {overlap.shape}.")
    # T_k = P^T P_k maps layer coordinates into common ones: (d, d_k)
    A = [overlaps[k + 1] @ a @ overlaps[k].T for k, a in enumerate(llv.A)]
    B = [overlaps[k + 1] @ b for k, b in enumerate(llv.B)]
    C = llv.C @ overlaps[-1].T
    return A, B, C


def _gain_error(target_gains: Sequence[np.ndarray], A: np.ndarray, B: np.ndarray, C: np.ndarray) -> float:
    n_layers = len(target_gains)
    fitted = _backward_gains([A] * n_layers, [B] * n_layers, C)
    return float(sum(np.sum((g - f) ** 2) for g, f in zip(target_gains, fitted, strict=True)))


def fit_time_invariant(
    llv: LayerVaryingSurrogate,
    basis_overlaps: Sequence[np.ndarray] | None = None,
    *,
    refine: Literal["none", "gains"] = "none",
    max_iterations: int = 50,
) -> TimeInvariantSurrogate:
    """Fit a time-invariant surrogate to a layer-varying one by least squares.

    Parameters
    ----------
    llv : LayerVaryingSurrogate
        Layer-varying surrogate. Without ``basis_overlaps`` all ``d_k`` must be
        equal and the bases are taken to be the same.
    basis_overlaps : sequence of ndarray, each (d, d_k), optional
        ``T_k = P^T P_k`` for ``k = 0..L``, where ``P`` (H, d) is the common
        orthonormal basis. Each layer's matrices are mapped into it first.
    refine : {"none", "gains"}
        ``"none"`` returns the mean fit. ``"gains"`` keeps ``A`` and then
        refits ``B`` and ``C`` to the layer-varying gains.
    max_iterations : int
        Maximum alternating steps of the ``"gains"`` refinement.

    Returns
    -------
    TimeInvariantSurrogate
        ``metadata["fit"]`` stores the method and the squared gain error
        :math:`\\sum_k \\|G_k - C A^{L-1-k} B\\|_F^2` before and after refinement.

    Raises
    ------
    ShapeError
        If the ``d_k`` differ and no overlaps are given, or the input widths differ.
    ConfigurationError
        If ``refine`` is unknown or ``max_iterations < 1``.

    Notes
    -----
    The minimiser of :math:`\\sum_k \\|A_k - A\\|_F^2` is the mean
    :math:`A = \\frac{1}{L}\\sum_k A_k`, and likewise :math:`B` is the mean of
    :math:`B_k`. With overlaps the layer matrices become
    :math:`T_{k+1} A_k T_k^T`, :math:`T_{k+1} B_k` and :math:`C T_L^T`, which is
    exact when every ``P_k`` spans the same subspace as ``P``.

    The ``"gains"`` refinement minimises
    :math:`J(B, C) = \\sum_k \\|G_k - C A^{L-1-k} B\\|_F^2` with ``A`` fixed,
    alternating two linear least-squares problems (``B`` with ``C`` fixed, then
    ``C`` with ``B`` fixed). Each step minimises ``J`` over one block exactly,
    so ``J`` never increases. Refitting ``A`` as well would make the problem
    non-convex in a way this function does not attempt.

    Examples
    --------
    >>> import numpy as np
    >>> llv = LayerVaryingSurrogate(A=[0.4 * np.eye(2), 0.6 * np.eye(2)],
    ...                             B=[np.ones((2, 1))] * 2, C=np.ones((1, 2)))
    >>> fit_time_invariant(llv).A
    array([[0.5, 0. ],
           [0. , 0.5]])
    """
    if refine not in ("none", "gains"):
        raise ConfigurationError(f"refine must be 'none' or 'gains', got {refine!r}.")
    if isinstance(max_iterations, bool) or not isinstance(max_iterations, (int, np.integer)) or max_iterations < 1:
        raise ConfigurationError(f"max_iterations must be a positive integer, got {max_iterations!r}.")
    if len(set(llv.input_widths)) != 1:
        raise ShapeError(f"A time-invariant fit needs the same input width at every layer, got {llv.input_widths}.")

    A_seq, B_seq, C = _common_basis_sequence(llv, basis_overlaps)
    A = np.mean(A_seq, axis=0)
    B = np.mean(B_seq, axis=0)
    target_gains = _backward_gains(A_seq, B_seq, C)
    n_layers = llv.n_layers
    initial_error = _gain_error(target_gains, A, B, C)
    error = initial_error

    if refine == "gains":
        # delays j = L-1-k, so the gain G_k of layer k matches C A^j B
        powers = [np.linalg.matrix_power(A, n_layers - 1 - k) for k in range(n_layers)]
        stacked_rows = np.vstack(target_gains)  # (L * n_out, m)
        stacked_columns = np.hstack(target_gains)  # (n_out, L * m)
        for iteration in range(max_iterations):
            observed = np.vstack([C @ power for power in powers])  # (L * n_out, d)
            B = np.linalg.lstsq(observed, stacked_rows, rcond=None)[0]
            reached = np.hstack([power @ B for power in powers])  # (d, L * m)
            C = np.linalg.lstsq(reached.T, stacked_columns.T, rcond=None)[0].T
            new_error = _gain_error(target_gains, A, B, C)
            converged = error - new_error <= 1e-12 * max(error, np.finfo(float).tiny)
            error = new_error
            if converged:
                logger.debug("Gain refinement converged after %d iterations.", iteration + 1)
                break

    metadata = dict(llv.metadata)
    metadata["fit"] = {
        "method": "mean" if refine == "none" else "mean_then_gain_least_squares",
        "initial_gain_error": initial_error,
        "gain_error": error,
        "common_basis": basis_overlaps is not None,
    }
    return TimeInvariantSurrogate(
        A=A,
        B=B,
        C=C,
        n_steps=n_layers,
        input_directions=llv.input_directions,
        state_norms=llv.state_norms,
        metadata=metadata,
    )


def realize_gains(llv: LayerVaryingSurrogate | TimeInvariantSurrogate, order: int) -> TimeInvariantSurrogate:
    """Realise the gain sequence of a surrogate as a time-invariant system of a given order.

    The gains read from the last layer back, ``h_j = G_{L-1-j}``, are the
    Markov parameters ``C A^j B`` of a time-invariant system. The eigensystem
    realisation algorithm (Ho and Kalman's construction with an SVD) builds
    the block Hankel matrices of ``h`` and ``h`` shifted by one, keeps the
    ``order`` leading singular directions, and reads A, B and C from them.
    Unlike :func:`fit_time_invariant` the state has no meaning in the model's
    residual space: the fit targets the input-output behaviour only.

    Parameters
    ----------
    llv : LayerVaryingSurrogate or TimeInvariantSurrogate
        The surrogate whose gains are realised. Every layer must have the same
        input width.
    order : int
        State dimension of the realisation, at most the Hankel rank bound
        ``min(r * n_out, c * m)`` with ``r = L // 2`` and ``c = L - r``
        (``L // 2`` for a scalar input and output). A Hankel matrix of lower
        rank gives a smaller state; ``metadata["order"]`` records it.

    Returns
    -------
    TimeInvariantSurrogate
        With the input directions and state norms of ``llv``.
        ``metadata["fit"]`` stores the method, the squared gain error and the
        Hankel singular values.

    Raises
    ------
    ConfigurationError
        If ``order`` is not a positive integer within the bound, or the gains
        are all zero.
    ShapeError
        If the input widths differ between layers.

    Notes
    -----
    In exact arithmetic, an ``order`` at least the rank of the Hankel matrix
    reproduces the gains. With a smaller order it is the usual balanced
    approximation of the Hankel operator, not a least-squares optimum.

    Keep the order low. Orders that reach into small Hankel singular values
    give an A with spectral radius above 1, whose powers over the L layers
    amplify rounding errors. On a SmolLM2-135M sentiment context (30
    layers) orders 2 to 6 gave spectral radii 0.92-1.01 and Spearman
    0.85-0.89 against the layer-varying gains, while order 10 gave 1.55 and
    0.31, and order 15 gave 23 and a useless profile. Check
    ``metadata["fit"]`` (``gain_error`` and ``hankel_singular_values``) or
    ``spectral_radius()`` before trusting a realisation.

    Examples
    --------
    >>> import numpy as np
    >>> gains = [0.5 ** (5 - k) for k in range(6)]
    >>> llv = LayerVaryingSurrogate(A=[np.eye(1)] * 6, B=[np.array([[g]]) for g in gains], C=np.eye(1))
    >>> np.round(realize_gains(llv, 1).gain_profile(), 6)
    array([0.03125, 0.0625 , 0.125  , 0.25   , 0.5    , 1.     ])
    """
    if llv.n_layers < 2:
        raise ConfigurationError(f"realize_gains needs at least 2 layers, got {llv.n_layers}.")
    widths = set(llv.input_widths)
    if len(widths) != 1:
        raise ShapeError(f"realize_gains needs the same input width at every layer, got {sorted(widths)}.")
    gains = [np.atleast_2d(gain) for gain in llv.gains()]  # each (n_out, m)
    n_layers = len(gains)
    n_out, width = gains[0].shape
    rows = n_layers // 2
    columns = n_layers - rows
    bound = min(rows * n_out, columns * width)
    if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or not 1 <= order <= bound:
        raise ConfigurationError(
            f"order must be an integer in 1..{bound} for {n_layers} layers "
            f"({n_out} outputs, {width} inputs per layer), got {order!r}."
        )

    markov = gains[::-1]  # h_j = G_{L-1-j}
    # rows + columns = L, so the shifted matrix reaches h_{L-1} and the first one h_{L-2}.
    hankel = np.block([[markov[i + j] for j in range(columns)] for i in range(rows)])
    shifted = np.block([[markov[i + j + 1] for j in range(columns)] for i in range(rows)])
    left, singular, right_t = np.linalg.svd(hankel, full_matrices=False)
    if singular[0] == 0:
        raise ConfigurationError("All gains are zero, so there is nothing to realise.")
    state_order = int(min(order, np.sum(singular > singular[0] * 1e-12)))
    root = np.sqrt(singular[:state_order])
    observability = left[:, :state_order] * root  # (rows * n_out, state_order)
    reachability = root[:, None] * right_t[:state_order]  # (state_order, columns * width)
    A = (left[:, :state_order] / root).T @ shifted @ (right_t[:state_order].T / root)
    B = reachability[:, :width]
    C = observability[:n_out]

    metadata = dict(llv.metadata)
    fitted = TimeInvariantSurrogate(
        A=A,
        B=B,
        C=C,
        n_steps=n_layers,
        input_directions=llv.input_directions,
        state_norms=llv.state_norms,
        metadata=metadata,
    )
    metadata["fit"] = {
        "method": "eigensystem_realisation",
        "gain_error": _gain_error(gains, A, B, C),
        "hankel_singular_values": singular.tolist(),
    }
    metadata.update({"kind": "time_invariant", "order": state_order})
    return fitted


def _psd_factor(W: np.ndarray) -> np.ndarray:
    """Return F with F F^T = W for a symmetric positive semidefinite W."""
    eigenvalues, eigenvectors = np.linalg.eigh((W + W.T) / 2)
    return eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))


def _gramian_factors(sys: TimeInvariantSurrogate) -> tuple[np.ndarray, np.ndarray]:
    """Return square-root factors of the infinite-horizon reachability and observability Gramians."""
    reachability = scipy.linalg.solve_discrete_lyapunov(sys.A, sys.B @ sys.B.T)
    observability = scipy.linalg.solve_discrete_lyapunov(sys.A.T, sys.C.T @ sys.C)
    return _psd_factor(reachability), _psd_factor(observability)


def hankel_singular_values(sys: TimeInvariantSurrogate) -> np.ndarray:
    """Compute the Hankel singular values of a stable system, in decreasing order.

    Raises
    ------
    ConfigurationError
        If ``A`` is not stable.

    Notes
    -----
    :math:`\\sigma_i = \\sqrt{\\lambda_i(W_c W_o)}` with the infinite-horizon
    Gramians solving :math:`A W_c A^T - W_c + B B^T = 0` and
    :math:`A^T W_o A - W_o + C^T C = 0`. They are computed as the singular
    values of :math:`L_o^T L_c` for factors :math:`W = L L^T`.

    Examples
    --------
    >>> import numpy as np
    >>> sys = TimeInvariantSurrogate(A=np.zeros((1, 1)), B=np.ones((1, 1)),
    ...                              C=np.ones((1, 1)), n_steps=2)
    >>> hankel_singular_values(sys)
    array([1.])
    """
    _require_stable(sys, "hankel_singular_values")
    reachability_factor, observability_factor = _gramian_factors(sys)
    return np.linalg.svd(observability_factor.T @ reachability_factor, compute_uv=False)


def _square_root_truncation(
    sys: TimeInvariantSurrogate, order: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    reachability_factor, observability_factor = _gramian_factors(sys)
    U, hsv, Vt = np.linalg.svd(observability_factor.T @ reachability_factor)
    minimal_order = int(np.sum(hsv > hsv.size * np.finfo(float).eps * hsv[0])) if hsv.size else 0
    order = min(order, max(minimal_order, 1))
    scale = 1.0 / np.sqrt(hsv[:order])
    # projections onto and back from the balanced coordinates: (d, r) and (r, d)
    T = reachability_factor @ Vt[:order].T * scale
    T_inverse = scale[:, None] * (U[:, :order].T @ observability_factor.T)
    return T_inverse @ sys.A @ T, T_inverse @ sys.B, sys.C @ T, hsv


def _slycot_truncation(
    sys: TimeInvariantSurrogate, order: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from slycot import ab09ad

    d, m = sys.B.shape
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # dico="D" selects discrete time, job="B" square-root balance and truncate, equil="N" no scaling
        reduced_order, Ar, Br, Cr, hsv = ab09ad(
            "D", "B", "N", d, m, sys.C.shape[0], sys.A.copy(), sys.B.copy(), sys.C.copy(), nr=order
        )
    for warning in caught:
        logger.warning("slycot ab09ad: %s (reduced order %d)", warning.message, reduced_order)
    return Ar, Br, Cr, np.asarray(hsv)


def balanced_truncation(
    sys: TimeInvariantSurrogate,
    order: int,
    *,
    method: Literal["auto", "slycot", "square_root"] = "auto",
) -> tuple[TimeInvariantSurrogate, np.ndarray]:
    """Reduce a stable discrete-time surrogate by balanced truncation.

    Parameters
    ----------
    sys : TimeInvariantSurrogate
        System with a stable ``A``.
    order : int
        Requested reduced order, ``1 <= order <= d``. It is lowered to the
        minimal order when fewer Hankel singular values are non-zero.
    method : {"auto", "slycot", "square_root"}
        ``"slycot"`` calls SLICOT's ``AB09AD`` with ``dico="D"``.
        ``"square_root"`` runs the square-root algorithm on Gramians from
        :func:`scipy.linalg.solve_discrete_lyapunov`. ``"auto"`` uses slycot when
        it is installed.

    Returns
    -------
    reduced : TimeInvariantSurrogate
        Balanced reduced system with the same horizon, input directions and
        state norms. ``to_statespace()`` keeps ``dt=1``.
    hankel_singular_values : ndarray, (d,)
        Hankel singular values of the full system, decreasing.

    Raises
    ------
    ConfigurationError
        If ``A`` is not stable, ``order`` is out of range, ``method`` is
        unknown or slycot is requested but not installed.

    Notes
    -----
    python-control 0.10's ``balred`` returns a continuous-time system for a
    discrete one, so this function does not use it. The reduced transfer
    function satisfies the bound
    :math:`\\|G - G_r\\|_\\infty \\le 2 \\sum_{i > r} \\sigma_i`, and every
    Markov parameter error is bounded by the same amount.

    In discrete time the truncated system is not balanced: its Gramians are
    :math:`\\Sigma_1` minus a positive semidefinite term, so its Hankel
    singular values are at most the leading ones of the full system.

    Examples
    --------
    >>> import numpy as np
    >>> sys = TimeInvariantSurrogate(A=np.diag([0.5, 0.01]), B=np.ones((2, 1)),
    ...                              C=np.ones((1, 2)), n_steps=4)
    >>> reduced, hsv = balanced_truncation(sys, 1)
    >>> reduced.A.shape
    (1, 1)
    """
    d = sys.A.shape[0]
    if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or not 1 <= order <= d:
        raise ConfigurationError(f"order must be an integer in 1..{d}, got {order!r}.")
    if method not in ("auto", "slycot", "square_root"):
        raise ConfigurationError(f"method must be one of 'auto', 'slycot', 'square_root', got {method!r}.")
    _require_stable(sys, "balanced_truncation")

    if method == "auto":
        try:
            import slycot  # noqa: F401
        except ImportError:
            method = "square_root"
        else:
            method = "slycot"
    if method == "slycot":
        try:
            Ar, Br, Cr, hsv = _slycot_truncation(sys, int(order))
        except ImportError as error:
            raise ConfigurationError(
                "method='slycot' needs the slycot package. Install it or use method='square_root'."
            ) from error
    else:
        Ar, Br, Cr, hsv = _square_root_truncation(sys, int(order))

    reduced_order = Ar.shape[0]
    metadata = dict(sys.metadata)
    metadata["balanced_truncation"] = {
        "order": reduced_order,
        "method": method,
        "discarded_hsv_sum": float(np.sum(hsv[reduced_order:])),
    }
    reduced = TimeInvariantSurrogate(
        A=Ar,
        B=Br,
        C=Cr,
        n_steps=sys.n_steps,
        input_directions=sys.input_directions,
        state_norms=sys.state_norms,
        metadata=metadata,
    )
    return reduced, hsv
