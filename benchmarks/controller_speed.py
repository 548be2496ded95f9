"""Time minimum-energy planning on random linear surrogates.

Measures three cases and prints a table of wall-clock times in milliseconds:

* ``closed_form``: unconstrained ``Controller.min_energy`` for L = 48 layers,
  one input per layer and one output (the Gramian solve).
* ``constrained_first``: the first capped solve for L = 36, which includes
  building and canonicalising the cvxpy problem.
* ``constrained_resolve``: later capped solves on the same controller with new
  targets and caps. These reuse the cached problem through cvxpy Parameters.

Usage::

    python benchmarks/controller_speed.py [--repeats N] [--seed S] [--json]

With ``--json`` the last line of stdout is one JSON object with the same
numbers and the library versions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import cvxpy as cp
import numpy as np

from steercontrol.controller import Controller
from steercontrol.system import LayerVaryingSurrogate


def random_surrogate(n_layers: int, state_dim: int, seed: int) -> LayerVaryingSurrogate:
    """Return a random surrogate with scalar inputs, one output and d_0 = 1."""
    rng = np.random.default_rng(seed)
    dims = [1] + [state_dim] * n_layers
    A = [rng.standard_normal((dims[k + 1], dims[k])) / np.sqrt(dims[k]) for k in range(n_layers)]
    B = [rng.standard_normal((state_dim, 1)) for _ in range(n_layers)]
    return LayerVaryingSurrogate(A=A, B=B, C=rng.standard_normal((1, state_dim)))


def time_calls(function, repeats: int) -> list[float]:
    """Return the wall-clock time of each call in milliseconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(1e3 * (time.perf_counter() - start))
    return times


def feasible_binding_cap(controller: Controller, target: float) -> float:
    """Return a cap halfway between the smallest feasible one and the closed-form schedule's largest input."""
    gains = np.abs(np.hstack(controller.gains)[0])
    smallest = abs(target) / np.sum(gains)
    largest = np.max(np.abs(controller.min_energy(target).amplitude_profile()))
    return 0.5 * (smallest + largest)


def summarize(times: list[float]) -> dict[str, float]:
    return {"median_ms": statistics.median(times), "min_ms": min(times), "n": len(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=200, help="closed-form calls to time (default 200)")
    parser.add_argument("--resolves", type=int, default=20, help="constrained re-solves to time (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random surrogates (default 0)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args()

    closed_controller = Controller(random_surrogate(48, 16, args.seed))
    closed_controller.min_energy(1.0)  # warm-up: imports and first allocations
    closed = time_calls(lambda: closed_controller.min_energy(1.0), args.repeats)

    constrained_controller = Controller(random_surrogate(36, 16, args.seed + 1))
    cap = feasible_binding_cap(constrained_controller, 1.0)
    first = time_calls(lambda: constrained_controller.min_energy(1.0, max_amplitude=cap), 1)
    rng = np.random.default_rng(args.seed)
    resolve_times = []
    for _ in range(args.resolves):
        target = float(rng.uniform(0.5, 2.0))
        new_cap = feasible_binding_cap(constrained_controller, target)
        start = time.perf_counter()
        constrained_controller.min_energy(target, max_amplitude=new_cap)
        resolve_times.append(1e3 * (time.perf_counter() - start))

    results = {
        "closed_form": {"n_layers": 48, **summarize(closed)},
        "constrained_first": {"n_layers": 36, **summarize(first)},
        "constrained_resolve": {"n_layers": 36, **summarize(resolve_times)},
    }
    print(f"{'case':<22}{'L':>4}{'median ms':>12}{'min ms':>10}{'calls':>7}")
    for name, row in results.items():
        print(f"{name:<22}{row['n_layers']:>4}{row['median_ms']:>12.3f}{row['min_ms']:>10.3f}{row['n']:>7}")
    if args.json:
        environment = {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "cvxpy": cp.__version__,
            "solver": "CLARABEL",
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
        }
        print(json.dumps({"benchmark": "controller_speed", "results": results, "environment": environment}))


if __name__ == "__main__":
    main()
