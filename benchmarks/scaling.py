"""Scaling study: surrogate agreement against model size.

The method's headline claim (Nettasinghe and Joseph, 2026, arXiv 2603.12541)
is that at a fixed surrogate order d, agreement between predicted and
measured layer gains grows with model size: for GPT-2 they report a mean
Spearman of about 0.77, 0.81 and 0.995 for gpt2, gpt2-medium and gpt2-large
at d = 32 (not measured here). This script tests the claim on any
list of models. For each model and task, on held-out contexts, it reports:

- the mean Spearman and Pearson correlation across layers between the gains
  of the layer-varying surrogate (order d) and the gains measured on the full
  model by batched finite injections. This is reported for each basis: first
  Krylov, the published recipe, then reachable, ours;
- the same for the time-invariant fit of the first basis;
- an order sweep, from the leading block of the largest-order surrogate
  (both bases are nested, see ``LayerVaryingSurrogate.truncated``);
- the parameter count (in all and without embeddings), peak memory and wall
  time of each model.

Models that cannot be loaded are skipped with the reason. The default list is
the GPT-2 family. When none of it loads (no hub access and no local copy),
the embedded models are measured instead, and the report states it.

Data-parallel: under ``torchrun --nproc-per-node N``, or ``accelerate launch
--multi_gpu --num_processes N`` on GPUs, each process loads its own copy of
the model and takes every N-th (task, context) item. The results are gathered
in item order, so the files are the same as from one process up to
floating-point summation order.

Run ``python benchmarks/scaling.py --help`` for the options. With ``--json``
the last line of standard output is one JSON object with at least ``models``
(name -> ``{"params": int, "spearman_mean": float}``).
"""

from __future__ import annotations

import argparse
import csv
import gc
import io
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from steercontrol.concepts import BUILTIN_TASKS, concept_directions, load_task, projection_readout
from steercontrol.distributed import Workers, start_workers, stop_workers
from steercontrol.exceptions import ModelLoadError, SteerControlError
from steercontrol.identify import BasisKind, identify, time_invariant
from steercontrol.models import EMBEDDED_MODELS, SteerableModel, hub_reachable, load_model
from steercontrol.prefix import FrozenContext
from steercontrol.report import gain_agreement
from steercontrol.sensitivity import measure_gains
from steercontrol.testing import tiny_model_from_name

GPT2_FAMILY = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
QUICK_GPT2_FAMILY = ("gpt2", "gpt2-medium")
PUBLISHED_GPT2 = {"gpt2": 0.77, "gpt2-medium": 0.81, "gpt2-large": 0.995}
"""Mean Spearman at d = 32 as published for the method; not measured here."""
ORDERS = (1, 2, 4, 8, 16, 32)
QUICK_ORDERS = (4, 16, 32)
BASES: tuple[BasisKind, ...] = ("krylov", "reachable")
QUICK_TASKS = ("sentiment", "toxicity")


# Loading


