"""Balancing, label encoding and the 70/10/20 split, alone and in one call; writing them."""

import json

import pandas as pd
import pytest

from gptclassifier.data.sms import LabeledData, Provenance
from gptclassifier.data.splits import (
    SPLIT_NAMES,
    count_labels,
    create_balanced_dataset,
    encode_labels,
    prepare_splits,
    random_split,
    write_splits,
)
from gptclassifier.errors import DataError
from gptclassifier.files import atomic_writer

PROVENANCE = Provenance("local", "/data/messages.tsv", "0" * 64)


def labeled(labels, classes):
    """Return LabeledData with one numbered message per label."""
    frame = pd.DataFrame({"Label": labels, "Text": [f"text {i}" for i in range(len(labels))]})
    return LabeledData(frame, classes, PROVENANCE)


def sms_frame(num_ham=40, num_spam=7):
    """Return a frame of numbered ham and spam messages, spam scattered among ham."""
    labels = ["ham"] * num_ham + ["spam"] * num_spam
    frame = pd.DataFrame({"Label": labels, "Text": [f"message {i}" for i in range(len(labels))]})
    return frame.sample(frac=1, random_state=0).reset_index(drop=True)


def test_balancing_matches_the_chapters_recipe():
    frame = sms_frame()
    balanced = create_balanced_dataset(frame, seed=123)
    spam = frame[frame["Label"] == "spam"]
    ham = frame[frame["Label"] == "ham"].sample(len(spam), random_state=123)
    pd.testing.assert_frame_equal(balanced, pd.concat([ham, spam]))


def test_balancing_three_classes_keeps_the_smallest_whole():
    frame = pd.DataFrame({"Label": list("aaaaabbbcc"), "Text": [str(i) for i in range(10)]})
    balanced = create_balanced_dataset(frame)
    assert balanced["Label"].value_counts().to_dict() == {"a": 2, "b": 2, "c": 2}
    assert balanced.index[-2:].tolist() == [8, 9]


def test_balancing_one_class_is_an_error():
    with pytest.raises(DataError, match="at least two classes, found 1"):
        create_balanced_dataset(pd.DataFrame({"Label": ["ham"] * 3, "Text": ["a", "b", "c"]}))


def test_label_encoding_is_safe_to_run_twice():
    frame = sms_frame(5, 3)
    once = encode_labels(frame)
    assert once["Label"].tolist() == (frame["Label"] == "spam").astype(int).tolist()
    pd.testing.assert_frame_equal(encode_labels(once), once)
    book_way = frame["Label"].map({"ham": 0, "spam": 1})
    assert book_way.map({"ham": 0, "spam": 1}).isna().all()  # the chapter's second run


def test_label_encoding_refuses_unknown_labels():
    with pytest.raises(DataError, match="label 'eggs' is not one of ham, spam"):
        encode_labels(pd.DataFrame({"Label": ["ham", "eggs"], "Text": ["a", "b"]}))
    with pytest.raises(DataError, match="neither a class name nor a class index"):
        encode_labels(pd.DataFrame({"Label": [0, 7], "Text": ["a", "b"]}))


def test_random_split_sizes_and_disjointness():
    frame = sms_frame(747, 747)
    train, validation, test = random_split(frame, 0.7, 0.1, seed=123)
    assert (len(train), len(validation), len(test)) == (1045, 149, 300)
    texts = pd.concat([train, validation, test])["Text"]
    assert texts.is_unique and set(texts) == set(frame["Text"])
    again = random_split(frame, 0.7, 0.1, seed=123)
    assert all(a.equals(b) for a, b in zip((train, validation, test), again, strict=True))
    assert not random_split(frame, 0.7, 0.1, seed=124)[0].equals(train)


@pytest.mark.parametrize(
    ("train_frac", "validation_frac"), [(0.0, 0.1), (0.7, 0.3), (1.2, 0.1), (0.7, 0)]
)
def test_random_split_refuses_impossible_fractions(train_frac, validation_frac):
    with pytest.raises(DataError, match="fractions"):
        random_split(sms_frame(), train_frac, validation_frac)


def test_random_split_refuses_too_few_rows():
    with pytest.raises(DataError, match="5 rows are too few"):
        random_split(sms_frame(3, 2), 0.7, 0.1)


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
