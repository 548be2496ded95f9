"""Labelled concept tasks, concept directions and readouts.

A *concept task* is a set of short texts with a binary label and a fixed
split: ``concept`` (to estimate directions), ``operating`` (to identify
pooled surrogates) and ``heldout`` (to evaluate). The *concept direction*
v_k at layer k is the normalised difference of class means of the
last-token state x_k over the concept split. A *readout* maps the
final-normed last-token state to the output y the controller steers.
"""

from __future__ import annotations

import csv
import json
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from steercontrol.exceptions import ConfigurationError, DataDirectionWarning, DataError, ShapeError, TruncationWarning
from steercontrol.hooks import record
from steercontrol.models import SteerableModel

__all__ = [
    "BUILTIN_TASKS",
    "ConceptTask",
    "ConceptDirections",
    "Readout",
    "load_task",
    "load_task_file",
    "load_hf_dataset",
    "collect_states",
    "concept_directions",
    "projection_readout",
    "logit_difference_readout",
    "probe_readout",
]

logger = logging.getLogger(__name__)

Split = Literal["concept", "operating", "heldout"]
SPLITS: tuple[str, ...] = ("concept", "operating", "heldout")

BUILTIN_TASKS: dict[str, tuple[str, str]] = {
    "sentiment": ("negative", "positive"),
    "toxicity": ("non_toxic", "toxic"),
    "irony": ("not_ironic", "ironic"),
    "hate": ("not_hate", "hate"),
}
"""Built-in task name -> (label of class 0, label of class 1)."""


@dataclass
class ConceptTask:
    """A binary labelled text task with fixed splits.

    Attributes
    ----------
    name : str
        Task name.
    texts : list of str
        The texts.
    labels : np.ndarray
        (n,) int array, 1 for the concept's positive class.
    splits : list of str
        Split of each text: "concept", "operating" or "heldout".
    label_names : tuple of str
        Names of class 0 and class 1.
    """

    name: str
    texts: list[str]
    labels: np.ndarray
    splits: list[str]
    label_names: tuple[str, str]

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=int)
        if not self.texts:
            raise DataError(f"Task {self.name!r} has no texts; pass at least one text per class and split.")
        if not (len(self.texts) == len(self.labels) == len(self.splits)):
            raise DataError(
                f"Task {self.name!r}: {len(self.texts)} texts, {len(self.labels)} labels and "
                f"{len(self.splits)} splits; pass one label and one split per text."
            )
        bad_splits = sorted(set(self.splits) - set(SPLITS))
        if bad_splits:
            raise DataError(f"Task {self.name!r}: unknown splits {bad_splits}; expected {', '.join(SPLITS)}.")
        if set(np.unique(self.labels)) - {0, 1}:
            raise DataError(f"Task {self.name!r}: labels must be 0 or 1, got {sorted(set(self.labels.tolist()))}.")
        if len(np.unique(self.labels)) < 2:
            raise DataError(
                f"Task {self.name!r} has a single class ({self.label_names[int(self.labels[0])]}); "
                "a concept direction needs examples of both classes."
            )
        seen: dict[str, str] = {}
        for text, split in zip(self.texts, self.splits, strict=True):
            if not text.strip():
                raise DataError(f"Task {self.name!r} contains an empty text; remove it.")
            if seen.setdefault(text, split) != split:
                raise DataError(
                    f"Task {self.name!r}: the text {text[:60]!r} is in both {seen[text]!r} and {split!r}; "
                    "remove the duplicate so the splits stay disjoint."
                )

    def split(self, name: Split) -> tuple[list[str], np.ndarray]:
        """Return the texts and labels of one split."""
        if name not in SPLITS:
            raise ConfigurationError(f"Unknown split {name!r}; expected one of {', '.join(SPLITS)}.")
        index = [i for i, split in enumerate(self.splits) if split == name]
        if not index:
            raise DataError(f"Task {self.name!r} has no texts in split {name!r}.")
        return [self.texts[i] for i in index], self.labels[index]


