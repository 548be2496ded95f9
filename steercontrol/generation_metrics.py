"""Measure the success and side effects of steered generation.

Success is the readout of generated continuations and its dose-response
curve over injection scales. Side effects are the perplexity of text and
the next-token KL that an injection at every token causes on neutral text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from steercontrol.concepts import Readout, collect_states
from steercontrol.evaluate import next_token_kl
from steercontrol.exceptions import ConfigurationError
from steercontrol.generation import GenerationPositions, _as_layer_vectors, _check_mode, steer
from steercontrol.models import SteerableModel

__all__ = [
    "generate_continuations",
    "continuation_readout",
    "DoseResponse",
    "dose_response",
    "perplexity",
    "neutral_kl",
]


def _check_texts(texts: Any, name: str) -> list[str]:
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts:
        raise ConfigurationError(f"{name} is empty. Pass at least one text.")
    if not all(isinstance(text, str) for text in texts):
        raise ConfigurationError(f"{name} must be strings.")
    return texts


def _check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigurationError(f"Invalid {name} {value!r}. Pass an int >= 1.")
    return int(value)


@torch.no_grad()
def generate_continuations(
    model: SteerableModel,
    prompts: str | Sequence[str],
    *,
    steering: Any = None,
    positions: GenerationPositions = "all",
    decay: float | None = None,
    max_new_tokens: int = 24,
    batch_size: int = 8,
) -> list[str]:
    """Generate greedy continuations of prompts, optionally steered.

    Parameters
    ----------
    model : SteerableModel
        The model.
    prompts : str or sequence of str
        The prompts, batched with left padding.
    steering : array_like or mapping, optional
        Injection passed to :func:`steer`, or None to generate unsteered. A
        per-row schedule must have one row per prompt and ``batch_size`` must
        cover all prompts.
    positions, decay
        As in :func:`steer`.
    max_new_tokens : int
        Tokens generated per prompt.
    batch_size : int
        Prompts per ``generate`` call.

    Returns
    -------
    list of str
        The decoded continuations without the prompts, special tokens
        removed.
    """
    prompts = _check_texts(prompts, "prompts")
    max_new_tokens = _check_positive_int(max_new_tokens, "max_new_tokens")
    batch_size = _check_positive_int(batch_size, "batch_size")
    continuations: list[str] = []
    for start in range(0, len(prompts), batch_size):
        batch = model.tokenize(prompts[start : start + batch_size], padding_side="left")
        handle = steer(model, steering, positions=positions, decay=decay) if steering is not None else None
        try:
            output = model.model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=model.tokenizer.pad_token_id,
            )
        finally:
            if handle is not None:
                handle.remove()
        generated = output[:, batch["input_ids"].shape[1] :]
        continuations.extend(model.tokenizer.batch_decode(generated, skip_special_tokens=True))
    return continuations


def continuation_readout(
    model: SteerableModel, texts: str | Sequence[str], readout: Readout, *, batch_size: int = 16
) -> np.ndarray:
    """Measure the readout at the last token of each text on the unsteered model.

    Pass the generated continuations without their prompts to measure the
    generated text alone, independent of the prompt.

    Returns
    -------
    np.ndarray
        (n_texts, n_outputs) readout values.

    Raises
    ------
    ConfigurationError
        If ``texts`` is empty or a text tokenizes to no tokens.
    """
    texts = _check_texts(texts, "texts")
    _, final_normed = collect_states(model, texts, batch_size=batch_size)
    return readout.apply(final_normed.double()).numpy()


@dataclass
class DoseResponse:
    """Readout of steered continuations over injection scales.

    Attributes
    ----------
    scales : np.ndarray
        (n_scales,) factors applied to the injection.
    readouts : np.ndarray
        (n_scales, n_prompts, n_outputs) readout of each continuation.
    continuations : list of list of str
        Continuations per scale, then per prompt.
    """

    scales: np.ndarray
    readouts: np.ndarray
    continuations: list[list[str]] = field(default_factory=list)

    def mean(self) -> np.ndarray:
        """Return the mean readout over prompts, shape (n_scales, n_outputs)."""
        return self.readouts.mean(axis=1)


def dose_response(
    model: SteerableModel,
    prompts: str | Sequence[str],
    direction_vectors: Any,
    readout: Readout,
    scales: Sequence[float],
    *,
    positions: GenerationPositions = "all",
    decay: float | None = None,
    max_new_tokens: int = 24,
) -> DoseResponse:
    """Measure the continuation readout as the injection is scaled.

    Parameters
    ----------
    model : SteerableModel
        The model.
    prompts : str or sequence of str
        The prompts.
    direction_vectors : array_like or mapping
        Injection at scale 1, in any form :func:`steer` accepts.
    readout : Readout
        Readout of the continuations (see :func:`continuation_readout`).
    scales : sequence of float
        Factors of the injection. A factor of 0 generates unsteered.
    positions, decay, max_new_tokens
        As in :func:`generate_continuations`.

    Returns
    -------
    DoseResponse

    Raises
    ------
    ConfigurationError
        If ``scales`` is empty or not finite.
    """
    scale_array = np.asarray(list(scales), dtype=np.float64)
    if scale_array.ndim != 1 or scale_array.size == 0:
        raise ConfigurationError("scales is empty. Pass at least one scale factor.")
    if not np.isfinite(scale_array).all():
        raise ConfigurationError(f"scales must be finite, got {scale_array}.")
    vectors, _ = _as_layer_vectors(model, direction_vectors)
    _check_mode(positions, decay)

    readouts, continuations = [], []
    for scale in scale_array:
        steering = {layer: float(scale) * vector for layer, vector in vectors.items()} if scale and vectors else None
        texts = generate_continuations(
            model, prompts, steering=steering, positions=positions, decay=decay, max_new_tokens=max_new_tokens
        )
        continuations.append(texts)
        # An empty continuation (immediate end of text) has no token to read, so it gets NaN.
        values = np.full((len(texts), readout.n_outputs), np.nan)
        present = [index for index, text in enumerate(texts) if text.strip()]
        if present:
            values[present] = continuation_readout(model, [texts[index] for index in present], readout)
        readouts.append(values)
    return DoseResponse(scales=scale_array, readouts=np.stack(readouts), continuations=continuations)


def _batched_logits(
    model: SteerableModel, texts: list[str], steering: Any, batch_size: int
) -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """Return (logits, batch) per batch of texts, steered at every token when ``steering`` is given."""
    results = []
    for start in range(0, len(texts), batch_size):
        batch = model.tokenize(texts[start : start + batch_size], padding_side="left")
        handle = steer(model, steering, positions="all") if steering is not None else None
        try:
            with torch.no_grad():
                logits = model.forward(**batch, use_cache=False).logits
        finally:
            if handle is not None:
                handle.remove()
        results.append((logits, batch))
    return results


def perplexity(
    model: SteerableModel, texts: str | Sequence[str], *, steering: Any = None, batch_size: int = 16
) -> float:
    """Compute the perplexity of texts, optionally with an injection at every token.

    Parameters
    ----------
    model : SteerableModel
        The model.
    texts : str or sequence of str
        The texts. Use the unsteered model on steered continuations to
        measure their fluency, or a steering on neutral text to measure what
        the injection costs the model.
    steering : array_like or mapping, optional
        Injection passed to :func:`steer` with ``positions="all"``.
    batch_size : int
        Texts per forward call.

    Returns
    -------
    float
        exp of the mean negative log-likelihood over every predicted token
        of every text (tokens after the first).

    Raises
    ------
    ConfigurationError
        If no text has two tokens or more.
    """
    texts = _check_texts(texts, "texts")
    batch_size = _check_positive_int(batch_size, "batch_size")
    total, count = 0.0, 0
    for logits, batch in _batched_logits(model, texts, steering, batch_size):
        mask = batch["attention_mask"].bool()
        # Token t+1 is predicted at position t, and both must be real tokens.
        predicted = mask[:, 1:] & mask[:, :-1]
        log_probs = torch.log_softmax(logits[:, :-1].double(), dim=-1)
        token_log_probs = log_probs.gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
        total -= float(token_log_probs[predicted].sum())
        count += int(predicted.sum())
    if count == 0:
        raise ConfigurationError("Perplexity needs a text of at least two tokens, but every text has one.")
    return math.exp(total / count)


def neutral_kl(model: SteerableModel, texts: str | Sequence[str], vectors: Any, *, batch_size: int = 16) -> float:
    """Compute the mean next-token KL(steered || unsteered) over all tokens of neutral texts.

    Parameters
    ----------
    model : SteerableModel
        The model.
    texts : str or sequence of str
        Texts unrelated to the concept. The KL measures how much the
        injection disturbs predictions where it should not matter.
    vectors : array_like or mapping
        Injection passed to :func:`steer` with ``positions="all"``.
    batch_size : int
        Texts per forward call.

    Returns
    -------
    float
        Mean over every non-padding position of every text, in nats.
    """
    texts = _check_texts(texts, "texts")
    batch_size = _check_positive_int(batch_size, "batch_size")
    vectors_checked, _ = _as_layer_vectors(model, vectors)
    clean = _batched_logits(model, texts, None, batch_size)
    steered = _batched_logits(model, texts, vectors_checked or None, batch_size)
    total, count = 0.0, 0
    for (clean_logits, batch), (steered_logits, _) in zip(clean, steered, strict=True):
        real = batch["attention_mask"].bool()
        kl = next_token_kl(steered_logits[real], clean_logits[real])
        total += float(kl.double().sum())
        count += int(real.sum())
    return total / count
