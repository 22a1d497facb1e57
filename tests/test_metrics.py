"""Metrics, the confusion matrix, class probabilities and thresholds (section 6.8 and beyond)."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

from gptclassifier.errors import DataError
from gptclassifier.evaluation.metrics import (
    choose_threshold,
    class_probabilities,
    classification_metrics,
    confusion_at_threshold,
    confusion_matrix,
    precision_recall_curve,
)

CPU = torch.device("cpu")
PAD = 50256


def metrics_close(metrics: dict, **expected) -> None:
    """Assert that each named metric equals its hand-computed value and none is NaN."""
    for name, value in expected.items():
        assert not math.isnan(metrics[name]), name
        assert metrics[name] == pytest.approx(value), name


# --- classification_metrics ---------------------------------------------------------------


def test_binary_metrics_describe_class_one():
    # rows: true ham, true spam; columns: predicted ham, predicted spam
    counts = torch.tensor([[50, 10], [5, 35]])
    metrics = classification_metrics(counts)
    metrics_close(
        metrics,
        accuracy=85 / 100,
        precision=35 / 45,  # of 45 predicted spam, 35 are spam
        recall=35 / 40,  # of 40 spam, 35 are found
        f1=2 * 35 / (2 * 35 + 10 + 5),
    )
    assert metrics["confusion_matrix"] == [[50, 10], [5, 35]]
    assert metrics["num_examples"] == 100


def test_three_class_metrics_are_macro_averages():
    counts = torch.tensor([[5, 1, 0], [2, 3, 1], [0, 0, 4]])
    precisions = [5 / 7, 3 / 4, 4 / 5]
    recalls = [5 / 6, 3 / 6, 4 / 4]
    f1s = [2 * 5 / (10 + 2 + 1), 2 * 3 / (6 + 1 + 3), 2 * 4 / (8 + 1 + 0)]
    metrics = classification_metrics(counts)
    metrics_close(
        metrics,
        accuracy=12 / 16,
        precision=sum(precisions) / 3,
        recall=sum(recalls) / 3,
        f1=sum(f1s) / 3,
    )
    assert metrics["num_examples"] == 16


def test_a_class_never_predicted_has_precision_zero_without_nan():
    counts = torch.tensor([[3, 0, 1], [2, 0, 2], [0, 0, 4]])  # nothing predicted as class 1
    precisions = [3 / 5, 0.0, 4 / 7]
    recalls = [3 / 4, 0.0, 4 / 4]
    f1s = [2 * 3 / (6 + 2 + 1), 0.0, 2 * 4 / (8 + 3 + 0)]
    metrics_close(
        classification_metrics(counts),
        accuracy=7 / 12,
        precision=sum(precisions) / 3,
        recall=sum(recalls) / 3,
        f1=sum(f1s) / 3,
    )


def test_binary_model_that_never_predicts_spam_has_zero_precision_recall_and_f1():
    metrics = classification_metrics(torch.tensor([[7, 0], [3, 0]]))
    metrics_close(metrics, accuracy=0.7, precision=0.0, recall=0.0, f1=0.0)


# --- confusion_matrix ---------------------------------------------------------------------


def test_confusion_matrix_matches_a_manual_count(first_token_classifier):
    inputs = torch.tensor([[i, i + 1, PAD] for i in range(20)])
    targets = torch.tensor([(i * i + i // 4) % 3 for i in range(20)])
    loader = DataLoader(TensorDataset(inputs, targets), batch_size=6)  # 4 batches, last partial
    expected = [[0] * 3 for _ in range(3)]
    for row, target in zip(inputs.tolist(), targets.tolist(), strict=True):
        expected[target][row[0] % 3] += 1
    counts = confusion_matrix(first_token_classifier(3), loader, CPU, num_classes=3)
    assert counts.tolist() == expected
    assert counts.tolist() == [[4, 1, 2], [2, 2, 2], [1, 4, 2]]  # rows true, columns predicted
    assert counts.sum().item() == 20
    assert counts.dtype == torch.long


def test_class_probabilities_are_the_softmax_of_each_message_in_order(first_token_classifier):
    inputs = torch.tensor([[i, PAD] for i in range(7)])
    targets = torch.tensor([0, 1, 1, 0, 1, 0, 0])
    loader = DataLoader(TensorDataset(inputs, targets), batch_size=3)
    probabilities, seen_targets = class_probabilities(first_token_classifier(2), loader, CPU)
    confident = math.exp(3) / (math.exp(3) + 1)  # softmax of the stub's logits (3, 0)
    by_parity = [[confident, 1 - confident], [1 - confident, confident]]  # first token % 2
    expected = [by_parity[i % 2] for i in range(7)]
    np.testing.assert_allclose(probabilities.numpy(), expected, rtol=1e-6)
    assert probabilities.dtype == torch.float64
    assert seen_targets.tolist() == targets.tolist()


def test_class_probabilities_of_an_empty_loader_is_an_error(first_token_classifier):
    loader = DataLoader(TensorDataset(torch.zeros(0, 2, dtype=torch.long), torch.zeros(0)))
    with pytest.raises(DataError, match="no messages"):
        class_probabilities(first_token_classifier(2), loader, CPU)


# --- thresholds and the precision-recall curve ----------------------------------------------

SCORES = [0.3, 0.8, 0.1, 0.9, 0.8]  # a tie at 0.8, one spam and one ham
TARGETS = [1, 0, 0, 1, 1]


def test_precision_recall_curve_by_hand():
    curve = precision_recall_curve(SCORES, TARGETS)
    # Flag every score >= t. Of the 3 spam: t=0.1 flags all 5 (3 spam); t=0.3 flags 4 (3 spam);
    # t=0.8 flags both 0.8s and 0.9 (2 spam); t=0.9 flags one (spam).
    assert curve["threshold"].tolist() == [0.1, 0.3, 0.8, 0.9]
    assert curve["flagged"].tolist() == [5, 4, 3, 1]
    assert curve["precision"].tolist() == pytest.approx([3 / 5, 3 / 4, 2 / 3, 1])
    assert curve["recall"].tolist() == pytest.approx([1, 1, 2 / 3, 1 / 3])


def test_precision_recall_curve_gives_scikit_learns_documented_example():
    # The example of sklearn.metrics.precision_recall_curve's documentation, with its answer
    # (scikit-learn adds a last point, precision 1 at recall 0, that no threshold gives).
    curve = precision_recall_curve(torch.tensor([0.1, 0.4, 0.35, 0.8]), [0, 0, 1, 1])
    assert curve["threshold"].tolist() == pytest.approx([0.1, 0.35, 0.4, 0.8])
    assert curve["precision"].tolist() == pytest.approx([0.5, 2 / 3, 0.5, 1.0])
    assert curve["recall"].tolist() == pytest.approx([1.0, 1.0, 0.5, 0.5])


@given(
    st.lists(st.tuples(st.integers(0, 6), st.booleans()), min_size=1, max_size=30).filter(
        lambda pairs: any(spam for _, spam in pairs)
    )
)
def test_precision_recall_curve_matches_counting_at_every_threshold(pairs):
    scores = [level / 6 for level, _ in pairs]  # few levels: many ties
    targets = [int(spam) for _, spam in pairs]
    curve = precision_recall_curve(scores, targets)
    assert curve["threshold"].tolist() == sorted(set(scores))
    for row in curve.itertuples():
        flagged = [t for s, t in zip(scores, targets, strict=True) if s >= row.threshold]
        assert row.flagged == len(flagged)
        assert row.precision == pytest.approx(sum(flagged) / len(flagged))
        assert row.recall == pytest.approx(sum(flagged) / sum(targets))
        metrics = classification_metrics(confusion_at_threshold(scores, targets, row.threshold))
        assert (metrics["precision"], metrics["recall"]) == pytest.approx(
            (row.precision, row.recall)
        )


def test_confusion_at_threshold_by_hand():
    counts = confusion_at_threshold(np.array(SCORES), pd.Series(TARGETS), 0.5)
    # ham: 0.8 flagged, 0.1 not; spam: 0.9 and 0.8 flagged, 0.3 missed
    assert counts.tolist() == [[1, 1], [1, 2]]
    assert confusion_at_threshold(SCORES, TARGETS, 0.8).tolist() == [[1, 1], [1, 2]]  # >= t
    assert confusion_at_threshold(SCORES, TARGETS, 0.95).tolist() == [[2, 0], [3, 0]]


@pytest.mark.parametrize(
    "scores, targets, message",
    [
        ([0.1, 0.2], [1], "one score per true class"),
        ([], [], "one score per true class"),
        ([[0.1, 0.9]], [[0, 1]], "one score per true class"),
        ([0.1, float("nan")], [0, 1], "finite"),
        ([0.1, 0.2], [0, 2], "0 \\(ham\\) or 1 \\(spam\\)"),
        ([0.1, 0.2], [0, 0], "at least one spam"),
    ],
)
def test_precision_recall_curve_rejects_bad_input_in_one_line(scores, targets, message):
    with pytest.raises(ValueError, match=message) as raised:
        precision_recall_curve(scores, targets)
    assert "\n" not in str(raised.value)


def test_choose_threshold_takes_the_lowest_reaching_the_precision():
    curve = precision_recall_curve(SCORES, TARGETS)  # precisions 0.6, 0.75, 0.67, 1
    assert choose_threshold(curve, 0.7) == 0.3
    assert choose_threshold(curve, 0.75) == 0.3
    assert choose_threshold(curve, 0.8) == 0.9
    assert choose_threshold(curve, 0.5) == 0.1


def test_choose_threshold_says_when_no_threshold_is_precise_enough():
    curve = precision_recall_curve([0.9, 0.5], [0, 1])  # the top score is ham
    with pytest.raises(ValueError, match="no threshold reaches a precision of 60% .* 50%"):
        choose_threshold(curve, 0.6)
    for bad in (0, 1.5):
        with pytest.raises(ValueError, match="min_precision"):
            choose_threshold(curve, bad)
