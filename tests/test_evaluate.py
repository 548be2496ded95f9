"""Calibration of schedules on the full model, and the energy benchmark script."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from steercontrol.concepts import probe_readout
from steercontrol.controller import Controller
from steercontrol.evaluate import calibrate, next_token_kl, refine_min_energy, steered_states
from steercontrol.exceptions import CalibrationWarning, ConfigurationError, ShapeError
from steercontrol.heuristics import heuristic_schedules
from steercontrol.identify import identify
from steercontrol.prefix import FrozenContext
from steercontrol.testing import planted_linear_model, tiny_model

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))


def _planted_controller(target):
    model, _, subspace = planted_linear_model(n_layers=6, hidden_size=12, rank=None, seed=3)
    rng = np.random.default_rng(3)
    directions = rng.standard_normal((7, 12))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    readout = probe_readout(rng.standard_normal(12))
    context = FrozenContext(model, model.tokenize("abc")["input_ids"][0])
    surrogate = identify(model, context, directions, readout, order=12).surrogate
    return model, context, readout, surrogate


def test_linear_model_energy_ratios_match_closed_form():
    target = 0.7
    model, context, readout, surrogate = _planted_controller(target)
    planned = heuristic_schedules(Controller(surrogate), target)
    vectors = {name: s.vectors(surrogate.input_directions) for name, s in planned.items()}
    results = calibrate(model, context, vectors, readout, target, tolerance=1e-6)
    g = surrogate.gain_profile()
    reference = results["min_energy"].energy
    assert np.isclose(reference, target**2 / np.sum(g**2), rtol=1e-4)
    uniform = results["uniform_all"].energy / reference
    assert np.isclose(uniform, len(g) * np.sum(g**2) / np.sum(g) ** 2, rtol=1e-4)
    last = results["last_layer"].energy / reference
    assert np.isclose(last, np.sum(g**2) / g[-1] ** 2, rtol=1e-4)


def test_refinement_keeps_linear_optimum():
    target = 0.7
    model, context, readout, surrogate = _planted_controller(target)
    directions = np.stack([d[:, 0] for d in surrogate.input_directions] + [surrogate.input_directions[0][:, 0]])
    optimum = Controller(surrogate).min_energy(target).amplitude_profile()
    refined, history = refine_min_energy(
        model, context, directions, readout, target, 0.5 * optimum, iterations=2, order=12
    )
    assert np.allclose(refined, optimum, rtol=1e-6)
    assert np.isclose(history[0]["shift"], 0.5 * target, rtol=1e-6)


def test_steered_states_shape_checked(tiny_llama):
    context = FrozenContext(tiny_llama, torch.tensor([1, 2, 3]))
    with pytest.raises(ShapeError, match="vectors must be"):
        steered_states(tiny_llama, context, np.zeros((3, 32)))


def test_bisection_hits_target_on_tiny_model(tiny_llama):
    rng = np.random.default_rng(0)
    directions = rng.standard_normal((5, 32))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    readout = probe_readout(rng.standard_normal(32))
    context = FrozenContext(tiny_llama, tiny_llama.tokenize("calibrate me")["input_ids"][0])
    surrogate = identify(tiny_llama, context, directions, readout, order=8).surrogate
    planned = heuristic_schedules(Controller(surrogate), 0.3)
    shapes = {name: planned[name].vectors(surrogate.input_directions) for name in ("min_energy", "uniform_all")}
    results = calibrate(tiny_llama, context, shapes, readout, 0.3, tolerance=0.01)
    for result in results.values():
        assert result.reached
        assert abs(result.achieved_shift / 0.3 - 1) <= 0.01
        assert result.kl >= 0


def test_unreachable_schedule_reported(tiny_llama):
    readout = probe_readout(np.ones(32))
    context = FrozenContext(tiny_llama, tiny_llama.tokenize("abc")["input_ids"][0])
    with pytest.warns(CalibrationWarning, match="'nothing' did not reach"):
        results = calibrate(tiny_llama, context, {"nothing": np.zeros((4, 32))}, readout, 1.0)
    assert not results["nothing"].reached
    assert np.isnan(results["nothing"].energy)


@pytest.mark.parametrize("target", [0.0, float("nan")])
def test_invalid_target_rejected(tiny_llama, target):
    context = FrozenContext(tiny_llama, torch.tensor([1, 2, 3]))
    with pytest.raises(ConfigurationError, match="target_shift"):
        calibrate(tiny_llama, context, {"a": np.zeros((4, 32))}, probe_readout(np.ones(32)), target)


def test_wrong_schedule_shape_rejected(tiny_llama):
    context = FrozenContext(tiny_llama, torch.tensor([1, 2, 3]))
    with pytest.raises(ShapeError, match="'bad' has shape"):
        calibrate(tiny_llama, context, {"bad": np.zeros((3, 32))}, probe_readout(np.ones(32)), 1.0)


def test_kl_zero_for_identical_logits():
    logits = torch.randn(2, 10)
    assert torch.allclose(next_token_kl(logits, logits), torch.zeros(2), atol=1e-6)


def test_energy_benchmark_end_to_end(tmp_path, capsys):
    import energy_vs_heuristic

    model = tiny_model("llama", n_layers=4, hidden_size=32)
    argv = [
        "--tasks",
        "sentiment",
        "--contexts",
        "2",
        "--pooled-contexts",
        "2",
        "--order",
        "8",
        "--json",
        "--no-progress",
        "--out",
        str(tmp_path),
    ]
    energy_vs_heuristic.main(argv, model=model)
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    schedules = summary["tasks"]["sentiment"]["schedules"]
    assert summary["seconds"] > 0
    assert schedules["min_energy"]["energy_ratio_median"] == 1.0
    assert {"uniform_all", "last_layer", "best_single_layer", "min_energy_iterated"} <= set(schedules)
    for name in (
        "report.md",
        "results.json",
        "contexts.csv",
        "gain_profiles.png",
        "energy_ratios.png",
        "schedules.png",
    ):
        assert (tmp_path / name).stat().st_size > 0


def test_energy_benchmark_rejects_unknown_task():
    import energy_vs_heuristic

    with pytest.raises(SystemExit):
        energy_vs_heuristic.parse_args(["--tasks", "sarcasm"])
