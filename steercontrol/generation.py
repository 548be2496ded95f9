"""Steer text generation with an injection schedule.

:func:`steer` adds an injection schedule to the block inputs while
``model.model.generate`` runs. Unlike :func:`steercontrol.hooks.inject`,
whose positions refer to the tokens of each forward call, the position
modes here refer to absolute columns of the generated sequence: the prompt
occupies columns ``0 .. P-1`` (P is the padded prompt length) and the j-th
generated token sits at column ``P + j`` in every row. A generation with a
key/value cache and one that recomputes the whole sequence at every step
therefore receive the same injections at the same tokens, and greedy
decoding gives the same tokens.

:mod:`steercontrol.generation_metrics` measures the effect of a steered
generation, and :mod:`steercontrol.closed_loop` re-plans the schedule
during generation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.hooks import RemovableHandle

from steercontrol.exceptions import ConfigurationError, ShapeError
from steercontrol.hooks import last_token_index
from steercontrol.models import SteerableModel

__all__ = [
    "GenerationPositions",
    "SteeringHandle",
    "steer",
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
