"""The chapter's split: balance the classes, encode the labels, cut 70/10/20, write the CSVs."""

import contextlib
import json
from pathlib import Path

import pandas as pd

from gptclassifier.data.sms import SMS_CLASSES, LabeledData, class_names
from gptclassifier.errors import DataError
from gptclassifier.files import atomic_writer
from gptclassifier.locks import locks_out_dir

SPLIT_NAMES = ("train", "validation", "test")
METADATA_FILE = "dataset.json"


def create_balanced_dataset(df: pd.DataFrame, seed: int = 123) -> pd.DataFrame:
    """Undersample every class to the size of the smallest, as the chapter does for ham.

    Classes come in label order; a class already of the smallest size is kept as it is, so for
    ham and spam this is exactly the chapter's frame: 747 sampled ham, then all 747 spam.
    """
    counts = df["Label"].value_counts()
    if len(counts) < 2:
        found = ", ".join(map(repr, counts.index.astype(str))) or "none"
        raise DataError(f"balancing needs at least two classes, found {len(counts)}: {found}")
    smallest = counts.min()
    parts = []
    for label in class_names(df):
        rows = df[df["Label"].astype(str) == label]
        parts.append(rows if len(rows) == smallest else rows.sample(smallest, random_state=seed))
    return pd.concat(parts)


def encode_labels(df: pd.DataFrame, classes: tuple[str, ...] = SMS_CLASSES) -> pd.DataFrame:
    """Return a copy whose `Label` holds class indices; labels already encoded pass through.

    The chapter's `.map({"ham": 0, "spam": 1})` turns every label into NaN when run twice;
    this is safe to run any number of times.
    """
    index = {name: number for number, name in enumerate(classes)}

    def encode(label):
        if isinstance(label, str):
            if label not in index:
                raise DataError(f"label {label!r} is not one of {', '.join(classes)}")
            return index[label]
        if label in range(len(classes)):
            return int(label)
        raise DataError(f"label {label!r} is neither a class name nor a class index")

    return df.assign(Label=df["Label"].map(encode).astype("int64"))


def random_split(
    df: pd.DataFrame, train_frac: float, validation_frac: float, seed: int = 123
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Shuffle with `seed` and cut into train, validation and test, as the chapter does."""
    if not (train_frac > 0 and validation_frac > 0 and train_frac + validation_frac < 1):
        raise DataError(
            f"fractions train={train_frac}, validation={validation_frac} must be positive "
            "and leave room for a test set"
        )
    shuffled = df.sample(frac=1, random_state=seed).reset_index(drop=True)
    train_end = int(len(shuffled) * train_frac)
    validation_end = train_end + int(len(shuffled) * validation_frac)
    splits = shuffled[:train_end], shuffled[train_end:validation_end], shuffled[validation_end:]
    if any(len(split) == 0 for split in splits):
        raise DataError(
            f"{len(df)} rows are too few to split {train_frac}/{validation_frac}/rest "
            "with every part non-empty"
        )
    return splits


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


@locks_out_dir
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