def _hub_cached(name: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    return isinstance(try_to_load_from_cache(name, "config.json"), str)


def load_named_model(name: str, *, device: torch.device, device_map: str | None) -> SteerableModel:
    """Load an embedded name, directory or hub id, or build ``tiny-<family>[-<layers>x<hidden>]``."""
    built = tiny_model_from_name(name)
    if built is None:
        return load_model(name, device=device, device_map=device_map)
    built.name = name
    return built


def _count_parameters(model: SteerableModel) -> tuple[int, int]:
    """Return the parameter count, in all and without the token embedding and unembedding."""
    total = int(sum(param.numel() for param in model.model.parameters()))
    embeddings = {
        id(module.weight): module.weight.numel()
        for module in (model.model.get_input_embeddings(), model.model.get_output_embeddings())
        if module is not None
    }
    # A tied unembedding is the same tensor as the embedding and counts once.
    return total, total - int(sum(embeddings.values()))


class PeakMemory:
    """Peak memory of one model's run: GPU allocations, or this process's resident set on Linux."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.kind = "unavailable"

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.kind = "cuda max allocated"
            return
        try:
            # Writing 5 resets the kernel's high-water mark of the resident set (VmHWM).
            Path("/proc/self/clear_refs").write_text("5")
            self.kind = "process peak resident set"
        except OSError:
            self.kind = "process peak resident set since start"

    def read_mb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        try:
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        except ImportError:
            return math.nan


# Measurement


def _mean(values: list[float]) -> float:
    finite = [value for value in values if np.isfinite(value)]
    return float(np.mean(finite)) if finite else math.nan


def evaluate_context(
    model: SteerableModel,
    ids: torch.Tensor,
    directions: np.ndarray,
    readout: Any,
    *,
    order: int,
    orders: tuple[int, ...],
    bases: tuple[BasisKind, ...],
    eps: float,
    seed: int,
) -> dict[str, Any]:
    """Correlations of one context for every basis, its time-invariant fit and the order sweep."""
    context = FrozenContext(model, ids)
    measured = measure_gains(model, ids, directions, readout, method="batched", eps=eps, context=context).gains
    largest = max(order, *orders)
    row: dict[str, Any] = {"tokens": int(ids.numel()), "bases": {}}
    for position, basis in enumerate(bases):
        identified = identify(model, context, directions, readout, order=largest, basis=basis, seed=seed)
        main = identified.surrogate.truncated(order)
        entry = {
            "llv": gain_agreement(main.gain_profile(), measured),
            "sweep": {d: gain_agreement(identified.surrogate.truncated(d).gain_profile(), measured)[0] for d in orders},
        }
        if position == 0:
            fit_source = (
                identified
                if largest == order
                else identify(model, context, directions, readout, order=order, basis=basis, seed=seed)
            )
            entry["lti"] = gain_agreement(time_invariant(fit_source).gain_profile(), measured)
        row["bases"][basis] = entry
    return row


def _summarise_task(rows: list[dict[str, Any]], bases: tuple[BasisKind, ...], orders: tuple[int, ...]) -> dict:
    summary: dict[str, Any] = {"contexts": len(rows), "tokens_mean": _mean([row["tokens"] for row in rows])}
    for position, basis in enumerate(bases):
        entries = [row["bases"][basis] for row in rows]
        summary[basis] = {
            "llv": {
                "spearman": _mean([entry["llv"][0] for entry in entries]),
                "pearson": _mean([entry["llv"][1] for entry in entries]),
            },
            "sweep": {str(d): _mean([entry["sweep"][d] for entry in entries]) for d in orders},
        }
        if position == 0:
            summary[basis]["lti"] = {
                "spearman": _mean([entry["lti"][0] for entry in entries]),
                "pearson": _mean([entry["lti"][1] for entry in entries]),
            }
    return summary


def run_model(model: SteerableModel, args: argparse.Namespace, workers: Workers) -> dict[str, Any]:
    """Measure one model on every task; every process returns the same gathered summary."""
    readouts: dict[str, tuple[np.ndarray, Any]] = {}
    items: list[tuple[str, torch.Tensor]] = []
    for task_name in args.tasks:
        task = load_task(task_name)
        directions = concept_directions(model, task, evaluate_split=None, max_per_class=args.max_per_class)
        readouts[task_name] = (directions.directions, projection_readout(directions))
        texts, _ = task.split("heldout")
        rng = np.random.default_rng(args.seed)
        chosen = rng.choice(len(texts), size=min(args.contexts, len(texts)), replace=False)
        items.extend((task_name, model.tokenize(texts[index])["input_ids"][0].cpu()) for index in chosen)

    mine = workers.shard(items)
    results = []
    bar = tqdm(mine, desc=model.name, disable=args.no_progress or not workers.is_main, leave=False, file=sys.stderr)
    for index, (task_name, ids) in bar:
        directions, readout = readouts[task_name]
        row = evaluate_context(
            model,
            ids.to(model.device),
            directions,
            readout,
            order=args.order,
            orders=args.orders,
            bases=args.bases,
            eps=args.eps,
            seed=args.seed,
        )
        results.append((index, {"task": task_name, **row}))
    rows = workers.gather(results)

    tasks = {
        task_name: _summarise_task([row for row in rows if row["task"] == task_name], args.bases, args.orders)
        for task_name in args.tasks
    }
    first = args.bases[0]
    return {
        "tasks": tasks,
        "spearman_mean": _mean([summary[first]["llv"]["spearman"] for summary in tasks.values()]),
        "pearson_mean": _mean([summary[first]["llv"]["pearson"] for summary in tasks.values()]),
    }


# Model list


def choose_models(args: argparse.Namespace) -> tuple[list[str], dict[str, str], str | None]:
    """Return the models to try, the ones skipped before loading (name -> reason), and a note."""
    if args.models is not None:
        return list(args.models), {}, None
    candidates, skipped = [], {}
    family = QUICK_GPT2_FAMILY if args.quick else GPT2_FAMILY
    for name in family:
        if _hub_cached(name) or hub_reachable():
            candidates.append(name)
        else:
            skipped[name] = "the hub is unreachable (offline, or HF_HUB_OFFLINE is set) and the weights are not cached"
    return candidates, skipped, "default GPT-2 family"


# Outputs


def _atomic_write(path: Path, write: Any) -> None:
    temporary = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _csv_text(results: dict[str, Any]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    orders = results["orders"]
    writer.writerow(
        [
            "model",
            "params",
            "params_non_embedding",
            "task",
            "basis",
            "order",
            "llv_spearman",
            "llv_pearson",
            "lti_spearman",
            "lti_pearson",
        ]
        + [f"sweep_d{d}" for d in orders]
    )
    for name, entry in results["models"].items():
        for task_name, summary in entry["tasks"].items():
            for basis in results["bases"]:
                part = summary[basis]
                lti = part.get("lti", {"spearman": "", "pearson": ""})
                writer.writerow(
                    [
                        name,
                        entry["params"],
                        entry["params_non_embedding"],
                        task_name,
                        basis,
                        results["order"],
                        part["llv"]["spearman"],
                        part["llv"]["pearson"],
                        lti["spearman"],
                        lti["pearson"],
                    ]
                    + [part["sweep"][str(d)] for d in orders]
                )
    return buffer.getvalue()


def _short_count(count: int) -> str:
    """Write a parameter count as 54k, 135M or 1.5B."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if count >= scale:
            value = count / scale
            return f"{value:.1f}{suffix}" if value < 10 else f"{value:.0f}{suffix}"
    return str(count)


def plot_agreement_vs_size(results: dict[str, Any], path: Path) -> None:
    """Mean Spearman of the first basis against parameter count: one line per task and their mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    models = sorted(results["models"].items(), key=lambda item: item[1]["params"])
    params = [entry["params"] for _, entry in models]
    basis = results["bases"][0]
    figure, axes = plt.subplots(figsize=(6.8, 4.4))
    for task_name in results["tasks"]:
        values = [entry["tasks"][task_name][basis]["llv"]["spearman"] for _, entry in models]
        axes.plot(params, values, marker="o", linewidth=1, alpha=0.8, label=task_name)
    means = [entry["spearman_mean"] for _, entry in models]
    axes.plot(params, means, marker="s", color="black", linewidth=2.2, label="mean over tasks")
    published = [
        (results["models"][name]["params"], value)
        for name, value in PUBLISHED_GPT2.items()
        if name in results["models"]
    ]
    if published:
        axes.plot(
            *zip(*published, strict=True),
            linestyle="--",
            color="gray",
            marker="x",
            label="published GPT-2 (not measured here)",
        )
    axes.set_xscale("log")
    axes.set_xticks(params, [f"{name}\n{_short_count(value)}" for (name, _), value in zip(models, params, strict=True)])
    axes.xaxis.set_minor_formatter(NullFormatter())
    low, high = min(params), max(params)
    axes.set_xlim(low / 1.25, high * 1.25)
    axes.set_xlabel("model and parameter count (log scale)")
    axes.set_ylabel(f"mean Spearman, predicted vs measured gains\n({basis} basis, d = {results['order']})")
    axes.set_title("Surrogate agreement against model size")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="best")
    figure.tight_layout()
    _atomic_write(path, lambda temporary: figure.savefig(temporary, dpi=120, format="png"))
    plt.close(figure)


def write_outputs(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(out / "scaling.json", lambda p: p.write_text(json.dumps(results, indent=2, default=float)))
    _atomic_write(out / "scaling.csv", lambda p: p.write_text(_csv_text(results)))
    if results["models"]:
        plot_agreement_vs_size(results, out / "scaling.png")


def growth_verdict(results: dict[str, Any]) -> str:
    """Say whether mean agreement grows with parameter count on the models measured.

    The agreement is the mean Spearman of the first basis at the main order.
    The models are ordered by total parameters. When the order without
    embeddings differs, the sentence states it.
    """
    models = sorted(results["models"].items(), key=lambda item: item[1]["params"])
    if len(models) < 2:
        return "Fewer than two models were measured, so growth with size cannot be judged."
    measure = f"mean Spearman, {results['bases'][0]} basis, d = {results['order']}"
    values = [entry["spearman_mean"] for _, entry in models]
    chain = " -> ".join(f"{name} {entry['spearman_mean']:.3f}" for name, entry in models)
    grows = all(later > earlier for earlier, later in zip(values[:-1], values[1:], strict=True))
    verdict = "grows" if grows else "does not grow"
    sentence = f"Agreement ({measure}) {verdict} with total parameter count on the models measured: {chain}."
    by_total = [name for name, _ in models]
    by_core = [name for name, _ in sorted(models, key=lambda item: item[1].get("params_non_embedding", 0))]
    if by_total != by_core:
        sentence += (
            " Ordered by parameters without embeddings the models rank differently "
            f"({' < '.join(by_core)}), so size is ambiguous here."
        )
    return sentence


def _print_summary(results: dict[str, Any], stream: Any) -> None:
    basis = results["bases"][0]
    print(
        f"\nMean over held-out contexts; d = {results['order']}; measured gains: batched, eps {results['eps']}",
        file=stream,
    )
    for name, entry in sorted(results["models"].items(), key=lambda item: item[1]["params"]):
        print(
            f"\n{name}: {entry['params'] / 1e6:.1f}M parameters ({entry['params_non_embedding'] / 1e6:.1f}M "
            f"without embeddings), {entry['n_layers']} layers, hidden "
            f"{entry['hidden_size']}; {entry['seconds']:.1f} s; peak memory {entry['peak_memory_mb']:.0f} MB "
            f"({entry['memory_kind']})",
            file=stream,
        )
        for task_name, summary in entry["tasks"].items():
            parts = []
            for name_basis in results["bases"]:
                llv = summary[name_basis]["llv"]
                parts.append(f"{name_basis} S {llv['spearman']:.3f} P {llv['pearson']:.3f}")
            lti = summary[basis]["lti"]
            sweep = " ".join(f"{d}:{value:.2f}" for d, value in summary[basis]["sweep"].items())
            print(
                f"  {task_name:<12} {'; '.join(parts)}; time-invariant S {lti['spearman']:.3f} "
                f"P {lti['pearson']:.3f}; sweep ({basis}) {sweep}",
                file=stream,
            )
    for name, reason in results["skipped"].items():
        print(f"skipped {name}: {reason}", file=stream)
    if results["note"]:
        print(results["note"], file=stream)
    print(growth_verdict(results), file=stream)


# Command line


def _parse_list(text: str, kind: type, option: str, parser: argparse.ArgumentParser) -> tuple[Any, ...]:
    try:
        values = tuple(kind(item.strip()) for item in text.split(",") if item.strip())
    except ValueError:
        parser.error(f"{option} must be a comma-separated list of {kind.__name__} values, got {text!r}")
    if not values:
        parser.error(f"{option} is empty; pass at least one value")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Surrogate agreement against model size, over a list of models.")
    parser.add_argument(
        "--models",
        default=None,
        help="comma-separated models: embedded names, directories or hub ids "
        f"(default: {','.join(GPT2_FAMILY)}, falling back to the embedded {','.join(EMBEDDED_MODELS)})",
    )
    parser.add_argument(
        "--tasks",
        default=None,
        help=f"comma-separated built-in tasks (default: all; {','.join(QUICK_TASKS)} with --quick)",
    )
    parser.add_argument(
        "--contexts", type=int, default=None, help="held-out contexts per task (default: 8, or 2 with --quick)"
    )
    parser.add_argument("--order", type=int, default=32, help="surrogate order d of the comparison (default: 32)")
    parser.add_argument(
        "--orders",
        default=None,
        help=f"comma-separated orders of the sweep (default: {','.join(map(str, ORDERS))}, "
        f"or {','.join(map(str, QUICK_ORDERS))} with --quick)",
    )
    parser.add_argument(
        "--bases",
        default=",".join(BASES),
        help="comma-separated bases; the first is the headline and gets the time-invariant fit "
        f"(default: {','.join(BASES)}; krylov is the published recipe)",
    )
    parser.add_argument(
        "--eps", type=float, default=0.1, help="injection size of the measured gains, model units (default: 0.1)"
    )
    parser.add_argument(
        "--max-per-class",
        type=int,
        default=None,
        help="concept texts per class for the directions (default: all 126, or 48 with --quick)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the context sampling (default: 0)")
    parser.add_argument(
        "--device-map",
        default=None,
        help="spread each model over devices with accelerate, for example 'auto' (default: one device per process)",
    )
    parser.add_argument("--out", type=Path, default=Path("results/scaling"), help="output folder")
    parser.add_argument("--quick", action="store_true", help="2 tasks, 2 contexts, 3 orders: under 3 minutes")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line of standard output")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)

    if args.models is not None:
        args.models = _parse_list(args.models, str, "--models", parser)
    if args.tasks:
        args.tasks = _parse_list(args.tasks, str, "--tasks", parser)
    else:
        args.tasks = QUICK_TASKS if args.quick else BUILTIN_TASKS
    unknown = [task for task in args.tasks if task not in BUILTIN_TASKS]
    if unknown:
        parser.error(f"unknown task(s) {unknown}; choose from {', '.join(BUILTIN_TASKS)}")
    if args.contexts is None:
        args.contexts = 2 if args.quick else 8
    if args.contexts < 1:
        parser.error(f"--contexts must be >= 1, got {args.contexts}")
    if args.max_per_class is None and args.quick:
        args.max_per_class = 48
    if args.max_per_class is not None and args.max_per_class < 1:
        parser.error(f"--max-per-class must be >= 1, got {args.max_per_class}")
    if args.orders:
        args.orders = _parse_list(args.orders, int, "--orders", parser)
    else:
        args.orders = QUICK_ORDERS if args.quick else ORDERS
    bad = [d for d in (args.order, *args.orders) if d < 1]
    if bad:
        parser.error(f"orders must be >= 1, got {bad}")
    args.bases = _parse_list(args.bases, str, "--bases", parser)
    unknown = [basis for basis in args.bases if basis not in BASES]
    if unknown:
        parser.error(f"unknown or non-nested basis {unknown}; choose from {', '.join(BASES)}")
    if not math.isfinite(args.eps) or args.eps <= 0:
        parser.error(f"--eps must be finite and > 0, got {args.eps}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the study; return the results dictionary (the same on every process)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        workers = start_workers()
    except SteerControlError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from error
    if args.device_map is not None and workers.world_size > 1:
        # Every process would place its own copy of the model over all the GPUs.
        print(
            f"error: --device-map {args.device_map} spreads one model over all devices, so it cannot be combined "
            f"with {workers.world_size} processes; run it without torchrun or accelerate launch",
            file=sys.stderr,
        )
        stop_workers()
        raise SystemExit(2)
    started = time.perf_counter()
    names, skipped, note = choose_models(args)
    results: dict[str, Any] = {
        "order": args.order,
        "orders": list(args.orders),
        "bases": list(args.bases),
        "tasks": list(args.tasks),
        "contexts": args.contexts,
        "eps": args.eps,
        "seed": args.seed,
        "max_per_class": args.max_per_class,
        "quick": args.quick,
        "processes": workers.world_size,
        "models": {},
        "skipped": skipped,
        "note": None,
        "published_gpt2_not_measured_here": PUBLISHED_GPT2,
    }

    def measure(name: str) -> None:
        memory = PeakMemory(workers.device)
        memory.reset()
        model_started = time.perf_counter()
        try:
            model = load_named_model(name, device=workers.device, device_map=args.device_map)
        except ModelLoadError as error:
            skipped[name] = str(error).splitlines()[0]
            return
        too_large = [d for d in (args.order, *args.orders) if d > model.hidden_size]
        if too_large:
            skipped[name] = f"orders {too_large} exceed its hidden size {model.hidden_size}"
            return
        measured = run_model(model, args, workers)
        params, params_non_embedding = _count_parameters(model)
        results["models"][name] = {
            "params": params,
            "params_non_embedding": params_non_embedding,
            "n_layers": model.n_layers,
            "hidden_size": model.hidden_size,
            **measured,
            "seconds": time.perf_counter() - model_started,
            "peak_memory_mb": memory.read_mb(),
            "memory_kind": memory.kind,
        }
        del model
        gc.collect()

    for name in names:
        measure(name)
    if note and not results["models"]:
        results["note"] = (
            f"None of the {note} could be loaded here, so the embedded models were measured instead: "
            f"{', '.join(EMBEDDED_MODELS)}."
        )
        for name in EMBEDDED_MODELS:
            measure(name)
    results["seconds"] = time.perf_counter() - started
    results["verdict"] = growth_verdict(results)

    if workers.is_main and not results["models"]:
        for name, reason in results["skipped"].items():
            print(f"skipped {name}: {reason}", file=sys.stderr)
        print(f"error: no model could be measured, so nothing was written to {args.out}", file=sys.stderr)
    elif workers.is_main:
        write_outputs(results, args.out)
        _print_summary(results, sys.stdout)
        print(f"Total time: {results['seconds']:.1f} s; files in {args.out}")
        if args.json:
            print(json.dumps(results, default=float))
    workers.barrier()
    stop_workers()
    if not results["models"]:
        raise SystemExit(1)
    return results


if __name__ == "__main__":
    main()
