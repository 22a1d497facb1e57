"""Checks of the code a learner writes in the lessons, with specific and friendly feedback."""

import contextlib
import functools
import io
from dataclasses import dataclass
from itertools import zip_longest

import pandas as pd
import torch
from torch import nn

from gptclassifier.evaluation.inference import classify_review
from gptclassifier.model.classifier import add_classification_head, set_trainable
from gptclassifier.model.gpt import GPTModel, model_config
from gptclassifier.model.tokenizer import PAD_TOKEN_ID
from gptclassifier.training.loop import (
    calc_accuracy_loader,
    calc_loss_batch,
    train_classifier_simple,
)

MARKS = {"missing": "…", "differs": "✗", "matches": "✓"}


@dataclass(frozen=True)
class Feedback:
    """What a check found: `status` is missing, differs or matches, and `message` says more."""

    status: str
    message: str

    @property
    def passed(self) -> bool:
        """Tell whether the learner's code matches the package's."""
        return self.status == "matches"

    def __repr__(self) -> str:
        return f"{MARKS[self.status]} {self.message}"


def _differs(message: str) -> Feedback:
    return Feedback("differs", message)


def _checks(name: str):
    """Make a check of what the learner wrote under `name`, called as check(namespace, ...).

    The check itself gets the learner's value; when there is none, the learner hears so.
    """

    def decorate(compare):
        @functools.wraps(compare)
        def check(namespace: dict, *reference) -> Feedback:
            if name not in namespace:
                return Feedback(
                    "missing",
                    f"`{name}` is not written yet: write it in the empty cell above, "
                    "or run the solution below (click the three dots to open it).",
                )
            return compare(namespace[name], *reference)

        return check

    return decorate


def _calling(function, *args, **kwargs):
    """Call the learner's function; return its result, or a Feedback naming what it raised."""
    try:
        return function(*args, **kwargs)
    except Exception as error:  # the learner's code may raise anything: say what, and go on
        return _differs(f"your function raised {type(error).__name__}: {error}")


@_checks("my_balanced")
def check_balanced(mine, expected: pd.DataFrame) -> Feedback:
    """Compare `my_balanced` with create_balanced_dataset's frame."""
    if not isinstance(mine, pd.DataFrame):
        return _differs(f"`my_balanced` is a {type(mine).__name__}, not a pandas DataFrame.")
    if len(mine) != len(expected):
        counts = mine["Label"].value_counts().to_dict() if "Label" in mine else {}
        return _differs(
            f"your frame has {len(mine)} rows {counts}; the chapter's has {len(expected)}: "
            "every spam message and as many ham messages."
        )
    if mine.equals(expected):
        return Feedback(
            "matches", f"{len(mine)} rows, the same in the same order as the package's."
        )
    if sorted(mine.index) == sorted(expected.index):
        if mine["Label"].iloc[0] != expected["Label"].iloc[0]:
            return _differs(
                f"your frame has the {mine['Label'].iloc[0]} first; the chapter concatenates the "
                f"{expected['Label'].iloc[0]} first."
            )
        return _differs("the same rows in another order: keep the order that sample draws.")
    return _differs(
        "your frame holds other ham messages than the chapter's: draw them with "
        "`.sample(num_spam, random_state=seed)` from the ham rows."
    )


@_checks("my_splits")
def check_split(mine, expected: tuple[pd.DataFrame, ...]) -> Feedback:
    """Compare `my_splits` with random_split's three frames."""
    if not (isinstance(mine, tuple | list) and len(mine) == 3):
        return _differs("`my_splits` should hold three frames: training, validation and test.")
    sizes, wanted = [len(part) for part in mine], [len(part) for part in expected]
    if sizes != wanted:
        return _differs(
            f"your parts have {sizes} rows; the chapter's have {wanted}: cut the shuffled frame "
            "at int(0.7 * n) and, after it, int(0.1 * n) more rows."
        )
    pairs = list(zip(mine, expected, strict=True))
    if all(part.equals(other) for part, other in pairs):
        return Feedback("matches", f"the same {wanted} rows, in the same order, as random_split.")
    if all(
        part.reset_index(drop=True).equals(other.reset_index(drop=True)) for part, other in pairs
    ):
        return _differs(
            "the right rows, but each keeps its old index: add `.reset_index(drop=True)`."
        )
    return _differs(
        "the right sizes but other rows: shuffle the whole frame first, with "
        "`.sample(frac=1, random_state=seed)`."
    )


