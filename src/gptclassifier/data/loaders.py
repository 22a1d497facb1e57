"""Messages as padded token-id tensors: the chapter's SpamDataset and its data loaders."""

import warnings
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from gptclassifier.errors import DataError, check_choice
from gptclassifier.model.tokenizer import PAD_TOKEN_ID
from gptclassifier.settings import PADDINGS


class SpamDataset(Dataset):
    """Token ids of each message, cut or padded with <|endoftext|> to one length, and its label.

    With `max_length=None` the length is that of the longest message (the chapter pads the
    training set this way, then cuts validation and test messages to the same length).
    """

    def __init__(self, data, tokenizer, max_length: int | None = None, pad_token_id=PAD_TOKEN_ID):
        self.data = _as_frame(data)
        try:
            self.labels = [int(label) for label in self.data["Label"]]
        except ValueError as exc:
            raise DataError(f"labels must be class indices; encode them first ({exc})") from None
        # disallowed_special=() encodes a literal "<|endoftext|>" in a message as plain text,
        # so the padding id never occurs inside a message.
        self.encoded_texts = [
            tokenizer.encode(text, disallowed_special=()) for text in self.data["Text"]
        ]
        self.max_length = self._longest_encoded_length() if max_length is None else max_length
        self.encoded_texts = [
            ids[: self.max_length]
            + [pad_token_id] * (self.max_length - len(ids[: self.max_length]))
            for ids in self.encoded_texts
        ]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (
            torch.tensor(self.encoded_texts[index], dtype=torch.long),
            torch.tensor(self.labels[index], dtype=torch.long),
        )

    def __len__(self) -> int:
        return len(self.data)

    def _longest_encoded_length(self) -> int:
        """Return the number of tokens of the longest message (at least 1: a row is never empty)."""
        return max(1, *(len(ids) for ids in self.encoded_texts))


def _as_frame(data) -> pd.DataFrame:
    """Return a frame of `Label` and `Text` from a frame or the path of a CSV file."""
    if isinstance(data, pd.DataFrame):
        return data.reset_index(drop=True)
    return pd.read_csv(Path(data), keep_default_na=False)


def create_datasets(
    splits: dict, tokenizer, context_length: int, padding: str = "longest"
) -> dict[str, SpamDataset]:
    """Pad the training messages to the longest, within the context; cut the others to match.

    `padding="context"` pads every message to the model's whole context instead.
    """
    check_choice("padding", padding, PADDINGS)
    if padding == "context":
        train = SpamDataset(splits["train"], tokenizer, context_length)
    else:
        train = SpamDataset(splits["train"], tokenizer)
    if train.max_length > context_length:
        warnings.warn(
            f"the longest training message has {train.max_length} tokens, more than the "
            f"model's context of {context_length}: longer messages are cut to {context_length}",
            stacklevel=2,
        )
        train = SpamDataset(splits["train"], tokenizer, context_length)
    datasets = {"train": train}
    for name in ("validation", "test"):
        datasets[name] = SpamDataset(splits[name], tokenizer, train.max_length)
    return datasets


class LengthBucketSampler(Sampler):
    """Shuffled batches of messages of similar length, so that batches need little padding.

    Each epoch shuffles the messages, sorts them by length within chunks of `chunk_batches`
    batches, cuts the chunks into batches and shuffles the batches. The shuffles draw from
    `generator`, or from torch's global generator when it is None (as the chapter's loader).
    """

    def __init__(self, lengths, batch_size: int, generator=None, chunk_batches: int = 16):
        self.lengths, self.batch_size, self.generator = lengths, batch_size, generator
        self.chunk = batch_size * chunk_batches

    def __iter__(self):
        order = torch.randperm(len(self.lengths), generator=self.generator).tolist()
        batches = []
        for start in range(0, len(order), self.chunk):
            part = sorted(order[start : start + self.chunk], key=self.lengths.__getitem__)
            batches += [part[i : i + self.batch_size] for i in range(0, len(part), self.batch_size)]
        full = [batch for batch in batches if len(batch) == self.batch_size]
        for index in torch.randperm(len(full), generator=self.generator).tolist():
            yield full[index]

    def __len__(self) -> int:
        return len(self.lengths) // self.batch_size


def create_data_loaders(
    datasets: dict[str, SpamDataset],
    batch_size: int = 8,
    trim: bool = False,
    bucket: bool = False,
) -> dict[str, DataLoader]:
    """Return the chapter's loaders: shuffled full training batches, and every other message.

    As in the chapter, no generator is given: every pass over any of the loaders draws from
    torch's global generator, so `torch.manual_seed` before training fixes every shuffle.
    `trim` cuts each batch's padding to its longest message (right only with `flexible`
    pooling); `bucket` also groups training messages of similar length into batches.
    """
    collate = trim_padding if trim else None
    train = datasets["train"]
    if bucket:
        lengths = [sum(token != PAD_TOKEN_ID for token in ids) for ids in train.encoded_texts]
        sampler = LengthBucketSampler(lengths, batch_size)
        loaders = {"train": DataLoader(train, batch_sampler=sampler, collate_fn=collate)}
    else:
        train_loader = DataLoader(
            train, batch_size, shuffle=True, drop_last=True, collate_fn=collate
        )
        loaders = {"train": train_loader}
    for name in ("validation", "test"):
        loaders[name] = evaluation_loader(datasets[name], batch_size, trim)
    return loaders


def evaluation_loader(dataset: SpamDataset, batch_size: int = 8, trim: bool = False) -> DataLoader:
    """Return a loader over every message of a dataset, in order (see create_data_loaders)."""
    return DataLoader(dataset, batch_size=batch_size, collate_fn=trim_padding if trim else None)


def trim_padding(batch, pad_token_id: int = PAD_TOKEN_ID):
    """Collate a batch and cut the padding columns that no message in it needs."""
    inputs, labels = default_collate(batch)
    longest = int((inputs != pad_token_id).sum(dim=1).max().clamp(min=1))
    return inputs[:, :longest], labels
