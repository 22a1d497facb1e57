"""How good a classifier is: confusion matrices, accuracy, precision, recall, F1, thresholds."""

import math

import numpy as np
import pandas as pd
import torch

from gptclassifier.errors import DataError
from gptclassifier.training.loop import evaluating
from gptclassifier.training.runners import classifier_logits

# The functions import scikit-learn themselves: it takes half a second to import, and the command
# line imports this module for commands that never score anything.


def _batch_logits(model, data_loader, device, pooling: str):
    """Yield each batch's class logits (on the CPU) and its true classes."""
    with evaluating(model):
        for inputs, targets in data_loader:
            yield classifier_logits(model, inputs.to(device), pooling).cpu(), targets


def confusion_counts(true, predicted, num_classes: int) -> torch.Tensor:
    """Return counts of (true class, predicted class), true classes in rows, as a long tensor."""
    import sklearn.metrics

    true, predicted = (np.asarray(classes, dtype=np.int64) for classes in (true, predicted))
    counts = sklearn.metrics.confusion_matrix(true, predicted, labels=range(num_classes))
    return torch.from_numpy(counts)


def confusion_matrix(model, data_loader, device, num_classes: int, pooling="last") -> torch.Tensor:
    """Return counts of (true class, predicted class) over every message of a loader."""
    true, predicted = [], []
    for logits, targets in _batch_logits(model, data_loader, device, pooling):
        true.append(targets)
        predicted.append(logits.argmax(dim=-1))
    if not true:
        return torch.zeros(num_classes, num_classes, dtype=torch.long)
    # counted once for the whole loader: scikit-learn's call costs milliseconds, batch or not
    return confusion_counts(torch.cat(true), torch.cat(predicted), num_classes)


def class_probabilities(
    model, data_loader, device, pooling="last"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return every message's class probabilities (float64, a row each) and true classes."""
    batches = list(_batch_logits(model, data_loader, device, pooling))
    if not batches:
        raise DataError("the loader has no messages to classify")
    logits, targets = zip(*batches, strict=True)
    return torch.softmax(torch.cat(logits).double(), dim=-1), torch.cat(targets)


def classification_metrics(counts: torch.Tensor) -> dict:
    """Return accuracy, precision, recall and F1 from a confusion matrix.

    With two classes these describe class 1 (spam); with more, they are macro averages.
    """
    import sklearn.metrics

    if counts.sum() == 0:
        raise DataError("a confusion matrix that counts no messages has no metrics")
    true, predicted = _classes_counted(counts)
    precision, recall, f1, _ = sklearn.metrics.precision_recall_fscore_support(
        true,
        predicted,
        labels=range(len(counts)),
        average="binary" if len(counts) == 2 else "macro",
        zero_division=0,
    )
    return {
        "accuracy": float(sklearn.metrics.accuracy_score(true, predicted)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "confusion_matrix": counts.long().tolist(),
        "num_examples": int(counts.sum()),
    }


def _classes_counted(counts: torch.Tensor) -> np.ndarray:
    """Return the true and the predicted class of every message a confusion matrix counts."""
    pairs = np.indices(counts.shape).reshape(2, -1)
    return np.repeat(pairs, counts.long().flatten().numpy(), axis=1)


def _scores_and_targets(scores, targets) -> tuple[np.ndarray, np.ndarray]:
    """Return spam scores and 0/1 true classes as equally long arrays, or say what is wrong."""
    scores = np.asarray(scores, dtype=float)
    targets = np.asarray(targets)
    if scores.ndim != 1 or scores.shape != targets.shape or len(scores) == 0:
        raise ValueError(
            f"need one score per true class, got shapes {scores.shape} and {targets.shape}"
        )
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite numbers")
    if not np.isin(targets, (0, 1)).all():
        raise ValueError("true classes must be 0 (ham) or 1 (spam)")
    return scores, targets.astype(np.int64)


def confusion_at_threshold(scores, targets, threshold: float) -> torch.Tensor:
    """Return the 2x2 confusion matrix of calling a message spam when its score >= threshold."""
    scores, targets = _scores_and_targets(scores, targets)
    return confusion_counts(targets, scores >= threshold, 2)


def precision_recall_curve(scores, targets) -> pd.DataFrame:
    """Return precision and recall of calling scores >= t spam, for each distinct score t.

    Rows go from the lowest threshold (everything flagged) to the highest; these are the
    points of scikit-learn's function of the same name, less its final (recall 0) point.
    """
    import sklearn.metrics

    scores, targets = _scores_and_targets(scores, targets)
    if not targets.any():
        raise ValueError("a precision-recall curve needs at least one spam message")
    precision, recall, thresholds = sklearn.metrics.precision_recall_curve(targets, scores)
    flagged = len(scores) - np.searchsorted(np.sort(scores), thresholds)  # scores >= threshold
    return pd.DataFrame(
        {
            "threshold": thresholds,
            "flagged": flagged,
            "precision": precision[:-1],
            "recall": recall[:-1],
        }
    )


def choose_threshold(curve: pd.DataFrame, min_precision: float) -> float:
    """Return the lowest threshold of a precision-recall curve with at least `min_precision`."""
    if not 0 < min_precision <= 1:
        raise ValueError(f"min_precision must lie in (0, 1], got {min_precision}")
    reaching = curve.loc[curve["precision"] >= min_precision, "threshold"]
    if reaching.empty:
        raise ValueError(
            f"no threshold reaches a precision of {min_precision:.0%} "
            f"(the highest is {curve['precision'].max():.0%})"
        )
    return float(reaching.min())


def tie_margin(accuracy: float, num_examples: int) -> float:
    """Return the gap two accuracies on `num_examples` must pass to be more than chance.

    Two standard errors of the difference of two accuracies near `accuracy`: a smaller gap is a tie.
    """
    return 2 * math.sqrt(2 * accuracy * (1 - accuracy) / num_examples)
