"""Minimum-energy steering schedules on a linear surrogate.

A schedule assigns input amplitudes ``u_k`` to every layer. On the surrogate
its output shift is :math:`\\delta y = \\sum_k G_k u_k`, and the schedule of
least energy :math:`\\sum_k \\|u_k\\|^2` that reaches a target is
:math:`u_k = G_k^T W^{-1} \\delta y` with :math:`W = \\sum_k G_k G_k^T`.
Constrained variants (caps, signs, sparsity) are solved with cvxpy. The
heuristic baselines are in :mod:`steercontrol.heuristics`.
This module uses NumPy, SciPy and cvxpy only, never torch.
"""

from __future__ import annotations

import logging
import warnings
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import cvxpy as cp
import numpy as np
import scipy.linalg

from steercontrol.exceptions import (
    ConfigurationError,
    InfeasibleError,
    ShapeError,
    SolverAccuracyWarning,
    SolverError,
    UnreachableTargetError,
)
from steercontrol.gramian import GramianDiagnostics, check_gramian, gramian_diagnostics
from steercontrol.schedule import Schedule
from steercontrol.system import (
    LayerVaryingSurrogate,
    TimeInvariantSurrogate,
    _normalize_layers,
)

__all__ = ["Controller"]

logger = logging.getLogger(__name__)

# Relative norm of the target outside the span of the allowed gains above
# which the target counts as unreachable.
_UNREACHABLE_TOLERANCE = 1e-8
# Relative miss of the target above which a solver result triggers a warning.
_RESIDUAL_TOLERANCE = 1e-6
_MAX_CACHED_PROBLEMS = 32


def _describe(value: Any) -> str:
    if value is None:
        return "None"
    if isinstance(value, str):
        return repr(value)
    array = np.asarray(value, dtype=np.float64)
    if array.ndim == 0:
        return f"{float(array):.4g}"
    return np.array2string(array, precision=4, threshold=12)


def _per_layer(value: Any, n_layers: int, name: str) -> np.ndarray:
    """Broadcast a scalar or validate a (L,) array of non-negative numbers (inf allowed)."""
    array = np.asarray(value, dtype=np.float64)
    if array.ndim == 0:
        array = np.full(n_layers, float(array))
    if array.shape != (n_layers,):
        raise ShapeError(f"{name} must be a scalar or have shape ({n_layers},), got {array.shape}.")
    if np.any(np.isnan(array)) or np.any(array < 0):
        raise ConfigurationError(f"{name} must be non-negative, got {_describe(value)}.")
    return array


@dataclass
class _CachedProblem:
    problem: cp.Problem
    u: cp.Variable
    target: cp.Parameter
    caps: cp.Parameter | None
    sparsity: cp.Parameter | None


