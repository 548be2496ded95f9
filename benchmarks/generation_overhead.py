"""Measure the cost of steering hooks during greedy generation, and check cache consistency.

Two measurements on the embedded model (or any model name ``load_model``
accepts):

* tokens per second of greedy ``generate`` unsteered and steered with a
  schedule at every layer. ``overhead`` is steered time / unsteered time - 1
  for ``positions="all"``, the worst case, because every forward call then
  adds a vector at every layer. ``"prompt_last"`` is timed too. After the
  prompt, its hooks find nothing to add.
* for every position mode, whether steered greedy generation gives the same
  tokens with the key/value cache and without it (``cache_equal``).

The steering schedule is a seeded random unit vector per layer times
``--scale``. The report states whether it changed the generated tokens,
because an equality check on unchanged tokens would prove little. Timed
runs alternate steered and unsteered generation and the median of the
repeats is used, so slow drift of a shared machine affects both.

Usage::

    python benchmarks/generation_overhead.py [--quick] [--json] [--model NAME]

With ``--json`` the last line of stdout is one JSON object with at least
``overhead`` (fractional slowdown, 0.03 = 3%) and ``cache_equal`` (bool).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
import transformers

from steercontrol.generation import steer
from steercontrol.models import SteerableModel, load_model

PROMPTS = [
    "The service at this hotel was",
    "I watched the movie last night and",
    "The food at the new place downtown",
    "My week at work has been",
]
MODES = ("prompt_last", "prompt", "generated", "all")


def random_schedule(model: SteerableModel, scale: float, seed: int) -> torch.Tensor:
    """Return an (n_layers, hidden) schedule of seeded random vectors of norm ``scale``."""
    generator = torch.Generator().manual_seed(seed)
    vectors = torch.randn(model.n_layers, model.hidden_size, generator=generator, dtype=torch.float64)
    return scale * vectors / vectors.norm(dim=1, keepdim=True)


def greedy(model: SteerableModel, batch: dict[str, torch.Tensor], max_new_tokens: int, use_cache: bool = True) -> Any:
    with torch.no_grad():
        return model.model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,
            do_sample=False,
            use_cache=use_cache,
            pad_token_id=model.tokenizer.pad_token_id,
        )


def time_generation(
    model: SteerableModel,
    batch: dict[str, torch.Tensor],
    schedule: torch.Tensor,
    modes: Sequence[str],
    max_new_tokens: int,
    repeats: int,
) -> dict[str, list[float]]:
    """Return wall-clock seconds per repeat for unsteered and each steered mode, interleaved."""
    times: dict[str, list[float]] = {"unsteered": [], **{mode: [] for mode in modes}}
    # Warm-up: first-call allocations and lazy imports.
    greedy(model, batch, 2)
    for _ in range(repeats):
        for name in times:
            start = time.perf_counter()
            if name == "unsteered":
                greedy(model, batch, max_new_tokens)
            else:
                with steer(model, schedule, positions=name):
                    greedy(model, batch, max_new_tokens)
            times[name].append(time.perf_counter() - start)
    return times


def check_cache_equality(
    model: SteerableModel, batch: dict[str, torch.Tensor], schedule: torch.Tensor, max_new_tokens: int
) -> dict[str, dict[str, bool]]:
    """Return, per mode, whether cached and recomputed steered runs agree and whether steering changed tokens."""
    plain = greedy(model, batch, max_new_tokens)
    results = {}
    for mode in MODES:
        with steer(model, schedule, positions=mode):
            cached = greedy(model, batch, max_new_tokens, use_cache=True)
        with steer(model, schedule, positions=mode):
            recomputed = greedy(model, batch, max_new_tokens, use_cache=False)
        results[mode] = {
            "equal": bool(torch.equal(cached, recomputed)),
            "changed_tokens": not torch.equal(cached, plain),
        }
    return results


def main(argv: Sequence[str] | None = None, *, model: SteerableModel | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="use 2 prompts, 16 new tokens and 3 repeats")
    parser.add_argument("--model", default="smollm2-135m", help="model for load_model (default smollm2-135m)")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="tokens generated per prompt (default 48)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per configuration (default 5)")
    parser.add_argument("--scale", type=float, default=4.0, help="norm of the injection at each layer (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random schedule (default 0)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args(argv)

    prompts = PROMPTS[:2] if args.quick else PROMPTS
    max_new_tokens = 16 if args.quick else args.max_new_tokens
    repeats = 3 if args.quick else args.repeats

    model = model or load_model(args.model)
    batch = model.tokenize(prompts, padding_side="left")
    schedule = random_schedule(model, args.scale, args.seed)

    times = time_generation(model, batch, schedule, ("prompt_last", "all"), max_new_tokens, repeats)
    tokens = len(prompts) * max_new_tokens
    median = {name: statistics.median(values) for name, values in times.items()}
    tokens_per_second = {name: tokens / seconds for name, seconds in median.items()}
    overheads = {name: median[name] / median["unsteered"] - 1 for name in median if name != "unsteered"}
    equality = check_cache_equality(model, batch, schedule, max_new_tokens)
    cache_equal = all(result["equal"] for result in equality.values())

    print(
        f"model {model.name}: {model.n_layers} layers, batch {len(prompts)}, {max_new_tokens} new tokens, "
        f"{repeats} repeats, torch threads {torch.get_num_threads()}"
    )
    print(f"{'run':<14}{'median s':>10}{'tokens/s':>10}{'overhead':>10}")
    for name in median:
        overhead = f"{100 * overheads[name]:+.1f}%" if name in overheads else ""
        print(f"{name:<14}{median[name]:>10.3f}{tokens_per_second[name]:>10.1f}{overhead:>10}")
    print(f"{'mode':<14}{'cache == no cache':>18}{'tokens changed':>16}")
    for mode, result in equality.items():
        print(f"{mode:<14}{str(result['equal']):>18}{str(result['changed_tokens']):>16}")

    report = {
        "benchmark": "generation_overhead",
        "overhead": overheads["all"],
        "overhead_prompt_last": overheads["prompt_last"],
        "cache_equal": cache_equal,
        "cache_equal_by_mode": {mode: result["equal"] for mode, result in equality.items()},
        "steering_changed_tokens": {mode: result["changed_tokens"] for mode, result in equality.items()},
        "tokens_per_second": tokens_per_second,
        "median_seconds": median,
        "settings": {
            "model": model.name,
            "prompts": len(prompts),
            "max_new_tokens": max_new_tokens,
            "repeats": repeats,
            "scale": args.scale,
            "quick": args.quick,
        },
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
        },
    }
    if args.json:
        print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
