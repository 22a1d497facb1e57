"""Figures for chapter 6: training curves, a confusion matrix, a precision-recall curve; saving."""

import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backend_bases import FigureCanvasBase
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from gptclassifier.files import atomic_writer


def _as_array(values, name: str, ndim: int) -> np.ndarray:
    """Return list, array or tensor `values` as a float array with `ndim` dimensions."""
    if hasattr(values, "detach"):  # a torch tensor, possibly on a GPU or requiring grad
        values = values.detach().cpu().numpy()
    try:
        array = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be numbers, got {type(values).__name__}") from error
    if array.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {array.shape}")
    return array


def plot_values(
    epochs_seen, examples_seen, train_values, val_values, label: str = "loss"
) -> Figure:
    """Plot training and validation `label` against epochs, with examples seen on a top axis."""
    epochs = _as_array(epochs_seen, "epochs_seen", 1)
    examples = _as_array(examples_seen, "examples_seen", 1)
    train = _as_array(train_values, "train_values", 1)
    val = _as_array(val_values, "val_values", 1)
    lengths = {"epochs_seen": len(epochs), "examples_seen": len(examples)}
    lengths |= {"train_values": len(train), "val_values": len(val)}
    if len(set(lengths.values())) != 1 or len(train) == 0:
        shown = ", ".join(f"{name}={length}" for name, length in lengths.items())
        raise ValueError(f"plot_values needs equally long, non-empty sequences, got {shown}")

    fig = Figure(figsize=(5, 3), layout="constrained")
    ax1 = fig.add_subplot()
    ax1.plot(epochs, train, label=f"Training {label}")
    ax1.plot(epochs, val, linestyle="-.", label=f"Validation {label}")
    ax1.set_xlabel("Epochs")
    ax1.set_ylabel(label[:1].upper() + label[1:])
    ax1.legend()
    finite = np.concatenate([train, val])
    finite = finite[np.isfinite(finite)]
    if label.lower() == "accuracy" and finite.size and finite.min() >= 0 and finite.max() <= 1:
        ax1.yaxis.set_major_formatter(PercentFormatter(xmax=1))

    ax2 = ax1.twiny()  # a second x axis sharing the y axis
    ax2.plot(examples, train, alpha=0)  # invisible line, only to align the ticks
    ax2.set_xlabel("Examples seen")
    if epochs.min() < epochs.max() and examples.min() < examples.max():
        ax1.set_xlim(epochs.min(), epochs.max())
        ax2.set_xlim(examples.min(), examples.max())
    return fig


def plot_confusion_matrix(
    matrix, class_names: Sequence[str], title: str = "Confusion matrix"
) -> Figure:
    """Draw counts (and each cell's share of its true-class row) as a square heat map."""
    counts = _as_array(matrix, "matrix", 2)
    names = [str(name) for name in class_names]
    rows, columns = counts.shape
    if rows != columns or rows != len(names) or rows == 0:
        raise ValueError(
            f"matrix must be {len(names)}x{len(names)} to match class_names, got {rows}x{columns}"
        )
    if not np.all(np.isfinite(counts)) or np.any(counts < 0) or np.any(counts != np.round(counts)):
        raise ValueError("matrix must hold non-negative integer counts")
    counts = counts.astype(np.int64)
    row_totals = counts.sum(axis=1)

    size = max(4.0, 0.7 * rows + 2.0)
    fig = Figure(figsize=(size, size), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(counts, cmap="Blues", vmin=0, vmax=max(int(counts.max()), 1))
    rotate = rows > 4 or max(len(name) for name in names) > 8
    ax.set_xticks(
        range(rows), names, rotation=45 if rotate else 0, ha="right" if rotate else "center"
    )
    ax.set_yticks(range(rows), names)
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    ax.set_title(title)
    fontsize = 10 if rows <= 5 else 8
    for i in range(rows):
        for j in range(columns):
            count = int(counts[i, j])
            share = f"{100 * count / row_totals[i]:.1f}%" if row_totals[i] else "n/a"
            color = "white" if image.norm(count) > 0.5 else "black"
            text = f"{count}\n({share})"
            ax.text(j, i, text, ha="center", va="center", color=color, fontsize=fontsize)
    return fig


def plot_precision_recall(
    recall,
    precision,
    marks: Mapping[str, tuple[float, float]] | None = None,
    title: str = "Precision-recall curve",
) -> Figure:
    """Draw precision against recall, a step per threshold, with labelled (recall, precision)."""
    recalls = _as_array(recall, "recall", 1)
    precisions = _as_array(precision, "precision", 1)
    points = {str(label): _as_array(point, label, 1) for label, point in (marks or {}).items()}
    if len(recalls) != len(precisions) or len(recalls) == 0:
        raise ValueError(
            f"recall and precision must be equally long and non-empty, "
            f"got {len(recalls)} and {len(precisions)}"
        )
    if any(len(point) != 2 for point in points.values()):
        raise ValueError("each mark must be one (recall, precision) pair")
    values = np.concatenate([recalls, precisions, *points.values()])
    if not np.all((values >= 0) & (values <= 1)):
        raise ValueError("recall and precision must lie between 0 and 1")

    fig = Figure(figsize=(5, 4), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(recalls, precisions, drawstyle="steps-post", marker=".", label="each threshold")
    # Hollow markers of different shapes stay visible where two marks fall on one point.
    for (label, (x, y)), marker in zip(points.items(), itertools.cycle("os^Dv"), strict=False):
        ax.plot(x, y, marker=marker, markersize=11, fillstyle="none", mew=2, ls="none", label=label)
    ax.set_xlabel("Recall (share of spam caught)")
    ax.set_ylabel("Precision (share of flagged that is spam)")
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(-0.03, 1.03)
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(PercentFormatter(xmax=1))
    ax.set_title(title)
    ax.legend(loc="lower left")
    return fig


def save_figure(figure: Figure, path_stem: str | Path) -> list[Path]:
    """Write `figure` atomically to `<stem>.png` (dpi 150) and `<stem>.pdf`; return both paths."""
    stem = Path(path_stem)
    if stem.suffix[1:].lower() in FigureCanvasBase.get_supported_filetypes():
        stem = stem.with_suffix("")
    png, pdf = stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".pdf")
    # Nested writers: if either drawing fails, neither file is renamed into place.
    with atomic_writer(png) as png_file, atomic_writer(pdf) as pdf_file:
        figure.savefig(png_file, format="png", dpi=150)
        figure.savefig(pdf_file, format="pdf")
    return [png, pdf]
