"""Markdown reports of single runs: a gain profile, an identified surrogate, a planned schedule.

Each ``write_*_report`` function writes ``report.md`` and the PNG figures it
links by relative paths into one folder, so the folder can be moved or
shared as a whole. The report states the model, task, context, every setting
with its unit, and the results as figures and tables.

Units: an injection is measured in residual-stream units (the norm of the
vector added to the residual stream), the readout in readout units, a gain
in readout units per residual-stream unit, and an energy
:math:`\\sum_k \\|u_k\\|^2` in squared residual-stream units.

The files are first written into a hidden staging folder next to the target
folder and then renamed into place (see
:func:`steercontrol.report_format.write_report_folder`), so a failure while
drawing or writing leaves no partial report behind.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from steercontrol import __version__
from steercontrol.exceptions import ConfigurationError, ShapeError, UnreachableTargetError
from steercontrol.report_format import (
    REPORT_FILE,
    check_report_directory,
    fenced_block,
    format_layers,
    format_number,
    format_numbers,
    markdown_table,
    plot_layer_bars,
    plot_layer_profiles,
    write_report_folder,
)
from steercontrol.schedule import Schedule
from steercontrol.system import LayerVaryingSurrogate, TimeInvariantSurrogate

if TYPE_CHECKING:
    from steercontrol.concepts import ConceptDirections, ConceptTask
    from steercontrol.identify import Identification
    from steercontrol.models import SteerableModel
    from steercontrol.sensitivity import GainProfile

__all__ = [
    "REPORT_FILE",
    "HEURISTIC_NAMES",
    "check_report_directory",
    "gain_agreement",
    "compare_with_heuristics",
    "write_gains_report",
    "write_identify_report",
    "write_plan_report",
]

HEURISTIC_NAMES: tuple[str, ...] = ("uniform_all", "last_layer", "best_single_layer")
"""Heuristic schedules that :func:`compare_with_heuristics` plans, in report order."""

GAIN_UNIT = "readout units per residual-stream unit"
INJECTION_UNIT = "residual-stream units"
ENERGY_UNIT = "squared residual-stream units"

_GAIN_METHODS = {
    "batched": "finite injections, all layers in one batch of single-token forwards over a frozen prefix",
    "naive": "finite injections, one full forward pass per layer",
    "adjoint": "exact derivative dy/du_k from one backward pass",
}
_BASES = {
    "reachable": "P_0 = [v_0] and P_{k+1} = orth[v_{k+1}, A_k P_k], truncated to the order",
    "krylov": "P_k = orth[v_k, A_k v_k, A_k^2 v_k, ...], a Krylov basis of each layer's Jacobian",
    "random": "P_k = orth[v_k, random vectors], the ablation",
}
_INPUTS = {
    "scalar": "one input per layer, the amplitude along the concept direction v_k",
    "vector": "d_k inputs per layer, a vector in the span of the basis P_k",
}
_SCHEDULE_RULES = {
    "min_energy": "least energy Σ_k ‖u_k‖² that reaches the target on the surrogate",
    "uniform_all": "equal amplitude at every layer, scaled to reach the target",
    "last_layer": "the last layer L-1 only, scaled to reach the target",
    "middle_layer": "layer L // 2 only, scaled to reach the target",
    "early_layer": "layer L // 4 only, scaled to reach the target",
    "best_single_layer": "the layer with the largest surrogate gain magnitude only, scaled to reach the target",
    "random_single_layer": "one layer drawn at random, scaled to reach the target",
}


# Computations shared with the command line


def gain_agreement(predicted: Any, measured: Any) -> tuple[float, float]:
    """Compute the Spearman and Pearson correlation across layers of two gain profiles.

    Parameters
    ----------
    predicted, measured : array_like, (L,)
        Gain per layer, for example the surrogate's and the full model's.

    Returns
    -------
    (float, float)
        Spearman rank correlation and Pearson correlation. Both are nan when
        either profile is constant or has fewer than two layers, because the
        correlation is undefined there.

    Raises
    ------
    ShapeError
        If the profiles are not 1-D arrays of the same length.

    Examples
    --------
    >>> [round(value, 4) for value in gain_agreement([1.0, 2.0, 4.0], [0.5, 1.0, 3.0])]
    [1.0, 0.9897]
    """
    from scipy.stats import pearsonr, spearmanr

    predicted = np.asarray(predicted, dtype=np.float64)
    measured = np.asarray(measured, dtype=np.float64)
    if predicted.ndim != 1 or predicted.shape != measured.shape:
        raise ShapeError(
            f"Gain profiles must be 1-D arrays of the same length, got shapes {predicted.shape} and {measured.shape}."
        )
    if predicted.size < 2 or np.ptp(predicted) == 0 or np.ptp(measured) == 0:
        return math.nan, math.nan
    return float(spearmanr(predicted, measured)[0]), float(pearsonr(predicted, measured)[0])


def compare_with_heuristics(
    surrogate: LayerVaryingSurrogate | TimeInvariantSurrogate, schedule: Schedule
) -> dict[str, dict[str, Any]]:
    """Plan the heuristic schedules for the same target and compare their energy with ``schedule``.

    Parameters
    ----------
    surrogate : LayerVaryingSurrogate or TimeInvariantSurrogate
        The surrogate ``schedule`` was planned on. Its readout is the one the
        target refers to.
    schedule : Schedule
        The planned schedule, with a non-zero energy.

    Returns
    -------
    dict of str to dict
        One entry per name in :data:`HEURISTIC_NAMES`, with keys ``energy``
        (squared residual-stream units), ``energy_ratio`` (the heuristic's
        energy divided by ``schedule.energy``), ``layers`` (the layers it
        uses) and ``error``. When a heuristic cannot reach the target, or the
        surrogate has several inputs per layer, the numbers are None and
        ``error`` is the reason. Otherwise ``error`` is None.

    Raises
    ------
    ConfigurationError
        If ``schedule.energy`` is not a finite number > 0.

    Notes
    -----
    Each heuristic uses only ``schedule.layers``, the layers the plan was
    allowed: uniform over them, the last of them, or the best of them.
    ``best_single_layer`` picks the layer by the surrogate's gains, because a
    plan has no measured profile. For scalar gains the ratios are
    :math:`L \\sum_k g_k^2 / (\\sum_k g_k)^2` (uniform) and
    :math:`\\sum_k g_k^2 / g_j^2` (layer j alone) when ``schedule`` is the
    unconstrained minimum-energy schedule.

    Examples
    --------
    >>> from steercontrol.controller import Controller
    >>> surrogate = LayerVaryingSurrogate(A=[np.eye(1)] * 2, B=[np.array([[g]]) for g in (1.0, 2.0)],
    ...                                   C=np.ones((1, 1)))
    >>> comparison = compare_with_heuristics(surrogate, Controller(surrogate).min_energy(1.0))
    >>> [round(comparison[name]["energy_ratio"], 6) for name in ("uniform_all", "last_layer")]
    [1.111111, 1.25]
    """
    from steercontrol import heuristics
    from steercontrol.controller import Controller

    if not math.isfinite(schedule.energy) or schedule.energy <= 0:
        raise ConfigurationError(
            f"Cannot compare energies with schedule {schedule.name!r} because its energy is {schedule.energy!r}. "
            "Pass a schedule with a non-zero target."
        )
    controller = Controller(surrogate)
    rules: dict[str, Callable[..., Schedule]] = {
        "uniform_all": heuristics.uniform_all,
        "last_layer": heuristics.last_layer,
        "best_single_layer": heuristics.best_single_layer,
    }
    comparison: dict[str, dict[str, Any]] = {}
    widths = sorted(set(surrogate.input_widths))
    for name in HEURISTIC_NAMES:
        if widths != [1]:
            # Checked here because best_single_layer does not check it and then names a wrong layer.
            reason = f"The {name} schedule needs one input per layer, but the surrogate has input widths {widths}."
            comparison[name] = {"energy": None, "energy_ratio": None, "layers": None, "error": reason}
            continue
        try:
            heuristic = rules[name](controller, schedule.target_shift, layers=schedule.layers)
        except (ConfigurationError, UnreachableTargetError) as error:
            comparison[name] = {"energy": None, "energy_ratio": None, "layers": None, "error": str(error)}
            continue
        comparison[name] = {
            "energy": heuristic.energy,
            "energy_ratio": heuristic.energy / schedule.energy,
            "layers": list(heuristic.layers),
            "error": None,
        }
    return comparison


# Sections shared by the reports


def _header(title: str) -> list[str]:
    written = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return [f"# {title}", "", f"Written by steercontrol {__version__} on {written}.", ""]


def _model_row(model: SteerableModel) -> list[str]:
    return ["model", f"{model.name}: {model.n_layers} blocks, hidden size {model.hidden_size}"]


def _task_rows(task: ConceptTask, directions: ConceptDirections) -> list[list[str]]:
    count = directions.metadata.get("n_concept_texts")
    source = f" from {count} concept texts" if count is not None else ""
    return [
        ["task", f"{task.name}: class 0 {task.label_names[0]!r}, class 1 {task.label_names[1]!r}"],
        ["concept directions", f"v_k = normalised difference of the class means at layer k{source}"],
    ]


def _context_section(prompt: str, subject: str) -> list[str]:
    return ["## Context", "", f"{subject} at the last token of this text:", "", *fenced_block(prompt)]


def _scalar_gains(gains: Any, description: str) -> np.ndarray:
    values = np.asarray(gains, dtype=np.float64)
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim != 1:
        # NOTE: reports cover one readout output. Several outputs would need a column and a curve per output.
        raise ShapeError(
            f"The {description} have shape {values.shape}, but reports support one readout output, shape (L,). "
            "Use a readout with one output."
        )
    return values


def _eps_text(profile: GainProfile) -> tuple[str, str]:
    """Return the value and meaning of the injection size of a gain profile."""
    sizes = np.asarray(profile.eps, dtype=np.float64)
    if profile.method == "adjoint" or not np.isfinite(sizes).any():
        return "not used", "the adjoint method takes derivatives, not finite injections"
    if np.allclose(sizes, sizes[0], rtol=1e-12, atol=0):
        return format_number(sizes[0]), f"injection size at every layer, {INJECTION_UNIT}"
    return format_numbers(sizes), f"injection size per layer (relative to the state norm), {INJECTION_UNIT}"


# Reports


def write_gains_report(
    directory: str | os.PathLike[str],
    profile: GainProfile,
    *,
    model: SteerableModel,
    task: ConceptTask,
    directions: ConceptDirections,
    prompt: str,
) -> Path:
    """Write a report of a measured gain profile: a figure and a table of g_k per layer.

    Parameters
    ----------
    directory : str or os.PathLike
        Report folder. It is created if missing, but its parent must exist.
        An existing folder keeps its other files, and its ``report.md`` and
        ``gains.png`` are replaced.
    profile : GainProfile
        Result of :func:`steercontrol.sensitivity.measure_gains` for one
        readout output.
    model : SteerableModel
        The model the gains were measured on.
    task : ConceptTask
        The task of the concept directions.
    directions : ConceptDirections
        The concept directions of the injections.
    prompt : str
        The context text.

    Returns
    -------
    pathlib.Path
        The written ``report.md``.

    Raises
    ------
    ShapeError
        If the profile has several readout outputs.
    NotADirectoryError, FileNotFoundError
        As :func:`check_report_directory`.
    """
    gains = _scalar_gains(profile.gains, "measured gains")
    eps_value, eps_meaning = _eps_text(profile)
    strongest = int(np.argmax(np.abs(gains)))
    title = f"Layer gains of {model.name}, task {task.name}"

    lines = _header(title)
    lines += ["## Run", ""]
    rows = [
        _model_row(model),
        *_task_rows(task, directions),
        ["readout", f"{profile.readout.get('description', 'unknown')} (readout units)"],
        ["baseline readout", f"{format_numbers(profile.baseline)} readout units, without injection"],
    ]
    lines += markdown_table(["item", "value"], rows)
    lines += ["## Settings", ""]
    lines += markdown_table(
        ["setting", "value", "unit and meaning"],
        [
            ["method", profile.method, _GAIN_METHODS.get(profile.method, "")],
            ["eps", eps_value, eps_meaning],
        ],
    )
    lines += _context_section(prompt, "The injections and the readout act")
    lines += [
        "## Gain profile",
        "",
        "The gain g_k is the readout change per unit of injection along the concept direction v_k at the",
        f"input of block k, in {GAIN_UNIT}. The finite methods compute g_k = (y(x_k + eps v_k) - y(x_k)) / eps.",
        f"The largest magnitude is at layer {strongest}: g = {format_number(gains[strongest])}.",
        "",
        "![Measured gain per layer](gains.png)",
        "",
    ]
    lines += markdown_table(
        ["layer k", f"gain g_k ({GAIN_UNIT})"], [[k, format_number(g)] for k, g in enumerate(gains)]
    )

    def draw(path: Path) -> Path:
        label = f"measured ({profile.method}, eps {eps_value})" if eps_value != "not used" else "measured (adjoint)"
        return plot_layer_profiles(
            path,
            [(label, gains, "o-k")],
            title=f"{title}\n(readout: {profile.readout.get('description')})",
            ylabel=f"gain g_k\n({GAIN_UNIT})",
        )

    return write_report_folder(directory, "\n".join(lines), {"gains.png": draw})


def write_identify_report(
    directory: str | os.PathLike[str],
    identification: Identification,
    measured: GainProfile,
    *,
    model: SteerableModel,
    task: ConceptTask,
    directions: ConceptDirections,
    prompt: str,
    surrogate_path: str | os.PathLike[str] | None = None,
) -> Path:
    """Write a report of an identified surrogate: its predicted gains against the measured ones.

    Parameters
    ----------
    directory : str or os.PathLike
        Report folder, as for :func:`write_gains_report`. Its figure is
        ``gains.png``.
    identification : Identification
        Result of :func:`steercontrol.identify.identify` with scalar inputs
        and one readout output.
    measured : GainProfile
        Gains of the full model on the same context, directions and readout.
    model, task, directions, prompt
        As for :func:`write_gains_report`.
    surrogate_path : str or os.PathLike, optional
        File the surrogate was saved to, stated in the report.

    Returns
    -------
    pathlib.Path
        The written ``report.md``.

    Raises
    ------
    ShapeError
        If the surrogate has several inputs per layer or several outputs, or
        the two profiles differ in length.
    NotADirectoryError, FileNotFoundError
        As :func:`check_report_directory`.
    """
    surrogate = identification.surrogate
    predicted = _scalar_gains(surrogate.gain_profile(), "predicted gains")
    measured_gains = _scalar_gains(measured.gains, "measured gains")
    spearman, pearson = gain_agreement(predicted, measured_gains)
    metadata = surrogate.metadata
    basis = str(metadata.get("basis", "unknown"))
    inputs = str(metadata.get("inputs", "scalar"))
    eps_value, eps_meaning = _eps_text(measured)
    title = f"Surrogate of {model.name}, task {task.name}"

    lines = _header(title)
    lines += ["## Run", ""]
    rows = [
        _model_row(model),
        *_task_rows(task, directions),
        ["readout", f"{metadata.get('readout', {}).get('description', 'unknown')} (readout units)"],
        ["surrogate file", str(surrogate_path) if surrogate_path is not None else "not saved"],
        ["state dimensions d_0..d_L", ", ".join(str(d) for d in surrogate.state_dims)],
        ["identification time", f"{identification.seconds:.3g} s, {identification.evaluations} block evaluations"],
    ]
    lines += markdown_table(["item", "value"], rows)
    lines += ["## Settings", ""]
    lines += markdown_table(
        ["setting", "value", "unit and meaning"],
        [
            ["order", metadata.get("order", "unknown"), "maximum state dimension d of the surrogate"],
            ["basis", basis, _BASES.get(basis, "")],
            ["inputs", inputs, _INPUTS.get(inputs, "")],
            ["jvp", metadata.get("jvp", "unknown"), "Jacobian-vector products: forward mode or central differences"],
            ["measured gains: method", measured.method, _GAIN_METHODS.get(measured.method, "")],
            ["measured gains: eps", eps_value, eps_meaning],
        ],
    )
    lines += _context_section(prompt, "The surrogate linearises the model")
    lines += [
        "## Gain profiles",
        "",
        "The predicted gain is g_k = C Ab_{L-1} ... Ab_{k+1} Bb_k on the surrogate, and the measured gain is",
        f"the readout change per unit of injection along v_k on the full model, both in {GAIN_UNIT}.",
        "",
        f"Agreement across the {len(predicted)} layers: Spearman {format_number(spearman)}, "
        f"Pearson {format_number(pearson)} (n/a when a profile is constant).",
        "",
        "![Measured and predicted gain per layer](gains.png)",
        "",
    ]
    lines += markdown_table(
        ["layer k", "measured g_k", "predicted g_k", "predicted - measured"],
        [
            [k, format_number(m), format_number(p), format_number(p - m)]
            for k, (m, p) in enumerate(zip(measured_gains, predicted, strict=True))
        ],
    )

    def draw(path: Path) -> Path:
        curves = [
            ("measured (full model)", measured_gains, "o-k"),
            (f"predicted (surrogate, order {metadata.get('order')}, {basis} basis)", predicted, "s--C0"),
        ]
        agreement = f"Spearman {format_number(spearman)}, Pearson {format_number(pearson)}"
        return plot_layer_profiles(path, curves, title=f"{title}\n{agreement}", ylabel=f"gain g_k\n({GAIN_UNIT})")

    return write_report_folder(directory, "\n".join(lines), {"gains.png": draw})


def write_plan_report(
    directory: str | os.PathLike[str],
    schedule: Schedule,
    surrogate: LayerVaryingSurrogate | TimeInvariantSurrogate,
    *,
    model: SteerableModel | None = None,
    surrogate_path: str | os.PathLike[str] | None = None,
    schedule_path: str | os.PathLike[str] | None = None,
    comparison: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """Write a report of a planned schedule: the input per layer, its energy and the heuristics' energy.

    Parameters
    ----------
    directory : str or os.PathLike
        Report folder, as for :func:`write_gains_report`. Its figure is
        ``schedule.png``.
    schedule : Schedule
        The planned schedule.
    surrogate : LayerVaryingSurrogate or TimeInvariantSurrogate
        The surrogate it was planned on. The task, context, readout, order and
        basis are read from its metadata where recorded.
    model : SteerableModel, optional
        The model. Without it the model name in the surrogate's metadata is used.
    surrogate_path, schedule_path : str or os.PathLike, optional
        Files of the surrogate and the saved schedule, stated in the report.
    comparison : mapping, optional
        Result of :func:`compare_with_heuristics`, computed here when None.

    Returns
    -------
    pathlib.Path
        The written ``report.md``.

    Raises
    ------
    ShapeError
        If the schedule and the surrogate differ in their number of layers.
    NotADirectoryError, FileNotFoundError
        As :func:`check_report_directory`.

    Examples
    --------
    >>> import tempfile
    >>> from steercontrol.controller import Controller
    >>> surrogate = LayerVaryingSurrogate(A=[np.eye(1)] * 3, B=[np.array([[g]]) for g in (1.0, 2.0, 2.0)],
    ...                                   C=np.ones((1, 1)), metadata={"model": "demo"})
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = write_plan_report(Path(folder) / "plan", Controller(surrogate).min_energy(9.0), surrogate)
    ...     sorted(p.name for p in path.parent.iterdir())
    ['report.md', 'schedule.png']
    """
    if schedule.n_layers != surrogate.n_layers:
        raise ShapeError(
            f"The schedule covers {schedule.n_layers} layers, but the surrogate has {surrogate.n_layers}. "
            "Pass the surrogate the schedule was planned on."
        )
    if comparison is None:
        comparison = compare_with_heuristics(surrogate, schedule)
    metadata = surrogate.metadata
    model_name = model.name if model is not None else str(metadata.get("model", "unknown"))
    readout = (metadata.get("readout") or {}).get("description", "not recorded")
    max_amplitude = schedule.metadata.get("constraints", {}).get("max_amplitude")
    title = f"Schedule {schedule.name} on {model_name}"

    lines = _header(title)
    lines += ["## Run", ""]
    lines += markdown_table(
        ["item", "value"],
        [
            _model_row(model) if model is not None else ["model", model_name],
            ["surrogate file", str(surrogate_path) if surrogate_path is not None else "not given"],
            [
                "surrogate",
                f"order {metadata.get('order', 'unknown')}, {metadata.get('basis', 'unknown')} basis, "
                f"{surrogate.n_layers} layers, input widths {', '.join(map(str, sorted(set(surrogate.input_widths))))}",
            ],
            ["task", str(metadata.get("task", "not recorded"))],
            ["readout", f"{readout} (readout units)"],
            ["schedule file", str(schedule_path) if schedule_path is not None else "not saved"],
        ],
    )
    lines += ["## Settings", ""]
    lines += markdown_table(
        ["setting", "value", "unit and meaning"],
        [
            ["target_shift", format_numbers(schedule.target_shift), "requested readout change, readout units"],
            ["schedule", schedule.name, _SCHEDULE_RULES.get(schedule.name, "")],
            ["layers", format_layers(schedule.layers), "layers allowed a non-zero input"],
            [
                "max_amplitude",
                format_numbers(max_amplitude) if max_amplitude is not None else "none",
                f"cap on each layer's input norm ‖u_k‖, {INJECTION_UNIT}",
            ],
        ],
    )
    prompt = metadata.get("prompt")
    if isinstance(prompt, str):
        lines += _context_section(prompt, "The surrogate was identified")
    lines += ["## Result", ""]
    lines += markdown_table(
        ["quantity", "value", "unit"],
        [
            ["status", schedule.status, "closed_form, heuristic, or the cvxpy solver status"],
            ["predicted shift", format_numbers(schedule.predicted_shift), "readout units, on the surrogate"],
            ["total energy", format_number(schedule.energy), f"Σ_k ‖u_k‖², {ENERGY_UNIT}"],
        ],
    )
    lines += _schedule_section(schedule)
    lines += _comparison_section(schedule, comparison)

    def draw(path: Path) -> Path:
        scalar_inputs = all(amplitude.size == 1 for amplitude in schedule.amplitudes)
        subtitle = (
            f"target {format_numbers(schedule.target_shift)} readout units, "
            f"total energy {schedule.energy:.4g} (residual-stream units)²"
        )
        # A cap per layer (an array) is stated in the settings table only. The command line passes one number.
        cap = float(max_amplitude) if max_amplitude is not None and np.ndim(max_amplitude) == 0 else None
        return plot_layer_bars(
            path,
            schedule.amplitude_profile(),
            schedule.layers,
            cap=cap,
            signed=scalar_inputs,
            title=f"{title}\n{subtitle}",
            ylabel=f"{'amplitude u_k along v_k' if scalar_inputs else 'input norm ‖u_k‖'}\n({INJECTION_UNIT})",
            label=f"{schedule.name} (readout: {readout})",
        )

    return write_report_folder(directory, "\n".join(lines), {"schedule.png": draw})


def _schedule_section(schedule: Schedule) -> list[str]:
    """Return the figure link and the table of the input, norm and energy per layer."""
    scalar_inputs = all(amplitude.size == 1 for amplitude in schedule.amplitudes)
    norms = np.array([float(np.linalg.norm(amplitude)) for amplitude in schedule.amplitudes])
    energies = norms**2
    shares = 100 * energies / schedule.energy if schedule.energy > 0 else np.full_like(energies, math.nan)
    rows = []
    for k, amplitude in enumerate(schedule.amplitudes):
        value = format_number(amplitude[0]) if scalar_inputs else format_numbers(amplitude)
        rows.append([k, value, format_number(norms[k]), format_number(energies[k]), format_number(shares[k])])

    lines = [
        "## Schedule per layer",
        "",
        f"The injection at the input of block k is u_k times v_k, with u_k in {INJECTION_UNIT}.",
        "",
        "![Input per layer](schedule.png)",
        "",
    ]
    header = [
        "layer k",
        f"{'amplitude u_k' if scalar_inputs else 'input u_k'} ({INJECTION_UNIT})",
        f"input norm ‖u_k‖ ({INJECTION_UNIT})",
        f"energy ‖u_k‖² ({ENERGY_UNIT})",
        "share of total energy (%)",
    ]
    return lines + markdown_table(header, rows)


def _comparison_section(schedule: Schedule, comparison: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Return the table of the energy of each heuristic relative to ``schedule``."""
    energy = format_number(schedule.energy)
    rows = [[f"{schedule.name} (this schedule)", format_layers(schedule.layers), energy, format_number(1.0), ""]]
    for name, row in comparison.items():
        layers = format_layers(row["layers"]) if row.get("layers") is not None else "n/a"
        ratio = format_number(row.get("energy_ratio"))
        rows.append([name, layers, format_number(row.get("energy")), ratio, row.get("error") or ""])

    lines = [
        "## Comparison with heuristic schedules",
        "",
        "Each heuristic is planned on the same surrogate for the same target and readout, on the layers",
        "this schedule was allowed: uniform over them, the last of them, or the one with the largest",
        "surrogate gain. The energy ratio divides its energy by the total energy of this schedule",
        f"({energy} {ENERGY_UNIT}), so a ratio above 1 means the heuristic needs more energy.",
        "",
    ]
    header = ["schedule", "layers used", f"energy ({ENERGY_UNIT})", "energy ratio (this schedule = 1)", "note"]
    return lines + markdown_table(header, rows)
