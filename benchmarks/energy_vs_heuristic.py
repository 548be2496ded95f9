"""Energy benchmark: minimum-energy schedules against heuristic schedules.

For each task, on held-out contexts of a real model:

1. concept directions from the concept split, and the default readout
   (projection of the final-normed state on the final concept direction);
2. per context, a layer-varying surrogate (and its time-invariant fit) and
   the measured gain profile, with their Spearman and Pearson agreement;
3. schedules planned for the target shift. These are minimum energy on the
   context's surrogate and the same refined by successive linearisation
   around the steered trajectory (``min_energy_iterated``, our addition).
   Next come minimum energy on a surrogate pooled over the operating split,
   and the heuristics: uniform over all layers, last layer, middle layer,
   early layer, a random single layer, and the best single layer by
   measured gain;
4. each schedule scaled on the full model by bisection until the readout
   moves by the target; energy relative to the minimum-energy schedule,
   next-token KL divergence, and failures.

Run ``python benchmarks/energy_vs_heuristic.py --help`` for the options.
With ``--json`` the last line of standard output is one JSON object.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import pearsonr, spearmanr
from tqdm import tqdm

from steercontrol.concepts import BUILTIN_TASKS, concept_directions, load_task, projection_readout
from steercontrol.controller import Controller
from steercontrol.evaluate import calibrate, refine_min_energy
from steercontrol.exceptions import CalibrationWarning, SteerControlError
from steercontrol.heuristics import heuristic_schedules
from steercontrol.identify import identify, identify_pooled, time_invariant
from steercontrol.models import SteerableModel, load_model
from steercontrol.plots import plot_energy_ratios, plot_gain_profiles, plot_schedule_profiles
from steercontrol.prefix import FrozenContext
from steercontrol.sensitivity import measure_gains

logger = logging.getLogger("energy_vs_heuristic")

SCHEDULE_ORDER = [
    "min_energy",
    "min_energy_iterated",
    "min_energy_pooled",
    "uniform_all",
    "best_single_layer",
    "middle_layer",
    "early_layer",
    "last_layer",
    "random_single_layer",
]


def _correlations(predicted: np.ndarray, measured: np.ndarray) -> tuple[float, float]:
    if np.ptp(predicted) == 0 or np.ptp(measured) == 0:
        return math.nan, math.nan
    return float(spearmanr(predicted, measured)[0]), float(pearsonr(predicted, measured)[0])


def _nan_stats(values: list[float]) -> dict[str, float]:
    finite = np.asarray([v for v in values if np.isfinite(v)])
    if finite.size == 0:
        return {"median": math.nan, "q25": math.nan, "q75": math.nan, "mean": math.nan}
    q25, median, q75 = np.percentile(finite, [25, 50, 75])
    return {"median": float(median), "q25": float(q25), "q75": float(q75), "mean": float(finite.mean())}


def run_task(
    model: SteerableModel,
    task_name: str,
    *,
    contexts: int,
    pooled_contexts: int,
    order: int,
    target_shift: float | None,
    target_fraction: float,
    eps: float,
    seed: int,
    progress: bool,
    iterations: int = 3,
    max_per_class: int | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, np.ndarray]]:
    """Run the benchmark on one task; return the summary, per-context rows and profiles."""
    task = load_task(task_name)
    directions = concept_directions(model, task, evaluate_split=None, max_per_class=max_per_class)
    readout = projection_readout(directions)
    target = target_shift if target_shift is not None else target_fraction * directions.metadata["final_gap"]

    texts, _ = task.split("heldout")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(texts), size=min(contexts, len(texts)), replace=False)

    operating, _ = task.split("operating")
    pooled_ids = [model.tokenize(text)["input_ids"][0] for text in operating[:pooled_contexts]]
    pooled = identify_pooled(model, pooled_ids, directions.directions, readout, order=order)
    pooled_controller = Controller(pooled.surrogate)

    rows: list[dict[str, Any]] = []
    measured_all, predicted_all, lti_all = [], [], []
    schedule_shapes: dict[str, Any] = {}
    bar = tqdm(chosen, desc=task_name, disable=not progress, leave=False, file=sys.stderr)
    for index in bar:
        ids = model.tokenize(texts[index])["input_ids"][0]
        context = FrozenContext(model, ids)

        identified = identify(model, context, directions.directions, readout, order=order)
        predicted = identified.surrogate.gain_profile()
        lti_gains = time_invariant(identified).gain_profile()
        measured = measure_gains(
            model, ids, directions.directions, readout, method="batched", eps=eps, context=context
        ).gains
        measured_all.append(measured)
        predicted_all.append(predicted)
        lti_all.append(lti_gains)

        controller = Controller(identified.surrogate)
        planned = heuristic_schedules(controller, target, measured_gains=measured, seed=seed + int(index))
        planned["min_energy_pooled"] = pooled_controller.min_energy(target)
        vectors = {}
        for name, schedule in planned.items():
            source = pooled.surrogate if name == "min_energy_pooled" else identified.surrogate
            vectors[name] = schedule.vectors(source.input_directions)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CalibrationWarning)
            calibrations = calibrate(model, context, vectors, readout, target)
            if iterations > 0 and calibrations["min_energy"].reached:
                start = calibrations["min_energy"].scale * planned["min_energy"].amplitude_profile()
                refined, _ = refine_min_energy(
                    model,
                    context,
                    directions.directions,
                    readout,
                    target,
                    start,
                    iterations=iterations,
                    order=order,
                )
                unit = identified.surrogate.input_directions
                vectors["min_energy_iterated"] = np.stack([refined[k] * unit[k][:, 0] for k in range(len(unit))])
                calibrations.update(
                    calibrate(model, context, {"min_energy_iterated": vectors["min_energy_iterated"]}, readout, target)
                )
                planned["min_energy_iterated"] = planned["min_energy"]
        reference = calibrations["min_energy"].energy

        if not schedule_shapes:
            # Signed amplitude along v_k of each calibrated schedule, first context only.
            unit = np.stack([d[:, 0] for d in identified.surrogate.input_directions])
            for name, result in calibrations.items():
                if result.reached:
                    schedule_shapes[name] = result.scale * np.einsum("lh,lh->l", vectors[name], unit)
            schedule_shapes["context"] = texts[index]

        spearman, pearson = _correlations(predicted, measured)
        lti_spearman, lti_pearson = _correlations(lti_gains, measured)
        for name, result in calibrations.items():
            rows.append(
                {
                    "task": task_name,
                    "context": int(index),
                    "text": texts[index],
                    "schedule": name,
                    "reached": result.reached,
                    "scale": result.scale,
                    "energy": result.energy,
                    "energy_ratio": result.energy / reference
                    if result.reached and np.isfinite(reference)
                    else math.nan,
                    "achieved_shift": result.achieved_shift,
                    "target_shift": target,
                    "kl": result.kl,
                    "layer": planned[name].metadata.get("layer", ""),
                    "llv_spearman": spearman,
                    "llv_pearson": pearson,
                    "lti_spearman": lti_spearman,
                    "lti_pearson": lti_pearson,
                    "identify_seconds": identified.seconds,
                }
            )

    profiles = {
        "measured": np.asarray(measured_all),
        "predicted": np.asarray(predicted_all),
        "time_invariant": np.asarray(lti_all),
    }
    summary = _summarise_task(rows, directions, target, readout.to_dict(), profiles)
    profiles["schedule_shapes"] = schedule_shapes
    return summary, rows, profiles


def _summarise_task(
    rows: list[dict[str, Any]], directions: Any, target: float, readout: dict[str, Any], profiles: dict[str, np.ndarray]
) -> dict[str, Any]:
    names = [name for name in SCHEDULE_ORDER if any(row["schedule"] == name for row in rows)]
    schedules = {}
    for name in names:
        mine = [row for row in rows if row["schedule"] == name]
        ratio = _nan_stats([row["energy_ratio"] for row in mine])
        kl = _nan_stats([row["kl"] for row in mine if row["reached"]])
        schedules[name] = {
            "energy_ratio_median": ratio["median"],
            "energy_ratio_q25": ratio["q25"],
            "energy_ratio_q75": ratio["q75"],
            "kl_median": kl["median"],
            "reached": sum(row["reached"] for row in mine),
            "failed": sum(not row["reached"] for row in mine),
        }
    per_context = {row["context"]: row for row in rows}.values()
    mean_measured = profiles["measured"].mean(0)
    averaged_spearman, averaged_pearson = _correlations(profiles["predicted"].mean(0), mean_measured)
    return {
        "target_shift": target,
        "readout": readout,
        "final_gap": directions.metadata["final_gap"],
        "contexts": len(per_context),
        "agreement": {
            "llv": {
                "spearman": float(np.nanmean([r["llv_spearman"] for r in per_context])),
                "pearson": float(np.nanmean([r["llv_pearson"] for r in per_context])),
                "spearman_of_mean_profile": averaged_spearman,
                "pearson_of_mean_profile": averaged_pearson,
            },
            "lti": {
                "spearman": float(np.nanmean([r["lti_spearman"] for r in per_context])),
                "pearson": float(np.nanmean([r["lti_pearson"] for r in per_context])),
            },
        },
        "identify_seconds_per_context": float(np.mean([r["identify_seconds"] for r in per_context])),
        "schedules": schedules,
    }


def _print_table(results: dict[str, Any], stream: Any) -> None:
    for task, summary in results["tasks"].items():
        agreement = summary["agreement"]
        print(
            f"\n{task}: {summary['contexts']} held-out contexts, target shift {summary['target_shift']:.3g} "
            f"(class gap {summary['final_gap']:.3g}); agreement with measured gains: "
            f"layer-varying Spearman {agreement['llv']['spearman']:.3f} / Pearson {agreement['llv']['pearson']:.3f}, "
            f"time-invariant Spearman {agreement['lti']['spearman']:.3f}",
            file=stream,
        )
        print(f"  {'schedule':<22}{'energy ratio median [IQR]':<32}{'KL median (nats)':<18}{'reached':>8}", file=stream)
        for name, row in summary["schedules"].items():
            spread = f"{row['energy_ratio_median']:.3g} [{row['energy_ratio_q25']:.3g}, {row['energy_ratio_q75']:.3g}]"
            reached = f"{row['reached']}/{row['reached'] + row['failed']}"
            print(f"  {name:<22}{spread:<32}{row['kl_median']:<18.3g}{reached:>8}", file=stream)


def _write_outputs(out: Path, results: dict[str, Any], rows: list[dict[str, Any]], profiles: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)

    def atomic_write(path: Path, text: str) -> None:
        partial = path.with_name(path.name + ".partial")
        partial.write_text(text)
        partial.replace(path)

    atomic_write(out / "results.json", json.dumps(results, indent=2, default=float))
    if rows:
        partial = out / "contexts.csv.partial"
        with partial.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        partial.replace(out / "contexts.csv")
    gains_only = {task: {k: v for k, v in p.items() if k != "schedule_shapes"} for task, p in profiles.items()}
    plot_gain_profiles(gains_only, out / "gain_profiles.png")
    shapes = {task: p.get("schedule_shapes", {}) for task, p in profiles.items()}
    plot_schedule_profiles(shapes, out / "schedules.png")
    ratios = {
        task: {
            name: [row["energy_ratio"] for row in rows if row["task"] == task and row["schedule"] == name]
            for name in summary["schedules"]
        }
        for task, summary in results["tasks"].items()
    }
    plot_energy_ratios(ratios, out / "energy_ratios.png")
    atomic_write(out / "report.md", _report(results, shapes))


def _report(results: dict[str, Any], shapes: dict[str, Any]) -> str:
    """Return a Markdown report of a run, to read next to its PNG files."""
    lines = [
        "# Energy benchmark report",
        "",
        f"- model: `{results['model']}` ({results['n_layers']} blocks, hidden size {results['hidden_size']})",
        f"- surrogate order: {results['order']}, measured gains at eps = {results['eps']}",
        f"- quick run: {results['quick']}, total time {results['seconds']:.1f} s",
        "",
        "Energy is the sum over layers of the squared injection norms, relative to the calibrated",
        "minimum-energy schedule of the same context (1.0). A schedule that did not reach the target",
        "within 64 times its planned scale is counted under 'reached' and left out of the median.",
        "",
        "![Energy ratio per schedule](energy_ratios.png)",
        "",
        "![Measured and predicted layer gains](gain_profiles.png)",
        "",
        "![Calibrated schedules of the first context of each task](schedules.png)",
        "",
    ]
    for task, summary in results["tasks"].items():
        agreement = summary["agreement"]
        lines += [
            f"## {task}",
            "",
            f"- readout: {summary['readout']['description']}",
            f"- target shift {summary['target_shift']:.3g} (half the class-mean gap {summary['final_gap']:.3g})",
            f"- held-out contexts: {summary['contexts']}; first context: {shapes.get(task, {}).get('context', '')!r}",
            f"- agreement with measured gains, layer-varying: Spearman {agreement['llv']['spearman']:.3f}, "
            f"Pearson {agreement['llv']['pearson']:.3f}; time-invariant: Spearman "
            f"{agreement['lti']['spearman']:.3f}, Pearson {agreement['lti']['pearson']:.3f}",
            "",
            "| schedule | energy ratio median | IQR | KL median (nats) | reached |",
            "|---|---|---|---|---|",
        ]
        for name, row in summary["schedules"].items():
            reached = f"{row['reached']}/{row['reached'] + row['failed']}"
            lines.append(
                f"| {name} | {row['energy_ratio_median']:.3g} | {row['energy_ratio_q25']:.3g} – "
                f"{row['energy_ratio_q75']:.3g} | {row['kl_median']:.3g} | {reached} |"
            )
        lines.append("")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Compare minimum-energy injection schedules with heuristic ones on a real model.",
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
        "--contexts", type=int, default=None, help="held-out contexts per task (default: 16, or 4 with --quick)"
    )
    parser.add_argument(
        "--pooled-contexts",
        type=int,
        default=None,
        help="operating-split contexts for the pooled surrogate (default: 16, or 4 with --quick)",
    )
    parser.add_argument(
        "--target-shift",
        type=float,
        default=None,
        help="readout change to reach, in readout units (default: --target-fraction times the "
        "distance between the class means along the final concept direction)",
    )
    parser.add_argument(
        "--target-fraction",
        type=float,
        default=0.5,
        help="target as a fraction of the class-mean distance (default: 0.5)",
    )
    parser.add_argument("--order", type=int, default=32, help="surrogate order d (default: 32)")
    parser.add_argument(
        "--eps", type=float, default=0.1, help="injection size for measured gains, model units (default: 0.1)"
    )
    parser.add_argument(
        "--iterations",
        type=int,
        default=3,
        help="relinearisations of min_energy_iterated; 0 skips that schedule (default: 3)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of context sampling and random heuristics (default: 0)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="4 contexts per task, 4 pooled contexts and 48 concept texts per class for the directions",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for report.md, JSON, CSV and PNG outputs (default: none, print the summary only)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line of standard output")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)
    default_count = 4 if args.quick else 16
    if args.contexts is None:
        args.contexts = default_count
    if args.pooled_contexts is None:
        args.pooled_contexts = default_count
    if args.iterations < 0:
        parser.error(f"--iterations must be >= 0, got {args.iterations}")
    for name in ("contexts", "pooled_contexts", "order"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in BUILTIN_TASKS]
    if unknown or not tasks:
        parser.error(f"unknown task(s) {unknown}; choose from {', '.join(BUILTIN_TASKS)}")
    args.tasks = tasks
    if args.target_shift is not None and (not math.isfinite(args.target_shift) or args.target_shift == 0):
        parser.error(f"--target-shift must be finite and non-zero, got {args.target_shift}")
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

    results: dict[str, Any] = {
        "model": model.name,
        "n_layers": model.n_layers,
        "hidden_size": model.hidden_size,
        "order": args.order,
        "eps": args.eps,
        "quick": args.quick,
        "tasks": {},
    }
    all_rows: list[dict[str, Any]] = []
    profiles: dict[str, Any] = {}
    for task_name in args.tasks:
        summary, rows, task_profiles = run_task(
            model,
            task_name,
            contexts=args.contexts,
            pooled_contexts=args.pooled_contexts,
            order=args.order,
            target_shift=args.target_shift,
            target_fraction=args.target_fraction,
            eps=args.eps,
            seed=args.seed,
            progress=not args.no_progress,
            iterations=args.iterations,
            max_per_class=48 if args.quick else None,
        )
        results["tasks"][task_name] = summary
        all_rows.extend(rows)
        profiles[task_name] = task_profiles
    results["seconds"] = time.perf_counter() - started

    _print_table(results, sys.stdout)
    if args.out is not None:
        _write_outputs(args.out, results, all_rows, profiles)
        print(f"\nWrote report.md, results.json, contexts.csv and three PNG plots to {args.out}")
    print(f"Total time: {results['seconds']:.1f} s")
    if args.json:
        print(json.dumps(results, default=float))
    return results


if __name__ == "__main__":
    main()
