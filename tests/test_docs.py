"""The README stays within 12,000 characters; it and docs/ link only to what exists."""

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def without_code_blocks(text: str) -> str:
    """Return Markdown without its fenced code blocks."""
    return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


def anchors(path: Path) -> set[str]:
    """Return the anchors GitHub gives a Markdown file's headings."""
    text = without_code_blocks(path.read_text(encoding="utf-8"))
    headings = re.findall(r"^#+ (.+)$", text, re.M)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def relative_links(path: Path) -> list[str]:
    """Return the targets of a Markdown file's links that stay inside the repository."""
    text = without_code_blocks(path.read_text(encoding="utf-8"))
    targets = LINK.findall(re.sub(r"`[^`\n]*`", "", text))  # a link inside code is not one
    return [target for target in targets if not re.match(r"[a-z]+:", target)]


def broken_links(path: Path) -> list[str]:
    """Return each relative link of a Markdown file whose file or heading does not exist."""
    broken = []
    for target in relative_links(path):
        file, _, anchor = unquote(target).partition("#")
        linked = (path.parent / file).resolve() if file else path
        if not linked.exists() or (anchor and anchor not in anchors(linked)):
            broken.append(target)
    return broken


def test_the_readme_fits_in_twelve_thousand_characters():
    assert len(README.read_text(encoding="utf-8")) <= 12_000


def test_there_are_docs():
    assert len(DOCS) >= 5


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda path: path.name)
def test_every_relative_link_finds_its_file_and_heading(path):
    assert broken_links(path) == []


def test_the_readme_links_every_doc():
    linked = {
        (ROOT / unquote(target).partition("#")[0]).resolve() for target in relative_links(README)
    }
    assert [doc.name for doc in DOCS if doc.resolve() not in linked] == []


@pytest.mark.parametrize("path", DOCS, ids=lambda path: path.name)
def test_each_doc_opens_with_a_title_and_one_line_on_what_it_holds(path):
    title, blank, summary, after = path.read_text(encoding="utf-8").splitlines()[:4]
    assert title.startswith("# ") and blank == "" and summary and after == ""


def test_a_missing_file_or_heading_is_found(tmp_path):
    (tmp_path / "other.md").write_text("# Other\n\n## A `code` heading, here\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n[ok](other.md#a-code-heading-here) [ok](#page) [web](https://example.org)\n"
        "[no file](missing.md) [no heading](other.md#nowhere) `[code](missing.md)`\n"
        "```\n[fenced](missing.md)\n# not a heading\n```\n[no anchor](#not-a-heading)\n"
    )
    assert broken_links(page) == ["missing.md", "other.md#nowhere", "#not-a-heading"]
