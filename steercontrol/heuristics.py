"""Heuristic steering schedules, the baselines for the minimum-energy one.

Each heuristic fixes the shape of a schedule (equal amplitudes at every layer,
or one chosen layer) and scales it so that the linear surrogate reaches the
target. All of them need one input per layer. This module never imports torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from steercontrol.controller import _UNREACHABLE_TOLERANCE, Controller, _describe
from steercontrol.exceptions import ConfigurationError, ShapeError, UnreachableTargetError
from steercontrol.schedule import Schedule
from steercontrol.system import LayerVaryingSurrogate, TimeInvariantSurrogate, _normalize_layers

__all__ = [
    "uniform_all",
    "single_layer",
    "last_layer",
    "middle_layer",
    "early_layer",
    "random_single_layer",
    "best_single_layer",
    "heuristic_schedules",
]

SurrogateOrController = Controller | LayerVaryingSurrogate | TimeInvariantSurrogate


def _as_controller(source: SurrogateOrController) -> Controller:
    return source if isinstance(source, Controller) else Controller(source)


def _scaled_shape(
    controller: Controller,
    target_shift: Any,
    shape: np.ndarray,
    *,
    name: str,
    layers: tuple[int, ...],
    metadata: dict[str, Any],
) -> Schedule:
    """Scale a per-layer shape (L,) so that its predicted shift equals the target."""
    if not controller._scalar_inputs:
        raise ConfigurationError(
            f"The {name} schedule needs one input per layer, got input widths "
            f"{controller.input_widths}. Use Controller.min_energy."
        )
    target = controller._validate_target(target_shift)

    # (n_out, L) @ (L,) -> (n_out,)
    effect = controller._stacked @ shape
    effect_norm = float(np.linalg.norm(effect))
    if effect_norm == 0.0:
        raise UnreachableTargetError(
            f"The {name} schedule on layers {list(layers)} has zero predicted effect on the "
            "readout, so no scaling reaches the target. Choose another schedule or layer."
        )

    # least-squares scale, exact when the effect is parallel to the target
    factor = float(effect @ target) / effect_norm**2
    miss = float(np.linalg.norm(factor * effect - target) / np.linalg.norm(target))
    if miss > _UNREACHABLE_TOLERANCE:
        raise UnreachableTargetError(
            f"The {name} schedule moves the outputs along {_describe(effect / effect_norm)} only, "
            f"so no scaling reaches target {_describe(target)}. Use Controller.min_energy."
        )

    amplitudes = factor * shape
    return Schedule(
        name=name,
        amplitudes=list(amplitudes[:, None]),  # (L,) -> L arrays of shape (1,)
        predicted_shift=factor * effect,
        target_shift=target,
        energy=float(amplitudes @ amplitudes),
        status="heuristic",
        layers=layers,
        metadata={"method": "heuristic", **metadata},
    )


def _one_layer(controller: Controller, target_shift: Any, layer: int, name: str, **metadata: Any) -> Schedule:
    (layer,) = _normalize_layers([layer], controller.n_layers)
    shape = np.zeros(controller.n_layers)
    shape[layer] = 1.0
    return _scaled_shape(
        controller, target_shift, shape, name=name, layers=(layer,), metadata={"layer": layer, **metadata}
    )


def uniform_all(source: SurrogateOrController, target_shift: Any, *, layers: Any = None) -> Schedule:
    """Plan equal amplitudes at every layer, scaled to reach the target on the surrogate.

    Parameters
    ----------
    source : Controller, LayerVaryingSurrogate or TimeInvariantSurrogate
        Surrogate with one input per layer.
    target_shift : float or array_like, (n_out,)
    layers : iterable of int, optional
        Spread the amplitudes over these layers only, for comparison with a
        plan restricted to them. None means every layer.

    Returns
    -------
    Schedule

    Raises
    ------
    UnreachableTargetError
        If the summed gains are zero, or with several outputs the target is not
        along their effect.
    ConfigurationError
        If a layer has more than one input, or the target is zero or not finite.

    Notes
    -----
    With scalar gains :math:`u_k = \\delta y / \\sum_j g_j`, so its energy
    relative to the minimum is :math:`L \\sum_k g_k^2 / (\\sum_k g_k)^2`.

    Examples
    --------
    >>> import numpy as np
    >>> from steercontrol.system import LayerVaryingSurrogate
    >>> sys = LayerVaryingSurrogate(A=[np.eye(1)] * 2, B=[np.ones((1, 1))] * 2,
    ...                             C=np.ones((1, 1)))
    >>> uniform_all(sys, 4.0).amplitude_profile()
    array([2., 2.])
    """
    controller = _as_controller(source)
    allowed = _normalize_layers(layers, controller.n_layers)
    shape = np.zeros(controller.n_layers)
    shape[list(allowed)] = 1.0
    return _scaled_shape(controller, target_shift, shape, name="uniform_all", layers=allowed, metadata={})


def single_layer(source: SurrogateOrController, target_shift: Any, layer: int) -> Schedule:
    """Plan an injection at ``layer`` only, scaled to reach the target on the surrogate.

    With a scalar gain the energy relative to the minimum is
    :math:`\\sum_k g_k^2 / g_j^2`.

    Raises
    ------
    ConfigurationError
        If ``layer`` is outside ``0..L-1``.
    UnreachableTargetError
        If the layer's gain is zero.

    Examples
    --------
    >>> import numpy as np
    >>> from steercontrol.system import LayerVaryingSurrogate
    >>> sys = LayerVaryingSurrogate(A=[np.eye(1)] * 2, B=[np.array([[g]]) for g in (1.0, 4.0)],
    ...                             C=np.ones((1, 1)))
    >>> single_layer(sys, 2.0, 1).amplitude_profile()
    array([0. , 0.5])
    """
    return _one_layer(_as_controller(source), target_shift, layer, f"single_layer_{layer}")


def last_layer(source: SurrogateOrController, target_shift: Any, *, layers: Any = None) -> Schedule:
    """Plan an injection at the last layer ``L-1`` only, or the last of ``layers`` (see :func:`single_layer`)."""
    controller = _as_controller(source)
    allowed = _normalize_layers(layers, controller.n_layers)
    return _one_layer(controller, target_shift, allowed[-1], "last_layer")


def middle_layer(source: SurrogateOrController, target_shift: Any) -> Schedule:
    """Plan an injection at layer ``L // 2`` only (see :func:`single_layer`)."""
    controller = _as_controller(source)
    return _one_layer(controller, target_shift, controller.n_layers // 2, "middle_layer")


def early_layer(source: SurrogateOrController, target_shift: Any) -> Schedule:
    """Plan an injection at layer ``L // 4`` only (see :func:`single_layer`)."""
    controller = _as_controller(source)
    return _one_layer(controller, target_shift, controller.n_layers // 4, "early_layer")


def random_single_layer(source: SurrogateOrController, target_shift: Any, *, seed: int = 0) -> Schedule:
    """Plan an injection at one layer drawn uniformly from ``0..L-1`` with ``seed``.

    The draw does not look at the gains, so it can pick a layer with zero
    gain, which raises :class:`UnreachableTargetError`.
    """
    controller = _as_controller(source)
    layer = int(np.random.default_rng(seed).integers(controller.n_layers))
    return _one_layer(controller, target_shift, layer, "random_single_layer", seed=seed)


def best_single_layer(
    source: SurrogateOrController, target_shift: Any, *, measured_gains: Any = None, layers: Any = None
) -> Schedule:
    """Plan an injection at the layer with the largest gain magnitude.

    Parameters
    ----------
    source : Controller, LayerVaryingSurrogate or TimeInvariantSurrogate
    target_shift : float or array_like, (n_out,)
    measured_gains : array_like, (L,) or (L, n_out), optional
        Gains measured on the full model. With several outputs the norm of
        each row is used. When None the surrogate's own gains are used, and
        ``metadata["gain_source"]`` records which. Ties go to the earlier layer.
    layers : iterable of int, optional
        Choose among these layers only. None means every layer.

    Raises
    ------
    ShapeError
        If ``measured_gains`` does not have L rows.
    ConfigurationError
        If ``measured_gains`` is not finite.
    """
    controller = _as_controller(source)
    if measured_gains is None:
        # One norm per layer over its gain block (n_out, m_k), not one per input column.
        magnitudes = np.array([np.linalg.norm(gain) for gain in controller._gains])
        gain_source = "surrogate"
    else:
        gains = np.asarray(measured_gains, dtype=np.float64)
        if gains.ndim not in (1, 2) or gains.shape[0] != controller.n_layers:
            raise ShapeError(
                f"measured_gains must have shape ({controller.n_layers},) or "
                f"({controller.n_layers}, n_out), got {gains.shape}."
            )
        if not np.all(np.isfinite(gains)):
            raise ConfigurationError("measured_gains contains NaN or infinite entries.")
        magnitudes = np.abs(gains) if gains.ndim == 1 else np.linalg.norm(gains, axis=1)
        gain_source = "measured"
    allowed = list(_normalize_layers(layers, controller.n_layers))
    layer = allowed[int(np.argmax(magnitudes[allowed]))]
    return _one_layer(controller, target_shift, layer, "best_single_layer", gain_source=gain_source)


def heuristic_schedules(
    source: SurrogateOrController,
    target_shift: Any,
    *,
    measured_gains: Any = None,
    seed: int = 0,
) -> dict[str, Schedule]:
    """Plan every heuristic schedule and the minimum-energy one for the same target.

    Returns
    -------
    dict of str to Schedule
        Keys ``uniform_all``, ``last_layer``, ``middle_layer``, ``early_layer``,
        ``random_single_layer``, ``best_single_layer`` and ``min_energy``.

    Raises
    ------
    UnreachableTargetError
        If any heuristic has zero predicted effect. The message names it.

    Examples
    --------
    >>> import numpy as np
    >>> from steercontrol.system import LayerVaryingSurrogate
    >>> sys = LayerVaryingSurrogate(A=[np.eye(1)] * 4, B=[np.ones((1, 1))] * 4,
    ...                             C=np.ones((1, 1)))
    >>> sorted(heuristic_schedules(sys, 1.0))[:3]
    ['best_single_layer', 'early_layer', 'last_layer']
    """
    controller = _as_controller(source)
    return {
        "uniform_all": uniform_all(controller, target_shift),
        "last_layer": last_layer(controller, target_shift),
        "middle_layer": middle_layer(controller, target_shift),
        "early_layer": early_layer(controller, target_shift),
        "random_single_layer": random_single_layer(controller, target_shift, seed=seed),
        "best_single_layer": best_single_layer(controller, target_shift, measured_gains=measured_gains),
        "min_energy": controller.min_energy(target_shift),
    }
