"""The chapter's training loop: losses, accuracy, the history, and evaluation mode."""

import contextlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from gptclassifier.progress import progress_bar, silent
from gptclassifier.training.runners import classifier_logits

IGNORE_NONE = -100  # cross_entropy's default ignore_index: no class is skipped


def calc_loss_batch(
    input_batch, target_batch, model, device, pooling="last", ignore_index=IGNORE_NONE
) -> torch.Tensor:
    """Return the cross-entropy loss of one batch; messages of class `ignore_index` do not count."""
    input_batch, target_batch = input_batch.to(device), target_batch.to(device)
    logits = classifier_logits(model, input_batch, pooling)
    return F.cross_entropy(logits, target_batch, ignore_index=ignore_index)


@contextlib.contextmanager
def evaluating(model: nn.Module):
    """Switch to evaluation mode without autograd, then restore the previous mode."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _batches(data_loader, num_batches: int | None):
    """Yield the first `num_batches` batches (all when None)."""
    limit = len(data_loader) if num_batches is None else min(num_batches, len(data_loader))
    for index, batch in enumerate(data_loader):
        if index >= limit:
            return
        yield batch


def calc_loss_loader(
    data_loader, model, device, num_batches=None, pooling="last", ignore_index=IGNORE_NONE
) -> float:
    """Return the mean loss over the first `num_batches` batches (NaN for an empty loader)."""
    with evaluating(model):
        losses = [
            calc_loss_batch(inputs, targets, model, device, pooling, ignore_index).item()
            for inputs, targets in _batches(data_loader, num_batches)
        ]
    return sum(losses) / len(losses) if losses else float("nan")


def calc_accuracy_loader(data_loader, model, device, num_batches=None, pooling="last") -> float:
    """Return the share of messages classified correctly in the first `num_batches` batches."""
    correct = total = 0
    with evaluating(model):
        for inputs, targets in _batches(data_loader, num_batches):
            logits = classifier_logits(model, inputs.to(device), pooling)
            correct += (logits.argmax(dim=-1).cpu() == targets).sum().item()
            total += len(targets)
    return correct / total if total else float("nan")


def evaluate_model(
    model, train_loader, val_loader, device, eval_iter, pooling="last", ignore_index=IGNORE_NONE
):
    """Return the training and validation loss over `eval_iter` batches each."""
    train_loss = calc_loss_loader(train_loader, model, device, eval_iter, pooling, ignore_index)
    val_loss = calc_loss_loader(val_loader, model, device, eval_iter, pooling, ignore_index)
    return train_loss, val_loss


@dataclass
class History:
    """What the training loop measured, in the chapter's terms."""

    num_epochs: int
    train_losses: list[float] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)
    train_accs: list[float] = field(default_factory=list)
    val_accs: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    examples_seen: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict:
        """Return the history as a JSON-ready dict."""
        return asdict(self)

    def __iter__(self):
        """Unpack as the book's five values: losses, accuracies and examples seen."""
        yield from (self.train_losses, self.val_losses, self.train_accs, self.val_accs)
        yield self.examples_seen


def train_classifier(
    model: nn.Module,
    train_loader,
    val_loader,
    optimizer: torch.optim.Optimizer,
    device,
    num_epochs: int,
    eval_freq: int,
    eval_iter: int,
    pooling: str = "last",
    progress: bool = True,
    on_update: Callable[[History], None] | None = None,
    log: Callable[[str], None] = silent,
    ignore_index: int = IGNORE_NONE,
) -> History:
    """Train as the chapter does; evaluate every `eval_freq` steps and after every epoch.

    Losses are measured on `eval_iter` batches of each loader every `eval_freq` steps, starting
    with the first step; accuracies on `eval_iter` batches at the end of each epoch.
    `on_update` is called with the history after each measurement (for live plots), and `log`
    with the chapter's progress lines. Messages of class `ignore_index` add nothing to the loss.
    """
    history = History(num_epochs)
    start, global_step = time.perf_counter(), -1
    for epoch in range(num_epochs):
        model.train()
        # A bar that counts, not one that wraps the loader: tqdm.auto's wrapper starts an extra
        # pass over what it wraps, which would draw a shuffle that the chapter never draws.
        bar = progress_bar(len(train_loader), f"epoch {epoch + 1}/{num_epochs}", progress)
        for input_batch, target_batch in train_loader:
            optimizer.zero_grad()
            loss = calc_loss_batch(input_batch, target_batch, model, device, pooling, ignore_index)
            loss.backward()
            optimizer.step()
            history.examples_seen += input_batch.shape[0]
            global_step += 1
            bar.update()
            if global_step % eval_freq == 0:
                train_loss, val_loss = evaluate_model(
                    model, train_loader, val_loader, device, eval_iter, pooling, ignore_index
                )
                history.train_losses.append(train_loss)
                history.val_losses.append(val_loss)
                history.eval_steps.append(global_step)
                bar.set_postfix(train_loss=f"{train_loss:.3f}", val_loss=f"{val_loss:.3f}")
                log(
                    f"Ep {epoch + 1} (Step {global_step:06d}): "
                    f"Train loss {train_loss:.3f}, Val loss {val_loss:.3f}"
                )
                _notify(on_update, history, start)
        bar.close()
        history.train_accs.append(
            calc_accuracy_loader(train_loader, model, device, eval_iter, pooling)
        )
        history.val_accs.append(calc_accuracy_loader(val_loader, model, device, eval_iter, pooling))
        log(
            f"Training accuracy: {history.train_accs[-1]:.2%} | "
            f"Validation accuracy: {history.val_accs[-1]:.2%}"
        )
        _notify(on_update, history, start)
    history.seconds = time.perf_counter() - start
    return history


def train_classifier_simple(
    model, train_loader, val_loader, optimizer, device, num_epochs, eval_freq, eval_iter
) -> History:
    """The book's name and call for train_classifier: it prints the chapter's lines."""
    return train_classifier(
        model,
        train_loader,
        val_loader,
        optimizer,
        device,
        num_epochs,
        eval_freq,
        eval_iter,
        progress=False,
        log=print,
    )


def _notify(on_update, history: History, start: float) -> None:
    """Update the elapsed time and pass the history to the callback, if any."""
    history.seconds = time.perf_counter() - start
    if on_update is not None:
        on_update(history)
