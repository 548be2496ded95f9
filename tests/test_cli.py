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
    error = capsys.readouterr()
    _assert_one_line_error(error, "max_amplitude=0.01")
    assert "raise --max-amplitude or widen --layers" in error.err
    assert not (tmp_path / "c.safetensors").exists()


@pytest.mark.parametrize(
    ("command", "option", "kind", "hint"),
    [
        ("generate", "--schedule", "surrogate", "pass it to plan --surrogate"),
        ("plan", "--surrogate", "schedule", "pass it to generate --schedule"),
    ],
)
def test_wrong_artifact_kind_names_the_option(capsys, artifacts, tmp_path, command, option, kind, hint):
    argv = [command, *TINY, option, str(artifacts[kind])]
    argv += ["--prompt", "x"] if command == "generate" else ["--target-shift", "1", "--out", str(tmp_path / "p.st")]
    assert cli.main(argv) == 1
    assert hint in capsys.readouterr().err


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


def test_order_above_hidden_size_returns_2(capsys, tmp_path):
    argv = ["identify", *TINY, "--task", "sentiment", "--order", "64", "--out", str(tmp_path / "s.safetensors")]
    assert cli.main([*argv, "--report", str(tmp_path / "report")]) == 2
    _assert_one_line_usage_error(capsys.readouterr(), "identify", "--order 64", "hidden size 32", "--order 32 or less")
    assert not (tmp_path / "s.safetensors").exists()
    assert not (tmp_path / "report").exists()


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
    assert code == 2
    _assert_one_line_usage_error(capsys.readouterr(), "plan", "--target-shift 0", "non-zero")


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


def _assert_one_line_usage_error(captured, command: str, *fragments: str) -> None:
    error = captured.err.strip()
    assert error.startswith(f"steercontrol {command}: error: ")
    assert "Traceback" not in error
    assert len(error.splitlines()) == 1
    for fragment in fragments:
        assert fragment in error


# Exit codes


def _forbid_model_load(monkeypatch) -> None:
    def forbidden(name):
        raise AssertionError("the model must not load for an invalid argument")

    monkeypatch.setattr(cli, "_load_model", forbidden)


PLAN = ["plan", *TINY, "--surrogate", "s.safetensors", "--out", "o.safetensors"]


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["gains", *TINY, "--task", "weather"], ["--task 'weather'", "sentiment, toxicity, irony, hate", ".csv"]),
        (["identify", *TINY, "--task", "tasks.txt", "--out", "s.safetensors"], ["--task 'tasks.txt'", ".jsonl"]),
        (["gains", *TINY, "--task", "sentiment", "--prompt", ""], ["--prompt is empty", "context text"]),
        ([*PLAN, "--target-shift", "0"], ["--target-shift 0", "non-zero readout change"]),
        (
            [*PLAN, "--target-shift", "1", "--schedule", "uniform_all", "--max-amplitude", "1"],
            ["apply only to --schedule min_energy, not uniform_all", "pass --schedule min_energy"],
        ),
    ],
)
def test_invalid_value_returns_2_before_loading(capsys, monkeypatch, tmp_path, argv, fragments):
    _forbid_model_load(monkeypatch)
    monkeypatch.chdir(tmp_path)
    assert cli.main([*argv, "--report", "report"]) == 2
    _assert_one_line_usage_error(capsys.readouterr(), argv[0], *fragments)
    # Neither the report nor an --out file was written.
    assert list(tmp_path.iterdir()) == []


def test_generate_empty_prompt_returns_2(capsys, monkeypatch, artifacts):
    _forbid_model_load(monkeypatch)
    assert cli.main(["generate", *TINY, "--schedule", str(artifacts["schedule"]), "--prompt", ""]) == 2
    _assert_one_line_usage_error(capsys.readouterr(), "generate", "--prompt is empty")


def test_plan_layers_outside_surrogate_returns_2(capsys, artifacts, tmp_path):
    out, report = tmp_path / "o.safetensors", tmp_path / "report"
    argv = ["plan", *TINY, "--surrogate", str(artifacts["surrogate"]), "--target-shift", "1", "--layers", "2-9"]
    assert cli.main([*argv, "--out", str(out), "--report", str(report)]) == 2
    _assert_one_line_usage_error(capsys.readouterr(), "plan", "[4, 5, 6, 7, 8, 9]", "4 layers", "0-3")
    assert not out.exists()
    assert not report.exists()


