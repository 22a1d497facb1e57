"""Non-GPT baselines scored on the same splits as fine-tuning: majority class and TF-IDF."""

from collections.abc import Callable

import numpy as np
import pandas as pd

from gptclassifier.data.splits import SPLIT_NAMES
from gptclassifier.errors import check_choice
from gptclassifier.evaluation.metrics import classification_metrics, confusion_counts

BASELINES = ("majority", "tfidf")


def baseline_metrics(
    name: str, splits: dict[str, pd.DataFrame], num_classes: int, seed: int = 123
) -> dict[str, dict]:
    """Fit the named baseline on the training split and return each split's metrics."""
    check_choice("baseline", name, BASELINES)
    train = splits["train"]
    if name == "majority":
        predict = _majority(train["Label"].to_numpy(), num_classes)
    else:
        predict = _tfidf(train, seed)
    return {
        split: classification_metrics(
            confusion_counts(
                splits[split]["Label"].to_numpy(), predict(splits[split]["Text"]), num_classes
            )
        )
        for split in SPLIT_NAMES
    }


def _majority(labels: np.ndarray, num_classes: int) -> Callable[[pd.Series], np.ndarray]:
    """Return a predictor of the most frequent training class (the lowest index on a tie)."""
    majority = np.bincount(labels, minlength=num_classes).argmax()
    return lambda texts: np.full(len(texts), majority)


def _tfidf(train: pd.DataFrame, seed: int) -> Callable[[pd.Series], np.ndarray]:
    """Return a predictor: logistic regression on TF-IDF features fitted to the training texts."""
    # Imported here: scikit-learn takes about a second to import and most commands never need it.
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = TfidfVectorizer()
    model = LogisticRegression(max_iter=1000, random_state=seed)
    model.fit(vectorizer.fit_transform(train["Text"]), train["Label"])
    return lambda texts: model.predict(vectorizer.transform(texts))
