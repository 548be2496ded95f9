"""Apply schedules to the full model, calibrate them and measure their cost.

A schedule planned on a surrogate fixes the *shape* of the injections over
the layers. On the full model, its overall amplitude is calibrated by
bisection until the measured readout shift reaches the target. All
schedules of a context are calibrated together, one batch row each, as
single-token forwards over the frozen prefix. The energy of a calibrated
schedule is sum_k ||scale * vector_k||^2 in model units.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from steercontrol.concepts import Readout
from steercontrol.exceptions import CalibrationWarning, ConfigurationError, ShapeError
from steercontrol.hooks import inject, record
from steercontrol.models import SteerableModel
from steercontrol.prefix import FrozenContext

__all__ = ["Calibration", "calibrate", "next_token_kl", "steered_states", "refine_min_energy"]

logger = logging.getLogger(__name__)


@dataclass
class Calibration:
    """A schedule scaled on the full model to reach a target shift.

    Attributes
    ----------
    name : str
        Schedule name.
    scale : float
        Factor applied to the schedule's vectors (nan when not reached).
    achieved_shift : float
        Measured readout shift at that scale.
    energy : float
        sum_k ||scale * vector_k||^2 (nan when not reached).
    kl : float
        KL(steered || unsteered) of the next-token distribution, in nats.
    reached : bool
        Whether |achieved / target - 1| <= tolerance.
    iterations : int
        Forward passes used by the search.
    """

    name: str
    scale: float
    achieved_shift: float
    energy: float
    kl: float
    reached: bool
    iterations: int
    metadata: dict[str, Any] = field(default_factory=dict)


def next_token_kl(steered_logits: torch.Tensor, clean_logits: torch.Tensor) -> torch.Tensor:
    """Return KL(steered || clean) of next-token distributions, per row, in nats.

    Parameters
    ----------
    steered_logits, clean_logits : torch.Tensor
        (batch, vocab) and (batch or 1, vocab) logits.
    """
    log_p = torch.log_softmax(steered_logits.float(), dim=-1)
    log_q = torch.log_softmax(clean_logits.float(), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).clamp(min=0.0)


def _measure(
    model: SteerableModel,
    context: FrozenContext,
    vectors: torch.Tensor,
    scales: torch.Tensor,
    readout: Readout,
) -> tuple[torch.Tensor, torch.Tensor]:
    # vectors: (n_schedules, n_layers, hidden); scales: (n_schedules,)
    rows = vectors.shape[0]
    scaled = scales[:, None, None] * vectors
    injections = {layer: scaled[:, layer] for layer in range(model.n_layers) if bool(scaled[:, layer].any())}
    with torch.no_grad(), record(model) as recording, inject(model, injections):
        output = context.run_last(rows)
    return readout.apply(recording.final_normed.double())[:, 0], output.logits[:, -1]


def calibrate(
    model: SteerableModel,
    context: FrozenContext,
    schedules: Mapping[str, np.ndarray],
    readout: Readout,
    target_shift: float,
    *,
    tolerance: float = 0.01,
    max_scale: float = 64.0,
    max_iterations: int = 60,
) -> dict[str, Calibration]:
    """Scale each schedule until the full model's readout moves by the target.

    Parameters
    ----------
    model : SteerableModel
        The model.
    context : FrozenContext
        The context, with its prefix already run.
    schedules : mapping of str to np.ndarray
        Name -> (n_layers, hidden) injection vectors at scale 1. Schedules
        planned on a surrogate for the same target start near scale 1.
    readout : Readout
        A scalar readout.
    target_shift : float
        Desired change of the readout, non-zero and finite.
    tolerance : float
        Relative tolerance on the achieved shift.
    max_scale : float
        Largest scale tried; a schedule that has not reached the target by
        then is reported as not reached.
    max_iterations : int
        Bisection steps after the target is bracketed.

    Returns
    -------
    dict of str to Calibration
        In the order of ``schedules``. Schedules that cannot reach the target
        are kept, with ``reached=False`` and a :class:`CalibrationWarning`.

    Notes
    -----
    The bracket starts at [0, 1] and doubles its upper end until the
    normalised shift (y(s) - y(0)) / target reaches 1. Bisection then keeps
    a bracket [lo, hi] with normalised shift below 1 at lo and at least 1
    at hi, and returns the scale closest to the target seen so far. A
    response that is not monotone in the scale still yields a crossing
    point.
    """
    if not math.isfinite(target_shift) or target_shift == 0:
        raise ConfigurationError(f"Invalid target_shift {target_shift!r}; pass a finite non-zero readout change.")
    if readout.n_outputs != 1:
        raise ConfigurationError("calibrate needs a scalar readout (n_outputs == 1).")
    if not schedules:
        raise ConfigurationError("calibrate needs at least one schedule.")
    names = list(schedules)
    arrays = [np.asarray(schedules[name], dtype=np.float64) for name in names]
    for name, array in zip(names, arrays, strict=True):
        if array.shape != (model.n_layers, model.hidden_size):
            raise ShapeError(
                f"Schedule {name!r} has shape {array.shape}; expected (n_layers, hidden) = "
                f"({model.n_layers}, {model.hidden_size})."
            )
    # (n_schedules, n_layers, hidden)
    precision = torch.float64 if model.dtype == torch.float64 else torch.float32
    vectors = torch.as_tensor(np.stack(arrays), dtype=precision, device=model.device)
    count = len(names)

    zero = torch.zeros(count, device=model.device, dtype=precision)
    baseline, clean_logits = _measure(model, context, vectors[:1], zero[:1], readout)
    y0 = float(baseline[0])

    def normalised(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shifted, _ = _measure(model, context, vectors, scales, readout)
        return (shifted - y0) / target_shift, shifted - y0

    low = torch.zeros(count, device=model.device, dtype=precision)
    high = torch.ones(count, device=model.device, dtype=precision)
    iterations = 1
    progress, _ = normalised(high)
    bracketed = progress >= 1
    while not bool(bracketed.all()) and float(high.max()) < max_scale:
        # Rows already bracketed keep their bracket; the others double.
        low = torch.where(bracketed, low, high)
        high = torch.where(bracketed, high, high * 2)
        progress, _ = normalised(high)
        iterations += 1
        bracketed = bracketed | (progress >= 1)

    # Keep the scale whose shift is closest to the target seen so far.
    best_scale = torch.where(bracketed, high, torch.full_like(high, math.nan))
    best_error = torch.where(bracketed, (progress - 1).abs(), torch.full_like(high, math.inf))
    for _ in range(max_iterations):
        done = ~bracketed | (best_error <= tolerance / 4) | ((high - low) <= 1e-9 * high)
        if bool(done.all()):
            break
        middle = (low + high) / 2
        progress, _ = normalised(middle)
        iterations += 1
        above = progress >= 1
        high = torch.where(bracketed & above, middle, high)
        low = torch.where(bracketed & ~above, middle, low)
        closer = bracketed & ((progress - 1).abs() < best_error)
        best_scale = torch.where(closer, middle, best_scale)
        best_error = torch.where(closer, (progress - 1).abs(), best_error)

    final_scale = torch.where(bracketed, best_scale, high)
    shifted, steered_logits = _measure(model, context, vectors, final_scale, readout)
    achieved = shifted - y0
    kl = next_token_kl(steered_logits, clean_logits)
    energies = (final_scale.double() ** 2) * (vectors.double() ** 2).sum(dim=(1, 2))

    results: dict[str, Calibration] = {}
    for row, name in enumerate(names):
        reached = bool(bracketed[row]) and abs(float(achieved[row]) / target_shift - 1) <= tolerance
        if not reached:
            warnings.warn(
                f"Schedule {name!r} did not reach the target shift {target_shift:g} within scale {max_scale:g} "
                f"(achieved {float(achieved[row]):.4g}); it is reported as not reached. Raise max_scale or "
                "lower the target.",
                CalibrationWarning,
                stacklevel=2,
            )
        results[name] = Calibration(
            name=name,
            scale=float(final_scale[row]) if reached else math.nan,
            achieved_shift=float(achieved[row]),
            energy=float(energies[row]) if reached else math.nan,
            kl=float(kl[row]),
            reached=reached,
            iterations=iterations + 1,
        )
    return results


def steered_states(
    model: SteerableModel, context: FrozenContext, vectors: np.ndarray | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the last token's states and final-normed state under an injection.

    Parameters
    ----------
    model : SteerableModel
        The model.
    context : FrozenContext
        The context.
    vectors : array-like
        (n_layers, hidden) injection at the last token.

    Returns
    -------
    states : torch.Tensor
        (n_layers + 1, hidden): the input each block receives (after the
        injection at that block) and the input of the final norm.
    final_normed : torch.Tensor
        (hidden,) output of the final norm.
    """
    dense = torch.as_tensor(np.asarray(vectors), dtype=model.dtype, device=model.device)
    if dense.shape != (model.n_layers, model.hidden_size):
        raise ShapeError(
            f"vectors must be (n_layers, hidden) = ({model.n_layers}, {model.hidden_size}), got {tuple(dense.shape)}."
        )
    with torch.no_grad(), record(model) as recording, inject(model, dense):
        context.run_last(1)
    return recording.states[0], recording.final_normed[0]