@pytest.fixture(scope="module")
def vector_surrogate(tmp_path_factory):
    """A surrogate of tiny-llama with two inputs per layer, which only min_energy can plan on."""
    from steercontrol.io import save_surrogate
    from steercontrol.system import LayerVaryingSurrogate
    from steercontrol.testing import tiny_model

    rng = np.random.default_rng(0)
    model = tiny_model("llama")
    surrogate = LayerVaryingSurrogate(
        A=[0.5 * np.eye(3) + 0.1 * rng.normal(size=(3, 3)) for _ in range(4)],
        B=[rng.normal(size=(3, 2)) for _ in range(4)],
        C=np.ones((1, 3)),
        input_directions=[np.linalg.qr(rng.normal(size=(32, 2)))[0] for _ in range(4)],
        metadata={"task": "sentiment", "order": 3, "basis": "random", "inputs": "vector"},
    )
    return save_surrogate(surrogate, tmp_path_factory.mktemp("vector") / "vector.safetensors", model=model)


def test_plan_heuristic_on_vector_inputs_returns_2(capsys, vector_surrogate, tmp_path):
    out = tmp_path / "o.safetensors"
    argv = ["plan", *TINY, "--surrogate", str(vector_surrogate), "--target-shift", "1", "--schedule", "last_layer"]
    assert cli.main([*argv, "--out", str(out)]) == 2
    _assert_one_line_usage_error(capsys.readouterr(), "plan", "--schedule last_layer", "input widths [2]", "min_energy")
    assert not out.exists()


def test_corrupt_surrogate_returns_1(capsys, tmp_path):
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken")
    argv = ["plan", *TINY, "--surrogate", str(corrupt), "--target-shift", "1", "--out", str(tmp_path / "o")]
    assert cli.main([*argv, "--report", str(tmp_path / "report")]) == 1
    _assert_one_line_error(capsys.readouterr(), str(corrupt), "not a readable safetensors file")
    assert not (tmp_path / "report").exists()


def test_model_load_failure_returns_1(capsys, monkeypatch, tmp_path):
    from steercontrol.exceptions import ModelLoadError

    def failing(name):
        raise ModelLoadError(f"Could not load model {name!r}.")

    monkeypatch.setattr(cli, "_load_model", failing)
    argv = ["gains", "--model", "absent-model", "--task", "sentiment", "--report", str(tmp_path / "report")]
    assert cli.main(argv) == 1
    _assert_one_line_error(capsys.readouterr(), "Could not load model 'absent-model'")
    assert not (tmp_path / "report").exists()


def test_missing_task_file_returns_1(capsys, tmp_path):
    missing = tmp_path / "absent.csv"
    assert cli.main(["gains", *TINY, "--task", str(missing), "--report", str(tmp_path / "report")]) == 1
    _assert_one_line_error(capsys.readouterr(), str(missing), "not found")
    assert not (tmp_path / "report").exists()


# Reports


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _read_report(path) -> str:
    from pathlib import Path

    path = Path(path)
    assert path.name == "report.md"
    return path.read_text(encoding="utf-8")


def _table_after(markdown: str, first_header: str) -> list[list[str]]:
    """Return the body rows of the Markdown table whose header row starts with ``first_header``."""
    lines = markdown.splitlines()
    starts = [
        i
        for i, line in enumerate(lines[:-1])
        if line.startswith(f"| {first_header} |") and lines[i + 1].startswith("|---")
    ]
    assert len(starts) == 1, f"expected one table starting with {first_header!r}"
    rows = []
    for line in lines[starts[0] + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split(" | ")])
    return rows


def _setting(markdown: str, name: str) -> str:
    values = [row[1] for row in _table_after(markdown, "setting") if row[0] == name]
    assert len(values) == 1, f"expected one setting {name!r}"
    return values[0]


def _assert_figures(folder, markdown: str, expected: set[str]) -> None:
    """Check that the report links exactly ``expected`` by relative paths, and that each is a non-empty PNG."""
    import re

    from PIL import Image

    linked = set(re.findall(r"!\[[^\]]+\]\(([^)]+)\)", markdown))
    assert linked == expected
    for name in linked:
        path = folder / name
        assert path.is_file()
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        with Image.open(path) as image:
            width, height = image.size
        assert width >= 300
        assert height >= 200


