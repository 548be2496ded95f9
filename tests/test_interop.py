"""Tests of GGUF and safetensors export and of load_directions."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import safetensors.numpy
import torch

from steercontrol.exceptions import ConfigurationError, DataError, ShapeError
from steercontrol.interop import LLAMA_CPP_LAYER_OFFSET, export_gguf, export_safetensors, load_directions


@pytest.fixture
def vectors():
    """(5, 8) injection vectors with zero rows at block inputs 0, 1 and 3."""
    rng = np.random.default_rng(0)
    array = rng.normal(size=(5, 8))
    array[[0, 1, 3]] = 0.0
    return array


def _field(reader: gguf.GGUFReader, key: str):
    field = reader.get_field(key)
    assert field is not None, f"missing GGUF key {key}"
    return field.contents()


# GGUF export


def test_gguf_metadata_and_tensors(tmp_path, vectors):
    path = export_gguf(vectors, tmp_path / "steer.gguf", model_hint="llama")
    reader = gguf.GGUFReader(path)

    assert _field(reader, "general.architecture") == "controlvector"
    assert _field(reader, "controlvector.model_hint") == "llama"
    assert _field(reader, "controlvector.layer_count") == 2
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    # Block inputs 2 and 4 are the outputs of blocks 1 and 3.
    assert sorted(tensors) == ["direction.1", "direction.3"]
    for name, row in (("direction.1", 2), ("direction.3", 4)):
        assert tensors[name].tensor_type == gguf.GGMLQuantizationType.F32
        np.testing.assert_array_equal(np.asarray(tensors[name].data), vectors[row].astype(np.float32))


def test_gguf_round_trip(tmp_path, vectors):
    path = export_gguf(vectors, tmp_path / "steer.gguf")
    loaded = load_directions(path, n_layers=5)
    assert loaded.dtype == np.float64
    np.testing.assert_array_equal(loaded, vectors.astype(np.float32))


def test_gguf_layer_offset_zero(tmp_path, vectors):
    path = export_gguf(vectors, tmp_path / "steer.gguf", layer_offset=0)
    names = sorted(tensor.name for tensor in gguf.GGUFReader(path).tensors)
    assert names == ["direction.2", "direction.4"]
    np.testing.assert_array_equal(load_directions(path, layer_offset=0), vectors.astype(np.float32))


def test_gguf_default_offset_is_llama_cpp():
    assert LLAMA_CPP_LAYER_OFFSET == -1


def test_gguf_replaces_existing_file(tmp_path, vectors):
    path = tmp_path / "steer.gguf"
    path.write_bytes(b"old")
    export_gguf(vectors, path)
    assert sorted(tensor.name for tensor in gguf.GGUFReader(path).tensors) == ["direction.1", "direction.3"]
    assert [p.name for p in tmp_path.iterdir()] == ["steer.gguf"]


def test_gguf_rejects_first_block_inputs(tmp_path, vectors):
    vectors[1] = 1.0
    with pytest.raises(ConfigurationError, match=r"Block inputs \[1\].*indices \[0\]"):
        export_gguf(vectors, tmp_path / "steer.gguf")
    assert not list(tmp_path.iterdir())


def test_gguf_rejects_all_zero(tmp_path):
    with pytest.raises(ConfigurationError, match="Every injection vector is zero"):
        export_gguf(np.zeros((4, 8)), tmp_path / "steer.gguf")


@pytest.mark.parametrize("bad", [np.zeros(8), np.zeros((2, 3, 4)), np.zeros((0, 8))])
def test_export_rejects_shapes(tmp_path, bad):
    with pytest.raises(ShapeError, match=r"\(n_layers, hidden\)"):
        export_gguf(bad, tmp_path / "steer.gguf")
    with pytest.raises(ShapeError, match=r"\(n_layers, hidden\)"):
        export_safetensors(bad, tmp_path / "steer.safetensors")


def test_export_rejects_non_finite(tmp_path, vectors):
    vectors[2, 0] = np.nan
    with pytest.raises(ConfigurationError, match="non-finite"):
        export_gguf(vectors, tmp_path / "steer.gguf")


def test_export_missing_folder(tmp_path, vectors):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_gguf(vectors, tmp_path / "absent" / "steer.gguf")


# Safetensors export


def test_safetensors_round_trip(tmp_path, vectors):
    path = export_safetensors(vectors, tmp_path / "steer.safetensors")
    with safetensors.safe_open(path, framework="np") as handle:
        assert handle.metadata()["layer_convention"] == "block_input"
        assert handle.get_tensor("vectors").dtype == np.float32
    np.testing.assert_array_equal(load_directions(path), vectors.astype(np.float32))


# Import


def test_load_npy(tmp_path, vectors):
    path = tmp_path / "steer.npy"
    np.save(path, vectors)
    np.testing.assert_array_equal(load_directions(path), vectors)


def test_load_pt_tensor(tmp_path, vectors):
    path = tmp_path / "steer.pt"
    torch.save(torch.from_numpy(vectors).float(), path)
    np.testing.assert_array_equal(load_directions(path), vectors.astype(np.float32))


def test_load_pt_dict_fills_missing_layers(tmp_path, vectors):
    path = tmp_path / "steer.pt"
    torch.save({2: torch.from_numpy(vectors[2]), "direction.4": torch.from_numpy(vectors[4])}, path)
    loaded = load_directions(path, n_layers=6)
    assert loaded.shape == (6, 8)
    np.testing.assert_array_equal(loaded[:5], vectors)
    assert not loaded[5].any()


def test_load_safetensors_per_layer(tmp_path, vectors):
    path = tmp_path / "steer.safetensors"
    safetensors.numpy.save_file({"direction.2": vectors[2], "4": vectors[4]}, path)
    np.testing.assert_array_equal(load_directions(path), vectors)


def test_load_unsupported_suffix(tmp_path):
    path = tmp_path / "steer.txt"
    path.write_text("1 2 3")
    with pytest.raises(DataError, match=r"Unsupported file type '\.txt'.*\.gguf, \.safetensors, \.pt, \.npy"):
        load_directions(path)


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_directions(tmp_path / "absent.npy")


def test_load_wrong_ndim(tmp_path):
    path = tmp_path / "steer.npy"
    np.save(path, np.zeros((2, 3, 4)))
    with pytest.raises(ShapeError, match=r"shape \(2, 3, 4\)\. Expected \(n_layers, hidden\)"):
        load_directions(path)


def test_load_wrong_layer_count(tmp_path, vectors):
    path = tmp_path / "steer.npy"
    np.save(path, vectors)
    with pytest.raises(ShapeError, match="contains 5 layers, but n_layers is 4"):
        load_directions(path, n_layers=4)


def test_load_layer_beyond_n_layers(tmp_path, vectors):
    path = export_gguf(vectors, tmp_path / "steer.gguf")
    with pytest.raises(ShapeError, match="block input 4, but n_layers is 3"):
        load_directions(path, n_layers=3)


def test_load_mismatched_widths(tmp_path):
    path = tmp_path / "steer.safetensors"
    safetensors.numpy.save_file({"direction.1": np.zeros(4), "direction.2": np.zeros(5)}, path)
    with pytest.raises(ShapeError, match="one \\(hidden,\\) shape"):
        load_directions(path)


def test_load_unexpected_tensor_name(tmp_path):
    path = tmp_path / "steer.safetensors"
    safetensors.numpy.save_file({"weight": np.zeros(4)}, path)
    with pytest.raises(DataError, match="contains the tensor 'weight'"):
        load_directions(path)


def test_load_gguf_unexpected_tensor_name(tmp_path):
    path = tmp_path / "other.gguf"
    writer = gguf.GGUFWriter(path, "controlvector")
    writer.add_tensor("layer.1", np.zeros(4, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(DataError, match="names its tensors 'direction"):
        load_directions(path)


def test_load_corrupt_files(tmp_path):
    for name in ("bad.gguf", "bad.safetensors", "bad.pt", "bad.npy"):
        path = tmp_path / name
        path.write_bytes(b"not a tensor file")
        with pytest.raises(DataError, match="is not a readable"):
            load_directions(path)


def test_load_invalid_n_layers(tmp_path, vectors):
    path = tmp_path / "steer.npy"
    np.save(path, vectors)
    with pytest.raises(ConfigurationError, match="Invalid n_layers 0"):
        load_directions(path, n_layers=0)


def test_load_gguf_negative_block_input(tmp_path, vectors):
    path = export_gguf(vectors, tmp_path / "steer.gguf")
    with pytest.raises(DataError, match="block input -1, which is negative"):
        load_directions(path, layer_offset=2)
