"""Steer text generation, measure its effect, and re-plan in a closed loop.

:func:`steer` adds an injection schedule to the block inputs while
``model.model.generate`` runs. Unlike :func:`steercontrol.hooks.inject`,
whose positions refer to the tokens of each forward call, the position
modes here refer to absolute columns of the generated sequence: the prompt
occupies columns ``0 .. P-1`` (P is the padded prompt length) and the j-th
generated token sits at column ``P + j`` in every row. A generation with a
key/value cache and one that recomputes the whole sequence at every step
therefore receive the same injections at the same tokens, and greedy
decoding gives the same tokens.

The metrics measure success (the readout of generated continuations, a
dose-response curve) and side effects (perplexity, next-token KL on
neutral text). :func:`closed_loop_generate` re-measures the readout during
generation and re-plans the schedule on a fresh surrogate, a receding
horizon loop.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.hooks import RemovableHandle

from steercontrol.concepts import Readout, collect_states
from steercontrol.controller import Controller
from steercontrol.evaluate import next_token_kl
from steercontrol.exceptions import ConfigurationError, ShapeError
from steercontrol.hooks import last_token_index, record
from steercontrol.models import SteerableModel
from steercontrol.schedule import Schedule

__all__ = [
    "GenerationPositions",
    "SteeringHandle",
    "steer",
    "generate_continuations",
    "continuation_readout",
    "DoseResponse",
    "dose_response",
    "perplexity",
    "neutral_kl",
    "ClosedLoopResult",
    "make_controller_factory",
    "closed_loop_generate",
]

logger = logging.getLogger(__name__)

GenerationPositions = Literal["prompt_last", "prompt", "generated", "all"]
"""Tokens of a generation that receive the injection.

- ``"prompt_last"``: the last non-padding prompt token of each row.
- ``"prompt"``: every non-padding prompt token.
- ``"generated"``: every generated token, from the first one on. The first
  generated token is chosen from the prompt's last position, so it is not
  changed by this mode. Its own position (column P) is injected when it is
  fed back, which changes the second generated token onwards.