def test_gains_report_matches_json(capsys, tmp_path):
    folder = tmp_path / "gains-report"
    prompt = "A fine | film, ```quoted```."
    argv = ["gains", *TINY, "--task", "sentiment", "--prompt", prompt, "--eps", "0.05", "--report", str(folder)]
    assert cli.main([*argv, "--json"]) == 0
    result = _json_line(capsys.readouterr().out)
    markdown = _read_report(result["report"])

    assert result["report"] == str(folder / "report.md")
    assert sorted(path.name for path in folder.iterdir()) == ["gains.png", "report.md"]
    for section in ("## Run", "## Settings", "## Context", "## Gain profile"):
        assert section in markdown
    assert "tiny-llama-4x32-seed0: 4 blocks, hidden size 32" in markdown
    assert "| task | sentiment:" in markdown
    assert _setting(markdown, "method") == "batched"
    assert _setting(markdown, "eps") == "0.05"
    assert "residual-stream units" in markdown
    # The prompt is quoted verbatim, inside a fence longer than its own backtick runs.
    assert f"````text\n{prompt}\n````" in markdown
    _assert_figures(folder, markdown, {"gains.png"})

    rows = _table_after(markdown, "layer k")
    assert [int(row[0]) for row in rows] == [0, 1, 2, 3]
    np.testing.assert_allclose([float(row[1]) for row in rows], result["gains"], rtol=1e-5)


def test_gains_report_adjoint_states_eps_unused(capsys, tmp_path):
    folder = tmp_path / "adjoint"
    assert cli.main(["gains", *TINY, "--task", "sentiment", "--method", "adjoint", "--report", str(folder)]) == 0
    output = capsys.readouterr().out
    markdown = _read_report(folder / "report.md")
    assert f"Wrote {folder / 'report.md'}" in output
    assert _setting(markdown, "method") == "adjoint"
    assert _setting(markdown, "eps") == "not used"


def test_identify_report_matches_json(capsys, tmp_path):
    folder = tmp_path / "identify-report"
    out = tmp_path / "s.safetensors"
    argv = ["identify", *TINY, "--task", "sentiment", "--order", "8", "--out", str(out), "--report", str(folder)]
    assert cli.main([*argv, "--json"]) == 0
    result = _json_line(capsys.readouterr().out)
    markdown = _read_report(result["report"])

    for section in ("## Run", "## Settings", "## Context", "## Gain profiles"):
        assert section in markdown
    assert _setting(markdown, "order") == "8"
    assert _setting(markdown, "basis") == "reachable"
    assert _setting(markdown, "measured gains: eps") == "0.1"
    assert f"| surrogate file | {out} |" in markdown
    _assert_figures(folder, markdown, {"gains.png"})

    rows = _table_after(markdown, "layer k")
    measured = [float(row[1]) for row in rows]
    predicted = [float(row[2]) for row in rows]
    np.testing.assert_allclose(measured, result["measured_gains"], rtol=1e-5)
    np.testing.assert_allclose(predicted, result["predicted_gains"], rtol=1e-5)
    np.testing.assert_allclose(predicted, load_surrogate(out).gain_profile(), rtol=1e-5)
    np.testing.assert_allclose([float(row[3]) for row in rows], np.subtract(predicted, measured), rtol=1e-4, atol=1e-6)

    # The agreement in the report and the JSON are the correlations of the two profiles.
    from scipy.stats import pearsonr, spearmanr

    spearman = float(spearmanr(result["predicted_gains"], result["measured_gains"])[0])
    pearson = float(pearsonr(result["predicted_gains"], result["measured_gains"])[0])
    assert result["spearman"] == pytest.approx(spearman)
    assert result["pearson"] == pytest.approx(pearson)
    assert f"Spearman {spearman:.6g}, Pearson {pearson:.6g}" in markdown

    # The report's measured gains are those that 'gains' prints for the same context and eps.
    assert cli.main(["gains", *TINY, "--task", "sentiment", "--eps", "0.1", "--json", "--quiet"]) == 0
    np.testing.assert_allclose(result["measured_gains"], _json_line(capsys.readouterr().out)["gains"], rtol=1e-9)


def test_identify_without_report_json_unchanged(capsys, tmp_path):
    argv = ["identify", *TINY, "--task", "sentiment", "--order", "4", "--out", str(tmp_path / "s.safetensors")]
    assert cli.main([*argv, "--json"]) == 0
    result = _json_line(capsys.readouterr().out)
    for key in ("report", "measured_gains", "spearman", "pearson"):
        assert key not in result
    assert sorted(path.name for path in tmp_path.iterdir()) == ["s.safetensors"]


