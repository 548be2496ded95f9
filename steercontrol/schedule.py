"""Steering schedules: input amplitudes over all layers and the shift they predict.

:class:`Schedule` is the result type of the planners in
:mod:`steercontrol.controller` and :mod:`steercontrol.heuristics`. It never
imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from steercontrol.exceptions import ConfigurationError, ShapeError
from steercontrol.system import _as_input_directions

__all__ = ["Schedule"]


def _to_jsonable(value: Any) -> Any:
    """Convert NumPy arrays and scalars inside dicts, lists and tuples to plain Python."""
    if isinstance(value, Mapping):
        return {str(key): _to_jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_jsonable(item) for item in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


@dataclass(eq=False)
class Schedule:
    """Input amplitudes over all layers, with the shift they predict on the surrogate.

    Parameters
    ----------
    name : str
        Name of the rule that produced the schedule (``"min_energy"``,
        ``"uniform_all"``, ...).
    amplitudes : list of ndarray, each (m_k,)
        Input amplitudes per layer, with zeros where a layer is unused.
    predicted_shift : ndarray, (n_out,)
        :math:`\\sum_k G_k u_k` on the linear surrogate.
    target_shift : ndarray, (n_out,)
        Requested output shift.
    energy : float
        :math:`\\sum_k \\|u_k\\|^2`.
    status : str
        ``"closed_form"``, ``"heuristic"`` or the cvxpy status.
    layers : tuple of int
        Layers that were allowed a non-zero amplitude.
    metadata : dict
        Solver, constraints and provenance.

    Raises
    ------
    ShapeError
        If an amplitude is not 1-D or the two shifts differ in shape.

    Examples
    --------
    >>> import numpy as np
    >>> schedule = Schedule(name="demo", amplitudes=[np.array([1.0]), np.array([0.0])],
    ...                     predicted_shift=np.array([2.0]), target_shift=np.array([2.0]),
    ...                     energy=1.0, status="heuristic", layers=(0,))
    >>> schedule.scaled(2.0).energy
    4.0
    """

    name: str
    amplitudes: list[np.ndarray]
    predicted_shift: np.ndarray
    target_shift: np.ndarray
    energy: float
    status: str
    layers: tuple[int, ...]
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # a scalar amplitude becomes shape (1,)
        self.amplitudes = [np.atleast_1d(np.asarray(a, dtype=np.float64)) for a in self.amplitudes]
        for k, amplitude in enumerate(self.amplitudes):
            if amplitude.ndim != 1:
                raise ShapeError(f"amplitudes[{k}] must be 1-D, got shape {amplitude.shape}.")
        self.predicted_shift = np.atleast_1d(np.asarray(self.predicted_shift, dtype=np.float64))
        self.target_shift = np.atleast_1d(np.asarray(self.target_shift, dtype=np.float64))
        if self.predicted_shift.ndim != 1 or self.predicted_shift.shape != self.target_shift.shape:
            raise ShapeError(
                f"predicted_shift {self.predicted_shift.shape} and target_shift "
                f"{self.target_shift.shape} must be 1-D arrays of the same length."
            )
        self.energy = float(self.energy)
        self.layers = tuple(int(layer) for layer in self.layers)

    @property
    def n_layers(self) -> int:
        """Number of layers ``L`` the schedule covers."""
        return len(self.amplitudes)

    def vectors(self, input_directions: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """Map the amplitudes to injection vectors in model space.

        Parameters
        ----------
        input_directions : list of ndarray (H, m_k), or one ndarray (H, m)
            Per-layer directions, or one matrix shared by every layer.

        Returns
        -------
        ndarray, (L, H)
            Row ``k`` is :math:`\\sum_j u_{k,j} v_{k,j}`.

        Raises
        ------
        ShapeError
            If the directions do not match the amplitude widths.

        Examples
        --------
        >>> import numpy as np
        >>> schedule = Schedule(name="demo", amplitudes=[np.array([2.0])],
        ...                     predicted_shift=np.array([1.0]), target_shift=np.array([1.0]),
        ...                     energy=4.0, status="heuristic", layers=(0,))
        >>> schedule.vectors(np.array([[1.0], [0.5]]))
        array([[2., 1.]])
        """
        widths = [amplitude.size for amplitude in self.amplitudes]
        directions = _as_input_directions(input_directions, widths)
        if directions is None:
            raise ShapeError("input_directions is None. Pass one (H, m_k) matrix per layer.")
        return np.stack([d @ a for d, a in zip(directions, self.amplitudes, strict=True)])

    def amplitude_profile(self) -> np.ndarray:
        """Return one number per layer, shape (L,): the signed amplitude for scalar inputs, else the norm."""
        if all(amplitude.size == 1 for amplitude in self.amplitudes):
            return np.array([amplitude[0] for amplitude in self.amplitudes])
        return np.array([np.linalg.norm(amplitude) for amplitude in self.amplitudes])

    def scaled(self, factor: float) -> Schedule:
        """Return a copy with amplitudes and predicted shift times ``factor``.

        The energy is multiplied by ``factor**2``. The target is kept, and
        ``metadata["scale"]`` accumulates the factor, so a schedule calibrated
        on the full model still records its original target.
        """
        factor = float(factor)
        if not np.isfinite(factor):
            raise ConfigurationError(f"factor must be finite, got {factor!r}.")
        metadata = dict(self.metadata)
        metadata["scale"] = float(metadata.get("scale", 1.0)) * factor
        return Schedule(
            name=self.name,
            amplitudes=[factor * amplitude for amplitude in self.amplitudes],
            predicted_shift=factor * self.predicted_shift,
            target_shift=self.target_shift.copy(),
            energy=factor**2 * self.energy,
            status=self.status,
            layers=self.layers,
            metadata=metadata,
        )

    def to_dict(self) -> dict[str, Any]:
        """Return a dict of plain Python values that :func:`json.dumps` accepts."""
        return {
            "name": self.name,
            "amplitudes": [amplitude.tolist() for amplitude in self.amplitudes],
            "predicted_shift": self.predicted_shift.tolist(),
            "target_shift": self.target_shift.tolist(),
            "energy": self.energy,
            "status": self.status,
            "layers": list(self.layers),
            "metadata": _to_jsonable(self.metadata),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Schedule:
        """Rebuild a schedule from :meth:`to_dict` output.

        Raises
        ------
        ConfigurationError
            If a required key is missing.
        """
        required = ("name", "amplitudes", "predicted_shift", "target_shift", "energy", "status", "layers")
        missing = [key for key in required if key not in data]
        if missing:
            raise ConfigurationError(f"Schedule data is missing the keys {missing}.")
        return cls(
            name=data["name"],
            amplitudes=[np.asarray(a, dtype=np.float64) for a in data["amplitudes"]],
            predicted_shift=np.asarray(data["predicted_shift"], dtype=np.float64),
            target_shift=np.asarray(data["target_shift"], dtype=np.float64),
            energy=data["energy"],
            status=data["status"],
            layers=tuple(data["layers"]),
            metadata=dict(data.get("metadata", {})),
        )
