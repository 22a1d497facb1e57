"""Notebook widgets, driven without a kernel: the classifier box and the live training view."""

import pytest

pytest.importorskip("ipywidgets", reason="ipywidgets (the lab extra) is not installed")

from gptclassifier.evaluation.inference import classify_text  # noqa: E402
from gptclassifier.lessons.widgets import PROMPT, ClassifierWidget, LiveTrainingView  # noqa: E402
from gptclassifier.model.gpt import model_config  # noqa: E402
from gptclassifier.runs import save_model  # noqa: E402
from gptclassifier.training.loop import History  # noqa: E402
from gptclassifier.training.runners import Autocast, FrozenPrefixCache  # noqa: E402

OPTIONS = {"max_length": 24, "pooling": "last", "classes": ("ham", "spam")}


def test_the_widget_classifies_what_is_typed(tokenizer, nano_classifier):
    classifier = nano_classifier(seed=0)
    widget = ClassifierWidget(classifier, tokenizer, **OPTIONS)
    assert widget.result.value == PROMPT and widget.bar.value == 0.0
    assert widget.prediction is None
    widget.text.value = "WIN a free cruise, reply YES now"
    expected = classify_text(widget.text.value, classifier, tokenizer, "cpu", **OPTIONS)
    assert widget.result.value == (
        f"<b>{expected.label}</b> with probability {expected.probability:.1%}"
    )
    assert widget.bar.value == pytest.approx(expected.probability)
    assert widget.prediction.label == expected.label  # the same, as plain Python values
    assert widget.prediction.probability == pytest.approx(expected.probability)
    widget.text.value = "   "
    assert widget.result.value == PROMPT and widget.bar.value == 0.0
    assert widget.prediction is None


def test_a_fresh_widget_has_a_stable_text_representation(tokenizer, nano_classifier):
    classifier = nano_classifier(seed=0)
    first = repr(ClassifierWidget(classifier, tokenizer, **OPTIONS))
    assert first == repr(ClassifierWidget(classifier, tokenizer, **OPTIONS))
    assert "0x" not in first


def test_the_widget_reads_a_run_directory(nano_classifier, tmp_path):
    classifier = nano_classifier(seed=0)
    training = {"model": "gpt2-nano", "pooling": "flexible", "precision": "bfloat16"}
    config = {"model": model_config("gpt2-nano"), "classes": ["no", "yes"], "training": training}
    save_model(
        tmp_path, classifier,
        config | {"max_length": 16, "pooling": "flexible", "precision": "bfloat16"},
        everything=True,  # no base model to rebuild: every parameter is saved
    )  # fmt: skip
    widget = ClassifierWidget.from_run(tmp_path)
    assert isinstance(widget.model, Autocast)  # as the run was trained: bfloat16
    assert isinstance(widget.model.runner, FrozenPrefixCache)
    assert widget.classify_options == {
        "max_length": 16,
        "pooling": "flexible",
        "classes": ["no", "yes"],
    }
    widget.text.value = "hello"
    assert widget.result.value.split("</b>")[0] == f"<b>{widget.prediction.label}"
    assert widget.prediction.label in ("no", "yes")


class FakeLoader:
    """Stands in for a DataLoader: 6 batches of 8 messages."""

    batch_size = 8

    def __len__(self):
        return 6


def test_the_live_view_shows_progress_numbers_and_curves():
    view = LiveTrainingView(FakeLoader(), num_epochs=2)
    assert view.progress.max == 2 * 6 * 8
    history = History(2, train_losses=[0.7], val_losses=[0.72], eval_steps=[0], examples_seen=8)
    view.update(history)
    assert view.progress.value == 8
    assert view.status.value == "8 examples seen · loss 0.700 (validation 0.720)"
    assert bytes(view.loss_plot.value).startswith(b"\x89PNG")
    assert bytes(view.accuracy_plot.value) == b""  # no accuracy before the first epoch ends

    history.train_losses.append(0.6)
    history.val_losses.append(0.65)
    history.eval_steps.append(5)
    history.train_accs.append(0.625)
    history.val_accs.append(0.5)
    history.examples_seen = 48
    view.update(history)
    assert view.status.value.endswith("accuracy 62.5% (validation 50.0%)")
    assert bytes(view.accuracy_plot.value).startswith(b"\x89PNG")


def test_summary_of_an_empty_history():
    assert LiveTrainingView.summary(History(1)) == "0 examples seen"
