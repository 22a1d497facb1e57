"""The command that opens the lessons in JupyterLab, shared by `make lab` and the browser test."""

import os
import sys
from pathlib import Path

FIRST_LESSON = "01_the_data.ipynb"


def lab_command(notebooks: Path | str = "notebooks", *options: str) -> list[str]:
    """Return the command that serves the lessons on this machine only and opens the first one."""
    return [
        sys.executable,
        "-m",
        "jupyterlab",
        f"--ServerApp.root_dir={notebooks}",
        "--ServerApp.ip=127.0.0.1",
        f"--LabApp.default_url=/lab/tree/{FIRST_LESSON}",
        *_root_option(),
        *options,
    ]


def _root_option() -> list[str]:
    """Let JupyterLab start as root, as containers and CI machines often run, which it refuses."""
    return ["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []


def main() -> None:
    """Start JupyterLab on the lessons; any arguments go to JupyterLab as extra options."""
    command = lab_command("notebooks", *sys.argv[1:])
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
