"""Injection and recording hooks on tiny models and the embedded model."""

from __future__ import annotations

import hashlib

import pytest
import torch

from steercontrol.exceptions import ConfigurationError, ShapeError
from steercontrol.hooks import inject, last_token_index, record
from steercontrol.testing import tiny_model

TEXTS = ["the cat sat on the mat", "hello"]


def _weights_digest(model) -> str:
    digest = hashlib.sha256()
    for name, param in sorted(model.model.state_dict().items()):
        digest.update(name.encode())
        digest.update(param.detach().numpy().tobytes())
    return digest.hexdigest()


def _random_vector(model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(model.hidden_size, generator=generator)


@torch.no_grad()
def test_zero_injection_bit_identical(any_tiny):
    batch = any_tiny.tokenize(TEXTS)
    reference = any_tiny.model(**batch).logits
    zeros = {layer: torch.zeros(any_tiny.hidden_size) for layer in range(any_tiny.n_layers)}
    with inject(any_tiny, zeros, positions="all"):
        steered = any_tiny.model(**batch).logits
    assert torch.equal(steered, reference)


@torch.no_grad()
def test_injection_is_causal(any_tiny):
    batch = any_tiny.tokenize(TEXTS, padding_side="left")
    layer = 2
    with record(any_tiny, positions="all") as clean:
        reference = any_tiny.model(**batch).logits
    with record(any_tiny, positions="all") as steered_rec:
        with inject(any_tiny, {layer: 3.0 * _random_vector(any_tiny)}):
            steered = any_tiny.model(**batch).logits
    real = batch["attention_mask"].bool()

    # Earlier tokens: every state and logit unchanged.
    earlier = real.clone()
    earlier[:, -1] = False
    assert torch.equal(steered_rec.states[earlier], clean.states[earlier])
    assert torch.equal(steered[earlier], reference[earlier])

    # Last token: unchanged before block `layer`, changed from it on.
    last_clean = clean.states[:, -1]
    last_steered = steered_rec.states[:, -1]
    assert torch.equal(last_steered[:, :layer], last_clean[:, :layer])
    assert not torch.allclose(last_steered[:, layer], last_clean[:, layer])
    assert not torch.allclose(steered[:, -1], reference[:, -1])


@torch.no_grad()
def test_recorded_states_match_hidden_states(any_tiny):
    batch = any_tiny.tokenize(TEXTS, padding_side="left")
    with record(any_tiny) as recording:
        output = any_tiny.model(**batch, output_hidden_states=True)
    # (batch, n_layers, hidden) at the last token from transformers' own output.
    expected = torch.stack(output.hidden_states[:-1], dim=1)[:, :, -1]
    assert recording.states.shape == (2, any_tiny.n_layers + 1, any_tiny.hidden_size)
    assert torch.equal(recording.states[:, :-1], expected)
    assert torch.equal(recording.final_normed, output.hidden_states[-1][:, -1])


@torch.no_grad()
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_left_right_padding_agree(family):
    model = tiny_model(family)
    states = {}
    for side in ("left", "right"):
        batch = model.tokenize(TEXTS, padding_side=side)
        with record(model) as recording:
            with inject(model, {1: _random_vector(model)}):
                model.forward(**batch)
        states[side] = recording.states
    single = model.tokenize(TEXTS[1:])
    with record(model) as recording:
        with inject(model, {1: _random_vector(model)}):
            model.forward(**single)
    assert torch.allclose(states["left"], states["right"], atol=1e-5)
    assert torch.allclose(states["right"][1], recording.states[0], atol=1e-5)


@torch.no_grad()
def test_per_row_vectors(tiny_llama):
    batch = tiny_llama.tokenize(["abc", "abc"])
    vectors = torch.stack([torch.zeros(32), _random_vector(tiny_llama)])
    with record(tiny_llama) as recording:
        with inject(tiny_llama, {0: vectors}):
            tiny_llama.model(**batch)
    states = recording.states
    assert not torch.allclose(states[0, 1], states[1, 1])
    assert torch.allclose(states[1, 0] - states[0, 0], vectors[1])


@torch.no_grad()
def test_nested_injections_add_up(tiny_llama):
    batch = tiny_llama.tokenize(["abcd"])
    first, second = _random_vector(tiny_llama, 1), _random_vector(tiny_llama, 2)
    with record(tiny_llama) as nested:
        with inject(tiny_llama, {1: first}), inject(tiny_llama, {1: second}):
            tiny_llama.model(**batch)
    with record(tiny_llama) as combined:
        with inject(tiny_llama, {1: first + second}):
            tiny_llama.model(**batch)
    assert torch.allclose(nested.states, combined.states, atol=1e-5)


@torch.no_grad()
def test_positions_from_index(tiny_llama):
    batch = tiny_llama.tokenize(["abcdef"])
    with record(tiny_llama, positions="all") as clean:
        tiny_llama.model(**batch)
    with record(tiny_llama, positions="all") as steered:
        with inject(tiny_llama, {0: _random_vector(tiny_llama)}, positions=3):
            tiny_llama.model(**batch)
    block1_clean, block1_steered = clean.states[0, :, 1], steered.states[0, :, 1]
    assert torch.equal(block1_steered[:3], block1_clean[:3])
    assert not torch.allclose(block1_steered[3], block1_clean[3])


def test_hooks_removed_after_exception(tiny_llama):
    batch = tiny_llama.tokenize(["abc"])
    before = _weights_digest(tiny_llama)
    with torch.no_grad():
        reference = tiny_llama.model(**batch).logits
    with pytest.raises(RuntimeError, match="boom"):
        with inject(tiny_llama, {2: _random_vector(tiny_llama)}), record(tiny_llama):
            raise RuntimeError("boom")
    for block in tiny_llama.blocks:
        assert not block._forward_pre_hooks
    assert not tiny_llama.base._forward_pre_hooks
    with torch.no_grad():
        after = tiny_llama.model(**batch).logits
    assert torch.equal(after, reference)
    assert _weights_digest(tiny_llama) == before


def test_weights_unchanged_by_injection(tiny_gpt2):
    before = _weights_digest(tiny_gpt2)
    with torch.no_grad(), inject(tiny_gpt2, {1: _random_vector(tiny_gpt2)}, positions="all"):
        tiny_gpt2.model(**tiny_gpt2.tokenize(TEXTS))
    assert _weights_digest(tiny_gpt2) == before


def test_bfloat16_injection_runs():
    model = tiny_model("llama", dtype=torch.bfloat16)
    batch = model.tokenize(TEXTS)
    with torch.no_grad(), record(model) as recording, inject(model, {1: _random_vector(model)}):
        logits = model.model(**batch).logits
    assert logits.dtype == torch.bfloat16
    assert recording.states.dtype == torch.bfloat16
    assert bool(torch.isfinite(logits).all())


def test_gradient_flows_through_injection(tiny_llama):
    batch = tiny_llama.tokenize(["abcd"])
    delta = torch.zeros(32, requires_grad=True)
    with inject(tiny_llama, {1: delta}):
        logits = tiny_llama.model(**batch).logits
    logits[0, -1, 0].backward()
    assert delta.grad is not None
    assert float(delta.grad.abs().sum()) > 0


def test_last_token_index_both_paddings():
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 0]])
    assert last_token_index(mask).tolist() == [3, 2]


