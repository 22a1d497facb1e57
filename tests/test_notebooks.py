"""The lessons as committed: clean runs that show the package's code and never copy it."""

import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LESSONS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
# The chapter's functions: each is shown, from the package, in the lesson that teaches it.
CHAPTER_FUNCTIONS = {
    "create_balanced_dataset",
    "random_split",
    "SpamDataset",
    "add_classification_head",
    "set_trainable",
    "pooled_positions",
    "calc_loss_batch",
    "calc_accuracy_loader",
    "train_classifier_simple",
    "classify_text",
}


def code_cells(lesson: Path) -> list[dict]:
    """Return the lesson's code cells."""
    cells = json.loads(lesson.read_text(encoding="utf-8"))["cells"]
    return [cell for cell in cells if cell["cell_type"] == "code"]


def python_of(cell: dict) -> ast.Module:
    """Parse a cell's source, leaving out IPython's magic lines."""
    lines = "".join(cell["source"]).splitlines()
    return ast.parse("\n".join(line for line in lines if not line.lstrip().startswith("%")))


def output_text(cell: dict) -> str:
    """Return everything a cell printed or displayed as text."""
    parts = []
    for output in cell["outputs"]:
        parts += output.get("text", [])
        parts += output.get("data", {}).get("text/plain", [])
        parts += output.get("traceback", [])
    return "".join(parts)


def test_there_are_twelve_lessons_and_the_readme_names_each():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert [lesson.name[:2] for lesson in LESSONS] == [f"{n:02d}" for n in range(1, 13)]
    assert [lesson.stem for lesson in LESSONS if f"`{lesson.stem}`" not in readme] == []


@pytest.mark.parametrize("lesson", LESSONS, ids=lambda path: path.stem)
def test_each_lesson_is_saved_as_one_clean_run(lesson):
    cells = code_cells(lesson)
    assert [cell["execution_count"] for cell in cells] == list(range(1, len(cells) + 1))
    for cell in cells:
        assert all(output["output_type"] != "error" for output in cell["outputs"])
        text = output_text(cell)
        assert "Traceback" not in text and "\x1b[" not in text, "no saved traceback or colours"
        assert not re.search(r"/(home|tmp|work|Users)/", text), "no machine's absolute path"


@pytest.mark.parametrize("lesson", LESSONS, ids=lambda path: path.stem)
def test_no_lesson_redefines_what_it_imports_from_the_package(lesson):
    imported, defined = set(), set()
    for cell in code_cells(lesson):
        for node in ast.walk(python_of(cell)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gptclassifier"):
                imported |= {alias.asname or alias.name for alias in node.names}
            elif isinstance(node, ast.FunctionDef | ast.ClassDef):
                defined.add(node.name)
    assert not imported & defined


def _shown_name(node: ast.expr) -> str:
    """Return the name a show_source argument starts with (SpamDataset for SpamDataset.__init__)."""
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id


def test_every_chapter_function_is_shown_from_the_package():
    shown = {
        _shown_name(node.args[0])
        for lesson in LESSONS
        for cell in code_cells(lesson)
        for node in ast.walk(python_of(cell))
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "show_source"
    }
    assert shown >= CHAPTER_FUNCTIONS, sorted(CHAPTER_FUNCTIONS - shown)


def markdown_words(lesson: Path) -> list[int]:
    """Return the number of words of each markdown cell of a lesson."""
    cells = json.loads(lesson.read_text(encoding="utf-8"))["cells"]
    return [
        len(re.findall(r"\S+", "".join(cell["source"])))
        for cell in cells
        if cell["cell_type"] == "markdown"
    ]


def test_the_prose_is_lean():
    words = {lesson.stem: markdown_words(lesson) for lesson in LESSONS}
    assert {name: max(counts) for name, counts in words.items() if max(counts) > 200} == {}
    assert sum(sum(counts) for counts in words.values()) <= 14_000


@pytest.mark.parametrize("lesson", LESSONS, ids=lambda path: path.stem)
def test_listings_are_short_and_every_lesson_but_the_exercises_draws(lesson):
    cells = code_cells(lesson)
    listings = [output_text(cell) for cell in cells if "show_source(" in "".join(cell["source"])]
    assert [listing.count("\n") + 1 for listing in listings if listing.count("\n") >= 30] == []
    figures = sum(
        "image/png" in output.get("data", {}) for cell in cells for output in cell["outputs"]
    )
    assert figures >= (lesson.stem != "09_exercises")


def test_the_courses_own_exercises_do_not_reuse_the_chapters_section_numbers():
    for name in ("09_exercises", "10_solutions"):
        cells = json.loads((ROOT / "notebooks" / f"{name}.ipynb").read_text(encoding="utf-8"))
        headings = re.findall(
            r"^## (?:Exercise )?(6\.\w+)",
            "".join("".join(cell["source"]) + "\n" for cell in cells["cells"]),
            re.MULTILINE,
        )
        assert headings[:3] == ["6.1", "6.2", "6.3"], name
        assert headings[3:] == [f"6.{letter}" for letter in "ABCD"[: len(headings) - 3]], name
        assert len(headings) == 7, name
