"""Metrics, the confusion matrix, class probabilities and thresholds (section 6.8 and beyond)."""

import math
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score
from sklearn.metrics import precision_recall_curve as sklearn_precision_recall_curve
from torch.utils.data import DataLoader, TensorDataset

from gptclassifier.errors import DataError
from gptclassifier.evaluation.metrics import (
    choose_threshold,
    class_probabilities,
    classification_metrics,
    confusion_at_threshold,
    confusion_counts,
    confusion_matrix,
    precision_recall_curve,
)

CPU = torch.device("cpu")
PAD = 50256
SPAM = 1


def metrics_close(metrics: dict, **expected) -> None:
    """Assert that each named metric equals its expected value and none is NaN."""
    for name, value in expected.items():
        assert not math.isnan(metrics[name]), name
        assert metrics[name] == pytest.approx(value), name


@st.composite
def confusion_matrices(draw) -> torch.Tensor:
    """Draw a 2- to 5-class confusion matrix, often with classes never true or never predicted."""
    num_classes = draw(st.integers(2, 5))
    cells = st.lists(st.integers(0, 4), min_size=num_classes, max_size=num_classes)
    counts = np.array(draw(st.lists(cells, min_size=num_classes, max_size=num_classes)))
    counts[sorted(draw(st.sets(st.integers(0, num_classes - 1))))] = 0  # empty rows
    counts[:, sorted(draw(st.sets(st.integers(0, num_classes - 1))))] = 0  # empty columns
    return torch.from_numpy(counts)


# --- classification_metrics ---------------------------------------------------------------


@given(confusion_matrices().filter(lambda counts: counts.sum() > 0))
def test_metrics_match_scikit_learns(counts):
    rows = counts.tolist()
    messages = [(t, p) for t, row in enumerate(rows) for p, n in enumerate(row) for _ in range(n)]
    true, predicted = zip(*messages, strict=True)
    options = {
        "labels": range(len(rows)),
        "average": "binary" if len(rows) == 2 else "macro",
        "pos_label": SPAM,  # with two classes, the scores are spam's
        "zero_division": 0,
    }
    metrics = classification_metrics(counts)
    metrics_close(
        metrics,
        accuracy=accuracy_score(true, predicted),
        precision=precision_score(true, predicted, **options),
        recall=recall_score(true, predicted, **options),
        f1=f1_score(true, predicted, **options),
    )
    assert metrics["confusion_matrix"] == counts.tolist()
    assert metrics["num_examples"] == len(true)


def test_binary_metrics_describe_spam_class_one_by_hand():
    # rows: true ham, true spam; columns: predicted ham, predicted spam
    metrics = classification_metrics(torch.tensor([[50, 10], [5, 35]]))
    metrics_close(
        metrics,
        accuracy=85 / 100,
        precision=35 / 45,  # of 45 predicted spam, 35 are spam
        recall=35 / 40,  # of 40 spam, 35 are found
        f1=2 * 35 / (2 * 35 + 10 + 5),
    )
    assert metrics["confusion_matrix"] == [[50, 10], [5, 35]]
    assert metrics["num_examples"] == 100


def test_a_class_never_predicted_has_precision_zero_by_hand():
    never_spam = classification_metrics(torch.tensor([[7, 0], [3, 0]]))
    metrics_close(never_spam, accuracy=0.7, precision=0.0, recall=0.0, f1=0.0)
    counts = torch.tensor([[3, 0, 1], [2, 0, 2], [0, 0, 4]])  # nothing predicted as class 1
    metrics_close(
        classification_metrics(counts),
        accuracy=7 / 12,
        precision=(3 / 5 + 0 + 4 / 7) / 3,  # macro averages, class 1 counting 0
        recall=(3 / 4 + 0 + 4 / 4) / 3,
        f1=(2 * 3 / (6 + 2 + 1) + 0 + 2 * 4 / (8 + 3 + 0)) / 3,
    )


def test_metrics_of_no_messages_is_an_error():
    with pytest.raises(DataError, match="counts no messages"):
        classification_metrics(torch.zeros(2, 2, dtype=torch.long))


# --- confusion_counts and confusion_matrix ------------------------------------------------


@given(st.integers(2, 5), st.data())
def test_confusion_counts_counts_each_pair_with_true_classes_in_rows(num_classes, data):
    classes = st.integers(0, num_classes - 1)
    pairs = data.draw(st.lists(st.tuples(classes, classes), min_size=1, max_size=30))
    true, predicted = zip(*pairs, strict=True)
    counts = confusion_counts(np.array(true), torch.tensor(predicted), num_classes)
    tally = Counter(pairs)
    assert counts.tolist() == [
        [tally[t, p] for p in range(num_classes)] for t in range(num_classes)
    ]
    assert counts.dtype == torch.long


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


@given(
    st.lists(
        st.tuples(st.one_of(st.sampled_from([0.0, 0.5, 1.0]), st.floats(0, 1)), st.booleans()),
        min_size=1,
        max_size=40,
    ).filter(lambda pairs: any(spam for _, spam in pairs))
)
def test_precision_recall_curve_is_scikit_learns_less_its_last_point(pairs):
    scores, targets = (np.array(column) for column in zip(*pairs, strict=True))
    curve = precision_recall_curve(scores, targets)
    precision, recall, thresholds = sklearn_precision_recall_curve(targets, scores)
    np.testing.assert_array_equal(curve["threshold"], thresholds)
    np.testing.assert_allclose(curve["precision"], precision[:-1], rtol=1e-12)
    np.testing.assert_allclose(curve["recall"], recall[:-1], rtol=1e-12)
    assert curve["flagged"].tolist() == [(scores >= t).sum() for t in thresholds]


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
