"""Inject vectors at block inputs and record last-token states.

Both are removable PyTorch forward pre-hooks. They build new tensors and
never modify weights or the caller's tensors in place. Every handle is also a
context manager whose hooks are removed on exit, including when the body
raises.

Conventions: the state x_k is the residual stream at the input of block k,
for k < L, and x_L is the input of the final norm. An injection at layer k is
added to x_k before block k runs. When an injection and a recording are both
active, the recording stores the state after the injection, which is the input
that block k actually receives.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
from torch.utils.hooks import RemovableHandle

from steercontrol.exceptions import ConfigurationError, ShapeError
from steercontrol.models import SteerableModel

__all__ = [
    "Positions",
    "InjectionHandle",
    "Recording",
    "inject",
    "record",
    "last_token_index",
]

logger = logging.getLogger(__name__)

Positions = Literal["last", "all"] | int
"""Token selection of an injection or a recording, in each forward call.

- ``"last"``: the last non-padding token of each row of the call's input.
  In a cached generation step (one new token) this is the new token.
- ``"all"``: every non-padding token of the call's input.
- an int p: every non-padding token at absolute position >= p, counted
  from the start of the padded sequence, across cached calls.
"""


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Return the index of the last non-padding token of each row.

    Parameters
    ----------
    attention_mask : torch.Tensor
        (batch, seq) tensor of ones for tokens and zeros for padding. Works for
        left and right padding.

    Returns
    -------
    torch.Tensor
        (batch,) long tensor.
    """
    if attention_mask.ndim != 2:
        raise ShapeError(f"attention_mask must be (batch, seq), got shape {tuple(attention_mask.shape)}.")
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    # (batch, seq): position where the token is real, -1 where it is padding.
    marked = torch.where(attention_mask.bool(), positions, torch.full_like(positions, -1))
    last = marked.max(dim=1).values
    if bool((last < 0).any()):
        raise ShapeError("A row of attention_mask has no token (all zeros); remove empty rows.")
    return last


