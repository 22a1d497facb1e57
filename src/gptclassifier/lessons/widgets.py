"""Notebook widgets: a classifier to type messages into, and a live view of training."""

import io

import ipywidgets as widgets
import torch

from gptclassifier.evaluation.inference import Prediction, classify_text, load_classifier
from gptclassifier.model.tokenizer import get_tokenizer
from gptclassifier.plots import plot_values
from gptclassifier.training.loop import History

PROMPT = "<i>Type a message to classify it.</i>"


class ClassifierWidget(widgets.VBox):
    """A text box whose message is classified as you type, with the probability as a bar.

    `prediction` holds the latest Prediction (None while the box is empty), for code to read.
    """

    def __init__(self, model, tokenizer, device="cpu", **classify_options):
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.classify_options = classify_options
        self.prediction: Prediction | None = None
        self.text = widgets.Textarea(
            placeholder="Type or paste a message", layout=widgets.Layout(width="100%")
        )
        self.result = widgets.HTML(PROMPT)
        self.bar = widgets.FloatProgress(value=0.0, min=0.0, max=1.0, description="probability")
        self.text.observe(self._update, names="value")
        super().__init__([self.text, self.result, self.bar])

    @classmethod
    def from_run(cls, run_dir) -> "ClassifierWidget":
        """Return a widget for the fine-tuned model saved in a run directory."""
        model, config, device = load_classifier(run_dir)
        options = {key: config[key] for key in ("max_length", "pooling", "classes")}
        return cls(model, get_tokenizer(), device, **options)

    def _update(self, change=None) -> None:
        """Classify the current text and show the label and its probability."""
        if not self.text.value.strip():
            self.prediction, self.result.value, self.bar.value = None, PROMPT, 0.0
            return
        self.prediction = prediction = classify_text(
            self.text.value, self.model, self.tokenizer, self.device, **self.classify_options
        )
        self.result.value = (
            f"<b>{prediction.label}</b> with probability {prediction.probability:.1%}"
        )
        self.bar.value = prediction.probability


class LiveTrainingView(widgets.VBox):
    """A progress bar, the latest numbers, and loss and accuracy curves that grow as it trains.

    Pass its `update` method as `on_update` to `train_classifier`.
    """

    def __init__(self, train_loader, num_epochs: int):
        self.steps_per_epoch = len(train_loader)
        self.batch_size = train_loader.batch_size
        self.progress = widgets.IntProgress(
            value=0, min=0, max=num_epochs * self.steps_per_epoch * self.batch_size,
            description="examples",
        )  # fmt: skip
        self.status = widgets.HTML("<i>waiting for the first evaluation</i>")
        self.drawn = (0, 0)  # how many loss and accuracy points the plots show
        self.loss_plot = widgets.Image(format="png", layout=widgets.Layout(width="48%"))
        self.accuracy_plot = widgets.Image(format="png", layout=widgets.Layout(width="48%"))
        super().__init__(
            [self.progress, self.status, widgets.HBox([self.loss_plot, self.accuracy_plot])]
        )

    def update(self, history: History) -> None:
        """Show the latest measurements of the training loop."""
        self.progress.value = history.examples_seen
        self.status.value = self.summary(history)
        drawn, self.drawn = self.drawn, (len(history.train_losses), len(history.train_accs))
        if history.train_losses and drawn[0] != self.drawn[0]:
            epochs = [(step + 1) / self.steps_per_epoch for step in history.eval_steps]
            examples = [(step + 1) * self.batch_size for step in history.eval_steps]
            self.loss_plot.value = _png(
                epochs, examples, history.train_losses, history.val_losses, "loss"
            )
        if history.train_accs and drawn[1] != self.drawn[1]:
            epochs = list(range(1, len(history.train_accs) + 1))
            examples = [epoch * self.steps_per_epoch * self.batch_size for epoch in epochs]
            self.accuracy_plot.value = _png(
                epochs, examples, history.train_accs, history.val_accs, "accuracy"
            )

    @staticmethod
    def summary(history: History) -> str:
        """Return the latest numbers of a history as one line."""
        parts = [f"{history.examples_seen:,} examples seen"]
        if history.train_losses:
            parts.append(
                f"loss {history.train_losses[-1]:.3f} (validation {history.val_losses[-1]:.3f})"
            )
        if history.train_accs:
            parts.append(
                f"accuracy {history.train_accs[-1]:.1%} (validation {history.val_accs[-1]:.1%})"
            )
        return " · ".join(parts)


def _png(epochs, examples, train_values, val_values, label: str) -> bytes:
    """Render one of the chapter's curves as PNG bytes."""
    figure = plot_values(
        torch.tensor(epochs, dtype=torch.float),
        torch.tensor(examples, dtype=torch.float),
        train_values,
        val_values,
        label,
    )
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    return buffer.getvalue()
