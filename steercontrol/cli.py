"""Command-line interface: ``steercontrol <command> [options]``.

Commands follow the pipeline. ``gains`` measures a layer-gain profile,
``identify`` saves a surrogate, ``plan`` turns a surrogate into a schedule,
and ``generate`` applies a schedule during greedy generation. ``export``
writes a schedule's injection vectors for other tools, and ``benchmark``
runs ``benchmarks/energy_vs_heuristic.py`` from a source checkout.

``gains``, ``identify`` and ``plan`` take ``--report DIR`` to also write a
Markdown report with PNG figures (see :mod:`steercontrol.report`).

Exit codes: 0 on success. 2 when an argument is invalid, with a
``steercontrol COMMAND: error: ...`` line on standard error. argparse prints
the usage line before it for a malformed command line. Checks that run before
the main work print only that line, for values such as an unknown task, an
empty prompt, a zero target shift, ``--layers`` outside the surrogate or
``--order`` above the hidden size. 1 when the run fails, with a one-line
``error: ...`` message. Such failures are an input file that is missing,
corrupt or made on another model, a model that fails to load, a plan that no
schedule satisfies, or an output that cannot be written. With ``--json`` the
last line of standard output is one JSON object.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from steercontrol.exceptions import DataError, SteerControlError

__all__ = ["main", "build_parser", "TEST_MODELS"]

logger = logging.getLogger(__name__)

TEST_MODELS: dict[str, str] = {"tiny-llama": "llama", "tiny-gpt2": "gpt2"}
"""Model names that build a seeded random model with :func:`steercontrol.testing.tiny_model`.

