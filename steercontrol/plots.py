"""Figures for gain profiles and energy ratios (matplotlib, written to files)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = ["plot_gain_profiles", "plot_energy_ratios", "plot_schedule_profiles"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_gain_profiles(
    profiles: Mapping[str, Mapping[str, np.ndarray]],
    path: str | Path,
    *,
    title: str = "Layer gains: measured vs predicted",
) -> Path:
    """Plot mean measured and predicted gain profiles, one panel per task.

    Parameters
    ----------
    profiles : mapping
        Task -> {"measured": (n_contexts, L), "predicted": (n_contexts, L),
        optionally "time_invariant": (n_contexts, L)}.
    path : str or Path
        Output PNG file.

    Returns
    -------
    Path
        The file written.
    """
    plt = _pyplot()
    tasks = list(profiles)
    figure, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.4), squeeze=False)
    styles = {
        "measured": ("black", "-", "measured (full model)"),
        "predicted": ("tab:blue", "--", "layer-varying surrogate"),
        "time_invariant": ("tab:orange", ":", "time-invariant surrogate"),
    }
    for axis, task in zip(axes[0], tasks, strict=True):
        for key, (color, line, label) in styles.items():
            if key not in profiles[task]:
                continue
            values = np.asarray(profiles[task][key])
            mean = values.mean(0)
            layers = np.arange(len(mean))
            axis.plot(layers, mean, color=color, linestyle=line, label=label)
            if values.shape[0] > 1:
                low, high = np.percentile(values, [25, 75], axis=0)
                axis.fill_between(layers, low, high, color=color, alpha=0.12)
        axis.axhline(0, color="grey", linewidth=0.5)
        axis.set_title(task)
        axis.set_xlabel("layer k (block input)")
        axis.set_ylabel("gain dy/du_k")
    axes[0][0].legend(fontsize=7)
    figure.suptitle(title)
    figure.tight_layout()
    return _save(figure, path, plt)


def plot_energy_ratios(
    ratios: Mapping[str, Mapping[str, Sequence[float]]],
    path: str | Path,
    *,
    title: str = "Energy to reach the target on the full model (min-energy = 1)",
) -> Path:
    """Plot energy ratios per schedule as box plots, one panel per task.

    Parameters
    ----------
    ratios : mapping
        Task -> schedule name -> energy ratios over contexts (nan for
        contexts where the schedule did not reach the target).
    path : str or Path
        Output PNG file.
    """
    plt = _pyplot()
    tasks = list(ratios)
    figure, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.8), squeeze=False)
    for axis, task in zip(axes[0], tasks, strict=True):
        names = list(ratios[task])
        data = [np.asarray([r for r in ratios[task][name] if np.isfinite(r)]) for name in names]
        positions = np.arange(1, len(names) + 1)
        kept = [(p, d) for p, d in zip(positions, data, strict=True) if d.size]
        if kept:
            axis.boxplot([d for _, d in kept], positions=[p for p, _ in kept], widths=0.6, showfliers=False)
        axis.set_yscale("log")
        axis.axhline(1.0, color="tab:blue", linewidth=0.8)
        axis.set_xticks(positions)
        axis.set_xticklabels(names, rotation=45, ha="right", fontsize=7)
        axis.set_title(task)
        axis.set_ylabel("energy / min-energy")
    figure.suptitle(title)
    figure.tight_layout()
    return _save(figure, path, plt)


def plot_schedule_profiles(
    shapes: Mapping[str, Mapping[str, np.ndarray]],
    path: str | Path,
    *,
    names: Sequence[str] = ("min_energy", "min_energy_iterated", "min_energy_pooled", "uniform_all"),
    title: str = "Calibrated schedules, first context of each task",
) -> Path:
    """Plot the signed amplitude of each schedule per layer, one panel per task.

    Parameters
    ----------
    shapes : mapping
        Task -> schedule name -> (n_layers,) amplitudes along v_k. Other keys
        (such as the context text) are ignored.
    path : str or Path
        Output PNG file.
    names : sequence of str
        Schedules to draw, when present.
    """
    plt = _pyplot()
    tasks = list(shapes)
    figure, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.4), squeeze=False)
    for axis, task in zip(axes[0], tasks, strict=True):
        for name in names:
            values = shapes[task].get(name)
            if values is None:
                continue
            values = np.asarray(values)
            axis.plot(np.arange(len(values)), values, marker=".", label=name)
        axis.axhline(0, color="grey", linewidth=0.5)
        axis.set_title(task)
        axis.set_xlabel("layer k (block input)")
        axis.set_ylabel("amplitude along v_k (model units)")
    axes[0][0].legend(fontsize=7)
    figure.suptitle(title)
    figure.tight_layout()
    return _save(figure, path, plt)


def _save(figure, path: str | Path, plt) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename, so a failed save leaves no partial file.
    partial = path.with_name(path.name + ".partial")
    figure.savefig(partial, dpi=120, format="png")
    plt.close(figure)
    partial.replace(path)
    return path