def _task_from_records(
    name: str,
    records: Sequence[dict[str, Any]],
    *,
    text_key: str,
    label_key: str,
    label_names: tuple[str, str],
    seed: int,
) -> ConceptTask:
    if not records:
        raise DataError(f"Task {name!r} is empty; the file or dataset has no rows.")
    texts, labels, splits = [], [], []
    for row_number, row in enumerate(records, start=1):
        if text_key not in row or label_key not in row:
            raise DataError(
                f"Row {row_number} of task {name!r} lacks {text_key!r} or {label_key!r} "
                f"(keys: {sorted(row)}); pass text_key= and label_key= naming the right columns."
            )
        raw = row[label_key]
        label = _parse_label(raw, label_names)
        if label is None:
            raise DataError(
                f"Row {row_number} of task {name!r} has unknown label {raw!r}; expected one of "
                f"{label_names[0]!r}, {label_names[1]!r} (or 0/1); pass label_names= to rename."
            )
        texts.append(str(row[text_key]))
        labels.append(label)
        splits.append(str(row["split"]) if "split" in row else "")

    if not all(splits):
        splits = _assign_splits(np.asarray(labels), seed)
    return ConceptTask(name, texts, np.asarray(labels), splits, label_names)


def _parse_label(raw: Any, label_names: tuple[str, str]) -> int | None:
    if isinstance(raw, str):
        if raw in label_names:
            return label_names.index(raw)
        if raw.strip() in ("0", "1"):
            return int(raw.strip())
        return None
    if isinstance(raw, (bool, np.bool_)):
        return int(raw)
    if isinstance(raw, (int, np.integer)) and int(raw) in (0, 1):
        return int(raw)
    return None


def _assign_splits(labels: np.ndarray, seed: int) -> list[str]:
    # Per class, shuffle and cut 2:1:1 into concept / operating / heldout.
    rng = np.random.default_rng(seed)
    splits = [""] * len(labels)
    for value in (0, 1):
        index = rng.permutation(np.flatnonzero(labels == value))
        cut1, cut2 = len(index) // 2, (3 * len(index)) // 4
        for position, i in enumerate(index):
            if position < cut1:
                splits[i] = "concept"
            elif position < cut2:
                splits[i] = "operating"
            else:
                splits[i] = "heldout"
    return splits


def load_task(name: str) -> ConceptTask:
    """Load a built-in task (see :data:`BUILTIN_TASKS`).

    Raises
    ------
    ConfigurationError
        If the name is not a built-in task; the message lists them.
    """
    if name not in BUILTIN_TASKS:
        raise ConfigurationError(
            f"Unknown task {name!r}; built-in tasks: {', '.join(BUILTIN_TASKS)}. "
            "Load your own with load_task_file()."
        )
    data = resources.files("steercontrol") / "data" / f"{name}.jsonl"
    records = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines() if line.strip()]
    return _task_from_records(
        name, records, text_key="text", label_key="label", label_names=BUILTIN_TASKS[name], seed=0
    )