def test_plan_report_matches_json(capsys, artifacts, tmp_path):
    folder = tmp_path / "plan-report"
    argv = ["plan", *TINY, "--surrogate", str(artifacts["surrogate"]), "--target-shift", "0.4", "--layers", "0,2-3"]
    argv += ["--max-amplitude", "0.3", "--out", str(tmp_path / "p.safetensors"), "--report", str(folder)]
    assert cli.main([*argv, "--json"]) == 0
    result = _json_line(capsys.readouterr().out)
    markdown = _read_report(result["report"])

    for section in ("## Run", "## Settings", "## Context", "## Result", "## Schedule per layer"):
        assert section in markdown
    assert "## Comparison with heuristic schedules" in markdown
    assert _setting(markdown, "target_shift") == "0.4"
    assert _setting(markdown, "layers") == "0, 2-3"
    assert _setting(markdown, "max_amplitude") == "0.3"
    assert _setting(markdown, "schedule") == "min_energy"
    _assert_figures(folder, markdown, {"schedule.png"})

    rows = _table_after(markdown, "layer k")
    norms = [float(row[2]) for row in rows]
    energies = [float(row[3]) for row in rows]
    shares = [float(row[4]) for row in rows]
    np.testing.assert_allclose(np.abs([float(row[1]) for row in rows]), result["input_norms"], rtol=1e-5)
    np.testing.assert_allclose(norms, result["input_norms"], rtol=1e-5)
    np.testing.assert_allclose(energies, np.square(result["input_norms"]), rtol=1e-5, atol=1e-12)
    assert norms[1] == 0.0
    assert sum(shares) == pytest.approx(100.0, rel=1e-4)
    result_rows = {row[0]: row[1] for row in _table_after(markdown, "quantity")}
    assert float(result_rows["total energy"]) == pytest.approx(result["energy"], rel=1e-5)
    assert float(result_rows["predicted shift"]) == pytest.approx(0.4, rel=1e-4)

    comparison = {row[0]: row for row in _table_after(markdown, "schedule")}
    assert float(comparison["min_energy (this schedule)"][3]) == 1.0
    for name in ("uniform_all", "last_layer", "best_single_layer"):
        expected = result["heuristics"][name]
        assert expected["error"] is None
        assert float(comparison[name][2]) == pytest.approx(expected["energy"], rel=1e-5)
        assert float(comparison[name][3]) == pytest.approx(expected["energy_ratio"], rel=1e-5)
        assert expected["energy_ratio"] == pytest.approx(expected["energy"] / result["energy"])
    assert comparison["uniform_all"][1] == "0, 2-3"  # the plan's allowed layers, not all of them
    assert comparison["last_layer"][1] == "3"


def test_plan_report_ratios_match_linear_oracle(capsys, artifacts, tmp_path):
    argv = ["plan", *TINY, "--surrogate", str(artifacts["surrogate"]), "--target-shift", "1"]
    argv += ["--out", str(tmp_path / "p.safetensors"), "--report", str(tmp_path / "report"), "--json"]
    assert cli.main(argv) == 0
    heuristics = _json_line(capsys.readouterr().out)["heuristics"]
    gains = load_surrogate(artifacts["surrogate"]).gain_profile()

    # Against the unconstrained minimum-energy schedule, with L layers of scalar gain g_k:
    # uniform / optimal = L sum g^2 / (sum g)^2 and layer j alone / optimal = sum g^2 / g_j^2.
    total = float(np.sum(gains**2))
    best = int(np.argmax(np.abs(gains)))
    assert heuristics["uniform_all"]["energy_ratio"] == pytest.approx(4 * total / float(np.sum(gains)) ** 2)
    assert heuristics["last_layer"]["energy_ratio"] == pytest.approx(total / float(gains[-1]) ** 2)
    assert heuristics["best_single_layer"]["energy_ratio"] == pytest.approx(total / float(gains[best]) ** 2)
    assert heuristics["best_single_layer"]["layers"] == [best]
    for name, row in heuristics.items():
        assert row["energy_ratio"] >= 1 - 1e-9, name


def test_plan_report_vector_inputs_notes_heuristics(capsys, vector_surrogate, tmp_path):
    folder = tmp_path / "report"
    argv = ["plan", *TINY, "--surrogate", str(vector_surrogate), "--target-shift", "1", "--layers", "1-3"]
    assert cli.main([*argv, "--out", str(tmp_path / "p.safetensors"), "--report", str(folder), "--json"]) == 0
    result = _json_line(capsys.readouterr().out)
    markdown = _read_report(folder / "report.md")

    rows = _table_after(markdown, "layer k")
    assert rows[0][1] == "[0, 0]"
    np.testing.assert_allclose([float(row[2]) for row in rows], result["input_norms"], rtol=1e-5)
    comparison = {row[0]: row for row in _table_after(markdown, "schedule")}
    for name in ("uniform_all", "last_layer", "best_single_layer"):
        assert result["heuristics"][name]["energy_ratio"] is None
        assert "one input per layer" in result["heuristics"][name]["error"]
        assert comparison[name][3] == "n/a"
        assert "one input per layer" in comparison[name][4]
    _assert_figures(folder, markdown, {"schedule.png"})


