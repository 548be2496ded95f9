"""Speed benchmark: the three ways to measure a context's layer gains.

On held-out contexts of one task, :func:`steercontrol.sensitivity.measure_gains`
runs with each method:

- ``naive``: one full forward over the whole context per layer;
- ``batched``: one prefix pass, then all layers as one batch of single-token
  forwards over the shared key/value cache;
- ``adjoint``: one prefix pass, one single-token forward and one backward
  pass, giving the exact linear gains.

Each call is timed on its own and builds its own prefix pass, so no method
reuses work done by another. Model loading and the concept directions are
not timed, and every method runs once on the first context before timing
starts. The order of the methods rotates from one context to the next.

The script reports the mean and median time per context of each method
and the speed-ups of the batched and adjoint methods over the naive one,
as ratios of the mean times and of the median times. It also reports the
maximum absolute difference between batched and naive gains, which are
finite injections of the same size and so differ only by rounding, and the
Spearman correlation across layers between adjoint and naive gains per
context.

Run ``python benchmarks/speed_gains.py --help`` for the options.
With ``--json`` the last line of standard output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from typing import Any

import numpy as np
from scipy.stats import spearmanr
from tqdm import tqdm

from steercontrol.concepts import BUILTIN_TASKS, concept_directions, load_task, projection_readout
from steercontrol.exceptions import SteerControlError
from steercontrol.models import SteerableModel, load_model
from steercontrol.sensitivity import GainMethod, measure_gains

logger = logging.getLogger("speed_gains")

METHODS: tuple[GainMethod, ...] = ("naive", "batched", "adjoint")


def _spearman(first: np.ndarray, second: np.ndarray) -> float:
    # A constant profile has no ranking, so its correlation is undefined.
    if np.ptp(first) == 0 or np.ptp(second) == 0:
        return math.nan
    return float(spearmanr(first, second)[0])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time the naive, batched and adjoint layer-gain methods on held-out contexts.",
    )
    parser.add_argument(
        "--model", default="smollm2-135m", help="embedded name, local directory or hub id (default: smollm2-135m)"
    )
    parser.add_argument(
        "--task", default="sentiment", help=f"built-in task, one of {', '.join(BUILTIN_TASKS)} (default: sentiment)"
    )
    parser.add_argument("--contexts", type=int, default=16, help="held-out contexts to time (default: 16)")
    parser.add_argument(
        "--eps",
        type=float,
        default=0.1,
        help="injection size of the naive and batched methods, model units (default: 0.1)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the context sampling (default: 0)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line of standard output")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)
    if args.contexts < 1:
        parser.error(f"--contexts must be >= 1, got {args.contexts}")
    if not math.isfinite(args.eps) or args.eps <= 0:
        parser.error(f"--eps must be a finite number > 0, got {args.eps}")
    if args.task not in BUILTIN_TASKS:
        parser.error(f"unknown task {args.task!r}; choose from {', '.join(BUILTIN_TASKS)}")
    return args


def time_methods(
    model: SteerableModel, task_name: str, *, contexts: int, eps: float, seed: int, progress: bool
) -> dict[str, Any]:
    """Time every gain method on held-out contexts of one task; return the summary."""
    task = load_task(task_name)
    directions = concept_directions(model, task, evaluate_split=None)
    readout = projection_readout(directions)
    texts, _ = task.split("heldout")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(texts), size=min(contexts, len(texts)), replace=False)
    token_ids = [model.tokenize(texts[index])["input_ids"][0] for index in chosen]

    def run(method: GainMethod, ids: Any) -> tuple[np.ndarray, float]:
        started = time.perf_counter()
        profile = measure_gains(model, ids, directions.directions, readout, method=method, eps=eps)
        return profile.gains, time.perf_counter() - started

    # The first call of each method pays one-time costs (allocator, kernel selection).
    for method in METHODS:
        run(method, token_ids[0])

    seconds: dict[str, list[float]] = {method: [] for method in METHODS}
    rows = []
    bar = tqdm(
        list(zip(chosen, token_ids, strict=True)), desc=f"{task_name} gains", disable=not progress, file=sys.stderr
    )
    for position, (index, ids) in enumerate(bar):
        gains: dict[str, np.ndarray] = {}
        order = METHODS[position % 3 :] + METHODS[: position % 3]
        for method in order:
            gains[method], elapsed = run(method, ids)
            seconds[method].append(elapsed)
        rows.append(
            {
                "context": int(index),
                "tokens": int(ids.numel()),
                "max_abs_diff_batched": float(np.max(np.abs(gains["batched"] - gains["naive"]))),
                "max_abs_gain_naive": float(np.max(np.abs(gains["naive"]))),
                "spearman_adjoint": _spearman(gains["adjoint"], gains["naive"]),
                **{f"seconds_{method}": seconds[method][-1] for method in METHODS},
            }
        )

    mean_seconds = {method: float(np.mean(values)) for method, values in seconds.items()}
    # Medians resist the slow outliers that other processes on a shared machine cause.
    median_seconds = {method: float(np.median(values)) for method, values in seconds.items()}
    spearmans = np.asarray([row["spearman_adjoint"] for row in rows])
    return {
        "task": task_name,
        "contexts": len(rows),
        "tokens_mean": float(np.mean([row["tokens"] for row in rows])),
        "seconds_per_context": mean_seconds,
        "speedup_batched": mean_seconds["naive"] / mean_seconds["batched"],
        "speedup_adjoint": mean_seconds["naive"] / mean_seconds["adjoint"],
        "seconds_per_context_median": median_seconds,
        "speedup_batched_median": median_seconds["naive"] / median_seconds["batched"],
        "speedup_adjoint_median": median_seconds["naive"] / median_seconds["adjoint"],
        "max_abs_diff_batched": max(row["max_abs_diff_batched"] for row in rows),
        "max_abs_gain_naive": max(row["max_abs_gain_naive"] for row in rows),
        # np.min and np.mean propagate nan, so an undefined correlation is visible.
        "spearman_min": float(np.min(spearmans)),
        "spearman_mean": float(np.mean(spearmans)),
        "per_context": rows,
    }


def _print_summary(results: dict[str, Any], stream: Any) -> None:
    print(
        f"\n{results['model']} ({results['n_layers']} layers), task {results['task']}: "
        f"{results['contexts']} held-out contexts, {results['tokens_mean']:.1f} tokens on average, "
        f"eps {results['eps']}",
        file=stream,
    )
    print(
        f"  {'method':<10}{'mean s/context':>16}{'speed-up':>10}{'median s/context':>18}{'speed-up':>10}",
        file=stream,
    )
    for method in METHODS:
        mean = results["seconds_per_context"][method]
        median = results["seconds_per_context_median"][method]
        mean_speedup = results["seconds_per_context"]["naive"] / mean
        median_speedup = results["seconds_per_context_median"]["naive"] / median
        print(f"  {method:<10}{mean:>16.4f}{mean_speedup:>10.1f}{median:>18.4f}{median_speedup:>10.1f}", file=stream)
    print(
        f"  max |batched - naive| gain: {results['max_abs_diff_batched']:.3g} "
        f"(max |naive gain| {results['max_abs_gain_naive']:.3g})",
        file=stream,
    )
    print(
        f"  Spearman adjoint vs naive per context: min {results['spearman_min']:.4f}, "
        f"mean {results['spearman_mean']:.4f}",
        file=stream,
    )


def main(argv: list[str] | None = None, *, model: SteerableModel | None = None) -> dict[str, Any]:
    """Run the benchmark; return the results dictionary."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    try:
        model = model or load_model(args.model)
    except SteerControlError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from error

    summary = time_methods(
        model, args.task, contexts=args.contexts, eps=args.eps, seed=args.seed, progress=not args.no_progress
    )
    results: dict[str, Any] = {
        "model": model.name,
        "n_layers": model.n_layers,
        "hidden_size": model.hidden_size,
        "eps": args.eps,
        "seed": args.seed,
        **summary,
        "seconds": time.perf_counter() - started,
    }

    _print_summary(results, sys.stdout)
    print(f"Total time: {results['seconds']:.1f} s")
    if args.json:
        print(json.dumps(results, default=float))
    return results


if __name__ == "__main__":
    main()
