"""Losses, accuracy, evaluation mode and the training loop of sections 6.6 and 6.7."""

import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from gptclassifier.data.loaders import create_data_loaders, create_datasets
from gptclassifier.model.gpt import model_config
from gptclassifier.progress import silent
from gptclassifier.training.loop import (
    History,
    calc_accuracy_loader,
    calc_loss_batch,
    calc_loss_loader,
    evaluating,
    train_classifier,
    train_classifier_simple,
)

PAD = 50256
CPU = torch.device("cpu")
SMOKE = {"lr": 1e-3, "batch_size": 8, "num_epochs": 5, "eval_freq": 5, "eval_iter": 2}


class TokenParity(nn.Module):
    """A stub classifier: at every position, class 1 when the token id is odd, else class 0."""

    def forward(self, input_batch: torch.Tensor) -> torch.Tensor:
        odd = (input_batch % 2).float()
        return torch.stack([1 - odd, odd], dim=-1)


# --- losses and accuracy ------------------------------------------------------------------


@pytest.mark.parametrize("pooling", ["last", "first", "flexible", "mean"])
def test_calc_loss_batch_is_cross_entropy_of_the_pooled_logits(nano_classifier, pooling):
    model = nano_classifier()
    inputs = torch.tensor([[5, 6, 7, PAD, PAD], [8, 9, 10, 11, 12], [13, PAD, PAD, PAD, PAD]])
    targets = torch.tensor([1, 0, 1])
    with torch.no_grad():
        logits = model(inputs)
        if pooling == "mean":
            manual = torch.stack([logits[row].sum(dim=0) / 5 for row in range(3)])
        else:
            position = {"last": [4, 4, 4], "first": [0, 0, 0], "flexible": [2, 4, 0]}[pooling]
            manual = torch.stack([logits[row, pos] for row, pos in enumerate(position)])
        expected = F.cross_entropy(manual, targets)
        loss = calc_loss_batch(inputs, targets, model, CPU, pooling)
    torch.testing.assert_close(loss, expected)


def test_ignore_index_leaves_out_the_messages_of_that_class(nano_classifier):
    model = nano_classifier()
    inputs = torch.tensor([[5, 6, 7, PAD], [8, 9, 10, 11], [13, PAD, PAD, PAD]])
    targets = torch.tensor([1, 0, 1])
    with torch.no_grad():
        last = model(inputs)[:, -1]
        # By hand: the mean of -log softmax over the class-1 messages alone (rows 0 and 2).
        by_hand = -torch.log_softmax(last[[0, 2]], dim=-1)[:, 1].mean()
        skipping_ham = calc_loss_batch(inputs, targets, model, CPU, "last", ignore_index=0)
        # The book's experiment: the padding id is no class, so nothing is left out.
        padding = calc_loss_batch(inputs, targets, model, CPU, "last", ignore_index=PAD)
    torch.testing.assert_close(skipping_ham, by_hand)
    assert torch.equal(padding, calc_loss_batch(inputs, targets, model, CPU, "last"))


def parity_loader(batch_size: int = 4) -> DataLoader:
    """Return 10 messages of 3 tokens with labels that the TokenParity stub half gets right."""
    inputs = torch.arange(30).view(10, 3)  # last tokens 2, 5, 8, ... alternate even and odd
    targets = torch.tensor([0, 0, 1, 1, 0, 1, 1, 1, 0, 0])
    return DataLoader(TensorDataset(inputs, targets), batch_size=batch_size)


def manual_accuracy(loader, num_batches=None) -> float:
    """Count by hand how many messages TokenParity classifies correctly with `last` pooling."""
    correct = total = 0
    for index, (inputs, targets) in enumerate(loader):
        if num_batches is not None and index >= num_batches:
            break
        for row, target in zip(inputs.tolist(), targets.tolist(), strict=True):
            correct += int(row[-1] % 2 == target)
            total += 1
    return correct / total


def test_calc_accuracy_loader_equals_a_manual_count():
    loader = parity_loader()
    accuracy = calc_accuracy_loader(loader, TokenParity(), CPU)
    assert accuracy == pytest.approx(manual_accuracy(loader))
    assert accuracy == pytest.approx(6 / 10)


@pytest.mark.parametrize("num_batches", [1, 2, 3, 10])
def test_calc_accuracy_loader_respects_num_batches(num_batches):
    loader = parity_loader()
    accuracy = calc_accuracy_loader(loader, TokenParity(), CPU, num_batches=num_batches)
    assert accuracy == pytest.approx(manual_accuracy(loader, num_batches))


def test_calc_loss_loader_averages_the_batch_losses(nano_classifier):
    model, loader = nano_classifier(), parity_loader()
    with torch.no_grad():
        losses = [F.cross_entropy(model(x)[:, -1, :], y).item() for x, y in loader]
    assert calc_loss_loader(loader, model, CPU) == pytest.approx(sum(losses) / 3)
    assert calc_loss_loader(loader, model, CPU, num_batches=2) == pytest.approx(sum(losses[:2]) / 2)


