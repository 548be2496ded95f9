"""The scaling study script and the data-parallel workers it runs on."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from steercontrol.distributed import Workers, start_workers
from steercontrol.exceptions import ConfigurationError

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
MODELS = "tiny-llama,tiny-llama-6x64"
SMALL_RUN = [
    "--models",
    MODELS,
    "--tasks",
    "sentiment,toxicity",
    "--contexts",
    "3",
    "--order",
    "16",
    "--orders",
    "2,8,16",
    "--no-progress",
    "--json",
]


@pytest.fixture(scope="module")
def scaling():
    # The benchmarks folder is not a package, so load the script from its path.
    spec = importlib.util.spec_from_file_location("benchmark_scaling", BENCHMARKS / "scaling.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, scaling):
    out = tmp_path_factory.mktemp("one")
    return scaling.main([*SMALL_RUN, "--out", str(out)]), out


def _run_script(out: Path, processes: int) -> dict:
    launcher = [sys.executable, str(BENCHMARKS / "scaling.py")]
    if processes > 1:
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={processes}",
            str(BENCHMARKS / "scaling.py"),
        ]
    # Loopback only, and one thread per process on a small machine.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "127.0.0.1"}
    completed = subprocess.run(
        [*launcher, *SMALL_RUN, "--out", str(out)], capture_output=True, text=True, env=env, timeout=600
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_json_reports_params_and_mean_spearman(one_process):
    results, _ = one_process
    assert set(results["models"]) == {"tiny-llama", "tiny-llama-6x64"}
    for entry in results["models"].values():
        assert isinstance(entry["params"], int)
        assert entry["params"] > 0
        assert 0 < entry["params_non_embedding"] < entry["params"]
        spearmans = [task["krylov"]["llv"]["spearman"] for task in entry["tasks"].values()]
        assert entry["spearman_mean"] == pytest.approx(np.mean(spearmans))
        assert entry["peak_memory_mb"] > 0
        assert entry["seconds"] > 0
    assert results["models"]["tiny-llama-6x64"]["params"] > results["models"]["tiny-llama"]["params"]


def test_reachable_basis_is_exact_at_full_order(one_process):
    # With d >= L + 1 the reachable surrogate is the exact linearisation, so
    # only the nonlinearity of the finite injection separates it from measurement.
    results, _ = one_process
    for entry in results["models"].values():
        for task in entry["tasks"].values():
            assert task["reachable"]["llv"]["spearman"] > 0.9


def test_files_agree_with_json(one_process):
    results, out = one_process
    assert json.loads((out / "scaling.json").read_text())["models"].keys() == results["models"].keys()
    with (out / "scaling.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 * 2 * 2  # models x tasks x bases
    row = next(r for r in rows if r["model"] == "tiny-llama" and r["task"] == "toxicity" and r["basis"] == "krylov")
    task = results["models"]["tiny-llama"]["tasks"]["toxicity"]["krylov"]
    assert float(row["llv_spearman"]) == pytest.approx(task["llv"]["spearman"])
    assert float(row["sweep_d8"]) == pytest.approx(task["sweep"]["8"])
    assert (out / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*partial*"))


def test_two_processes_match_one_process(tmp_path, one_process):
    single, _ = one_process
    double = _run_script(tmp_path / "two", processes=2)
    assert double["processes"] == 2
    for name, entry in single["models"].items():
        for task_name, task in entry["tasks"].items():
            other = double["models"][name]["tasks"][task_name]
            assert other["contexts"] == task["contexts"]
            for basis in ("krylov", "reachable"):
                assert other[basis]["llv"]["spearman"] == pytest.approx(task[basis]["llv"]["spearman"], abs=1e-9)
                assert other[basis]["llv"]["pearson"] == pytest.approx(task[basis]["llv"]["pearson"], abs=1e-6)
    assert (tmp_path / "two" / "scaling.csv").is_file()


def test_unloadable_model_is_skipped_with_reason(tmp_path, scaling):
    missing = tmp_path / "no-such-model"
    results = scaling.main(
        [
            "--models",
            f"tiny-llama,{missing}",
            "--tasks",
            "sentiment",
            "--contexts",
            "1",
            "--order",
            "8",
            "--orders",
            "8",
            "--no-progress",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert list(results["models"]) == ["tiny-llama"]
    assert "no-such-model" in results["skipped"][str(missing)]


def test_no_measured_model_exits_1_and_names_it(tmp_path, scaling, capsys):
    with pytest.raises(SystemExit) as exit_info:
        scaling.main(
            [
                "--models",
                str(tmp_path / "absent"),
                "--tasks",
                "sentiment",
                "--no-progress",
                "--out",
                str(tmp_path / "out"),
            ]
        )
    assert exit_info.value.code == 1
    assert "absent" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_offline_default_list_skips_gpt2_family(monkeypatch, scaling):
    monkeypatch.setattr(scaling, "_hub_cached", lambda name: False)
    names, skipped, note = scaling.choose_models(scaling.parse_args([]))
    assert names == []
    assert set(skipped) == set(scaling.GPT2_FAMILY)
    assert all("hub is unreachable" in reason for reason in skipped.values())
    assert note is not None
    quick_names, quick_skipped, _ = scaling.choose_models(scaling.parse_args(["--quick"]))
    assert set(quick_skipped) == set(scaling.QUICK_GPT2_FAMILY)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tasks", "sarcasm"], "unknown task"),
        (["--contexts", "0"], "--contexts must be >= 1"),
        (["--orders", "4,x"], "comma-separated list of int"),
        (["--bases", "random"], "non-nested basis"),
        (["--eps", "nan"], "--eps must be finite"),
    ],
)
def test_bad_arguments_exit_2(scaling, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        scaling.parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("values", "cores", "expected"),
    [
        ((0.5, 0.7, 0.9), (1, 2, 3), "grows with total parameter count"),
        ((0.5, 0.9, 0.7), (1, 2, 3), "does not grow"),
        ((0.5,), (1,), "Fewer than two"),
        ((0.5, 0.7), (2, 1), "rank differently (m1 < m0)"),
    ],
)
def test_growth_verdict(scaling, values, cores, expected):
    models = {
        f"m{i}": {"params": 10 ** (i + 1), "params_non_embedding": core, "spearman_mean": value}
        for i, (value, core) in enumerate(zip(values, cores, strict=True))
    }
    verdict = scaling.growth_verdict({"models": models, "bases": ["krylov"], "order": 32})
    assert expected in verdict
    if len(values) > 1:
        assert "krylov basis, d = 32" in verdict


@pytest.mark.parametrize(("count", "text"), [(53792, "54k"), (134_515_008, "135M"), (1_557_611_200, "1.6B")])
def test_short_parameter_count(scaling, count, text):
    assert scaling._short_count(count) == text


def test_workers_shard_and_gather_in_item_order():
    workers = [Workers(rank=rank, world_size=3) for rank in range(3)]
    shards = [worker.shard(list("abcdefg")) for worker in workers]
    assert [index for index, _ in shards[1]] == [1, 4]
    pairs = [pair for shard in shards for pair in shard]
    assert Workers().gather([(index, item.upper()) for index, item in pairs]) == list("ABCDEFG")


def test_gather_rejects_missing_indices():
    with pytest.raises(ConfigurationError, match="not 0..n-1"):
        Workers().gather([(0, "a"), (2, "c")])


def test_start_workers_rejects_bad_environment(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ConfigurationError, match="WORLD_SIZE='two'"):
        start_workers()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(ConfigurationError, match="RANK=5"):
        start_workers()


def test_device_map_with_several_processes_exits_2(monkeypatch, scaling, capsys, tmp_path):
    monkeypatch.setattr(scaling, "start_workers", lambda: Workers(rank=0, world_size=2))
    with pytest.raises(SystemExit) as exit_info:
        scaling.main(["--models", "tiny-llama", "--device-map", "auto", "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "without torchrun" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
