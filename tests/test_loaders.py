"""SpamDataset, the three datasets and their loaders (section 6.3), trimmed and bucketed batches."""

import warnings

import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gptclassifier.data.loaders import (
    LengthBucketSampler,
    SpamDataset,
    create_data_loaders,
    create_datasets,
    trim_padding,
)
from gptclassifier.errors import ConfigError, DataError
from gptclassifier.model.tokenizer import PAD_TOKEN_ID

PAD = 50256
SHORT, MEDIUM, LONG = "Hi", "See you at the station at six", "Win a brand new car " * 5


def frame(texts, labels=None) -> pd.DataFrame:
    """Return a frame of messages with labels 0, 1, 0, ... unless given."""
    labels = [i % 2 for i in range(len(texts))] if labels is None else labels
    return pd.DataFrame({"Label": labels, "Text": texts})


def rows(dataset) -> list[list[int]]:
    """Return every message of a dataset as a list of token ids."""
    return [dataset[i][0].tolist() for i in range(len(dataset))]


def test_messages_are_padded_to_the_longest_with_end_of_text(tokenizer):
    texts = [SHORT, LONG, MEDIUM]
    dataset = SpamDataset(frame(texts), tokenizer)
    encoded = [tokenizer.encode(text) for text in texts]
    longest = max(map(len, encoded))
    assert dataset.max_length == longest == len(encoded[1])
    assert rows(dataset) == [ids + [PAD] * (longest - len(ids)) for ids in encoded]
    assert [dataset[i][1].item() for i in range(3)] == [0, 1, 0]
    assert dataset[0][0].dtype == dataset[0][1].dtype == torch.long
    assert len(dataset) == 3


def test_messages_are_cut_to_max_length(tokenizer):
    texts = [SHORT, LONG, MEDIUM]
    dataset = SpamDataset(frame(texts), tokenizer, max_length=4)
    encoded = [tokenizer.encode(text) for text in texts]
    assert dataset.max_length == 4
    assert rows(dataset) == [(ids + [PAD] * 4)[:4] for ids in encoded]