@_checks("my_padded")
def check_padding(mine, dataset) -> Feedback:
    """Compare `my_padded` with the token ids that SpamDataset padded."""
    expected = dataset.encoded_texts
    if len(mine) != len(expected):
        return _differs(f"`my_padded` has {len(mine)} rows; the training set has {len(expected)}.")
    lengths = {len(row) for row in mine}
    if len(lengths) > 1:
        return _differs(
            f"your rows are {min(lengths)} to {max(lengths)} tokens long: pad every row "
            "to the length of the longest."
        )
    if lengths != {dataset.max_length}:
        return _differs(
            f"your rows have {lengths.pop()} tokens; the longest training message has "
            f"{dataset.max_length}."
        )
    for index, (row, wanted) in enumerate(zip(mine, expected, strict=True)):
        if list(row) != wanted:
            real = [token for token in wanted if token != PAD_TOKEN_ID]
            if list(row[: len(real)]) == real:
                return _differs(
                    f"row {index} is padded with {row[-1]}; the chapter pads with "
                    f"{PAD_TOKEN_ID}, the id of <|endoftext|>."
                )
            return _differs(f"row {index} starts with other ids than the dataset's: {row[:5]}…")
    return Feedback(
        "matches", f"{len(mine)} rows of {dataset.max_length} ids, as SpamDataset pads them."
    )


@_checks("my_head")
def check_head(mine, model) -> Feedback:
    """Compare `my_head` with the classifier's new output head."""
    head = model.out_head
    if not isinstance(mine, nn.Linear):
        return _differs(
            f"`my_head` is a {type(mine).__name__}; the chapter's head is a Linear layer."
        )
    if (mine.in_features, mine.out_features) != (head.in_features, head.out_features):
        return _differs(
            f"your layer maps {mine.in_features} inputs to {mine.out_features} outputs; the "
            f"head maps emb_dim = {head.in_features} inputs to {head.out_features} classes."
        )
    if torch.equal(mine.weight, head.weight) and torch.equal(mine.bias, head.bias):
        return Feedback("matches", f"{mine}, with the very same starting weights.")
    return _differs(
        "the right shape, other starting weights: call `torch.manual_seed(seed)` right before "
        "creating the layer."
    )


@_checks("my_positions")
def check_positions(mine, expected: torch.Tensor) -> Feedback:
    """Compare `my_positions` with the positions of each message's last real token."""
    mine = torch.as_tensor(mine)
    if mine.shape != expected.shape:
        return _differs(
            f"`my_positions` has shape {tuple(mine.shape)}; "
            f"one position per message is {tuple(expected.shape)}."
        )
    if torch.equal(mine, expected):
        return Feedback("matches", f"the last real token of each message: {mine.tolist()}.")
    if torch.equal(mine, expected + 1):
        return _differs("one too far: you counted the real tokens; subtract 1 to get an index.")
    return _differs(
        f"your positions {mine.tolist()}; the last real tokens are at {expected.tolist()}."
    )


@_checks("my_model")
def check_freezing(mine, reference: nn.Module) -> Feedback:
    """Compare which parameters of `my_model` train with those of the reference model."""
    trains = {name for name, param in mine.named_parameters() if param.requires_grad}
    wanted = {name for name, param in reference.named_parameters() if param.requires_grad}
    if trains == wanted:
        count = sum(param.numel() for param in mine.parameters() if param.requires_grad)
        return Feedback("matches", f"the same {count:,} parameters train as with set_trainable.")
    extra, missing = sorted(trains - wanted), sorted(wanted - trains)
    parts = [f"{len(extra)} should be frozen (e.g. {extra[0]})"] if extra else []
    parts += [f"{len(missing)} should train (e.g. {missing[0]})"] if missing else []
    return _differs("of your parameters, " + " and ".join(parts) + ".")


@_checks("my_calc_loss_batch")
def check_loss_batch(mine, inputs, targets, model, device) -> Feedback:
    """Compare `my_calc_loss_batch` with calc_loss_batch on one batch."""
    with torch.no_grad():
        loss = _calling(mine, inputs, targets, model, device)
        if isinstance(loss, Feedback):
            return loss
        expected = calc_loss_batch(inputs, targets, model, device)
    if not (isinstance(loss, torch.Tensor) and loss.numel() == 1):
        return _differs(
            f"your function returned {type(loss).__name__}; the loss is a one-number tensor."
        )
    if torch.allclose(loss.float(), expected):
        return Feedback("matches", f"loss {loss.item():.4f}, as calc_loss_batch computes it.")
    with torch.no_grad():
        first = calc_loss_batch(inputs, targets, model, device, pooling="first")
    if torch.allclose(loss.float(), first):
        return _differs("that is the loss of the first token: read the last, `logits[:, -1, :]`.")
    return _differs(f"your loss is {loss.item():.4f}; the chapter's is {expected.item():.4f}.")


