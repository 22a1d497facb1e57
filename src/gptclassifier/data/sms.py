"""The SMS Spam Collection and other labeled tables: download, parse, and where they came from."""

import hashlib
import io
import os
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from gptclassifier.data.practice_set import practice_file
from gptclassifier.download import download_file
from gptclassifier.errors import DataError, DownloadError, check_choice, strict_mode, warn_fallback
from gptclassifier.files import cache_dir, read_zip_member, sha256_of, write_atomically
from gptclassifier.settings import PARSINGS, get_profile

SMS_ARCHIVE_URLS = (
    "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip",
    "https://f001.backblazeb2.com/file/LLMs-from-scratch/sms%2Bspam%2Bcollection.zip",
    "https://archive.ics.uci.edu/ml/machine-learning-databases/00228/smsspamcollection.zip",
)
SMS_ARCHIVE_SHA256 = "1587ea43e58e82b14ff1f5425c88e17f8496bfcdb67a583dbff9eefaf9963ce3"
SMS_FILE_SHA256 = "7d039a24a6083ed9ef0f806ebad56bbb976e3aeb8de05669173bfdc4996c239d"
SMS_MEMBER = "SMSSpamCollection"
SMS_CLASSES = ("ham", "spam")
SMS_FILE_VARIABLE = "GPTCLASSIFIER_SMS_FILE"


@dataclass(frozen=True)
class Provenance:
    """Where a data set came from: `uci` (verified download), `local` file, or `practice` set."""

    source: str
    path: str
    sha256: str
    note: str = ""

    def as_dict(self) -> dict:
        """Return the provenance as a JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True)
class LabeledData:
    """Messages (columns `Label`, `Text`), their class names in label order, and provenance."""

    frame: pd.DataFrame
    classes: tuple[str, ...]
    provenance: Provenance


def sms_cache_path() -> Path:
    """Return where the downloaded SMS data file is cached."""
    return cache_dir() / "sms-spam-collection" / SMS_MEMBER


def download_sms_spam(
    dest: Path | None = None,
    urls: tuple[str, ...] = SMS_ARCHIVE_URLS,
    archive_sha256: str | None = SMS_ARCHIVE_SHA256,
    file_sha256: str | None = SMS_FILE_SHA256,
    **download_options,
) -> Path:
    """Return the cached SMS data file, downloading the UCI archive and extracting it once."""
    dest = Path(dest) if dest else sms_cache_path()
    if dest.exists() and (file_sha256 is None or sha256_of(dest) == file_sha256):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        archive = download_file(
            urls, Path(tmp) / "sms+spam+collection.zip", archive_sha256, **download_options
        )
        data = read_zip_member(archive, SMS_MEMBER)
    if file_sha256 and hashlib.sha256(data).hexdigest() != file_sha256:
        raise DownloadError(f"{SMS_MEMBER} in the downloaded archive has an unexpected SHA-256")
    write_atomically(dest, data)
    return dest


def read_sms_spam(path: Path, parsing: str = "exact") -> pd.DataFrame:
    """Read the SMS Spam Collection (data file or UCI zip) into columns `Label` and `Text`.

    `exact` keeps every line as one message (5,574). `book` reproduces the chapter's
    `pd.read_csv(sep="\\t", header=None)`, whose quote handling merges a few lines (5,572).
    Both refuse a file with a line that is not a label, a tab and a message.
    """
    path = Path(path)
    check_choice("parsing", parsing, PARSINGS)
    raw = _read_bytes(path)
    exact = _parse_exact(raw, path)
    if parsing == "exact":
        return exact
    frame = _parse_like_book(raw, path)
    unknown = frame.loc[~frame["Label"].isin(SMS_CLASSES), "Label"]
    if len(unknown):
        raise DataError(
            f"{path}: row {unknown.index[0] + 1} has label {unknown.iloc[0]!r}, "
            f"expected {' or '.join(SMS_CLASSES)}"
        )
    return frame


def _read_bytes(path: Path) -> bytes:
    """Return a data file's bytes, taking the data member out of a zip archive."""
    _require_file(path)
    if zipfile.is_zipfile(path):
        return read_zip_member(path, SMS_MEMBER)
    return path.read_bytes()


def _require_file(path: Path) -> None:
    """Raise a DataError unless `path` is an existing file."""
    if path.is_dir():
        raise DataError(f"{path} is a folder: give the data file or its zip archive")
    if not path.is_file():
        raise DataError(f"{path}: no such file")


def _parse_exact(raw: bytes, path: Path) -> pd.DataFrame:
    """Split every line at its first tab into a label and a message."""
    lines = _decode(raw, path).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    labels, texts = [], []
    for number, line in enumerate(lines, start=1):
        label, tab, message = line.removesuffix("\r").partition("\t")
        if not tab:
            problem = "is blank" if not line.strip() else f"has no tab: {line[:40]!r}"
            raise DataError(f"{path}: line {number} {problem}")
        if label not in SMS_CLASSES:
            raise DataError(
                f"{path}: line {number} has label {label[:40]!r}, "
                f"expected {' or '.join(SMS_CLASSES)}"
            )
        labels.append(label)
        texts.append(message)
    if not labels:
        raise DataError(f"{path}: the file holds no messages")
    return pd.DataFrame({"Label": labels, "Text": texts})