They exist for tests and quick checks of the command line. Their outputs
carry no meaning, and the weights depend only on the architecture and seed 0.
"""

SCHEDULE_NAMES: tuple[str, ...] = (
    "min_energy",
    "uniform_all",
    "last_layer",
    "middle_layer",
    "early_layer",
    "best_single_layer",
)

# Injection size of the gains that 'identify --report' measures, in residual-stream units (the 'gains' default).
_REPORT_EPS = 0.1

# File types that steercontrol.concepts.load_task_file reads.
_TASK_FILE_SUFFIXES = (".csv", ".jsonl", ".json")

_BENCHMARK_SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "energy_vs_heuristic.py"


# Argument types


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def parse_layers(text: str) -> tuple[int, ...]:
    """Parse a layer list such as ``"4-20"`` or ``"0,3,7-9"`` into sorted block indices.

    Ranges include both ends. Raises ``argparse.ArgumentTypeError`` on
    malformed text, negative indices or a range whose end is below its start.
    """
    layers: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        start_text, separator, end_text = part.partition("-")
        try:
            start = int(start_text)
            end = int(end_text) if separator else start
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"invalid layer list {text!r}. Expected indices and inclusive ranges such as '4-20' or '0,3,7-9'"
            ) from None
        if start < 0 or end < start:
            raise argparse.ArgumentTypeError(f"invalid layer range {part!r} in {text!r}. Expected 0 <= start <= end")
        layers.update(range(start, end + 1))
    return tuple(sorted(layers))


# Parser


def _add_report_option(command: argparse.ArgumentParser, contents: str) -> None:
    command.add_argument(
        "--report",
        type=Path,
        default=None,
        metavar="DIR",
        help=f"also write DIR/report.md with PNG figures: the settings and {contents}. DIR is created if "
        "missing, but its parent folder must exist (default: no report)",
    )


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of every command."""
    output_options = argparse.ArgumentParser(add_help=False)
    output_options.add_argument(
        "--json", action="store_true", help="print one JSON object as the last line of standard output"
    )
    output_options.add_argument(
        "--quiet", action="store_true", help="print only errors and, with --json, the JSON line"
    )
    model_options = argparse.ArgumentParser(add_help=False)
    model_options.add_argument(
        "--model",
        default="smollm2-135m",
        help="embedded model name, local directory or hub id (default: smollm2-135m). "
        "The test models tiny-llama and tiny-gpt2 are built offline with seeded random weights.",
    )
    task_options = argparse.ArgumentParser(add_help=False)
    task_options.add_argument(
        "--task",
        required=True,
        help="built-in task (sentiment, toxicity, irony, hate) or a .csv/.jsonl file with text and label columns",
    )
    task_options.add_argument(
        "--prompt", default=None, help="context text (default: the first held-out text of the task)"
    )
    common = [output_options, model_options]

    parser = argparse.ArgumentParser(
        prog="steercontrol",
        description="Control-theoretic steering of language models: measure layer gains, identify a "
        "surrogate, plan injection schedules and apply them.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gains = commands.add_parser(
        "gains",
        parents=[*common, task_options],
        help="measure the layer-gain profile of one context",
        description="Measure the gain g_k of every layer: the readout change per unit of injection "
        "along the concept direction at the input of block k (readout units per model unit).",
    )
    gains.add_argument(
        "--method",
        choices=("batched", "adjoint", "naive"),
        default="batched",
        help="finite injections in one batch over a frozen prefix, one backward pass, or one full "
        "forward pass per layer (default: batched)",
    )
    gains.add_argument(
        "--eps",
        type=_positive_float,
        default=0.1,
        help="injection size for the finite methods, in residual-stream units, ignored by adjoint (default: 0.1)",
    )
    _add_report_option(gains, "the measured gain profile per layer")
    gains.set_defaults(handler=_run_gains)

    identify = commands.add_parser(
        "identify",
        parents=[*common, task_options],
        help="identify a linear surrogate of the depth dynamics and save it",
        description="Identify a layer-varying linear surrogate around one context and save it as a "
        "safetensors file, with the task and prompt in its metadata.",
    )
    identify.add_argument(
        "--order",
        type=_positive_int,
        default=32,
        help="surrogate state dimension d, at most the hidden size (default: 32)",
    )
    identify.add_argument("--out", type=Path, required=True, help="surrogate file to write (.safetensors)")
    _add_report_option(
        identify,
        "the predicted gains against gains measured on the full model (batched finite injections, "
        f"eps {_REPORT_EPS} residual-stream units), with their Spearman and Pearson agreement",
    )
    identify.set_defaults(handler=_run_identify)

    plan = commands.add_parser(
        "plan",
        parents=common,
        help="plan an injection schedule on a saved surrogate",
        description="Plan a schedule that moves the readout by --target-shift on the surrogate, and save "
        "it with its (n_layers, hidden) injection vectors. --model must be the model the surrogate was "
        "identified on.",
    )
    plan.add_argument("--surrogate", type=Path, required=True, help="surrogate file written by 'identify'")
    plan.add_argument(
        "--target-shift", type=_finite_float, required=True, help="requested readout change, in readout units"
    )
    plan.add_argument(
        "--schedule", choices=SCHEDULE_NAMES, default="min_energy", help="planning rule (default: min_energy)"
    )
    plan.add_argument(
        "--layers",
        type=parse_layers,
        default=None,
        help="block indices allowed a non-zero input, as inclusive ranges such as 4-20 or 0,3,7-9 "
        "(min_energy only; default: all layers)",
    )
    plan.add_argument(
        "--max-amplitude",
        type=_positive_float,
        default=None,
        help="cap on each layer's input norm, in residual-stream units (min_energy only; default: no cap)",
    )
    plan.add_argument("--out", type=Path, required=True, help="schedule file to write (.safetensors)")
    _add_report_option(
        plan,
        "the input per layer, its energy, and the energy of the uniform_all, last_layer and "
        "best_single_layer schedules on the same surrogate and target",
    )
    plan.set_defaults(handler=_run_plan)

    generate = commands.add_parser(
        "generate",
        parents=common,
        help="generate unsteered and steered continuations of a prompt",
        description="Generate greedy continuations of --prompt without and with the schedule's injection "
        "vectors. --model must be the model the schedule was planned for.",
    )
    generate.add_argument("--schedule", type=Path, required=True, help="schedule file written by 'plan'")
    generate.add_argument("--prompt", required=True, help="prompt text")
    generate.add_argument("--max-new-tokens", type=_positive_int, default=40, help="tokens to generate (default: 40)")
    generate.add_argument(
        "--positions",
        choices=("all", "prompt_last", "prompt", "generated"),
        default="all",
        help="tokens that receive the injection (default: all)",
    )
    generate.set_defaults(handler=_run_generate)

    export = commands.add_parser(
        "export",
        parents=[output_options],
        help="export a schedule's injection vectors for other tools",
        description="Write the schedule's injection vectors as a llama.cpp control-vector GGUF or as "
        "safetensors. The GGUF stores the vector for block input k as direction.{k-1}, the index "
        "llama.cpp uses for the output of block k-1.",
    )
    export.add_argument("--schedule", type=Path, required=True, help="schedule file written by 'plan'")
    export.add_argument("--format", choices=("gguf", "safetensors"), required=True, help="output format")
    export.add_argument("--out", type=Path, required=True, help="file to write")
    export.add_argument(
        "--model-hint",
        default=None,
        help="architecture name stored as controlvector.model_hint, GGUF only "
        "(default: the model type recorded by 'plan', else llama)",
    )
    export.set_defaults(handler=_run_export)

    # The benchmark parses its own options, so main() forwards everything after the command name.
    commands.add_parser(
        "benchmark",
        add_help=False,
        help="run benchmarks/energy_vs_heuristic.py with the remaining arguments (source checkout only)",
    )
    return parser


