"""Concept tasks, loaders, directions and readouts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from steercontrol.concepts import (
    BUILTIN_TASKS,
    ConceptTask,
    auroc,
    collect_states,
    concept_directions,
    load_hf_dataset,
    load_task,
    load_task_file,
    logit_difference_readout,
    probe_readout,
    projection_readout,
)
from steercontrol.exceptions import ConfigurationError, DataDirectionWarning, DataError, ShapeError, TruncationWarning
from steercontrol.testing import tiny_model


def _planted_task(n: int = 40) -> ConceptTask:
    # Class 1 texts end in "!!!!", class 0 in "....", so the last token differs by class.
    texts = [f"sample {i} {'!!!!' if i % 2 else '....'}" for i in range(n)]
    labels = np.array([i % 2 for i in range(n)])
    # Pairs of consecutive texts (one per class) share a split, cycling 2:1:1.
    splits = [("concept", "concept", "operating", "heldout")[(i // 2) % 4] for i in range(n)]
    return ConceptTask("planted", texts, labels, splits, ("dot", "bang"))


@pytest.mark.parametrize("name", list(BUILTIN_TASKS))
def test_builtin_task_loads(name):
    task = load_task(name)
    for split in ("concept", "operating", "heldout"):
        _, labels = task.split(split)
        assert set(labels.tolist()) == {0, 1}


def test_unknown_task_lists_builtins():
    with pytest.raises(ConfigurationError, match="sentiment.*toxicity.*irony.*hate"):
        load_task("sarcasm")


def test_single_class_rejected():
    with pytest.raises(DataError, match="single class"):
        ConceptTask("one", ["a", "b"], np.array([1, 1]), ["concept", "heldout"], ("no", "yes"))


def test_empty_task_rejected():
    with pytest.raises(DataError, match="no texts"):
        ConceptTask("empty", [], np.array([]), [], ("no", "yes"))


def test_duplicate_across_splits_rejected():
    with pytest.raises(DataError, match="both 'concept' and 'heldout'"):
        ConceptTask("dup", ["a", "a", "b"], np.array([0, 0, 1]), ["concept", "heldout", "concept"], ("no", "yes"))


def test_csv_loader_assigns_splits(tmp_path):
    path = tmp_path / "mine.csv"
    rows = ["sentence,polarity"] + [f"text number {i},{'pos' if i % 2 else 'neg'}" for i in range(40)]
    path.write_text("\n".join(rows))
    task = load_task_file(path, text_key="sentence", label_key="polarity", label_names=("neg", "pos"))
    assert task.splits.count("concept") == 20
    assert task.splits.count("operating") == 10
    assert task.splits.count("heldout") == 10


def test_jsonl_loader_unknown_label(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({"text": "hi", "label": "maybe"}) + "\n")
    with pytest.raises(DataError, match="unknown label 'maybe'.*label_names"):
        load_task_file(path, label_names=("no", "yes"))


def test_loader_missing_column(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({"content": "hi", "label": 1}) + "\n")
    with pytest.raises(DataError, match="lacks 'text'"):
        load_task_file(path)


def test_hf_dataset_from_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    texts = [f"comment {i}" for i in range(40)]
    scores = [0.9 if i % 2 else 0.1 for i in range(40)]
    datasets.Dataset.from_dict({"text": texts, "toxicity": scores}).save_to_disk(tmp_path / "civil")
    task = load_hf_dataset(str(tmp_path / "civil"), label_key="toxicity", threshold=0.5, label_names=("ok", "toxic"))
    assert task.labels.sum() == 20
    assert len(task.texts) == 40


def test_directions_point_the_right_way():
    model = tiny_model("llama")
    task = _planted_task()
    found = concept_directions(model, task)
    assert found.directions.shape == (model.n_layers + 1, model.hidden_size)
    assert np.allclose(np.linalg.norm(found.directions, axis=1), 1.0)
    texts, labels = task.split("heldout")
    states, normed = collect_states(model, texts)
    scores = states.numpy() @ found.directions[2]
    assert scores[labels == 1].mean() > scores[labels == 0].mean()
    assert found.separation is not None
    assert found.separation.min() >= 0.9


def test_collect_states_padding_aware():
    model = tiny_model("gpt2")
    batched, _ = collect_states(model, ["short", "a much longer text here"], batch_size=2)
    single, _ = collect_states(model, ["short"], batch_size=1)
    assert torch.allclose(batched[0], single[0], atol=1e-5)


def test_long_text_truncated_with_warning():
    model = tiny_model("llama")
    with pytest.warns(TruncationWarning, match="truncated from the left"):
        states, _ = collect_states(model, ["x" * 50], max_length=10)
    assert states.shape[0] == 1


def test_auroc_known_values():
    assert auroc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1])) == 1.0
    assert auroc(np.array([0.5, 0.5]), np.array([0, 1])) == 0.5


def test_projection_readout_is_linear():
    model = tiny_model("llama")
    found = concept_directions(model, _planted_task(), evaluate_split=None)
    readout = projection_readout(found)
    states = torch.randn(3, model.hidden_size)
    expected = states @ torch.as_tensor(found.final_direction, dtype=torch.float32)
    assert torch.allclose(readout.apply(states)[:, 0], expected, atol=1e-5)
    assert readout.kind == "projection"


def test_logit_difference_matches_logits():
    model = tiny_model("gpt2")
    readout = logit_difference_readout(model, [65, 66], [67])
    batch = model.tokenize(["hello"])
    with torch.no_grad():
        output = model.model(**batch, output_hidden_states=True)
    normed = output.hidden_states[-1][:, -1]
    logits = output.logits[0, -1]
    expected = (logits[65] + logits[66]) / 2 - logits[67]
    assert torch.allclose(readout.apply(normed)[0, 0], expected, atol=1e-4)


def test_logit_difference_multi_token_string_rejected():
    model = tiny_model("gpt2")
    with pytest.raises(ConfigurationError, match="encodes to 2 tokens"):
        logit_difference_readout(model, ["ab"], ["c"])


def test_probe_readout_rejects_nan():
    with pytest.raises(ConfigurationError, match="finite"):
        probe_readout(np.array([1.0, np.nan]))


def test_probe_readout_shape():
    readout = probe_readout(np.ones((2, 4)), 1.0)
    assert readout.n_outputs == 2
    with pytest.raises(ShapeError):
        probe_readout(np.ones((2, 2, 2)))


def test_max_per_class_limits_texts():
    model = tiny_model("llama")
    found = concept_directions(model, _planted_task(), evaluate_split=None, max_per_class=3)
    assert found.metadata["n_concept_texts"] == 6


def test_max_per_class_rejects_zero():
    model = tiny_model("llama")
    with pytest.raises(ConfigurationError, match="max_per_class"):
        concept_directions(model, _planted_task(), max_per_class=0)


def test_identical_means_borrow_direction():
    # Every text ends in the same token, so the class means coincide at layer 0.
    texts = [f"{'good' if i % 2 else 'bad'} {i} x" for i in range(40)]
    labels = np.array([i % 2 for i in range(40)])
    splits = [("concept", "concept", "operating", "heldout")[(i // 2) % 4] for i in range(40)]
    task = ConceptTask("same-ending", texts, labels, splits, ("bad", "good"))
    model = tiny_model("llama")
    with pytest.warns(DataDirectionWarning, match="layers \\[0\\]"):
        found = concept_directions(model, task, evaluate_split=None)
    assert np.allclose(found.directions[0], found.directions[1])