def test_validation_and_test_are_cut_to_the_training_length(tokenizer):
    splits = {
        "train": frame([SHORT, MEDIUM]),
        "validation": frame([LONG, SHORT]),
        "test": frame([LONG + LONG]),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # within the context: no warning expected
        datasets = create_datasets(splits, tokenizer, context_length=1024)
    train_length = len(tokenizer.encode(MEDIUM))
    for name in ("train", "validation", "test"):
        assert datasets[name].max_length == train_length
        assert all(len(ids) == train_length for ids in rows(datasets[name]))
    assert rows(datasets["validation"])[0] == tokenizer.encode(LONG)[:train_length]
    short_ids = tokenizer.encode(SHORT)
    assert rows(datasets["validation"])[1] == short_ids + [PAD] * (train_length - len(short_ids))


def test_create_datasets_warns_and_cuts_to_the_context_length(tokenizer):
    splits = {"train": frame([SHORT, LONG]), "validation": frame([LONG]), "test": frame([MEDIUM])}
    assert len(tokenizer.encode(LONG)) > 8
    with pytest.warns(UserWarning, match="context"):
        datasets = create_datasets(splits, tokenizer, context_length=8)
    for name, dataset in datasets.items():
        assert dataset.max_length == 8, name
        assert all(len(ids) == 8 for ids in rows(dataset))
    assert rows(datasets["train"])[1] == tokenizer.encode(LONG)[:8]


def test_create_datasets_pads_every_message_to_the_context_on_request(tokenizer):
    splits = {"train": frame([SHORT, MEDIUM]), "validation": frame([LONG]), "test": frame([SHORT])}
    datasets = create_datasets(splits, tokenizer, context_length=64, padding="context")
    assert {name: dataset.max_length for name, dataset in datasets.items()} == dict.fromkeys(
        splits, 64
    )
    short_ids = tokenizer.encode(SHORT)
    assert rows(datasets["test"])[0] == short_ids + [PAD] * (64 - len(short_ids))
    with pytest.raises(ConfigError, match="unknown padding 'none': choose one of longest, context"):
        create_datasets(splits, tokenizer, context_length=64, padding="none")


def test_loader_batch_counts_follow_the_chapter(tokenizer):
    sizes = {"train": 1045, "validation": 149, "test": 300}
    splits = {name: frame(["ok"] * size) for name, size in sizes.items()}
    loaders = create_data_loaders(create_datasets(splits, tokenizer, 1024), batch_size=8)
    assert {name: len(loader) for name, loader in loaders.items()} == {
        "train": 130,
        "validation": 19,
        "test": 38,
    }
    train_sizes = [len(targets) for _, targets in loaders["train"]]
    assert len(train_sizes) == 130 and set(train_sizes) == {8}  # the last 5 rows are dropped
    validation_sizes = [len(targets) for _, targets in loaders["validation"]]
    assert validation_sizes == [8] * 18 + [5]
    assert sum(len(targets) for _, targets in loaders["test"]) == 300


def shuffled_order(tokenizer, seed: int) -> list[int]:
    """Return the row order of the first training epoch, rows labelled with their index."""
    splits = {name: frame(["x"] * 40, list(range(40))) for name in ("train", "validation", "test")}
    loaders = create_data_loaders(create_datasets(splits, tokenizer, 1024), 8)
    torch.manual_seed(seed)
    return torch.cat([targets for _, targets in loaders["train"]]).tolist()


def test_training_shuffle_follows_the_global_seed(tokenizer):
    first, again, other = (shuffled_order(tokenizer, seed) for seed in (123, 123, 321))
    assert sorted(first) == list(range(40))
    assert first != list(range(40))
    assert first == again
    assert first != other


def test_every_pass_over_any_loader_draws_from_the_global_generator(tokenizer):
    # The chapter's DataLoader has no generator of its own: an evaluation pass over the
    # validation loader moves the global generator on, and so changes the next shuffle.
    splits = {name: frame(["x"] * 40, list(range(40))) for name in ("train", "validation", "test")}
    loaders = create_data_loaders(create_datasets(splits, tokenizer, 1024), 8)
    orders = []
    for evaluate_first in (False, True):
        torch.manual_seed(123)
        if evaluate_first:
            next(iter(loaders["validation"]))
        orders.append(torch.cat([targets for _, targets in loaders["train"]]).tolist())
    assert orders[0] == shuffled_order(tokenizer, 123)
    assert orders[1] != orders[0]


def test_validation_and_test_loaders_keep_the_order(tokenizer):
    splits = {name: frame(["x"] * 20, list(range(20))) for name in ("train", "validation", "test")}
    loaders = create_data_loaders(create_datasets(splits, tokenizer, 1024), 8)
    for name in ("validation", "test"):
        assert torch.cat([t for _, t in loaders[name]]).tolist() == list(range(20))


def test_literal_end_of_text_in_a_message_is_encoded_as_ordinary_tokens(tokenizer):
    text = "Free entry <|endoftext|> reply WIN now"
    dataset = SpamDataset(frame([text, SHORT]), tokenizer)
    real = rows(dataset)[0]  # the longest message: no padding, every token is the message's
    assert PAD not in real
    assert tokenizer.decode(real) == text
    assert rows(dataset)[1][-1] == PAD


def test_string_labels_raise_data_error(tokenizer):
    with pytest.raises(DataError, match="labels"):
        SpamDataset(frame(["a", "b"], ["ham", "spam"]), tokenizer)


def test_dataset_reads_a_csv_path_with_an_empty_text(tokenizer, tmp_path):
    path = tmp_path / "train.csv"
    pd.DataFrame({"Label": [0, 1, 0], "Text": ["Hello there", "", "NA"]}).to_csv(path, index=False)
    dataset = SpamDataset(path, tokenizer)
    assert len(dataset) == 3
    assert dataset.max_length == len(tokenizer.encode("Hello there"))
    assert set(dataset[1][0].tolist()) == {PAD}
    assert dataset.data["Text"].tolist() == ["Hello there", "", "NA"]
    na_ids = tokenizer.encode("NA")
    assert dataset[2][0].tolist()[: len(na_ids)] == na_ids
    assert [dataset[i][1].item() for i in range(3)] == [0, 1, 0]


# --- properties ---------------------------------------------------------------------------

MESSAGES = st.lists(st.text(max_size=60), min_size=1, max_size=8)


@settings(max_examples=40)
@given(texts=MESSAGES, max_length=st.one_of(st.none(), st.integers(1, 30)))
def test_every_row_is_the_message_cut_or_padded_to_one_length(tokenizer, texts, max_length):
    dataset = SpamDataset(frame(texts), tokenizer, max_length)
    encoded = [tokenizer.encode(text, disallowed_special=()) for text in texts]
    width = dataset.max_length
    assert width == (max(1, *map(len, encoded)) if max_length is None else max_length)
    for ids, row in zip(encoded, rows(dataset), strict=True):
        kept = ids[:width]
        assert len(row) == width
        assert row[: len(kept)] == kept and set(row[len(kept) :]) <= {PAD}


TOKEN_LISTS = st.lists(st.lists(st.integers(0, PAD - 1), max_size=12), min_size=1, max_size=6)


@given(messages=TOKEN_LISTS, extra=st.integers(0, 5))
def test_trimmed_batches_keep_every_real_token_and_drop_only_padding(messages, extra):
    width = max(1, *map(len, messages)) + extra  # a batch is at least one token wide
    batch = [
        (torch.tensor(ids + [PAD] * (width - len(ids))), torch.tensor(i % 2))
        for i, ids in enumerate(messages)
    ]
    inputs, labels = trim_padding(batch)
    assert inputs.shape == (len(messages), max(1, *map(len, messages)))
    for ids, row in zip(messages, inputs.tolist(), strict=True):
        assert row == ids + [PAD] * (inputs.shape[1] - len(ids))
    assert labels.tolist() == [i % 2 for i in range(len(messages))]


def test_trim_padding_cuts_to_the_longest_message():
    batch = [
        (torch.tensor([5, 6, PAD_TOKEN_ID, PAD_TOKEN_ID]), torch.tensor(0)),
        (torch.tensor([7, PAD_TOKEN_ID, PAD_TOKEN_ID, PAD_TOKEN_ID]), torch.tensor(1)),
    ]
    inputs, labels = trim_padding(batch)
    assert inputs.tolist() == [[5, 6], [7, PAD_TOKEN_ID]]
    assert labels.tolist() == [0, 1]


def test_length_buckets_cover_every_message_once_per_epoch():
    lengths = [(i * 37) % 50 for i in range(100)]
    sampler = LengthBucketSampler(lengths, batch_size=8, generator=torch.Generator().manual_seed(1))
    batches = list(sampler)
    assert len(batches) == len(sampler) == 12
    seen = [index for batch in batches for index in batch]
    assert len(seen) == len(set(seen)) == 96
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches)
    assert spread < 12 * 25  # sorted within chunks: batches hold similar lengths
    assert list(sampler) != batches  # a new order every epoch