class _CallTracker:
    """Stores the offset and padding mask of the forward call in progress."""

    def __init__(self, model: SteerableModel) -> None:
        self.offset = 0
        self.mask: torch.Tensor | None = None
        self._handle = model.base.register_forward_pre_hook(self._before_call, with_kwargs=True)

    def _before_call(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        self.offset = int(cache.get_seq_length()) if cache is not None and hasattr(cache, "get_seq_length") else 0
        mask = kwargs.get("attention_mask")
        self.mask = mask if isinstance(mask, torch.Tensor) and mask.ndim == 2 else None

    def selection(self, hidden: torch.Tensor, positions: Positions) -> torch.Tensor:
        """Return a (batch, seq) bool tensor of the positions to act on."""
        batch, seq = hidden.shape[0], hidden.shape[1]
        if self.mask is not None and self.mask.shape[0] == batch and self.mask.shape[1] >= self.offset + seq:
            # (batch, seq): the mask columns of this call's tokens.
            real = self.mask[:, self.offset : self.offset + seq].bool().to(hidden.device)
        else:
            real = torch.ones((batch, seq), dtype=torch.bool, device=hidden.device)

        if positions == "all":
            return real
        if positions == "last":
            index = torch.arange(seq, device=hidden.device)
            marked = torch.where(real, index, torch.full_like(index, -1))
            last = marked.max(dim=1).values
            chosen = index.unsqueeze(0) == last.unsqueeze(1)
            return chosen & (last >= 0).unsqueeze(1)
        absolute = torch.arange(self.offset, self.offset + seq, device=hidden.device)
        return real & (absolute >= positions).unsqueeze(0)

    def remove(self) -> None:
        self._handle.remove()


def _check_positions(positions: Positions) -> None:
    if positions in ("last", "all"):
        return
    if isinstance(positions, int) and not isinstance(positions, bool) and positions >= 0:
        return
    raise ConfigurationError(
        f"Invalid positions {positions!r}; expected 'last', 'all' or a non-negative int (the first position)."
    )


def _split_hidden(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[torch.Tensor, bool]:
    if args:
        return args[0], True
    return kwargs["hidden_states"], False


class _Hooks:
    """A group of hooks removed together; the base of both handle classes."""

    def __init__(self, model: SteerableModel) -> None:
        self.model = model
        self._tracker = _CallTracker(model)
        self._handles: list[RemovableHandle] = []
        self.removed = False

    def remove(self) -> None:
        """Remove every hook of this handle. Calling it twice is harmless."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._tracker.remove()
        self.removed = True

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()


class InjectionHandle(_Hooks):
    """Hooks that add vectors to block inputs; see :func:`inject`."""

    def __init__(
        self,
        model: SteerableModel,
        vectors: Mapping[int, torch.Tensor],
        *,
        positions: Positions,
    ) -> None:
        super().__init__(model)
        self.vectors = dict(vectors)
        self.positions = positions
        for layer, vector in self.vectors.items():
            hook = self._make_hook(vector)
            # Prepended so that a recording on the same block stores the injected state.
            self._handles.append(
                model.blocks[layer].register_forward_pre_hook(hook, with_kwargs=True, prepend=True)
            )

    def _make_hook(self, vector: torch.Tensor) -> Callable[..., Any]:
        def add_vector(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            hidden, positional = _split_hidden(args, kwargs)
            chosen = self._tracker.selection(hidden, self.positions)
            delta = vector.to(device=hidden.device, dtype=hidden.dtype)
            if delta.ndim == 2 and delta.shape[0] != hidden.shape[0]:
                raise ShapeError(
                    f"Injection vector has batch size {delta.shape[0]} but the input has {hidden.shape[0]} rows; "
                    "pass a (hidden,) vector or one row per input."
                )
            # (batch or 1, 1, hidden), added only where `chosen` is true.
            delta = delta.reshape(-1, 1, hidden.shape[-1])
            steered = torch.where(chosen.unsqueeze(-1), hidden + delta, hidden)
            if positional:
                return (steered, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": steered}

        return add_vector


def inject(
    model: SteerableModel,
    vectors: Mapping[int, torch.Tensor] | torch.Tensor,
    *,
    positions: Positions = "last",
) -> InjectionHandle:
    """Add vectors to the residual stream at the input of chosen blocks.

    Parameters
    ----------
    model : SteerableModel
        The model to steer.
    vectors : mapping of int to torch.Tensor, or torch.Tensor
        Layer index k -> vector added to x_k, of shape (hidden,) for every row
        or (batch, hidden) for one vector per row. A dense tensor of shape
        (n_layers, hidden) or (n_layers, batch, hidden) injects at every layer.
    positions : {"last", "all"} or int
        Which tokens receive the vector; see :data:`Positions`.

    Returns
    -------
    InjectionHandle
        Use it as a context manager, or call ``remove()``.

    Raises
    ------
    ConfigurationError
        On a layer index out of range or invalid ``positions``.
    ShapeError
        On a vector whose last dimension is not the hidden size.

    Examples
    --------
    >>> with inject(m, {3: 0.5 * v}):  # doctest: +SKIP
    ...     logits = m.model(**batch).logits
    """
    _check_positions(positions)
    if isinstance(vectors, torch.Tensor):
        if vectors.ndim not in (2, 3) or vectors.shape[0] != model.n_layers:
            raise ShapeError(
                f"A dense injection must be (n_layers={model.n_layers}, [batch,] hidden), "
                f"got shape {tuple(vectors.shape)}."
            )
        vectors = {layer: vectors[layer] for layer in range(model.n_layers)}

    for layer, vector in vectors.items():
        if not isinstance(layer, int) or not 0 <= layer < model.n_layers:
            raise ConfigurationError(
                f"Invalid layer {layer!r}; expected an int in [0, {model.n_layers - 1}] (block inputs)."
            )
        if not isinstance(vector, torch.Tensor) or vector.ndim not in (1, 2) or vector.shape[-1] != model.hidden_size:
            shape = tuple(vector.shape) if isinstance(vector, torch.Tensor) else type(vector).__name__
            raise ShapeError(
                f"Injection at layer {layer} must be a tensor of shape (hidden,) or (batch, hidden) "
                f"with hidden={model.hidden_size}, got {shape}."
            )
        if not bool(torch.isfinite(vector).all()):
            raise ConfigurationError(f"Injection at layer {layer} has non-finite entries; pass finite values.")
    return InjectionHandle(model, vectors, positions=positions)


class Recording(_Hooks):
    """Hooks that record states at every block input and at the final norm.

    After a forward call, :attr:`states` is a (batch, n_layers + 1, hidden)
    tensor: x_0..x_{L-1} at the block inputs and x_L at the input of the final
    norm. :attr:`final_normed` is the (batch, hidden) output of the final norm.
    With ``positions="last"`` each row gives its last non-padding token. With
    ``"all"`` or an int, the tensors gain a sequence axis,
    (batch, seq, n_layers + 1, hidden), and :attr:`selected` marks the
    positions that were requested. Each forward call replaces the previous
    one's states, and :attr:`calls` counts the calls seen.
    """

    def __init__(self, model: SteerableModel, *, positions: Positions, detach: bool) -> None:
        super().__init__(model)
        self.positions = positions
        self.detach = detach
        self.calls = 0
        self._layer_states: dict[int, torch.Tensor] = {}
        self._final_normed: torch.Tensor | None = None
        self.selected: torch.Tensor | None = None

        for layer, block in enumerate(model.blocks):
            self._handles.append(block.register_forward_pre_hook(self._make_hook(layer), with_kwargs=True))
        self._handles.append(
            model.final_norm.register_forward_pre_hook(self._make_hook(model.n_layers), with_kwargs=True)
        )
        self._handles.append(model.final_norm.register_forward_hook(self._after_norm))

    def _take(self, hidden: torch.Tensor) -> torch.Tensor:
        value = hidden.detach() if self.detach else hidden
        if self.positions != "last":
            return value
        chosen = self._tracker.selection(hidden, "last")
        # (batch, hidden): the row's last token; chosen has exactly one true entry per row.
        index = chosen.float().argmax(dim=1)
        return value[torch.arange(value.shape[0], device=value.device), index]

    def _make_hook(self, layer: int) -> Callable[..., Any]:
        def store(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            hidden, _ = _split_hidden(args, kwargs)
            if layer == 0:
                self.calls += 1
                if self.positions != "last":
                    self.selected = self._tracker.selection(hidden, self.positions)
            self._layer_states[layer] = self._take(hidden)

        return store

    def _after_norm(self, module: Any, args: tuple[Any, ...], output: Any) -> None:
        normed = output[0] if isinstance(output, tuple) else output
        self._final_normed = self._take(normed)

    @property
    def states(self) -> torch.Tensor:
        """Recorded states x_0..x_L of the last forward call."""
        if len(self._layer_states) != self.model.n_layers + 1:
            raise RuntimeError("No complete forward call was recorded; run the model inside the recording.")
        ordered = [self._layer_states[layer] for layer in range(self.model.n_layers + 1)]
        return torch.stack(ordered, dim=-2)

    @property
    def final_normed(self) -> torch.Tensor:
        """Output of the final norm at the recorded positions."""
        if self._final_normed is None:
            raise RuntimeError("No complete forward call was recorded; run the model inside the recording.")
        return self._final_normed


def record(model: SteerableModel, *, positions: Positions = "last", detach: bool = True) -> Recording:
    """Record the states at every block input and at the final norm.

    Parameters
    ----------
    model : SteerableModel
        The model to observe.
    positions : {"last", "all"} or int
        Which tokens to keep; see :data:`Positions` and :class:`Recording`.
    detach : bool
        Detach the recorded tensors from the autograd graph. Pass False to
        differentiate through them.

    Returns
    -------
    Recording

    Examples
    --------
    >>> with record(m) as rec:  # doctest: +SKIP
    ...     m.model(**batch)
    >>> rec.states.shape  # doctest: +SKIP
    torch.Size([2, 31, 576])
    """
    _check_positions(positions)
    return Recording(model, positions=positions, detach=detach)
