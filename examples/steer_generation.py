"""Steer generated text toward positive sentiment: minimum-energy versus uniform schedules.

For each prompt the script identifies a surrogate around the prompt. It
plans a minimum-energy schedule and a uniform one (equal amplitude at every
layer) for the same readout shift. It calibrates both on the full model, so
that each moves the prompt's last-token readout by that shift. It then
generates greedy continuations unsteered and with each calibrated schedule
injected at every token, and prints the continuations with three metrics:

* the sentiment readout of each continuation, read by the unsteered model;
* the mean next-token KL of the steered model on neutral texts (side effect);
* the perplexity of the continuations under the unsteered model (fluency).

Usage::

    python examples/steer_generation.py [--target-fraction F] [--max-new-tokens N]
"""

from __future__ import annotations

import argparse

import numpy as np

import steercontrol as sc
from steercontrol.concepts import concept_directions, load_task, projection_readout
from steercontrol.controller import Controller
from steercontrol.evaluate import calibrate
from steercontrol.generation_metrics import continuation_readout, generate_continuations, neutral_kl, perplexity
from steercontrol.heuristics import uniform_all
from steercontrol.identify import identify
from steercontrol.prefix import FrozenContext

PROMPTS = [
    "The service at this hotel was",
    "I watched the movie last night and",
    "The food at the new place downtown",
    "My week at work has been",
]

NEUTRAL_TEXTS = [
    "The train leaves the station at nine in the morning and arrives before noon.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "The report lists the number of employees in each department.",
    "She opened the window and put the books back on the shelf.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--target-fraction",
        type=float,
        default=0.1,
        help="readout shift as a fraction of the distance between the class means (default 0.1)",
    )
    parser.add_argument("--max-new-tokens", type=int, default=24, help="tokens per continuation (default 24)")
    args = parser.parse_args()

    model = sc.load_model("smollm2-135m")
    directions = concept_directions(model, load_task("sentiment"), evaluate_split=None)
    readout = projection_readout(directions)
    target = args.target_fraction * directions.metadata["final_gap"]
    print(f"target readout shift {target:.3f} ({args.target_fraction:g} x class-mean gap)\n")

    steered_vectors: dict[str, list[np.ndarray]] = {"min_energy": [], "uniform_all": []}
    continuations: dict[str, list[str]] = {"unsteered": [], "min_energy": [], "uniform_all": []}
    for prompt in PROMPTS:
        context = FrozenContext(model, model.tokenize(prompt)["input_ids"][0])
        surrogate = identify(model, context, directions.directions, readout, order=32).surrogate
        planned = {
            "min_energy": Controller(surrogate).min_energy(target),
            "uniform_all": uniform_all(surrogate, target),
        }
        shapes = {name: schedule.vectors(surrogate.input_directions) for name, schedule in planned.items()}
        calibrations = calibrate(model, context, shapes, readout, target)

        print(f"prompt: {prompt!r}")
        unsteered = generate_continuations(model, prompt, max_new_tokens=args.max_new_tokens)[0]
        continuations["unsteered"].append(unsteered)
        print(f"  {'unsteered:':<12} {unsteered!r}")
        for name, calibration in calibrations.items():
            if not calibration.reached:
                print(f"  {name}: calibration did not reach the target; skipped")
                continue
            vectors = calibration.scale * shapes[name]
            steered_vectors[name].append(vectors)
            text = generate_continuations(model, prompt, steering=vectors, max_new_tokens=args.max_new_tokens)[0]
            continuations[name].append(text)
            print(f"  {name + ':':<12} {text!r}  (energy {calibration.energy:.2f}, next-token KL {calibration.kl:.3f})")
        print()

    print(f"{'schedule':<12} {'readout':>9} {'neutral KL':>11} {'perplexity':>11}")
    for name, texts in continuations.items():
        # An empty continuation has no token to read.
        texts = [text for text in texts if text.strip()]
        readouts = continuation_readout(model, texts, readout)[:, 0]
        if name == "unsteered":
            kl = 0.0
        else:
            kl = float(np.mean([neutral_kl(model, NEUTRAL_TEXTS, vectors) for vectors in steered_vectors[name]]))
        fluency = perplexity(model, texts)
        print(f"{name:<12} {readouts.mean():>9.3f} {kl:>11.4f} {fluency:>11.2f}")


if __name__ == "__main__":
    main()