def test_report_into_existing_folder_keeps_other_files(capsys, tmp_path):
    folder = tmp_path / "report"
    folder.mkdir()
    (folder / "notes.txt").write_text("kept")
    (folder / "report.md").write_text("old report")
    assert cli.main(["gains", *TINY, "--task", "sentiment", "--report", str(folder), "--quiet"]) == 0
    assert (folder / "notes.txt").read_text() == "kept"
    assert (folder / "report.md").read_text().startswith("# Layer gains of tiny-llama-4x32-seed0")
    assert (folder / "gains.png").read_bytes()[:8] == PNG_SIGNATURE
    assert sorted(path.name for path in tmp_path.iterdir()) == ["report"]


@pytest.mark.parametrize("existing", [False, True])
def test_report_failure_leaves_no_partial_output(capsys, monkeypatch, tmp_path, existing):
    from steercontrol import report

    folder = tmp_path / "report"
    if existing:
        folder.mkdir()
        (folder / "report.md").write_text("old report")

    def failing_plot(path, *args, **kwargs):
        path.write_bytes(b"partial")
        raise OSError(f"No space left on device: {path.name}")

    monkeypatch.setattr(report, "plot_layer_profiles", failing_plot)
    assert cli.main(["gains", *TINY, "--task", "sentiment", "--report", str(folder)]) == 1
    _assert_one_line_error(capsys.readouterr(), "No space left on device: gains.png")
    # Neither the folder nor the hidden staging folder next to it is left behind.
    assert sorted(path.name for path in tmp_path.iterdir()) == (["report"] if existing else [])
    if existing:
        assert sorted(path.name for path in folder.iterdir()) == ["report.md"]
        assert (folder / "report.md").read_text() == "old report"


def test_report_not_written_when_plan_fails(capsys, artifacts, tmp_path):
    argv = ["plan", *TINY, "--surrogate", str(artifacts["surrogate"]), "--target-shift", "50"]
    argv += ["--max-amplitude", "0.01", "--out", str(tmp_path / "c.safetensors"), "--report", str(tmp_path / "r")]
    assert cli.main(argv) == 1
    _assert_one_line_error(capsys.readouterr(), "max_amplitude=0.01")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", ["file", "missing parent"])
def test_report_path_unusable_returns_1_before_loading(capsys, monkeypatch, tmp_path, kind):
    _forbid_model_load(monkeypatch)
    if kind == "file":
        target = tmp_path / "report"
        target.write_text("a file")
        expected = "because it is a file"
    else:
        target = tmp_path / "missing" / "report"
        expected = f"the folder {tmp_path / 'missing'} does not exist"
    assert cli.main(["gains", *TINY, "--task", "sentiment", "--report", str(target)]) == 1
    _assert_one_line_error(capsys.readouterr(), str(target), expected)
    assert not (tmp_path / "missing").exists()
    if kind == "file":
        assert target.read_text() == "a file"


# Report building blocks


def test_report_markdown_helpers():
    from steercontrol.report_format import fenced_block, format_layers, format_number, markdown_table

    assert format_layers([7, 0, 1, 2, 3, 9, 10]) == "0-3, 7, 9-10"
    assert format_layers([5]) == "5"
    assert format_number(None) == "n/a"
    assert format_number(float("nan")) == "n/a"
    assert format_number(1234567.0) == "1.23457e+06"
    assert markdown_table(["a", "b"], [["x|y", "line\nbreak"]]) == [
        "| a | b |",
        "|---|---|",
        "| x\\|y | line break |",
        "",
    ]
    assert fenced_block("plain") == ["```text", "plain", "```", ""]
    assert fenced_block("has ```` four") == ["`````text", "has ```` four", "`````", ""]


def test_gain_agreement_undefined_for_constant_profile():
    from steercontrol.exceptions import ShapeError
    from steercontrol.report import gain_agreement

    assert all(np.isnan(gain_agreement([1.0, 1.0, 1.0], [0.1, 0.5, 0.2])))
    assert gain_agreement([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]) == pytest.approx((-1.0, -1.0))
    with pytest.raises(ShapeError, match="same length"):
        gain_agreement([1.0, 2.0], [1.0, 2.0, 3.0])
