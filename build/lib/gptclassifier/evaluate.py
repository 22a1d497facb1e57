"""Judging and using a fine-tuned classifier: metrics, thresholds, new messages."""

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from gptclassifier.dataset import SpamDataset, evaluation_loader
from gptclassifier.errors import DataError
from gptclassifier.fast import Autocast, speed_up
from gptclassifier.profiles import TrainSettings
from gptclassifier.runs import load_run
from gptclassifier.tokenizer import PAD_TOKEN_ID, get_tokenizer
from gptclassifier.train import choose_device, classifier_logits, evaluating


def _batch_logits(model, data_loader, device, pooling: str):
    """Yield each batch's class logits (on the CPU) and its true classes."""
    with evaluating(model):
        for inputs, targets in data_loader:
            yield classifier_logits(model, inputs.to(device), pooling).cpu(), targets


def confusion_matrix(model, data_loader, device, num_classes: int, pooling="last") -> torch.Tensor:
    """Return counts of (true class, predicted class) over every message of a loader."""
    counts = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for logits, targets in _batch_logits(model, data_loader, device, pooling):
        counts += torch.bincount(
            targets * num_classes + logits.argmax(dim=-1), minlength=num_classes**2
        ).view(num_classes, num_classes)
    return counts


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
    counts = counts.double()
    true_positives = counts.diagonal()
    precision = _safe_ratio(true_positives, counts.sum(dim=0))
    recall = _safe_ratio(true_positives, counts.sum(dim=1))
    f1 = _safe_ratio(2 * precision * recall, precision + recall)
    pick = (lambda per_class: per_class[1]) if len(counts) == 2 else (lambda t: t.mean())
    return {
        "accuracy": (true_positives.sum() / counts.sum()).item(),
        "precision": pick(precision).item(),
        "recall": pick(recall).item(),
        "f1": pick(f1).item(),
        "confusion_matrix": counts.long().tolist(),
        "num_examples": int(counts.sum().item()),
    }


def _safe_ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """Divide element-wise, giving 0 where the denominator is 0."""
    return torch.where(denominator > 0, numerator / denominator.clamp(min=1e-12), 0.0)


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
    flagged = (scores >= threshold).astype(np.int64)
    return torch.from_numpy(np.bincount(targets * 2 + flagged, minlength=4).reshape(2, 2))


def precision_recall_curve(scores, targets) -> pd.DataFrame:
    """Return precision and recall of calling scores >= t spam, for each distinct score t.

    Rows go from the lowest threshold (everything flagged) to the highest; these are the
    points of scikit-learn's function of the same name, less its final (recall 0) point.
    """
    scores, targets = _scores_and_targets(scores, targets)
    if not targets.any():
        raise ValueError("a precision-recall curve needs at least one spam message")
    order = np.argsort(-scores, kind="stable")
    ranked, true_positives = scores[order], np.cumsum(targets[order])
    flagged = np.arange(1, len(ranked) + 1)
    last_of_ties = np.append(ranked[1:] != ranked[:-1], True)
    curve = pd.DataFrame(
        {
            "threshold": ranked[last_of_ties],
            "flagged": flagged[last_of_ties],
            "precision": (true_positives / flagged)[last_of_ties],
            "recall": (true_positives / true_positives[-1])[last_of_ties],
        }
    )
    return curve.iloc[::-1].reset_index(drop=True)


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


@dataclass(frozen=True)
class Prediction:
    """A message's predicted class and the model's probability for it."""

    label: str
    probability: float


def classify_texts(
    texts: Sequence[str],
    model,
    tokenizer,
    device,
    max_length: int | None = None,
    pad_token_id: int = PAD_TOKEN_ID,
    pooling: str = "last",
    classes: Sequence[str] = ("ham", "spam"),
    batch_size: int = 32,
) -> list[Prediction]:
    """Classify new messages, prepared the way the training messages were.

    With `last` or `first` pooling each message is padded to `max_length` like the training
    set; `flexible` pooling needs no padding beyond the longest message of the batch.
    """
    context_length = model.pos_emb.num_embeddings
    limit = min(max_length or context_length, context_length)
    encoded = []
    for text in texts:
        if not text.strip():
            raise DataError("cannot classify an empty message")
        ids = tokenizer.encode(text, disallowed_special=())
        if len(ids) > limit:
            warnings.warn(
                f"a message of {len(ids)} tokens is cut to the first {limit}", stacklevel=2
            )
        encoded.append(ids[:limit])
    trimmed = pooling == "flexible" or max_length is None
    order = list(range(len(encoded)))
    if trimmed:  # each batch is padded to its longest message: batch similar lengths together
        order.sort(key=lambda i: len(encoded[i]))
    predictions: list[Prediction | None] = [None] * len(encoded)
    for start in range(0, len(encoded), batch_size):
        rows = order[start : start + batch_size]
        chunk = [encoded[i] for i in rows]
        length = max(map(len, chunk)) if trimmed else limit
        batch = torch.tensor([ids + [pad_token_id] * (length - len(ids)) for ids in chunk])
        with evaluating(model):
            logits = classifier_logits(model, batch.to(device), pooling, pad_token_id)
        probabilities = torch.softmax(logits.float(), dim=-1).cpu()
        for offset, index in enumerate(probabilities.argmax(dim=-1).tolist()):
            predictions[rows[offset]] = Prediction(
                classes[index], probabilities[offset, index].item()
            )
    return predictions