def load_task_file(
    path: str | Path,
    *,
    name: str | None = None,
    text_key: str = "text",
    label_key: str = "label",
    label_names: tuple[str, str] = ("0", "1"),
    seed: int = 0,
) -> ConceptTask:
    """Load a task from a CSV or JSON Lines file.

    Parameters
    ----------
    path : str or Path
        A ``.csv`` file with a header row, or a ``.jsonl`` file.
    name : str, optional
        Task name; defaults to the file stem.
    text_key, label_key : str
        Column names of the text and the label.
    label_names : (str, str)
        Label values of class 0 and class 1. The strings "0" and "1" and the
        integers 0 and 1 are always accepted.
    seed : int
        Seed of the 2:1:1 split assignment when the file has no ``split``
        column.

    Returns
    -------
    ConceptTask
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Task file {str(path)!r} was not found.")
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            records: list[dict[str, Any]] = list(csv.DictReader(handle))
    elif path.suffix in (".jsonl", ".json"):
        try:
            records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except json.JSONDecodeError as error:
            raise DataError(f"Task file {str(path)!r} is not valid JSON Lines: {error}.") from error
    else:
        raise DataError(f"Unsupported task file type {path.suffix!r}; use .csv or .jsonl.")
    return _task_from_records(
        name or path.stem, records, text_key=text_key, label_key=label_key, label_names=label_names, seed=seed
    )


def load_hf_dataset(
    path: str,
    *,
    config: str | None = None,
    split: str = "train",
    text_key: str = "text",
    label_key: str = "label",
    label_names: tuple[str, str] = ("0", "1"),
    threshold: float | None = None,
    limit: int | None = None,
    seed: int = 0,
) -> ConceptTask:
    """Load a task from a Hugging Face ``datasets`` id or a dataset saved to disk.

    Parameters
    ----------
    path : str
        A hub id such as ``"tweet_eval"`` (needs network access) or a folder
        written by ``Dataset.save_to_disk``.
    config : str, optional
        Dataset configuration, such as ``"irony"`` or ``"hate"``.
    split : str
        Which dataset split to read.
    text_key, label_key : str
        Column names.
    label_names : (str, str)
        Names of class 0 and class 1.
    threshold : float, optional
        For a continuous label such as Civil Comments' ``toxicity``: class 1
        when the value is at least this threshold.
    limit : int, optional
        Keep at most this many rows, balanced per class.
    seed : int
        Seed of the balanced subsample and the 2:1:1 split assignment.

    Returns
    -------
    ConceptTask
    """
    try:
        import datasets
    except ImportError as error:
        raise ConfigurationError("Loading datasets needs the 'datasets' package: pip install datasets") from error

    if Path(path).is_dir():
        loaded = datasets.load_from_disk(path)
        if isinstance(loaded, datasets.DatasetDict):
            loaded = loaded[split]
    else:
        loaded = datasets.load_dataset(path, config, split=split)
    records = [dict(row) for row in loaded]
    if threshold is not None:
        for row in records:
            row[label_key] = int(float(row[label_key]) >= threshold)
    if limit is not None:
        records = _balanced_subsample(records, label_key, limit, label_names, seed)
    return _task_from_records(
        f"{path}:{config}" if config else path,
        records,
        text_key=text_key,
        label_key=label_key,
        label_names=label_names,
        seed=seed,
    )


def _balanced_subsample(
    records: list[dict[str, Any]], label_key: str, limit: int, label_names: tuple[str, str], seed: int
) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    kept: list[dict[str, Any]] = []
    for value in (0, 1):
        rows = [row for row in records if _parse_label(row[label_key], label_names) == value]
        order = rng.permutation(len(rows))[: limit // 2]
        kept.extend(rows[i] for i in order)
    return kept


def collect_states(
    model: SteerableModel,
    texts: Sequence[str],
    *,
    batch_size: int = 16,
    max_length: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Record last-token states of many texts, batched and padding-aware.

    Parameters
    ----------
    model : SteerableModel
        The model.
    texts : sequence of str
        The texts.
    batch_size : int
        Texts per forward pass.
    max_length : int, optional
        Token limit; defaults to the model's context length. Longer texts are
        truncated from the left, with a :class:`TruncationWarning`.

    Returns
    -------
    states : torch.Tensor
        (n_texts, n_layers + 1, hidden) float32 states x_0..x_L.
    final_normed : torch.Tensor
        (n_texts, hidden) float32 outputs of the final norm.
    """
    if batch_size < 1:
        raise ConfigurationError(f"batch_size must be >= 1, got {batch_size}.")
    limit = max_length or int(getattr(model.model.config, "max_position_embeddings", 0) or 1 << 30)
    lengths = [len(model.tokenizer(text)["input_ids"]) for text in texts]
    too_long = [i for i, length in enumerate(lengths) if length > limit]
    if too_long:
        warnings.warn(
            f"{len(too_long)} text(s) exceed the {limit}-token context (first: text {too_long[0]}, "
            f"{lengths[too_long[0]]} tokens); they were truncated from the left so the last token stays.",
            TruncationWarning,
            stacklevel=2,
        )

    states, normed = [], []
    for start in range(0, len(texts), batch_size):
        batch = model.tokenize(list(texts[start : start + batch_size]), max_length=limit, padding_side="left")
        with torch.no_grad(), record(model) as recording:
            model.forward(**batch)
        states.append(recording.states.float().cpu())
        normed.append(recording.final_normed.float().cpu())
    return torch.cat(states), torch.cat(normed)


