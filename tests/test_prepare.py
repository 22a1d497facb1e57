"""Balancing, encoding and splitting in one call, and writing the splits."""

import json

import pandas as pd
import pytest

from gptclassifier.data.sms import LabeledData, Provenance
from gptclassifier.data.splits import SPLIT_NAMES, count_labels, prepare_splits, write_splits
from gptclassifier.files import atomic_writer

PROVENANCE = Provenance("local", "/data/messages.tsv", "0" * 64)


def labeled(labels, classes):
    """Return LabeledData with one numbered message per label."""
    frame = pd.DataFrame({"Label": labels, "Text": [f"text {i}" for i in range(len(labels))]})
    return LabeledData(frame, classes, PROVENANCE)


def test_prepare_splits_balances_encodes_and_splits():
    data = labeled(["ham"] * 80 + ["spam"] * 20, ("ham", "spam"))
    splits = prepare_splits(data, seed=7)
    assert list(splits) == list(SPLIT_NAMES)
    assert [len(frame) for frame in splits.values()] == [28, 4, 8]
    together = pd.concat(splits.values())
    assert together["Label"].value_counts().to_dict() == {0: 20, 1: 20}
    spam_texts = set(data.frame.loc[data.frame["Label"] == "spam", "Text"])
    assert set(together.loc[together["Label"] == 1, "Text"]) == spam_texts


def test_count_labels_names_the_classes():
    data = labeled(["b", "a", "c"] * 20, ("a", "b", "c"))
    table = count_labels(prepare_splits(data), data.classes)
    assert table.columns.tolist() == ["a", "b", "c", "total"]
    assert table["total"].tolist() == [42, 6, 12]
    assert table[["a", "b", "c"]].sum().tolist() == [20, 20, 20]


def test_write_splits_writes_csv_and_metadata(tmp_path):
    data = labeled(["ham"] * 30 + ["spam"] * 30, ("ham", "spam"))
    splits = prepare_splits(data)
    paths = write_splits(splits, data, tmp_path / "out", parsing="exact", seed=123)
    assert [path.name for path in paths] == [
        "train.csv",
        "validation.csv",
        "test.csv",
        "dataset.json",
    ]
    for name, frame in splits.items():
        pd.testing.assert_frame_equal(
            pd.read_csv(tmp_path / "out" / f"{name}.csv"), frame.reset_index(drop=True)
        )
    metadata = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert metadata["classes"] == ["ham", "spam"]
    assert metadata["provenance"]["sha256"] == "0" * 64
    assert metadata["counts"]["train"]["total"] == 42
    assert metadata["parsing"] == "exact" and metadata["seed"] == 123


def test_write_splits_leaves_nothing_when_a_write_fails(tmp_path, monkeypatch):
    data = labeled(["ham"] * 30 + ["spam"] * 30, ("ham", "spam"))
    out = tmp_path / "out"

    def failing_writer(path):
        if path.name == "test.csv":
            raise OSError("disk full")
        return atomic_writer(path)

    monkeypatch.setattr("gptclassifier.data.splits.atomic_writer", failing_writer)
    with pytest.raises(OSError, match="disk full"):
        write_splits(prepare_splits(data), data, out)
    assert list(out.iterdir()) == []  # train.csv and validation.csv were not left behind
