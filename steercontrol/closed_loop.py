"""Generate while re-planning the injection schedule, a receding horizon loop.

:func:`closed_loop_generate` re-measures the readout every few generated
tokens and plans the schedule for the remaining gap to the target on a
fresh surrogate identified around the current text.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from steercontrol.concepts import Readout
from steercontrol.controller import Controller
from steercontrol.exceptions import ConfigurationError, ShapeError
from steercontrol.generation import steer
from steercontrol.generation_metrics import _check_positive_int
from steercontrol.hooks import record
from steercontrol.models import SteerableModel
from steercontrol.schedule import Schedule

__all__ = [
    "ClosedLoopResult",
    "make_controller_factory",
    "closed_loop_generate",
]

logger = logging.getLogger(__name__)


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