def refine_min_energy(
    model: SteerableModel,
    context: FrozenContext,
    directions: np.ndarray,
    readout: Readout,
    target_shift: float,
    amplitudes: np.ndarray,
    *,
    iterations: int = 2,
    order: int = 32,
) -> tuple[np.ndarray, list[dict[str, float]]]:
    """Refine a scalar-input schedule by successive linearisation (Gauss-Newton).

    A minimum-energy schedule planned on the surrogate at the unperturbed
    trajectory is optimal only to first order. Each iteration identifies a
    new surrogate around the trajectory steered by the current schedule and
    solves the minimum-energy problem for the update there.

    Parameters
    ----------
    model : SteerableModel
        The model.
    context : FrozenContext
        The context.
    directions : np.ndarray
        (n_layers + 1, hidden) concept directions; the inputs are amplitudes
        along the unit directions v_0..v_{L-1}.
    readout : Readout
        A scalar readout.
    target_shift : float
        Desired readout change from the unsteered model.
    amplitudes : np.ndarray
        (n_layers,) starting amplitudes, for example a calibrated
        minimum-energy schedule.
    iterations : int
        Number of relinearisations.
    order : int
        Surrogate order at each iteration.

    Returns
    -------
    amplitudes : np.ndarray
        (n_layers,) refined amplitudes; calibrate them before comparing
        energies, because each step is exact only to first order.
    history : list of dict
        Per iteration: the measured shift before the step and the energy.

    Notes
    -----
    With g(a) the gains of an extra injection at the trajectory steered by
    a, and y(a) the measured shift, the update solves
    min ||a'||^2 subject to y(a) + g(a) (a' - a) = target, which gives
    a' = g (target - y(a) + g a) / ||g||^2.
    """
    from steercontrol.identify import identify

    if iterations < 1:
        raise ConfigurationError(f"Invalid iterations {iterations!r}; pass an int >= 1.")
    unit = np.asarray(directions, dtype=np.float64)[: model.n_layers]
    unit = unit / np.linalg.norm(unit, axis=1, keepdims=True)
    current = np.asarray(amplitudes, dtype=np.float64).copy()
    if current.shape != (model.n_layers,):
        raise ShapeError(f"amplitudes must be (n_layers,) = ({model.n_layers},), got {current.shape}.")

    _, clean_normed = steered_states(model, context, np.zeros_like(unit))
    y0 = float(readout.apply(clean_normed[None].double())[0, 0])
    history = []
    for _ in range(iterations):
        states, normed = steered_states(model, context, current[:, None] * unit)
        shift = float(readout.apply(normed[None].double())[0, 0]) - y0
        history.append({"shift": shift, "energy": float(current @ current)})
        surrogate = identify(model, context, directions, readout, order=order, operating_states=states).surrogate
        gains = surrogate.gain_profile()
        norm_squared = float(gains @ gains)
        if norm_squared == 0.0:
            break
        current = gains * (target_shift - shift + float(gains @ current)) / norm_squared
    return current, history
