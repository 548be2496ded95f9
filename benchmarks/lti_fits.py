"""Time-invariant fits compared: which single (A, B, C) best predicts the layer gains?

For held-out contexts of each task, the script identifies the layer-varying
surrogate (reachable basis), measures the gains on the full model by
batched finite injections, and compares with the measured gains the gain
profiles of three time-invariant fits:

- ``common_basis``: the layer matrices mapped into one common basis and
  averaged (``identify.time_invariant``, the default fit);
- ``common_basis_gains``: the same A, with B and C refitted to the
  layer-varying gains (``time_invariant(..., refine="gains")``);
- ``realize_<n>``: the eigensystem realisation of the layer-varying gains at
  order n (``reduction.realize_gains``), a black-box state.

It prints the mean Spearman and Pearson correlation across layers over all
contexts, and the median spectral radius of each fit's A. With ``--json``
the last line of standard output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any

import numpy as np

from steercontrol.concepts import BUILTIN_TASKS, concept_directions, load_task, projection_readout
from steercontrol.exceptions import SteerControlError
from steercontrol.identify import identify, time_invariant
from steercontrol.models import SteerableModel, load_model
from steercontrol.prefix import FrozenContext
from steercontrol.reduction import realize_gains
from steercontrol.report import gain_agreement
from steercontrol.sensitivity import measure_gains


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Compare time-invariant fits of the layer-varying surrogate.")
    parser.add_argument(
        "--model", default="smollm2-135m", help="embedded name, local directory or hub id (default: smollm2-135m)"
    )
    parser.add_argument(
        "--tasks", default=",".join(BUILTIN_TASKS), help=f"comma-separated tasks (default: {','.join(BUILTIN_TASKS)})"
    )
    parser.add_argument("--contexts", type=int, default=4, help="held-out contexts per task (default: 4)")
    parser.add_argument("--order", type=int, default=32, help="order of the layer-varying surrogate (default: 32)")
    parser.add_argument(
        "--realize-orders", default="2,4,8", help="comma-separated orders of the realisations (default: 2,4,8)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the context sampling (default: 0)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line of standard output")
    args = parser.parse_args(argv)
    args.tasks = [task.strip() for task in args.tasks.split(",") if task.strip()]
    unknown = [task for task in args.tasks if task not in BUILTIN_TASKS]
    if unknown or not args.tasks:
        parser.error(f"unknown task(s) {unknown}; choose from {', '.join(BUILTIN_TASKS)}")
    try:
        args.realize_orders = [int(text) for text in args.realize_orders.split(",") if text.strip()]
    except ValueError:
        parser.error(f"--realize-orders must be comma-separated integers, got {args.realize_orders!r}")
    if args.contexts < 1 or args.order < 1 or not args.realize_orders or min(args.realize_orders) < 1:
        parser.error("--contexts, --order and every --realize-orders value must be >= 1")
    return args


def main(argv: list[str] | None = None, *, model: SteerableModel | None = None) -> dict[str, Any]:
    """Run the comparison on ``model`` (or the one ``--model`` names); return the results."""
    args = parse_args(argv)
    started = time.perf_counter()
    try:
        model = model or load_model(args.model)
    except SteerControlError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from error

    scores: dict[str, list[tuple[float, float]]] = {}
    radii: dict[str, list[float]] = {}
    for task_name in args.tasks:
        task = load_task(task_name)
        directions = concept_directions(model, task, evaluate_split=None)
        readout = projection_readout(directions)
        texts, _ = task.split("heldout")
        chosen = np.random.default_rng(args.seed).choice(len(texts), size=min(args.contexts, len(texts)), replace=False)
        for index in chosen:
            ids = model.tokenize(texts[index])["input_ids"][0]
            context = FrozenContext(model, ids)
            measured = measure_gains(
                model, ids, directions.directions, readout, method="batched", context=context
            ).gains
            identified = identify(model, context, directions.directions, readout, order=args.order)
            fits = {
                "common_basis": time_invariant(identified),
                "common_basis_gains": time_invariant(identified, refine="gains"),
            }
            for order in args.realize_orders:
                fits[f"realize_{order}"] = realize_gains(identified.surrogate, order)
            for name, fitted in fits.items():
                scores.setdefault(name, []).append(gain_agreement(fitted.gain_profile(), measured))
                radii.setdefault(name, []).append(fitted.spectral_radius())

    summary = {
        name: {
            "contexts": len(values),
            "spearman": float(np.nanmean([value[0] for value in values])),
            "pearson": float(np.nanmean([value[1] for value in values])),
            "spectral_radius_median": float(np.median(radii[name])),
        }
        for name, values in scores.items()
    }
    results = {"model": model.name, "order": args.order, "tasks": args.tasks, "fits": summary}
    results["seconds"] = time.perf_counter() - started

    print(f"{model.name}: time-invariant fits against measured gains, mean over contexts")
    for name, row in summary.items():
        spearman = "nan" if math.isnan(row["spearman"]) else f"{row['spearman']:.3f}"
        print(
            f"  {name:<20} Spearman {spearman}  Pearson {row['pearson']:.3f}  "
            f"median spectral radius {row['spectral_radius_median']:.2f}  ({row['contexts']} contexts)"
        )
    print(f"Total time: {results['seconds']:.1f} s")
    if args.json:
        print(json.dumps(results, default=float))
    return results


if __name__ == "__main__":
    main()
