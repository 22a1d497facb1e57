"""One writer per output folder: the lock beside it, refusals naming the owner, nothing replaced."""

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gptclassifier.data.splits import write_splits
from gptclassifier.errors import FolderBusyError, GptClassifierError
from gptclassifier.experiments.grid import run_experiments
from gptclassifier.export import export_run, export_transformers
from gptclassifier.fine_tune import fine_tune
from gptclassifier.locks import lock_file, output_lock
from gptclassifier.runs import run_writer
from gptclassifier.settings import train_settings

# Holds the lock on the folder named by its argument until a line arrives on standard input.
HOLDER = """
import sys
from gptclassifier.locks import output_lock
with output_lock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.readline()
"""
# Runs the command line after its first argument, pausing once at the function that argument
# names (module.function) until a line arrives on standard input.
PAUSED_COMMAND = """
import importlib, sys
from gptclassifier.cli import main
where, name = sys.argv[1].rsplit(".", 1)
module = importlib.import_module(where)
real = getattr(module, name)
def paused(*args, **kwargs):
    setattr(module, name, real)
    print("paused", flush=True)
    sys.stdin.readline()
    return real(*args, **kwargs)
setattr(module, name, paused)
sys.argv = ["gptclassifier", *sys.argv[2:]]
sys.exit(main(sys.argv[1:]))
"""


