"""Classifying new messages (section 6.8), and a saved run's predictions and metrics."""

import math

import pandas as pd
import pytest
import torch

from gptclassifier.errors import DataError
from gptclassifier.evaluation.inference import (
    Prediction,
    classify_review,
    classify_text,
    classify_texts,
    evaluate_run,
    split_predictions,
)
from gptclassifier.model.gpt import model_config
from gptclassifier.runs import save_model

CPU = torch.device("cpu")
PAD = 50256
NANO_CONTEXT = 128


# --- a saved run's split -----------------------------------------------------------------


@pytest.fixture
def saved_run(tmp_path, nano_classifier):
    """Save the seeded nano classifier as a run (fast loop, last pooling) with a small test set."""
    training = {"model": "gpt2-nano", "trainable": "last_block", "loop": "fast", "batch_size": 3}
    config = {
        "model": model_config("gpt2-nano"),
        "classes": ["ham", "spam"],
        "training": training,
        "max_length": 12,
        "pooling": "last",
        "precision": "float32",
    }
    save_model(tmp_path, nano_classifier(), config, everything=True)  # no base model to rebuild
    texts = ["WIN cash now!!", "see you at 6", "Txt STOP to end", "ok", "Free prize, call"]
    (tmp_path / "data").mkdir()
    frame = pd.DataFrame({"Label": [1, 0, 1, 0, 1], "Text": texts})
    frame.to_csv(tmp_path / "data" / "test.csv", index=False)
    return tmp_path


def test_split_predictions_are_classify_texts_on_the_saved_split(
    saved_run, nano_classifier, tokenizer
):
    nano = nano_classifier()
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
def test_empty_or_whitespace_text_raises_data_error(text, nano_classifier, tokenizer):
    nano = nano_classifier()
    with pytest.raises(DataError, match="empty"):
        classify_texts(["Hello", text], nano, tokenizer, CPU)


def test_a_message_longer_than_the_context_is_cut_with_a_warning(first_token_classifier, tokenizer):
    text = "Call now to claim your prize " * 40
    assert len(tokenizer.encode(text)) > NANO_CONTEXT
    stub = first_token_classifier(2)
    with pytest.warns(UserWarning, match=f"cut to the first {NANO_CONTEXT}"):
        prediction = classify_text(text, stub, tokenizer, CPU)
    assert stub.input_shapes == [(1, NANO_CONTEXT)]
    assert isinstance(prediction, Prediction)


def test_a_message_longer_than_max_length_is_cut_to_max_length(first_token_classifier, tokenizer):
    stub = first_token_classifier(2)
    with pytest.warns(UserWarning, match="cut to the first 5"):
        classify_text("one two three four five six seven", stub, tokenizer, CPU, max_length=5)
    assert stub.input_shapes == [(1, 5)]


def test_non_ascii_and_emoji_are_classified(nano_classifier, tokenizer):
    nano = nano_classifier()
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


def test_flexible_batch_gives_the_same_results_as_one_at_a_time(nano_classifier, tokenizer):
    nano = nano_classifier()
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


def test_flexible_batches_group_similar_lengths_and_keep_the_order(nano_classifier, tokenizer):
    nano = nano_classifier()
    texts = ["a much longer message than the others, " * 4, "ok", "see you", "hi " * 30, "yes"]
    recording = WidthRecorder(nano)
    options = {"pooling": "flexible", "classes": ("ham", "spam")}
    batched = classify_texts(texts, recording, tokenizer, CPU, batch_size=2, **options)
    lengths = sorted(len(tokenizer.encode(text)) for text in texts)
    assert recording.widths == [lengths[1], lengths[3], lengths[4]]  # each pair's longer one
    single = [classify_text(text, nano, tokenizer, CPU, **options) for text in texts]
    for together, alone in zip(batched, single, strict=True):
        assert together.probability == pytest.approx(alone.probability, abs=1e-5)


