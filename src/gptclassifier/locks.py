"""One writer per output folder: a lock beside it, which the system frees when its owner ends."""

import contextlib
import functools
import inspect
import itertools
import os
import shlex
import sys
from pathlib import Path

from gptclassifier.errors import FolderBusyError

try:
    import fcntl
except ImportError:  # Windows: no flock, so output folders are not locked there
    fcntl = None

# The lock files this process holds: taking one again inside is a no-op, since flock would
# refuse a second descriptor of the same process.
_held: set[Path] = set()


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
            try:
                os.ftruncate(descriptor, 0)  # a crashed owner's line may still be there
                os.write(descriptor, f"pid {os.getpid()}: {_command_line()}\n".encode())
            except OSError:  # a full disk: leave no lock file behind
                lock.unlink(missing_ok=True)
                os.close(descriptor)
                raise
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
