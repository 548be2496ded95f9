"""Measured layer gains of the full model (the sensitivity profile).

The measured gain at layer k is g_k = (y(eps at k) - y(0)) / eps, where
"eps at k" adds eps * v_k to the last token's state x_k before block k runs
and y is a readout of the final-normed last-token state. Three methods
compute it:

- ``"naive"``: one full forward over the whole context per layer, which is
  what users of layer sweeps do today;
- ``"batched"``: one pass over the prefix, then all layers at once as a
  batch of single-token forwards over the shared key/value cache;
- ``"adjoint"``: the exact linear gains dy/du_k of every layer from one
  single-token forward and one backward pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from steercontrol.concepts import Readout
from steercontrol.exceptions import ConfigurationError, ShapeError
from steercontrol.hooks import inject, record
from steercontrol.models import SteerableModel
from steercontrol.prefix import FrozenContext

__all__ = ["GainMethod", "EpsMode", "GainProfile", "measure_gains", "injection_sizes"]

GainMethod = Literal["naive", "batched", "adjoint"]
"""Method of :func:`measure_gains`; see the module docstring."""

EpsMode = Literal["absolute", "relative"]
"""``"absolute"``: eps in model units. ``"relative"``: eps times the norm of the unperturbed x_k."""


@dataclass
class GainProfile:
    """Measured gains of one context.

    Attributes
    ----------
    gains : np.ndarray
        (n_layers,) for a scalar readout, else (n_layers, n_outputs).
    baseline : np.ndarray
        (n_outputs,) readout without injection.
    eps : np.ndarray
        (n_layers,) injection size used at each layer (nan for the adjoint).
    method : str
        "naive", "batched" or "adjoint".
    readout : dict
        Description of the readout.
    """

    gains: np.ndarray
    baseline: np.ndarray
    eps: np.ndarray
    method: str
    readout: dict


def injection_sizes(eps: float, eps_mode: EpsMode, state_norms: np.ndarray) -> np.ndarray:
    """Return the per-layer injection size for ``eps`` in the given mode.

    Raises
    ------
    ConfigurationError
        If eps is not a finite positive number or the mode is unknown.
    """
    if not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
        raise ConfigurationError(f"Invalid eps {eps!r}; pass a finite value > 0 (default 0.1 in model units).")
    if eps_mode == "absolute":
        return np.full(len(state_norms), float(eps))
    if eps_mode == "relative":
        return float(eps) * np.asarray(state_norms, dtype=np.float64)
    raise ConfigurationError(f"Invalid eps_mode {eps_mode!r}; expected 'absolute' or 'relative'.")


def _check_directions(model: SteerableModel, directions: np.ndarray | torch.Tensor) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(directions), dtype=torch.float64)
    if tensor.ndim != 2 or tensor.shape[0] < model.n_layers or tensor.shape[1] != model.hidden_size:
        raise ShapeError(
            f"directions must be (n_layers[+1], hidden) = ({model.n_layers}, {model.hidden_size}), "
            f"got {tuple(tensor.shape)}."
        )
    return tensor[: model.n_layers]


def _readout_of(recording_normed: torch.Tensor, readout: Readout) -> torch.Tensor:
    return readout.apply(recording_normed.double())


def measure_gains(
    model: SteerableModel,
    input_ids: torch.Tensor,
    directions: np.ndarray | torch.Tensor,
    readout: Readout,
    *,
    method: GainMethod = "batched",
    eps: float = 0.1,
    eps_mode: EpsMode = "absolute",
    context: FrozenContext | None = None,
) -> GainProfile:
    """Measure the layer-gain profile of one context.

    Parameters
    ----------
    model : SteerableModel
        The model.
    input_ids : torch.Tensor
        (seq,) or (1, seq) token ids of the context, without padding.
    directions : array-like
        (n_layers, hidden) or (n_layers + 1, hidden) unit concept directions;
        row k is v_k.
    readout : Readout
        The output y.
    method : {"naive", "batched", "adjoint"}
        How to compute the profile; see :data:`GainMethod`.
    eps : float
        Injection size, > 0.
    eps_mode : {"absolute", "relative"}
        Units of ``eps``; see :data:`EpsMode`.
    context : FrozenContext, optional
        A prepared frozen context of the same input, to share its prefix pass.

    Returns
    -------
    GainProfile

    Notes
    -----
    Finite injection: g_k = (y(x_k + eps_k v_k) - y(x_k)) / eps_k.
    Adjoint: g_k = <dy/dx_k, v_k>, where dy/dx_k is the gradient with respect
    to an injection at the input of block k (other layers fixed).
    """
    if method not in ("naive", "batched", "adjoint"):
        raise ConfigurationError(f"Invalid method {method!r}; expected 'naive', 'batched' or 'adjoint'.")
    v = _check_directions(model, directions).to(model.device)
    ids = input_ids.reshape(-1).to(model.device)
    frozen = context if context is not None and method != "naive" else None
    if frozen is None and method != "naive":
        frozen = FrozenContext(model, ids)

    if method == "adjoint":
        assert frozen is not None
        linear_gains, linear_baseline = _adjoint_gains(model, frozen, v, readout)
        sizes = np.full(model.n_layers, np.nan)
        return GainProfile(
            gains=linear_gains[:, 0] if readout.n_outputs == 1 else linear_gains,
            baseline=linear_baseline,
            eps=sizes,
            method=method,
            readout=readout.to_dict(),
        )

    # Unperturbed run: baseline readout and state norms (for relative eps).
    with torch.no_grad(), record(model) as clean:
        if method == "naive":
            model.model(input_ids=ids[None])
        else:
            assert frozen is not None
            frozen.run_last(1)
    baseline = _readout_of(clean.final_normed, readout)[0]
    state_norms = clean.states[0, : model.n_layers].float().norm(dim=-1).cpu().numpy()

    sizes = injection_sizes(eps, eps_mode, state_norms)
    step = torch.as_tensor(sizes, dtype=v.dtype, device=v.device)[:, None] * v
    if method == "naive":
        outputs = []
        for layer in range(model.n_layers):
            with torch.no_grad(), record(model) as steered, inject(model, {layer: step[layer]}):
                model.model(input_ids=ids[None])
            outputs.append(_readout_of(steered.final_normed, readout)[0])
        shifted = torch.stack(outputs)
    else:
        assert frozen is not None
        # Row k of the batch carries the injection at layer k only.
        eye = torch.eye(model.n_layers, device=v.device, dtype=v.dtype)
        vectors = {layer: eye[:, layer : layer + 1] * step[layer] for layer in range(model.n_layers)}
        with torch.no_grad(), record(model) as steered, inject(model, vectors):
            frozen.run_last(model.n_layers)
        shifted = _readout_of(steered.final_normed, readout)
    gains = ((shifted - baseline) / torch.as_tensor(sizes, dtype=shifted.dtype)[:, None]).cpu().numpy()

    gains = gains.astype(np.float64)
    return GainProfile(
        gains=gains[:, 0] if readout.n_outputs == 1 else gains,
        baseline=baseline.cpu().numpy().astype(np.float64),
        eps=sizes,
        method=method,
        readout=readout.to_dict(),
    )


def _adjoint_gains(
    model: SteerableModel, frozen: FrozenContext, v: torch.Tensor, readout: Readout
) -> tuple[np.ndarray, np.ndarray]:
    # One zero injection per layer that requires grad: d y / d delta_k is the
    # gradient with respect to an injection at block k's input.
    deltas = torch.zeros(model.n_layers, model.hidden_size, device=v.device, dtype=model.dtype, requires_grad=True)
    rows = []
    with torch.enable_grad(), record(model, detach=False) as steered:
        with inject(model, deltas):
            frozen.run_last(1)
        outputs = _readout_of(steered.final_normed, readout)[0]
        for output_index in range(readout.n_outputs):
            (gradient,) = torch.autograd.grad(
                outputs[output_index], deltas, retain_graph=output_index + 1 < readout.n_outputs
            )
            rows.append((gradient.double() * v).sum(-1))
    # gains (n_layers, n_outputs) and the baseline readout (n_outputs,)
    gains = torch.stack(rows, dim=1).detach().cpu().numpy().astype(np.float64)
    return gains, outputs.detach().cpu().numpy().astype(np.float64)
