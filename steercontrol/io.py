"""Save and load surrogates and schedules as safetensors files.

Each file contains float64 arrays and, in the safetensors header metadata
(``__metadata__``), one JSON document per key. The key
``steercontrol_format`` marks the file as ``"surrogate"`` or ``"schedule"``,
and ``format_version`` gives the layout version (:data:`FORMAT_VERSION`).
The header also records the steercontrol version that wrote the file and the
model name and weight hash that the object was made on, so loading with
``model=`` rejects a file made on another model.

Array names:

- layer-varying surrogate: ``A.{k}``, ``B.{k}``, ``C``, and optionally
  ``input_directions.{k}`` and ``state_norms``;
- time-invariant surrogate: ``A``, ``B``, ``C``, and optionally
  ``input_directions`` (one matrix shared by every layer) or
  ``input_directions.{k}`` (one per layer), and ``state_norms``;
- schedule: ``amplitudes.{k}``, ``predicted_shift``, ``target_shift``, and
  optionally ``vectors``, the (L, H) injection vectors.

Metadata is stored as JSON, so tuples come back as lists, NumPy arrays and
scalars as plain Python values, and non-string dict keys as strings.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import safetensors
import safetensors.numpy

from steercontrol import __version__
from steercontrol.exceptions import ArtifactKindError, ConfigurationError, DataError, ModelMismatchError, ShapeError
from steercontrol.schedule import Schedule, _to_jsonable
from steercontrol.system import LayerVaryingSurrogate, TimeInvariantSurrogate

if TYPE_CHECKING:
    from steercontrol.models import SteerableModel

__all__ = [
    "FORMAT_VERSION",
    "save_surrogate",
    "load_surrogate",
    "save_schedule",
    "load_schedule",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Version of the file layout that this module writes. Loading rejects newer versions."""

_FORMAT_KEY = "steercontrol_format"
_LOADERS = {"surrogate": "load_surrogate", "schedule": "load_schedule"}
_SURROGATE_FIELDS = ("kind", "n_layers", "n_steps", "metadata")
_SCHEDULE_FIELDS = ("n_layers", "schedule")
_SCHEDULE_ARRAYS = ("amplitudes", "predicted_shift", "target_shift")
_IDENTIFY_AGAIN = "Identify the surrogate again on this model."
_PLAN_AGAIN = "Plan the schedule again on a surrogate identified on this model."


# Header encoding


def _encode_header(fields: dict[str, Any]) -> dict[str, str]:
    header = {}
    for key, value in fields.items():
        try:
            header[key] = json.dumps(_to_jsonable(value))
        except (TypeError, ValueError) as error:
            raise ConfigurationError(
                f"Cannot store {key!r} in the file header: {error}. Metadata may contain only dicts, "
                "lists, strings, numbers, booleans, None and NumPy arrays."
            ) from error
    return header


def _decode_header(raw: dict[str, str] | None, path: Path, expected_format: str) -> dict[str, Any]:
    """Parse the header of a steercontrol file and check its format, version and required fields."""
    if not raw or _FORMAT_KEY not in raw:
        raise DataError(
            f"{path} has no steercontrol metadata in its safetensors header, so it was not written by "
            "save_surrogate or save_schedule."
        )
    fields = {}
    for key, text in raw.items():
        try:
            fields[key] = json.loads(text)
        except json.JSONDecodeError as error:
            raise DataError(f"{path} has invalid JSON in the header field {key!r}: {error}.") from error

    version = fields.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise DataError(f"{path} has an invalid format_version {version!r}. Expected a positive integer.")
    if version > FORMAT_VERSION:
        raise DataError(
            f"{path} uses file format version {version} (written by steercontrol "
            f"{fields.get('steercontrol_version')}), but steercontrol {__version__} reads versions up to "
            f"{FORMAT_VERSION}. Upgrade steercontrol to load it."
        )

    file_format = fields[_FORMAT_KEY]
    if file_format != expected_format:
        if file_format in _LOADERS:
            raise ArtifactKindError(
                f"{path} contains a steercontrol {file_format}, not a {expected_format}. "
                f"Load it with {_LOADERS[file_format]}.",
                found=file_format,
                expected=expected_format,
            )
        raise DataError(f"{path} has the unknown steercontrol format {file_format!r}.")

    required = _SURROGATE_FIELDS if expected_format == "surrogate" else _SCHEDULE_FIELDS
    missing = [key for key in required if key not in fields]
    if missing:
        raise DataError(f"{path} is missing the header fields {missing}.")
    n_layers = fields["n_layers"]
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
        raise DataError(f"{path} has an invalid n_layers {n_layers!r}. Expected a positive integer.")
    return fields


