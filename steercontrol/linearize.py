"""Frozen-context Jacobian-vector products at the last token.

The Jacobian A_k = d f_k / d x of block k at the unperturbed last-token
state is never formed. :class:`Linearization` applies it to batches of
directions, each product a single-token evaluation of one block over the
prefix's key/value cache: forward-mode automatic differentiation
(``torch.func.jvp``) where the block supports it, central differences
otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import numpy as np
import torch

from steercontrol.concepts import Readout
from steercontrol.exceptions import ConfigurationError, ShapeError
from steercontrol.prefix import FrozenContext

__all__ = ["JvpMethod", "Linearization", "PooledLinearization"]

logger = logging.getLogger(__name__)

JvpMethod = Literal["forward", "central"]
"""``"forward"``: forward-mode autodiff, falling back to central differences
if the block does not support it. ``"central"``: (f(x + h v) - f(x - h v)) / 2h."""


@contextmanager
def _eager_attention(model: Any) -> Iterator[None]:
    # PyTorch's fused CPU attention kernels have no forward-mode derivative
    # (torch 2.13), so products run through transformers' eager attention,
    # which it selects per call from config._attn_implementation.
    config = model.config
    previous = getattr(config, "_attn_implementation", None)
    if previous in (None, "eager"):
        yield
        return
    config._attn_implementation = "eager"
    try:
        yield
    finally:
        config._attn_implementation = previous


class Linearization:
    """Jacobian-vector products of every block around one frozen context.

    Parameters
    ----------
    context : FrozenContext
        The context, with its prefix already run.
    method : {"forward", "central"}
        How products are computed; see :data:`JvpMethod`.
    step : float
        Central-difference step h in model units (about 2e-3 suits float32).
    operating_states : torch.Tensor, optional
        (n_layers + 1, hidden) block inputs to linearise around, in place of
        the unperturbed trajectory; each row is the input block k receives.

    Notes
    -----
    Blocks are evaluated in float32 products of the model's dtype; with a
    bfloat16 model, central differences lose most digits, so forward mode is
    preferred.
    """

    def __init__(
        self,
        context: FrozenContext,
        *,
        method: JvpMethod = "forward",
        step: float = 2e-3,
        operating_states: torch.Tensor | None = None,
    ) -> None:
        if method not in ("forward", "central"):
            raise ConfigurationError(f"Invalid JVP method {method!r}; expected 'forward' or 'central'.")
        if not step > 0:
            raise ConfigurationError(f"Invalid step {step!r}; pass a positive finite difference step.")
        self.context = context
        self.model = context.model
        self.method = method
        self.step = float(step)
        self._forward_failed = False
        self.evaluations = 0
        expected = (context.model.n_layers + 1, context.model.hidden_size)
        if operating_states is not None and tuple(operating_states.shape) != expected:
            raise ShapeError(
                f"operating_states must be (n_layers + 1, hidden) = {expected}, got {tuple(operating_states.shape)}."
            )
        self.operating_states = operating_states

    @property
    def n_layers(self) -> int:
        """Number of blocks L."""
        return self.model.n_layers

    def state(self, layer: int) -> torch.Tensor:
        """Return the operating-point state x_k (hidden,), for k = 0..L.

        This is the unperturbed last-token state unless ``operating_states``
        was given, for example the states of a steered run.
        """
        if self.operating_states is not None:
            return self.operating_states[layer].to(self.context.block_input(0).dtype)
        if layer == self.n_layers:
            return self._final_state()
        return self.context.block_input(layer)

    def _final_state(self) -> torch.Tensor:
        last = self.n_layers - 1
        with torch.no_grad():
            return self.context.block_function(last)(self.context.block_input(last)[None])[0]

    def apply(self, layer: int, directions: torch.Tensor) -> torch.Tensor:
        """Return A_k V for an (n, hidden) batch of directions V, shape (n, hidden)."""
        if directions.ndim != 2 or directions.shape[1] != self.model.hidden_size:
            raise ShapeError(f"directions must be (n, hidden={self.model.hidden_size}), got {tuple(directions.shape)}.")
        block = self.context.block_function(layer)
        x0 = self.state(layer)
        tangents = directions.to(device=x0.device, dtype=x0.dtype)
        primal = x0[None].expand(tangents.shape[0], -1).contiguous()
        self.evaluations += tangents.shape[0]

        if self.method == "forward" and not self._forward_failed:
            try:
                with _eager_attention(self.model.model):
                    product = torch.func.jvp(block, (primal,), (tangents,))[1]
                return product.detach()
            except (RuntimeError, NotImplementedError) as error:
                self._forward_failed = True
                logger.warning("Forward-mode JVP failed on %s (%s); using central differences.", self.model.name, error)

        with torch.no_grad():
            h = self.step
            # One batch of 2n rows: x + h v and x - h v.
            both = block(torch.cat([primal + h * tangents, primal - h * tangents]))
            plus, minus = both.split(tangents.shape[0])
            return (plus - minus) / (2 * h)

    def readout_rows(self, readout: Readout) -> torch.Tensor:
        """Return dy/dx_L, the readout's gradient at the final pre-norm state, shape (n_outputs, hidden)."""
        x_final = self.state(self.n_layers).detach().float().requires_grad_(True)
        norm = self.model.final_norm
        with torch.enable_grad():
            normed = norm(x_final[None].to(self.model.dtype)).float()[0]
            outputs = readout.apply(normed[None])[0]
            rows = [
                torch.autograd.grad(outputs[i], x_final, retain_graph=i + 1 < readout.n_outputs)[0]
                for i in range(readout.n_outputs)
            ]
        return torch.stack(rows).detach()


class PooledLinearization:
    """The mean Jacobian over several contexts, with the interface of :class:`Linearization`.

    Parameters
    ----------
    linearizations : sequence of Linearization
        One per context of the operating split, all on the same model.

    Notes
    -----
    A_k^pool V = (1/N) sum_c A_k^(c) V. The readout row is averaged too.
    """

    def __init__(self, linearizations: Sequence[Linearization]) -> None:
        if not linearizations:
            raise ConfigurationError("PooledLinearization needs at least one context.")
        self.parts = list(linearizations)
        self.model = self.parts[0].model

    @property
    def n_layers(self) -> int:
        """Number of blocks L."""
        return self.model.n_layers

    @property
    def evaluations(self) -> int:
        """Single-token block evaluations so far, summed over contexts."""
        return sum(part.evaluations for part in self.parts)

    def state(self, layer: int) -> torch.Tensor:
        """Return the mean unperturbed state x_k over the contexts."""
        return torch.stack([part.state(layer) for part in self.parts]).mean(0)

    def apply(self, layer: int, directions: torch.Tensor) -> torch.Tensor:
        """Return the mean of A_k^(c) V over contexts, shape (n, hidden)."""
        return torch.stack([part.apply(layer, directions) for part in self.parts]).mean(0)

    def readout_rows(self, readout: Readout) -> torch.Tensor:
        """Return the mean readout gradient at x_L, shape (n_outputs, hidden)."""
        return torch.stack([part.readout_rows(readout) for part in self.parts]).mean(0)


def state_norms(linearization: Linearization | PooledLinearization) -> np.ndarray:
    """Return ||x_k|| for k = 0..L-1 at the operating point, shape (L,)."""
    return np.array([float(linearization.state(k).float().norm()) for k in range(linearization.n_layers)])
