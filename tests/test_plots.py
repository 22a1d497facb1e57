"""Figures: training curves, a confusion matrix, a precision-recall curve, atomic saving."""

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.ticker import PercentFormatter

from gptclassifier.plots import (
    plot_confusion_matrix,
    plot_precision_recall,
    plot_values,
    save_figure,
)

EPOCHS = [0.0, 1.0, 2.0, 3.0]
EXAMPLES = [0.0, 1000.0, 2000.0, 3000.0]
TRAIN = [2.0, 1.0, 0.5, 0.25]
VAL = [2.2, 1.4, 0.9, 0.8]


@pytest.fixture(autouse=True)
def close_figures():
    """Close every pyplot figure a test leaves open."""
    yield
    plt.close("all")


def test_plot_values_draws_both_curves_against_epochs():
    fig = plot_values(EPOCHS, EXAMPLES, TRAIN, VAL)
    assert len(fig.axes) == 2
    ax, top = fig.axes
    train_line, val_line = ax.get_lines()
    np.testing.assert_allclose(train_line.get_xdata(), EPOCHS)
    np.testing.assert_allclose(train_line.get_ydata(), TRAIN)
    np.testing.assert_allclose(val_line.get_xdata(), EPOCHS)
    np.testing.assert_allclose(val_line.get_ydata(), VAL)
    assert train_line.get_linestyle() == "-"
    assert val_line.get_linestyle() == "-."
    assert ax.get_xlabel() == "Epochs"
    assert ax.get_ylabel() == "Loss"
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert legend == ["Training loss", "Validation loss"]


def test_plot_values_top_axis_shows_examples_seen_with_an_invisible_line():
    fig = plot_values(EPOCHS, EXAMPLES, TRAIN, VAL)
    ax, top = fig.axes
    assert top.get_xlabel() == "Examples seen"
    assert top.get_ylim() == ax.get_ylim()  # twiny shares the y axis
    assert top.get_xlim() == pytest.approx((0.0, 3000.0))
    assert ax.get_xlim() == pytest.approx((0.0, 3.0))
    (line,) = top.get_lines()
    np.testing.assert_allclose(line.get_xdata(), EXAMPLES)
    assert line.get_alpha() == 0


def test_plot_values_accuracy_is_shown_as_percent():
    fig = plot_values(EPOCHS, EXAMPLES, [0.5, 0.7, 0.9, 1.0], [0.4, 0.6, 0.8, 0.85], "accuracy")
    ax = fig.axes[0]
    assert ax.get_ylabel() == "Accuracy"
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert legend == ["Training accuracy", "Validation accuracy"]
    formatter = ax.yaxis.get_major_formatter()
    assert isinstance(formatter, PercentFormatter)
    assert formatter(0.5) == "50%"


def test_plot_values_accuracy_outside_unit_range_and_loss_are_not_percent():
    accuracy = plot_values(EPOCHS, EXAMPLES, [50, 70, 90, 95], [40, 60, 80, 85], "accuracy")
    loss = plot_values(EPOCHS, EXAMPLES, [0.5, 0.4, 0.3, 0.2], [0.6, 0.5, 0.4, 0.3])
    for fig in (accuracy, loss):
        assert not isinstance(fig.axes[0].yaxis.get_major_formatter(), PercentFormatter)


def test_plot_values_accepts_tensors_as_the_chapter_builds_them():
    train_losses, val_losses = TRAIN, VAL
    epochs_seen = torch.linspace(0, 3, len(train_losses))
    examples_seen = torch.linspace(0, 3000, len(train_losses))
    train = torch.tensor(train_losses, requires_grad=True)
    fig = plot_values(epochs_seen, examples_seen, train, np.array(val_losses))
    ax, top = fig.axes
    np.testing.assert_allclose(ax.get_lines()[0].get_xdata(), EPOCHS)
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), TRAIN, rtol=1e-6)
    np.testing.assert_allclose(ax.get_lines()[1].get_ydata(), VAL)
    assert top.get_xlim() == pytest.approx((0.0, 3000.0))


