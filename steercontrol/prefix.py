"""Frozen-context evaluation: one pass over a prefix, then last-token work.

Attention is causal, so an injection at the last token never changes an
earlier token's keys and values. After one pass over a context's prefix
(every token but the last), every later evaluation needs only the last
token, with the prefix's key/value cache reused. :class:`FrozenContext`
stores that cache and runs the last token in batches, either through the
whole model (:meth:`FrozenContext.run_last`) or through one block at a time
(:meth:`FrozenContext.block_function`), without ever appending to the
stored cache.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

import torch

from steercontrol.exceptions import ShapeError
from steercontrol.models import SteerableModel

__all__ = ["FrozenContext"]

logger = logging.getLogger(__name__)


def _cache_keyword(model: Any) -> str:
    # transformers 5.25 names the keyword `cache` (older releases: `past_key_values`).
    parameters = inspect.signature(model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def _cache_layers(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache, strict=True))


class _PrefixOnlyCache:
    """Duck-typed cache for one block: prefix keys and values, never stored."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.keys = keys
        self.values = values

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        batch = key_states.shape[0]
        keys = torch.cat([self.keys.expand(batch, -1, -1, -1), key_states], dim=-2)
        values = torch.cat([self.values.expand(batch, -1, -1, -1), value_states], dim=-2)
        return keys, values

    def get_seq_length(self, *args: Any) -> int:
        return int(self.keys.shape[-2])


class FrozenContext:
    """A context whose prefix has been run once, ready for last-token work.

    Parameters
    ----------
    model : SteerableModel
        The model.
    input_ids : torch.Tensor
        (seq,) or (1, seq) token ids of one context, without padding.

    Notes
    -----
    For a model that does not return a key/value cache (for example a test
    model without attention), :meth:`run_last` falls back to recomputing the
    whole context, which gives the same result at a higher cost.
    """

    def __init__(self, model: SteerableModel, input_ids: torch.Tensor) -> None:
        if input_ids.ndim == 2:
            if input_ids.shape[0] != 1:
                raise ShapeError(f"FrozenContext takes one context, got a batch of {input_ids.shape[0]}.")
            input_ids = input_ids[0]
        if input_ids.ndim != 1 or input_ids.numel() == 0:
            raise ShapeError(f"input_ids must be a non-empty (seq,) tensor, got shape {tuple(input_ids.shape)}.")

        self.model = model
        self.input_ids = input_ids.to(model.device)
        self.length = int(input_ids.numel())
        self._cache_keyword = _cache_keyword(model.model)
        self.prefix: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self._block_calls: dict[int, dict[str, Any]] | None = None

        if self.length > 1:
            with torch.no_grad():
                output = model.model(input_ids=self.input_ids[None, :-1], use_cache=True)
            cache = getattr(output, "cache", None) or getattr(output, "past_key_values", None)
            if cache is not None:
                self.prefix = _cache_layers(cache)
        else:
            self.prefix = []

    @property
    def uses_cache(self) -> bool:
        """Whether last-token evaluations reuse the prefix cache."""
        return self.prefix is not None

    def _fresh_cache(self, batch: int) -> Any:
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.model.config)
        for layer, (keys, values) in enumerate(self.prefix or []):
            cache.update(keys.expand(batch, -1, -1, -1), values.expand(batch, -1, -1, -1), layer)
        return cache

    def run_last(self, batch: int = 1) -> Any:
        """Run the last token ``batch`` times over the frozen prefix.

        Hooks that are active (injections, recordings) apply as usual; with
        ``positions="last"`` they act on the last token.

        Parameters
        ----------
        batch : int
            Number of rows; each row can carry a different injection.

        Returns
        -------
        transformers.modeling_outputs.CausalLMOutputWithPast
            ``logits`` has shape (batch, 1, vocab) with the cache and
            (batch, seq, vocab) without.
        """
        if self.prefix is None:
            ids = self.input_ids[None, :].expand(batch, -1)
            return self.model.model(input_ids=ids, use_cache=False)

        last = self.input_ids[None, -1:].expand(batch, 1)
        position_ids = torch.full((batch, 1), self.length - 1, dtype=torch.long, device=last.device)
        attention_mask = torch.ones((batch, self.length), dtype=torch.long, device=last.device)
        kwargs: dict[str, Any] = {
            self._cache_keyword: self._fresh_cache(batch) if self.prefix else None,
            "use_cache": True,
        }
        return self.model.model(
            input_ids=last, position_ids=position_ids, attention_mask=attention_mask, **kwargs
        )

    def _capture_block_calls(self) -> dict[int, dict[str, Any]]:
        calls: dict[int, dict[str, Any]] = {}

        def make_hook(layer: int) -> Callable[..., None]:
            def capture(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
                hidden = args[0] if args else kwargs["hidden_states"]
                calls[layer] = {"input": hidden.detach(), "args": args[1:], "kwargs": dict(kwargs)}

            return capture

        handles = [
            block.register_forward_pre_hook(make_hook(layer), with_kwargs=True)
            for layer, block in enumerate(self.model.blocks)
        ]
        try:
            with torch.no_grad():
                self.run_last(1)
        finally:
            for handle in handles:
                handle.remove()
        return calls

    def block_input(self, layer: int) -> torch.Tensor:
        """Return the unperturbed input x_k of block ``layer`` at the last token, shape (hidden,)."""
        if self._block_calls is None:
            self._block_calls = self._capture_block_calls()
        return self._block_calls[layer]["input"][0, -1]

    def block_function(self, layer: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """Return x -> f_k(x), block ``layer`` applied to last-token states.

        The returned function maps an (n, hidden) batch of states at the
        input of block k to the (n, hidden) states at its output, with the
        prefix's keys and values fixed. It supports autograd and forward-mode
        differentiation where the block's operations do.

        Raises
        ------
        ShapeError
            If the model has no key/value cache, because a single block then
            cannot be evaluated on the last token alone.
        """
        if not self.uses_cache:
            raise ShapeError(
                "This model returns no key/value cache, so blocks cannot be evaluated on the last token alone."
            )
        if self._block_calls is None:
            self._block_calls = self._capture_block_calls()
        call = self._block_calls[layer]
        block = self.model.blocks[layer]
        keys, values = self.prefix[layer] if self.prefix else (None, None)
        frozen = _PrefixOnlyCache(keys, values) if keys is not None and values is not None else None

        # The model passes its cache positionally to some blocks (GPT-2) and by
        # keyword to others, so swap it wherever it appears.
        def swap(value: Any) -> Any:
            return frozen if hasattr(value, "update") and hasattr(value, "get_seq_length") else value

        args = tuple(swap(value) for value in call["args"])
        kwargs = {name: swap(value) for name, value in call["kwargs"].items()}

        def apply_block(states: torch.Tensor) -> torch.Tensor:
            # (n, hidden) -> (n, 1, hidden) -> block -> (n, hidden)
            output = block(states[:, None, :], *args, **kwargs)
            if isinstance(output, tuple):
                output = output[0]
            return output[:, -1, :]

        return apply_block
