"""The majority-class and TF-IDF baselines, checked by hand and against scikit-learn's own."""

import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.dummy import DummyClassifier
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, confusion_matrix
from sklearn.pipeline import make_pipeline

from gptclassifier.data.sms import load_data
from gptclassifier.data.splits import SPLIT_NAMES, prepare_splits
from gptclassifier.errors import ConfigError
from gptclassifier.evaluation.baselines import BASELINES, baseline_metrics
from gptclassifier.evaluation.metrics import classification_metrics

HAM, SPAM = 0, 1


def frame(rows):
    """Return a split frame from (label, text) pairs."""
    return pd.DataFrame(rows, columns=["Label", "Text"])


def labelled(labels):
    """Return a split frame with the given labels and throwaway texts."""
    return frame([(label, f"message number {i}") for i, label in enumerate(labels)])


SEPARABLE = {
    "train": frame(
        [
            (SPAM, "win a prize now claim your cash"),
            (SPAM, "claim your free prize today"),
            (SPAM, "you win cash claim now"),
            (SPAM, "free prize win win claim"),
            (HAM, "see you at lunch"),
            (HAM, "are we still on for lunch"),
            (HAM, "see you at home tonight"),
            (HAM, "lunch at noon see you there"),
        ]
    ),
    "validation": frame([(SPAM, "claim your prize"), (HAM, "see you tonight")]),
    "test": frame(
        [
            (SPAM, "win cash now"),
            (SPAM, "free prize claim"),
            (HAM, "lunch at home"),
            (HAM, "see you there"),
        ]
    ),
}

NOISY = {
    "train": frame(
        [
            (SPAM, "win a prize now claim your cash"),
            (SPAM, "claim your free prize today"),
            (SPAM, "call now to win cash"),
            (SPAM, "free entry call now"),
            (SPAM, "see you claim prize at lunch"),
            (HAM, "see you at lunch"),
            (HAM, "call me when you are free"),
            (HAM, "are we still on for lunch today"),
            (HAM, "see you at home tonight"),
            (HAM, "i won the game now call me"),
        ]
    ),
    "validation": frame([(SPAM, "claim cash"), (HAM, "lunch now")]),
    "test": frame(
        [
            (SPAM, "win cash now"),
            (SPAM, "see you at lunch for a prize"),
            (SPAM, "are you free tonight"),
            (SPAM, "call me"),
            (HAM, "free lunch today"),
            (HAM, "see you at home"),
            (HAM, "claim your seat at lunch"),
            (HAM, "call now"),
        ]
    ),
}


@settings(max_examples=25)  # each example fits and scores three splits
@given(st.integers(2, 4), st.data())
def test_majority_matches_scikit_learns_most_frequent_dummy(num_classes, data):
    labels = st.lists(st.integers(0, num_classes - 1), min_size=1, max_size=12)
    splits = {name: labelled(data.draw(labels, label=name)) for name in SPLIT_NAMES}
    reference = DummyClassifier(strategy="most_frequent")
    reference.fit(splits["train"]["Text"], splits["train"]["Label"])
    metrics = baseline_metrics("majority", splits, num_classes)
    for name, split in splits.items():
        predicted = reference.predict(split["Text"])
        expected = confusion_matrix(split["Label"], predicted, labels=range(num_classes))
        assert metrics[name]["confusion_matrix"] == expected.tolist()
        assert metrics[name]["accuracy"] == pytest.approx(accuracy_score(split["Label"], predicted))


def test_majority_breaks_a_tie_towards_the_lowest_class():
    splits = {
        "train": labelled([SPAM, HAM, HAM, SPAM]),
        "validation": labelled([SPAM, SPAM, HAM]),
        "test": labelled([SPAM]),
    }
    metrics = baseline_metrics("majority", splits, num_classes=2)
    assert metrics["validation"]["confusion_matrix"] == [[1, 0], [2, 0]]
    assert metrics["test"]["confusion_matrix"] == [[0, 0], [1, 0]]
    assert metrics["test"]["accuracy"] == 0.0


def test_majority_with_three_classes_and_one_missing_from_training():
    splits = {
        "train": labelled([2, 0, 2, 2, 0]),
        "validation": labelled([1, 2]),
        "test": labelled([0, 1, 2, 2]),
    }
    metrics = baseline_metrics("majority", splits, num_classes=3)
    assert metrics["validation"]["confusion_matrix"] == [[0, 0, 0], [0, 0, 1], [0, 0, 1]]
    assert metrics["test"]["confusion_matrix"] == [[0, 0, 1], [0, 0, 1], [0, 0, 2]]
    assert metrics["test"]["accuracy"] == pytest.approx(2 / 4)


def test_tfidf_gets_a_separable_set_right():
    metrics = baseline_metrics("tfidf", SEPARABLE, num_classes=2)
    assert metrics["train"]["accuracy"] == 1.0
    assert metrics["test"]["accuracy"] == 1.0
    assert metrics["test"]["confusion_matrix"] == [[2, 0], [0, 2]]


def test_tfidf_matches_scikit_learns_own_pipeline_on_a_noisy_set():
    reference = make_pipeline(TfidfVectorizer(), LogisticRegression(max_iter=1000))
    reference.fit(NOISY["train"]["Text"], NOISY["train"]["Label"])
    metrics = baseline_metrics("tfidf", NOISY, num_classes=2)
    for name in SPLIT_NAMES:
        expected = confusion_matrix(
            NOISY[name]["Label"], reference.predict(NOISY[name]["Text"]), labels=[HAM, SPAM]
        )
        assert metrics[name]["confusion_matrix"] == expected.tolist()
    assert 0.0 < metrics["test"]["accuracy"] < 1.0  # the comparison is not trivially perfect


@pytest.mark.parametrize("name", BASELINES)
def test_metrics_have_classification_metrics_keys_for_every_split(name):
    expected_keys = classification_metrics(torch.eye(2, dtype=torch.long)).keys()
    metrics = baseline_metrics(name, SEPARABLE, num_classes=2)
    assert list(metrics) == list(SPLIT_NAMES)
    for split in SPLIT_NAMES:
        assert metrics[split].keys() == expected_keys
        assert metrics[split]["num_examples"] == len(SEPARABLE[split])


def test_an_unknown_baseline_names_the_choices():
    with pytest.raises(ConfigError, match="unknown baseline 'bayes'") as caught:
        baseline_metrics("bayes", SEPARABLE, num_classes=2)
    message = str(caught.value)
    assert "\n" not in message
    assert "majority" in message and "tfidf" in message


@pytest.mark.real_data
def test_baselines_on_the_real_sms_spam_collection(real_sms_file):
    data = load_data(real_sms_file, "book", "book")
    splits = prepare_splits(data, seed=123)
    num_classes = len(data.classes)
    tfidf = baseline_metrics("tfidf", splits, num_classes)
    assert tfidf["test"]["accuracy"] > 0.9

    majority = baseline_metrics("majority", splits, num_classes)
    train_counts = splits["train"]["Label"].value_counts()
    majority_class = min(train_counts.index[train_counts == train_counts.max()])
    for name in ("validation", "test"):
        share = (splits[name]["Label"] == majority_class).mean()
        assert majority[name]["accuracy"] == pytest.approx(share)
