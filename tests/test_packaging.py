"""The package as users get it: a wheel and an sdist that build, and a wheel that runs on its own.

These tests build with `python -m build` and install into a fresh virtual environment, so they
need the package registry (PyPI), as `make setup` does.
"""

import re
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.version import Version

# `python -m build` and pip fetch from the package index; the build alone takes over 3 s.
pytestmark = [pytest.mark.network, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def torch_pin() -> str:
    """Return the torch requirement that `make setup` installs: the one pin of the project."""
    return re.search(r"^TORCH \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M).group(1)


def floor_of(name: str) -> str:
    """Return the lower bound that pyproject.toml declares for a dependency."""
    bounds = dict(requirement.split(">=") for requirement in PROJECT["dependencies"])
    return bounds[name]


def run(*command, **options) -> subprocess.CompletedProcess:
    """Run a command; on failure, fail the test with its output."""
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, **options)
    if done.returncode:
        pytest.fail(f"{' '.join(map(str, command))} failed:\n{done.stdout}\n{done.stderr}")
    return done


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """Build the sdist, and the wheel from it, as a release would; return their folder."""
    out = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "build", "--outdir", str(out), str(ROOT))
    return out


def only(folder: Path, pattern: str) -> Path:
    """Return the one file in `folder` that matches `pattern`."""
    (found,) = folder.glob(pattern)
    return found


def test_the_sdist_holds_the_license_the_sources_and_no_data(dist):
    with tarfile.open(only(dist, "gptclassifier-*.tar.gz")) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    assert {"LICENSE", "README.md", "pyproject.toml", "src/gptclassifier/cli.py"} <= names
    assert not any("SMSSpamCollection" in name or name.endswith(".safetensors") for name in names)


def test_the_wheel_declares_the_license_and_the_dependencies(dist):
    with zipfile.ZipFile(only(dist, "gptclassifier-*.whl")) as wheel:
        names = wheel.namelist()
        metadata = Parser().parsestr(
            wheel.read(next(name for name in names if name.endswith(".dist-info/METADATA")))
            .decode()
        )  # fmt: skip
    assert metadata["License-Expression"] == "MIT"
    assert metadata.get_all("License-File") == ["LICENSE"]
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)
    required = {re.split(r"[ ;]", line)[0] for line in metadata.get_all("Requires-Dist")}
    assert set(PROJECT["dependencies"]) <= required
    lab = {
        line.split(";")[0].strip()
        for line in metadata.get_all("Requires-Dist")
        if re.search(r"extra == .lab.", line)
    }
    assert lab == set(PROJECT["optional-dependencies"]["lab"])
    assert not any(
        name.startswith(("ipywidgets", "jupyterlab")) for name in PROJECT["dependencies"]
    )
    assert "gptclassifier/cli.py" in names


def test_the_wheel_installs_alone_and_trains(dist, tmp_path):
    env = tmp_path / "env"
    run(sys.executable, "-m", "venv", str(env))
    pip = [str(env / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    run(*pip, "--disable-pip-version-check", torch_pin())
    # The lowest tiktoken allowed: it must read the packaged vocabulary files by itself.
    tiktoken = f"tiktoken=={floor_of('tiktoken')}"
    run(*pip, "--disable-pip-version-check", tiktoken, str(only(dist, "gptclassifier-*.whl")))
    command = str(env / "bin" / "gptclassifier")
    assert "train" in run(command, "--help", cwd=tmp_path).stdout
    settings = {"GPTCLASSIFIER_CACHE": str(tmp_path / "cache"), "HF_HOME": str(tmp_path / "hf")}
    trained = run(
        command, "train", "--profile", "smoke", "--out", "run", "--no-progress",
        cwd=tmp_path, env={"PATH": "/usr/bin:/bin", **settings},
    )  # fmt: skip
    assert "Test accuracy" in trained.stdout
    assert (tmp_path / "run" / "config.json").is_file()
    imported = run(
        str(env / "bin" / "python"), "-c",
        "import gptclassifier, tiktoken; print(gptclassifier.__file__, tiktoken.__version__)",
        cwd=tmp_path,
    ).stdout.split()  # fmt: skip
    site = (
        env / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    )
    assert imported[0] == str(site / "gptclassifier" / "__init__.py")
    assert Version(imported[1]) == Version(floor_of("tiktoken"))
