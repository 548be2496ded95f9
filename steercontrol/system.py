"""Linear surrogates of a language model, with depth as discrete time.

The last token's residual stream at the input of block ``k`` is the state
``x_k``. Around one context the model is reduced, in per-layer orthonormal
bases ``P_k`` of shape ``(H, d_k)``, to the layer-varying linear system

.. math::

    r_{k+1} = A_k r_k + B_k u_k, \\quad k = 0, \\dots, L-1, \\qquad y = C r_L,

where ``u_k`` is the injection added before block ``k`` runs. This module
contains that surrogate and its time-invariant approximation. The fit of one
to the other and balanced truncation are in :mod:`steercontrol.reduction`.
It uses NumPy and python-control. It never imports torch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import control
import numpy as np

from steercontrol.exceptions import ConfigurationError, ShapeError

__all__ = [
    "LayerVaryingSurrogate",
    "TimeInvariantSurrogate",
]

logger = logging.getLogger(__name__)


def _as_matrix(value: Any, name: str, *, column: bool = False) -> np.ndarray:
    """Convert ``value`` to a finite float64 matrix, reading a 1-D array as one row or one column."""
    array = np.asarray(value, dtype=np.float64)
    if array.ndim == 1:
        # (n,) -> (n, 1) for an input column, (1, n) for an output row
        array = array[:, None] if column else array[None, :]
    if array.ndim != 2:
        raise ShapeError(f"{name} must be a 2-D array, got shape {array.shape}.")
    if not np.all(np.isfinite(array)):
        raise ConfigurationError(f"{name} contains NaN or infinite entries.")
    return array


def _as_state_norms(value: Any, n_layers: int) -> np.ndarray | None:
    if value is None:
        return None
    norms = np.asarray(value, dtype=np.float64)
    if norms.shape != (n_layers,):
        raise ShapeError(f"state_norms must have shape ({n_layers},), one norm per layer, got {norms.shape}.")
    if not np.all(np.isfinite(norms)) or np.any(norms < 0):
        raise ConfigurationError("state_norms must be finite and non-negative.")
    return norms


def _as_input_directions(value: Any, widths: Sequence[int]) -> list[np.ndarray] | None:
    """Validate per-layer input directions, each of shape (H, m_k)."""
    if value is None:
        return None
    if isinstance(value, np.ndarray) and value.ndim == 2:
        # one (H, m) matrix shared by every layer
        value = [value] * len(widths)
    directions = [_as_matrix(d, f"input_directions[{k}]", column=True) for k, d in enumerate(value)]
    if len(directions) != len(widths):
        raise ShapeError(f"input_directions must have one entry per layer ({len(widths)}), got {len(directions)}.")
    hidden_size = directions[0].shape[0]
    for k, (direction, width) in enumerate(zip(directions, widths, strict=True)):
        if direction.shape != (hidden_size, width):
            raise ShapeError(
                f"input_directions[{k}] must have shape ({hidden_size}, {width}) to match "
                f"B[{k}], got {direction.shape}."
            )
    return directions


def _normalize_layers(layers: Iterable[int] | None, n_layers: int) -> tuple[int, ...]:
    """Return sorted unique layer indices, raising ConfigurationError on any outside 0..L-1."""
    if layers is None:
        return tuple(range(n_layers))
    if isinstance(layers, (int, np.integer)):
        layers = [int(layers)]
    normalized = set()
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
            raise ConfigurationError(f"Layer indices must be integers, got {layer!r}.")
        if not 0 <= layer < n_layers:
            raise ConfigurationError(f"Layer index {layer} is out of range. The valid layers are 0..{n_layers - 1}.")
        normalized.add(int(layer))
    if not normalized:
        raise ConfigurationError("layers is empty. Allow at least one layer.")
    return tuple(sorted(normalized))


def _backward_gains(A: Sequence[np.ndarray], B: Sequence[np.ndarray], C: np.ndarray) -> list[np.ndarray]:
    """Compute G_k = C A_{L-1} ... A_{k+1} B_k for all k by one backward sweep."""
    gains: list[np.ndarray] = [np.empty(0)] * len(A)
    # adjoint row block C Phi(L, k+1), shape (n_out, d_{k+1})
    adjoint = C
    for k in range(len(A) - 1, -1, -1):
        gains[k] = adjoint @ B[k]
        adjoint = adjoint @ A[k]
    return gains


def _validate_schedule(u: Sequence[Any], widths: Sequence[int]) -> list[np.ndarray]:
    if len(u) != len(widths):
        raise ShapeError(f"The schedule must have one input per layer ({len(widths)}), got {len(u)}.")
    inputs = []
    for k, (value, width) in enumerate(zip(u, widths, strict=True)):
        # scalar or (m_k,) -> (m_k,)
        vector = np.atleast_1d(np.asarray(value, dtype=np.float64))
        if vector.shape != (width,):
            raise ShapeError(f"u[{k}] must have shape ({width},), got {vector.shape}.")
        inputs.append(vector)
    return inputs


@dataclass(eq=False)
class LayerVaryingSurrogate:
    """Layer-varying linear surrogate ``r_{k+1} = A_k r_k + B_k u_k``, ``y = C r_L``.

    Parameters
    ----------
    A : list of ndarray, each (d_{k+1}, d_k)
        State transition of block ``k`` in the bases of layers ``k`` and ``k+1``.
    B : list of ndarray, each (d_{k+1}, m_k)
        Input matrix of the injection added before block ``k``. A 1-D entry is
        read as one input column.
    C : ndarray, (n_out, d_L)
        Readout of the final state. A 1-D array is read as one output row.
    input_directions : list of ndarray, each (H, m_k), or ndarray (H, m), optional
        Map from the input amplitudes of layer ``k`` to the injection vector in
        model space. One matrix is shared by every layer and stored as a list.
        None when unknown.
    state_norms : ndarray, (L,), optional
        Norm of the unperturbed state ``x_k``, used for relative caps.
    metadata : dict
        Free-form provenance: model id, weight hash, task, readout, order,
        finite-difference step, basis.

    Raises
    ------
    ShapeError
        If the matrices do not chain (``A_k`` columns must equal ``A_{k-1}``
        rows) or any other shape disagrees.
    ConfigurationError
        If a matrix contains NaN or infinite entries, or a state norm is negative.

    Notes
    -----
    The first-order output shift of a schedule is
    :math:`\\delta y = \\sum_k G_k u_k` with the gain
    :math:`G_k = C \\Phi(L, k+1) B_k` and
    :math:`\\Phi(L, j) = A_{L-1} \\cdots A_j` (identity for ``j = L``).

    Examples
    --------
    >>> import numpy as np
    >>> sys = LayerVaryingSurrogate(A=[np.eye(2), 2 * np.eye(2)],
    ...                             B=[np.ones((2, 1)), np.ones((2, 1))],
    ...                             C=np.array([[1.0, 0.0]]))
    >>> sys.gain_profile()
    array([2., 1.])
    """

    A: list[np.ndarray]
    B: list[np.ndarray]
    C: np.ndarray
    input_directions: list[np.ndarray] | np.ndarray | None = None
    state_norms: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.A = [_as_matrix(a, f"A[{k}]") for k, a in enumerate(self.A)]
        self.B = [_as_matrix(b, f"B[{k}]", column=True) for k, b in enumerate(self.B)]
        self.C = _as_matrix(self.C, "C")
        n_layers = len(self.A)
        if n_layers == 0:
            raise ShapeError("A is empty, but a surrogate needs at least one layer.")
        if len(self.B) != n_layers:
            raise ShapeError(f"B must have one matrix per layer ({n_layers}), got {len(self.B)}.")

        for k in range(1, n_layers):
            if self.A[k].shape[1] != self.A[k - 1].shape[0]:
                raise ShapeError(
                    f"A[{k}] has {self.A[k].shape[1]} columns but A[{k - 1}] has "
                    f"{self.A[k - 1].shape[0]} rows, and both must equal d_{k}."
                )
        for k in range(n_layers):
            if self.B[k].shape[0] != self.A[k].shape[0]:
                raise ShapeError(
                    f"B[{k}] has {self.B[k].shape[0]} rows but A[{k}] has "
                    f"{self.A[k].shape[0]}, and both must equal d_{k + 1}."
                )
        if self.C.shape[1] != self.A[-1].shape[0]:
            raise ShapeError(
                f"C has {self.C.shape[1]} columns but A[{n_layers - 1}] has "
                f"{self.A[-1].shape[0]} rows, and both must equal d_L."
            )

        self.input_directions = _as_input_directions(self.input_directions, self.input_widths)
        self.state_norms = _as_state_norms(self.state_norms, n_layers)

    @property
    def n_layers(self) -> int:
        """Number of blocks ``L`` (the horizon)."""
        return len(self.A)

    @property
    def n_outputs(self) -> int:
        """Number of readouts ``n_out``."""
        return int(self.C.shape[0])

    @property
    def input_widths(self) -> tuple[int, ...]:
        """Input width ``m_k`` of every layer."""
        return tuple(int(b.shape[1]) for b in self.B)

    @property
    def state_dims(self) -> tuple[int, ...]:
        """Reduced state dimensions ``d_0, ..., d_L``."""
        return (int(self.A[0].shape[1]), *(int(a.shape[0]) for a in self.A))

    def gains(self) -> list[np.ndarray]:
        """Compute the gain ``G_k = C Phi(L, k+1) B_k`` of every layer.

        Returns
        -------
        list of ndarray, each (n_out, m_k)
            Output shift per unit input at layer ``k``.

        Notes
        -----
        One backward sweep of the adjoint :math:`\\lambda_k^T = C \\Phi(L, k+1)`,
        :math:`\\lambda_{k-1}^T = \\lambda_k^T A_k`, costs ``L`` matrix products.

        Examples
        --------
        >>> import numpy as np
        >>> sys = LayerVaryingSurrogate(A=[2 * np.eye(1)] * 2, B=[np.ones((1, 1))] * 2,
        ...                             C=np.ones((1, 1)))
        >>> [gain.item() for gain in sys.gains()]
        [2.0, 1.0]
        """
        return _backward_gains(self.A, self.B, self.C)

    def gain_profile(self) -> np.ndarray:
        """Return the scalar gains ``g_0, ..., g_{L-1}`` as an array of shape (L,).

        Raises
        ------
        ShapeError
            Unless ``n_out == 1`` and every layer has one input.
        """
        if self.n_outputs != 1 or any(width != 1 for width in self.input_widths):
            raise ShapeError(
                "gain_profile needs one output and one input per layer, got "
                f"n_out={self.n_outputs} and input widths {self.input_widths}. Use gains() instead."
            )
        return np.array([gain[0, 0] for gain in self.gains()])

    def markov_parameters(self) -> list[np.ndarray]:
        """Return the gains ordered by delay: entry ``j`` is ``G_{L-1-j}``.

        Returns
        -------
        list of ndarray, each (n_out, m_{L-1-j})
            For a time-invariant system entry ``j`` equals ``C A^j B``.
        """
        return self.gains()[::-1]

    def simulate(self, u: Sequence[Any]) -> np.ndarray:
        """Compute the output shift of a schedule by forward recursion.

        Parameters
        ----------
        u : sequence of array_like, each (m_k,)
            Input amplitudes per layer. A scalar is accepted where ``m_k = 1``.

        Returns
        -------
        ndarray, (n_out,)
            :math:`\\delta y = C r_L` with :math:`r_0 = 0`.

        Raises
        ------
        ShapeError
            If the schedule length or an input width is wrong.

        Examples
        --------
        >>> import numpy as np
        >>> sys = LayerVaryingSurrogate(A=[2 * np.eye(1)] * 2, B=[np.ones((1, 1))] * 2,
        ...                             C=np.ones((1, 1)))
        >>> sys.simulate([1.0, 1.0])
        array([3.])
        """
        inputs = _validate_schedule(u, self.input_widths)
        state = np.zeros(self.state_dims[0])
        for k in range(self.n_layers):
            state = self.A[k] @ state + self.B[k] @ inputs[k]
        return self.C @ state

    def truncated(self, order: int) -> LayerVaryingSurrogate:
        """Return the surrogate on the leading ``order`` coordinates of every state.

        For nested bases, whose first ``d`` columns are the basis of order
        ``d`` (the Krylov basis, built by Arnoldi, and in practice the reachable
        one), this is the surrogate that identification at order ``d`` would
        give, at no cost. It is not for random bases, which are not nested.

        Raises
        ------
        ConfigurationError
            If ``order`` is not a positive integer.
        """
        if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or order < 1:
            raise ConfigurationError(f"order must be a positive integer, got {order!r}.")
        input_directions = None if self.input_directions is None else list(self.input_directions)
        return replace(
            self,
            A=[a[:order, :order].copy() for a in self.A],
            B=[b[:order].copy() for b in self.B],
            C=self.C[:, :order].copy(),
            input_directions=input_directions,
            metadata={**self.metadata, "order": int(min(order, max(self.state_dims)))},
        )

    def restrict_inputs(self, layers: Iterable[int]) -> LayerVaryingSurrogate:
        """Return a copy whose input matrices are zero outside ``layers``.

        Raises
        ------
        ConfigurationError
            If a layer index is outside ``0..L-1`` or ``layers`` is empty.
        """
        allowed = set(_normalize_layers(layers, self.n_layers))
        B = [b.copy() if k in allowed else np.zeros_like(b) for k, b in enumerate(self.B)]
        return replace(self, A=list(self.A), B=B, metadata=dict(self.metadata))


@dataclass(eq=False)
class TimeInvariantSurrogate:
    """Time-invariant surrogate ``r_{k+1} = A r_k + B u_k`` run for ``n_steps`` layers.

    Parameters
    ----------
    A : ndarray, (d, d)
        State transition shared by every block.
    B : ndarray, (d, m)
        Input matrix shared by every layer.
    C : ndarray, (n_out, d)
        Readout of the final state.
    n_steps : int
        Horizon ``L``, the number of blocks.
    input_directions : ndarray (H, m) or list of ndarray, optional
        One matrix for all layers or one per layer.
    state_norms : ndarray, (L,), optional
        Norm of the unperturbed state ``x_k``, used for relative caps.
    metadata : dict
        Free-form provenance, as for :class:`LayerVaryingSurrogate`.

    Raises
    ------
    ShapeError, ConfigurationError
        On inconsistent shapes, non-finite entries or ``n_steps < 1``.

    Notes
    -----
    The gains are the Markov parameters read backwards,
    :math:`G_k = C A^{L-1-k} B`.

    Examples
    --------
    >>> import numpy as np
    >>> sys = TimeInvariantSurrogate(A=0.5 * np.eye(1), B=np.ones((1, 1)),
    ...                              C=np.ones((1, 1)), n_steps=3)
    >>> sys.gain_profile()
    array([0.25, 0.5 , 1.  ])
    """

    A: np.ndarray
    B: np.ndarray
    C: np.ndarray
    n_steps: int
    input_directions: np.ndarray | list[np.ndarray] | None = None
    state_norms: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.A = _as_matrix(self.A, "A")
        self.B = _as_matrix(self.B, "B", column=True)
        self.C = _as_matrix(self.C, "C")
        d = self.A.shape[0]
        if self.A.shape != (d, d):
            raise ShapeError(f"A must be square, got shape {self.A.shape}.")
        if self.B.shape[0] != d:
            raise ShapeError(f"B must have {d} rows like A, got shape {self.B.shape}.")
        if self.C.shape[1] != d:
            raise ShapeError(f"C must have {d} columns like A, got shape {self.C.shape}.")
        if isinstance(self.n_steps, bool) or not isinstance(self.n_steps, (int, np.integer)) or self.n_steps < 1:
            raise ConfigurationError(f"n_steps must be a positive integer, got {self.n_steps!r}.")
        self.n_steps = int(self.n_steps)
        self.input_directions = _as_input_directions(self.input_directions, [self.B.shape[1]] * self.n_steps)
        self.state_norms = _as_state_norms(self.state_norms, self.n_steps)

    @property
    def n_layers(self) -> int:
        """Horizon ``L`` (same as ``n_steps``)."""
        return self.n_steps

    @property
    def n_outputs(self) -> int:
        """Number of readouts ``n_out``."""
        return int(self.C.shape[0])

    @property
    def input_widths(self) -> tuple[int, ...]:
        """Input width ``m`` repeated for every layer."""
        return (int(self.B.shape[1]),) * self.n_steps

    def to_statespace(self) -> control.StateSpace:
        """Return the system as ``control.StateSpace(A, B, C, 0, dt=1)``."""
        D = np.zeros((self.C.shape[0], self.B.shape[1]))
        return control.ss(self.A, self.B, self.C, D, dt=1)

    @classmethod
    def from_statespace(
        cls,
        sys: control.StateSpace,
        n_steps: int,
        *,
        input_directions: np.ndarray | list[np.ndarray] | None = None,
        state_norms: np.ndarray | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> TimeInvariantSurrogate:
        """Build a surrogate from a discrete-time python-control system.

        Parameters
        ----------
        sys : control.StateSpace
            Discrete-time system with zero feedthrough ``D``.
        n_steps : int
            Horizon ``L``.

        Raises
        ------
        ConfigurationError
            If ``sys`` is not discrete-time or has a non-zero ``D``, because an
            injection before block ``k`` reaches the readout one step later at
            the earliest.

        Examples
        --------
        >>> import control
        >>> ss = control.ss([[0.5]], [[1.0]], [[1.0]], 0, dt=1)
        >>> TimeInvariantSurrogate.from_statespace(ss, n_steps=3).gain_profile()
        array([0.25, 0.5 , 1.  ])
        """
        if not control.isdtime(sys, strict=True):
            raise ConfigurationError(f"sys must be discrete-time (dt=1), got dt={sys.dt!r}.")
        if np.any(np.asarray(sys.D) != 0):
            raise ConfigurationError("sys must have D = 0 because a surrogate has no direct feedthrough.")
        return cls(
            A=np.array(sys.A),
            B=np.array(sys.B),
            C=np.array(sys.C),
            n_steps=n_steps,
            input_directions=input_directions,
            state_norms=state_norms,
            metadata=dict(metadata or {}),
        )

    def as_layer_varying(self) -> LayerVaryingSurrogate:
        """Return the same system as a :class:`LayerVaryingSurrogate` with repeated matrices."""
        return LayerVaryingSurrogate(
            A=[self.A] * self.n_steps,
            B=[self.B] * self.n_steps,
            C=self.C,
            input_directions=self.input_directions,
            state_norms=self.state_norms,
            metadata=dict(self.metadata),
        )

    def gains(self) -> list[np.ndarray]:
        """Compute the gains ``G_k = C A^{L-1-k} B``, each of shape (n_out, m), for ``k = 0..L-1``."""
        return _backward_gains([self.A] * self.n_steps, [self.B] * self.n_steps, self.C)

    def gain_profile(self) -> np.ndarray:
        """Return the scalar gains as an array of shape (L,).

        Raises
        ------
        ShapeError
            Unless the system has one input and one output.
        """
        if self.B.shape[1] != 1 or self.C.shape[0] != 1:
            raise ShapeError(
                f"gain_profile needs one input and one output, got B {self.B.shape} and C {self.C.shape}. "
                "Use gains() instead."
            )
        return np.array([gain[0, 0] for gain in self.gains()])

    def markov_parameters(self, n: int) -> np.ndarray:
        """Return ``C A^j B`` for ``j = 0..n-1`` as an array of shape (n, n_out, m)."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ConfigurationError(f"n must be a non-negative integer, got {n!r}.")
        parameters = np.empty((n, self.C.shape[0], self.B.shape[1]))
        # C A^j as a row block, shape (n_out, d)
        observed = self.C
        for j in range(n):
            parameters[j] = observed @ self.B
            observed = observed @ self.A
        return parameters

    def spectral_radius(self) -> float:
        """Return the largest eigenvalue modulus of ``A``."""
        return float(np.max(np.abs(np.linalg.eigvals(self.A)))) if self.A.size else 0.0

    def is_stable(self) -> bool:
        """Return whether the spectral radius of ``A`` is below 1 (Schur stable)."""
        return self.spectral_radius() < 1.0


def _require_stable(sys: TimeInvariantSurrogate, task: str) -> None:
    radius = sys.spectral_radius()
    if radius >= 1.0:
        raise ConfigurationError(
            f"{task} needs a stable A (spectral radius < 1), got spectral radius {radius:.6g}. "
            "Use the finite-horizon Gramian or scale A."
        )