# Files


def _write_atomic(arrays: dict[str, np.ndarray], fields: dict[str, Any], path: Path) -> None:
    """Write a safetensors file next to ``path`` and rename it into place, so a failure leaves no partial file."""
    header = _encode_header(fields)
    if path.is_dir():
        raise IsADirectoryError(f"Cannot save to {path} because it is a folder. Pass a file path instead.")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"Cannot save {path} because the folder {path.parent} does not exist.")

    # save_file reads each array's raw memory, so views must be made C-contiguous first.
    contiguous = {name: np.ascontiguousarray(array, dtype=np.float64) for name, array in arrays.items()}
    # A sibling in the same folder keeps the rename on one file system, where os.replace is atomic.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        safetensors.numpy.save_file(contiguous, temporary, metadata=header)
        with open(temporary, "r+b") as handle:
            os.fsync(handle.fileno())
        # Give the file the mode a plain open() would, under the user's umask.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _read(path: Path, expected_format: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Return the arrays and decoded header fields of a steercontrol file."""
    if not path.exists():
        raise FileNotFoundError(f"Cannot load {path} because the file does not exist.")
    if path.is_dir():
        raise IsADirectoryError(f"Cannot load {path} because it is a folder. Pass the path of a .safetensors file.")
    try:
        with safetensors.safe_open(path, framework="np") as handle:
            fields = _decode_header(handle.metadata(), path, expected_format)
            arrays = {name: handle.get_tensor(name) for name in handle.keys()}
    except safetensors.SafetensorError as error:
        raise DataError(
            f"{path} is not a readable safetensors file ({error}). It may be truncated or corrupt, so save it again."
        ) from error
    return arrays, fields


def _indexed(arrays: dict[str, np.ndarray], prefix: str, count: int, path: Path) -> list[np.ndarray]:
    names = [f"{prefix}.{k}" for k in range(count)]
    missing = [name for name in names if name not in arrays]
    if missing:
        raise DataError(f"{path} is missing the arrays {missing}.")
    return [arrays[name] for name in names]


def _reject_unexpected(arrays: dict[str, np.ndarray], used: Sequence[str], path: Path) -> None:
    unexpected = sorted(set(arrays) - set(used))
    if unexpected:
        raise DataError(f"{path} contains unexpected arrays {unexpected} for its n_layers and kind.")


# Model checks


def _provenance(
    metadata: Mapping[str, Any], model: SteerableModel | None, remedy: str
) -> tuple[str | None, str | None]:
    """Return the model name and weight hash to record, checking ``model`` against ``metadata``."""
    if model is None:
        return metadata.get("model"), metadata.get("weight_hash")
    recorded = metadata.get("weight_hash")
    current = model.weight_hash()
    if recorded is not None and recorded != current:
        raise ModelMismatchError(
            f"The metadata records model {metadata.get('model')!r} with weight hash {recorded}, but the given "
            f"model {model.name!r} has weight hash {current}. Pass the model it was made on. {remedy}"
        )
    return model.name, current


def _check_sizes(subject: str, n_layers: int, hidden_size: int | None, model: SteerableModel, remedy: str) -> None:
    if n_layers != model.n_layers:
        raise ModelMismatchError(
            f"The {subject} covers {n_layers} layers, but model {model.name!r} has {model.n_layers}. {remedy}"
        )
    if hidden_size is not None and hidden_size != model.hidden_size:
        raise ModelMismatchError(
            f"The injection directions have {hidden_size} rows, but model {model.name!r} has hidden size "
            f"{model.hidden_size}. {remedy}"
        )


