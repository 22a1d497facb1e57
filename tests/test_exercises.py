"""The checks of the learner's code: a right answer matches, each usual mistake gets its hint."""

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from gptclassifier.data.loaders import create_data_loaders, create_datasets
from gptclassifier.data.splits import create_balanced_dataset, random_split
from gptclassifier.lessons import exercises
from gptclassifier.settings import get_profile
from gptclassifier.training.loop import (
    calc_accuracy_loader,
    calc_loss_batch,
    train_classifier,
    train_classifier_simple,
)


def test_feedback_reads_as_a_mark_and_a_sentence():
    assert repr(exercises.Feedback("matches", "same rows.")) == "✓ same rows."
    assert not exercises.Feedback("differs", "no.").passed


@pytest.mark.parametrize(
    "check",
    [
        exercises.check_balanced,
        exercises.check_split,
        exercises.check_padding,
        exercises.check_head,
        exercises.check_positions,
        exercises.check_freezing,
        exercises.check_loss_batch,
        exercises.check_accuracy_loader,
        exercises.check_training_loop,
        exercises.check_classify_review,
    ],
)
def test_every_check_says_when_nothing_is_written_yet(check):
    feedback = check({}, *[None] * (check.__code__.co_argcount - 1))
    assert feedback.status == "missing"
    assert "not written yet" in feedback.message and "solution below" in feedback.message


def _balanced(df, seed, spam_first=False, draw_seed=None):
    spam = df[df["Label"] == "spam"]
    ham = df[df["Label"] == "ham"].sample(len(spam), random_state=draw_seed or seed)
    return pd.concat([spam, ham] if spam_first else [ham, spam])


def test_check_balanced(smoke_data):
    df = smoke_data.frame
    expected = create_balanced_dataset(df, seed=123)

    def check(value):
        return exercises.check_balanced({"my_balanced": value}, expected)

    assert check(_balanced(df, 123)).passed
    assert "has the spam first" in check(_balanced(df, 123, spam_first=True)).message
    assert "other ham messages" in check(_balanced(df, 123, draw_seed=7)).message
    assert "rows" in check(df).message and check(df).status == "differs"
    assert "not a pandas DataFrame" in check([1, 2]).message


def test_check_split(smoke_data):
    frame = create_balanced_dataset(smoke_data.frame)
    expected = random_split(frame, 0.7, 0.1)
    shuffled = frame.sample(frac=1, random_state=123)
    n = len(frame)
    cut = int(n * 0.7), int(n * 0.7) + int(n * 0.1)

    def parts(rows):
        return rows[: cut[0]], rows[cut[0] : cut[1]], rows[cut[1] :]

    def check(value):
        return exercises.check_split({"my_splits": value}, expected)

    assert check(parts(shuffled.reset_index(drop=True))).passed
    assert "reset_index" in check(parts(shuffled)).message
    assert "shuffle the whole frame" in check(parts(frame.reset_index(drop=True))).message
    assert "rows; the chapter's have" in check(parts(shuffled.iloc[:-3])).message
    assert "three frames" in check(expected[:2]).message


def test_check_padding(smoke_splits, tokenizer):
    dataset = create_datasets(smoke_splits, tokenizer, 1024)["train"]
    rows = [tokenizer.encode(text) for text in smoke_splits["train"]["Text"]]
    longest = max(map(len, rows))

    def check(value):
        return exercises.check_padding({"my_padded": value}, dataset)

    assert check([ids + [50256] * (longest - len(ids)) for ids in rows]).passed
    assert "padded with 0" in check([ids + [0] * (longest - len(ids)) for ids in rows]).message
    assert "pad every row" in check(rows).message
    assert (
        "longest training message has"
        in check([ids + [50256] * (longest + 2 - len(ids)) for ids in rows]).message
    )
    assert "rows; the training set has" in check(rows[:3]).message


def test_check_head(nano_classifier):
    model = nano_classifier()

    def check(value):
        return exercises.check_head({"my_head": value}, model)

    torch.manual_seed(123)
    assert check(torch.nn.Linear(48, 2)).passed
    assert "torch.manual_seed" in check(torch.nn.Linear(48, 2)).message
    assert "48 inputs to 2 classes" in check(torch.nn.Linear(48, 3)).message
    assert "Linear layer" in check(torch.nn.ReLU()).message


def test_check_positions():
    expected = torch.tensor([3, 0, 5])

    def check(value):
        return exercises.check_positions({"my_positions": value}, expected)

    assert check([3, 0, 5]).passed
    assert "one too far" in check(expected + 1).message
    assert "last real tokens are at" in check(expected - 1).message
    assert "shape" in check(torch.tensor([3, 0])).message


def test_check_freezing(nano_classifier):
    reference = nano_classifier("last_block")

    def check(value):
        return exercises.check_freezing({"my_model": value}, reference)

    assert check(nano_classifier("last_block")).passed
    assert (
        "should be frozen (e.g. trf_blocks.1" in check(nano_classifier("last_two_blocks")).message
    )
    only_head = check(nano_classifier("last_layer")).message
    assert "should train" in only_head and "should be frozen" not in only_head


