"""Tests of the practice data set: its format, its content, the book's pandas parse, its cache."""

import hashlib
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from gptclassifier.data.practice_set import (
    PRACTICE_SIZE,
    generate_practice_messages,
    practice_bytes,
    practice_file,
    write_practice_file,
)

GPT2_CONTEXT = 1024
REAL_SMS_FILE = os.environ.get("GPTCLASSIFIER_TEST_SMS_FILE", "")


@pytest.fixture(scope="module")
def messages() -> list[tuple[str, str]]:
    return generate_practice_messages()


@pytest.fixture(scope="module")
def token_counts(messages, tokenizer) -> list[int]:
    return [len(tokenizer.encode(text)) for _, text in messages]


def exact_parse(data: bytes) -> list[tuple[str, str]]:
    """Split the file at each newline, and each line at its first tab."""
    lines = data.decode("utf-8").split("\n")
    assert lines.pop() == "", "the file must end with a newline"
    return [tuple(line.split("\t", 1)) for line in lines]


def book_parse(path: Path) -> list[tuple[str, str]]:
    """Read the file the way the book does, with pandas' default quoting."""
    frame = pd.read_csv(path, sep="\t", header=None, names=["Label", "Text"])
    return list(frame.itertuples(index=False, name=None))


def without_quote_marks(text: str) -> str:
    """Return `text` as pandas reads it: a field that opens with a quote loses its quote marks."""
    return text.replace('"', "") if text.startswith('"') else text


def test_the_same_seed_gives_the_same_bytes_and_another_seed_other_bytes():
    assert practice_bytes() == practice_bytes()
    assert practice_bytes(seed=7, num_messages=80) == practice_bytes(seed=7, num_messages=80)
    assert practice_bytes(seed=7, num_messages=80) != practice_bytes(seed=8, num_messages=80)
    assert practice_bytes(seed=124) != practice_bytes()