def test_calc_loss_loader_of_an_empty_loader_is_nan(nano_classifier):
    empty = DataLoader(TensorDataset(torch.zeros(0, 3, dtype=torch.long), torch.zeros(0)))
    assert math.isnan(calc_loss_loader(empty, nano_classifier(), CPU))
    assert math.isnan(calc_loss_loader(parity_loader(), nano_classifier(), CPU, num_batches=0))


# --- evaluating ---------------------------------------------------------------------------


def test_evaluating_disables_grad_inside_and_restores_train_mode(nano_classifier):
    model = nano_classifier().train()
    with evaluating(model):
        assert not model.training
        assert not any(module.training for module in model.modules())
        assert not torch.is_grad_enabled()
        assert not model(torch.tensor([[1, 2, 3]])).requires_grad
    assert model.training and all(module.training for module in model.modules())
    assert torch.is_grad_enabled()


def test_evaluating_keeps_eval_mode_and_restores_after_an_error(nano_classifier):
    model = nano_classifier().eval()
    with evaluating(model):
        pass
    assert not model.training
    model.train()
    with pytest.raises(RuntimeError), evaluating(model):
        raise RuntimeError("boom")
    assert model.training
    assert torch.is_grad_enabled()


# --- the training loop --------------------------------------------------------------------


def smoke_start(splits, tokenizer, nano_classifier):
    """Return the smoke profile's gpt2-nano classifier, loaders and optimizer, seeded."""
    config = model_config("gpt2-nano")
    datasets = create_datasets(splits, tokenizer, config["context_length"])
    loaders = create_data_loaders(datasets, SMOKE["batch_size"])
    model = nano_classifier("last_block")
    torch.manual_seed(123)
    optimizer = torch.optim.AdamW(model.parameters(), lr=SMOKE["lr"], weight_decay=0.1)
    return model, loaders, optimizer


def smoke_run(splits, tokenizer, nano_classifier, on_update=None, log=silent):
    """Fine-tune gpt2-nano on the practice data with the smoke profile's settings."""
    model, loaders, optimizer = smoke_start(splits, tokenizer, nano_classifier)
    history = train_classifier(
        model, loaders["train"], loaders["validation"], optimizer, CPU,
        SMOKE["num_epochs"], SMOKE["eval_freq"], SMOKE["eval_iter"],
        progress=False, on_update=on_update, log=log,
    )  # fmt: skip
    return history, loaders


@pytest.fixture(scope="module")
def smoke_training(smoke_splits, tokenizer, nano_classifier):
    """Run the smoke fine-tuning once, recording the callbacks' calls."""
    updates, lines = [], []
    history, loaders = smoke_run(
        smoke_splits,
        tokenizer,
        nano_classifier,
        on_update=lambda h: updates.append((len(h.train_losses), len(h.train_accs))),
        log=lines.append,
    )
    return history, loaders, updates, lines


def test_practice_data_has_the_expected_training_size(smoke_splits):
    assert len(smoke_splits["train"]) == 336  # int(0.7 * 2 * 240): 70% of the balanced messages
    assert set(smoke_splits["train"]["Label"]) == {0, 1}


def test_training_makes_the_loss_fall(smoke_training):
    history = smoke_training[0]
    assert all(math.isfinite(loss) for loss in history.train_losses + history.val_losses)
    assert sum(history.train_losses[-3:]) / 3 < 0.85 * history.train_losses[0]


def test_history_has_the_chapters_bookkeeping(smoke_training):
    history, loaders, _, _ = smoke_training
    batches = len(loaders["train"])
    assert batches == 336 // 8
    steps = SMOKE["num_epochs"] * batches
    assert isinstance(history, History)
    assert history.num_epochs == 5
    assert history.eval_steps == list(range(0, steps, SMOKE["eval_freq"]))
    assert len(history.train_losses) == len(history.val_losses) == len(history.eval_steps)
    assert history.examples_seen == SMOKE["num_epochs"] * batches * SMOKE["batch_size"]
    assert len(history.train_accs) == len(history.val_accs) == SMOKE["num_epochs"]
    assert all(0.0 <= acc <= 1.0 for acc in history.train_accs + history.val_accs)
    assert history.seconds > 0
    assert history.as_dict()["eval_steps"] == history.eval_steps


def test_on_update_is_called_after_every_measurement(smoke_training):
    history, _, updates, _ = smoke_training
    assert len(updates) == len(history.eval_steps) + history.num_epochs
    assert updates[0] == (1, 0)  # the first loss measurement, at step 0
    assert updates[-1] == (len(history.train_losses), history.num_epochs)