def classify_text(text: str, model, tokenizer, device, **options) -> Prediction:
    """Classify one new message; see classify_texts for the options."""
    return classify_texts([text], model, tokenizer, device, **options)[0]


classify_review = classify_text  # the name section 6.8 of the book gives it


def classifier_runner(model, settings: TrainSettings, precision: str, datasets=()) -> nn.Module:
    """Wrap a model the way a run computes with it: the fast loop's cache and the precision.

    `precision` is the resolved one (never `auto`); `datasets` fill the cache ahead.
    """
    if settings.loop == "fast":
        return speed_up(model, settings.pooling, precision, settings.compile, datasets)
    return Autocast(model) if precision == "bfloat16" else model


def load_classifier(run_dir: Path) -> tuple[nn.Module, dict, torch.device]:
    """Return a saved run's model wrapped as its training computed, its configuration, device."""
    device = choose_device()
    model, config = load_run(run_dir, device)
    return _as_trained(model, config), config, device


def _as_trained(model: nn.Module, config: dict, datasets=()) -> nn.Module:
    """Wrap a saved run's model as its training computed; `datasets` fill the cache ahead."""
    settings = TrainSettings(**config["training"])
    return classifier_runner(model, settings, config["precision"], datasets)


def _load_on_split(run_dir: Path, split: str):
    """Return a run's model wrapped as training computed, on a split it has already seen.

    Also returns the configuration, the device, the split's frame and a loader batched as
    training evaluated. The frozen blocks run over the split ahead, in batches of similar
    length, as training's cache did.
    """
    device = choose_device()
    model, config = load_run(run_dir, device)
    split_file = Path(run_dir) / "data" / f"{split}.csv"
    if not split_file.is_file():
        raise DataError(f"{split_file}: the run has no {split} split")
    frame = pd.read_csv(split_file, keep_default_na=False)
    dataset = SpamDataset(frame, get_tokenizer(), config["max_length"])
    settings = TrainSettings(**config["training"])
    loader = evaluation_loader(dataset, settings.batch_size, settings.trims_padding)
    return _as_trained(model, config, [dataset]), config, device, frame, loader


def evaluate_run(run_dir: Path, split: str = "test") -> dict:
    """Return the metrics of a saved run on one of its splits, computed as training did."""
    runner, config, device, _, loader = _load_on_split(run_dir, split)
    counts = confusion_matrix(runner, loader, device, len(config["classes"]), config["pooling"])
    return classification_metrics(counts)


def split_predictions(run_dir: Path, split: str = "test") -> pd.DataFrame:
    """Return a run's split: text, true and predicted label, and P(class) of every class.

    The probabilities are computed as training computed them (see load_classifier).
    """
    runner, config, device, frame, loader = _load_on_split(run_dir, split)
    probabilities, targets = class_probabilities(runner, loader, device, config["pooling"])
    classes = config["classes"]
    table = pd.DataFrame(
        {
            "text": frame["Text"],
            "label": [classes[index] for index in targets.tolist()],
            "predicted": [classes[index] for index in probabilities.argmax(dim=-1).tolist()],
        }
    )
    for index, name in enumerate(classes):
        table[f"P({name})"] = probabilities[:, index].numpy()
    return table


def classify_with_run(run_dir: Path, texts: Sequence[str]) -> list[Prediction]:
    """Classify new messages with a saved run, prepared and computed as its training was."""
    runner, config, device = load_classifier(run_dir)
    return classify_texts(
        texts,
        runner,
        get_tokenizer(),
        device,
        max_length=config["max_length"],
        pooling=config["pooling"],
        classes=config["classes"],
    )
