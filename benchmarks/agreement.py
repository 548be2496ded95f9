"""Agreement benchmark: surrogate-predicted layer gains against measured ones.

For each task, on held-out contexts of a real model, the gains g_0..g_{L-1}
predicted by identified surrogates are compared with the gains measured on
the full model by batched finite injections. Per context the script
computes the Spearman and Pearson correlations across layers, and it
reports their mean over contexts for:

- the layer-varying surrogate (``identify``, default order 32, reachable
  basis) and its time-invariant fit (``time_invariant``);
- an order sweep of the layer-varying surrogate (Spearman only);
- a basis ablation at the main order: reachable, Krylov and random bases;
- an eps sweep: the main surrogate against gains measured with several
  injection sizes;
- the main surrogate against the exact linear gains of the adjoint method.

In the reachable basis a scalar-input surrogate of order d >= L + 1 spans
every state an injection can reach, so its gains equal the model's exact
linear gains. Its agreement with measured gains then reflects only the
nonlinearity of the finite injection. The Krylov and random bases do not
have this property.

The script also times the identification of one context at the main order
(its prefix pass included) next to one full forward pass over the same
context. One frozen context per held-out context is shared by every
identification and measurement of the sweeps.

Run ``python benchmarks/agreement.py --help`` for the options.
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
import torch
from tqdm import tqdm

from steercontrol.concepts import BUILTIN_TASKS, concept_directions, load_task, projection_readout
from steercontrol.exceptions import SteerControlError
from steercontrol.identify import BasisKind, identify, time_invariant
from steercontrol.models import SteerableModel, load_model
from steercontrol.prefix import FrozenContext
from steercontrol.report import gain_agreement
from steercontrol.sensitivity import measure_gains

logger = logging.getLogger("agreement")

ORDERS = (1, 2, 4, 8, 16, 32, 64)
QUICK_ORDERS = (1, 4, 16, 32)
BASES: tuple[BasisKind, ...] = ("reachable", "krylov", "random")
# The Krylov basis costs one block evaluation per column, in sequence (about
# 9 s per context on SmolLM2-135M with 2 idle CPU cores, against 0.5 s for
# the reachable basis), so --quick leaves it out.
QUICK_BASES: tuple[BasisKind, ...] = ("reachable", "random")
EPS_SWEEP = (0.01, 0.03, 0.1, 0.3, 0.5)
QUICK_EPS_SWEEP = (0.01, 0.1, 0.5)


def _mean(values: list[float]) -> float:
    finite = [value for value in values if np.isfinite(value)]
    return float(np.mean(finite)) if finite else math.nan


def _summarise(pairs: list[tuple[float, float]]) -> dict[str, float]:
    return {
        "spearman": _mean([spearman for spearman, _ in pairs]),
        "pearson": _mean([pearson for _, pearson in pairs]),
        "undefined": sum(not np.isfinite(spearman) for spearman, _ in pairs),
    }


def _timed_forward(model: SteerableModel, ids: torch.Tensor) -> float:
    started = time.perf_counter()
    with torch.no_grad():
        model.model(input_ids=ids[None])
    return time.perf_counter() - started


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
    eps_sweep: tuple[float, ...],
    seed: int,
) -> dict[str, Any]:
    """Identify and measure one context; return its correlations and timings."""
    # The main identification runs first on a fresh frozen context, so its
    # time includes the prefix pass and the one-time capture of block inputs.
    started = time.perf_counter()
    context = FrozenContext(model, ids)
    prefix_seconds = time.perf_counter() - started
    main = identify(model, context, directions, readout, order=order, basis="reachable", seed=seed)
    identify_seconds = time.perf_counter() - started
    forward_seconds = _timed_forward(model, ids)

    measured = {
        value: measure_gains(model, ids, directions, readout, method="batched", eps=value, context=context).gains
        for value in sorted({eps, *eps_sweep})
    }
    reference = measured[eps]
    linear = measure_gains(model, ids, directions, readout, method="adjoint", context=context).gains
    predicted = main.surrogate.gain_profile()

    reachable = {order: main}
    order_sweep = {}
    for d in orders:
        if d not in reachable:
            reachable[d] = identify(model, context, directions, readout, order=d, basis="reachable", seed=seed)
        order_sweep[d] = gain_agreement(reachable[d].surrogate.gain_profile(), reference)

    basis_sweep = {}
    for basis in bases:
        identified = (
            main
            if basis == "reachable"
            else identify(model, context, directions, readout, order=order, basis=basis, seed=seed)
        )
        basis_sweep[basis] = gain_agreement(identified.surrogate.gain_profile(), reference)

    return {
        "llv": gain_agreement(predicted, reference),
        "lti": gain_agreement(time_invariant(main).gain_profile(), reference),
        "linear": gain_agreement(predicted, linear),
        "order_sweep": order_sweep,
        "basis": basis_sweep,
        "eps_sweep": {value: gain_agreement(predicted, measured[value]) for value in eps_sweep},
        "prefix_seconds": prefix_seconds,
        "identify_seconds": identify_seconds,
        "reduction_seconds": main.seconds,
        "forward_seconds": forward_seconds,
        "tokens": int(ids.numel()),
    }


def run_task(
    model: SteerableModel,
    task_name: str,
    *,
    contexts: int,
    order: int,
    orders: tuple[int, ...],
    bases: tuple[BasisKind, ...],
    eps: float,
    eps_sweep: tuple[float, ...],
    seed: int,
    warm_up: bool,
    progress: bool,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run the benchmark on one task; return its summary and the per-context results."""
    task = load_task(task_name)
    directions = concept_directions(model, task, evaluate_split=None)
    readout = projection_readout(directions)
    texts, _ = task.split("heldout")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(texts), size=min(contexts, len(texts)), replace=False)
    token_ids = [model.tokenize(texts[index])["input_ids"][0] for index in chosen]

    if warm_up:
        # The first identification and forward pay one-time costs (allocator, kernel selection).
        identify(model, token_ids[0], directions.directions, readout, order=order)
        _timed_forward(model, token_ids[0])

    rows = []
    for ids in tqdm(token_ids, desc=task_name, disable=not progress, leave=False, file=sys.stderr):
        rows.append(
            evaluate_context(
                model,
                ids,
                directions.directions,
                readout,
                order=order,
                orders=orders,
                bases=bases,
                eps=eps,
                eps_sweep=eps_sweep,
                seed=seed,
            )
        )

    summary = {
        "contexts": len(rows),
        "tokens_mean": float(np.mean([row["tokens"] for row in rows])),
        "llv": _summarise([row["llv"] for row in rows]),
        "lti": _summarise([row["lti"] for row in rows]),
        "linear": _summarise([row["linear"] for row in rows]),
        "order_sweep": {str(d): _mean([row["order_sweep"][d][0] for row in rows]) for d in orders},
        "basis": {basis: _summarise([row["basis"][basis] for row in rows]) for basis in bases},
        "eps_sweep": {str(value): _summarise([row["eps_sweep"][value] for row in rows]) for value in eps_sweep},
        "identify_seconds_per_context": float(np.mean([row["identify_seconds"] for row in rows])),
        "forward_seconds_per_context": float(np.mean([row["forward_seconds"] for row in rows])),
    }
    return summary, rows