def started(arguments: list[str], cwd: Path, ready: str) -> subprocess.Popen:
    """Start `python -c ...` in `cwd` and return it once it has printed the line `ready`."""
    process = subprocess.Popen(
        [sys.executable, "-c", *arguments], cwd=cwd, env=smoke_env(cwd), text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    for line in process.stdout:
        if line == f"{ready}\n":
            return process
    raise AssertionError(f"it ended before {ready!r}: {process.communicate()[1]}")


def smoke_env(home: Path) -> dict:
    """Return the environment of a command run with the smoke profile, at home in `home`."""
    return {"GPTCLASSIFIER_PROFILE": "smoke", "PATH": "/usr/bin:/bin", "HOME": str(home)}


def gptclassifier(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run the command line `gptclassifier *args` in `cwd` and return what it did."""
    command = [sys.executable, "-m", "gptclassifier", *args]
    return subprocess.run(command, cwd=cwd, env=smoke_env(cwd), capture_output=True, text=True)


def resumed(process: subprocess.Popen) -> tuple[int, str]:
    """Let a paused or holding process go on; return its exit status and standard error."""
    _, err = process.communicate("\n", timeout=120)
    return process.returncode, err


def busy(out, owner: subprocess.Popen, command: str) -> str:
    """Return the refusal of a folder that `owner` is writing, running `command`."""
    return (
        f"{out} is being written by another gptclassifier process (pid {owner.pid}: {command}): "
        "wait for it to finish, or choose another folder"
    )


@pytest.fixture
def holder(tmp_path):
    """Return a function that starts another process holding the lock on a folder."""
    processes = []

    def hold(out: Path) -> subprocess.Popen:
        processes.append(started([HOLDER, str(out)], tmp_path, "locked"))
        return processes[-1]

    yield hold
    for process in processes:
        process.kill()
        process.communicate()


def test_a_second_writer_is_refused_at_once_naming_the_first(tmp_path, holder):
    out = tmp_path / "run"
    other = holder(out)
    assert lock_file(out) == tmp_path / ".run.lock"
    with pytest.raises(FolderBusyError) as refusal, output_lock(out):
        pytest.fail("the lock was taken twice")
    assert str(refusal.value) == busy(out, other, f"-c {out}")
    assert resumed(other) == (0, "")
    assert not lock_file(out).exists()
    with output_lock(out):  # its owner is done with it
        assert lock_file(out).read_text().startswith(f"pid {os.getpid()}: ")


def test_a_killed_owner_leaves_the_lock_free(tmp_path, holder):
    out = tmp_path / "run"
    other = holder(out)
    other.kill()  # SIGKILL: no code of its own runs
    other.wait()
    assert lock_file(out).read_text() == f"pid {other.pid}: -c {out}\n"  # left behind, unlocked
    with output_lock(out):
        assert lock_file(out).read_text().startswith(f"pid {os.getpid()}: ")
    assert not lock_file(out).exists()


def test_the_lock_is_taken_again_inside_its_owner_and_leaves_nothing_behind(tmp_path):
    out = tmp_path / "new" / "deeper" / "run"
    with output_lock(out), output_lock(out):
        assert lock_file(out).is_file()
    assert not (tmp_path / "new").exists()  # the folders made for the lock are gone with it


def test_a_lock_file_removed_as_it_is_locked_is_not_trusted(tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_flock, calls = fcntl.flock, []

    def flock_then_removed(descriptor, operation):
        real_flock(descriptor, operation)
        calls.append(operation)
        if len(calls) == 1:  # as if its owner removed it between our open and our lock
            lock_file(out).unlink()

    monkeypatch.setattr(fcntl, "flock", flock_then_removed)
    with output_lock(out):
        monkeypatch.setattr(fcntl, "flock", real_flock)
        other = subprocess.run(
            [sys.executable, "-c", HOLDER, str(out)], capture_output=True, text=True, input="\n"
        )
        assert other.returncode == 1 and "FolderBusyError" in other.stderr
    assert len(calls) == 2


def test_a_folder_that_appears_meanwhile_is_kept_and_so_is_the_result(tmp_path):
    out = tmp_path / "run"
    refusal = r"run already exists: the new result is kept beside it in .*run\.new-[\d-]+; add "
    with pytest.raises(GptClassifierError, match=refusal), run_writer(out) as staging:
        (staging / "new.txt").write_text("this result")
        out.mkdir()
        (out / "other.txt").write_text("written meanwhile")
    assert [path.name for path in out.iterdir()] == ["other.txt"]
    (kept,) = tmp_path.glob("run.new-*")
    assert (kept / "new.txt").read_text() == "this result"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run", kept.name]


def test_force_replaces_a_folder_that_appears_meanwhile(tmp_path):
    out = tmp_path / "run"
    with run_writer(out, force=True) as staging:
        (staging / "new.txt").write_text("this result")
        out.mkdir()
        (out / "other.txt").write_text("written meanwhile")
    assert [path.name for path in out.iterdir()] == ["new.txt"]
    assert [path.name for path in tmp_path.iterdir()] == ["run"]


@pytest.mark.parametrize(
    "writer", ["fine_tune", "export_run", "export_transformers", "write_splits", "run_experiments"]
)
def test_every_writer_is_refused_before_any_work(
    tmp_path, holder, smoke_data, smoke_splits, writer
):
    out, missing_run = tmp_path / "out", tmp_path / "no-run"  # reading the run would fail
    writes = {
        "fine_tune": lambda: fine_tune(smoke_data, train_settings("smoke"), out, progress=False),
        "export_run": lambda: export_run(missing_run, out),
        "export_transformers": lambda: export_transformers(missing_run, out, progress=False),
        "write_splits": lambda: write_splits(smoke_splits, smoke_data, out),
        "run_experiments": lambda: run_experiments(smoke_data, out, ["majority"], [1], "smoke"),
    }
    other = holder(out)
    with pytest.raises(FolderBusyError, match=f"pid {other.pid}: "):
        writes[writer]()
    assert not out.exists()


def test_a_dry_run_of_the_experiments_is_not_refused(tmp_path, holder, smoke_data):
    holder(tmp_path / "out")
    plan = run_experiments(smoke_data, tmp_path / "out", ["majority"], [1], "smoke", dry_run=True)
    assert plan["experiment"].tolist() == ["majority"]


def test_a_folder_that_cannot_be_made_names_the_output(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    out = tmp_path / "file" / "run"
    with pytest.raises(OSError) as refusal, output_lock(out):
        pass
    assert refusal.value.filename == str(out)
    assert refusal.value.strerror == f"its folder cannot be made ({tmp_path / 'file'}: File exists)"


# --- real commands at once -----------------------------------------------------------------


@pytest.mark.slow
def test_a_second_train_is_refused_while_the_first_runs_and_a_killed_first_frees_it(tmp_path):
    args = ["train", "--out", "run", "--epochs", "1", "--no-progress"]
    first = started([PAUSED_COMMAND, "gptclassifier.fine_tune.train", *args], tmp_path, "paused")
    second = gptclassifier(*args, cwd=tmp_path)
    assert second.returncode == 2
    assert second.stdout == ""  # refused before it read the data
    command = "gptclassifier " + " ".join(args)
    assert second.stderr == f"gptclassifier: error: {busy('run', first, command)}\n"
    first.kill()
    first.communicate()
    third = gptclassifier(*args, cwd=tmp_path)
    assert third.returncode == 0, third.stderr
    assert (tmp_path / "run" / "model.safetensors").is_file()
    assert sorted(path.name for path in tmp_path.iterdir() if "run" in path.name) == ["run"]


@pytest.mark.slow
def test_a_folder_that_appears_during_training_is_not_replaced(tmp_path):
    args = ["train", "--out", "run", "--epochs", "1", "--no-progress"]
    first = started([PAUSED_COMMAND, "gptclassifier.fine_tune.train", *args], tmp_path, "paused")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("written meanwhile")
    status, err = resumed(first)
    (kept,) = tmp_path.glob("run.new-*")
    assert status == 2
    assert err == (
        f"gptclassifier: error: run already exists: the new result is kept beside it in "
        f"{kept.name}; add --force to let it replace run\n"
    )
    assert [path.name for path in (tmp_path / "run").iterdir()] == ["notes.txt"]
    assert (kept / "model.safetensors").is_file() and (kept / "config.json").is_file()


@pytest.mark.slow
def test_two_prepares_at_once(tmp_path):
    first_args = ["prepare", "--out", "prepared", "--seed", "1"]
    at = "gptclassifier.data.splits.count_labels"  # inside write_splits, the lock held
    first = started([PAUSED_COMMAND, at, *first_args], tmp_path, "paused")
    second = gptclassifier("prepare", "--out", "prepared", "--seed", "2", cwd=tmp_path)
    assert second.returncode == 2
    command = "gptclassifier " + " ".join(first_args)
    assert second.stderr == f"gptclassifier: error: {busy('prepared', first, command)}\n"
    assert not (tmp_path / "prepared").exists()
    assert resumed(first) == (0, "")
    assert '"seed": 1' in (tmp_path / "prepared" / "dataset.json").read_text()


@pytest.mark.slow
def test_two_exports_at_once(tmp_path):
    assert gptclassifier("train", "--out", "run", "--epochs", "1", cwd=tmp_path).returncode == 0
    args = ["export", "run", "--to", "exported"]
    at = "gptclassifier.export.save_model"  # inside the run writer, the lock held
    first = started([PAUSED_COMMAND, at, *args], tmp_path, "paused")
    for kind in ("run", "transformers"):  # even --force leaves another command's folder alone
        second = gptclassifier(*args, "--format", kind, "--force", cwd=tmp_path)
        assert second.returncode == 2
        command = "gptclassifier " + " ".join(args)
        assert second.stderr == f"gptclassifier: error: {busy('exported', first, command)}\n"
    status, err = resumed(first)
    assert status == 0, err
    assert (tmp_path / "exported" / "model.safetensors").is_file()
    assert sorted(
        path.name for path in tmp_path.iterdir() if "run" in path.name or "exported" in path.name
    ) == ["exported", "run"]
