"""The command that `make lab` and the browser test run: JupyterLab on the lessons, locally."""

import os
import sys

from gptclassifier.lessons import lab
from gptclassifier.lessons.lab import FIRST_LESSON, lab_command


def test_lab_command_serves_the_lessons_on_this_machine_only_and_opens_the_first():
    command = lab_command("lessons", "--no-browser")
    assert command[:3] == [sys.executable, "-m", "jupyterlab"]
    assert "--ServerApp.root_dir=lessons" in command
    assert "--ServerApp.ip=127.0.0.1" in command
    assert f"--LabApp.default_url=/lab/tree/{FIRST_LESSON}" in command
    assert command[-1] == "--no-browser"  # the caller's options come last
    assert ("--allow-root" in command) == (hasattr(os, "geteuid") and os.geteuid() == 0)


def test_main_runs_jupyterlab_on_the_notebooks_with_the_arguments_given(monkeypatch):
    started = []
    monkeypatch.setattr(lab.os, "execv", lambda path, args: started.append((path, args)))
    monkeypatch.setattr(lab.sys, "argv", ["lab", "--port=9999"])
    lab.main()
    assert started == [(sys.executable, lab_command("notebooks", "--port=9999"))]
