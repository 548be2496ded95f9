"""steercontrol: control theory for steering language models.

Depth is time: the last token's residual stream at the input of block k is
the state x_k of a discrete-time system, and a vector added there is its
input. steercontrol identifies a low-order linear surrogate of these depth
dynamics around a context, predicts every layer's gain, plans
minimum-energy injection schedules, and applies them to the full model with
forward hooks.

Public names are imported lazily, so that the NumPy-only modules
(``system``, ``gramian``, ``reduction``, ``schedule``, ``controller``,
``heuristics``) load without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "load_model": "steercontrol.models",
    "wrap_model": "steercontrol.models",
    "SteerableModel": "steercontrol.models",
    "EMBEDDED_MODELS": "steercontrol.models",
    "inject": "steercontrol.hooks",
    "record": "steercontrol.hooks",
    "load_task": "steercontrol.concepts",
    "concept_directions": "steercontrol.concepts",
    "projection_readout": "steercontrol.concepts",
    "measure_gains": "steercontrol.sensitivity",
    "Controller": "steercontrol.controller",
    "Schedule": "steercontrol.schedule",
    "calibrate": "steercontrol.evaluate",
    "steer": "steercontrol.generation",
    "save_surrogate": "steercontrol.io",
    "load_surrogate": "steercontrol.io",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'steercontrol' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
