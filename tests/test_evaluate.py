"""Metrics, the confusion matrix and classifying new messages (section 6.8 of the chapter)."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from gptclassifier.errors import DataError
from gptclassifier.evaluation.inference import (
    Prediction,
    classify_review,
    classify_text,
    classify_texts,
    evaluate_run,
    split_predictions,
)
from gptclassifier.evaluation.metrics import (
    choose_threshold,
    class_probabilities,
    classification_metrics,
    confusion_at_threshold,
    confusion_matrix,
    precision_recall_curve,
)
from gptclassifier.model.classifier import add_classification_head
from gptclassifier.model.gpt import GPTModel, model_config
from gptclassifier.model.tokenizer import get_tokenizer
from gptclassifier.runs import save_model

CPU = torch.device("cpu")
PAD = 50256
NANO_CONTEXT = 128


@pytest.fixture(scope="module")
def tokenizer():
    """Return GPT-2's tokenizer."""
    return get_tokenizer()


@pytest.fixture(scope="module")
def nano():
    """Return a seeded gpt2-nano with a 2-class head."""
    torch.manual_seed(123)
    return add_classification_head(GPTModel(model_config("gpt2-nano")), 2, seed=123).eval()


class FirstTokenClassifier(nn.Module):
    """A stub classifier: fixed one-hot logits for class (first token id % classes), everywhere."""

    def __init__(self, num_classes: int, context_length: int = NANO_CONTEXT):
        super().__init__()
        self.num_classes = num_classes
        self.pos_emb = nn.Embedding(context_length, 1)
        self.input_shapes = []

    def forward(self, input_batch: torch.Tensor) -> torch.Tensor:
        self.input_shapes.append(tuple(input_batch.shape))
        predicted = input_batch[:, 0] % self.num_classes
        logits = nn.functional.one_hot(predicted, self.num_classes).float() * 3.0
        return logits[:, None, :].expand(-1, input_batch.shape[1], -1)


def metrics_close(metrics: dict, **expected) -> None:
    """Assert that each named metric equals its hand-computed value and none is NaN."""
    for name, value in expected.items():
        assert not math.isnan(metrics[name]), name
        assert metrics[name] == pytest.approx(value), name


# --- classification_metrics ---------------------------------------------------------------


def test_binary_metrics_describe_class_one():
    # rows: true ham, true spam; columns: predicted ham, predicted spam
    counts = torch.tensor([[50, 10], [5, 35]])
    metrics = classification_metrics(counts)
    metrics_close(
        metrics,
        accuracy=85 / 100,
        precision=35 / 45,  # of 45 predicted spam, 35 are spam
        recall=35 / 40,  # of 40 spam, 35 are found
        f1=2 * 35 / (2 * 35 + 10 + 5),
    )
    assert metrics["confusion_matrix"] == [[50, 10], [5, 35]]
    assert metrics["num_examples"] == 100


def test_three_class_metrics_are_macro_averages():
    counts = torch.tensor([[5, 1, 0], [2, 3, 1], [0, 0, 4]])
    precisions = [5 / 7, 3 / 4, 4 / 5]
    recalls = [5 / 6, 3 / 6, 4 / 4]
    f1s = [2 * 5 / (10 + 2 + 1), 2 * 3 / (6 + 1 + 3), 2 * 4 / (8 + 1 + 0)]
    metrics = classification_metrics(counts)
    metrics_close(
        metrics,
        accuracy=12 / 16,
        precision=sum(precisions) / 3,
        recall=sum(recalls) / 3,
        f1=sum(f1s) / 3,
    )
    assert metrics["num_examples"] == 16


def test_a_class_never_predicted_has_precision_zero_without_nan():
    counts = torch.tensor([[3, 0, 1], [2, 0, 2], [0, 0, 4]])  # nothing predicted as class 1
    precisions = [3 / 5, 0.0, 4 / 7]
    recalls = [3 / 4, 0.0, 4 / 4]
    f1s = [2 * 3 / (6 + 2 + 1), 0.0, 2 * 4 / (8 + 3 + 0)]
    metrics_close(
        classification_metrics(counts),
        accuracy=7 / 12,
        precision=sum(precisions) / 3,
        recall=sum(recalls) / 3,
        f1=sum(f1s) / 3,
    )