@pytest.mark.parametrize(
    "arguments",
    [
        (EPOCHS, EXAMPLES, TRAIN, VAL[:3]),
        (EPOCHS[:3], EXAMPLES, TRAIN, VAL),
        (EPOCHS, EXAMPLES[:2], TRAIN, VAL),
        ([], [], [], []),
    ],
)
def test_plot_values_rejects_unequal_or_empty_lengths(arguments):
    with pytest.raises(ValueError, match="equally long, non-empty") as raised:
        plot_values(*arguments)
    assert "\n" not in str(raised.value)


def cell_texts(fig):
    """Return the texts written in the heat map's cells, keyed by (row, column)."""
    return {(round(t.get_position()[1]), round(t.get_position()[0])): t for t in fig.axes[0].texts}


def test_plot_confusion_matrix_writes_counts_and_row_shares():
    matrix = [[142, 7], [3, 20]]
    fig = plot_confusion_matrix(matrix, ["not spam", "spam"])
    ax = fig.axes[0]
    texts = cell_texts(fig)
    assert len(texts) == 4
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            share = round(count / sum(row) * 100, 1)
            assert texts[i, j].get_text() == f"{count}\n({share}%)"
    assert texts[0, 0].get_text() == "142\n(95.3%)"
    assert texts[0, 0].get_color() == "white"  # dark cell
    assert texts[1, 0].get_color() == "black"  # light cell
    assert [t.get_text() for t in ax.get_xticklabels()] == ["not spam", "spam"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["not spam", "spam"]
    assert ax.get_xlabel() == "Predicted"
    assert ax.get_ylabel() == "True"
    assert ax.get_title() == "Confusion matrix"
    np.testing.assert_array_equal(ax.get_images()[0].get_array(), matrix)


def test_plot_confusion_matrix_three_classes_from_a_tensor():
    matrix = torch.tensor([[5, 1, 0], [2, 8, 0], [0, 0, 0]])
    names = ["ham", "spam", "phishing"]
    fig = plot_confusion_matrix(matrix, names, title="Test set")
    ax = fig.axes[0]
    texts = cell_texts(fig)
    assert len(texts) == 9
    assert texts[0, 1].get_text() == "1\n(16.7%)"
    assert texts[1, 1].get_text() == "8\n(80.0%)"
    assert texts[2, 2].get_text().startswith("0\n")  # an empty row has no share
    assert [t.get_text() for t in ax.get_xticklabels()] == names
    assert [t.get_text() for t in ax.get_yticklabels()] == names
    assert ax.get_title() == "Test set"


def test_plot_confusion_matrix_ten_classes():
    matrix = np.arange(100).reshape(10, 10)
    fig = plot_confusion_matrix(matrix, [f"class {k}" for k in range(10)])
    assert len(fig.axes[0].texts) == 100
    assert cell_texts(fig)[9, 9].get_text().startswith("99\n(")


@pytest.mark.parametrize(
    "matrix, names",
    [
        ([[1, 2, 3], [4, 5, 6]], ["a", "b"]),
        ([[1, 2], [3, 4]], ["a", "b", "c"]),
        ([1, 2], ["a", "b"]),
        ([[1, -2], [3, 4]], ["a", "b"]),
        ([[1, 2.5], [3, 4]], ["a", "b"]),
    ],
)
def test_plot_confusion_matrix_rejects_bad_matrices(matrix, names):
    with pytest.raises(ValueError):
        plot_confusion_matrix(matrix, names)


RECALL = [1.0, 1.0, 2 / 3, 1 / 3]
PRECISION = [0.6, 0.75, 2 / 3, 1.0]


def test_plot_precision_recall_draws_the_curve_and_the_marks():
    marks = {"threshold 0.5": (2 / 3, 2 / 3), "chosen": (1.0, 0.75)}
    fig = plot_precision_recall(RECALL, torch.tensor(PRECISION), marks, title="Validation set")
    (ax,) = fig.axes
    curve, half, chosen = ax.get_lines()
    np.testing.assert_allclose(curve.get_xdata(), RECALL)
    np.testing.assert_allclose(curve.get_ydata(), PRECISION)
    assert curve.get_drawstyle() == "steps-post"
    for line, (x, y) in zip((half, chosen), marks.values(), strict=True):
        np.testing.assert_allclose([line.get_xdata()[0], line.get_ydata()[0]], [x, y])
        assert line.get_linestyle() == "None" and line.get_fillstyle() == "none"
    assert half.get_marker() != chosen.get_marker()  # both visible where they coincide
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert legend == ["each threshold", "threshold 0.5", "chosen"]
    assert ax.get_xlabel().startswith("Recall") and ax.get_ylabel().startswith("Precision")
    assert ax.get_title() == "Validation set"
    assert ax.get_xlim() == ax.get_ylim() == pytest.approx((-0.03, 1.03))  # marks at 0 or 1 show
    assert ax.xaxis.get_major_formatter()(0.5) == "50%"
    assert ax.yaxis.get_major_formatter()(0.75) == "75%"


def test_plot_precision_recall_without_marks_draws_only_the_curve():
    (ax,) = plot_precision_recall(RECALL, PRECISION).axes
    assert len(ax.get_lines()) == 1
    assert ax.get_title() == "Precision-recall curve"


@pytest.mark.parametrize(
    "recall, precision, marks, message",
    [
        (RECALL, PRECISION[:3], None, "equally long and non-empty"),
        ([], [], None, "equally long and non-empty"),
        ([1.2, 0.5], [0.5, 0.5], None, "between 0 and 1"),
        (RECALL, PRECISION, {"chosen": (0.5, -0.1)}, "between 0 and 1"),
        (RECALL, PRECISION, {"chosen": (0.5, 0.5, 0.5)}, "one \\(recall, precision\\) pair"),
    ],
)
def test_plot_precision_recall_rejects_bad_input_in_one_line(recall, precision, marks, message):
    with pytest.raises(ValueError, match=message) as raised:
        plot_precision_recall(recall, precision, marks)
    assert "\n" not in str(raised.value)


def test_save_figure_writes_png_and_pdf(tmp_path):
    fig = plot_values(EPOCHS, EXAMPLES, TRAIN, VAL)
    paths = save_figure(fig, tmp_path / "runs" / "x" / "loss")
    assert paths == [tmp_path / "runs/x/loss.png", tmp_path / "runs/x/loss.pdf"]
    assert paths[0].read_bytes().startswith(b"\x89PNG")
    assert paths[1].read_bytes().startswith(b"%PDF")
    assert sorted(p.name for p in (tmp_path / "runs/x").iterdir()) == ["loss.pdf", "loss.png"]


def test_save_figure_accepts_a_string_stem_with_suffix(tmp_path):
    fig = plot_confusion_matrix([[1, 2], [3, 4]], ["a", "b"])
    paths = save_figure(fig, str(tmp_path / "matrix.png"))
    assert paths == [tmp_path / "matrix.png", tmp_path / "matrix.pdf"]
    assert all(path.stat().st_size > 0 for path in paths)


@pytest.mark.parametrize("failing_call", [1, 2])
def test_save_figure_leaves_nothing_when_saving_fails(tmp_path, monkeypatch, failing_call):
    fig = plot_values(EPOCHS, EXAMPLES, TRAIN, VAL)
    real_savefig, calls = fig.savefig, []

    def savefig(*args, **kwargs):
        calls.append(kwargs.get("format"))
        if len(calls) == failing_call:
            raise OSError("disk full")
        return real_savefig(*args, **kwargs)

    monkeypatch.setattr(fig, "savefig", savefig)
    with pytest.raises(OSError, match="disk full"):
        save_figure(fig, tmp_path / "out" / "loss")
    assert calls[0] == "png"
    assert list((tmp_path / "out").iterdir()) == []
