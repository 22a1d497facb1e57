"""The package's parts import only the parts below them, as docs/layout.md draws them."""

import ast
from pathlib import Path

import gptclassifier

PACKAGE = Path(gptclassifier.__file__).parent
# Each part of the package (a top-level module or a subpackage), lowest first.
LAYERS = (
    ("__init__", "errors"),
    ("files", "locks", "settings", "progress"),
    ("download", "plots"),
    ("model",),
    ("data", "training"),
    ("runs",),
    ("evaluation", "model_card"),
    ("fine_tune", "export"),
    ("experiments",),
    ("cli", "lessons"),
    ("__main__",),
)
LAYER = {part: height for height, parts in enumerate(LAYERS) for part in parts}


def part_of(module: str) -> str:
    """Return the part a dotted module name belongs to: `gptclassifier.model.gpt` -> `model`."""
    names = module.split(".")
    return names[1] if len(names) > 1 else "__init__"


def imports(path: Path) -> set[str]:
    """Return the gptclassifier modules that a source file imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gptclassifier"):
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("gptclassifier")}
    return found


def test_every_part_has_a_layer():
    parts = {path.stem if path.is_file() else path.name for path in PACKAGE.iterdir()}
    parts -= {"__pycache__"}
    assert parts == set(LAYER)


def upward_imports(package: Path) -> list[str]:
    """Return each import of a part from one at its own height or above it."""
    found = []
    for path in package.rglob("*.py"):
        here = part_of(".".join(path.relative_to(package.parent).with_suffix("").parts))
        for module in imports(path):
            there = part_of(module)
            if there != here and there in LAYER and LAYER[there] >= LAYER[here]:
                found.append(f"{path.relative_to(package)} imports {module}")
    return sorted(found)


def test_no_import_goes_up_or_round():
    assert upward_imports(PACKAGE) == []


def test_an_upward_import_is_found(tmp_path):
    package = tmp_path / "gptclassifier"
    (package / "model").mkdir(parents=True)
    (package / "model" / "gpt.py").write_text("from gptclassifier.fine_tune import fine_tune\n")
    (package / "runs.py").write_text("from gptclassifier.model.gpt import GPTModel\n")
    assert upward_imports(package) == [
        "model/gpt.py imports gptclassifier.fine_tune",
        "model/gpt.py imports gptclassifier.fine_tune.fine_tune",
    ]