def _check_file_model(fields: Mapping[str, Any], model: SteerableModel, path: Path, remedy: str) -> None:
    """Raise ModelMismatchError unless the file's weight hash, or its model name when it has no hash, matches."""
    file_model = fields.get("model")
    file_hash = fields.get("weight_hash")
    if file_hash is None and file_model is None:
        raise ModelMismatchError(
            f"{path} records no model name or weight hash, so it cannot be checked against model "
            f"{model.name!r}. Load it without model=, or save it again with model=."
        )
    if file_hash is not None:
        matches = file_hash == model.weight_hash()
    else:
        matches = file_model == model.name
    if not matches:
        raise ModelMismatchError(
            f"{path} was made on model {file_model!r} (weight hash {file_hash}), but the given model is "
            f"{model.name!r} (weight hash {model.weight_hash()}). {remedy}"
        )


# Surrogates


def _surrogate_arrays(surrogate: LayerVaryingSurrogate | TimeInvariantSurrogate) -> tuple[str, dict[str, np.ndarray]]:
    """Return the kind and the named arrays of a surrogate."""
    arrays: dict[str, np.ndarray] = {}
    directions = surrogate.input_directions
    if isinstance(surrogate, LayerVaryingSurrogate):
        kind = "layer_varying"
        for k, (a, b) in enumerate(zip(surrogate.A, surrogate.B, strict=True)):
            arrays[f"A.{k}"] = a
            arrays[f"B.{k}"] = b
        shared = False
    else:
        kind = "time_invariant"
        arrays["A"] = surrogate.A
        arrays["B"] = surrogate.B
        # The constructor repeats one shared matrix per layer, and the file stores it once.
        shared = directions is not None and all(np.array_equal(d, directions[0]) for d in directions[1:])
    arrays["C"] = surrogate.C

    if directions is not None and shared:
        arrays["input_directions"] = directions[0]
    elif directions is not None:
        for k, direction in enumerate(directions):
            arrays[f"input_directions.{k}"] = direction
    if surrogate.state_norms is not None:
        arrays["state_norms"] = surrogate.state_norms
    return kind, arrays