@dataclass
class ConceptDirections:
    """Per-layer concept directions of one task.

    Attributes
    ----------
    directions : np.ndarray
        (n_layers + 1, hidden) unit vectors v_0..v_L at the block inputs and
        the final pre-norm state.
    final_direction : np.ndarray
        (hidden,) unit vector on the final-normed state, used by the default
        readout.
    separation : np.ndarray or None
        (n_layers + 1,) held-out AUROC of the projection on v_k, when computed.
    state_norms : np.ndarray
        (n_layers + 1,) median norm of x_k over the concept split.
    task : str
        Task name.
    """

    directions: np.ndarray
    final_direction: np.ndarray
    state_norms: np.ndarray
    task: str
    separation: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def _unit_mean_difference(values: torch.Tensor, labels: np.ndarray) -> torch.Tensor:
    mask = torch.as_tensor(labels == 1)
    # (n_layers + 1, hidden) or (hidden,)
    difference = values[mask].mean(0) - values[~mask].mean(0)
    norm = difference.norm(dim=-1, keepdim=True)
    scale = values.abs().max().clamp(min=1e-30)
    empty = (norm <= 1e-6 * scale).reshape(-1)
    if bool(empty.all()):
        raise DataError(
            "The two classes have identical mean states at every layer, so the concept direction is undefined; "
            "check that the labels differ in meaning and that the texts are not all the same."
        )
    if difference.ndim == 2 and bool(empty.any()):
        # The state at layer 0 is the last token's embedding alone, so the class
        # means coincide there when both classes end in the same tokens. Such a
        # layer borrows the direction of the nearest layer where they differ.
        valid = torch.nonzero(~empty).reshape(-1)
        for layer in torch.nonzero(empty).reshape(-1).tolist():
            nearest = int(valid[(valid - layer).abs().argmin()])
            difference[layer], norm[layer] = difference[nearest], norm[nearest]
        warnings.warn(
            f"The class means coincide at layers {torch.nonzero(empty).reshape(-1).tolist()}; "
            "they use the direction of the nearest layer where the means differ.",
            DataDirectionWarning,
            stacklevel=3,
        )
    return difference / norm


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Return the area under the ROC curve of ``scores`` for binary ``labels``."""
    positive, negative = scores[labels == 1], scores[labels == 0]
    if len(positive) == 0 or len(negative) == 0:
        raise DataError("AUROC needs both classes in the evaluation split.")
    # Mann-Whitney U: the fraction of (positive, negative) pairs ranked correctly, ties counting half.
    greater = (positive[:, None] > negative[None, :]).sum()
    ties = (positive[:, None] == negative[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(positive) * len(negative)))


def concept_directions(
    model: SteerableModel,
    task: ConceptTask,
    *,
    batch_size: int = 16,
    evaluate_split: Split | None = "heldout",
    max_per_class: int | None = None,
) -> ConceptDirections:
    """Estimate concept directions at every layer from the concept split.

    Parameters
    ----------
    model : SteerableModel
        The model.
    task : ConceptTask
        The labelled task.
    batch_size : int
        Texts per forward pass.
    evaluate_split : {"concept", "operating", "heldout"} or None
        Split on which to measure how well the projection on v_k separates
        the classes (AUROC per layer). None skips it.
    max_per_class : int, optional
        Use at most this many concept texts of each class (the first ones in
        file order). None uses them all.

    Returns
    -------
    ConceptDirections

    Notes
    -----
    v_k = (mean_{y=1} x_k - mean_{y=0} x_k) / ||mean_{y=1} x_k - mean_{y=0} x_k||
    """
    texts, labels = task.split("concept")
    if max_per_class is not None:
        if max_per_class < 1:
            raise ConfigurationError(f"Invalid max_per_class {max_per_class!r}; pass an int >= 1 or None.")
        keep = np.concatenate([np.flatnonzero(labels == value)[:max_per_class] for value in (0, 1)])
        keep.sort()
        texts, labels = [texts[i] for i in keep], labels[keep]
    if len(np.unique(labels)) < 2:
        raise DataError(f"The concept split of task {task.name!r} has a single class; add examples of both.")
    states, normed = collect_states(model, texts, batch_size=batch_size)
    directions = _unit_mean_difference(states, labels)
    final_direction = _unit_mean_difference(normed, labels)
    positive = torch.as_tensor(labels == 1)
    # Distance between the class means along the final direction, in readout units.
    final_gap = float((normed[positive].mean(0) - normed[~positive].mean(0)) @ final_direction)
    state_norms = states.norm(dim=-1).median(dim=0).values

    separation = None
    if evaluate_split is not None:
        eval_texts, eval_labels = task.split(evaluate_split)
        eval_states, _ = collect_states(model, eval_texts, batch_size=batch_size)
        # (n, n_layers + 1): projection of each state on its layer's direction.
        scores = torch.einsum("nlh,lh->nl", eval_states, directions).numpy()
        separation = np.array([auroc(scores[:, layer], eval_labels) for layer in range(scores.shape[1])])

    return ConceptDirections(
        directions=directions.numpy(),
        final_direction=final_direction.numpy(),
        state_norms=state_norms.numpy(),
        task=task.name,
        separation=separation,
        metadata={"model": model.name, "n_concept_texts": len(texts), "final_gap": final_gap},
    )


@dataclass(frozen=True)
class Readout:
    """A linear readout of the final-normed last-token state.

    y = weight @ norm(x_L) + bias. Every readout in steercontrol has this
    form: a projection on a concept direction, a logit difference (rows of
    the unembedding) and a linear probe.

    Attributes
    ----------
    weight : np.ndarray
        (n_outputs, hidden).
    bias : np.ndarray
        (n_outputs,).
    kind : str
        "projection", "logit_difference" or "probe".
    description : str
        What the readout measures, recorded with every result.
    """

    weight: np.ndarray
    bias: np.ndarray
    kind: str
    description: str

    @property
    def n_outputs(self) -> int:
        """Number of readout outputs."""
        return int(self.weight.shape[0])

    def apply(self, final_normed: torch.Tensor) -> torch.Tensor:
        """Return y for a (batch, hidden) tensor of final-normed states, shape (batch, n_outputs)."""
        weight = torch.as_tensor(self.weight, dtype=final_normed.dtype, device=final_normed.device)
        bias = torch.as_tensor(self.bias, dtype=final_normed.dtype, device=final_normed.device)
        return final_normed @ weight.T + bias

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-friendly description (without the weights)."""
        return {"kind": self.kind, "description": self.description, "n_outputs": self.n_outputs}


