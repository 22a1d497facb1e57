"""Using a fine-tuned classifier: new messages, and a saved run's metrics and predictions."""

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from gptclassifier.data.loaders import SpamDataset, evaluation_loader
from gptclassifier.errors import DataError
from gptclassifier.evaluation.metrics import (
    class_probabilities,
    classification_metrics,
    confusion_matrix,
)
from gptclassifier.model.tokenizer import PAD_TOKEN_ID, get_tokenizer
from gptclassifier.progress import progress_bar, ticking
from gptclassifier.runs import load_run, run_settings
from gptclassifier.training.device import choose_device
from gptclassifier.training.loop import evaluating
from gptclassifier.training.runners import classifier_logits, classifier_runner, context_length


@dataclass(frozen=True)
class Prediction:
    """A message's predicted class and the model's probability for it."""

    label: str
    probability: float


def text_probabilities(
    texts: Sequence[str],
    model,
    tokenizer,
    device,
    max_length: int | None = None,
    pad_token_id: int = PAD_TOKEN_ID,
    pooling: str = "last",
    batch_size: int = 32,
) -> torch.Tensor:
    """Return new messages' class probabilities, a row each, prepared as training messages were.

    With `last` or `first` pooling each message is padded to `max_length` like the training
    set; `flexible` pooling needs no padding beyond the longest message of the batch.
    """
    longest = context_length(model)
    limit = min(max_length or longest, longest)
    encoded = []
    for text in texts:
        if not text.strip():
            raise DataError("cannot classify an empty message")
        ids = tokenizer.encode(text, disallowed_special=())
        if len(ids) > limit:
            warnings.warn(
                f"a message of {len(ids)} tokens is cut to the first {limit}", stacklevel=3
            )
        encoded.append(ids[:limit])
    if not encoded:
        raise DataError("no messages to classify")
    trimmed = pooling == "flexible" or max_length is None
    order = list(range(len(encoded)))
    if trimmed:  # each batch is padded to its longest message: batch similar lengths together
        order.sort(key=lambda i: len(encoded[i]))
    rows = []
    for start in range(0, len(encoded), batch_size):
        chunk = [encoded[i] for i in order[start : start + batch_size]]
        length = max(map(len, chunk)) if trimmed else limit
        batch = torch.tensor([ids + [pad_token_id] * (length - len(ids)) for ids in chunk])
        with evaluating(model):
            logits = classifier_logits(model, batch.to(device), pooling, pad_token_id)
        rows.append(torch.softmax(logits.float(), dim=-1).cpu())
    probabilities = torch.empty(len(encoded), rows[0].shape[1])
    probabilities[order] = torch.cat(rows)  # back in the order the messages came
    return probabilities


def classify_texts(
    texts: Sequence[str],
    model,
    tokenizer,
    device,
    classes: Sequence[str] = ("ham", "spam"),
    **options,
) -> list[Prediction]:
    """Classify new messages: each one's likeliest class; options as for text_probabilities."""
    return predictions_of(text_probabilities(texts, model, tokenizer, device, **options), classes)


def predictions_of(probabilities: torch.Tensor, classes: Sequence[str]) -> list[Prediction]:
    """Return each row's likeliest class and its probability."""
    return [
        Prediction(classes[index], row[index].item())
        for row, index in zip(probabilities, probabilities.argmax(dim=-1).tolist(), strict=True)
    ]


def classify_text(text: str, model, tokenizer, device, **options) -> Prediction:
    """Classify one new message; see classify_texts for the options."""
    return classify_texts([text], model, tokenizer, device, **options)[0]


classify_review = classify_text  # the name section 6.8 of the book gives it


def load_classifier(run_dir: Path, device: str = "auto") -> tuple[nn.Module, dict, torch.device]:
    """Return a saved run's model wrapped as its training computed, its configuration, device."""
    device = choose_device(device)
    model, config = load_run(run_dir, device)
    return classifier_runner(model, run_settings(config), config["precision"]), config, device


def _load_on_split(run_dir: Path, split: str, device: str, progress: bool):
    """Return a run's model wrapped as training computed, on a split it has already seen.

    Also returns the configuration, the device, the split's frame and a loader batched as
    training evaluated. The frozen blocks run over the split ahead, in batches of similar
    length, as training's cache did.
    """
    device = choose_device(device)
    model, config = load_run(run_dir, device)
    split_file = Path(run_dir) / "data" / f"{split}.csv"
    if not split_file.is_file():
        raise DataError(f"{split_file}: the run has no {split} split")
    frame = pd.read_csv(split_file, keep_default_na=False)
    dataset = SpamDataset(frame, get_tokenizer(), config["max_length"])
    settings = run_settings(config)
    loader = evaluation_loader(dataset, settings.batch_size, settings.trims_padding)
    runner = classifier_runner(model, settings, config["precision"], [dataset], progress)
    return runner, config, device, frame, loader


def evaluate_run(
    run_dir: Path, split: str = "test", device: str = "auto", progress: bool = False
) -> dict:
    """Return the metrics of a saved run on one of its splits, computed as training did."""
    runner, config, device, _, loader = _load_on_split(run_dir, split, device, progress)
    with progress_bar(len(loader), f"evaluating {split}", progress, "batch") as bar:
        counts = confusion_matrix(
            runner, ticking(loader, bar), device, len(config["classes"]), config["pooling"]
        )
    return classification_metrics(counts)


def split_predictions(run_dir: Path, split: str = "test", device: str = "auto") -> pd.DataFrame:
    """Return a run's split: text, true and predicted label, and P(class) of every class.

    The probabilities are computed as training computed them (see load_classifier).
    """
    runner, config, device, frame, loader = _load_on_split(run_dir, split, device, False)
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


def probabilities_with_run(
    run_dir: Path, texts: Sequence[str], device: str = "auto"
) -> tuple[list[str], torch.Tensor]:
    """Return a saved run's classes and new messages' probabilities, computed as it trained."""
    runner, config, device = load_classifier(run_dir, device)
    probabilities = text_probabilities(
        texts, runner, get_tokenizer(), device,
        max_length=config["max_length"], pooling=config["pooling"],
    )  # fmt: skip
    return config["classes"], probabilities


def classify_with_run(
    run_dir: Path, texts: Sequence[str], device: str = "auto"
) -> list[Prediction]:
    """Classify new messages with a saved run, prepared and computed as its training was."""
    classes, probabilities = probabilities_with_run(run_dir, texts, device)
    return predictions_of(probabilities, classes)
