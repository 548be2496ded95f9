"""Exception and warning classes raised by steercontrol.

Every exception derives from :class:`SteerControlError` and from the builtin
that matches its meaning, so ``except ValueError`` keeps working for callers
who do not know this package.
"""

from __future__ import annotations

__all__ = [
    "SteerControlError",
    "ConfigurationError",
    "ModelLoadError",
    "UnsupportedModelError",
    "ShapeError",
    "DataError",
    "ModelMismatchError",
    "ArtifactKindError",
    "InfeasibleError",
    "UnreachableTargetError",
    "SolverError",
    "SteerControlWarning",
    "IllConditionedGramianWarning",
    "SolverAccuracyWarning",
    "TruncationWarning",
    "CalibrationWarning",
    "DataDirectionWarning",
]


class SteerControlError(Exception):
    """Base class of every error raised by steercontrol."""


class ConfigurationError(SteerControlError, ValueError):
    """An argument has an invalid value (wrong range, unknown option)."""


class ModelLoadError(SteerControlError, OSError):
    """A model, its files or its cache could not be loaded."""


class UnsupportedModelError(SteerControlError, TypeError):
    """The model architecture has no known block layout."""


class ShapeError(SteerControlError, ValueError):
    """An array or tensor has the wrong shape for the model or system."""


class DataError(SteerControlError, ValueError):
    """A labelled dataset is empty, single-class or otherwise unusable."""


class ModelMismatchError(SteerControlError, ValueError):
    """An artifact was made on a different model than the one it is used with."""


class ArtifactKindError(DataError):
    """A saved file is another kind of steercontrol artifact than the one requested.

    Attributes
    ----------
    found, expected : str
        The kind in the file and the kind requested: ``"surrogate"`` or ``"schedule"``.
    """

    def __init__(self, message: str, *, found: str, expected: str) -> None:
        super().__init__(message)
        self.found = found
        self.expected = expected


class InfeasibleError(SteerControlError, ValueError):
    """The constraints of a plan admit no schedule."""


class UnreachableTargetError(SteerControlError, ValueError):
    """No allowed layer can move the readout toward the target."""


class SolverError(SteerControlError, RuntimeError):
    """An optimisation solver failed or returned no usable solution."""


class SteerControlWarning(UserWarning):
    """Base class of every warning issued by steercontrol."""


class IllConditionedGramianWarning(SteerControlWarning):
    """The reachability Gramian is close to singular."""


class SolverAccuracyWarning(SteerControlWarning):
    """A solver returned an inaccurate solution (status ``optimal_inaccurate``)."""


class TruncationWarning(SteerControlWarning):
    """A text was longer than the model's context and was truncated."""


class CalibrationWarning(SteerControlWarning):
    """A schedule could not be scaled to reach its target on the full model."""


class DataDirectionWarning(SteerControlWarning):
    """A concept direction could not be estimated at some layer and was borrowed from another."""