@_checks("my_calc_accuracy_loader")
def check_accuracy_loader(mine, loader, model, device) -> Feedback:
    """Compare `my_calc_accuracy_loader` with calc_accuracy_loader, on all and on 1 batch."""
    for num_batches in (None, 1):
        accuracy = _calling(mine, loader, model, device, num_batches=num_batches)
        if isinstance(accuracy, Feedback):
            return accuracy
        expected = calc_accuracy_loader(loader, model, device, num_batches=num_batches)
        if not isinstance(accuracy, int | float) or accuracy > 1:
            return _differs(
                f"your function returned {accuracy!r}: return the share of correct "
                "predictions, a number from 0 to 1."
            )
        if abs(accuracy - expected) > 1e-9:
            batches = "all batches" if num_batches is None else "num_batches=1"
            return _differs(
                f"with {batches} yours is {accuracy:.2%}; the chapter's is {expected:.2%}."
            )
    return Feedback(
        "matches", f"{expected:.2%} on the first batch, as calc_accuracy_loader measures."
    )


@_checks("my_train_classifier_simple")
def check_training_loop(mine, train_loader, val_loader, device, settings) -> Feedback:
    """Run `my_train_classifier_simple` and the package's loop for a few steps and compare them.

    Both train the same small seeded classifier (gpt2-nano, its last block trainable), so that
    the check takes seconds whatever the lesson's model.
    """
    steps = FirstBatches(train_loader, 3)
    runs = []
    for loop in (mine, train_classifier_simple):
        printed = io.StringIO()
        # A seeded run of its own, which leaves the lesson's random draws as they were.
        with torch.random.fork_rng(devices=[]), contextlib.redirect_stdout(printed):
            trained = _small_classifier(settings.seed).to(device)
            torch.manual_seed(settings.seed)
            optimizer = torch.optim.AdamW(
                trained.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
            )
            result = _calling(loop, trained, steps, val_loader, optimizer, device, 2, 2, 1)
        if isinstance(result, Feedback):
            return result
        runs.append((result, printed.getvalue().splitlines()))
    (result, lines), (expected, wanted) = runs
    if not (isinstance(result, tuple | list) and len(result) == 5):
        return _differs(
            "return five values: train_losses, val_losses, train_accs, val_accs, examples_seen."
        )
    names = ("train_losses", "val_losses", "train_accs", "val_accs")
    for name, values, reference in zip(names, result, expected, strict=False):
        if len(values) != len(reference):
            return _differs(
                f"your {name} has {len(values)} values; "
                f"the chapter's loop measures {len(reference)}."
            )
        if any(abs(a - b) > 1e-6 for a, b in zip(values, reference, strict=True)):
            return _differs(
                f"your {name} are {_rounded(values)}; the chapter's are {_rounded(reference)}."
            )
    if result[4] != expected.examples_seen:
        return _differs(
            f"you counted {result[4]} examples seen; "
            f"the chapter's loop counts {expected.examples_seen}."
        )
    for number, (line, chapter) in enumerate(zip_longest(lines, wanted, fillvalue=""), 1):
        if line != chapter:
            return _differs(
                f"your printed line {number} is {line!r}; the chapter prints {chapter!r}."
            )
    return Feedback(
        "matches",
        f"3 steps of 2 epochs: the same {len(lines)} lines and values as the package's loop.",
    )


def _small_classifier(seed: int) -> nn.Module:
    """Return a seeded gpt2-nano classifier whose last block, final norm and head train."""
    torch.manual_seed(seed)
    model = add_classification_head(GPTModel(model_config("gpt2-nano")), 2, seed)
    return set_trainable(model, "last_block")


def _rounded(values) -> list[float]:
    return [round(value, 4) for value in values]


@_checks("my_classify_review")
def check_classify_review(mine, texts, model, tokenizer, device, max_length) -> Feedback:
    """Compare `my_classify_review` with the package's classify_review on a few messages."""
    for text in texts:
        label = _calling(mine, text, model, tokenizer, device, max_length=max_length)
        if isinstance(label, Feedback):
            return label
        expected = classify_review(text, model, tokenizer, device, max_length=max_length)
        wanted = "spam" if expected.label == "spam" else "not spam"
        if label != wanted:
            return _differs(
                f"for {text[:40]!r}… yours says {label!r}; the chapter's says {wanted!r}."
            )
    return Feedback("matches", f"the same labels as classify_review for {len(texts)} messages.")


class FirstBatches:
    """The first `count` batches of a loader, as a loader: a short run of a training loop."""

    def __init__(self, loader, count: int):
        self.loader, self.count = loader, min(count, len(loader))

    def __iter__(self):
        for index, batch in enumerate(self.loader):
            if index == self.count:
                return
            yield batch

    def __len__(self) -> int:
        return self.count
