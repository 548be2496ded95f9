"""End-to-end runs of the gain-speed and agreement benchmarks on a tiny model."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
from pathlib import Path
from types import ModuleType

import pytest

from steercontrol.concepts import BUILTIN_TASKS
from steercontrol.testing import tiny_model

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_script(name: str) -> ModuleType:
    # The benchmarks folder is not a package, so load the script from its path.
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def last_json_line(capsys: pytest.CaptureFixture[str]) -> dict:
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines, "the script printed nothing to standard output"
    return json.loads(lines[-1])


@pytest.fixture(scope="module")
def speed_gains() -> ModuleType:
    return load_script("speed_gains")


@pytest.fixture(scope="module")
def agreement() -> ModuleType:
    return load_script("agreement")


@pytest.fixture(scope="module")
def speed_run(speed_gains) -> tuple[dict, dict]:
    """Run the speed benchmark once: (returned dict, JSON object of the last stdout line)."""
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        returned = speed_gains.main(["--contexts", "2", "--json", "--no-progress"], model=tiny_model("llama"))
    lines = output.getvalue().strip().splitlines()
    assert lines, "the script printed nothing to standard output"
    return returned, json.loads(lines[-1])


def test_speed_gains_json_report(speed_run):
    returned, results = speed_run

    for key in ("speedup_batched", "speedup_adjoint", "spearman_min", "spearman_mean", "max_abs_diff_batched"):
        assert key in results, key
        assert math.isfinite(results[key]), (key, results[key])
    assert set(results["seconds_per_context"]) == {"naive", "batched", "adjoint"}
    for method, seconds in results["seconds_per_context"].items():
        assert math.isfinite(seconds), (method, seconds)
        assert seconds > 0, (method, seconds)
    assert results["speedup_batched"] > 0
    assert results["speedup_adjoint"] > 0
    assert results["contexts"] == 2
    assert len(results["per_context"]) == 2
    assert results["spearman_min"] == returned["spearman_min"]


def test_speed_gains_methods_agree_on_tiny_model(speed_run):
    _, results = speed_run

    # The adjoint gains are the eps -> 0 limit of the naive ones.
    assert results["spearman_min"] >= 0.99
    # Batched and naive inject the same eps, so they differ by float32 rounding only.
    assert results["max_abs_diff_batched"] < 1e-4 * max(1.0, results["max_abs_gain_naive"])


def test_speed_gains_rejects_invalid_arguments(speed_gains):
    for argv in (["--contexts", "0"], ["--eps", "0"], ["--eps", "nan"], ["--task", "weather"]):
        with pytest.raises(SystemExit):
            speed_gains.parse_args(argv)


AGREEMENT_ARGS = [
    "--tasks",
    "sentiment",
    "--contexts",
    "2",
    "--orders",
    "1,4,16,32",
    "--bases",
    "reachable,random",
    "--eps-sweep",
    "0.01,0.1",
    "--json",
    "--no-progress",
]


def test_agreement_json_report(agreement, capsys):
    agreement.main(AGREEMENT_ARGS, model=tiny_model("llama"))
    results = last_json_line(capsys)

    for key in ("identify_seconds_per_context", "forward_seconds_per_context"):
        assert math.isfinite(results[key]), (key, results[key])
        assert results[key] > 0, (key, results[key])
    assert list(results["tasks"]) == ["sentiment"]
    task = results["tasks"]["sentiment"]
    for name in ("llv", "lti", "linear"):
        assert math.isfinite(task[name]["spearman"]), (name, task[name])
        assert math.isfinite(task[name]["pearson"]), (name, task[name])
    assert set(task["order_sweep"]) == {"1", "4", "16", "32"}
    assert set(task["basis"]) == {"reachable", "random"}
    assert set(task["eps_sweep"]) == {"0.01", "0.1"}
    for d, spearman in task["order_sweep"].items():
        assert -1.0 <= spearman <= 1.0, (d, spearman)

    # With 4 layers and d = 32 >= L + 1, the reachable basis reproduces the
    # exact linear gains, so only the injection's nonlinearity is left.
    assert task["linear"]["spearman"] >= 0.99
    assert task["linear"]["pearson"] >= 0.99
    assert task["llv"]["spearman"] >= 0.99
    assert task["order_sweep"]["32"] >= 0.99
    assert task["basis"]["reachable"]["spearman"] == task["llv"]["spearman"]


def test_agreement_quick_defaults(agreement):
    args = agreement.parse_args(["--quick"])

    assert args.contexts == 2
    assert args.tasks == list(BUILTIN_TASKS)
    assert set(args.orders) >= {1, 4, 16, 32}
    assert args.order == 32


def test_agreement_rejects_invalid_arguments(agreement):
    for argv in (
        ["--contexts", "0"],
        ["--orders", "0,4"],
        ["--orders", "four"],
        ["--bases", "reachable,svd"],
        ["--eps-sweep", "0.1,-0.1"],
        ["--tasks", "weather"],
    ):
        with pytest.raises(SystemExit):
            agreement.parse_args(argv)


def test_agreement_rejects_order_above_hidden_size(agreement, capsys):
    with pytest.raises(SystemExit):
        agreement.main(["--orders", "4,64", "--no-progress"], model=tiny_model("llama"))

    assert "exceed the hidden size 32" in capsys.readouterr().err


def test_lti_fits_compares_every_fit(capsys):
    script = load_script("lti_fits")
    argv = ["--tasks", "sentiment", "--contexts", "2", "--order", "8", "--realize-orders", "1,2", "--json"]
    returned = script.main(argv, model=tiny_model("llama"))
    printed = last_json_line(capsys)
    assert set(printed["fits"]) == {"common_basis", "common_basis_gains", "realize_1", "realize_2"}
    for name, row in returned["fits"].items():
        assert row["contexts"] == 2
        assert printed["fits"][name]["pearson"] == pytest.approx(row["pearson"], nan_ok=True)
        assert row["spectral_radius_median"] >= 0