# Shared steps


class _UsageError(Exception):
    """An invalid argument value found after parsing. main() reports it in one line and returns 2, like argparse."""


def _load_model(name: str) -> Any:
    if name in TEST_MODELS:
        from steercontrol.testing import tiny_model_from_name

        return tiny_model_from_name(name)
    from steercontrol.models import load_model

    return load_model(name)


def _check_task(spec: str) -> None:
    from steercontrol.concepts import BUILTIN_TASKS

    # Only the name is checked here. A task file is read later, and a missing or unreadable one exits 1.
    if spec in BUILTIN_TASKS or Path(spec).suffix in _TASK_FILE_SUFFIXES:
        return
    raise _UsageError(
        f"unknown --task {spec!r}. Pass a built-in task ({', '.join(BUILTIN_TASKS)}) "
        "or a .csv or .jsonl file with text and label columns."
    )


def _load_task(spec: str) -> Any:
    from steercontrol.concepts import BUILTIN_TASKS, load_task, load_task_file

    if spec in BUILTIN_TASKS:
        return load_task(spec)
    return load_task_file(spec)


def _check_prompt(prompt: str | None) -> None:
    if prompt is not None and not prompt:
        raise _UsageError("--prompt is empty. Pass the context text, or leave out --prompt where it is optional.")


def _check_context_arguments(args: argparse.Namespace) -> None:
    """Reject bad values of a gains or identify run before the model loads, so they fail in a second."""
    _check_prompt(args.prompt)
    _check_task(args.task)
    if args.report is not None:
        from steercontrol.report import check_report_directory

        check_report_directory(args.report)


def _prepare_context(args: argparse.Namespace) -> tuple[Any, Any, Any, Any, str]:
    """Return the model, task, concept directions, readout and prompt of a gains or identify run."""
    from steercontrol.concepts import concept_directions, projection_readout

    task = _load_task(args.task)
    model = _load_model(args.model)
    directions = concept_directions(model, task, evaluate_split=None)
    readout = projection_readout(directions)
    prompt = args.prompt if args.prompt is not None else task.split("heldout")[0][0]
    return model, task, directions, readout, prompt


def _require_file(path: str | Path) -> None:
    # Checked before the model loads, so a typo fails in a second, not after the load.
    if not Path(path).is_file():
        raise FileNotFoundError(f"Cannot load {path} because the file does not exist.")


def _say(args: argparse.Namespace, text: str = "") -> None:
    if not args.quiet:
        print(text)


# Commands


