"""Building blocks of the run reports: Markdown formatting, figures, and the atomic write of a report folder.

:mod:`steercontrol.report` composes the reports from these parts. The
figures plot one value per layer against the layer index k, the input of
block k, and are drawn with the Agg backend through :mod:`steercontrol.plots`.
"""

from __future__ import annotations

import math
import os
import re
import secrets
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "REPORT_FILE",
    "check_report_directory",
    "write_report_folder",
    "plot_layer_profiles",
    "plot_layer_bars",
    "format_number",
    "format_numbers",
    "format_layers",
    "markdown_table",
    "fenced_block",
]

REPORT_FILE = "report.md"
"""Name of the Markdown file in every report folder."""


# Writing a report folder


def check_report_directory(directory: str | os.PathLike[str]) -> Path:
    """Check that a report can be written to ``directory`` and return it as a Path.

    The folder itself may be missing (it is created) or an existing folder
    (its ``report.md`` and figures are replaced), but its parent must exist.
    Call this before long work, so that a bad path fails at once.

    Raises
    ------
    NotADirectoryError
        If ``directory`` is an existing file.
    FileNotFoundError
        If the parent folder does not exist.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(
            f"Cannot write a report to {directory} because it is a file. Pass the path of a folder."
        )
    if not directory.parent.is_dir():
        raise FileNotFoundError(
            f"Cannot write a report to {directory} because the folder {directory.parent} does not exist. "
            "Create it first."
        )
    return directory


def write_report_folder(
    directory: str | os.PathLike[str], markdown: str, figures: Mapping[str, Callable[[Path], Path]]
) -> Path:
    """Draw the figures and write ``report.md`` into a staging folder, then move them into ``directory``.

    Parameters
    ----------
    directory : str or os.PathLike
        Report folder, checked by :func:`check_report_directory`. A missing
        folder appears in one rename. In an existing folder each file is
        replaced by its own rename, ``report.md`` last, and other files stay.
    markdown : str
        Text of ``report.md``.
    figures : mapping of str to callable
        PNG file name -> function that draws the figure to the path it is given.

    Returns
    -------
    pathlib.Path
        The written ``report.md``.

    Raises
    ------
    NotADirectoryError, FileNotFoundError
        As :func:`check_report_directory`.

    Notes
    -----
    Any exception while drawing or writing removes the staging folder, so
    ``directory`` is left as it was.
    """
    directory = check_report_directory(directory)
    # A sibling of the target keeps every rename on one file system, where it is atomic.
    # The resolved path has a name even for '.' or '..'.
    target = directory.resolve()
    staging = target.parent / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    staging.mkdir()
    try:
        for name, draw in figures.items():
            draw(staging / name)
        (staging / REPORT_FILE).write_text(markdown, encoding="utf-8")

        if not directory.exists():
            staging.rename(directory)
        else:
            # report.md moves last, so it never links a figure that is not yet in place.
            for name in [*figures, REPORT_FILE]:
                os.replace(staging / name, directory / name)
            staging.rmdir()
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory / REPORT_FILE


# Figures


def _layer_axes(axis: Any, *, title: str, ylabel: str) -> None:
    """Label an axes whose x axis is the layer index."""
    from matplotlib.ticker import MaxNLocator

    axis.axhline(0, color="grey", linewidth=0.5)
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_xlabel("layer k (input of block k)")
    axis.set_ylabel(ylabel)
    axis.set_title(title, fontsize=10)


def plot_layer_profiles(path: Path, curves: Sequence[tuple[str, np.ndarray, str]], *, title: str, ylabel: str) -> Path:
    """Plot one line per layer profile and write the figure to a PNG file.

    Parameters
    ----------
    path : Path
        Output PNG file, written through a temporary file.
    curves : sequence of (str, ndarray (L,), str)
        Legend label, value per layer, and matplotlib format string such as ``"o-k"``.
    title, ylabel : str
        Figure title and y-axis label, with the unit.

    Returns
    -------
    Path
        The file written.
    """
    from steercontrol.plots import _pyplot, _save

    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6.4, 3.8))
    for label, values, style in curves:
        axis.plot(np.arange(len(values)), values, style, label=label)
    _layer_axes(axis, title=title, ylabel=ylabel)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    return _save(figure, path, plt)


def plot_layer_bars(
    path: Path,
    values: np.ndarray,
    allowed: Sequence[int],
    *,
    cap: float | None,
    signed: bool,
    title: str,
    ylabel: str,
    label: str,
) -> Path:
    """Plot one bar per layer and write the figure to a PNG file.

    Parameters
    ----------
    path : Path
        Output PNG file, written through a temporary file.
    values : ndarray, (L,)
        Bar height per layer.
    allowed : sequence of int
        Layers allowed a non-zero value. The others get a grey background.
    cap : float, optional
        Drawn as a dashed line at ``cap``, and at ``-cap`` when ``signed``.
    signed : bool
        Whether ``values`` can be negative.
    title, ylabel, label : str
        Figure title, y-axis label with the unit, and legend label of the bars.

    Returns
    -------
    Path
        The file written.
    """
    from steercontrol.plots import _pyplot, _save

    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6.4, 4.4))
    excluded = sorted(set(range(len(values))) - set(allowed))
    for index, layer in enumerate(excluded):
        axis.axvspan(layer - 0.5, layer + 0.5, color="0.9", label="layer not allowed" if index == 0 else None)
    axis.bar(np.arange(len(values)), values, color="tab:blue", label=label)
    if cap is not None:
        axis.axhline(cap, color="tab:red", linestyle="--", linewidth=0.8, label=f"max_amplitude {cap:.4g}")
        if signed:
            axis.axhline(-cap, color="tab:red", linestyle="--", linewidth=0.8)
    _layer_axes(axis, title=title, ylabel=ylabel)
    axis.grid(axis="y", alpha=0.3)
    # Below the axes, so the legend never hides a bar or the cap.
    axis.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)
    figure.tight_layout()
    return _save(figure, path, plt)


# Markdown


def format_number(value: Any) -> str:
    """Format a number with 6 significant digits, or n/a for None and non-finite values."""
    if value is None or not math.isfinite(float(value)):
        return "n/a"
    return f"{float(value):.6g}"


def format_numbers(values: Any) -> str:
    """Format one number, or a bracketed list for several."""
    array = np.atleast_1d(np.asarray(values, dtype=np.float64))
    if array.size == 1:
        return format_number(array[0])
    return "[" + ", ".join(format_number(value) for value in array) + "]"


def _cell(text: Any) -> str:
    """Escape a value for one Markdown table cell."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """Return the lines of a Markdown table with escaped cells, followed by a blank line."""
    lines = ["| " + " | ".join(_cell(name) for name in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return [*lines, ""]


def fenced_block(text: str) -> list[str]:
    """Return the lines of a fenced block that quotes ``text`` verbatim, with a blank line after it.

    The fence is longer than any run of backticks in the text, so the text cannot close it.
    """
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence + "text", text, fence, ""]


def format_layers(layers: Sequence[int]) -> str:
    """Write sorted layer indices as inclusive ranges, such as ``0-3, 7``."""
    parts: list[str] = []
    layers = sorted(layers)
    start = previous = None
    for layer in [*layers, None]:
        if layer is not None and previous is not None and layer == previous + 1:
            previous = layer
            continue
        if start is not None:
            parts.append(str(start) if start == previous else f"{start}-{previous}")
        start = previous = layer
    return ", ".join(parts)
