"""Shared fixtures: tiny seeded models and the embedded models."""

from __future__ import annotations

import os

import pytest
import torch

from steercontrol.testing import TINY_FAMILIES, tiny_model

# The tests run small models, for which thread start-up costs more than it
# saves. With one thread the suite also stays fast on a busy machine.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _no_model_hub(monkeypatch):
    """Keep every test off the network: hub ids resolve from the local hub cache only."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(params=TINY_FAMILIES)
def any_tiny(request):
    """A tiny model of each supported family."""
    return tiny_model(request.param, seed=0)


@pytest.fixture(scope="session")
def tiny_llama():
    return tiny_model("llama", n_layers=4, hidden_size=32, seed=0)


@pytest.fixture(scope="session")
def tiny_gpt2():
    return tiny_model("gpt2", n_layers=4, hidden_size=32, seed=0)


def _load_embedded_or_skip(name: str):
    from steercontrol.exceptions import ModelLoadError
    from steercontrol.models import EMBEDDED_MODELS, load_model

    try:
        return load_model(name)
    except ModelLoadError:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"embedded model {name} not installed ({EMBEDDED_MODELS[name].install_command})")


@pytest.fixture(scope="session")
def embedded():
    """The embedded SmolLM2 model; skipped only where the wheel is missing and CI is not set."""
    return _load_embedded_or_skip("smollm2-135m")


@pytest.fixture(scope="session")
def embedded_gemma():
    """The embedded Gemma 3 270M model; skipped only where its package is missing and CI is not set."""
    return _load_embedded_or_skip("gemma3-270m")