def projection_readout(directions: ConceptDirections) -> Readout:
    """Return the default readout: projection on the final concept direction."""
    weight = directions.final_direction[None, :].astype(np.float64)
    return Readout(weight, np.zeros(1), "projection", f"projection on the final {directions.task} direction")


def logit_difference_readout(
    model: SteerableModel, positive_tokens: Sequence[int | str], negative_tokens: Sequence[int | str]
) -> Readout:
    """Return the readout mean logit(positive tokens) - mean logit(negative tokens).

    Tokens are ids or strings; a string must encode to exactly one token.
    """
    def to_ids(tokens: Sequence[int | str]) -> list[int]:
        ids = []
        for token in tokens:
            if isinstance(token, str):
                encoded = model.tokenizer(token, add_special_tokens=False)["input_ids"]
                if len(encoded) != 1:
                    raise ConfigurationError(
                        f"Token {token!r} encodes to {len(encoded)} tokens {encoded}; pass single-token strings or ids."
                    )
                ids.append(int(encoded[0]))
            else:
                ids.append(int(token))
        if not ids:
            raise ConfigurationError("A logit-difference readout needs at least one token on each side.")
        return ids

    positive, negative = to_ids(positive_tokens), to_ids(negative_tokens)
    unembedding = model.unembed.weight
    if not isinstance(unembedding, torch.Tensor):
        raise ConfigurationError(f"The unembedding of {model.name} has no weight matrix, so no logit readout exists.")
    weight = unembedding.detach().float().cpu().numpy()
    bias_vector = getattr(model.unembed, "bias", None)
    bias = bias_vector.detach().float().cpu().numpy() if bias_vector is not None else np.zeros(weight.shape[0])
    row = weight[positive].mean(0) - weight[negative].mean(0)
    offset = bias[positive].mean() - bias[negative].mean()
    return Readout(
        row[None, :].astype(np.float64),
        np.array([offset]),
        "logit_difference",
        f"mean logit of tokens {positive} minus mean logit of tokens {negative}",
    )


def probe_readout(weight: np.ndarray, bias: np.ndarray | float = 0.0, *, description: str = "linear probe") -> Readout:
    """Return a user-supplied linear probe on the final-normed state.

    Parameters
    ----------
    weight : np.ndarray
        (hidden,) or (n_outputs, hidden).
    bias : np.ndarray or float
        (n_outputs,) or a scalar.
    """
    weight = np.atleast_2d(np.asarray(weight, dtype=np.float64))
    bias_vector = np.broadcast_to(np.asarray(bias, dtype=np.float64), (weight.shape[0],)).copy()
    if weight.ndim != 2:
        raise ShapeError(f"Probe weight must be (hidden,) or (n_outputs, hidden), got shape {weight.shape}.")
    if not np.isfinite(weight).all() or not np.isfinite(bias_vector).all():
        raise ConfigurationError("Probe weight and bias must be finite.")
    return Readout(weight, bias_vector, "probe", description)