def _print_summary(results: dict[str, Any], stream: Any) -> None:
    order = results["order"]
    print(
        f"\n{results['model']} ({results['n_layers']} layers, hidden {results['hidden_size']}); "
        f"measured gains: batched, eps {results['eps']}; mean over contexts",
        file=stream,
    )
    for task, summary in results["tasks"].items():
        print(
            f"\n{task}: {summary['contexts']} held-out contexts, {summary['tokens_mean']:.1f} tokens on average",
            file=stream,
        )
        for name, label in (
            ("llv", f"layer-varying d={order}"),
            ("lti", "time-invariant fit"),
            ("linear", f"layer-varying d={order} vs adjoint"),
        ):
            row = summary[name]
            print(f"  {label:<36} Spearman {row['spearman']:.3f}  Pearson {row['pearson']:.3f}", file=stream)
        sweep = "  ".join(f"d={d}: {value:.3f}" for d, value in summary["order_sweep"].items())
        print(f"  order sweep (Spearman)  {sweep}", file=stream)
        sweep = "  ".join(f"{basis}: {row['spearman']:.3f}" for basis, row in summary["basis"].items())
        print(f"  basis at d={order} (Spearman)  {sweep}", file=stream)
        sweep = "  ".join(f"eps={value}: {row['spearman']:.3f}" for value, row in summary["eps_sweep"].items())
        print(f"  measured eps (Spearman)  {sweep}", file=stream)
    print(
        f"\nIdentify one context (d={order}, prefix pass included): {results['identify_seconds_per_context']:.3f} s; "
        f"one full forward: {results['forward_seconds_per_context']:.3f} s "
        f"(ratio {results['identify_seconds_per_context'] / results['forward_seconds_per_context']:.1f})",
        file=stream,
    )


