"""Steering during generation, its metrics and the closed loop, on tiny seeded models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from steercontrol.closed_loop import closed_loop_generate, make_controller_factory
from steercontrol.concepts import collect_states, probe_readout
from steercontrol.exceptions import ConfigurationError, ShapeError
from steercontrol.generation import steer
from steercontrol.generation_metrics import (
    continuation_readout,
    dose_response,
    generate_continuations,
    neutral_kl,
    perplexity,
)
from steercontrol.hooks import record
from steercontrol.testing import planted_linear_model, tiny_model

PROMPTS = ["ab", "hello there"]
MODES = ["prompt_last", "prompt", "generated", "all"]
NEW_TOKENS = 6


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    # Tiny tensors gain nothing from threads, and on a busy machine each threaded
    # kernel waits for a free core: one tiny GPT-2 generate took 1.0 s with two
    # threads and 0.016 s with one, on a loaded two-core machine.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def model(request):
    return tiny_model(request.param, n_layers=4, hidden_size=32, seed=0)


def random_schedule(model, seed=0, scale=1.0, rows=None):
    generator = torch.Generator().manual_seed(seed)
    shape = (model.n_layers, model.hidden_size) if rows is None else (rows, model.n_layers, model.hidden_size)
    return scale * torch.randn(shape, generator=generator)


def generate(model, batch, *, use_cache=True, max_new_tokens=NEW_TOKENS, **kwargs):
    with torch.no_grad():
        return model.model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            use_cache=use_cache,
            pad_token_id=model.tokenizer.pad_token_id,
            output_scores=True,
            return_dict_in_generate=True,
            **kwargs,
        )


def hook_count(model):
    modules = [model.base, *model.blocks]
    return sum(len(module._forward_pre_hooks) + len(module._forward_hooks) for module in modules)


class InjectionProbe:
    """Record, for every forward call, the change that the steering made to one block's input.

    Registered after the steering handle: the first hook is prepended, so it
    runs before the steering hook, and the second is appended, so it runs after.
    """

    def __init__(self, model, layer):
        self.before: list[torch.Tensor] = []
        self.deltas: list[torch.Tensor] = []
        block = model.blocks[layer]
        self.handles = [
            block.register_forward_pre_hook(self._store_before, with_kwargs=True, prepend=True),
            block.register_forward_pre_hook(self._store_after, with_kwargs=True),
        ]

    @staticmethod
    def _hidden(args, kwargs):
        return args[0] if args else kwargs["hidden_states"]

    def _store_before(self, module, args, kwargs):
        self.before.append(self._hidden(args, kwargs).clone())

    def _store_after(self, module, args, kwargs):
        self.deltas.append(self._hidden(args, kwargs) - self.before[-1])

    def remove(self):
        for handle in self.handles:
            handle.remove()


def injected_deltas(model, batch, vectors, layer, *, use_cache, **steer_kwargs):
    """Return the per-call injections at ``layer`` during a greedy generation."""
    with steer(model, vectors, **steer_kwargs):
        probe = InjectionProbe(model, layer)
        try:
            generate(model, batch, use_cache=use_cache)
        finally:
            probe.remove()
    return probe.deltas


def expected_weights(batch, positions, decay=None, new_tokens=NEW_TOKENS):
    """(batch, columns) weight of the injection at every column the model processes.

    The last generated token is never fed back, so the columns are
    0 .. P + new_tokens - 2.
    """
    mask = batch["attention_mask"].bool()
    rows, prompt_length = mask.shape
    columns = prompt_length + new_tokens - 1
    prompt = torch.zeros((rows, columns), dtype=torch.bool)
    prompt[:, :prompt_length] = mask
    last = torch.zeros_like(prompt)
    last[:, prompt_length - 1] = True  # left padding: every prompt ends at column P - 1
    generated = torch.zeros_like(prompt)
    generated[:, prompt_length:] = True
    selected = {"prompt_last": last, "prompt": prompt, "generated": generated, "all": prompt | generated}[positions]
    weights = selected.double()
    if decay is not None:
        steps = torch.arange(columns) - prompt_length
        weights[:, prompt_length:] *= decay ** steps[prompt_length:].double()
    return weights


@pytest.mark.parametrize("positions", MODES)
def test_cache_matches_no_cache(model, positions):
    batch = model.tokenize(PROMPTS, padding_side="left")
    vectors = random_schedule(model)
    with steer(model, vectors, positions=positions):
        cached = generate(model, batch, use_cache=True)
    with steer(model, vectors, positions=positions):
        recomputed = generate(model, batch, use_cache=False)
    plain = generate(model, batch)

    assert torch.equal(cached.sequences, recomputed.sequences)
    for cached_scores, recomputed_scores in zip(cached.scores, recomputed.scores, strict=True):
        torch.testing.assert_close(cached_scores, recomputed_scores, rtol=1e-4, atol=1e-4)
    assert not torch.equal(cached.sequences, plain.sequences), "the steering had no effect on the tokens"


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("positions", MODES)
def test_injection_lands_on_selected_columns(model, positions, use_cache):
    batch = model.tokenize(PROMPTS, padding_side="left")
    layer = 1
    vectors = random_schedule(model)
    deltas = injected_deltas(model, batch, vectors, layer, use_cache=use_cache, positions=positions)

    weights = expected_weights(batch, positions)
    # (batch, columns, hidden): the injection expected at every processed column.
    expected = weights[..., None].float() * vectors[layer]
    if use_cache:
        observed = torch.cat(deltas, dim=1)
        assert len(deltas) == NEW_TOKENS
    else:
        observed = deltas[-1]
        # Every no-cache call recomputes the prefix with the same injections.
        for delta in deltas[:-1]:
            torch.testing.assert_close(delta, observed[:, : delta.shape[1]], rtol=0, atol=1e-5)
    assert observed.shape == expected.shape
    torch.testing.assert_close(observed, expected, rtol=0, atol=1e-5)


def test_first_generated_token_position_is_injected(model):
    batch = model.tokenize(PROMPTS, padding_side="left")
    prompt_length = batch["input_ids"].shape[1]
    layer = 2
    vectors = random_schedule(model, scale=2.0)

    with record(model, positions="all") as clean:
        plain = generate(model, batch, use_cache=False)
    with (
        steer(model, {layer: vectors[layer]}, positions="generated"),
        record(model, positions="all") as steered_recording,
    ):
        steered = generate(model, batch, use_cache=False)

    # The first generated token comes from the unsteered prompt.
    assert torch.equal(steered.sequences[:, prompt_length], plain.sequences[:, prompt_length])
    clean_states = clean.states[:, : prompt_length + 1]
    steered_states = steered_recording.states[:, : prompt_length + 1]
    # Prompt tokens: unchanged at every layer. Padding columns attend to nothing real and are skipped.
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(
        steered_states[:, :prompt_length][real], clean_states[:, :prompt_length][real], rtol=0, atol=1e-6
    )
    # Column P (the first generated token): unchanged before the injected layer, shifted by v_k at it.
    first = prompt_length
    torch.testing.assert_close(steered_states[:, first, :layer], clean_states[:, first, :layer], rtol=0, atol=1e-6)
    torch.testing.assert_close(
        steered_states[:, first, layer] - clean_states[:, first, layer],
        vectors[layer].expand(2, -1),
        rtol=0,
        atol=1e-5,
    )


@pytest.mark.parametrize("positions", ["generated", "all"])
def test_decay_scales_generated_tokens(model, positions):
    batch = model.tokenize(PROMPTS, padding_side="left")
    layer = 0
    vectors = random_schedule(model)
    deltas = injected_deltas(model, batch, vectors, layer, use_cache=True, positions=positions, decay=0.5)
    observed = torch.cat(deltas, dim=1)
    expected = expected_weights(batch, positions, decay=0.5)[..., None].float() * vectors[layer]
    torch.testing.assert_close(observed, expected, rtol=0, atol=1e-5)

    # decay=1 is the same as no decay.
    undecayed = injected_deltas(model, batch, vectors, layer, use_cache=True, positions=positions, decay=1.0)
    plain = injected_deltas(model, batch, vectors, layer, use_cache=True, positions=positions)
    torch.testing.assert_close(torch.cat(undecayed, dim=1), torch.cat(plain, dim=1), rtol=0, atol=0)


@pytest.mark.parametrize("positions", ["prompt_last", "all"])
def test_batched_rows_match_single_rows(model, positions):
    prompts = ["ab", "hello there", "xyz q"]
    schedules = random_schedule(model, seed=3, rows=len(prompts))
    batch = model.tokenize(prompts, padding_side="left")
    with steer(model, schedules, positions=positions, decay=0.8 if positions == "all" else None):
        batched = generate(model, batch)
    generated = batched.sequences[:, batch["input_ids"].shape[1] :]

    for row, prompt in enumerate(prompts):
        alone_batch = model.tokenize([prompt])
        with steer(model, schedules[row], positions=positions, decay=0.8 if positions == "all" else None):
            alone = generate(model, alone_batch)
        assert torch.equal(generated[row], alone.sequences[0, alone_batch["input_ids"].shape[1] :]), f"row {row}"


def test_mapping_matches_dense_schedule(model):
    batch = model.tokenize(PROMPTS, padding_side="left")
    vectors = random_schedule(model)
    vectors[0] = 0.0
    with steer(model, vectors) as dense_handle:
        dense = generate(model, batch)
    with steer(model, {layer: vectors[layer] for layer in (1, 2, 3)}):
        mapped = generate(model, batch)
    assert torch.equal(dense.sequences, mapped.sequences)
    # The all-zero layer gets no hook.
    assert dense_handle.layers == (1, 2, 3)


def test_per_row_schedule_serves_repeated_sequences(tiny_llama):
    prompts = ["ab", "hello there"]
    schedules = random_schedule(tiny_llama, seed=5, rows=2)
    batch = tiny_llama.tokenize(prompts, padding_side="left")
    torch.manual_seed(0)
    # Sampling with top_k=1 is greedy, and sampling allows several sequences per prompt.
    with steer(tiny_llama, schedules), torch.no_grad():
        repeated = tiny_llama.model.generate(
            **batch,
            max_new_tokens=NEW_TOKENS,
            do_sample=True,
            top_k=1,
            num_return_sequences=2,
            pad_token_id=tiny_llama.tokenizer.pad_token_id,
        )
    with steer(tiny_llama, schedules):
        single = generate(tiny_llama, batch).sequences
    assert torch.equal(repeated[0::2], single)
    assert torch.equal(repeated[1::2], single)


def test_explicit_prompt_mask_matches_inferred(model):
    batch = model.tokenize(PROMPTS, padding_side="left")
    vectors = random_schedule(model)
    with steer(model, vectors, positions="prompt_last"):
        inferred = generate(model, batch)
    with steer(model, vectors, positions="prompt_last", prompt_mask=batch["attention_mask"]) as handle:
        explicit = generate(model, batch, use_cache=False)
    assert torch.equal(inferred.sequences, explicit.sequences)
    assert handle.prompt_length == batch["input_ids"].shape[1]


def test_several_generations_in_one_handle(model):
    vectors = random_schedule(model)
    first_batch = model.tokenize(["hello there"])
    second_batch = model.tokenize(["ab"])
    with steer(model, vectors, positions="prompt_last") as handle:
        first = generate(model, first_batch, use_cache=False)
        second = generate(model, second_batch, use_cache=False)
        assert handle.prompt_length == second_batch["input_ids"].shape[1]
    with steer(model, vectors, positions="prompt_last"):
        second_alone = generate(model, second_batch, use_cache=False)
    with steer(model, vectors, positions="prompt_last"):
        first_alone = generate(model, first_batch)
    assert torch.equal(second.sequences, second_alone.sequences)
    assert torch.equal(first.sequences, first_alone.sequences)


class RaiseAfter(StoppingCriteria):
    def __init__(self, calls):
        self.calls = calls

    def __call__(self, input_ids, scores, **kwargs):
        self.calls -= 1
        if self.calls == 0:
            raise RuntimeError("stop here")
        return torch.zeros(input_ids.shape[0], dtype=torch.bool)


def test_hooks_removed_when_generate_raises(model):
    batch = model.tokenize(PROMPTS, padding_side="left")
    hooks_before = hook_count(model)
    with torch.no_grad():
        reference = model.model(**batch).logits

    with pytest.raises(RuntimeError, match="stop here"):
        with steer(model, random_schedule(model), positions="all") as handle:
            assert hook_count(model) > hooks_before
            generate(model, batch, stopping_criteria=StoppingCriteriaList([RaiseAfter(2)]))

    assert handle.removed
    assert hook_count(model) == hooks_before
    with torch.no_grad():
        after = model.model(**batch).logits
    assert torch.equal(after, reference)


def test_batch_mismatch_raises_and_removes_hooks(tiny_llama):
    batch = tiny_llama.tokenize(["a", "bb", "ccc"], padding_side="left")
    hooks_before = hook_count(tiny_llama)
    with pytest.raises(ShapeError, match="has 2 rows but the forward call has a batch of 3"):
        with steer(tiny_llama, random_schedule(tiny_llama, rows=2)):
            generate(tiny_llama, batch)
    assert hook_count(tiny_llama) == hooks_before


def test_remove_is_idempotent_and_outputs_bit_identical(tiny_gpt2):
    batch = tiny_gpt2.tokenize(PROMPTS, padding_side="left")
    plain = generate(tiny_gpt2, batch).sequences
    handle = steer(tiny_gpt2, random_schedule(tiny_gpt2))
    generate(tiny_gpt2, batch)
    handle.remove()
    handle.remove()
    assert torch.equal(generate(tiny_gpt2, batch).sequences, plain)


def test_zero_schedule_leaves_generation_unchanged(tiny_gpt2):
    batch = tiny_gpt2.tokenize(PROMPTS, padding_side="left")
    plain = generate(tiny_gpt2, batch)
    with steer(tiny_gpt2, np.zeros((tiny_gpt2.n_layers, tiny_gpt2.hidden_size))):
        steered = generate(tiny_gpt2, batch)
    assert torch.equal(plain.sequences, steered.sequences)
    for plain_scores, steered_scores in zip(plain.scores, steered.scores, strict=True):
        assert torch.equal(plain_scores, steered_scores)


# Error paths of steer().


@pytest.mark.parametrize("positions", ["last", "prompt-last", None, 3])
def test_invalid_positions_rejected(tiny_llama, positions):
    with pytest.raises(ConfigurationError, match="Invalid positions"):
        steer(tiny_llama, random_schedule(tiny_llama), positions=positions)


@pytest.mark.parametrize("decay", [0.0, -0.5, 1.5, float("nan"), float("inf"), True, "0.5"])
def test_invalid_decay_rejected(tiny_llama, decay):
    with pytest.raises(ConfigurationError, match="Invalid decay"):
        steer(tiny_llama, random_schedule(tiny_llama), positions="generated", decay=decay)


@pytest.mark.parametrize("positions", ["prompt", "prompt_last"])
def test_decay_with_prompt_mode_rejected(tiny_llama, positions):
    with pytest.raises(ConfigurationError, match="decay scales the injection at generated tokens"):
        steer(tiny_llama, random_schedule(tiny_llama), positions=positions, decay=0.5)


@pytest.mark.parametrize("shape", [(5, 32), (4, 31), (32,), (1, 2, 4, 32)])
def test_dense_schedule_shape_rejected(tiny_llama, shape):
    with pytest.raises(ShapeError, match=r"schedule_vectors must have shape \(n_layers, hidden\)"):
        steer(tiny_llama, torch.zeros(shape))


def test_non_numeric_schedule_rejected(tiny_llama):
    with pytest.raises(ShapeError, match="must be a tensor or an array of numbers"):
        steer(tiny_llama, "vectors")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_schedule_rejected(tiny_llama, bad):
    vectors = random_schedule(tiny_llama)
    vectors[2, 5] = bad
    with pytest.raises(ConfigurationError, match="injection at layer 2 has non-finite entries"):
        steer(tiny_llama, vectors)


@pytest.mark.parametrize("layer", [-1, 4, "1", True, 1.0])
def test_mapping_layer_out_of_range_rejected(tiny_llama, layer):
    with pytest.raises(ConfigurationError, match="Invalid layer"):
        steer(tiny_llama, {layer: torch.ones(32)})


def test_mapping_vector_shape_rejected(tiny_llama):
    with pytest.raises(ShapeError, match=r"injection at layer 1 must have shape \(hidden,\) or \(batch, hidden\)"):
        steer(tiny_llama, {1: torch.ones(31)})


def test_empty_mapping_rejected(tiny_llama):
    with pytest.raises(ConfigurationError, match="mapping is empty"):
        steer(tiny_llama, {})


def test_mapping_row_counts_must_agree(tiny_llama):
    with pytest.raises(ShapeError, match=r"disagree on the batch size \(\[2, 3\]\)"):
        steer(tiny_llama, {0: torch.ones(2, 32), 1: torch.ones(3, 32)})


@pytest.mark.parametrize(
    ("mask", "error", "message"),
    [
        (torch.ones(4), ShapeError, r"prompt_mask must be a \(batch, prompt_length\) tensor"),
        (torch.ones(2, 0), ShapeError, r"prompt_mask must be a \(batch, prompt_length\) tensor"),
        (torch.tensor([[1, 1], [0, 0]]), ShapeError, "has no token"),
        (torch.tensor([[1, 2]]), ConfigurationError, "only 0 .padding. and 1"),
        (torch.ones(3, 4), ShapeError, "prompt_mask has 3 rows but the per-row injection has 2"),
    ],
)
def test_invalid_prompt_mask_rejected(tiny_llama, mask, error, message):
    with pytest.raises(error, match=message):
        steer(tiny_llama, random_schedule(tiny_llama, rows=2), prompt_mask=mask)


# Metrics.


def test_generate_continuations_match_generate(tiny_llama):
    vectors = random_schedule(tiny_llama)
    batch = tiny_llama.tokenize(PROMPTS, padding_side="left")
    with steer(tiny_llama, vectors, positions="generated", decay=0.9):
        sequences = generate(tiny_llama, batch).sequences
    expected = tiny_llama.tokenizer.batch_decode(sequences[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    texts = generate_continuations(
        tiny_llama, PROMPTS, steering=vectors, positions="generated", decay=0.9, max_new_tokens=NEW_TOKENS
    )
    assert texts == expected


def test_continuation_readout_reads_last_token(tiny_llama):
    readout = probe_readout(np.random.default_rng(0).standard_normal(32))
    texts = ["a short one", "and a longer second text"]
    values = continuation_readout(tiny_llama, texts, readout)
    assert values.shape == (2, 1)
    for row, text in enumerate(texts):
        with torch.no_grad(), record(tiny_llama) as recording:
            tiny_llama.model(**tiny_llama.tokenize([text]))
        expected = readout.apply(recording.final_normed.double())[0].numpy()
        np.testing.assert_allclose(values[row], expected, rtol=1e-5, atol=1e-6)


def test_dose_response_zero_scale_is_unsteered(tiny_llama):
    readout = probe_readout(np.random.default_rng(1).standard_normal(32))
    vectors = random_schedule(tiny_llama)
    result = dose_response(tiny_llama, PROMPTS, vectors, readout, [0.0, 1.0], max_new_tokens=NEW_TOKENS)
    assert result.readouts.shape == (2, 2, 1)
    assert result.mean().shape == (2, 1)
    unsteered = generate_continuations(tiny_llama, PROMPTS, max_new_tokens=NEW_TOKENS)
    steered = generate_continuations(tiny_llama, PROMPTS, steering=vectors, max_new_tokens=NEW_TOKENS)
    assert result.continuations == [unsteered, steered]
    present = [i for i, text in enumerate(unsteered) if text.strip()]
    np.testing.assert_allclose(
        result.readouts[0, present], continuation_readout(tiny_llama, [unsteered[i] for i in present], readout)
    )


@pytest.mark.parametrize("scales", [[], [float("nan")]])
def test_dose_response_invalid_scales_rejected(tiny_llama, scales):
    readout = probe_readout(np.ones(32))
    with pytest.raises(ConfigurationError, match="scales"):
        dose_response(tiny_llama, PROMPTS, random_schedule(tiny_llama), readout, scales)


def test_perplexity_matches_language_model_loss(model):
    texts = ["the cat sat on the mat", "hi there"]
    per_text = []
    for text in texts:
        batch = model.tokenize([text])
        with torch.no_grad():
            loss = model.model(**batch, labels=batch["input_ids"]).loss
        per_text.append((float(loss), batch["input_ids"].shape[1] - 1))
        assert math.isclose(perplexity(model, [text]), math.exp(float(loss)), rel_tol=1e-5)
    # A padded batch weights each text by its number of predicted tokens.
    pooled = sum(loss * count for loss, count in per_text) / sum(count for _, count in per_text)
    assert math.isclose(perplexity(model, texts), math.exp(pooled), rel_tol=1e-5)


def test_perplexity_steering_changes_value(tiny_llama):
    texts = ["the cat sat on the mat"]
    zero = np.zeros((tiny_llama.n_layers, tiny_llama.hidden_size))
    assert perplexity(tiny_llama, texts, steering=zero) == perplexity(tiny_llama, texts)
    assert perplexity(tiny_llama, texts, steering=random_schedule(tiny_llama, scale=3.0)) != perplexity(
        tiny_llama, texts
    )


def test_perplexity_needs_two_tokens(tiny_llama):
    with pytest.raises(ConfigurationError, match="at least two tokens"):
        perplexity(tiny_llama, ["a", "b"])
    with pytest.raises(ConfigurationError, match="texts is empty"):
        perplexity(tiny_llama, [])


def test_neutral_kl_properties(model):
    texts = ["the weather today", "a list of numbers: 1 2 3"]
    assert neutral_kl(model, texts, np.zeros((model.n_layers, model.hidden_size))) == 0.0
    small = neutral_kl(model, texts, random_schedule(model, scale=0.5))
    large = neutral_kl(model, texts, random_schedule(model, scale=3.0))
    assert 0.0 < small < large

    # The batch mean weights each text by its number of tokens.
    vectors = random_schedule(model)
    lengths = [model.tokenize([text])["input_ids"].shape[1] for text in texts]
    separate = [neutral_kl(model, [text], vectors) for text in texts]
    pooled = sum(kl * n for kl, n in zip(separate, lengths, strict=True)) / sum(lengths)
    assert math.isclose(neutral_kl(model, texts, vectors), pooled, rel_tol=1e-4)


def test_generate_continuations_invalid_length_rejected(tiny_llama):
    with pytest.raises(ConfigurationError, match="Invalid max_new_tokens 0"):
        generate_continuations(tiny_llama, PROMPTS, max_new_tokens=0)


# Closed loop.


def planted_setup(seed=3):
    model, _, _ = planted_linear_model(n_layers=6, hidden_size=12, rank=None, seed=seed)
    rng = np.random.default_rng(seed)
    directions = rng.standard_normal((7, 12))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    readout = probe_readout(rng.standard_normal(12))
    return model, make_controller_factory(model, directions, readout, order=12), readout


@pytest.mark.parametrize("every", [1, 3])
def test_closed_loop_holds_target_on_linear_model(every):
    model, factory, readout = planted_setup()
    target = 1.5
    result = closed_loop_generate(model, "abc", factory, readout, target, every=every, max_new_tokens=7)

    n_generated = result.tokens.numel() - result.prompt_length
    assert result.readouts.shape == (n_generated, 1)
    assert result.replan_steps == list(range(0, n_generated, every))
    # At every re-plan the injection acts only on the planned token, and the model is linear.
    # identify() computes Jacobian products in float32, so the plan is exact to about 1e-6.
    np.testing.assert_allclose(result.readouts[result.replan_steps, 0], target, rtol=1e-5)
    assert not np.allclose(result.free_readouts[:, 0], target), "the unsteered readout was already at the target"


def test_closed_loop_tokens_follow_steered_logits():
    # The planted model's tokens do not interact, so each token is the argmax of its own steered logits.
    model, factory, readout = planted_setup()
    result = closed_loop_generate(model, "abc", factory, readout, -0.7, every=1, max_new_tokens=5)
    plain = closed_loop_generate(model, "abc", factory, readout, -0.7, every=1, max_new_tokens=5)
    assert torch.equal(result.tokens, plain.tokens)
    assert torch.equal(result.tokens[: result.prompt_length], model.tokenize("abc")["input_ids"][0])
    assert all(schedule is not None for schedule in result.schedules)


def test_closed_loop_replans_on_tiny_model(tiny_llama):
    rng = np.random.default_rng(0)
    directions = rng.standard_normal((tiny_llama.n_layers + 1, tiny_llama.hidden_size))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    readout = probe_readout(rng.standard_normal(tiny_llama.hidden_size))
    factory = make_controller_factory(tiny_llama, directions, readout, order=8)
    prompt = "the cat sat"
    free = continuation_readout(tiny_llama, [prompt], readout)[0, 0]
    target = free + 0.3

    result = closed_loop_generate(
        tiny_llama, prompt, factory, readout, target, every=2, max_new_tokens=6, stop_at_eos=False
    )
    assert result.tokens.numel() == result.prompt_length + 6
    assert result.replan_steps == [0, 2, 4]
    # The linear plan is not exact on the nonlinear model, but a small first step brings the readout closer.
    assert abs(result.readouts[0, 0] - target) < 0.25 * abs(free - target)

    # Each re-plan measures the unsteered readout of the sequence so far and plans for the remaining gap.
    for index, step in enumerate(result.replan_steps):
        ids = result.tokens[: result.prompt_length + step]
        with torch.no_grad(), record(tiny_llama) as recording:
            tiny_llama.model(input_ids=ids[None])
        measured = readout.apply(recording.final_normed.double())[0, 0].item()
        assert math.isclose(result.free_readouts[index, 0], measured, rel_tol=1e-5, abs_tol=1e-6)
        expected = factory(ids).min_energy(target - measured)
        np.testing.assert_allclose(
            result.schedules[index].amplitude_profile(), expected.amplitude_profile(), rtol=1e-4, atol=1e-6
        )
    assert isinstance(result.text, str)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"every": 0}, ConfigurationError, "Invalid every 0"),
        ({"max_new_tokens": 0}, ConfigurationError, "Invalid max_new_tokens 0"),
        ({"target": [1.0, 2.0]}, ShapeError, r"target must have shape \(1,\)"),
        ({"target": float("nan")}, ConfigurationError, "target must be finite"),
        ({"prompt": torch.tensor([], dtype=torch.long)}, ConfigurationError, "prompt has no tokens"),
    ],
)
def test_closed_loop_invalid_arguments_rejected(kwargs, error, message):
    model, factory, readout = planted_setup()
    arguments = {"prompt": "abc", "target": 1.0, **kwargs}
    with pytest.raises(error, match=message):
        closed_loop_generate(model, arguments.pop("prompt"), factory, readout, arguments.pop("target"), **arguments)


def test_collect_states_matches_continuation_readout(tiny_gpt2):
    # continuation_readout is the readout of collect_states' final-normed states.
    readout = probe_readout(np.random.default_rng(2).standard_normal(32))
    texts = ["one", "two words"]
    _, final_normed = collect_states(tiny_gpt2, texts)
    np.testing.assert_allclose(continuation_readout(tiny_gpt2, texts, readout), readout.apply(final_normed.double()))