def _run_gains(args: argparse.Namespace) -> dict[str, Any]:
    from steercontrol.sensitivity import measure_gains

    _check_context_arguments(args)
    model, task, directions, readout, prompt = _prepare_context(args)
    ids = model.tokenize(prompt)["input_ids"][0]
    profile = measure_gains(model, ids, directions.directions, readout, method=args.method, eps=args.eps)

    _say(args, f"Gains of {model.name} on task {task.name!r} ({args.method}), readout units per model unit:")
    _say(args, f"{'layer':>5}  {'gain':>12}")
    for layer, gain in enumerate(np.atleast_1d(profile.gains)):
        _say(args, f"{layer:>5}  {float(gain):>12.6g}")
    result = {
        "model": model.name,
        "task": task.name,
        "prompt": prompt,
        "method": args.method,
        "eps": None if args.method == "adjoint" else args.eps,
        "baseline": profile.baseline.tolist(),
        "gains": profile.gains.tolist(),
    }
    if args.report is not None:
        from steercontrol.report import write_gains_report

        report = write_gains_report(args.report, profile, model=model, task=task, directions=directions, prompt=prompt)
        _say(args, f"Wrote {report}")
        result["report"] = str(report)
    return result


def _run_identify(args: argparse.Namespace) -> dict[str, Any]:
    from steercontrol.identify import identify
    from steercontrol.io import save_surrogate
    from steercontrol.prefix import FrozenContext

    _check_context_arguments(args)
    model, task, directions, readout, prompt = _prepare_context(args)
    if args.order > model.hidden_size:
        raise _UsageError(
            f"--order {args.order} exceeds the hidden size {model.hidden_size} of {model.name}. "
            f"Pass --order {model.hidden_size} or less."
        )
    context = FrozenContext(model, model.tokenize(prompt)["input_ids"][0])
    identified = identify(model, context, directions.directions, readout, order=args.order)
    predicted = np.asarray(identified.surrogate.gain_profile())
    result: dict[str, Any] = {
        "model": model.name,
        "task": task.name,
        "prompt": prompt,
        "order": args.order,
        "seconds": identified.seconds,
        "predicted_gains": predicted.tolist(),
    }
    measured = None
    if args.report is not None:
        from steercontrol.report import gain_agreement
        from steercontrol.sensitivity import measure_gains

        measured = measure_gains(
            model, context.input_ids, directions.directions, readout, eps=_REPORT_EPS, context=context
        )
        # JSON has no nan, so an undefined correlation (a constant profile) is written as null.
        agreement = {
            name: value if math.isfinite(value) else None
            for name, value in zip(("spearman", "pearson"), gain_agreement(predicted, measured.gains), strict=True)
        }
        result.update(measured_gains=measured.gains.tolist(), **agreement)
    path = save_surrogate(
        identified.surrogate, args.out, model=model, extra_metadata={"task": task.name, "prompt": prompt}
    )
    result["out"] = str(path)

    _say(
        args,
        f"Identified an order-{args.order} surrogate of {model.name} on task {task.name!r} "
        f"in {identified.seconds:.2f} s.",
    )
    _say(args, f"Wrote {path}")
    if measured is not None:
        from steercontrol.report import write_identify_report

        report = write_identify_report(
            args.report,
            identified,
            measured,
            model=model,
            task=task,
            directions=directions,
            prompt=prompt,
            surrogate_path=path,
        )
        _say(args, f"Wrote {report}")
        result["report"] = str(report)
    return result


def _plan_schedule(surrogate: Any, args: argparse.Namespace) -> Any:
    from steercontrol import heuristics
    from steercontrol.controller import Controller

    controller = Controller(surrogate)
    if args.schedule == "min_energy":
        return controller.min_energy(args.target_shift, layers=args.layers, max_amplitude=args.max_amplitude)
    rule: Callable[[Any, float], Any] = getattr(heuristics, args.schedule)
    return rule(controller, args.target_shift)


def _check_plan_arguments(args: argparse.Namespace) -> None:
    """Reject bad values of a plan run before the model loads."""
    if args.schedule != "min_energy" and (args.layers is not None or args.max_amplitude is not None):
        raise _UsageError(
            f"--layers and --max-amplitude apply only to --schedule min_energy, not {args.schedule}. "
            "Leave them out, or pass --schedule min_energy."
        )
    if args.target_shift == 0:
        raise _UsageError("invalid --target-shift 0. Pass a non-zero readout change, in readout units.")
    if args.report is not None:
        from steercontrol.report import check_report_directory

        check_report_directory(args.report)


