"""The pictures of the ideas show what the model and the batch really hold."""

from pathlib import Path

import matplotlib
import pytest
import torch
from matplotlib.colors import to_rgba

from gptclassifier.lessons.figures import (
    FROZEN_COLOUR,
    TRAINABLE_COLOUR,
    attention_weights,
    draw_chapter_stages,
    draw_classifier,
    draw_finetuning_kinds,
    draw_frozen_prefix,
    draw_head_swap,
    draw_noise_band,
    draw_padded_batch,
    draw_pooled_attention,
    draw_prediction,
    draw_shuffle_and_cut,
    draw_training_loop,
    model_parts,
)
from gptclassifier.model.classifier import add_classification_head, set_trainable
from gptclassifier.model.gpt import GPTModel, model_config
from gptclassifier.model.tokenizer import PAD_TOKEN_ID, VOCAB_SIZE
from gptclassifier.settings import TRAINABLE_STRATEGIES

matplotlib.use("Agg")


def classifier(name: str, strategy: str = "last_block") -> GPTModel:
    """Return a two-way classifier of the named size, on the meta device (no memory)."""
    with torch.device("meta"):
        model = GPTModel(model_config(name))
    return set_trainable(add_classification_head(model, 2), strategy)


def test_gpt2_small_parts_give_the_books_parameter_counts():
    parts = model_parts(classifier("gpt2-small"))
    assert sum(part.parameters for part in parts) == 124_441_346  # the book's total
    assert sum(part.trainable for part in parts) == 7_090_946  # the book's trainable count
    assert [part.name for part in parts if part.trainable] == [
        "block 12",
        "final norm",
        "output head (768 -> 2)",
    ]


@pytest.mark.parametrize("strategy", TRAINABLE_STRATEGIES)
def test_parts_cover_every_parameter_once(strategy):
    model = classifier("gpt2-nano", strategy)
    parts = model_parts(model)
    assert len(parts) == model_config("gpt2-nano")["n_layers"] + 4
    assert sum(part.parameters for part in parts) == sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(part.trainable for part in parts) == trainable


def test_the_diagram_colours_exactly_the_trainable_parts():
    model = classifier("gpt2-small")
    fig = draw_classifier(model)
    colours = [patch.get_facecolor() for patch in fig.axes[0].patches]
    trainable = [part.trainable > 0 for part in model_parts(model)]
    assert colours == [to_rgba(TRAINABLE_COLOUR if t else FROZEN_COLOUR) for t in trainable]
    texts = {text.get_text() for text in fig.axes[0].texts}
    assert "7,087,872  (trainable)" in texts and "38,597,376  (frozen)" in texts
    assert fig.axes[0].get_title() == "7,090,946 of 124,441,346 parameters trained"


def test_the_batch_picture_marks_the_positions_each_pooling_reads():
    batch = torch.tensor(
        [[5, 6, 7, PAD_TOKEN_ID, PAD_TOKEN_ID], [8, 9, 10, 11, 12], [3] + [PAD_TOKEN_ID] * 4]
    )
    fig = draw_padded_batch(batch)
    marks = {c.get_label(): c.get_offsets().tolist() for c in fig.axes[0].collections}
    assert marks["last pooling reads"] == [[4, 0], [4, 1], [4, 2]]
    assert marks["first pooling reads"] == [[0, 0], [0, 1], [0, 2]]
    assert marks["flexible pooling reads"] == [[2, 0], [4, 1], [0, 2]]  # the last real tokens
    assert not draw_padded_batch(batch, poolings=()).axes[0].collections


def test_hand_computed_attention_reproduces_the_models_fused_attention(nano_classifier):
    nano = nano_classifier()  # the head plays no part in attention
    ids = torch.tensor([[464, 3290, 318, 257, 1332, PAD_TOKEN_ID, PAD_TOKEN_ID]])
    for block in (0, -1):
        weights = attention_weights(nano, ids, block)
        index = range(len(nano.trf_blocks))[block]
        with torch.no_grad():
            hidden = nano.tok_emb(ids) + nano.pos_emb(torch.arange(ids.shape[1]))
            hidden = nano.trf_blocks[:index](hidden)
            x = nano.trf_blocks[index].norm1(hidden)
            att = nano.trf_blocks[index].att
            values = att.W_value(x).view(1, 7, att.num_heads, att.head_dim).transpose(1, 2)
            by_hand = att.out_proj((weights @ values).transpose(1, 2).reshape(1, 7, -1))
            fused = att(x)  # scaled_dot_product_attention with is_causal=True
        torch.testing.assert_close(by_hand, fused, rtol=1e-4, atol=1e-5)
        assert torch.allclose(weights.sum(dim=-1), torch.ones(1, att.num_heads, 7))
        assert (weights.triu(1) == 0).all(), "no position attends to a later one"


def test_the_attention_picture_shows_the_pooled_rows(nano_classifier, tokenizer):
    nano = nano_classifier()
    ids = tokenizer.encode("See you at 7")
    batch = torch.tensor([ids + [PAD_TOKEN_ID] * 3])
    fig = draw_pooled_attention(nano, batch, tokenizer)
    weights = attention_weights(nano, batch)[0].mean(dim=0)
    last, flexible = ([bar.get_height() for bar in ax.patches] for ax in fig.axes)
    assert last == pytest.approx(weights[len(ids) + 2].tolist())
    assert flexible == pytest.approx(weights[len(ids) - 1].tolist())
    assert sum(flexible[len(ids) :]) == 0, "the last real token cannot see the padding"
    assert fig.axes[1].get_title().startswith(f"flexible pooling: position {len(ids) - 1}")