class Controller:
    """Plan input schedules that move a surrogate's readout by a target shift.

    Parameters
    ----------
    surrogate : LayerVaryingSurrogate or TimeInvariantSurrogate
        Linear surrogate. Its gains are computed once here, so later changes
        to the surrogate's matrices are not seen by this controller.
    max_condition : float
        Gramian condition number above which planning issues an
        :class:`~steercontrol.exceptions.IllConditionedGramianWarning`.

    Raises
    ------
    TypeError
        If ``surrogate`` is of another type.
    ConfigurationError
        If ``max_condition`` is not a finite number greater than 1.

    Notes
    -----
    With the gains stacked as :math:`G = [G_0, \\dots, G_{L-1}]` the output
    shift is :math:`G u`, and the minimum-energy schedule is
    :math:`u = G^T W^{-1} \\delta y` with :math:`W = G G^T`.

    Examples
    --------
    >>> import numpy as np
    >>> from steercontrol.system import LayerVaryingSurrogate
    >>> sys = LayerVaryingSurrogate(A=[np.eye(1)] * 2, B=[np.ones((1, 1))] * 2,
    ...                             C=np.ones((1, 1)))
    >>> Controller(sys).min_energy(2.0).amplitude_profile()
    array([1., 1.])
    """

    def __init__(
        self,
        surrogate: LayerVaryingSurrogate | TimeInvariantSurrogate,
        *,
        max_condition: float = 1e10,
    ) -> None:
        if not isinstance(surrogate, (LayerVaryingSurrogate, TimeInvariantSurrogate)):
            raise TypeError(
                f"surrogate must be a LayerVaryingSurrogate or TimeInvariantSurrogate, got {type(surrogate).__name__}."
            )
        if not np.isfinite(max_condition) or max_condition <= 1:
            raise ConfigurationError(f"max_condition must be a finite number > 1, got {max_condition!r}.")
        self.surrogate = surrogate
        self.max_condition = float(max_condition)
        self._gains = surrogate.gains()
        self._widths = surrogate.input_widths
        self._offsets = np.concatenate([[0], np.cumsum(self._widths)]).astype(int)
        # all layers' inputs side by side: (n_out, sum m_k)
        self._stacked = np.hstack(self._gains)
        self._all_layers = tuple(range(len(self._widths)))
        self._scalar_inputs = all(width == 1 for width in self._widths)
        self._problems: OrderedDict[tuple[Any, ...], _CachedProblem] = OrderedDict()

    @property
    def n_layers(self) -> int:
        """Number of layers ``L``."""
        return len(self._widths)

    @property
    def n_outputs(self) -> int:
        """Number of readouts ``n_out``."""
        return int(self._stacked.shape[0])

    @property
    def input_widths(self) -> tuple[int, ...]:
        """Input width ``m_k`` of every layer."""
        return self._widths

    @property
    def gains(self) -> list[np.ndarray]:
        """Copies of the gains ``G_k``, each (n_out, m_k)."""
        return [gain.copy() for gain in self._gains]

    def _columns(self, layers: tuple[int, ...]) -> np.ndarray:
        if layers == self._all_layers:
            return np.arange(self._stacked.shape[1])
        return np.concatenate([np.arange(self._offsets[k], self._offsets[k + 1]) for k in layers])

    def _describe_layers(self, layers: tuple[int, ...]) -> str:
        if layers == self._all_layers:
            return f"all layers 0..{self.n_layers - 1}"
        return f"layers {list(layers)}"

    def gramian(self, layers: Iterable[int] | None = None) -> np.ndarray:
        """Return :math:`W = \\sum_{k \\in layers} G_k G_k^T`, shape (n_out, n_out).

        Raises
        ------
        ConfigurationError
            If a layer index is outside ``0..L-1``.
        """
        allowed = _normalize_layers(layers, self.n_layers)
        G = self._stacked[:, self._columns(allowed)]
        return G @ G.T

    def reachable_fraction(self, target_shift: Any, *, layers: Iterable[int] | None = None) -> float:
        """Return the fraction of the target's norm inside the span of the allowed gains.

        A value of 1 means the layers can reach the target exactly, and a value
        below 1 means no schedule on them can.

        Raises
        ------
        ShapeError, ConfigurationError
            On an invalid target or layer index, as in :meth:`min_energy`.

        Examples
        --------
        >>> import numpy as np
        >>> from steercontrol.system import LayerVaryingSurrogate
        >>> sys = LayerVaryingSurrogate(A=[np.eye(1)], B=[np.ones((1, 1))],
        ...                             C=np.array([[1.0], [0.0]]))
        >>> round(Controller(sys).reachable_fraction([1.0, 1.0]), 4)
        0.7071
        """
        target = self._validate_target(target_shift)
        diagnostics = gramian_diagnostics(self.gramian(layers))
        outside = _outside_fraction(target, diagnostics)
        return float(np.sqrt(max(1.0 - outside**2, 0.0)))

    def _validate_target(self, target_shift: Any) -> np.ndarray:
        # a scalar target becomes shape (1,)
        target = np.atleast_1d(np.asarray(target_shift, dtype=np.float64))
        if target.shape != (self.n_outputs,):
            raise ShapeError(
                f"target_shift must have shape ({self.n_outputs},), one entry per output, got {target.shape}."
            )
        if not np.all(np.isfinite(target)):
            raise ConfigurationError(f"target_shift must be finite, got {_describe(target)}.")
        if not np.any(target):
            raise ConfigurationError(
                "target_shift is zero. A zero target needs no injection, so use an all-zero schedule."
            )
        return target

    def _closed_form(
        self, target: np.ndarray, allowed: tuple[int, ...], *, stacklevel: int
    ) -> tuple[np.ndarray, np.ndarray, GramianDiagnostics]:
        """Return (u over the allowed columns, their gains G, diagnostics of W)."""
        columns = self._columns(allowed)
        G = self._stacked[:, columns]
        W = G @ G.T
        diagnostics = gramian_diagnostics(W)

        outside = _outside_fraction(target, diagnostics)
        if outside > _UNREACHABLE_TOLERANCE:
            reason = (
                "all their gains are zero"
                if not np.any(G)
                else (f"{outside:.3g} of the target's norm lies outside the span of their gains")
            )
            raise UnreachableTargetError(
                f"Target {_describe(target)} is unreachable from {self._describe_layers(allowed)}: {reason}. "
                "Allow other layers, or choose a target in the span of their gains "
                "(Controller.reachable_fraction returns 1 for such a target)."
            )
        if diagnostics.condition_number > self.max_condition:
            check_gramian(W, max_condition=self.max_condition, stacklevel=stacklevel + 2)

        # Solve W w = dy. On a rank-deficient W the target lies in its range
        # (checked above), so the pseudo-inverse on that range is exact.
        weights = None
        if diagnostics.is_full_rank:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
                    weights = scipy.linalg.solve(W, target, assume_a="pos", check_finite=False)
            except np.linalg.LinAlgError:
                weights = None
        if weights is None:
            keep = diagnostics.eigenvalues > diagnostics.tolerance
            basis = diagnostics.eigenvectors[:, keep]
            weights = basis @ ((basis.T @ target) / diagnostics.eigenvalues[keep])
        return G.T @ weights, G, diagnostics

    def _make_schedule(
        self,
        u_allowed: np.ndarray,
        G: np.ndarray,
        allowed: tuple[int, ...],
        target: np.ndarray,
        *,
        status: str,
        metadata: dict[str, Any],
    ) -> Schedule:
        full = np.zeros(self._stacked.shape[1])
        full[self._columns(allowed)] = u_allowed
        # (sum m_k,) -> one (m_k,) array per layer
        amplitudes = np.split(full, self._offsets[1:-1])
        return Schedule(
            name="min_energy",
            amplitudes=amplitudes,
            predicted_shift=G @ u_allowed,
            target_shift=target,
            energy=float(u_allowed @ u_allowed),
            status=status,
            layers=allowed,
            metadata=metadata,
        )

    def min_energy(
        self,
        target_shift: Any,
        *,
        layers: Iterable[int] | None = None,
        max_amplitude: float | np.ndarray | None = None,
        relative_cap: float | np.ndarray | None = None,
        sign: Literal["positive", "negative"] | np.ndarray | None = None,
        sparsity: float | None = None,
        solver: str | None = None,
    ) -> Schedule:
        """Plan the least-energy schedule that reaches ``target_shift`` on the surrogate.

        Parameters
        ----------
        target_shift : float or array_like, (n_out,)
            Requested output shift :math:`\\delta y`.
        layers : iterable of int, optional
            Layers allowed a non-zero input, or all layers when None.
        max_amplitude : float or ndarray (L,), optional
            Cap on each layer's input norm :math:`\\|u_k\\|_2`. An ``inf`` entry leaves a
            layer uncapped.
        relative_cap : float or ndarray (L,), optional
            Cap as a fraction of the unperturbed state norm, ``relative_cap *
            state_norms[k]``. With ``max_amplitude`` the smaller cap applies.
        sign : {"positive", "negative"} or ndarray (L,) of +1/-1/0, optional
            Sign of each scalar input. An entry 0 leaves that layer's sign free, and
            ``layers`` switches a layer off.
        sparsity : float, optional
            Weight :math:`\\mu \\ge 0` of the group-L1 term added to the energy.
        solver : str, optional
            cvxpy solver name. Default CLARABEL, with SCS as fallback when
            CLARABEL fails.

        Returns
        -------
        Schedule
            ``status`` is ``"closed_form"`` without constraints, else the cvxpy status.

        Raises
        ------
        ShapeError
            If the target or a per-layer option has the wrong length.
        ConfigurationError
            If the target is zero or not finite, a layer index is invalid, an
            option has an invalid value, ``relative_cap`` is given without state
            norms, ``sign`` is given for vector inputs, or the solver is unknown.
        UnreachableTargetError
            If the allowed layers cannot reach the target even without caps.
        InfeasibleError
            If the caps and signs admit no schedule that reaches the target.
        SolverError
            If the solver fails or returns no solution.

        Warns
        -----
        IllConditionedGramianWarning
            If the Gramian of the allowed layers is ill-conditioned.
        SolverAccuracyWarning
            If the solver reports ``optimal_inaccurate`` or misses the target by
            more than 1e-6 relative.

        Notes
        -----
        Without caps, signs or sparsity the schedule is the closed form
        :math:`u_k = G_k^T W^{-1} \\delta y`, with energy
        :math:`\\delta y^T W^{-1} \\delta y`. Otherwise cvxpy solves

        .. math::

            \\min_u \\sum_k \\|u_k\\|_2^2 + \\mu \\sum_k \\|u_k\\|_2
            \\quad \\text{s.t.} \\quad \\sum_k G_k u_k = \\delta y,
            \\; \\|u_k\\|_2 \\le c_k, \\; s_k u_k \\ge 0,

        scaled by the norm of the closed-form schedule so that the solver
        works with numbers near 1. Solver round-off is removed afterwards by
        projecting each input onto its cap and sign constraint.

        Examples
        --------
        >>> import numpy as np
        >>> from steercontrol.system import LayerVaryingSurrogate
        >>> sys = LayerVaryingSurrogate(A=[np.eye(1)] * 3, B=[np.array([[g]]) for g in (1.0, 2.0, 2.0)],
        ...                             C=np.ones((1, 1)))
        >>> controller = Controller(sys)
        >>> controller.min_energy(9.0).amplitude_profile()
        array([1., 2., 2.])
        >>> capped = controller.min_energy(9.0, max_amplitude=1.9)
        >>> capped.amplitude_profile().round(6)
        array([1.4, 1.9, 1.9])
        """
        target = self._validate_target(target_shift)
        allowed = _normalize_layers(layers, self.n_layers)
        options = (max_amplitude, relative_cap, sign, sparsity)
        if all(option is None for option in options):
            u_allowed, G, diagnostics = self._closed_form(target, allowed, stacklevel=2)
            metadata = {"method": "closed_form", "gramian_condition": diagnostics.condition_number}
            return self._make_schedule(u_allowed, G, allowed, target, status="closed_form", metadata=metadata)
        return self._min_energy_constrained(
            target,
            allowed,
            max_amplitude=max_amplitude,
            relative_cap=relative_cap,
            sign=sign,
            sparsity=sparsity,
            solver=solver,
        )

    def _resolve_caps(self, max_amplitude: Any, relative_cap: Any) -> np.ndarray | None:
        """Return the per-layer caps, shape (L,), with inf where a layer is uncapped."""
        caps = None
        if max_amplitude is not None:
            caps = _per_layer(max_amplitude, self.n_layers, "max_amplitude")
        if relative_cap is not None:
            state_norms = self.surrogate.state_norms
            if state_norms is None:
                raise ConfigurationError(
                    "relative_cap needs state_norms, but the surrogate has none. Build the "
                    "surrogate with state_norms or pass max_amplitude instead."
                )
            relative = _per_layer(relative_cap, self.n_layers, "relative_cap") * state_norms
            caps = relative if caps is None else np.minimum(caps, relative)
        return caps

    def _resolve_signs(self, sign: Any) -> np.ndarray | None:
        """Return the per-layer signs, shape (L,), in {-1, 0, +1}."""
        if sign is None:
            return None
        if not self._scalar_inputs:
            raise ConfigurationError(
                f"sign needs one input per layer, got input widths {self._widths}. Use max_amplitude or layers instead."
            )
        if isinstance(sign, str):
            if sign not in ("positive", "negative"):
                raise ConfigurationError(f"sign must be 'positive', 'negative' or an array, got {sign!r}.")
            return np.full(self.n_layers, 1 if sign == "positive" else -1)
        signs = np.asarray(sign)
        if signs.shape != (self.n_layers,):
            raise ShapeError(f"sign must have shape ({self.n_layers},), got {signs.shape}.")
        if not np.all(np.isin(signs, (-1, 0, 1))):
            raise ConfigurationError(f"sign entries must be +1, -1 or 0, got {_describe(signs)}.")
        return signs.astype(int)

    def _build_problem(
        self,
        G: np.ndarray,
        widths: list[int],
        capped: list[int] | None,
        signs: tuple[int, ...] | None,
        use_sparsity: bool,
    ) -> _CachedProblem:
        starts = np.concatenate([[0], np.cumsum(widths)]).astype(int)
        u = cp.Variable(G.shape[1])
        target = cp.Parameter(G.shape[0])
        constraints = [G @ u == target]

        caps = None
        if capped:
            caps = cp.Parameter(len(capped), nonneg=True)
            if self._scalar_inputs:
                constraints.append(cp.abs(u[np.array(capped)]) <= caps)
            else:
                for j, i in enumerate(capped):
                    constraints.append(cp.norm(u[starts[i] : starts[i + 1]], 2) <= caps[j])
        if signs is not None:
            positive = [i for i, s in enumerate(signs) if s > 0]
            negative = [i for i, s in enumerate(signs) if s < 0]
            if positive:
                constraints.append(u[np.array(positive)] >= 0)
            if negative:
                constraints.append(u[np.array(negative)] <= 0)

        objective = cp.sum_squares(u)
        sparsity = None
        if use_sparsity:
            sparsity = cp.Parameter(nonneg=True)
            if self._scalar_inputs:
                penalty = cp.norm1(u)
            else:
                penalty = cp.sum(cp.hstack([cp.norm(u[a:b], 2) for a, b in zip(starts[:-1], starts[1:], strict=True)]))
            objective = objective + sparsity * penalty
        problem = cp.Problem(cp.Minimize(objective), constraints)
        return _CachedProblem(problem=problem, u=u, target=target, caps=caps, sparsity=sparsity)

    def _solve(self, problem: cp.Problem, solver: str | None) -> str:
        """Solve in place and return the name of the solver that ran."""
        installed = cp.installed_solvers()
        if solver is not None and solver.upper() not in installed:
            raise ConfigurationError(
                f"solver {solver!r} is not installed. The installed cvxpy solvers are {installed}."
            )
        if solver is not None:
            name = solver.upper()
        elif "CLARABEL" in installed:
            name = "CLARABEL"
        else:
            name = "SCS"
        try:
            problem.solve(solver=name)
            return name
        except cp.error.SolverError as error:
            if solver is not None or name == "SCS":
                raise SolverError(f"Solver {name} failed: {error}. Try another cvxpy solver.") from error
            logger.warning("Solver %s failed (%s), retrying with SCS.", name, error)
        try:
            problem.solve(solver="SCS")
        except cp.error.SolverError as error:
            raise SolverError(f"Solvers {name} and SCS both failed: {error}.") from error
        return "SCS"

    def _reachable_interval(
        self, allowed: tuple[int, ...], caps: np.ndarray | None, signs: np.ndarray | None
    ) -> tuple[float, float]:
        """Return the range of scalar shifts reachable under caps and signs (one input, one output)."""
        low = high = 0.0
        for k in allowed:
            gain = float(self._stacked[0, k])
            if gain == 0:
                continue
            lower = -np.inf if caps is None else -caps[k]
            upper = np.inf if caps is None else caps[k]
            if signs is not None and signs[k] > 0:
                lower = 0.0
            if signs is not None and signs[k] < 0:
                upper = 0.0
            ends = (gain * lower, gain * upper)
            low += min(ends)
            high += max(ends)
        return low, high

    def _min_energy_constrained(
        self,
        target: np.ndarray,
        allowed: tuple[int, ...],
        *,
        max_amplitude: Any,
        relative_cap: Any,
        sign: Any,
        sparsity: Any,
        solver: str | None,
    ) -> Schedule:
        caps = self._resolve_caps(max_amplitude, relative_cap)
        signs = self._resolve_signs(sign)
        if sparsity is not None and (not np.isfinite(sparsity) or sparsity < 0):
            raise ConfigurationError(f"sparsity must be a finite number >= 0, got {sparsity!r}.")
        u_closed, G, diagnostics = self._closed_form(target, allowed, stacklevel=3)

        # The closed-form norm sets the scale, so the solver works with u of norm near 1.
        scale = float(np.linalg.norm(u_closed))
        allowed_caps = None if caps is None else caps[list(allowed)]
        capped = None if allowed_caps is None else [i for i, c in enumerate(allowed_caps) if np.isfinite(c)]
        allowed_signs = None if signs is None else tuple(int(s) for s in signs[list(allowed)])
        key = (allowed, tuple(capped or ()), allowed_signs, sparsity is not None)
        cached = self._problems.get(key)
        if cached is None:
            widths = [self._widths[k] for k in allowed]
            cached = self._build_problem(G, widths, capped, allowed_signs, sparsity is not None)
            self._problems[key] = cached
            if len(self._problems) > _MAX_CACHED_PROBLEMS:
                self._problems.popitem(last=False)
        else:
            self._problems.move_to_end(key)

        cached.target.value = target / scale
        if cached.caps is not None and allowed_caps is not None and capped:
            cached.caps.value = allowed_caps[capped] / scale
        if cached.sparsity is not None:
            cached.sparsity.value = float(sparsity) / scale
        solver_name = self._solve(cached.problem, solver)

        status = cached.problem.status
        constraints = {
            "max_amplitude": max_amplitude,
            "relative_cap": relative_cap,
            "sign": sign,
            "sparsity": sparsity,
        }
        if status in (cp.INFEASIBLE, cp.INFEASIBLE_INACCURATE):
            stated = ", ".join(f"{name}={_describe(value)}" for name, value in constraints.items() if value is not None)
            message = (
                f"No schedule on {self._describe_layers(allowed)} reaches target {_describe(target)} under {stated}."
            )
            if self._scalar_inputs and self.n_outputs == 1:
                low, high = self._reachable_interval(allowed, caps, signs)
                message += f" These constraints allow shifts in [{low:.4g}, {high:.4g}] only."
            raise InfeasibleError(message + " Raise max_amplitude or relative_cap, allow more layers, or relax sign.")
        if status not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE) or cached.u.value is None:
            raise SolverError(f"Solver {solver_name} returned status {status!r} and no schedule.")

        u_allowed = scale * np.asarray(cached.u.value, dtype=np.float64)
        u_allowed = _project(u_allowed, [self._widths[k] for k in allowed], allowed_caps, allowed_signs)
        miss = float(np.linalg.norm(G @ u_allowed - target) / np.linalg.norm(target))
        if status == cp.OPTIMAL_INACCURATE or miss > _RESIDUAL_TOLERANCE:
            warnings.warn(
                f"Solver {solver_name} returned status {status!r}, and the schedule misses the target "
                f"by {miss:.2g} relative. Try solver='CLARABEL' or loosen the constraints.",
                SolverAccuracyWarning,
                stacklevel=3,
            )
        metadata = {
            "method": "cvxpy",
            "solver": solver_name,
            "gramian_condition": diagnostics.condition_number,
            "constraints": {name: value for name, value in constraints.items() if value is not None},
        }
        return self._make_schedule(u_allowed, G, allowed, target, status=status, metadata=metadata)


def _outside_fraction(target: np.ndarray, diagnostics: GramianDiagnostics) -> float:
    """Return the relative norm of ``target`` in the null space of the Gramian."""
    null = diagnostics.eigenvectors[:, diagnostics.eigenvalues <= diagnostics.tolerance]
    return float(np.linalg.norm(null.T @ target) / np.linalg.norm(target))


def _project(u: np.ndarray, widths: list[int], caps: np.ndarray | None, signs: tuple[int, ...] | None) -> np.ndarray:
    """Project each layer's input onto its sign and cap constraint to remove solver round-off."""
    projected = u.copy()
    start = 0
    for i, width in enumerate(widths):
        block = projected[start : start + width]
        if signs is not None and signs[i] != 0:
            block *= (np.sign(block) == signs[i]) | (block == 0)
        if caps is not None and np.isfinite(caps[i]):
            norm = np.linalg.norm(block)
            if norm > caps[i]:
                block *= caps[i] / norm
        start += width
    return projected