def _check_plan_surrogate(surrogate: Any, args: argparse.Namespace) -> None:
    """Reject options that do not fit the loaded surrogate."""
    n_layers = surrogate.n_layers
    outside = [layer for layer in args.layers or () if layer >= n_layers]
    if outside:
        raise _UsageError(
            f"--layers includes {outside}, but the surrogate {args.surrogate} has {n_layers} layers. "
            f"Pass indices in 0-{n_layers - 1}."
        )
    if args.schedule != "min_energy" and any(width != 1 for width in surrogate.input_widths):
        raise _UsageError(
            f"--schedule {args.schedule} needs one input per layer, but the surrogate {args.surrogate} has input "
            f"widths {sorted(set(surrogate.input_widths))}. Use --schedule min_energy."
        )


def _run_plan(args: argparse.Namespace) -> dict[str, Any]:
    from steercontrol.io import load_surrogate, save_schedule

    _check_plan_arguments(args)
    _require_file(args.surrogate)
    model = _load_model(args.model)
    surrogate = load_surrogate(args.surrogate, model=model)
    if surrogate.input_directions is None:
        raise DataError(
            f"{args.surrogate} has no input directions, so its schedule cannot be mapped to injection "
            "vectors. Identify the surrogate again with 'steercontrol identify'."
        )
    _check_plan_surrogate(surrogate, args)
    schedule = _plan_schedule(surrogate, args)
    comparison = None
    if args.report is not None:
        from steercontrol.report import compare_with_heuristics

        comparison = compare_with_heuristics(surrogate, schedule)
    path = save_schedule(schedule, args.out, input_directions=surrogate.input_directions, model=model)

    amplitudes = [float(np.linalg.norm(a)) for a in schedule.amplitudes]
    _say(
        args,
        f"Schedule {schedule.name} ({schedule.status}): energy {schedule.energy:.6g}, "
        f"predicted shift {schedule.predicted_shift.tolist()} for target {schedule.target_shift.tolist()}",
    )
    _say(args, f"{'layer':>5}  {'input norm':>12}")
    for layer, amplitude in enumerate(amplitudes):
        _say(args, f"{layer:>5}  {amplitude:>12.6g}")
    _say(args, f"Wrote {path}")
    result: dict[str, Any] = {
        "model": model.name,
        "schedule": schedule.name,
        "status": schedule.status,
        "energy": schedule.energy,
        "target_shift": schedule.target_shift.tolist(),
        "predicted_shift": schedule.predicted_shift.tolist(),
        "input_norms": amplitudes,
        "out": str(path),
    }
    if comparison is not None:
        from steercontrol.report import write_plan_report

        report = write_plan_report(
            args.report,
            schedule,
            surrogate,
            model=model,
            surrogate_path=args.surrogate,
            schedule_path=path,
            comparison=comparison,
        )
        _say(args, f"Wrote {report}")
        result.update(heuristics=comparison, report=str(report))
    return result


def _load_vectors(path: Path, model: Any = None) -> tuple[Any, np.ndarray]:
    from steercontrol.io import load_schedule

    schedule, vectors = load_schedule(path, model=model)
    if vectors is None:
        raise DataError(
            f"{path} stores no injection vectors. Plan it again with 'steercontrol plan', which saves them."
        )
    return schedule, vectors


def _run_generate(args: argparse.Namespace) -> dict[str, Any]:
    from steercontrol.generation_metrics import generate_continuations

    _check_prompt(args.prompt)
    _require_file(args.schedule)
    model = _load_model(args.model)
    schedule, vectors = _load_vectors(args.schedule, model)
    unsteered = generate_continuations(model, args.prompt, max_new_tokens=args.max_new_tokens)[0]
    steered = generate_continuations(
        model, args.prompt, steering=vectors, positions=args.positions, max_new_tokens=args.max_new_tokens
    )[0]

    _say(args, f"Prompt: {args.prompt}")
    _say(args, f"Unsteered: {unsteered}")
    _say(args, f"Steered ({schedule.name}, positions={args.positions}): {steered}")
    return {
        "model": model.name,
        "schedule": schedule.name,
        "positions": args.positions,
        "prompt": args.prompt,
        "unsteered": unsteered,
        "steered": steered,
    }