def _parse_list(text: str, kind: type, option: str, parser: argparse.ArgumentParser) -> tuple[Any, ...]:
    try:
        values = tuple(kind(item) for item in text.split(",") if item.strip())
    except ValueError:
        parser.error(f"{option} must be a comma-separated list of {kind.__name__} values, got {text!r}")
    if not values:
        parser.error(f"{option} is empty; pass at least one value")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Compare surrogate-predicted layer gains with measured ones on a real model.",
    )
    parser.add_argument(
        "--model", default="smollm2-135m", help="embedded name, local directory or hub id (default: smollm2-135m)"
    )
    parser.add_argument(
        "--tasks",
        default=",".join(BUILTIN_TASKS),
        help=f"comma-separated built-in tasks (default: {','.join(BUILTIN_TASKS)})",
    )
    parser.add_argument(
        "--contexts", type=int, default=None, help="held-out contexts per task (default: 16, or 2 with --quick)"
    )
    parser.add_argument(
        "--order",
        type=int,
        default=32,
        help="surrogate order d of the main comparison and the basis ablation (default: 32)",
    )
    parser.add_argument(
        "--orders",
        default=None,
        help="comma-separated orders of the order sweep "
        f"(default: {','.join(map(str, ORDERS))}, "
        f"or {','.join(map(str, QUICK_ORDERS))} with --quick)",
    )
    parser.add_argument(
        "--bases",
        default=None,
        help=f"comma-separated bases of the ablation, from {', '.join(BASES)} "
        f"(default: all three, or {','.join(QUICK_BASES)} with --quick)",
    )
    parser.add_argument(
        "--eps", type=float, default=0.1, help="injection size of the measured gains, model units (default: 0.1)"
    )
    parser.add_argument(
        "--eps-sweep",
        default=None,
        help="comma-separated injection sizes of the eps sweep, model units "
        f"(default: {','.join(map(str, EPS_SWEEP))}, or {','.join(map(str, QUICK_EPS_SWEEP))} "
        "with --quick)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the context sampling and the random basis (default: 0)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="2 contexts per task and shorter sweeps: about a minute on 2 idle CPU cores",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line of standard output")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)

    if args.contexts is None:
        args.contexts = 2 if args.quick else 16
    if args.contexts < 1:
        parser.error(f"--contexts must be >= 1, got {args.contexts}")
    if args.orders:
        args.orders = _parse_list(args.orders, int, "--orders", parser)
    else:
        args.orders = QUICK_ORDERS if args.quick else ORDERS
    bad_orders = [d for d in (args.order, *args.orders) if d < 1]
    if bad_orders:
        parser.error(f"orders must be >= 1, got {bad_orders}")
    if args.bases:
        args.bases = _parse_list(args.bases, str, "--bases", parser)
    else:
        args.bases = QUICK_BASES if args.quick else BASES
    unknown = [basis for basis in args.bases if basis not in BASES]
    if unknown:
        parser.error(f"unknown basis {unknown}; choose from {', '.join(BASES)}")
    if args.eps_sweep:
        args.eps_sweep = _parse_list(args.eps_sweep, float, "--eps-sweep", parser)
    else:
        args.eps_sweep = QUICK_EPS_SWEEP if args.quick else EPS_SWEEP
    bad_eps = [value for value in (args.eps, *args.eps_sweep) if not math.isfinite(value) or value <= 0]
    if bad_eps:
        parser.error(f"injection sizes must be finite and > 0, got {bad_eps}")
    tasks = [task.strip() for task in args.tasks.split(",") if task.strip()]
    unknown = [task for task in tasks if task not in BUILTIN_TASKS]
    if unknown or not tasks:
        parser.error(f"unknown task(s) {unknown}; choose from {', '.join(BUILTIN_TASKS)}")
    args.tasks = tasks
    return args


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
    too_large = [d for d in (args.order, *args.orders) if d > model.hidden_size]
    if too_large:
        print(
            f"error: orders {too_large} exceed the hidden size {model.hidden_size} of {model.name}; "
            f"pass --order and --orders <= {model.hidden_size}",
            file=sys.stderr,
        )
        raise SystemExit(2)

    results: dict[str, Any] = {
        "model": model.name,
        "n_layers": model.n_layers,
        "hidden_size": model.hidden_size,
        "order": args.order,
        "eps": args.eps,
        "seed": args.seed,
        "quick": args.quick,
        "tasks": {},
    }
    all_rows = []
    for position, task_name in enumerate(args.tasks):
        summary, rows = run_task(
            model,
            task_name,
            contexts=args.contexts,
            order=args.order,
            orders=args.orders,
            bases=args.bases,
            eps=args.eps,
            eps_sweep=args.eps_sweep,
            seed=args.seed,
            warm_up=position == 0,
            progress=not args.no_progress,
        )
        results["tasks"][task_name] = summary
        all_rows.extend(rows)

    results["identify_seconds_per_context"] = float(np.mean([row["identify_seconds"] for row in all_rows]))
    results["prefix_seconds_per_context"] = float(np.mean([row["prefix_seconds"] for row in all_rows]))
    results["reduction_seconds_per_context"] = float(np.mean([row["reduction_seconds"] for row in all_rows]))
    results["forward_seconds_per_context"] = float(np.mean([row["forward_seconds"] for row in all_rows]))
    results["seconds"] = time.perf_counter() - started

    _print_summary(results, sys.stdout)
    print(f"Total time: {results['seconds']:.1f} s")
    if args.json:
        print(json.dumps(results, default=float))
    return results


if __name__ == "__main__":
    main()
