"""Non-GPT baselines scored on the same splits as fine-tuning: majority class and TF-IDF."""

from collections.abc import Callable

import numpy as np
import pandas as pd
import torch

from gptclassifier.errors import ConfigError
from gptclassifier.evaluate import classification_metrics
from gptclassifier.prepare import SPLIT_NAMES

BASELINES = ("majority", "tfidf")


def baseline_metrics(
    name: str, splits: dict[str, pd.DataFrame], num_classes: int, seed: int = 123
) -> dict[str, dict]:
    """Fit the named baseline on the training split and return each split's metrics."""
    if name not in BASELINES:
        choices = ", ".join(BASELINES)
        raise ConfigError(f"unknown baseline {name!r}: choose one of {choices}")
    train = splits["train"]
    if name == "majority":
        predict = _majority(train["Label"].to_numpy(), num_classes)
    else:
        predict = _tfidf(train, seed)
    return {
        split: classification_metrics(
            _confusion_counts(
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


def _confusion_counts(true: np.ndarray, predicted: np.ndarray, num_classes: int) -> torch.Tensor:
    """Return counts of (true class, predicted class) as a long tensor, true classes in rows."""
    pairs = np.asarray(true, dtype=np.int64) * num_classes + np.asarray(predicted, dtype=np.int64)
    counts = np.bincount(pairs, minlength=num_classes**2).reshape(num_classes, num_classes)
    return torch.from_numpy(counts).long()