def save_surrogate(
    surrogate: LayerVaryingSurrogate | TimeInvariantSurrogate,
    path: str | os.PathLike[str],
    *,
    model: SteerableModel | None = None,
    extra_metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write a surrogate to one safetensors file.

    The file is written under a temporary name in the same folder and then
    renamed, so a failed save leaves neither a partial file nor a changed
    old file at ``path``.

    Parameters
    ----------
    surrogate : LayerVaryingSurrogate or TimeInvariantSurrogate
        The surrogate. Its arrays are stored as float64 tensors.
    path : str or os.PathLike
        Destination file, conventionally ending in ``.safetensors``. An
        existing file is replaced.
    model : SteerableModel, optional
        The model the surrogate was identified on. Its name and weight hash
        are recorded in the header and in the stored metadata as ``model``
        and ``weight_hash``. Without it they are taken from the surrogate's
        metadata, where :func:`steercontrol.identify.identify` records them.
    extra_metadata : mapping, optional
        Entries added to the stored metadata, replacing keys of the same
        name, for example ``{"task": "sentiment", "eps": 2e-3}``.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    TypeError
        If ``surrogate`` is neither surrogate class.
    ModelMismatchError
        If the metadata records another weight hash than ``model`` has, or
        the layer count or hidden size differs from ``model``.
    ConfigurationError
        If the metadata contains a value that JSON cannot store.
    FileNotFoundError
        If the folder of ``path`` does not exist.

    Notes
    -----
    Besides the full metadata (header field ``metadata``), the header has
    the fields ``kind``, ``n_layers``, ``n_steps``, ``model``,
    ``weight_hash``, ``task``, ``readout``, ``order``, ``eps``, ``basis``,
    ``steercontrol_version`` and ``format_version``, so tools can read the
    provenance without loading the arrays. A field missing from the
    metadata is stored as null.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> from steercontrol.system import LayerVaryingSurrogate
    >>> surrogate = LayerVaryingSurrogate(A=[np.eye(2)], B=[np.ones((2, 1))], C=np.ones((1, 2)))
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = save_surrogate(surrogate, Path(folder) / "demo.safetensors")
    ...     load_surrogate(path).gain_profile()
    array([2.])
    """
    if not isinstance(surrogate, (LayerVaryingSurrogate, TimeInvariantSurrogate)):
        raise TypeError(
            f"surrogate must be a LayerVaryingSurrogate or TimeInvariantSurrogate, got {type(surrogate).__name__}."
        )
    path = Path(path)
    metadata = {**surrogate.metadata, **(extra_metadata or {})}
    model_name, weight_hash = _provenance(metadata, model, _IDENTIFY_AGAIN)
    if model is not None:
        hidden_size = None if surrogate.input_directions is None else surrogate.input_directions[0].shape[0]
        _check_sizes("surrogate", surrogate.n_layers, hidden_size, model, _IDENTIFY_AGAIN)
        metadata["model"] = model_name
        metadata["weight_hash"] = weight_hash

    kind, arrays = _surrogate_arrays(surrogate)
    fields = {
        _FORMAT_KEY: "surrogate",
        "format_version": FORMAT_VERSION,
        "steercontrol_version": __version__,
        "kind": kind,
        "n_layers": surrogate.n_layers,
        "n_steps": surrogate.n_layers,
        "model": model_name,
        "weight_hash": weight_hash,
        "task": metadata.get("task"),
        "readout": metadata.get("readout"),
        "order": metadata.get("order"),
        "eps": metadata.get("eps"),
        "basis": metadata.get("basis"),
        "metadata": metadata,
    }
    _write_atomic(arrays, fields, path)
    logger.debug("Saved a %s surrogate with %d layers to %s.", kind, surrogate.n_layers, path)
    return path


def load_surrogate(
    path: str | os.PathLike[str], *, model: SteerableModel | None = None
) -> LayerVaryingSurrogate | TimeInvariantSurrogate:
    """Read a surrogate written by :func:`save_surrogate`.

    Parameters
    ----------
    path : str or os.PathLike
        The file.
    model : SteerableModel, optional
        The model the surrogate will be used with. When given, the file's
        weight hash must equal ``model.weight_hash()``, or, for a file that
        records no hash, its model name must equal ``model.name``.

    Returns
    -------
    LayerVaryingSurrogate or TimeInvariantSurrogate
        The class named by the file's ``kind``, with arrays bitwise equal to
        the saved ones and the stored metadata.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    DataError
        If the file is truncated or corrupt, is not a steercontrol surrogate,
        has a newer format version, or its arrays are missing or inconsistent.
    ModelMismatchError
        If ``model`` is given and the file was made on another model or
        records no model.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> from steercontrol.system import TimeInvariantSurrogate
    >>> surrogate = TimeInvariantSurrogate(A=0.5 * np.eye(1), B=np.ones((1, 1)), C=np.ones((1, 1)),
    ...                                    n_steps=3, metadata={"task": "demo"})
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     loaded = load_surrogate(save_surrogate(surrogate, Path(folder) / "demo.safetensors"))
    >>> loaded.n_steps, loaded.metadata
    (3, {'task': 'demo'})
    """
    path = Path(path)
    arrays, fields = _read(path, "surrogate")
    kind = fields["kind"]
    n_layers = fields["n_layers"]
    metadata = fields["metadata"]
    if kind not in ("layer_varying", "time_invariant"):
        raise DataError(
            f"{path} has the unknown surrogate kind {kind!r}. Expected 'layer_varying' or 'time_invariant'."
        )
    if not isinstance(metadata, dict):
        raise DataError(f"{path} has metadata of type {type(metadata).__name__}, expected a JSON object.")
    if model is not None:
        _check_file_model(fields, model, path, _IDENTIFY_AGAIN)

    used = ["C"]
    if kind == "layer_varying":
        A: Any = _indexed(arrays, "A", n_layers, path)
        B: Any = _indexed(arrays, "B", n_layers, path)
        used += [f"{name}.{k}" for name in ("A", "B") for k in range(n_layers)]
    else:
        missing = [name for name in ("A", "B") if name not in arrays]
        if missing:
            raise DataError(f"{path} is missing the arrays {missing}.")
        A, B = arrays["A"], arrays["B"]
        used += ["A", "B"]
    if "C" not in arrays:
        raise DataError(f"{path} is missing the arrays ['C'].")

    directions: Any = None
    if "input_directions" in arrays and kind == "time_invariant":
        directions = arrays["input_directions"]
        used.append("input_directions")
    elif "input_directions.0" in arrays:
        directions = _indexed(arrays, "input_directions", n_layers, path)
        used += [f"input_directions.{k}" for k in range(n_layers)]
    state_norms = arrays.get("state_norms")
    if state_norms is not None:
        used.append("state_norms")
    _reject_unexpected(arrays, used, path)

    try:
        if kind == "layer_varying":
            surrogate: LayerVaryingSurrogate | TimeInvariantSurrogate = LayerVaryingSurrogate(
                A=A, B=B, C=arrays["C"], input_directions=directions, state_norms=state_norms, metadata=metadata
            )
        else:
            surrogate = TimeInvariantSurrogate(
                A=A,
                B=B,
                C=arrays["C"],
                n_steps=n_layers,
                input_directions=directions,
                state_norms=state_norms,
                metadata=metadata,
            )
    except (ShapeError, ConfigurationError) as error:
        raise DataError(f"{path} contains inconsistent arrays: {error}") from error

    if model is not None:
        hidden_size = None if surrogate.input_directions is None else surrogate.input_directions[0].shape[0]
        _check_sizes("surrogate", surrogate.n_layers, hidden_size, model, _IDENTIFY_AGAIN)
    logger.debug("Loaded a %s surrogate with %d layers from %s.", kind, n_layers, path)
    return surrogate


# Schedules


def save_schedule(
    schedule: Schedule,
    path: str | os.PathLike[str],
    *,
    input_directions: Sequence[np.ndarray] | np.ndarray | None = None,
    model: SteerableModel | None = None,
) -> Path:
    """Write a schedule, and optionally its injection vectors, to one safetensors file.

    The file is written under a temporary name in the same folder and then
    renamed, as in :func:`save_surrogate`.

    Parameters
    ----------
    schedule : Schedule
        The schedule. Amplitudes and shifts are stored as float64 tensors,
        and the other fields of :meth:`Schedule.to_dict` as JSON.
    path : str or os.PathLike
        Destination file. An existing file is replaced.
    input_directions : list of ndarray (H, m_k), or ndarray (H, m), optional
        The surrogate's input directions. When given, the (L, H) injection
        vectors ``schedule.vectors(input_directions)`` are stored as
        ``vectors``, so the schedule can be applied without the surrogate.
    model : SteerableModel, optional
        The model the schedule is meant for. Its name and weight hash are
        recorded in the header and in the stored schedule metadata.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    TypeError
        If ``schedule`` is not a :class:`Schedule`.
    ShapeError
        If ``input_directions`` does not match the amplitude widths.
    ModelMismatchError
        If the schedule metadata records another weight hash than ``model``
        has, or the layer count or hidden size differs from ``model``.
    ConfigurationError
        If the metadata contains a value that JSON cannot store.
    FileNotFoundError
        If the folder of ``path`` does not exist.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> schedule = Schedule(name="demo", amplitudes=[np.array([2.0])], predicted_shift=np.array([1.0]),
    ...                     target_shift=np.array([1.0]), energy=4.0, status="heuristic", layers=(0,))
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = save_schedule(schedule, Path(folder) / "demo.safetensors",
    ...                          input_directions=np.array([[1.0], [0.5]]))
    ...     loaded, vectors = load_schedule(path)
    >>> vectors
    array([[2., 1.]])
    """
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a Schedule, got {type(schedule).__name__}.")
    path = Path(path)
    data = schedule.to_dict()
    for key in _SCHEDULE_ARRAYS:
        del data[key]

    arrays: dict[str, np.ndarray] = {f"amplitudes.{k}": a for k, a in enumerate(schedule.amplitudes)}
    arrays["predicted_shift"] = schedule.predicted_shift
    arrays["target_shift"] = schedule.target_shift
    hidden_size = None
    if input_directions is not None:
        vectors = schedule.vectors(input_directions)  # (L, H)
        arrays["vectors"] = vectors
        hidden_size = vectors.shape[1]

    model_name, weight_hash = _provenance(schedule.metadata, model, _PLAN_AGAIN)
    if model is not None:
        _check_sizes("schedule", schedule.n_layers, hidden_size, model, _PLAN_AGAIN)
        data["metadata"]["model"] = model_name
        data["metadata"]["weight_hash"] = weight_hash
        # Read back as the default architecture hint of a llama.cpp export.
        data["metadata"]["model_type"] = model.model_type

    fields = {
        _FORMAT_KEY: "schedule",
        "format_version": FORMAT_VERSION,
        "steercontrol_version": __version__,
        "n_layers": schedule.n_layers,
        "model": model_name,
        "weight_hash": weight_hash,
        "schedule": data,
    }
    _write_atomic(arrays, fields, path)
    logger.debug("Saved schedule %r with %d layers to %s.", schedule.name, schedule.n_layers, path)
    return path


def load_schedule(
    path: str | os.PathLike[str], *, model: SteerableModel | None = None
) -> tuple[Schedule, np.ndarray | None]:
    """Read a schedule written by :func:`save_schedule`.

    Parameters
    ----------
    path : str or os.PathLike
        The file.
    model : SteerableModel, optional
        The model the schedule will be applied to, checked as in
        :func:`load_surrogate`.

    Returns
    -------
    schedule : Schedule
        With amplitudes and shifts bitwise equal to the saved ones.
    vectors : ndarray, (L, H), or None
        The stored injection vectors, or None when the file has none.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    DataError
        If the file is truncated or corrupt, is not a steercontrol schedule,
        has a newer format version, or its arrays are missing or inconsistent.
    ModelMismatchError
        If ``model`` is given and the file was made on another model or
        records no model.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> schedule = Schedule(name="demo", amplitudes=[np.array([2.0])], predicted_shift=np.array([1.0]),
    ...                     target_shift=np.array([1.0]), energy=4.0, status="heuristic", layers=(0,))
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     loaded, vectors = load_schedule(save_schedule(schedule, Path(folder) / "demo.safetensors"))
    >>> loaded.energy, vectors is None
    (4.0, True)
    """
    path = Path(path)
    arrays, fields = _read(path, "schedule")
    n_layers = fields["n_layers"]
    data = fields["schedule"]
    if not isinstance(data, dict):
        raise DataError(f"{path} has a schedule field of type {type(data).__name__}, expected a JSON object.")
    if model is not None:
        _check_file_model(fields, model, path, _PLAN_AGAIN)

    data = dict(data)
    data["amplitudes"] = _indexed(arrays, "amplitudes", n_layers, path)
    missing = [name for name in ("predicted_shift", "target_shift") if name not in arrays]
    if missing:
        raise DataError(f"{path} is missing the arrays {missing}.")
    data["predicted_shift"] = arrays["predicted_shift"]
    data["target_shift"] = arrays["target_shift"]
    vectors = arrays.get("vectors")
    used = [f"amplitudes.{k}" for k in range(n_layers)] + ["predicted_shift", "target_shift"]
    if vectors is not None:
        used.append("vectors")
        if vectors.ndim != 2 or vectors.shape[0] != n_layers:
            raise DataError(f"{path} has vectors of shape {vectors.shape}, expected ({n_layers}, hidden_size).")
    _reject_unexpected(arrays, used, path)

    try:
        schedule = Schedule.from_dict(data)
    # ShapeError and ConfigurationError are ValueErrors, and a wrong JSON type raises TypeError.
    except (TypeError, ValueError) as error:
        raise DataError(f"{path} contains an invalid schedule: {error}") from error

    if model is not None:
        _check_sizes("schedule", n_layers, None if vectors is None else vectors.shape[1], model, _PLAN_AGAIN)
    logger.debug("Loaded schedule %r with %d layers from %s.", schedule.name, n_layers, path)
    return schedule, vectors
