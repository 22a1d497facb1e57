"""Runs that fit before they start: the memory a run needs, and a full disk named by its folder."""

import contextlib
import errno
import os
from dataclasses import replace

import pytest
import torch

from gptclassifier import fine_tune as fine_tuning
from gptclassifier.cli import main
from gptclassifier.data import splits as splitting
from gptclassifier.errors import ConfigError
from gptclassifier.files import atomic_writer
from gptclassifier.fine_tune import fine_tune, training_workload
from gptclassifier.settings import train_settings
from gptclassifier.training import estimate as estimates
from gptclassifier.training.estimate import GB, HEADROOM, estimate_run

SMOKE = train_settings("smoke", num_epochs=1)
CPU = torch.device("cpu")
FULL_DISK = os.strerror(errno.ENOSPC)  # "No space left on device"


def must_not_build(*args, **kwargs):
    raise AssertionError("the model was built")


@pytest.mark.parametrize(
    ("changes", "available", "remedy"),
    [
        ({"model": "gpt2-xl"}, 4, "a smaller --model"),  # its weights are the largest part
        ({"model": "gpt2-xl", "trainable": "all"}, 16, "fewer trainable layers"),  # AdamW's state
    ],
)
def test_a_run_that_cannot_fit_is_refused_before_the_model_is_built(
    smoke_data, tmp_path, monkeypatch, changes, available, remedy
):
    monkeypatch.setattr(fine_tuning, "available_memory", lambda device: available * GB)
    monkeypatch.setattr(fine_tuning, "build_classifier", must_not_build)
    settings = replace(SMOKE, **changes)
    estimate = estimate_run(settings, training_workload(smoke_data, settings), 2, CPU)
    lines = []
    with pytest.raises(ConfigError) as refusal:
        fine_tune(smoke_data, settings, tmp_path / "run", "smoke", log=lines.append, device="cpu")
    message = str(refusal.value)
    assert message.startswith(
        f"this run needs about {estimate.peak_bytes / GB:.1f} GB of memory at its peak and this "
        f"machine has {available:.1f} GB available: choose {remedy}"
    )
    assert "\n" not in message and estimate.peak_bytes > HEADROOM * available * GB
    assert not lines and not list(tmp_path.glob("*run*"))  # nothing logged, nothing written


class Built(Exception):
    """Raised where the model would be built: the run got past the memory check."""


def log_until_built(smoke_data, tmp_path, monkeypatch) -> list[str]:
    """Start a smoke run on the CPU up to building the model; return the lines it logged."""

    def built(*args, **kwargs):
        raise Built

    monkeypatch.setattr(fine_tuning, "build_classifier", built)
    lines = []
    with pytest.raises(Built):
        fine_tune(smoke_data, SMOKE, tmp_path / "run", log=lines.append, device="cpu")
    return lines


def test_a_run_that_fits_logs_its_estimate_before_the_model_is_built(
    smoke_data, tmp_path, monkeypatch
):
    monkeypatch.setattr(fine_tuning, "available_memory", lambda device: 64 * GB)
    lines = log_until_built(smoke_data, tmp_path, monkeypatch)
    estimate = estimate_run(SMOKE, training_workload(smoke_data, SMOKE), 2, CPU)
    assert lines == [
        f"estimate: about {estimate.minutes:.1f} minutes and {estimate.peak_bytes / GB:.1f} GB "
        "of memory at its peak of 64.0 GB available"
    ]


def test_where_the_memory_is_unknown_the_run_goes_on(smoke_data, tmp_path, monkeypatch):
    monkeypatch.setattr(fine_tuning, "available_memory", lambda device: None)
    [line] = log_until_built(smoke_data, tmp_path, monkeypatch)
    assert line.startswith("estimate: about ") and line.endswith(" GB of memory at its peak")


def test_a_silent_run_skips_the_speed_probe(smoke_data, tmp_path, monkeypatch):
    def no_probe(*args):
        raise AssertionError("the speed was measured")

    monkeypatch.setattr(estimates, "matmul_gflops", no_probe)
    monkeypatch.setattr(fine_tuning, "build_classifier", must_not_build)
    with pytest.raises(AssertionError, match="the model was built"):
        fine_tune(smoke_data, SMOKE, tmp_path / "run", device="cpu")


@contextlib.contextmanager
def full_disk_writer(path):
    """Open a file atomically, as atomic_writer does, then fail as a full disk does: no name."""
    with atomic_writer(path):
        raise OSError(errno.ENOSPC, FULL_DISK)
    yield  # never reached: the context manager's generator shape


@pytest.mark.parametrize(
    "command",
    [
        ["prepare", "--profile", "smoke"],
        pytest.param(
            ["train", "--profile", "smoke", "--epochs", "1", "--no-progress"],  # the run's data/
            marks=pytest.mark.slow,  # a whole run, saved
        ),
    ],
)
def test_a_full_disk_names_the_output_folder_and_leaves_nothing_half_written(
    tmp_path, monkeypatch, capsys, command
):
    monkeypatch.setattr(splitting, "atomic_writer", full_disk_writer)
    out = tmp_path / "out" / "run"
    assert main([*command, "--out", str(out), "-q"]) == 1
    error = capsys.readouterr().err
    assert error == f"gptclassifier: error: {out}: {FULL_DISK}\n"
    assert not [path for path in (tmp_path / "out").rglob("*") if path.is_file()]


def test_an_error_that_names_its_file_keeps_that_name(tmp_path, monkeypatch, capsys):
    @contextlib.contextmanager
    def refused(path):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        yield  # never reached

    monkeypatch.setattr(splitting, "atomic_writer", refused)
    out = tmp_path / "splits"
    assert main(["prepare", "--profile", "smoke", "--out", str(out), "-q"]) == 1
    error = capsys.readouterr().err
    assert error == f"gptclassifier: error: {out / 'train.csv'}: {os.strerror(errno.EACCES)}\n"
