"""The project's own files agree: pyproject.toml, environment.yml, the Makefile and CI."""

import re
import subprocess
import tomllib
from pathlib import Path

from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
CONDA_NAMES = {"torch": "pytorch"}  # where conda-forge names a package differently


def requirement_bounds(requirements):
    """Return {name: lower bound} for requirements written as `name>=version`."""
    return dict(re.fullmatch(r"([\w.-]+)>=([\w.]+)", line).groups() for line in requirements)


def every_requirement() -> list[str]:
    """Return the requirements of pyproject.toml: the dependencies and those of every extra."""
    extras = PROJECT["optional-dependencies"].values()
    return PROJECT["dependencies"] + [requirement for extra in extras for requirement in extra]


def environment_entries():
    """Return the dependency lines of environment.yml as (entry, comment) pairs."""
    entries = []
    for line in (ROOT / "environment.yml").read_text().splitlines():
        match = re.fullmatch(r"\s+- ([^#]+?)\s*(?:#\s*(.*))?", line)
        if match:
            entries.append(match.groups())
    return entries


def test_a_package_that_several_extras_need_has_one_floor():
    floors = {}
    for requirement in every_requirement():
        name, bound = requirement_bounds([requirement]).popitem()
        floors.setdefault(name, set()).add(bound)
    assert {name: bounds for name, bounds in floors.items() if len(bounds) > 1} == {}


def test_environment_yml_has_every_dependency_with_the_same_bound():
    bounds = {
        CONDA_NAMES.get(name, name): bound
        for name, bound in requirement_bounds(every_requirement()).items()
    }
    entries = dict(entry.split(">=") for entry, _ in environment_entries() if ">=" in entry)
    assert entries == {name: bound for name, bound in bounds.items() if name != "pytorch"}


def test_torch_has_one_pin_that_meets_the_floor():
    makefile_pin = re.search(r"^TORCH \?= torch==(\S+)$", (ROOT / "Makefile").read_text(), re.M)
    pins = [entry for entry, _ in environment_entries() if entry.startswith("pytorch")]
    assert pins == [f"pytorch={makefile_pin.group(1)}"]
    floor = requirement_bounds(PROJECT["dependencies"])["torch"]
    assert Version(makefile_pin.group(1)) >= Version(floor)
    assert f"`torch=={makefile_pin.group(1)}`" in (ROOT / "README.md").read_text()


def test_environment_yml_pins_python_and_comments_every_line():
    entries = environment_entries()
    assert ("conda-forge", entries[0][1]) == entries[0] and len(entries[0][1]) > 10
    assert any(re.fullmatch(r"python=3\.\d+", entry) for entry, _ in entries)
    assert ("-e .", entries[-1][1]) == entries[-1]
    uncommented = [entry for entry, comment in entries if not comment and entry != "pip:"]
    assert uncommented == []


def test_make_help_is_the_default_and_lists_every_target():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.search(r"^\.PHONY: (.+)$", makefile, re.M).group(1).split())
    assert {"setup", "lab", "train", "test", "lint", "clean"} <= targets
    shown = subprocess.run(
        ["make", "--no-print-directory"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    listed = set(re.findall(r"^  make (\S+)", shown, re.M))
    assert listed == targets


def test_ci_runs_the_readmes_test_command():
    assert "make test" in (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M)
    assert re.search(r"^make lint$", ci, re.M)
    assert "GPTCLASSIFIER_TEST_SMS_FILE" in ci
    assert "GPTCLASSIFIER_BROWSER" in ci  # the browser test runs in CI, never skipped


def test_make_lab_starts_the_command_the_browser_test_starts():
    shown = subprocess.run(
        ["make", "-n", "lab"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert re.search(r"^\S*python -m gptclassifier\.lessons\.lab\b", shown, re.M)
