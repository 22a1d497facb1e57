"""The package as users get it: a wheel and an sdist that build, and a wheel that runs on its own.

These tests build with `python -m build` and install into a fresh virtual environment, and ask
pip whether the floors of pyproject.toml install together, so they need the package registry
(PyPI), as `make setup` does.
"""

import hashlib
import json
import re
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from email.parser import Parser
from importlib.metadata import requires
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from gptclassifier.model.tokenizer import VOCABULARY_FILES

# `python -m build` and pip fetch from the package index; the build alone takes over 3 s.
pytestmark = [pytest.mark.network, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
VOCABULARY_FOLDER = "gptclassifier/model/gpt2_vocabulary/"


def torch_pin() -> str:
    """Return the torch requirement that `make setup` installs: the one pin of the project."""
    return re.search(r"^TORCH \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M).group(1)


def floors() -> dict[str, str]:
    """Return the lower bound of every requirement of pyproject.toml, extras included."""
    extras = PROJECT["optional-dependencies"].values()
    requirements = PROJECT["dependencies"] + [line for extra in extras for line in extra]
    return dict(requirement.split(">=") for requirement in requirements)


def floor_of(name: str) -> str:
    """Return the lower bound that pyproject.toml declares for a requirement."""
    return floors()[name]


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
    assert metadata.get_all("License-File") == PROJECT["license-files"]
    for license_file in PROJECT["license-files"]:
        assert any(name.endswith(f".dist-info/licenses/{license_file}") for name in names)
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


def test_the_wheel_and_the_sdist_carry_gpt2s_vocabulary(dist):
    with zipfile.ZipFile(only(dist, "gptclassifier-*.whl")) as wheel:
        in_wheel = {name: wheel.read(VOCABULARY_FOLDER + name) for name in VOCABULARY_FILES}
        assert wheel.read(VOCABULARY_FOLDER + "LICENSE").startswith(b"GPT-2's")
    with tarfile.open(only(dist, "gptclassifier-*.tar.gz")) as sdist:
        root = sdist.getnames()[0].split("/")[0]
        in_sdist = {
            name: sdist.extractfile(f"{root}/src/{VOCABULARY_FOLDER}{name}").read()
            for name in VOCABULARY_FILES
        }
    for name, sha256 in VOCABULARY_FILES.items():
        assert hashlib.sha256(in_wheel[name]).hexdigest() == sha256
        assert in_sdist[name] == in_wheel[name]


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
    assert "vocabulary" not in trained.stderr  # the packaged files, not a download
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


def resolve_together(requirements: list[str], report: Path) -> dict:
    """Ask pip whether `requirements` install together here (wheels only); return its report.

    Installed packages may stand in for a requirement they meet, so a torch already installed is
    not fetched again: the index has no separate metadata for torch's Linux wheels, and they come
    with gigabytes of CUDA wheels.
    """
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--only-binary=:all:",
         "--disable-pip-version-check", "--report", str(report), *requirements],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if done.returncode:
        errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
        pytest.fail("pip cannot install them together:\n" + "\n".join(errors or [done.stderr]))
    return json.loads(report.read_text())


def requirements_at_floor(report: dict, names) -> list[tuple[str, Requirement]]:
    """Return (name, requirement) for what the packages `names`, as pip chose them, require.

    A package already installed at its floor is not in pip's report: its metadata is read here.
    """
    planned = {
        canonicalize_name(item["metadata"]["name"]): item["metadata"].get("requires_dist", [])
        for item in report["install"]
    }
    requirements = [
        (name, Requirement(line))
        for name in names
        for line in (planned[name] if name in planned else requires(name) or [])
    ]
    return [
        (name, each)
        for name, each in requirements
        if not each.marker or each.marker.evaluate({"extra": ""})  # extras aside
    ]


@pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="floors are for Python 3.11")
def test_every_floor_installs_with_every_other(tmp_path):
    others = {canonicalize_name(name): floor for name, floor in floors().items() if name != "torch"}
    pins = [f"{name}=={floor}" for name, floor in others.items()]
    report = resolve_together([*pins, torch_pin()], tmp_path / "report.json")
    # torch is resolved at the Makefile's pin; what the others ask of torch must allow its floor.
    for name, requirement in requirements_at_floor(report, others):
        if requirement.name == "torch":
            assert Version(floor_of("torch")) in requirement.specifier, f"{name}: {requirement}"


def test_pip_names_floors_that_conflict(tmp_path):
    # transformers 5.18 asks for safetensors>=0.8: the old floor of 0.4.3 could not go with it.
    with pytest.raises(pytest.fail.Exception, match="safetensors==0.4.3 and transformers==5.18"):
        resolve_together(["safetensors==0.4.3", "transformers==5.18.0"], tmp_path / "report.json")
