"""Exchange injection vectors with other tools.

:func:`export_gguf` writes a schedule's (n_layers, hidden) injection vectors
as a llama.cpp control-vector GGUF file, :func:`export_safetensors` writes
them as safetensors, and :func:`load_directions` reads per-layer vectors
from GGUF, safetensors, PyTorch (``.pt``) and NumPy (``.npy``) files.

Layer convention
----------------
In steercontrol, row k is added to the input of block k (the state x_k).
llama.cpp (``common_control_vector_load_one`` in ``common/common.cpp`` and
``build_cvec`` in its model graphs) adds the tensor ``direction.{i}`` to the
output of block i and rejects i = 0. The output of block i is the input of
block i + 1, so the llama.cpp index is ``k + layer_offset`` with the default
``layer_offset = -1``.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
from pathlib import Path
from typing import Any

import numpy as np

from steercontrol.exceptions import ConfigurationError, DataError, ShapeError

__all__ = [
    "LLAMA_CPP_LAYER_OFFSET",
    "export_gguf",
    "export_safetensors",
    "load_directions",
]

logger = logging.getLogger(__name__)

LLAMA_CPP_LAYER_OFFSET = -1
"""Default ``layer_offset``: llama.cpp index = block-input index + this offset."""

_GGUF_ARCHITECTURE = "controlvector"
_DIRECTION_NAME = re.compile(r"^direction\.(\d+)$")
_SUPPORTED_SUFFIXES = (".gguf", ".safetensors", ".pt", ".npy")


def _check_vectors(vectors: Any) -> np.ndarray:
    array = np.asarray(vectors, dtype=np.float64)
    if array.ndim != 2 or 0 in array.shape:
        raise ShapeError(f"vectors must have shape (n_layers, hidden) with both sizes >= 1, got {array.shape}.")
    if not np.isfinite(array).all():
        raise ConfigurationError("vectors contain non-finite entries. Pass finite injection vectors.")
    return array


def _temporary_sibling(path: Path) -> Path:
    # A sibling in the same folder keeps the rename on one file system, where os.replace is atomic.
    if path.is_dir():
        raise IsADirectoryError(f"Cannot save to {path} because it is a folder. Pass a file path instead.")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"Cannot save {path} because the folder {path.parent} does not exist.")
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


# Export


def export_gguf(
    vectors: Any,
    path: str | os.PathLike[str],
    *,
    model_hint: str = "llama",
    layer_offset: int = LLAMA_CPP_LAYER_OFFSET,
) -> Path:
    """Write injection vectors as a llama.cpp control-vector GGUF file.

    Parameters
    ----------
    vectors : array_like, (n_layers, hidden)
        Row k is the vector added to the input of block k, for example the
        ``vectors`` returned by :func:`steercontrol.io.load_schedule`.
    path : str or os.PathLike
        Destination file. An existing file is replaced.
    model_hint : str
        Architecture stored as ``controlvector.model_hint`` (for example
        ``"llama"``). llama.cpp does not check it.
    layer_offset : int
        Tensor ``direction.{k + layer_offset}`` contains row k. The default
        -1 matches llama.cpp, which adds ``direction.{i}`` to the output of
        block i, the input of block i + 1.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ShapeError
        If ``vectors`` is not a non-empty 2-D array.
    ConfigurationError
        If the vectors are non-finite or all zero, or a non-zero row maps to
        a llama.cpp index below 1, which llama.cpp cannot load.

    Notes
    -----
    NOTE: the default ``layer_offset = -1`` writes row k as
    ``direction.{k-1}``, because llama.cpp adds that tensor after block k-1,
    at the same point where steercontrol adds row k before block k. Rows 0
    and 1 therefore cannot be exported. Pass ``layer_offset=0`` only for
    readers that index tensors by block input, as steercontrol does.

    All-zero rows are not written, because llama.cpp treats a missing layer
    as zero. The tensors are float32 and ``controlvector.layer_count`` is
    the number of tensors written. The file is written under a temporary
    name in the same folder and then renamed.
    """
    import gguf

    array = _check_vectors(vectors)
    path = Path(path)
    rows = [k for k in range(array.shape[0]) if np.any(array[k])]
    if not rows:
        raise ConfigurationError("Every injection vector is zero, so there is nothing to export.")
    unloadable = [k for k in rows if k + layer_offset < 1]
    if unloadable:
        raise ConfigurationError(
            f"Block inputs {unloadable} have non-zero vectors but map to llama.cpp indices "
            f"{[k + layer_offset for k in unloadable]} with layer_offset={layer_offset}, and llama.cpp loads "
            f"only indices >= 1. Plan the schedule without these layers (for example --layers "
            f"{1 - layer_offset}-{array.shape[0] - 1})."
        )

    temporary = _temporary_sibling(path)
    try:
        # GGUFWriter stores general.architecture = "controlvector" itself.
        writer = gguf.GGUFWriter(temporary, _GGUF_ARCHITECTURE)
        writer.add_string(f"{_GGUF_ARCHITECTURE}.model_hint", model_hint)
        writer.add_uint32(f"{_GGUF_ARCHITECTURE}.layer_count", len(rows))
        for k in rows:
            writer.add_tensor(f"direction.{k + layer_offset}", array[k].astype(np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    logger.debug("Wrote %d control-vector tensors to %s.", len(rows), path)
    return path


def export_safetensors(vectors: Any, path: str | os.PathLike[str]) -> Path:
    """Write injection vectors as one float32 safetensors tensor named ``vectors``.

    Parameters
    ----------
    vectors : array_like, (n_layers, hidden)
        Row k is the vector added to the input of block k.
    path : str or os.PathLike
        Destination file. An existing file is replaced.

    Returns
    -------
    pathlib.Path
        ``path``.

    Notes
    -----
    The header metadata records ``layer_convention = "block_input"``, so
    row k belongs to the input of block k, with no offset.
    """
    import safetensors.numpy

    array = _check_vectors(vectors)
    path = Path(path)
    temporary = _temporary_sibling(path)
    try:
        safetensors.numpy.save_file(
            {"vectors": np.ascontiguousarray(array, dtype=np.float32)},
            temporary,
            metadata={"layer_convention": "block_input", "n_layers": str(array.shape[0])},
        )
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


# Import


def _assemble(per_layer: dict[int, np.ndarray], n_layers: int | None, path: Path) -> np.ndarray:
    """Stack layer -> (hidden,) vectors into an (n_layers, hidden) array with zero rows for missing layers."""
    if not per_layer:
        raise DataError(f"{path} contains no per-layer vectors.")
    if min(per_layer) < 0:
        raise DataError(
            f"{path} has a vector for block input {min(per_layer)}, which is negative. "
            "Pass the layer_offset that the file was written with."
        )
    widths = {vector.shape for vector in per_layer.values()}
    if len(widths) != 1 or len(next(iter(widths))) != 1:
        raise ShapeError(f"{path} has per-layer vectors of shapes {sorted(widths)}. Expected one (hidden,) shape.")
    count = max(per_layer) + 1 if n_layers is None else n_layers
    if max(per_layer) >= count:
        raise ShapeError(f"{path} has a vector for block input {max(per_layer)}, but n_layers is {count}.")
    hidden = next(iter(widths))[0]
    array = np.zeros((count, hidden), dtype=np.float64)
    for layer, vector in per_layer.items():
        array[layer] = vector
    return array


def _from_array(array: np.ndarray, n_layers: int | None, path: Path) -> np.ndarray:
    if array.ndim != 2:
        raise ShapeError(f"{path} contains an array of shape {array.shape}. Expected (n_layers, hidden).")
    if n_layers is not None and array.shape[0] != n_layers:
        raise ShapeError(f"{path} contains {array.shape[0]} layers, but n_layers is {n_layers}.")
    return array.astype(np.float64)


def _layer_of(name: str, path: Path) -> int:
    match = _DIRECTION_NAME.match(name) or re.match(r"^(\d+)$", name)
    if match is None:
        raise DataError(
            f"{path} contains the tensor {name!r}. Expected one tensor 'vectors' of shape (n_layers, hidden), "
            "or per-layer tensors named 'direction.{k}' or '{k}'."
        )
    return int(match.group(1))


def _read_gguf(path: Path, n_layers: int | None, layer_offset: int) -> np.ndarray:
    import gguf

    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, OSError) as error:
        raise DataError(f"{path} is not a readable GGUF file ({error}).") from error
    per_layer: dict[int, np.ndarray] = {}
    for tensor in reader.tensors:
        match = _DIRECTION_NAME.match(tensor.name)
        if match is None:
            raise DataError(
                f"{path} contains the tensor {tensor.name!r}, but a control-vector GGUF names its tensors "
                "'direction.{i}'."
            )
        if tensor.tensor_type != gguf.GGMLQuantizationType.F32:
            raise DataError(f"{path}: tensor {tensor.name} has type {tensor.tensor_type.name}, expected F32.")
        # Like llama.cpp, sum repeated indices.
        layer = int(match.group(1)) - layer_offset
        vector = np.asarray(tensor.data, dtype=np.float64).reshape(-1)
        per_layer[layer] = per_layer[layer] + vector if layer in per_layer else vector
    return _assemble(per_layer, n_layers, path)


def _read_safetensors(path: Path, n_layers: int | None) -> np.ndarray:
    import safetensors
    import safetensors.numpy

    try:
        tensors = safetensors.numpy.load_file(path)
    except (safetensors.SafetensorError, OSError) as error:
        raise DataError(f"{path} is not a readable safetensors file ({error}).") from error
    if "vectors" in tensors:
        if len(tensors) > 1:
            raise DataError(
                f"{path} contains 'vectors' and other tensors {sorted(set(tensors) - {'vectors'})}. A steercontrol "
                "surrogate or schedule file is read with steercontrol.io, not load_directions."
            )
        return _from_array(tensors["vectors"], n_layers, path)
    return _assemble(
        {_layer_of(name, path): value.astype(np.float64) for name, value in tensors.items()}, n_layers, path
    )


def _read_torch(path: Path, n_layers: int | None) -> np.ndarray:
    import torch

    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises many types (pickle, zip, runtime errors) for bad files.
        raise DataError(f"{path} is not a readable PyTorch file ({error}).") from error
    if isinstance(content, torch.Tensor):
        return _from_array(content.detach().double().numpy(), n_layers, path)
    if isinstance(content, dict):
        per_layer = {}
        for key, value in content.items():
            if not isinstance(value, torch.Tensor):
                raise DataError(f"{path}: entry {key!r} is a {type(value).__name__}, expected a tensor.")
            layer = key if isinstance(key, int) and not isinstance(key, bool) else _layer_of(str(key), path)
            per_layer[layer] = value.detach().double().numpy()
        return _assemble(per_layer, n_layers, path)
    raise DataError(
        f"{path} contains a {type(content).__name__}. Expected a (n_layers, hidden) tensor or a dict of layer -> "
        "(hidden,) tensor."
    )


def load_directions(
    path: str | os.PathLike[str],
    *,
    n_layers: int | None = None,
    layer_offset: int = LLAMA_CPP_LAYER_OFFSET,
) -> np.ndarray:
    """Read per-layer injection vectors from a GGUF, safetensors, PyTorch or NumPy file.

    Parameters
    ----------
    path : str or os.PathLike
        The file, by suffix:

        - ``.gguf``: a llama.cpp control vector, tensors ``direction.{i}``;
        - ``.safetensors``: one tensor ``vectors`` (n_layers, hidden), or
          per-layer tensors ``direction.{k}`` or ``{k}`` in block-input
          indices;
        - ``.pt``: a (n_layers, hidden) tensor, or a dict from layer (int, or
          a name as for safetensors) to a (hidden,) tensor;
        - ``.npy``: a (n_layers, hidden) array.
    n_layers : int, optional
        Rows of the result. Layers missing from the file are zero. Default:
        the highest layer in the file plus one.
    layer_offset : int
        GGUF only: tensor ``direction.{i}`` becomes row ``i - layer_offset``
        (see the module docstring). Default -1, the llama.cpp convention.

    Returns
    -------
    ndarray, (n_layers, hidden), float64
        Row k is the vector for the input of block k.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    DataError
        If the suffix is not supported, or the file is unreadable or has
        unexpected contents.
    ShapeError
        If the vectors are not (n_layers, hidden), disagree in width, or a
        layer is at or beyond ``n_layers``.
    """
    path = Path(path)
    if n_layers is not None and (isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1):
        raise ConfigurationError(f"Invalid n_layers {n_layers!r}. Pass an int >= 1 or None.")
    if path.suffix not in _SUPPORTED_SUFFIXES:
        raise DataError(
            f"Unsupported file type {path.suffix!r} for {path}. Expected one of {', '.join(_SUPPORTED_SUFFIXES)}."
        )
    if not path.is_file():
        raise FileNotFoundError(f"Cannot load {path} because the file does not exist.")

    if path.suffix == ".gguf":
        return _read_gguf(path, n_layers, layer_offset)
    if path.suffix == ".safetensors":
        return _read_safetensors(path, n_layers)
    if path.suffix == ".pt":
        return _read_torch(path, n_layers)
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as error:
        raise DataError(f"{path} is not a readable NumPy array file ({error}).") from error
    return _from_array(array, n_layers, path)