- ``"all"``: ``"prompt"`` and ``"generated"`` together.
"""

_MODES: tuple[str, ...] = ("prompt_last", "prompt", "generated", "all")

# Schedule rows, layer -> (rows, hidden) tensor, where rows is 1 for a
# schedule shared by every batch row.
LayerVectors = dict[int, torch.Tensor]


def _as_tensor(value: Any, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach()
    try:
        return torch.as_tensor(np.asarray(value, dtype=np.float64))
    except (TypeError, ValueError) as error:
        raise ShapeError(f"{name} must be a tensor or an array of numbers, got {type(value).__name__}.") from error


def _as_layer_vectors(model: SteerableModel, schedule_vectors: Any) -> tuple[LayerVectors, int]:
    """Validate an injection and return it as layer -> (rows, hidden), with rows (1 when shared)."""
    hidden = model.hidden_size
    per_layer: dict[int, torch.Tensor] = {}

    if isinstance(schedule_vectors, Mapping):
        if not schedule_vectors:
            raise ConfigurationError("The injection mapping is empty. Pass at least one layer -> vector entry.")
        for layer, value in schedule_vectors.items():
            if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 0 <= layer < model.n_layers:
                raise ConfigurationError(
                    f"Invalid layer {layer!r}. Expected an int in [0, {model.n_layers - 1}] (block inputs)."
                )
            vector = _as_tensor(value, f"The injection at layer {layer}")
            if vector.ndim not in (1, 2) or vector.shape[-1] != hidden:
                raise ShapeError(
                    f"The injection at layer {layer} must have shape (hidden,) or (batch, hidden) with "
                    f"hidden={hidden}, got {tuple(vector.shape)}."
                )
            per_layer[int(layer)] = vector.reshape(-1, hidden)
    else:
        dense = _as_tensor(schedule_vectors, "schedule_vectors")
        if dense.ndim == 2:
            dense = dense[None]
        if dense.ndim != 3 or dense.shape[1:] != (model.n_layers, hidden):
            raise ShapeError(
                f"schedule_vectors must have shape (n_layers, hidden) = ({model.n_layers}, {hidden}) or "
                f"(batch, n_layers, hidden), got {tuple(dense.shape)}."
            )
        per_layer = {layer: dense[:, layer] for layer in range(model.n_layers)}

    row_counts = {vector.shape[0] for vector in per_layer.values() if vector.shape[0] != 1}
    if len(row_counts) > 1:
        raise ShapeError(
            f"Per-row injections disagree on the batch size ({sorted(row_counts)}). Give every layer "
            "the same number of rows, or one (hidden,) vector."
        )
    rows = row_counts.pop() if row_counts else 1
    for layer, vector in per_layer.items():
        if not bool(torch.isfinite(vector).all()):
            raise ConfigurationError(f"The injection at layer {layer} has non-finite entries. Pass finite values.")

    # All-zero layers change nothing, so they get no hook.
    kept = {
        layer: vector.to(device=model.device, dtype=model.dtype)
        for layer, vector in per_layer.items()
        if bool(vector.any())
    }
    return kept, rows


def _check_mode(positions: Any, decay: Any) -> float | None:
    if positions not in _MODES:
        raise ConfigurationError(f"Invalid positions {positions!r}. Expected one of {', '.join(map(repr, _MODES))}.")
    if decay is None:
        return None
    if isinstance(decay, bool) or not isinstance(decay, (int, float, np.floating, np.integer)):
        raise ConfigurationError(f"Invalid decay {decay!r}. Pass a float in (0, 1] or None.")
    decay = float(decay)
    if not 0.0 < decay <= 1.0:
        raise ConfigurationError(f"Invalid decay {decay!r}. Pass a float in (0, 1] or None.")
    if positions in ("prompt_last", "prompt"):
        raise ConfigurationError(
            f"decay scales the injection at generated tokens, but positions={positions!r} injects only "
            "at prompt tokens. Use 'generated' or 'all', or pass decay=None."
        )
    return decay


def _check_prompt_mask(prompt_mask: Any, rows: int) -> torch.Tensor | None:
    if prompt_mask is None:
        return None
    mask = _as_tensor(prompt_mask, "prompt_mask")
    if mask.ndim != 2 or mask.shape[1] == 0:
        raise ShapeError(f"prompt_mask must be a (batch, prompt_length) tensor, got shape {tuple(mask.shape)}.")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ConfigurationError("prompt_mask must contain only 0 (padding) and 1 (token).")
    if not bool(mask.bool().any(dim=1).all()):
        raise ShapeError("A row of prompt_mask has no token (all zeros). Remove empty prompts.")
    if rows != 1 and mask.shape[0] != rows:
        raise ShapeError(
            f"prompt_mask has {mask.shape[0]} rows but the per-row injection has {rows}. Pass one row per prompt."
        )
    return mask.bool()


def _repeat_rows(tensor: torch.Tensor, batch: int, what: str) -> torch.Tensor:
    """Match ``tensor``'s rows to a forward call's batch: shared, equal, or repeated per row."""
    rows = tensor.shape[0]
    if rows == 1 or rows == batch:
        return tensor
    if batch % rows == 0:
        # generate() repeats each prompt num_return_sequences (or num_beams) times, consecutively.
        return tensor.repeat_interleave(batch // rows, dim=0)
    raise ShapeError(
        f"{what} has {rows} rows but the forward call has a batch of {batch}. Pass one row per prompt "
        "or a single shared row."
    )


class SteeringHandle:
    """Hooks that add an injection at chosen prompt and generated tokens (see :func:`steer`).

    Attributes
    ----------
    positions : str
        The position mode.
    decay : float or None
        Factor per generated token.
    layers : tuple of int
        Layers that receive a non-zero injection.
    prompt_length : int or None
        Padded prompt length P of the generation in progress, or None before
        the first forward call.
    removed : bool
        Whether :meth:`remove` has run.
    """

    def __init__(
        self,
        model: SteerableModel,
        vectors: LayerVectors,
        *,
        positions: GenerationPositions,
        decay: float | None,
        prompt_mask: torch.Tensor | None,
    ) -> None:
        self.model = model
        self.positions = positions
        self.decay = decay
        self.layers = tuple(sorted(vectors))
        self.removed = False
        self._vectors = vectors
        self._fixed_prompt_mask = prompt_mask
        self._prompt_mask: torch.Tensor | None = None
        self._previous_input: torch.Tensor | None = None
        # (batch, seq, 1) injection weights of the forward call in progress, None when it injects nothing.
        self._weights: torch.Tensor | None = None
        self._handles: list[RemovableHandle] = []
        try:
            self._handles.append(model.base.register_forward_pre_hook(self._before_call, with_kwargs=True))
            self._handles.append(model.base.register_forward_hook(self._after_call))
            for layer in self.layers:
                # Prepended so that a recording on the same block stores the injected state.
                self._handles.append(
                    model.blocks[layer].register_forward_pre_hook(
                        self._make_hook(layer), with_kwargs=True, prepend=True
                    )
                )
        except BaseException:
            self.remove()
            raise

    @property
    def prompt_length(self) -> int | None:
        """Padded prompt length P of the current generation."""
        return None if self._prompt_mask is None else int(self._prompt_mask.shape[1])

    def remove(self) -> None:
        """Remove every hook of this handle. Calling it twice is harmless."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._weights = None
        self.removed = True

    def __enter__(self) -> SteeringHandle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()

    def _before_call(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        tokens = kwargs.get("input_ids")
        if tokens is None and args:
            tokens = args[0]
        if tokens is None:
            tokens = kwargs.get("inputs_embeds")
        if not isinstance(tokens, torch.Tensor):
            raise ShapeError(
                "The decoder was called without input_ids or inputs_embeds, so steer cannot place the injection."
            )
        batch, seq = int(tokens.shape[0]), int(tokens.shape[1])
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        mask = kwargs.get("attention_mask")
        mask = mask if isinstance(mask, torch.Tensor) and mask.ndim == 2 else None

        # generate() passes the attention mask of the whole sequence, so its
        # width gives the column of this call's first token whatever the cache
        # type. Without a mask the cache length is used.
        if mask is not None and mask.shape[0] == batch and mask.shape[1] >= seq:
            offset = int(mask.shape[1]) - seq
        elif cache is not None and hasattr(cache, "get_seq_length"):
            offset = int(cache.get_seq_length())
        else:
            offset = 0

        prompt_mask = self._track_prompt(tokens, cache, offset, mask)
        self._weights = self._position_weights(prompt_mask, offset, batch, seq, mask)

    def _after_call(self, module: Any, args: tuple[Any, ...], output: Any) -> None:
        # Blocks run outside a decoder call (for example a frozen-context
        # evaluation) receive no injection.
        self._weights = None

    def _track_prompt(self, tokens: torch.Tensor, cache: Any, offset: int, mask: torch.Tensor | None) -> torch.Tensor:
        """Return the (batch, P) prompt mask that applies to this call, starting a new prompt if needed."""
        batch, seq = tokens.shape[0], tokens.shape[1]
        if self._fixed_prompt_mask is not None:
            fixed = _repeat_rows(self._fixed_prompt_mask, batch, "prompt_mask")
            self._prompt_mask = fixed.expand(batch, -1).to(tokens.device)
            return self._prompt_mask

        # A call starts a new prompt unless it continues the current generation.
        # With a cache, a continuing call starts at an offset > 0. Without one, it
        # repeats the previous call's input plus exactly one token, as generate() does.
        previous = self._previous_input
        if cache is not None:
            continues = offset > 0
        else:
            continues = (
                previous is not None
                and previous.shape[0] == batch
                and previous.shape[1] + 1 == seq
                and torch.equal(tokens[:, :-1], previous)
            )
        if self._prompt_mask is None or self._prompt_mask.shape[0] != batch:
            continues = False
        self._previous_input = tokens.detach() if cache is None else None

        if continues and self._prompt_mask is not None:
            return self._prompt_mask
        length = offset + seq
        if mask is not None and mask.shape[1] >= length:
            self._prompt_mask = mask[:, :length].bool().to(tokens.device)
        else:
            self._prompt_mask = torch.ones((batch, length), dtype=torch.bool, device=tokens.device)
        logger.debug("steer: new prompt of %d columns in a batch of %d.", length, batch)
        return self._prompt_mask

    def _position_weights(
        self, prompt_mask: torch.Tensor, offset: int, batch: int, seq: int, mask: torch.Tensor | None
    ) -> torch.Tensor | None:
        """Return the (batch, seq, 1) weight of the injection at this call's columns, or None if all are zero."""
        device = prompt_mask.device
        prompt_length = prompt_mask.shape[1]
        if self.positions in ("prompt_last", "prompt") and offset >= prompt_length:
            # A decoding step after the prompt: nothing to add, and no tensor work.
            return None
        columns = torch.arange(offset, offset + seq, device=device)
        if mask is not None and mask.shape[1] >= offset + seq:
            real = mask[:, offset : offset + seq].bool().to(device)
        else:
            real = torch.ones((batch, seq), dtype=torch.bool, device=device)

        # (batch, seq) masks of prompt tokens and generated tokens among this call's columns.
        in_prompt = columns < prompt_length
        prompt_tokens = torch.zeros((batch, seq), dtype=torch.bool, device=device)
        prompt_tokens[:, in_prompt] = prompt_mask[:, columns[in_prompt]]
        generated = (~in_prompt).unsqueeze(0) & real

        if self.positions == "prompt_last":
            last = last_token_index(prompt_mask.long())
            selected = columns.unsqueeze(0) == last.unsqueeze(1)
        elif self.positions == "prompt":
            selected = prompt_tokens & real
        elif self.positions == "generated":
            selected = generated
        else:
            selected = (prompt_tokens & real) | generated
        if not bool(selected.any()):
            return None

        weights = selected.to(torch.float64)
        if self.decay is not None:
            # decay**j at the j-th generated token (column P + j), 1 on prompt tokens.
            steps = (columns - prompt_length).clamp(min=0).to(torch.float64)
            weights = weights * torch.where(generated, self.decay**steps, torch.ones_like(weights))
        return weights.unsqueeze(-1).to(self.model.dtype)

    def _make_hook(self, layer: int) -> Callable[..., Any]:
        def add_injection(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            weights = self._weights
            if weights is None:
                return None
            positional = bool(args)
            hidden = args[0] if positional else kwargs["hidden_states"]
            # (batch, 1, hidden) times (batch, seq, 1): a new tensor, the input is never modified.
            vector = _repeat_rows(self._vectors[layer], hidden.shape[0], "The injection")
            delta = weights.to(hidden.dtype) * vector.to(hidden.dtype).unsqueeze(1)
            steered = hidden + delta
            if positional:
                return (steered, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": steered}

        return add_injection


def steer(
    model: SteerableModel,
    schedule_vectors: Any,
    *,
    positions: GenerationPositions = "all",
    decay: float | None = None,
    prompt_mask: Any = None,
) -> SteeringHandle:
    """Add an injection schedule to the block inputs during generation.

    Parameters
    ----------
    model : SteerableModel
        The model. Call ``model.model.generate`` (or the model itself) inside
        the returned handle.
    schedule_vectors : array_like, torch.Tensor or mapping of int to vector
        (n_layers, hidden): vector k is added to x_k at every selected token.
        (batch, n_layers, hidden): one schedule per prompt row. A mapping
        layer -> (hidden,) or (batch, hidden) vector injects at those layers
        only. ``Schedule.vectors`` returns the dense form.
    positions : {"prompt_last", "prompt", "generated", "all"}
        Tokens that receive the injection, as defined in :data:`GenerationPositions`.
    decay : float in (0, 1], optional
        Multiply the injection at the j-th generated token (j = 0 for the
        first) by ``decay**j``. Prompt tokens keep factor 1. Only valid with
        ``"generated"`` and ``"all"``.
    prompt_mask : array_like, optional
        (batch, P) attention mask of the prompt. It fixes the prompt length
        for every call instead of taking it from the first forward call; see
        Notes.

    Returns
    -------
    SteeringHandle
        Use it as a context manager, or call ``remove()``. The hooks are
        removed on exit, also when generation raises.

    Raises
    ------
    ConfigurationError
        On an unknown mode, a decay outside (0, 1] or with a prompt-only
        mode, a layer out of range, or non-finite vectors.
    ShapeError
        On vectors whose shape does not match the model, or a prompt mask
        with an empty row or the wrong number of rows. During a forward call,
        when the batch is neither the number of schedule rows nor a multiple
        of it.

    Notes
    -----
    The handle learns the prompt from the decoder's forward calls. A call
    with a cache at offset 0 starts a new prompt, and so does a call without
    a cache that does not extend the previous call's input by one token. The
    prompt's columns and padding are then those of that call. This matches
    ``generate`` with and without a cache, and plain forward calls, where the
    whole input is the prompt. Several generations may run inside one
    handle. With per-row schedules and ``num_return_sequences`` (or beams)
    r, each schedule row serves the r consecutive rows that ``generate``
    makes of its prompt.

    NOTE: the later chunks of a prefill split over several calls (a chunked
    prefill) would be read as generated tokens, so pass ``prompt_mask`` in
    that case. Tokens already in a cache passed to ``generate`` were computed
    before the handle existed and carry no injection.

    Examples
    --------
    >>> batch = model.tokenize(["The film was"])  # doctest: +SKIP
    >>> with steer(model, 0.5 * vectors, positions="all", decay=0.9):  # doctest: +SKIP
    ...     ids = model.model.generate(**batch, max_new_tokens=20, do_sample=False)
    """
    checked_decay = _check_mode(positions, decay)
    vectors, rows = _as_layer_vectors(model, schedule_vectors)
    mask = _check_prompt_mask(prompt_mask, rows)
    return SteeringHandle(model, vectors, positions=positions, decay=checked_decay, prompt_mask=mask)


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


@dataclass
class ClosedLoopResult:
    """Tokens and readout trace of :func:`closed_loop_generate`.

    Attributes
    ----------
    tokens : torch.Tensor
        (prompt_length + n_generated,) token ids: the prompt, then the
        generated tokens.
    prompt_length : int
        Number of prompt tokens.
    readouts : np.ndarray
        (n_generated, n_outputs): the steered readout at the last token of
        the sequence from which each generated token was chosen.
    replan_steps : list of int
        Generation steps (0 = first generated token) at which the schedule
        was re-planned.
    free_readouts : np.ndarray
        (n_replans, n_outputs): the unsteered readout measured at each
        re-plan, from which the remaining gap to the target was computed.
    schedules : list of Schedule or None
        The schedule of each re-plan, or None where the gap was already zero.
    text : str
        The decoded continuation.
    """

    tokens: torch.Tensor
    prompt_length: int
    readouts: np.ndarray
    replan_steps: list[int]
    free_readouts: np.ndarray
    schedules: list[Schedule | None]
    text: str


def make_controller_factory(
    model: SteerableModel, directions: np.ndarray, readout: Readout, *, order: int = 32
) -> Callable[[torch.Tensor], Controller]:
    """Return a factory that identifies a surrogate around a token sequence and wraps it in a Controller.

    Parameters
    ----------
    model : SteerableModel
        The model.
    directions : np.ndarray
        (n_layers + 1, hidden) concept directions, as for
        :func:`steercontrol.identify.identify`.
    readout : Readout
        The readout the controller steers.
    order : int
        Surrogate order.

    Returns
    -------
    callable
        ``factory(ids) -> Controller`` for a (seq,) tensor of token ids.
    """
    from steercontrol.identify import identify

    def factory(ids: torch.Tensor) -> Controller:
        return Controller(identify(model, ids, directions, readout, order=order).surrogate)

    return factory


def _last_readout(model: SteerableModel, ids: torch.Tensor, readout: Readout) -> tuple[np.ndarray, torch.Tensor]:
    """Run the sequence and return (readout at the last token, next-token logits)."""
    with torch.no_grad(), record(model) as recording:
        logits = model.model(input_ids=ids[None], use_cache=False).logits
    return readout.apply(recording.final_normed.double())[0].cpu().numpy(), logits[0, -1]


def _plan_vectors(controller: Controller, gap: np.ndarray, layers: Sequence[int] | None) -> tuple[Schedule, np.ndarray]:
    schedule = controller.min_energy(gap, layers=layers)
    input_directions = getattr(controller.surrogate, "input_directions", None)
    if input_directions is None:
        raise ConfigurationError(
            "The controller's surrogate has no input_directions, so its schedule cannot be mapped to "
            "injection vectors. Identify the surrogate with steercontrol.identify.identify."
        )
    return schedule, schedule.vectors(input_directions)


def closed_loop_generate(
    model: SteerableModel,
    prompt: str | torch.Tensor,
    controller_factory: Callable[[torch.Tensor], Controller],
    readout: Readout,
    target: float | Sequence[float] | np.ndarray,
    *,
    every: int = 4,
    max_new_tokens: int = 32,
    layers: Sequence[int] | None = None,
    stop_at_eos: bool = True,
) -> ClosedLoopResult:
    """Generate greedily while re-planning the schedule every few tokens (receding horizon).

    Parameters
    ----------
    model : SteerableModel
        The model.
    prompt : str or torch.Tensor
        Prompt text, or its (seq,) token ids.
    controller_factory : callable
        ``factory(ids) -> Controller`` for the current (seq,) token ids, for
        example :func:`make_controller_factory`. Its surrogate must carry
        ``input_directions``.
    readout : Readout
        The readout to hold at the target.
    target : float or array_like, (n_outputs,)
        Target value of the readout (not a shift).
    every : int
        Generated tokens between re-plans. With 1, every token is re-planned.
    max_new_tokens : int
        Maximum number of generated tokens.
    layers : sequence of int, optional
        Layers the schedules may use (all when None).
    stop_at_eos : bool
        Stop after the tokenizer's end-of-text token.

    Returns
    -------
    ClosedLoopResult

    Raises
    ------
    ConfigurationError
        On ``every`` or ``max_new_tokens`` below 1, a non-finite target, or a
        surrogate without input directions.
    ShapeError
        If the target does not have one entry per readout output.

    Notes
    -----
    At each re-plan, with the current sequence of length n:

    1. measure the unsteered readout y_free at token n-1,
    2. build a fresh controller around the sequence and plan the
       minimum-energy schedule for the remaining gap target - y_free,
    3. generate the next ``every`` tokens with that schedule injected at
       token n-1 and at every token generated since.

    Each step recomputes the whole sequence without a cache, and tokens
    before n-1 carry no injection, so the text is the only state carried
    from one re-plan to the next. At a re-plan step the injection acts only
    at token n-1, which is what the frozen-context surrogate models, so on a
    linear model the readout there equals the target. Between re-plans the
    schedule is held, so the readout follows the text's own drift.
    """
    every = _check_positive_int(every, "every")
    max_new_tokens = _check_positive_int(max_new_tokens, "max_new_tokens")
    goal = np.atleast_1d(np.asarray(target, dtype=np.float64))
    if goal.shape != (readout.n_outputs,):
        raise ShapeError(
            f"target must have shape ({readout.n_outputs},), one entry per readout output, got {goal.shape}."
        )
    if not np.isfinite(goal).all():
        raise ConfigurationError(f"target must be finite, got {goal}.")
    if isinstance(prompt, str):
        ids = model.tokenize(prompt)["input_ids"][0]
    else:
        ids = prompt.detach().to(model.device).reshape(-1)
    if ids.numel() == 0:
        raise ConfigurationError("The prompt has no tokens. Pass a non-empty prompt.")
    prompt_length = int(ids.numel())
    eos = getattr(model.tokenizer, "eos_token_id", None) if stop_at_eos else None

    readouts: list[np.ndarray] = []
    free_readouts: list[np.ndarray] = []
    schedules: list[Schedule | None] = []
    replan_steps: list[int] = []
    vectors: np.ndarray | None = None
    anchor = prompt_length

    for step in range(max_new_tokens):
        if step % every == 0:
            free, _ = _last_readout(model, ids, readout)
            gap = goal - free
            schedule = None
            vectors = None
            if np.any(gap):
                schedule, vectors = _plan_vectors(controller_factory(ids), gap, layers)
            anchor = int(ids.numel())
            free_readouts.append(free)
            schedules.append(schedule)
            replan_steps.append(step)
            logger.info("closed loop: re-plan at step %d, free readout %s, gap %s.", step, free, gap)

        if vectors is None:
            steered, logits = _last_readout(model, ids, readout)
        else:
            # The planned token n-1 and every token generated since the re-plan.
            anchor_mask = torch.ones((1, anchor), dtype=torch.long)
            with (
                steer(model, vectors, positions="prompt_last", prompt_mask=anchor_mask),
                steer(model, vectors, positions="generated", prompt_mask=anchor_mask),
            ):
                steered, logits = _last_readout(model, ids, readout)
        readouts.append(steered)
        next_token = logits.argmax().reshape(1).to(ids.device)
        ids = torch.cat([ids, next_token])
        if eos is not None and int(next_token) == eos:
            break

    generated = ids[prompt_length:]
    return ClosedLoopResult(
        tokens=ids,
        prompt_length=prompt_length,
        readouts=np.stack(readouts),
        replan_steps=replan_steps,
        free_readouts=np.stack(free_readouts),
        schedules=schedules,
        text=model.tokenizer.decode(generated, skip_special_tokens=True) if model.tokenizer is not None else "",
    )