@pytest.mark.parametrize("hash_seed", ["1", "2"])
def test_the_bytes_do_not_depend_on_string_hashing(hash_seed):
    script = (
        "import hashlib; from gptclassifier.data.practice_set import practice_bytes; "
        "print(hashlib.sha256(practice_bytes()).hexdigest())"
    )
    environment = {**os.environ, "PYTHONHASHSEED": hash_seed}
    result = subprocess.run(
        [sys.executable, "-c", script], env=environment, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == hashlib.sha256(practice_bytes()).hexdigest()


@pytest.mark.parametrize("num_messages", [20, 101, PRACTICE_SIZE])
def test_labels_are_ham_or_spam_with_13_percent_spam(num_messages):
    labels = [label for label, _ in generate_practice_messages(num_messages=num_messages)]
    assert len(labels) == num_messages
    assert set(labels) == {"ham", "spam"}
    assert labels.count("spam") == round(0.13 * num_messages)


def test_spam_is_scattered_through_the_file(messages):
    spam_positions = [i for i, (label, _) in enumerate(messages) if label == "spam"]
    assert spam_positions[0] < len(messages) // 4
    assert spam_positions[-1] > 3 * len(messages) // 4
    assert spam_positions != list(range(spam_positions[0], spam_positions[0] + len(spam_positions)))


def test_too_few_messages_are_refused():
    with pytest.raises(ValueError, match="at least"):
        generate_practice_messages(num_messages=19)


def test_every_line_is_a_label_a_tab_and_a_text():
    data = practice_bytes()
    assert data.endswith(b"\n")
    assert b"\r" not in data
    lines = data.decode("utf-8").split("\n")[:-1]
    assert len(lines) == PRACTICE_SIZE
    for line in lines:
        assert line.count("\t") == 1, line
        label, text = line.split("\t")
        assert label in {"ham", "spam"}
        assert text and text == text.strip(), line


def test_the_file_is_small():
    assert len(practice_bytes()) < 200_000


def test_the_exact_parse_gives_back_the_messages(messages):
    assert exact_parse(practice_bytes()) == messages


def test_most_texts_are_unique(messages):
    # Short replies ("ok", "Night x") recur, as they do in the real file; the rest do not.
    texts = [text for _, text in messages]
    assert len(set(texts)) >= 0.85 * len(texts)


def test_some_texts_have_non_ascii_characters(messages):
    texts = [text for _, text in messages]
    assert sum(not text.isascii() for text in texts) >= 30
    for character in ["£", "€", "é", "ü", "ñ", "😊", "🎉", "📱", "“", "’"]:
        assert any(character in text for text in texts), character


def test_spam_and_ham_share_some_words(messages):
    def words(wanted: str) -> set[str]:
        return {word for label, text in messages if label == wanted for word in text.split()}

    shared = words("ham") & words("spam")
    assert {"free", "call", "u", "ur", "win"} <= {word.lower() for word in shared}


def test_a_few_messages_of_each_class_exceed_gpt2_context(messages, token_counts):
    overlong = [
        label
        for (label, _), count in zip(messages, token_counts, strict=True)
        if count > GPT2_CONTEXT
    ]
    assert 2 <= len(overlong) <= 4
    assert set(overlong) == {"ham", "spam"}
    assert sorted(token_counts)[-len(overlong)] > 1100
    assert sorted(token_counts)[-len(overlong) - 1] < 200


def test_token_lengths_are_spread_like_sms(token_counts):
    assert 10 <= statistics.median(token_counts) <= 60
    assert 20 <= statistics.mean(token_counts) <= 40
    assert min(token_counts) <= 2
    assert sum(5 <= count <= 60 for count in token_counts) >= 0.8 * len(token_counts)


def test_a_handful_of_texts_open_with_a_quote_and_one_never_closes_it(messages):
    quoted = [(label, text) for label, text in messages if text.startswith('"')]
    assert 3 <= len(quoted) <= 8
    assert [label for label, text in quoted if text.count('"') == 1] == ["ham"]
    assert all(text.count('"') == 2 for _, text in quoted if text.count('"') != 1)


def test_the_book_parse_runs_the_unclosed_quote_over_exactly_the_next_two_lines(tmp_path):
    path = write_practice_file(tmp_path / "practice-sms.tsv")
    lines = path.read_bytes().decode("utf-8").split("\n")[:-1]
    exact = exact_parse(path.read_bytes())
    start = next(i for i, (_, text) in enumerate(exact) if text.count('"') == 1)
    swallowed = "\n".join(lines[start : start + 3]).split("\t", 1)[1]

    rows = book_parse(path)

    assert len(rows) == len(lines) - 2
    assert [text for _, text in rows if "\n" in text] == [swallowed.replace('"', "")]
    expected = (
        [(label, without_quote_marks(text)) for label, text in exact[:start]]
        + [(exact[start][0], swallowed.replace('"', ""))]
        + [(label, without_quote_marks(text)) for label, text in exact[start + 3 :]]
    )
    assert rows == expected


def test_write_practice_file_writes_the_practice_bytes(tmp_path):
    target = tmp_path / "new" / "sms.tsv"
    assert write_practice_file(target, seed=5, num_messages=50) == target
    assert target.read_bytes() == practice_bytes(seed=5, num_messages=50)


def test_practice_file_is_written_under_the_cache_the_environment_names(monkeypatch, tmp_path):
    monkeypatch.setenv("GPTCLASSIFIER_CACHE", str(tmp_path))
    path = practice_file()
    assert path == tmp_path / "practice" / "practice-sms.tsv"
    assert path.read_bytes() == practice_bytes()


def test_practice_file_rewrites_a_tampered_file(monkeypatch, tmp_path):
    monkeypatch.setenv("GPTCLASSIFIER_CACHE", str(tmp_path))
    path = practice_file()
    path.write_bytes(practice_bytes().replace(b"spam\t", b"ham\t", 1))
    assert practice_file().read_bytes() == practice_bytes()


def test_practice_file_leaves_an_up_to_date_file_alone(monkeypatch, tmp_path):
    monkeypatch.setenv("GPTCLASSIFIER_CACHE", str(tmp_path))
    path = practice_file()
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    before = path.stat()
    practice_file()
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


@pytest.mark.real_data
@pytest.mark.skipif(
    not (REAL_SMS_FILE and Path(REAL_SMS_FILE).is_file()),
    reason="GPTCLASSIFIER_TEST_SMS_FILE does not name the real SMS Spam Collection file",
)
def test_no_practice_text_is_a_real_text(messages):
    with open(REAL_SMS_FILE, encoding="utf-8", errors="replace") as real_file:
        real_texts = {line.rstrip("\r\n").split("\t", 1)[-1] for line in real_file}
    assert len(real_texts) > 1000
    assert [text for _, text in messages if text in real_texts] == []