@pytest.fixture
def smoke_loaders(smoke_splits, tokenizer):
    datasets = create_datasets(smoke_splits, tokenizer, 1024)
    return create_data_loaders(datasets, batch_size=8)


def test_check_loss_batch(nano_classifier, smoke_loaders):
    model = nano_classifier()
    inputs, targets = next(iter(smoke_loaders["validation"]))

    def check(function):
        return exercises.check_loss_batch(
            {"my_calc_loss_batch": function}, inputs, targets, model, "cpu"
        )

    def last(input_batch, target_batch, model, device):
        return F.cross_entropy(model(input_batch)[:, -1, :], target_batch)

    def first(input_batch, target_batch, model, device):
        return F.cross_entropy(model(input_batch)[:, 0, :], target_batch)

    def every_token(input_batch, target_batch, model, device):
        return F.cross_entropy(model(input_batch), target_batch)

    assert check(last).passed
    assert "loss of the first token" in check(first).message
    assert "your function raised" in check(every_token).message
    assert "one-number tensor" in check(lambda *args: 0.5).message


def test_check_accuracy_loader(nano_classifier, smoke_loaders):
    model = nano_classifier()
    loader = smoke_loaders["test"]

    def check(function):
        return exercises.check_accuracy_loader(
            {"my_calc_accuracy_loader": function}, loader, model, "cpu"
        )

    def counts(data_loader, model, device, num_batches=None):
        return calc_accuracy_loader(data_loader, model, device, num_batches) * 8

    def every_batch(data_loader, model, device, num_batches=None):
        return calc_accuracy_loader(data_loader, model, device)

    assert check(calc_accuracy_loader).passed
    assert "a number from 0 to 1" in check(counts).message
    assert "with num_batches=1 yours is" in check(every_batch).message


def test_check_training_loop(smoke_loaders):
    settings = get_profile("smoke").training

    def check(function):
        return exercises.check_training_loop(
            {"my_train_classifier_simple": function},
            smoke_loaders["train"],
            smoke_loaders["validation"],
            "cpu",
            settings,
        )

    def chapter(*args):
        return tuple(train_classifier_simple(*args))

    def silent(*args):
        return tuple(train_classifier(*args, progress=False))

    def four_values(*args):
        return chapter(*args)[:4]

    before = torch.random.get_rng_state()
    assert check(chapter).passed
    assert torch.equal(torch.random.get_rng_state(), before), "the check leaves the draws alone"
    assert "your printed line 1 is ''" in check(silent).message
    assert "return five values" in check(four_values).message


def test_check_training_loop_names_the_first_list_that_differs(smoke_loaders):
    settings = get_profile("smoke").training

    def without_zero_grad(model, train_loader, val_loader, optimizer, *args):
        optimizer.zero_grad = lambda set_to_none=True: None  # gradients pile up
        return tuple(train_classifier_simple(model, train_loader, val_loader, optimizer, *args))

    feedback = exercises.check_training_loop(
        {"my_train_classifier_simple": without_zero_grad},
        smoke_loaders["train"],
        smoke_loaders["validation"],
        "cpu",
        settings,
    )
    assert feedback.status == "differs" and "train_losses are" in feedback.message


def test_check_classify_review(nano_classifier, tokenizer):
    model = nano_classifier()
    texts = ["You are a winner, claim your prize now!", "See you at dinner tonight?"]

    def check(function):
        return exercises.check_classify_review(
            {"my_classify_review": function}, texts, model, tokenizer, "cpu", 20
        )

    def book(text, model, tokenizer, device, max_length=None, pad_token_id=50256):
        ids = tokenizer.encode(text)[:max_length]
        ids += [pad_token_id] * (max_length - len(ids))
        with torch.no_grad():
            logits = model(torch.tensor([ids]))[:, -1, :]
        return "spam" if logits.argmax(dim=-1).item() == 1 else "not spam"

    def inverted(*args, **kwargs):
        return {"spam": "not spam", "not spam": "spam"}[book(*args, **kwargs)]

    assert check(book).passed
    assert "yours says" in check(inverted).message


def test_first_batches_stops_after_count(smoke_loaders):
    loader = smoke_loaders["train"]
    assert (
        len(exercises.FirstBatches(loader, 2)) == len(list(exercises.FirstBatches(loader, 2))) == 2
    )
    assert len(exercises.FirstBatches(loader, 10_000)) == len(loader)


def test_check_loss_batch_uses_the_package_loss(nano_classifier, smoke_loaders):
    model = nano_classifier()
    inputs, targets = next(iter(smoke_loaders["validation"]))
    with torch.no_grad():
        expected = calc_loss_batch(inputs, targets, model, "cpu").item()
    feedback = exercises.check_loss_batch(
        {"my_calc_loss_batch": lambda *args: torch.tensor(expected + 0.5)},
        inputs,
        targets,
        model,
        "cpu",
    )
    assert f"the chapter's is {expected:.4f}" in feedback.message