def test_binary_model_that_never_predicts_spam_has_zero_precision_recall_and_f1():
    metrics = classification_metrics(torch.tensor([[7, 0], [3, 0]]))
    metrics_close(metrics, accuracy=0.7, precision=0.0, recall=0.0, f1=0.0)


# --- confusion_matrix ---------------------------------------------------------------------


def test_confusion_matrix_matches_a_manual_count():
    inputs = torch.tensor([[i, i + 1, PAD] for i in range(20)])
    targets = torch.tensor([(i * i + i // 4) % 3 for i in range(20)])
    loader = DataLoader(TensorDataset(inputs, targets), batch_size=6)  # 4 batches, last partial
    expected = [[0] * 3 for _ in range(3)]
    for row, target in zip(inputs.tolist(), targets.tolist(), strict=True):
        expected[target][row[0] % 3] += 1
    counts = confusion_matrix(FirstTokenClassifier(3), loader, CPU, num_classes=3)
    assert counts.tolist() == expected
    assert counts.tolist() == [[4, 1, 2], [2, 2, 2], [1, 4, 2]]  # rows true, columns predicted
    assert counts.sum().item() == 20
    assert counts.dtype == torch.long


def test_class_probabilities_are_the_softmax_of_each_message_in_order():
    inputs = torch.tensor([[i, PAD] for i in range(7)])
    targets = torch.tensor([0, 1, 1, 0, 1, 0, 0])
    loader = DataLoader(TensorDataset(inputs, targets), batch_size=3)
    probabilities, seen_targets = class_probabilities(FirstTokenClassifier(2), loader, CPU)
    confident = math.exp(3) / (math.exp(3) + 1)  # softmax of the stub's logits (3, 0)
    by_parity = [[confident, 1 - confident], [1 - confident, confident]]  # first token % 2
    expected = [by_parity[i % 2] for i in range(7)]
    np.testing.assert_allclose(probabilities.numpy(), expected, rtol=1e-6)
    assert probabilities.dtype == torch.float64
    assert seen_targets.tolist() == targets.tolist()


def test_class_probabilities_of_an_empty_loader_is_an_error():
    loader = DataLoader(TensorDataset(torch.zeros(0, 2, dtype=torch.long), torch.zeros(0)))
    with pytest.raises(DataError, match="no messages"):
        class_probabilities(FirstTokenClassifier(2), loader, CPU)


# --- thresholds and the precision-recall curve ----------------------------------------------

SCORES = [0.3, 0.8, 0.1, 0.9, 0.8]  # a tie at 0.8, one spam and one ham
TARGETS = [1, 0, 0, 1, 1]


def test_precision_recall_curve_by_hand():
    curve = precision_recall_curve(SCORES, TARGETS)
    # Flag every score >= t. Of the 3 spam: t=0.1 flags all 5 (3 spam); t=0.3 flags 4 (3 spam);
    # t=0.8 flags both 0.8s and 0.9 (2 spam); t=0.9 flags one (spam).
    assert curve["threshold"].tolist() == [0.1, 0.3, 0.8, 0.9]
    assert curve["flagged"].tolist() == [5, 4, 3, 1]
    assert curve["precision"].tolist() == pytest.approx([3 / 5, 3 / 4, 2 / 3, 1])
    assert curve["recall"].tolist() == pytest.approx([1, 1, 2 / 3, 1 / 3])


def test_precision_recall_curve_gives_scikit_learns_documented_example():
    # The example of sklearn.metrics.precision_recall_curve's documentation, with its answer
    # (scikit-learn adds a last point, precision 1 at recall 0, that no threshold gives).
    curve = precision_recall_curve(torch.tensor([0.1, 0.4, 0.35, 0.8]), [0, 0, 1, 1])
    assert curve["threshold"].tolist() == pytest.approx([0.1, 0.35, 0.4, 0.8])
    assert curve["precision"].tolist() == pytest.approx([0.5, 2 / 3, 0.5, 1.0])
    assert curve["recall"].tolist() == pytest.approx([1.0, 1.0, 0.5, 0.5])


@given(
    st.lists(st.tuples(st.integers(0, 6), st.booleans()), min_size=1, max_size=30).filter(
        lambda pairs: any(spam for _, spam in pairs)
    )
)
def test_precision_recall_curve_matches_counting_at_every_threshold(pairs):
    scores = [level / 6 for level, _ in pairs]  # few levels: many ties
    targets = [int(spam) for _, spam in pairs]
    curve = precision_recall_curve(scores, targets)
    assert curve["threshold"].tolist() == sorted(set(scores))
    for row in curve.itertuples():
        flagged = [t for s, t in zip(scores, targets, strict=True) if s >= row.threshold]
        assert row.flagged == len(flagged)
        assert row.precision == pytest.approx(sum(flagged) / len(flagged))
        assert row.recall == pytest.approx(sum(flagged) / sum(targets))
        metrics = classification_metrics(confusion_at_threshold(scores, targets, row.threshold))
        assert (metrics["precision"], metrics["recall"]) == pytest.approx(
            (row.precision, row.recall)
        )


def test_confusion_at_threshold_by_hand():
    counts = confusion_at_threshold(np.array(SCORES), pd.Series(TARGETS), 0.5)
    # ham: 0.8 flagged, 0.1 not; spam: 0.9 and 0.8 flagged, 0.3 missed
    assert counts.tolist() == [[1, 1], [1, 2]]
    assert confusion_at_threshold(SCORES, TARGETS, 0.8).tolist() == [[1, 1], [1, 2]]  # >= t
    assert confusion_at_threshold(SCORES, TARGETS, 0.95).tolist() == [[2, 0], [3, 0]]


@pytest.mark.parametrize(
    "scores, targets, message",
    [
        ([0.1, 0.2], [1], "one score per true class"),
        ([], [], "one score per true class"),
        ([[0.1, 0.9]], [[0, 1]], "one score per true class"),
        ([0.1, float("nan")], [0, 1], "finite"),
        ([0.1, 0.2], [0, 2], "0 \\(ham\\) or 1 \\(spam\\)"),
        ([0.1, 0.2], [0, 0], "at least one spam"),
    ],
)
def test_precision_recall_curve_rejects_bad_input_in_one_line(scores, targets, message):
    with pytest.raises(ValueError, match=message) as raised:
        precision_recall_curve(scores, targets)
    assert "\n" not in str(raised.value)


def test_choose_threshold_takes_the_lowest_reaching_the_precision():
    curve = precision_recall_curve(SCORES, TARGETS)  # precisions 0.6, 0.75, 0.67, 1
    assert choose_threshold(curve, 0.7) == 0.3
    assert choose_threshold(curve, 0.75) == 0.3
    assert choose_threshold(curve, 0.8) == 0.9
    assert choose_threshold(curve, 0.5) == 0.1


def test_choose_threshold_says_when_no_threshold_is_precise_enough():
    curve = precision_recall_curve([0.9, 0.5], [0, 1])  # the top score is ham
    with pytest.raises(ValueError, match="no threshold reaches a precision of 60% .* 50%"):
        choose_threshold(curve, 0.6)
    for bad in (0, 1.5):
        with pytest.raises(ValueError, match="min_precision"):
            choose_threshold(curve, bad)


# --- a saved run's split -----------------------------------------------------------------


@pytest.fixture
def saved_run(tmp_path, nano):
    """Save the seeded nano as a run (fast loop, last pooling) with a small test split."""
    training = {"model": "gpt2-nano", "trainable": "last_block", "loop": "fast", "batch_size": 3}
    config = {
        "model": model_config("gpt2-nano"),
        "classes": ["ham", "spam"],
        "training": training,
        "max_length": 12,
        "pooling": "last",
        "precision": "float32",
    }
    save_model(tmp_path, nano, config, everything=True)  # no base model to rebuild
    texts = ["WIN cash now!!", "see you at 6", "Txt STOP to end", "ok", "Free prize, call"]
    (tmp_path / "data").mkdir()
    frame = pd.DataFrame({"Label": [1, 0, 1, 0, 1], "Text": texts})
    frame.to_csv(tmp_path / "data" / "test.csv", index=False)
    return tmp_path


def test_split_predictions_are_classify_texts_on_the_saved_split(saved_run, nano, tokenizer):
    table = split_predictions(saved_run, "test")
    frame = pd.read_csv(saved_run / "data" / "test.csv")
    assert table.columns.tolist() == ["text", "label", "predicted", "P(ham)", "P(spam)"]
    assert table["text"].tolist() == frame["Text"].tolist()
    assert table["label"].tolist() == [("ham", "spam")[label] for label in frame["Label"]]
    expected = classify_texts(frame["Text"], nano, tokenizer, CPU, max_length=12)
    assert table["predicted"].tolist() == [p.label for p in expected]
    chosen = [row[f"P({row.predicted})"] for _, row in table.iterrows()]
    assert chosen == pytest.approx([p.probability for p in expected], abs=1e-5)
    assert (table["P(ham)"] + table["P(spam)"]).tolist() == pytest.approx([1.0] * 5)


def test_evaluate_run_counts_what_split_predictions_predicts(saved_run):
    table = split_predictions(saved_run, "test")
    counts = pd.crosstab(table["label"], table["predicted"]).reindex(
        index=["ham", "spam"], columns=["ham", "spam"], fill_value=0
    )
    assert evaluate_run(saved_run, "test")["confusion_matrix"] == counts.values.tolist()


def test_split_predictions_of_a_missing_split_names_it(saved_run):
    with pytest.raises(DataError, match="validation.csv: the run has no validation split"):
        split_predictions(saved_run, "validation")


# --- classify_texts -----------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "   ", "\n\t "])
def test_empty_or_whitespace_text_raises_data_error(text, nano, tokenizer):
    with pytest.raises(DataError, match="empty"):
        classify_texts(["Hello", text], nano, tokenizer, CPU)


def test_a_message_longer_than_the_context_is_cut_with_a_warning(tokenizer):
    text = "Call now to claim your prize " * 40
    assert len(tokenizer.encode(text)) > NANO_CONTEXT
    stub = FirstTokenClassifier(2)
    with pytest.warns(UserWarning, match=f"cut to the first {NANO_CONTEXT}"):
        prediction = classify_text(text, stub, tokenizer, CPU)
    assert stub.input_shapes == [(1, NANO_CONTEXT)]
    assert isinstance(prediction, Prediction)


def test_a_message_longer_than_max_length_is_cut_to_max_length(tokenizer):
    stub = FirstTokenClassifier(2)
    with pytest.warns(UserWarning, match="cut to the first 5"):
        classify_text("one two three four five six seven", stub, tokenizer, CPU, max_length=5)
    assert stub.input_shapes == [(1, 5)]


def test_non_ascii_and_emoji_are_classified(nano, tokenizer):
    texts = [
        "Café à 8h? 🎉☕",
        "你好，你中奖了！立即回复",
        "Ünïcödé 💸💸 FREE €1000 👉 http://x.yz",
    ]
    predictions = classify_texts(texts, nano, tokenizer, CPU, pooling="flexible")
    assert len(predictions) == 3
    for prediction in predictions:
        assert prediction.label in ("ham", "spam")
        assert 0.5 <= prediction.probability <= 1.0  # the larger of two probabilities


def test_flexible_batch_gives_the_same_results_as_one_at_a_time(nano, tokenizer):
    texts = [
        "ok",
        "URGENT! You have won a 1 week FREE membership in our £100,000 prize Jackpot! " * 3,
        "Are we still on for lunch tomorrow?",
        "Txt STOP",
    ]
    options = {"pooling": "flexible", "classes": ("ham", "spam")}
    batched = classify_texts(texts, nano, tokenizer, CPU, **options)
    single = [classify_text(text, nano, tokenizer, CPU, **options) for text in texts]
    assert [p.label for p in batched] == [p.label for p in single]
    for together, alone in zip(batched, single, strict=True):
        assert together.probability == pytest.approx(alone.probability, abs=1e-5)
    small_batches = classify_texts(texts, nano, tokenizer, CPU, batch_size=3, **options)
    assert [p.label for p in small_batches] == [p.label for p in batched]


class WidthRecorder(torch.nn.Module):
    """A model that records the width of every batch it is given."""

    def __init__(self, model):
        super().__init__()
        self.model, self.pos_emb, self.widths = model, model.pos_emb, []

    def forward(self, batch):
        self.widths.append(batch.shape[1])
        return self.model(batch)


def test_flexible_batches_group_similar_lengths_and_keep_the_order(nano, tokenizer):
    texts = ["a much longer message than the others, " * 4, "ok", "see you", "hi " * 30, "yes"]
    recording = WidthRecorder(nano)
    options = {"pooling": "flexible", "classes": ("ham", "spam")}
    batched = classify_texts(texts, recording, tokenizer, CPU, batch_size=2, **options)
    lengths = sorted(len(tokenizer.encode(text)) for text in texts)
    assert recording.widths == [lengths[1], lengths[3], lengths[4]]  # each pair's longer one
    single = [classify_text(text, nano, tokenizer, CPU, **options) for text in texts]
    for together, alone in zip(batched, single, strict=True):
        assert together.probability == pytest.approx(alone.probability, abs=1e-5)


def test_probabilities_are_the_softmax_of_the_pooled_logits(nano, tokenizer):
    text = "Free entry in 2 a wkly comp to win FA Cup final tkts"
    prediction = classify_text(text, nano, tokenizer, CPU, pooling="flexible", classes=("a", "b"))
    with torch.no_grad():
        logits = nano(torch.tensor([tokenizer.encode(text)]))[0, -1]
    probabilities = torch.softmax(logits, dim=-1)
    assert prediction.label == ("a", "b")[probabilities.argmax().item()]
    assert prediction.probability == pytest.approx(probabilities.max().item(), abs=1e-6)


def test_the_books_classify_review_call_gives_the_books_answer(nano, tokenizer):
    texts = ["You are a winner, claim your $1000 cash award now", "See you at dinner"]
    for text in texts:
        prediction = classify_review(text, nano, tokenizer, CPU, max_length=20, pad_token_id=PAD)
        # Section 6.8 by hand: encode, pad to max_length, read the last position, argmax.
        ids = tokenizer.encode(text)
        with torch.no_grad():
            logits = nano(torch.tensor([ids + [PAD] * (20 - len(ids))]))[0, -1]
        assert prediction.label == ("ham", "spam")[logits.argmax().item()]
        assert prediction.probability == pytest.approx(torch.softmax(logits, -1).max().item())


def test_labels_come_from_classes_and_probabilities_lie_in_0_1(tokenizer):
    classes = ("low", "mid", "high")
    texts = ["alpha", "beta gamma", "delta", "epsilon zeta eta", "theta"]
    stub = FirstTokenClassifier(3)
    predictions = classify_texts(texts, stub, tokenizer, CPU, classes=classes)
    expected = [classes[tokenizer.encode(text)[0] % 3] for text in texts]
    assert [p.label for p in predictions] == expected
    one_hot_probability = math.exp(3) / (math.exp(3) + 2)
    for prediction in predictions:
        assert prediction.label in classes
        assert 0.0 <= prediction.probability <= 1.0
        assert prediction.probability == pytest.approx(one_hot_probability, abs=1e-6)


def test_last_pooling_pads_each_message_to_max_length(tokenizer):
    stub = FirstTokenClassifier(2)
    classify_texts(["hi", "see you soon"], stub, tokenizer, CPU, max_length=20, pooling="last")
    assert stub.input_shapes == [(2, 20)]


def test_max_length_beyond_the_context_is_capped_at_the_context(tokenizer):
    stub = FirstTokenClassifier(2)
    classify_texts(["hi"], stub, tokenizer, CPU, max_length=4 * NANO_CONTEXT, pooling="last")
    assert stub.input_shapes == [(1, NANO_CONTEXT)]


def test_last_pooling_pads_with_end_of_text_after_the_message(tokenizer):
    seen = []

    class Recorder(FirstTokenClassifier):
        """The stub, also keeping the inputs it was given."""

        def forward(self, input_batch):
            seen.append(input_batch.clone())
            return super().forward(input_batch)

    classify_text("hi there", Recorder(2), tokenizer, CPU, max_length=6, pooling="last")
    ids = tokenizer.encode("hi there")
    assert seen[0].tolist() == [ids + [PAD] * (6 - len(ids))]


def test_flexible_pooling_pads_only_to_the_longest_message_of_the_batch(tokenizer):
    stub = FirstTokenClassifier(2)
    texts = ["hi", "see you soon at the usual place"]
    classify_texts(texts, stub, tokenizer, CPU, max_length=50, pooling="flexible")
    assert stub.input_shapes == [(2, len(tokenizer.encode(texts[1])))]


def test_flexible_pooling_with_a_custom_pad_token_gives_the_same_results_in_a_batch(
    nano, tokenizer
):
    texts = ["ok", "Are we still on for lunch tomorrow at the usual place near the station"]
    pad = 11  # "," — a padding id the messages do not contain
    assert all(pad not in tokenizer.encode(text) for text in texts)
    options = {"pooling": "flexible", "pad_token_id": pad}
    batched = classify_texts(texts, nano, tokenizer, CPU, **options)
    single = [classify_text(text, nano, tokenizer, CPU, **options) for text in texts]
    for together, alone in zip(batched, single, strict=True):
        assert together.probability == pytest.approx(alone.probability, abs=1e-5)
