"""The real SMS Spam Collection: counts, the book's split row for row, its longest message.

These tests need the data file through $GPTCLASSIFIER_TEST_SMS_FILE (CI sets it) and skip
without it; the project never ships the data.
"""

import hashlib
import io
import json
import zipfile

import pandas as pd
import pytest

from gptclassifier.cli import main
from gptclassifier.data.sms import (
    SMS_FILE_SHA256,
    SMS_MEMBER,
    download_sms_spam,
    load_data,
    read_sms_spam,
)
from gptclassifier.data.splits import SPLIT_NAMES, create_balanced_dataset, prepare_splits

pytestmark = pytest.mark.real_data


def chapter_split(path):
    """Section 6.2 of the chapter as the book writes it, independent of the package."""
    df = pd.read_csv(path, sep="\t", header=None, names=["Label", "Text"])
    spam = df[df["Label"] == "spam"]
    ham = df[df["Label"] == "ham"].sample(len(spam), random_state=123)
    balanced = pd.concat([ham, spam])
    balanced["Label"] = balanced["Label"].map({"ham": 0, "spam": 1})
    shuffled = balanced.sample(frac=1, random_state=123).reset_index(drop=True)
    train_end = int(len(shuffled) * 0.7)
    validation_end = train_end + int(len(shuffled) * 0.1)
    return shuffled[:train_end], shuffled[train_end:validation_end], shuffled[validation_end:]


def test_the_file_is_the_published_one(real_sms_file):
    assert hashlib.sha256(real_sms_file.read_bytes()).hexdigest() == SMS_FILE_SHA256


def test_exact_parsing_counts(real_sms_file):
    frame = read_sms_spam(real_sms_file)
    assert len(frame) == 5574
    assert frame["Label"].value_counts().to_dict() == {"ham": 4827, "spam": 747}


def test_book_parsing_counts_and_how_it_differs_from_exact(real_sms_file):
    book = read_sms_spam(real_sms_file, parsing="book")
    exact = read_sms_spam(real_sms_file, parsing="exact")
    assert len(book) == 5572
    assert book["Label"].value_counts().to_dict() == {"ham": 4825, "spam": 747}

    # Line 5082 opens a quote that pandas closes only on line 5084: three lines, one message.
    merged = book[book["Text"].str.contains("\n")]
    assert merged.index.tolist() == [5081]
    first, second, third = merged["Text"].iloc[0].split("\n")
    assert first == exact["Text"][5081].lstrip('"')
    assert second == "\t".join(exact.loc[5082, ["Label", "Text"]])
    assert third.startswith("ham\tHI BABE UAWAKE?")

    # Elsewhere the rows line up; a message that starts with a quote loses it and its partner.
    book_rest = book.drop(5081).reset_index(drop=True)
    exact_rest = exact.drop([5081, 5082, 5083]).reset_index(drop=True)
    assert book_rest["Label"].equals(exact_rest["Label"])
    changed = book_rest["Text"] != exact_rest["Text"]
    assert changed.sum() == 52
    assert exact_rest["Text"][changed].str.startswith('"').all()
    unquoted = exact_rest["Text"][changed].str.replace('"', "", n=2)
    assert unquoted.equals(book_rest["Text"][changed])


def test_balanced_frame_starts_with_the_chapters_rows(real_sms_file):
    balanced = create_balanced_dataset(read_sms_spam(real_sms_file, parsing="book"), seed=123)
    assert balanced.index[:5].tolist() == [4307, 4138, 4831, 4461, 5440]
    assert balanced["Label"].value_counts().to_dict() == {"ham": 747, "spam": 747}


def test_book_split_row_for_row(real_sms_file):
    splits = prepare_splits(load_data(real_sms_file, parsing="book"), seed=123)
    for ours, reference in zip(splits.values(), chapter_split(real_sms_file), strict=True):
        pd.testing.assert_frame_equal(ours, reference, check_dtype=False)
    counts = {name: frame["Label"].value_counts().to_dict() for name, frame in splits.items()}
    assert counts == {
        "train": {0: 528, 1: 517},
        "validation": {0: 70, 1: 79},
        "test": {0: 149, 1: 151},
    }


