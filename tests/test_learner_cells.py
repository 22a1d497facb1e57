"""The cells a learner writes: empty as committed; a wrong and a right answer get their feedback.

Each lesson runs in a kernel of its own, in the smoke profile. At each learner cell a wrong
answer runs first, then the check; then the solution, then the check again; then the lesson
goes on as committed.
"""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LESSONS = sorted((ROOT / "notebooks").glob("0[1-8]_*.ipynb"))
# A typical mistake for each name a learner writes, and what the check must say of it.
WRONG_ANSWERS = {
    "my_balanced": (
        "import pandas as pd\n"
        "spam = data.frame[data.frame['Label'] == 'spam']\n"
        "ham = data.frame[data.frame['Label'] == 'ham'].sample(len(spam), random_state=123)\n"
        "my_balanced = pd.concat([spam, ham])",
        "has the spam first",
    ),
    "my_splits": (
        "n = len(balanced)\n"
        "my_splits = balanced[: int(n * 0.7)], balanced[int(n * 0.7) : int(n * 0.8)], "
        "balanced[int(n * 0.8) :]",
        "shuffle the whole frame first",
    ),
    "my_padded": (
        "ids = [tokenizer.encode(text) for text in splits['train']['Text']]\n"
        "longest = max(map(len, ids))\n"
        "my_padded = [row + [0] * (longest - len(row)) for row in ids]",
        "padded with 0",
    ),
    "my_head": (
        "torch.manual_seed(0)\nmy_head = torch.nn.Linear(config['emb_dim'], 2)",
        "torch.manual_seed(seed)",
    ),
    "my_positions": ("my_positions = (batch != PAD_TOKEN_ID).sum(dim=1)", "one too far"),
    "my_model": (
        "my_model = meta_classifier(base.config)\n"
        "for param in my_model.parameters():\n"
        "    param.requires_grad = False\n"
        "for param in my_model.out_head.parameters():\n"
        "    param.requires_grad = True",
        "should train",
    ),
    "my_calc_accuracy_loader": (
        "def my_calc_accuracy_loader(data_loader, model, device, num_batches=None):\n    return 8",
        "a number from 0 to 1",
    ),
    "my_calc_loss_batch": (
        "def my_calc_loss_batch(input_batch, target_batch, model, device):\n"
        "    logits = model(input_batch.to(device))[:, 0, :]\n"
        "    return torch.nn.functional.cross_entropy(logits, target_batch.to(device))",
        "loss of the first token",
    ),
    "my_train_classifier_simple": (
        "def my_train_classifier_simple(model, train_loader, val_loader, optimizer, device,\n"
        "                               num_epochs, eval_freq, eval_iter):\n"
        "    return [], [], [], [], 0",
        "your train_losses has 0 values",
    ),
    "my_classify_review": (
        "def my_classify_review(text, model, tokenizer, device, max_length=None,\n"
        "                       pad_token_id=50256):\n"
        "    return 'spam'",
        "yours says 'spam'",
    ),
}


def _cells(lesson: Path) -> list[dict]:
    return json.loads(lesson.read_text(encoding="utf-8"))["cells"]


def _tags(cell) -> list[str]:
    return cell.get("metadata", {}).get("tags", [])


def _learner_name(cell) -> str:
    return re.search(r"`(my_\w+)", "".join(cell["source"])).group(1)


def _shown(cell) -> str:
    """Return what a cell printed or displayed as text."""
    parts = []
    for output in cell.outputs:
        parts.append(output.get("text", ""))
        parts.append(output.get("data", {}).get("text/plain", ""))
        parts.append("\n".join(output.get("traceback", [])))
    return "".join(parts)


def test_every_name_a_learner_writes_has_a_wrong_answer_here():
    names = [
        _learner_name(cell)
        for lesson in LESSONS
        for cell in _cells(lesson)
        if "learner" in _tags(cell)
    ]
    assert sorted(names) == sorted(WRONG_ANSWERS)


@pytest.mark.parametrize("lesson", LESSONS, ids=lambda path: path.stem)
def test_learner_cells_are_empty_and_followed_by_a_check_and_a_hidden_solution(lesson):
    cells = _cells(lesson)
    for index, cell in enumerate(cells):
        if "learner" not in _tags(cell):
            continue
        code = [line for line in "".join(cell["source"]).splitlines() if line.strip()]
        assert all(line.lstrip().startswith("#") for line in code), "comments only"
        check, solution = cells[index + 1], cells[index + 2]
        assert re.search(r"check_\w+\(globals\(\)", "".join(check["source"]))
        assert "… " in "".join(check["outputs"][0]["data"]["text/plain"]), "not written yet"
        assert "solution" in _tags(solution)
        assert solution["metadata"]["jupyter"]["source_hidden"] is True
        assert _learner_name(cell) in "".join(solution["source"])


@pytest.mark.slow
@pytest.mark.parametrize("lesson", LESSONS, ids=lambda path: path.stem)
def test_a_wrong_and_a_right_answer_get_their_feedback(lesson, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    monkeypatch.setenv("GPTCLASSIFIER_PROFILE", "smoke")
    notebook = nbformat.read(lesson, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": lesson.parent}},
    )
    seen = []
    with client.setup_kernel():
        for index, cell in enumerate(notebook.cells):
            if "learner" in cell.metadata.get("tags", []):
                name = _learner_name(cell)
                wrong, hint = WRONG_ANSWERS[name]
                feedback = {}
                for answer, code in (("wrong", wrong), ("right", notebook.cells[index + 2].source)):
                    client.execute_cell(nbformat.v4.new_code_cell(code), index)
                    check = nbformat.v4.new_code_cell(notebook.cells[index + 1].source)
                    client.execute_cell(check, index + 1)
                    feedback[answer] = _shown(check)
                assert feedback["wrong"].startswith("✗") and hint in feedback["wrong"], feedback
                assert feedback["right"].startswith("✓"), feedback
                seen.append(name)
            if cell.cell_type == "code":
                client.execute_cell(cell, index)
    learner = [cell for cell in notebook.cells if "learner" in cell.metadata.get("tags", [])]
    assert seen == [_learner_name(cell) for cell in learner]