@pytest.mark.parametrize(
    ("vectors", "error", "match"),
    [
        ({7: torch.zeros(32)}, ConfigurationError, "Invalid layer 7.*\\[0, 3\\]"),
        ({0: torch.zeros(31)}, ShapeError, "hidden=32"),
        ({0: torch.full((32,), float("nan"))}, ConfigurationError, "non-finite"),
        (torch.zeros(3, 32), ShapeError, "n_layers=4"),
    ],
)
def test_inject_rejects_bad_input(tiny_llama, vectors, error, match):
    with pytest.raises(error, match=match):
        inject(tiny_llama, vectors)


def test_inject_rejects_bad_positions(tiny_llama):
    with pytest.raises(ConfigurationError, match="positions"):
        inject(tiny_llama, {0: torch.zeros(32)}, positions="first")


def test_row_count_mismatch_raises(tiny_llama):
    batch = tiny_llama.tokenize(TEXTS)
    with pytest.raises(ShapeError, match="batch size 3"):
        with torch.no_grad(), inject(tiny_llama, {0: torch.zeros(3, 32)}):
            tiny_llama.model(**batch)


@torch.no_grad()
def test_embedded_zero_injection_identical(embedded):
    batch = embedded.tokenize(["I really enjoyed this film", "Terrible"])
    reference = embedded.model(**batch).logits
    with inject(embedded, {5: torch.zeros(embedded.hidden_size)}):
        steered = embedded.model(**batch).logits
    assert torch.equal(steered, reference)


@torch.no_grad()
def test_embedded_recording_matches_hidden_states(embedded):
    batch = embedded.tokenize(["I really enjoyed this film", "Terrible"], padding_side="left")
    with record(embedded) as recording:
        output = embedded.model(**batch, output_hidden_states=True)
    expected = torch.stack(output.hidden_states[:-1], dim=1)[:, :, -1]
    assert torch.equal(recording.states[:, :-1], expected)