def test_longest_training_message_is_120_tokens(real_sms_file, tokenizer):
    train = prepare_splits(load_data(real_sms_file, parsing="book"))["train"]
    assert max(len(tokenizer.encode(text)) for text in train["Text"]) == 120


def test_prepare_command_writes_the_chapters_csv_files(real_sms_file, tmp_path, capsys):
    out = tmp_path / "prepared"
    args = ["prepare", "--data", str(real_sms_file), "--out", str(out)]  # the book's reading
    assert main(args) == 0
    for name, reference in zip(SPLIT_NAMES, chapter_split(real_sms_file), strict=True):
        assert (out / f"{name}.csv").read_text() == reference.to_csv(index=None)
    printed = capsys.readouterr().out
    assert "5,572 messages (book parsing)" in printed
    metadata = json.loads((out / "dataset.json").read_text())
    assert metadata["provenance"]["note"] == "the SMS Spam Collection (hash verified)"


def test_prepare_command_with_exact_parsing_keeps_every_message(real_sms_file, tmp_path, capsys):
    out = tmp_path / "prepared"
    args = ["prepare", "--data", str(real_sms_file), "--parsing", "exact", "--out", str(out)]
    assert main(args) == 0
    assert "5,574 messages (exact parsing)" in capsys.readouterr().out
    sizes = [len(pd.read_csv(out / f"{name}.csv")) for name in SPLIT_NAMES]
    assert sizes == [1045, 149, 300]


def test_download_and_book_profile_use_the_verified_cache(real_sms_file, file_server):
    data = real_sms_file.read_bytes()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(SMS_MEMBER, data)
        archive.writestr("readme", "about the collection")
    url = file_server.serve("/228/sms+spam+collection.zip", buffer.getvalue())
    archive_sha256 = hashlib.sha256(buffer.getvalue()).hexdigest()
    path = download_sms_spam(urls=(url,), archive_sha256=archive_sha256, progress=False)
    assert path.read_bytes() == data
    loaded = load_data(profile="book")  # no network: it must come from the cache
    assert loaded.provenance.source == "uci"
    assert len(loaded.frame) == 5572  # the book profile reads it as the chapter does


# The first epoch that the book's gpt_class_finetune.py prints for GPT-2 small with random
# weights (GPTModel made under torch.manual_seed(123)), the chapter's data and settings.
BOOKS_FIRST_EPOCH = [
    "Ep 1 (Step 000000): Train loss 1.038, Val loss 0.958",
    "Ep 1 (Step 000050): Train loss 0.374, Val loss 0.390",
    "Ep 1 (Step 000100): Train loss 0.272, Val loss 0.422",
    "Training accuracy: 85.00% | Validation accuracy: 85.00%",
]


class FirstEpochSeen(Exception):
    """Stops a training command once it has printed its first epoch's accuracy."""


@pytest.mark.slow  # an epoch of GPT-2 small on the chapter's data: minutes
@pytest.mark.parametrize("way", [["--chapter"], []], ids=["chapter-loop", "default"])
def test_train_prints_the_books_first_epoch(real_sms_file, tmp_path, monkeypatch, way):
    # Offline, so GPT-2 small starts from the seeded random weights, as in the book's check.
    # The command is stopped after the first epoch's lines: the rest adds minutes, not checks.
    printed = []

    def progress_line(line):
        printed.append(line)
        if line.startswith("Training accuracy: "):
            raise FirstEpochSeen

    monkeypatch.setattr("gptclassifier.cli.tqdm.write", progress_line)
    args = ["train", "--data", str(real_sms_file), "--no-progress", "--out", str(tmp_path / "r")]
    with pytest.raises(FirstEpochSeen):
        main([*args, *way])
    assert [line for line in printed if line.startswith(("Ep ", "Training"))] == BOOKS_FIRST_EPOCH
