"""Files on disk: the cache folder, hashes, atomic writes, JSON, zips."""

import contextlib
import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path

import platformdirs

from gptclassifier.errors import DataError

CHUNK_BYTES = 1 << 16
MAX_MEMBER_BYTES = 64 * 1024 * 1024


def cache_dir() -> Path:
    """Return the folder that holds downloads: $GPTCLASSIFIER_CACHE or the user's cache folder."""
    override = os.environ.get("GPTCLASSIFIER_CACHE")
    if override:
        return Path(override).expanduser()
    return Path(platformdirs.user_cache_dir("gptclassifier"))


def sha256_of(path: Path) -> str:
    """Return the SHA-256 of a file as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_writer(path: Path):
    """Yield a binary temporary file beside `path`, renamed to `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_name = None
    try:
        with tempfile.NamedTemporaryFile(
            dir=path.parent, prefix=f".{path.name}.", suffix=".part", delete=False
        ) as tmp:
            tmp_name = tmp.name
            yield tmp
        os.replace(tmp_name, path)
    except BaseException:
        if tmp_name:
            Path(tmp_name).unlink(missing_ok=True)
        raise


def write_atomically(path: Path, data: bytes) -> None:
    """Write bytes to `path` so that readers see the old file or the new one, never a part."""
    with atomic_writer(path) as file:
        file.write(data)


def read_zip_member(archive: Path, member: str, max_bytes: int = MAX_MEMBER_BYTES) -> bytes:
    """Return one member of a zip archive, looked up by its exact name, never by a path in it."""
    try:
        with zipfile.ZipFile(archive) as zipped:
            info = zipped.getinfo(member)
            if info.file_size > max_bytes:
                raise DataError(
                    f"{archive}: member {member} is {info.file_size:,} bytes, "
                    f"more than the {max_bytes:,} allowed"
                )
            return zipped.read(info)
    except KeyError:
        raise DataError(f"{archive} has no member named {member}") from None
    except zipfile.BadZipFile as exc:
        raise DataError(f"{archive} is not a readable zip archive ({exc})") from None


def read_json(path: Path) -> dict:
    """Read a UTF-8 JSON file."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_json(path: Path, data: dict) -> None:
    """Write a dict as indented UTF-8 JSON."""
    Path(path).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