def test_probabilities_are_the_softmax_of_the_pooled_logits(nano_classifier, tokenizer):
    nano = nano_classifier()
    text = "Free entry in 2 a wkly comp to win FA Cup final tkts"
    prediction = classify_text(text, nano, tokenizer, CPU, pooling="flexible", classes=("a", "b"))
    with torch.no_grad():
        logits = nano(torch.tensor([tokenizer.encode(text)]))[0, -1]
    probabilities = torch.softmax(logits, dim=-1)
    assert prediction.label == ("a", "b")[probabilities.argmax().item()]
    assert prediction.probability == pytest.approx(probabilities.max().item(), abs=1e-6)


def test_the_books_classify_review_call_gives_the_books_answer(nano_classifier, tokenizer):
    nano = nano_classifier()
    texts = ["You are a winner, claim your $1000 cash award now", "See you at dinner"]
    for text in texts:
        prediction = classify_review(text, nano, tokenizer, CPU, max_length=20, pad_token_id=PAD)
        # Section 6.8 by hand: encode, pad to max_length, read the last position, argmax.
        ids = tokenizer.encode(text)
        with torch.no_grad():
            logits = nano(torch.tensor([ids + [PAD] * (20 - len(ids))]))[0, -1]
        assert prediction.label == ("ham", "spam")[logits.argmax().item()]
        assert prediction.probability == pytest.approx(torch.softmax(logits, -1).max().item())


def test_labels_come_from_classes_and_probabilities_lie_in_0_1(first_token_classifier, tokenizer):
    classes = ("low", "mid", "high")
    texts = ["alpha", "beta gamma", "delta", "epsilon zeta eta", "theta"]
    stub = first_token_classifier(3)
    predictions = classify_texts(texts, stub, tokenizer, CPU, classes=classes)
    expected = [classes[tokenizer.encode(text)[0] % 3] for text in texts]
    assert [p.label for p in predictions] == expected
    one_hot_probability = math.exp(3) / (math.exp(3) + 2)
    for prediction in predictions:
        assert prediction.label in classes
        assert 0.0 <= prediction.probability <= 1.0
        assert prediction.probability == pytest.approx(one_hot_probability, abs=1e-6)


def test_last_pooling_pads_each_message_to_max_length(first_token_classifier, tokenizer):
    stub = first_token_classifier(2)
    classify_texts(["hi", "see you soon"], stub, tokenizer, CPU, max_length=20, pooling="last")
    assert stub.input_shapes == [(2, 20)]


def test_max_length_beyond_the_context_is_capped_at_the_context(first_token_classifier, tokenizer):
    stub = first_token_classifier(2)
    classify_texts(["hi"], stub, tokenizer, CPU, max_length=4 * NANO_CONTEXT, pooling="last")
    assert stub.input_shapes == [(1, NANO_CONTEXT)]


def test_last_pooling_pads_with_end_of_text_after_the_message(first_token_classifier, tokenizer):
    seen = []

    class Recorder(first_token_classifier):
        """The stub, also keeping the inputs it was given."""

        def forward(self, input_batch):
            seen.append(input_batch.clone())
            return super().forward(input_batch)

    classify_text("hi there", Recorder(2), tokenizer, CPU, max_length=6, pooling="last")
    ids = tokenizer.encode("hi there")
    assert seen[0].tolist() == [ids + [PAD] * (6 - len(ids))]


def test_flexible_pooling_pads_only_to_the_longest_message_of_the_batch(
    first_token_classifier, tokenizer
):
    stub = first_token_classifier(2)
    texts = ["hi", "see you soon at the usual place"]
    classify_texts(texts, stub, tokenizer, CPU, max_length=50, pooling="flexible")
    assert stub.input_shapes == [(2, len(tokenizer.encode(texts[1])))]


def test_flexible_pooling_with_a_custom_pad_token_gives_the_same_results_in_a_batch(
    nano_classifier, tokenizer
):
    nano = nano_classifier()
    texts = ["ok", "Are we still on for lunch tomorrow at the usual place near the station"]
    pad = 11  # "," — a padding id the messages do not contain
    assert all(pad not in tokenizer.encode(text) for text in texts)
    options = {"pooling": "flexible", "pad_token_id": pad}
    batched = classify_texts(texts, nano, tokenizer, CPU, **options)
    single = [classify_text(text, nano, tokenizer, CPU, **options) for text in texts]
    for together, alone in zip(batched, single, strict=True):
        assert together.probability == pytest.approx(alone.probability, abs=1e-5)
