"""Tests of saving and loading surrogates and schedules as safetensors files."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
import safetensors
import safetensors.numpy

from steercontrol import __version__
from steercontrol.concepts import probe_readout
from steercontrol.controller import Controller
from steercontrol.exceptions import ArtifactKindError, ConfigurationError, DataError, ModelMismatchError, ShapeError
from steercontrol.identify import identify, time_invariant
from steercontrol.io import FORMAT_VERSION, load_schedule, load_surrogate, save_schedule, save_surrogate
from steercontrol.schedule import Schedule
from steercontrol.system import LayerVaryingSurrogate, TimeInvariantSurrogate
from steercontrol.testing import tiny_model

METADATA = {
    "task": "sentiment",
    "order": 5,
    "eps": 2e-3,
    "basis": "reachable",
    "readout": {"kind": "probe", "description": "linear probe", "n_outputs": 2},
    "fit": {"gain_error": 0.1 + 0.2, "layers": [1, 2, 3], "missing": None},
}


def assert_bitwise(loaded: np.ndarray, saved: np.ndarray) -> None:
    assert loaded.dtype == np.float64
    assert loaded.shape == saved.shape
    assert loaded.tobytes() == saved.tobytes()


def layer_varying(seed: int = 0, hidden: int = 7) -> LayerVaryingSurrogate:
    """Return a surrogate with state dimensions 3, 5, 2, 4 and input widths 1, 2, 1."""
    rng = np.random.default_rng(seed)
    dims, widths = [3, 5, 2, 4], [1, 2, 1]
    return LayerVaryingSurrogate(
        A=[rng.standard_normal((dims[k + 1], dims[k])) for k in range(3)],
        B=[rng.standard_normal((dims[k + 1], widths[k])) for k in range(3)],
        C=rng.standard_normal((2, dims[-1])),
        input_directions=[rng.standard_normal((hidden, width)) for width in widths],
        state_norms=rng.uniform(1.0, 5.0, size=3),
        metadata=dict(METADATA),
    )


def time_invariant_surrogate(seed: int = 0, *, shared: bool = True) -> TimeInvariantSurrogate:
    rng = np.random.default_rng(seed)
    directions = rng.standard_normal((6, 2)) if shared else [rng.standard_normal((6, 2)) for _ in range(4)]
    return TimeInvariantSurrogate(
        A=rng.standard_normal((3, 3)),
        B=rng.standard_normal((3, 2)),
        C=rng.standard_normal((1, 3)),
        n_steps=4,
        input_directions=directions,
        state_norms=rng.uniform(1.0, 5.0, size=4),
        metadata=dict(METADATA),
    )


def assert_same_surrogate(loaded, saved) -> None:
    assert type(loaded) is type(saved)
    for name in ("A", "B"):
        # lists of per-layer matrices for a layer-varying surrogate, one matrix for a time-invariant one
        loaded_value, saved_value = getattr(loaded, name), getattr(saved, name)
        if isinstance(saved_value, list):
            assert len(loaded_value) == len(saved_value)
            for loaded_matrix, saved_matrix in zip(loaded_value, saved_value, strict=True):
                assert_bitwise(loaded_matrix, saved_matrix)
        else:
            assert_bitwise(loaded_value, saved_value)
    assert_bitwise(loaded.C, saved.C)
    assert_bitwise(loaded.state_norms, saved.state_norms)
    assert len(loaded.input_directions) == len(saved.input_directions)
    for loaded_direction, saved_direction in zip(loaded.input_directions, saved.input_directions, strict=True):
        assert_bitwise(loaded_direction, saved_direction)
    assert loaded.metadata == saved.metadata


def read_file(path):
    with safetensors.safe_open(path, framework="np") as handle:
        return {name: handle.get_tensor(name) for name in handle.keys()}, handle.metadata()


def rewrite(path, *, arrays=None, header=None, drop=()):
    """Rewrite a saved file with some arrays or JSON header fields replaced."""
    saved_arrays, saved_header = read_file(path)
    saved_arrays.update(arrays or {})
    saved_header.update({key: json.dumps(value) for key, value in (header or {}).items()})
    for name in drop:
        del saved_arrays[name]
    safetensors.numpy.save_file(saved_arrays, path, metadata=saved_header)


@pytest.fixture(scope="module")
def identified():
    model = tiny_model("llama")
    rng = np.random.default_rng(0)
    directions = rng.standard_normal((model.n_layers + 1, model.hidden_size))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    readout = probe_readout(rng.standard_normal(model.hidden_size))
    ids = model.tokenize("save and load")["input_ids"][0]
    return model, identify(model, ids, directions, readout, order=4)


@pytest.fixture(scope="module")
def other_model():
    return tiny_model("llama", seed=1)


# Round trips


def test_layer_varying_round_trip(tmp_path):
    surrogate = layer_varying()
    loaded = load_surrogate(save_surrogate(surrogate, tmp_path / "lv.safetensors"))
    assert loaded.state_dims == (3, 5, 2, 4)
    assert_same_surrogate(loaded, surrogate)


def test_saved_file_mode_follows_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        path = save_surrogate(layer_varying(), tmp_path / "shared.safetensors")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_time_invariant_round_trip(tmp_path):
    surrogate = time_invariant_surrogate()
    loaded = load_surrogate(save_surrogate(surrogate, tmp_path / "ti.safetensors"))
    assert loaded.n_steps == 4
    assert_same_surrogate(loaded, surrogate)


def test_time_invariant_stores_shared_directions_once(tmp_path):
    path = save_surrogate(time_invariant_surrogate(), tmp_path / "ti.safetensors")
    arrays, _ = read_file(path)
    assert sorted(arrays) == ["A", "B", "C", "input_directions", "state_norms"]


def test_time_invariant_per_layer_directions(tmp_path):
    surrogate = time_invariant_surrogate(shared=False)
    path = save_surrogate(surrogate, tmp_path / "ti.safetensors")
    arrays, _ = read_file(path)
    assert "input_directions.3" in arrays
    assert_same_surrogate(load_surrogate(path), surrogate)


def test_round_trip_without_optional_arrays(tmp_path):
    surrogate = LayerVaryingSurrogate(A=[np.eye(2)] * 2, B=[np.ones((2, 1))] * 2, C=np.ones((1, 2)))
    loaded = load_surrogate(save_surrogate(surrogate, tmp_path / "bare.safetensors"))
    assert loaded.input_directions is None
    assert loaded.state_norms is None
    assert loaded.metadata == {}


def test_non_contiguous_arrays_saved(tmp_path):
    matrix = np.arange(12.0).reshape(3, 4).T  # (4, 3), Fortran order
    surrogate = LayerVaryingSurrogate(A=[matrix], B=[np.ones(4)], C=np.ones((1, 4)))
    loaded = load_surrogate(save_surrogate(surrogate, tmp_path / "view.safetensors"))
    assert np.array_equal(loaded.A[0], matrix)


def test_header_fields(tmp_path):
    path = save_surrogate(layer_varying(), tmp_path / "lv.safetensors")
    _, raw = read_file(path)
    header = {key: json.loads(value) for key, value in raw.items()}
    assert header["steercontrol_format"] == "surrogate"
    assert header["format_version"] == FORMAT_VERSION
    assert header["steercontrol_version"] == __version__
    assert header["kind"] == "layer_varying"
    assert header["n_layers"] == 3
    assert header["n_steps"] == 3
    assert header["task"] == "sentiment"
    assert header["readout"] == METADATA["readout"]
    assert header["order"] == 5
    assert header["eps"] == 2e-3
    assert header["basis"] == "reachable"
    assert header["model"] is None
    assert header["metadata"] == METADATA


def test_extra_metadata_merged(tmp_path):
    path = save_surrogate(layer_varying(), tmp_path / "lv.safetensors", extra_metadata={"task": "toxicity", "note": 1})
    loaded = load_surrogate(path)
    assert loaded.metadata["task"] == "toxicity"
    assert loaded.metadata["note"] == 1
    assert loaded.metadata["basis"] == "reachable"


def test_numpy_metadata_stored_as_lists(tmp_path):
    surrogate = layer_varying()
    surrogate.metadata["gains"] = np.array([1.5, 2.5])
    surrogate.metadata["pair"] = (np.float64(1.0), np.int64(2))
    loaded = load_surrogate(save_surrogate(surrogate, tmp_path / "lv.safetensors"))
    assert loaded.metadata["gains"] == [1.5, 2.5]
    assert loaded.metadata["pair"] == [1.0, 2]


def test_save_returns_path_and_replaces_file(tmp_path):
    path = tmp_path / "lv.safetensors"
    save_surrogate(layer_varying(seed=0), str(path))
    returned = save_surrogate(layer_varying(seed=1), str(path))
    assert returned == path
    assert_same_surrogate(load_surrogate(path), layer_varying(seed=1))


# Identified surrogates and model checks


def test_identified_round_trip(tmp_path, identified):
    model, identification = identified
    surrogate = identification.surrogate
    path = save_surrogate(surrogate, tmp_path / "identified.safetensors", model=model)
    loaded = load_surrogate(path, model=model)
    assert_same_surrogate(loaded, surrogate)
    assert loaded.metadata["weight_hash"] == model.weight_hash()
    assert np.array_equal(loaded.gain_profile(), surrogate.gain_profile())


def test_identified_time_invariant_round_trip(tmp_path, identified):
    model, identification = identified
    fitted = time_invariant(identification)
    loaded = load_surrogate(save_surrogate(fitted, tmp_path / "fitted.safetensors"), model=model)
    assert_same_surrogate(loaded, fitted)


def test_identified_header_names_model(tmp_path, identified):
    model, identification = identified
    path = save_surrogate(identification.surrogate, tmp_path / "identified.safetensors")
    _, raw = read_file(path)
    assert json.loads(raw["model"]) == model.name
    assert json.loads(raw["weight_hash"]) == model.weight_hash()
    assert json.loads(raw["order"]) == 4


def test_other_model_rejected(tmp_path, identified, other_model):
    model, identification = identified
    path = save_surrogate(identification.surrogate, tmp_path / "identified.safetensors", model=model)
    with pytest.raises(ModelMismatchError, match="Identify the surrogate again on this model") as caught:
        load_surrogate(path, model=other_model)
    message = str(caught.value)
    assert model.name in message
    assert other_model.name in message
    assert model.weight_hash() in message
    assert other_model.weight_hash() in message


def test_save_for_other_model_rejected(tmp_path, identified, other_model):
    _, identification = identified
    path = tmp_path / "identified.safetensors"
    with pytest.raises(ModelMismatchError, match="tiny-llama-4x32-seed1"):
        save_surrogate(identification.surrogate, path, model=other_model)
    assert not path.exists()


def test_model_name_checked_without_hash(tmp_path, identified, other_model):
    model, identification = identified
    surrogate = identification.surrogate
    metadata = {"model": model.name}
    unhashed = LayerVaryingSurrogate(A=surrogate.A, B=surrogate.B, C=surrogate.C, metadata=metadata)
    path = save_surrogate(unhashed, tmp_path / "unhashed.safetensors")
    assert load_surrogate(path, model=model).metadata == metadata
    with pytest.raises(ModelMismatchError, match="tiny-llama-4x32-seed0"):
        load_surrogate(path, model=other_model)


def test_file_without_model_rejected(tmp_path, identified):
    model, _ = identified
    path = save_surrogate(layer_varying(), tmp_path / "lv.safetensors")
    with pytest.raises(ModelMismatchError, match="records no model name or weight hash"):
        load_surrogate(path, model=model)


def test_save_wrong_layer_count_rejected(tmp_path, identified):
    model, _ = identified
    with pytest.raises(ModelMismatchError, match="surrogate covers 3 layers, but model 'tiny-llama-4x32-seed0' has 4"):
        save_surrogate(layer_varying(), tmp_path / "lv.safetensors", model=model)


# Failed saves


def test_failed_save_leaves_no_file(tmp_path, monkeypatch):
    def write_half_then_fail(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.numpy, "save_file", write_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        save_surrogate(layer_varying(), tmp_path / "lv.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_failed_save_keeps_old_file(tmp_path, monkeypatch):
    path = save_surrogate(layer_varying(), tmp_path / "lv.safetensors")
    before = path.read_bytes()

    def fail(tensors, filename, metadata=None):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.numpy, "save_file", fail)
    with pytest.raises(OSError, match="disk full"):
        save_surrogate(layer_varying(seed=1), path)
    assert path.read_bytes() == before
    assert [entry.name for entry in tmp_path.iterdir()] == ["lv.safetensors"]


def test_unserialisable_metadata_rejected(tmp_path):
    surrogate = layer_varying()
    surrogate.metadata["callback"] = print
    with pytest.raises(ConfigurationError, match="Cannot store 'metadata' in the file header"):
        save_surrogate(surrogate, tmp_path / "lv.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_missing_folder_rejected(tmp_path):
    folder = tmp_path / "absent"
    with pytest.raises(FileNotFoundError, match="the folder .*absent does not exist"):
        save_surrogate(layer_varying(), folder / "lv.safetensors")


def test_non_surrogate_rejected(tmp_path):
    with pytest.raises(TypeError, match="got dict"):
        save_surrogate({"A": np.eye(2)}, tmp_path / "lv.safetensors")


# Invalid files


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.safetensors"):
        load_surrogate(tmp_path / "absent.safetensors")


def test_folder_rejected(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a folder"):
        load_surrogate(tmp_path)


def test_truncated_file(tmp_path):
    path = save_surrogate(layer_varying(), tmp_path / "lv.safetensors")
    path.write_bytes(path.read_bytes()[:-16])
    with pytest.raises(DataError, match="lv.safetensors is not a readable safetensors file"):
        load_surrogate(path)


def test_text_file(tmp_path):
    path = tmp_path / "notes.safetensors"
    path.write_text("These are notes, not arrays.\n")
    with pytest.raises(DataError, match="notes.safetensors is not a readable safetensors file"):
        load_surrogate(path)


def test_plain_safetensors_rejected(tmp_path):
    path = tmp_path / "plain.safetensors"
    safetensors.numpy.save_file({"A": np.eye(2)}, path)
    with pytest.raises(DataError, match="has no steercontrol metadata"):
        load_surrogate(path)


def test_foreign_metadata_rejected(tmp_path):
    path = tmp_path / "weights.safetensors"
    safetensors.numpy.save_file({"A": np.eye(2)}, path, metadata={"format": "pt"})
    with pytest.raises(DataError, match="has no steercontrol metadata"):
        load_surrogate(path)


def test_newer_format_rejected(tmp_path):
    path = save_surrogate(layer_varying(), tmp_path / "lv.safetensors")
    rewrite(path, header={"format_version": FORMAT_VERSION + 1})
    with pytest.raises(DataError, match="Upgrade steercontrol to load it"):
        load_surrogate(path)


def test_invalid_format_version_rejected(tmp_path):
    path = save_surrogate(layer_varying(), tmp_path / "lv.safetensors")
    rewrite(path, header={"format_version": "one"})
    with pytest.raises(DataError, match="invalid format_version 'one'"):
        load_surrogate(path)


def test_invalid_header_json_rejected(tmp_path):
    path = save_surrogate(layer_varying(), tmp_path / "lv.safetensors")
    arrays, header = read_file(path)
    header["metadata"] = "{not json"
    safetensors.numpy.save_file(arrays, path, metadata=header)
    with pytest.raises(DataError, match="invalid JSON in the header field 'metadata'"):
        load_surrogate(path)


def test_unknown_kind_rejected(tmp_path):
    path = save_surrogate(layer_varying(), tmp_path / "lv.safetensors")
    rewrite(path, header={"kind": "nonlinear"})
    with pytest.raises(DataError, match="unknown surrogate kind 'nonlinear'"):
        load_surrogate(path)


def test_missing_array_rejected(tmp_path):
    path = save_surrogate(layer_varying(), tmp_path / "lv.safetensors")
    rewrite(path, drop=["B.1"])
    with pytest.raises(DataError, match=r"missing the arrays \['B.1'\]"):
        load_surrogate(path)


def test_unexpected_array_rejected(tmp_path):
    path = save_surrogate(layer_varying(), tmp_path / "lv.safetensors")
    rewrite(path, arrays={"A.3": np.eye(4)})
    with pytest.raises(DataError, match=r"unexpected arrays \['A.3'\]"):
        load_surrogate(path)


def test_inconsistent_arrays_rejected(tmp_path):
    path = save_surrogate(layer_varying(), tmp_path / "lv.safetensors")
    rewrite(path, arrays={"A.1": np.eye(3)})
    with pytest.raises(DataError, match="inconsistent arrays"):
        load_surrogate(path)


def test_schedule_file_rejected_as_surrogate(tmp_path):
    path = save_schedule(uniform_schedule(), tmp_path / "schedule.safetensors")
    with pytest.raises(DataError, match="Load it with load_schedule") as error:
        load_surrogate(path)
    assert isinstance(error.value, ArtifactKindError)
    assert (error.value.found, error.value.expected) == ("schedule", "surrogate")


def test_surrogate_file_rejected_as_schedule(tmp_path):
    path = save_surrogate(layer_varying(), tmp_path / "lv.safetensors")
    with pytest.raises(DataError, match="Load it with load_surrogate"):
        load_schedule(path)


# Schedules


def uniform_schedule() -> Schedule:
    return Schedule(
        name="uniform_all",
        amplitudes=[np.array([0.5])] * 3,
        predicted_shift=np.array([1.0]),
        target_shift=np.array([1.0]),
        energy=0.75,
        status="heuristic",
        layers=(0, 1, 2),
        metadata={"method": "heuristic"},
    )


def test_schedule_round_trip(tmp_path):
    surrogate = layer_varying()
    schedule = Controller(surrogate).min_energy([0.3, -0.7])
    path = save_schedule(schedule, tmp_path / "schedule.safetensors", input_directions=surrogate.input_directions)
    loaded, vectors = load_schedule(path)
    assert len(loaded.amplitudes) == len(schedule.amplitudes)
    for loaded_amplitude, saved_amplitude in zip(loaded.amplitudes, schedule.amplitudes, strict=True):
        assert_bitwise(loaded_amplitude, saved_amplitude)
    assert_bitwise(loaded.predicted_shift, schedule.predicted_shift)
    assert_bitwise(loaded.target_shift, schedule.target_shift)
    assert_bitwise(vectors, schedule.vectors(surrogate.input_directions))
    assert loaded.to_dict() == schedule.to_dict()


def test_schedule_without_vectors(tmp_path):
    loaded, vectors = load_schedule(save_schedule(uniform_schedule(), tmp_path / "schedule.safetensors"))
    assert vectors is None
    assert loaded.to_dict() == uniform_schedule().to_dict()


def test_schedule_direction_mismatch_rejected(tmp_path):
    with pytest.raises(ShapeError, match="input_directions"):
        save_schedule(uniform_schedule(), tmp_path / "schedule.safetensors", input_directions=[np.ones((4, 2))] * 3)
    assert list(tmp_path.iterdir()) == []


def test_schedule_other_model_rejected(tmp_path, identified, other_model):
    model, identification = identified
    surrogate = identification.surrogate
    schedule = Controller(surrogate).min_energy(1.0)
    path = save_schedule(
        schedule, tmp_path / "schedule.safetensors", input_directions=surrogate.input_directions, model=model
    )
    loaded, vectors = load_schedule(path, model=model)
    assert vectors.shape == (model.n_layers, model.hidden_size)
    assert loaded.metadata["weight_hash"] == model.weight_hash()
    with pytest.raises(ModelMismatchError, match="Plan the schedule again") as caught:
        load_schedule(path, model=other_model)
    assert model.name in str(caught.value)
    assert other_model.name in str(caught.value)


def test_schedule_wrong_vectors_rejected(tmp_path):
    path = save_schedule(uniform_schedule(), tmp_path / "schedule.safetensors")
    rewrite(path, arrays={"vectors": np.ones((2, 5))})
    with pytest.raises(DataError, match=r"vectors of shape \(2, 5\), expected \(3, hidden_size\)"):
        load_schedule(path)


def test_schedule_missing_fields_rejected(tmp_path):
    path = save_schedule(uniform_schedule(), tmp_path / "schedule.safetensors")
    rewrite(path, header={"schedule": {"name": "uniform_all"}})
    with pytest.raises(DataError, match="invalid schedule: Schedule data is missing the keys"):
        load_schedule(path)
