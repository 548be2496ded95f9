"""End-to-end tests of the command-line interface on the tiny test models."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from steercontrol import cli
from steercontrol.interop import load_directions
from steercontrol.io import load_schedule, load_surrogate

TINY = ["--model", "tiny-llama"]


def _json_line(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """A surrogate identified on tiny-llama and a min-energy schedule on layers 2-3."""
    folder = tmp_path_factory.mktemp("cli")
    surrogate = folder / "surrogate.safetensors"
    schedule = folder / "schedule.safetensors"
    assert cli.main(["identify", *TINY, "--task", "sentiment", "--order", "8", "--out", str(surrogate), "--quiet"]) == 0
    planned = ["plan", *TINY, "--surrogate", str(surrogate), "--target-shift", "1.0", "--layers", "2-3"]
    assert cli.main([*planned, "--out", str(schedule), "--quiet"]) == 0
    return {"surrogate": surrogate, "schedule": schedule}


# Help and usage


def test_module_help_subprocess():
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [sys.executable, "-m", "steercontrol", "--help"], capture_output=True, text=True, env=environment, timeout=120
    )
    assert completed.returncode == 0, completed.stderr
    for command in ("gains", "identify", "plan", "generate", "export", "benchmark"):
        assert command in completed.stdout


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("gains", "units, ignored by adjoint (default: 0.1)"),
        ("identify", "(default: 32)"),
        ("plan", "in readout units"),
        ("generate", "(default: 40)"),
        ("export", "direction.{k-1}"),
    ],
)
def test_command_help_units_defaults(capsys, command, expected):
    assert cli.main([command, "--help"]) == 0
    output = " ".join(capsys.readouterr().out.split())
    assert expected in output
    assert "(default: smollm2-135m)" in output or command == "export"


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["unknown"],
        ["gains", *TINY],
        ["gains", *TINY, "--task", "sentiment", "--eps", "-1"],
        ["gains", *TINY, "--task", "sentiment", "--method", "secant"],
        ["identify", *TINY, "--task", "sentiment", "--order", "0", "--out", "x.safetensors"],
        ["plan", *TINY, "--surrogate", "s", "--target-shift", "abc", "--out", "o"],
        ["plan", *TINY, "--surrogate", "s", "--target-shift", "nan", "--out", "o"],
        ["plan", *TINY, "--surrogate", "s", "--target-shift", "1", "--layers", "5-2", "--out", "o"],
        ["plan", *TINY, "--surrogate", "s", "--target-shift", "1", "--layers", "a-b", "--out", "o"],
        ["generate", *TINY, "--schedule", "s", "--prompt", "x", "--positions", "everywhere"],
        ["export", "--schedule", "s", "--format", "onnx", "--out", "o"],
    ],
)
def test_invalid_usage_returns_2(capsys, argv):
    assert cli.main(argv) == 2
    assert "usage:" in capsys.readouterr().err


def test_heuristic_with_layers_returns_2(capsys, artifacts, tmp_path):
    argv = [
        "plan",
        *TINY,
        "--surrogate",
        str(artifacts["surrogate"]),
        "--target-shift",
        "1",
        "--schedule",
        "last_layer",
    ]
    assert cli.main([*argv, "--layers", "1-2", "--out", str(tmp_path / "o.safetensors")]) == 2
    assert "apply only to --schedule min_energy" in capsys.readouterr().err
    assert not (tmp_path / "o.safetensors").exists()


def test_parse_layers_ranges():
    assert cli.parse_layers("4-6") == (4, 5, 6)
    assert cli.parse_layers("0,3,7-8,3") == (0, 3, 7, 8)
    assert cli.parse_layers("2") == (2,)


# Commands


def test_gains_json(capsys):
    assert cli.main(["gains", *TINY, "--task", "sentiment", "--prompt", "A fine film.", "--json"]) == 0
    result = _json_line(capsys.readouterr().out)
    assert result["command"] == "gains"
    assert result["prompt"] == "A fine film."
    assert len(result["gains"]) == 4
    assert np.isfinite(result["gains"]).all()


def test_gains_table_default_prompt(capsys):
    assert cli.main(["gains", *TINY, "--task", "sentiment", "--method", "adjoint"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[1].split() == ["layer", "gain"]
    rows = [line.split() for line in lines[2:]]
    assert [int(row[0]) for row in rows] == [0, 1, 2, 3]
    assert all(np.isfinite(float(row[1])) for row in rows)


def test_gains_quiet_prints_only_json(capsys):
    assert cli.main(["gains", *TINY, "--task", "sentiment", "--quiet", "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0])["method"] == "batched"


def test_identify_saves_task_metadata(artifacts):
    surrogate = load_surrogate(artifacts["surrogate"])
    assert surrogate.n_layers == 4
    assert surrogate.metadata["task"] == "sentiment"
    assert surrogate.metadata["order"] == 8
    assert surrogate.input_directions is not None


def test_plan_min_energy_reaches_target(artifacts):
    schedule, vectors = load_schedule(artifacts["schedule"])
    assert schedule.name == "min_energy"
    assert vectors is not None
    assert vectors.shape == (4, 32)
    np.testing.assert_allclose(schedule.predicted_shift, [1.0], rtol=1e-6)
    # Layers outside --layers 2-3 carry no injection.
    assert not vectors[:2].any()
    assert vectors[2:].any()


@pytest.mark.parametrize("name", ["uniform_all", "last_layer", "middle_layer", "early_layer", "best_single_layer"])
def test_plan_heuristic_schedules(capsys, artifacts, tmp_path, name):
    out = tmp_path / f"{name}.safetensors"
    argv = ["plan", *TINY, "--surrogate", str(artifacts["surrogate"]), "--target-shift", "-0.5"]
    assert cli.main([*argv, "--schedule", name, "--out", str(out), "--json"]) == 0
    result = _json_line(capsys.readouterr().out)
    schedule, vectors = load_schedule(out)
    assert result["schedule"] == name
    assert schedule.name == name
    assert vectors.shape == (4, 32)
    np.testing.assert_allclose(schedule.predicted_shift, [-0.5], rtol=1e-6)


def test_plan_max_amplitude_caps_inputs(capsys, artifacts, tmp_path):
    argv = ["plan", *TINY, "--surrogate", str(artifacts["surrogate"]), "--target-shift", "0.4"]
    assert cli.main([*argv, "--max-amplitude", "0.3", "--out", str(tmp_path / "c.safetensors"), "--json"]) == 0
    result = _json_line(capsys.readouterr().out)
    assert max(result["input_norms"]) <= 0.3 * (1 + 1e-4)
    np.testing.assert_allclose(result["predicted_shift"], [0.4], rtol=1e-4)


def test_plan_infeasible_cap_returns_1(capsys, artifacts, tmp_path):
    argv = ["plan", *TINY, "--surrogate", str(artifacts["surrogate"]), "--target-shift", "50"]
    assert cli.main([*argv, "--max-amplitude", "0.01", "--out", str(tmp_path / "c.safetensors")]) == 1
    _assert_one_line_error(capsys.readouterr(), "max_amplitude=0.01")
    assert not (tmp_path / "c.safetensors").exists()


def test_generate_prints_both_continuations(capsys, artifacts):
    argv = ["generate", *TINY, "--schedule", str(artifacts["schedule"]), "--prompt", "The film was"]
    assert cli.main([*argv, "--max-new-tokens", "5", "--positions", "prompt", "--json"]) == 0
    output = capsys.readouterr().out
    result = _json_line(output)
    assert "Unsteered: " in output
    assert "Steered (min_energy, positions=prompt): " in output
    assert isinstance(result["unsteered"], str)
    assert isinstance(result["steered"], str)
    assert result["positions"] == "prompt"


@pytest.mark.parametrize(("file_format", "suffix"), [("gguf", ".gguf"), ("safetensors", ".safetensors")])
def test_export_round_trip(artifacts, tmp_path, file_format, suffix):
    out = tmp_path / f"vectors{suffix}"
    argv = ["export", "--schedule", str(artifacts["schedule"]), "--format", file_format, "--out", str(out)]
    assert cli.main([*argv, "--quiet"]) == 0
    _, vectors = load_schedule(artifacts["schedule"])
    loaded = load_directions(out, n_layers=4)
    np.testing.assert_allclose(loaded, vectors.astype(np.float32), rtol=0, atol=0)


def test_export_hint_follows_planned_model(tmp_path):
    import gguf

    gpt2 = ["--model", "tiny-gpt2"]
    surrogate, schedule, out = tmp_path / "s.safetensors", tmp_path / "p.safetensors", tmp_path / "v.gguf"
    assert cli.main(["identify", *gpt2, "--task", "sentiment", "--order", "8", "--out", str(surrogate), "--quiet"]) == 0
    planned = ["plan", *gpt2, "--surrogate", str(surrogate), "--target-shift", "1.0", "--layers", "2-3"]
    assert cli.main([*planned, "--out", str(schedule), "--quiet"]) == 0
    assert cli.main(["export", "--schedule", str(schedule), "--format", "gguf", "--out", str(out), "--quiet"]) == 0
    hint = gguf.GGUFReader(out).get_field("controlvector.model_hint")
    assert hint is not None
    assert hint.contents() == "gpt2"


def test_benchmark_forwards_arguments(capsys):
    argv = ["benchmark", *TINY, "--tasks", "sentiment", "--contexts", "1", "--pooled-contexts", "1"]
    assert cli.main([*argv, "--iterations", "0", "--order", "4", "--no-progress", "--json"]) == 0
    result = _json_line(capsys.readouterr().out)
    assert result["model"] == "tiny-llama-4x32-seed0"
    assert "sentiment" in result["tasks"]


def test_benchmark_invalid_option_returns_2(capsys):
    assert cli.main(["benchmark", "--contexts", "0"]) == 2
    assert "--contexts must be >= 1" in capsys.readouterr().err


def test_benchmark_missing_script_returns_1(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(cli, "_BENCHMARK_SCRIPT", tmp_path / "benchmarks" / "energy_vs_heuristic.py")
    assert cli.main(["benchmark", "--quick"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: the benchmark script")
    assert "source checkout" in error


# Failures


def _assert_one_line_error(captured, *fragments: str) -> None:
    error = captured.err.strip()
    assert error.startswith("error: ")
    assert "Traceback" not in error
    assert len(error.splitlines()) == 1
    for fragment in fragments:
        assert fragment in error


def test_missing_surrogate_returns_1(capsys, tmp_path):
    missing = tmp_path / "absent.safetensors"
    argv = ["plan", *TINY, "--surrogate", str(missing), "--target-shift", "1", "--out", str(tmp_path / "o")]
    assert cli.main(argv) == 1
    _assert_one_line_error(capsys.readouterr(), str(missing), "does not exist")


def test_missing_schedule_returns_1(capsys, tmp_path):
    missing = tmp_path / "absent.safetensors"
    assert cli.main(["generate", *TINY, "--schedule", str(missing), "--prompt", "x"]) == 1
    _assert_one_line_error(capsys.readouterr(), str(missing), "does not exist")


def test_unknown_task_returns_1(capsys):
    assert cli.main(["gains", *TINY, "--task", "weather"]) == 1
    _assert_one_line_error(capsys.readouterr(), "'weather'", "sentiment")


def test_order_above_hidden_size_returns_1(capsys, tmp_path):
    argv = ["identify", *TINY, "--task", "sentiment", "--order", "64", "--out", str(tmp_path / "s.safetensors")]
    assert cli.main(argv) == 1
    _assert_one_line_error(capsys.readouterr(), "order=64", "hidden size 32")
    assert not (tmp_path / "s.safetensors").exists()


def test_plan_on_other_model_returns_1(capsys, artifacts, tmp_path):
    argv = ["plan", "--model", "tiny-gpt2", "--surrogate", str(artifacts["surrogate"]), "--target-shift", "1"]
    assert cli.main([*argv, "--out", str(tmp_path / "o.safetensors")]) == 1
    _assert_one_line_error(capsys.readouterr(), "tiny-llama-4x32-seed0", "tiny-gpt2-4x32-seed0")
    assert not (tmp_path / "o.safetensors").exists()


def test_generate_on_other_model_returns_1(capsys, artifacts):
    argv = ["generate", "--model", "tiny-gpt2", "--schedule", str(artifacts["schedule"]), "--prompt", "x"]
    assert cli.main(argv) == 1
    _assert_one_line_error(capsys.readouterr(), "tiny-llama-4x32-seed0", "tiny-gpt2-4x32-seed0")


def test_generate_with_surrogate_file_returns_1(capsys, artifacts):
    argv = ["generate", *TINY, "--schedule", str(artifacts["surrogate"]), "--prompt", "x"]
    assert cli.main(argv) == 1
    _assert_one_line_error(capsys.readouterr(), "contains a steercontrol surrogate")


def test_export_first_layers_to_gguf_returns_1(capsys, artifacts, tmp_path):
    schedule = tmp_path / "early.safetensors"
    argv = ["plan", *TINY, "--surrogate", str(artifacts["surrogate"]), "--target-shift", "1"]
    assert cli.main([*argv, "--schedule", "early_layer", "--out", str(schedule), "--quiet"]) == 0
    out = tmp_path / "early.gguf"
    assert cli.main(["export", "--schedule", str(schedule), "--format", "gguf", "--out", str(out)]) == 1
    _assert_one_line_error(capsys.readouterr(), "llama.cpp loads only indices >= 1")
    assert not out.exists()


def test_plan_zero_target_fails_before_loading(tmp_path, capsys, monkeypatch):
    from steercontrol import cli

    def forbidden(name):
        raise AssertionError("the model must not load for an invalid target")

    monkeypatch.setattr(cli, "_load_model", forbidden)
    code = cli.main(
        [
            "plan",
            "--model",
            "tiny-llama",
            "--surrogate",
            str(tmp_path / "s.safetensors"),
            "--target-shift",
            "0",
            "--out",
            str(tmp_path / "p.safetensors"),
        ]
    )
    assert code == 1
    assert "Invalid --target-shift 0" in capsys.readouterr().err


def test_generate_missing_schedule_fails_before_loading(tmp_path, capsys, monkeypatch):
    from steercontrol import cli

    def forbidden(name):
        raise AssertionError("the model must not load for a missing file")

    monkeypatch.setattr(cli, "_load_model", forbidden)
    code = cli.main(
        ["generate", "--model", "tiny-llama", "--schedule", str(tmp_path / "none.safetensors"), "--prompt", "hi"]
    )
    assert code == 1
    assert "does not exist" in capsys.readouterr().err