def _run_export(args: argparse.Namespace) -> dict[str, Any]:
    from steercontrol import interop

    schedule, vectors = _load_vectors(args.schedule)
    if args.format == "gguf":
        hint = args.model_hint or schedule.metadata.get("model_type") or "llama"
        path = interop.export_gguf(vectors, args.out, model_hint=hint)
    else:
        path = interop.export_safetensors(vectors, args.out)
    _say(args, f"Wrote the injection vectors of schedule {schedule.name} to {path} ({args.format}).")
    return {"schedule": schedule.name, "format": args.format, "n_layers": int(vectors.shape[0]), "out": str(path)}


def _run_benchmark(forwarded: list[str]) -> int:
    if not _BENCHMARK_SCRIPT.is_file():
        print(
            f"error: the benchmark script {_BENCHMARK_SCRIPT} was not found. It ships with the source "
            "repository, not the installed package, so run this command from a source checkout.",
            file=sys.stderr,
        )
        return 1
    spec = importlib.util.spec_from_file_location("steercontrol_benchmark_energy_vs_heuristic", _BENCHMARK_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    # The benchmark loads --model itself, except for the test models, which it cannot build.
    model = None
    for index, option in enumerate(forwarded):
        name = None
        if option == "--model" and index + 1 < len(forwarded):
            name = forwarded[index + 1]
        elif option.startswith("--model="):
            name = option.split("=", 1)[1]
        if name in TEST_MODELS:
            model = _load_model(name)
    try:
        module.main(forwarded, model=model)
    except SystemExit as exit_request:
        return _exit_code(exit_request)
    except (SteerControlError, OSError) as error:
        print(f"error: {error}{_command_line_hint(error)}", file=sys.stderr)
        return 1
    return 0


# Entry point


def _exit_code(exit_request: SystemExit) -> int:
    code = exit_request.code
    if code is None:
        return 0
    return code if isinstance(code, int) else 1


def _command_line_hint(error: BaseException) -> str:
    """Return the command-line form of a library error's advice, which names Python functions and arguments."""
    from steercontrol.exceptions import ArtifactKindError, InfeasibleError

    if isinstance(error, ArtifactKindError):
        options = {"surrogate": "plan --surrogate", "schedule": "generate --schedule or export --schedule"}
        return f" On the command line, pass it to {options[error.found]}."
    if isinstance(error, InfeasibleError):
        return " On the command line, raise --max-amplitude or widen --layers."
    return ""


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command and return its exit status.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments after the program name; ``sys.argv[1:]`` when None.

    Returns
    -------
    int
        0 on success, 2 on an invalid argument, 1 when the run fails.
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments and arguments[0] == "benchmark":
        return _run_benchmark(arguments[1:])

    parser = build_parser()
    try:
        args = parser.parse_args(arguments)
    except SystemExit as exit_request:
        return _exit_code(exit_request)
    logging.basicConfig(
        level=logging.ERROR if args.quiet else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if args.quiet:
        # transformers draws its weight-loading progress bars outside the logging levels.
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()

    try:
        result = args.handler(args)
    except _UsageError as error:
        print(f"steercontrol {args.command}: error: {error}", file=sys.stderr)
        return 2
    # The argument checks run before the main work, so an error raised after them is a failure of the run.
    # OSError covers files and folders that are missing or cannot be written. SteerControlError covers corrupt
    # files, files made on another model (ModelMismatchError), models that fail to load and infeasible plans.
    except (SteerControlError, OSError) as error:
        print(f"error: {error}{_command_line_hint(error)}", file=sys.stderr)
        return 1

    if args.json:
        print(json.dumps({"command": args.command, **result}, default=float))
    return 0
