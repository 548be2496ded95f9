"""Checks on the built-in labelled concept datasets in steercontrol/data.

These tests read the JSON Lines files directly and need no model.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

DATA_DIR = Path(__file__).parents[1] / "steercontrol" / "data"

# Task name -> the two label names its file must use.
TASK_LABELS = {
    "sentiment": {"negative", "positive"},
    "toxicity": {"non_toxic", "toxic"},
    "irony": {"not_ironic", "ironic"},
    "hate": {"not_hate", "hate"},
}
SPLITS = ("concept", "operating", "heldout")
# Fraction of each class that goes to each split (2:1:1).
SPLIT_SHARES = {"concept": 0.5, "operating": 0.25, "heldout": 0.25}
MIN_PER_CLASS = 200
MAX_TEXT_CHARS = 400


def load_rows(task: str) -> list[dict]:
    """Parse every line of ``<task>.jsonl`` into a list of dicts."""
    path = DATA_DIR / f"{task}.jsonl"
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


@pytest.mark.parametrize("task", sorted(TASK_LABELS))
def test_file_lines_parse(task):
    path = DATA_DIR / f"{task}.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines, f"{path} is empty"
    for number, line in enumerate(lines, start=1):
        assert line.strip(), f"{path}:{number} is blank"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            pytest.fail(f"{path}:{number} is not valid JSON: {error}")
        assert isinstance(row, dict), f"{path}:{number} is not a JSON object"


@pytest.mark.parametrize("task", sorted(TASK_LABELS))
def test_row_keys_exact(task):
    for row in load_rows(task):
        assert set(row) == {"text", "label", "split"}, row


@pytest.mark.parametrize("task", sorted(TASK_LABELS))
def test_labels_expected(task):
    labels = {row["label"] for row in load_rows(task)}
    assert labels == TASK_LABELS[task]


@pytest.mark.parametrize("task", sorted(TASK_LABELS))
def test_splits_known(task):
    splits = {row["split"] for row in load_rows(task)}
    assert splits == set(SPLITS)


@pytest.mark.parametrize("task", sorted(TASK_LABELS))
def test_class_size_minimum(task):
    counts = Counter(row["label"] for row in load_rows(task))
    for label in TASK_LABELS[task]:
        assert counts[label] >= MIN_PER_CLASS, f"{label}: {counts[label]}"


@pytest.mark.parametrize("task", sorted(TASK_LABELS))
def test_split_ratio_per_class(task):
    rows = load_rows(task)
    for label in TASK_LABELS[task]:
        class_rows = [row for row in rows if row["label"] == label]
        counts = Counter(row["split"] for row in class_rows)
        for split, share in SPLIT_SHARES.items():
            expected = share * len(class_rows)
            assert abs(counts[split] - expected) <= 1, (
                f"{label}/{split}: {counts[split]} rows, expected about {expected}"
            )


@pytest.mark.parametrize("task", sorted(TASK_LABELS))
def test_classes_balanced_per_split(task):
    counts = Counter((row["split"], row["label"]) for row in load_rows(task))
    for split in SPLITS:
        per_label = {label: counts[(split, label)] for label in TASK_LABELS[task]}
        assert len(set(per_label.values())) == 1, f"{split}: {per_label}"


@pytest.mark.parametrize("task", sorted(TASK_LABELS))
def test_text_unique_in_file(task):
    texts = Counter(row["text"] for row in load_rows(task))
    duplicates = [text for text, count in texts.items() if count > 1]
    assert duplicates == []


@pytest.mark.parametrize("task", sorted(TASK_LABELS))
def test_text_in_one_split(task):
    splits_by_text: dict[str, set[str]] = {}
    for row in load_rows(task):
        splits_by_text.setdefault(row["text"], set()).add(row["split"])
    shared = [text for text, splits in splits_by_text.items() if len(splits) > 1]
    assert shared == []


@pytest.mark.parametrize("task", sorted(TASK_LABELS))
def test_text_length_bounds(task):
    for row in load_rows(task):
        text = row["text"]
        assert isinstance(text, str), row
        assert text.strip(), row
        assert len(text) < MAX_TEXT_CHARS, text


def test_text_unique_across_files():
    owner: dict[str, str] = {}
    duplicates = []
    for task in sorted(TASK_LABELS):
        for row in load_rows(task):
            text = row["text"]
            if text in owner and owner[text] != task:
                duplicates.append((text, owner[text], task))
            owner.setdefault(text, task)
    assert duplicates == []


def test_opening_words_unique():
    # Texts sharing their first five words read as one template filled in twice.
    owner: dict[str, str] = {}
    repeats = []
    for task in sorted(TASK_LABELS):
        for row in load_rows(task):
            opening = " ".join(re.findall(r"[a-z0-9']+", row["text"].lower())[:5])
            if opening in owner:
                repeats.append((opening, owner[opening], row["text"]))
            owner.setdefault(opening, row["text"])
    assert repeats == []
