"""Files on disk: the cache folder, hashes, atomic writes, output folders' locks, JSON, zips."""

import contextlib
import functools
import hashlib
import inspect
import itertools
import json
import os
import shlex
import sys
import tempfile
import zipfile
from pathlib import Path

import platformdirs

from gptclassifier.errors import DataError, GptClassifierError

try:
    import fcntl
except ImportError:  # Windows: no flock, so output folders are not locked there
    fcntl = None

CHUNK_BYTES = 1 << 16
MAX_MEMBER_BYTES = 64 * 1024 * 1024
# The lock files this process holds: taking one again inside is a no-op, since flock would
# refuse a second descriptor of the same process.
_held: set[Path] = set()


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


class FolderBusyError(GptClassifierError):
    """An output folder that another gptclassifier process is writing."""


def lock_file(out_dir: Path) -> Path:
    """Return the lock file of an output folder: `.<name>.lock` beside it."""
    out_dir = Path(out_dir).resolve()
    return out_dir.with_name(f".{out_dir.name}.lock")


@contextlib.contextmanager
def output_lock(out_dir: Path):
    """Hold the lock on `out_dir` for the block; refuse at once if another process holds it.

    The lock file names its owner's pid and command line, so that a refusal can name them;
    the operating system frees the lock when its owner ends, even by a crash.
    """
    lock = lock_file(out_dir)
    if fcntl is None or lock in _held:
        yield
        return
    created = list(itertools.takewhile(lambda folder: not folder.exists(), lock.parents))
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # name the output, as writing it would
        why = f"its folder cannot be made ({exc.filename}: {exc.strerror})"
        raise OSError(exc.errno, why, str(out_dir)) from None
    descriptor = _acquire(lock, out_dir)
    _held.add(lock)
    try:
        yield
    finally:
        _held.discard(lock)
        lock.unlink(missing_ok=True)  # while locked: a process that opened it sees it is gone
        os.close(descriptor)
        for folder in created:  # the parents made for the lock, where nothing else was written
            with contextlib.suppress(OSError):
                folder.rmdir()


def refuse_if_busy(out_dir: Path) -> None:
    """Raise a FolderBusyError when another process holds the lock on `out_dir`."""
    with output_lock(out_dir):
        pass


def locks_out_dir(function):
    """Decorate a function so that it holds the lock on its `out_dir` argument while it runs."""
    signature = inspect.signature(function)

    @functools.wraps(function)
    def locked(*args, **kwargs):
        with output_lock(signature.bind(*args, **kwargs).arguments["out_dir"]):
            return function(*args, **kwargs)

    return locked


def _acquire(lock: Path, out_dir: Path) -> int:
    """Return a descriptor of `lock`, locked and naming this process, or raise FolderBusyError."""
    while True:
        descriptor = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(descriptor, 1024).decode("utf-8", "replace").strip()
            os.close(descriptor)
            by = f" ({owner})" if owner else ""
            raise FolderBusyError(
                f"{out_dir} is being written by another gptclassifier process{by}: "
                "wait for it to finish, or choose another folder"
            ) from None
        if _is_current(descriptor, lock):
            os.ftruncate(descriptor, 0)  # a crashed owner's line may still be there
            os.write(descriptor, f"pid {os.getpid()}: {_command_line()}\n".encode())
            return descriptor
        os.close(descriptor)  # its owner removed it as we opened it: lock the file there now


def _is_current(descriptor: int, lock: Path) -> bool:
    """Return whether an open descriptor is still the file at the path `lock`."""
    try:
        found = os.stat(lock)
    except FileNotFoundError:
        return False
    opened = os.fstat(descriptor)
    return (found.st_dev, found.st_ino) == (opened.st_dev, opened.st_ino)


def _command_line() -> str:
    """Return this process's command line on one line, as a person would type it."""
    program = Path(sys.argv[0])
    name = program.parent.name if program.name == "__main__.py" else program.name
    return " ".join(shlex.join([name, *sys.argv[1:]]).split())[:300]