def test_the_plan_shows_the_chapters_ten_steps_each_with_lessons_that_exist():
    texts = [text.get_text() for text in draw_chapter_stages().axes[0].texts]
    steps = [text for text in texts if text[:1].isdigit()]
    assert [int(step.split()[0]) for step in steps] == list(range(1, 11))
    lessons = [text.removeprefix("lesson ") for text in texts if text.startswith("lesson ")]
    assert len(lessons) == len(steps)
    notebooks = Path(__file__).parents[1] / "notebooks"
    for numbers in lessons:
        for number in numbers.split(", "):
            assert list(notebooks.glob(f"{int(number):02d}_*.ipynb")), number
    assert sum(text.startswith("Stage") for text in texts) == 3


def test_the_two_kinds_of_fine_tuning_differ_in_the_output_layer():
    instruction, classification = draw_finetuning_kinds("Call now").axes
    assert classification.get_title().startswith("Classification fine-tuning")
    asked, classified = (
        " ".join(text.get_text() for text in ax.texts) for ax in (instruction, classification)
    )
    assert f"{VOCAB_SIZE:,} tokens" in asked and "2 classes" in classified
    assert "'Call now'" in asked and "'Call now'" in classified
    assert "Answer with yes" in asked and "Answer" not in classified


def test_the_prediction_picture_shows_the_softmax_and_the_argmax_class():
    logits = torch.tensor([0.5, -1.0])
    raw, softmax, label = draw_prediction(logits, ("ham", "spam")).axes
    heights = [bar.get_height() for bar in softmax.containers[0]]
    assert heights == pytest.approx(torch.softmax(logits, dim=-1).tolist())
    assert [bar.get_height() for bar in raw.containers[0]] == pytest.approx([0.5, -1.0])
    assert label.texts[0].get_text().endswith("ham")
    assert draw_prediction(-logits).axes[2].texts[0].get_text().endswith("spam")


def test_the_head_swap_keeps_every_part_but_the_head():
    with torch.device("meta"):
        model = GPTModel(model_config("gpt2-small"))
    texts = [text.get_text() for text in draw_head_swap(model, 3).axes[0].texts]
    boxes = [text for text in texts if ": " in text]
    language_model, classifier = boxes[: len(boxes) // 2], boxes[len(boxes) // 2 :]
    assert language_model[:-1] == classifier[:-1] and len(classifier) == 16
    assert language_model[-1] == "output head (768 -> 50257): 38,597,376"
    assert classifier[-1] == f"output head (768 -> 3): {768 * 3 + 3:,}"


def test_the_loop_picture_shows_the_four_steps_and_the_settings_it_is_given():
    texts = [text.get_text() for text in draw_training_loop(3, 7, 2).axes[0].texts]
    steps = [text for text in texts if text[:1].isdigit()]
    assert [step.split(". ")[1] for step in steps] == [
        "optimizer.zero_grad()", "calc_loss_batch(...)", "loss.backward()", "optimizer.step()"
    ]  # fmt: skip
    shown = " ".join(texts)
    assert "for each of 3 epochs" in shown and "every 7 steps" in shown
    assert shown.count("2 batches each") == 2


def test_the_split_picture_shows_each_part_and_where_it_is_cut():
    balanced = ["ham"] * 6 + ["spam"] * 6
    parts = (
        ["spam", "ham", "ham", "spam", "ham", "spam", "ham"],
        ["spam", "ham"],
        ["spam", "ham", "spam"],
    )
    ax = draw_shuffle_and_cut(balanced, parts).axes[0]
    image = ax.images[0].get_array()
    assert image.shape[:2] == (2, 12)
    assert (image[0, 0] == image[0, 5]).all() and not (image[0, 5] == image[0, 6]).all()
    assert (image[1, 0] == image[0, 6]).all(), "the shuffled row starts with a spam message"
    assert [text.get_text() for text in ax.texts] == ["training: 7", "validation: 2", "test: 3"]
    assert [line.get_xdata()[0] for line in ax.lines] == [6.5, 8.5]


def test_the_cache_picture_splits_the_model_where_training_starts():
    ax = draw_frozen_prefix(classifier("gpt2-small")).axes[0]
    texts = [text.get_text() for text in ax.texts if text.get_text()]
    parts = texts[:-2]
    assert len(parts) == 16 and parts[13] == "block 12" and parts[12] == "block 11"
    assert "once per message" in texts[-2] and "every training step" in texts[-1]
    boxes = draw_frozen_prefix(classifier("gpt2-small", "last_two_blocks")).axes[0].patches
    colours = [to_rgba(box.get_facecolor()) for box in boxes]
    assert colours.count(to_rgba("tab:orange")) == 4  # two blocks, the final norm, the head


def test_the_noise_band_is_two_standard_errors_of_a_difference_and_marks_the_ties():
    accuracies = {"chapter": 0.95, "flexible": 0.9833, "first": 0.75}
    ax = draw_noise_band(accuracies, "chapter", 300).axes[0]
    low, high = ax.patches[0].get_x(), ax.patches[0].get_x() + ax.patches[0].get_width()
    assert (high - low) / 2 == pytest.approx(2 * (2 * 0.95 * 0.05 / 300) ** 0.5)
    assert (high - low) / 2 == pytest.approx(0.0356, abs=1e-4)  # lesson 12's 3.6 points
    colours = [tuple(colour) for colour in ax.collections[0].get_facecolors()]
    by_name = dict(zip(["first", "chapter", "flexible"], colours, strict=True))
    assert by_name["flexible"] == by_name["chapter"] == to_rgba("0.85")
    assert by_name["first"] == to_rgba("tab:orange")