def test_log_lines_follow_the_chapters_format(smoke_training):
    history, _, _, lines = smoke_training
    loss_line = re.compile(r"Ep (\d+) \(Step (\d{6})\): Train loss \d+\.\d{3}, Val loss \d+\.\d{3}")
    accuracy_line = re.compile(
        r"Training accuracy: \d+\.\d{2}% \| Validation accuracy: \d+\.\d{2}%"
    )
    loss_lines = [line for line in lines if loss_line.fullmatch(line)]
    accuracy_lines = [line for line in lines if accuracy_line.fullmatch(line)]
    assert len(loss_lines) + len(accuracy_lines) == len(lines)
    assert len(loss_lines) == len(history.eval_steps)
    assert len(accuracy_lines) == history.num_epochs
    assert lines[0] == (
        f"Ep 1 (Step 000000): Train loss {history.train_losses[0]:.3f}, "
        f"Val loss {history.val_losses[0]:.3f}"
    )
    assert [int(loss_line.fullmatch(line)[2]) for line in loss_lines] == history.eval_steps
    last_accuracy = accuracy_lines[-1]
    assert f"Training accuracy: {history.train_accs[-1] * 100:.2f}%" in last_accuracy
    assert f"Validation accuracy: {history.val_accs[-1] * 100:.2f}%" in last_accuracy
    assert lines[-1] == last_accuracy


class Recorder(nn.Module):
    """Run a model and record every batch it is given, and whether it was training."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.seen: list[tuple[bool, list]] = []

    def forward(self, input_batch: torch.Tensor) -> torch.Tensor:
        self.seen.append((self.training, input_batch.tolist()))
        return self.model(input_batch)


def books_script(datasets, model: nn.Module, num_epochs: int, eval_freq: int, eval_iter: int):
    """Section 6.7's train_classifier_simple and its loaders, written out as the book has them."""
    train_loader = DataLoader(datasets["train"], batch_size=8, shuffle=True, drop_last=True)
    val_loader = DataLoader(datasets["validation"], batch_size=8, shuffle=False)

    def first_batches(loader):
        model.eval()
        with torch.no_grad():
            for i, (input_batch, _) in enumerate(loader):
                if i >= min(eval_iter, len(loader)):
                    break
                model(input_batch)

    torch.manual_seed(123)
    optimizer = torch.optim.AdamW(model.parameters(), lr=SMOKE["lr"], weight_decay=0.1)
    global_step = -1
    for _ in range(num_epochs):
        model.train()
        for input_batch, target_batch in train_loader:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(input_batch)[:, -1, :], target_batch)
            loss.backward()
            optimizer.step()
            global_step += 1
            if global_step % eval_freq == 0:
                first_batches(train_loader)  # evaluate_model: the training loss, then
                first_batches(val_loader)  # the validation loss
                model.train()
        first_batches(train_loader)  # calc_accuracy_loader on each loader
        first_batches(val_loader)


def test_the_loop_sees_the_books_batches_in_the_books_order(
    smoke_splits, tokenizer, nano_classifier
):
    datasets = create_datasets(smoke_splits, tokenizer, 1024)
    book = Recorder(nano_classifier("last_block"))
    books_script(datasets, book, 2, SMOKE["eval_freq"], SMOKE["eval_iter"])

    ours = Recorder(nano_classifier("last_block"))
    loaders = create_data_loaders(datasets, SMOKE["batch_size"])
    torch.manual_seed(123)
    optimizer = torch.optim.AdamW(ours.parameters(), lr=SMOKE["lr"], weight_decay=0.1)
    train_classifier(
        ours, loaders["train"], loaders["validation"], optimizer, CPU, 2,
        SMOKE["eval_freq"], SMOKE["eval_iter"], progress=False,
    )  # fmt: skip
    assert len(ours.seen) == len(book.seen)
    training = [batch for is_training, batch in book.seen if is_training]
    assert len(training) == 2 * (len(datasets["train"]) // 8)
    assert ours.seen == book.seen  # every batch, training and evaluation, in the same order


def test_two_runs_with_the_same_seeds_give_identical_histories(
    smoke_splits, tokenizer, nano_classifier, smoke_training
):
    again, _ = smoke_run(smoke_splits, tokenizer, nano_classifier)
    first = {**smoke_training[0].as_dict(), "seconds": None}
    assert {**again.as_dict(), "seconds": None} == first


def test_the_books_name_prints_its_lines_and_unpacks_into_its_five_values(
    smoke_splits, tokenizer, nano_classifier, smoke_training, capsys
):
    model, loaders, optimizer = smoke_start(smoke_splits, tokenizer, nano_classifier)
    train_losses, val_losses, train_accs, val_accs, examples_seen = train_classifier_simple(
        model, loaders["train"], loaders["validation"], optimizer, CPU,
        num_epochs=SMOKE["num_epochs"], eval_freq=SMOKE["eval_freq"], eval_iter=SMOKE["eval_iter"],
    )  # fmt: skip
    history, _, _, lines = smoke_training
    assert capsys.readouterr().out.splitlines() == lines
    assert (train_losses, val_losses) == (history.train_losses, history.val_losses)
    assert (train_accs, val_accs) == (history.train_accs, history.val_accs)
    assert examples_seen == history.examples_seen