def _decode(raw: bytes, path: Path) -> str:
    """Return a file's text without a byte-order mark; name the line of any byte not UTF-8."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{path}: line {line} is not valid UTF-8 (byte 0x{raw[exc.start]:02x})"
        ) from None


def _parse_like_book(raw: bytes, path: Path) -> pd.DataFrame:
    """Parse exactly as the chapter does, quote handling included."""
    try:
        return pd.read_csv(io.BytesIO(raw), sep="\t", header=None, names=["Label", "Text"])
    except (ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: pandas cannot parse it ({str(exc).strip()})") from None


def read_labeled_table(
    path: Path, text_column: str = "Text", label_column: str = "Label"
) -> pd.DataFrame:
    """Read a user's table with a header row into columns `Label` (text) and `Text`."""
    path = Path(path)
    _require_file(path)
    text = _decode(path.read_bytes(), path)
    separator = _separator(text.partition("\n")[0])
    try:
        table = pd.read_csv(io.StringIO(text), sep=separator, dtype=str, keep_default_na=False)
    except (ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: cannot read it as a table ({str(exc).strip()})") from None
    missing = [name for name in (text_column, label_column) if name not in table.columns]
    if missing:
        raise DataError(
            f"{path}: no column named {missing[0]!r} "
            f"(columns: {', '.join(map(str, table.columns))})"
        )
    blank = table.index[table[label_column].str.strip() == ""]
    if len(blank):
        raise DataError(f"{path}: data row {blank[0] + 1} has no label")
    return pd.DataFrame({"Label": table[label_column], "Text": table[text_column]})


def _separator(header: str) -> str:
    """Return the separator a header line shows: a tab if it holds one, else a comma."""
    return "\t" if "\t" in header else ","


def _data_format(path: Path, text_column: str, label_column: str) -> str:
    """Return `sms` for the SMS Spam Collection format or its zip, `table` for a header row."""
    _require_file(path)
    if zipfile.is_zipfile(path):
        return "sms"
    line = _first_line(path)
    if line is None:
        raise DataError(f"{path}: the file holds no messages")
    label, tab, _ = line.partition("\t")
    if tab and label in SMS_CLASSES:
        return "sms"
    header = [name.strip('"') for name in line.split(_separator(line))]
    if text_column in header or label_column in header:
        return "table"
    raise DataError(
        f"{path}: line 1 is neither an SMS Spam Collection line ({' or '.join(SMS_CLASSES)}, "
        f"a tab, the message) nor a header row naming the {text_column!r} and "
        f"{label_column!r} columns: {line[:40]!r}"
    )


def _first_line(path: Path) -> str | None:
    """Return a file's first line, decoded leniently, or None if the file is only whitespace."""
    with path.open("rb") as file:
        line = file.readline().decode("utf-8-sig", errors="replace")
        if not line.strip() and not file.read().strip():
            return None
    return line.rstrip("\r\n")


def class_names(frame: pd.DataFrame) -> tuple[str, ...]:
    """Return the distinct labels in label order: numerically if all are integers, else sorted."""
    names = frame["Label"].astype(str).unique().tolist()
    if all(name.lstrip("-").isdigit() for name in names):
        return tuple(sorted(names, key=int))
    return tuple(sorted(names))


def load_data(
    data: Path | str | None = None,
    parsing: str = "book",
    profile: str | None = None,
    text_column: str = "Text",
    label_column: str = "Label",
) -> LabeledData:
    """Load the messages a run asks for, with their provenance.

    `data` wins; otherwise the `smoke` profile reads the practice set and the `book` profile
    reads $GPTCLASSIFIER_SMS_FILE or the cached or downloaded SMS Spam Collection, falling back
    to the practice set with a warning when the download fails (an error instead under
    $GPTCLASSIFIER_STRICT). A file is read by its content, whatever its name: lines of `ham` or
    `spam`, a tab and the message (or a UCI zip) are the SMS Spam Collection, parsed as
    `parsing` says (`book`, the chapter's 5,572 messages, by default); a header row naming
    `text_column` or `label_column` makes it a tab- or comma-separated table.
    """
    settings = get_profile(profile)
    if data is None and settings.data == "sms":
        data = os.environ.get(SMS_FILE_VARIABLE) or None
    if data is not None:
        path = Path(data).expanduser()
        if _data_format(path, text_column, label_column) == "table":
            frame = read_labeled_table(path, text_column, label_column)
            return LabeledData(frame, class_names(frame), _provenance("local", path))
        return _sms_data(path, parsing, "local")
    if settings.data == "practice":
        return _sms_data(practice_file(), parsing, "practice")
    try:
        return _sms_data(download_sms_spam(), parsing, "uci")
    except DownloadError as exc:
        if strict_mode():
            raise DownloadError(f"{exc}. {_HOW_TO_SUPPLY}") from None
        warn_fallback(
            "USING THE PRACTICE DATA SET, NOT THE SMS SPAM COLLECTION.", str(exc), _HOW_TO_SUPPLY
        )
        return _sms_data(practice_file(), parsing, "practice", note=f"fallback: {exc}")


_HOW_TO_SUPPLY = (
    f"Download {SMS_ARCHIVE_URLS[0]} on a machine with a network and set "
    f"{SMS_FILE_VARIABLE}=/path/to/sms+spam+collection.zip (or its SMSSpamCollection file), "
    "or pass --data."
)


def _sms_data(path: Path, parsing: str, source: str, note: str = "") -> LabeledData:
    """Read an SMS-format file and record where it came from."""
    frame = read_sms_spam(path, parsing)
    return LabeledData(frame, SMS_CLASSES, _provenance(source, path, note))


def _provenance(source: str, path: Path, note: str = "") -> Provenance:
    """Describe a data file; a local copy of the real collection is recognised by its hash."""
    digest = sha256_of(path)
    if source == "local" and digest in (SMS_FILE_SHA256, SMS_ARCHIVE_SHA256):
        note = note or "the SMS Spam Collection (hash verified)"
    return Provenance(source, str(path.resolve()), digest, note)
