"""From loaded messages to the chapter's three CSV files: balance, encode, split, write."""

import contextlib
import json
from pathlib import Path

import pandas as pd

from gptclassifier.data import (
    LabeledData,
    create_balanced_dataset,
    encode_labels,
    random_split,
)
from gptclassifier.download import atomic_writer
from gptclassifier.errors import DataError

SPLIT_NAMES = ("train", "validation", "test")
METADATA_FILE = "dataset.json"


def prepare_splits(
    data: LabeledData, train_frac: float = 0.7, validation_frac: float = 0.1, seed: int = 123
) -> dict[str, pd.DataFrame]:
    """Balance the classes, encode labels as indices and split, as section 6.2 of the chapter."""
    try:
        balanced = encode_labels(create_balanced_dataset(data.frame, seed), data.classes)
        parts = random_split(balanced, train_frac, validation_frac, seed)
    except DataError as exc:
        raise DataError(f"{data.provenance.path}: {exc}") from None
    return dict(zip(SPLIT_NAMES, parts, strict=True))


def count_labels(splits: dict[str, pd.DataFrame], classes: tuple[str, ...]) -> pd.DataFrame:
    """Return a table of rows per class (columns) for each split (rows)."""
    counts = {
        name: frame["Label"].value_counts().reindex(range(len(classes)), fill_value=0)
        for name, frame in splits.items()
    }
    table = pd.DataFrame(counts).T.set_axis(list(classes), axis=1)
    return table.assign(total=table.sum(axis=1))


def write_splits(
    splits: dict[str, pd.DataFrame], data: LabeledData, out_dir: Path, **settings
) -> list[Path]:
    """Write `<split>.csv` (columns Label,Text) and dataset.json, renamed into place together."""
    out_dir = Path(out_dir)
    metadata = {
        "classes": list(data.classes),
        "counts": count_labels(splits, data.classes).to_dict(orient="index"),
        "provenance": data.provenance.as_dict(),
        **settings,
    }
    contents = {f"{name}.csv": frame.to_csv(index=False) for name, frame in splits.items()}
    contents[METADATA_FILE] = json.dumps(metadata, indent=2, ensure_ascii=False) + "\n"
    with contextlib.ExitStack() as stack:
        for name, text in contents.items():
            stack.enter_context(atomic_writer(out_dir / name)).write(text.encode("utf-8"))
    return [out_dir / name for name in contents]
