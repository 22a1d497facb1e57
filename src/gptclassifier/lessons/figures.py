"""Pictures of the chapter's ideas, drawn from the real model and the real batches."""

import math
import textwrap
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch, Patch
from torch import nn

from gptclassifier.evaluation.metrics import tie_margin
from gptclassifier.model.gpt import GPTModel
from gptclassifier.model.tokenizer import PAD_TOKEN_ID, VOCAB_SIZE
from gptclassifier.training.loop import evaluating
from gptclassifier.training.pooling import pooled_positions

TRAINABLE_COLOUR, FROZEN_COLOUR, PADDING_COLOUR = "tab:orange", "lightsteelblue", "0.85"
POOLING_MARKERS = {"last": ("X", "tab:red"), "first": ("o", "tab:green"), "flexible": ("*", "k")}


@dataclass(frozen=True)
class ModelPart:
    """One box of the model diagram: a named part, its parameter count, and what trains."""

    name: str
    parameters: int
    trainable: int


def model_parts(model: GPTModel) -> list[ModelPart]:
    """Return the model's parts from input to output, with their parameter counts."""
    named = [("token embedding", model.tok_emb), ("position embedding", model.pos_emb)]
    named += [(f"block {i + 1}", block) for i, block in enumerate(model.trf_blocks)]
    linear = getattr(model.out_head, "linear", model.out_head)  # the layer inside LoRA's wrapper
    head = f"output head ({linear.in_features} -> {linear.out_features})"
    named += [("final norm", model.final_norm), (head, model.out_head)]
    return [
        ModelPart(
            name,
            sum(p.numel() for p in module.parameters()),
            sum(p.numel() for p in module.parameters() if p.requires_grad),
        )
        for name, module in named
    ]


def draw_classifier(model: GPTModel) -> Figure:
    """Draw the model as a stack of parts, trainable ones coloured, with parameter counts."""
    parts = model_parts(model)
    fig = Figure(figsize=(6, 0.42 * len(parts) + 1.2), layout="constrained")
    ax = fig.add_subplot()
    for row, part in enumerate(parts):
        colour = TRAINABLE_COLOUR if part.trainable else FROZEN_COLOUR
        ax.add_patch(
            FancyBboxPatch(
                (0.05, row + 0.12), 0.9, 0.76, boxstyle="round,pad=0.02", fc=colour, ec="0.3"
            )
        )
        state = "trainable" if part.trainable == part.parameters else "frozen"
        if 0 < part.trainable < part.parameters:
            state = f"{part.trainable:,} trainable"
        ax.text(0.1, row + 0.5, part.name, va="center", fontsize=9)
        ax.text(
            0.9, row + 0.5, f"{part.parameters:,}  ({state})", va="center", ha="right", fontsize=9
        )
    trained = sum(part.trainable for part in parts)
    total = sum(part.parameters for part in parts)
    ax.set_title(f"{trained:,} of {total:,} parameters trained", fontsize=10)
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.1, len(parts) + 0.1)
    ax.axis("off")
    ax.annotate(
        "token ids in", (0.5, -0.05), ha="center", va="top", fontsize=8, annotation_clip=False
    )
    return fig


def draw_padded_batch(
    batch: torch.Tensor, poolings=("last", "first", "flexible"), pad_token_id=PAD_TOKEN_ID
) -> Figure:
    """Draw a batch of token ids as a heatmap, padding grey, and the position each pooling reads."""
    ids = batch.cpu().numpy()
    fig = Figure(figsize=(max(6, min(12, 2 + 0.22 * ids.shape[1])), 0.45 * len(ids) + 1.6))
    fig.set_layout_engine("constrained")
    ax = fig.add_subplot()
    cmap = colormaps["viridis"].with_extremes(bad=PADDING_COLOUR)
    image = ax.imshow(np.ma.masked_equal(ids, pad_token_id), cmap=cmap, aspect="auto")
    fig.colorbar(image, ax=ax, label="token id", pad=0.02)
    rows = np.arange(len(ids))
    for pooling in poolings:
        marker, colour = POOLING_MARKERS[pooling]
        columns = pooled_positions(batch, pooling, pad_token_id).cpu().numpy()
        label = f"{pooling} pooling reads"
        ax.scatter(columns, rows, s=90, marker=marker, color=colour, label=label, zorder=3)
    ax.set_xlabel("position (grey: <|endoftext|> padding)")
    ax.set_ylabel("message in the batch")
    ax.set_yticks(rows)
    if poolings:
        fig.legend(loc="outside lower center", ncol=len(poolings), fontsize=8)
    return fig


def attention_weights(model: GPTModel, input_ids: torch.Tensor, block: int = -1) -> torch.Tensor:
    """Return one block's attention weights, shape (batch, heads, query, key), computed by hand."""
    index = range(len(model.trf_blocks))[block]
    with evaluating(model):
        hidden = model.embed(input_ids)
        for earlier in model.trf_blocks[:index]:
            hidden = earlier(hidden)
        chosen = model.trf_blocks[index]
        return causal_attention(chosen.att, chosen.norm1(hidden))


def causal_attention(attention: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Return softmax(QK^T / sqrt(head_dim)) with the causal mask, per head."""
    batch, tokens, _ = x.shape
    shape = (batch, tokens, attention.num_heads, attention.head_dim)
    queries = attention.W_query(x).view(shape).transpose(1, 2)
    keys = attention.W_key(x).view(shape).transpose(1, 2)
    scores = queries @ keys.transpose(2, 3) / math.sqrt(attention.head_dim)
    future = torch.ones(tokens, tokens, dtype=torch.bool, device=x.device).triu(1)
    return torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)


def draw_pooled_attention(
    model: GPTModel, input_ids: torch.Tensor, tokenizer, poolings=("last", "flexible"), block=-1
) -> Figure:
    """Draw where one padded message's pooled positions attend in a block, averaged over heads."""
    weights = attention_weights(model, input_ids[:1], block)[0].mean(dim=0).cpu()
    ids = input_ids[0].tolist()
    labels = [tokenizer.decode([token]) for token in ids]
    colours = [PADDING_COLOUR if t == PAD_TOKEN_ID else "tab:blue" for t in ids]
    fig = Figure(figsize=(min(12, 2 + 0.3 * len(ids)), 2.2 * len(poolings)), layout="constrained")
    axes = fig.subplots(len(poolings), 1, sharex=True, squeeze=False)
    for ax, pooling in zip(axes[:, 0], poolings, strict=True):
        position = pooled_positions(input_ids[:1], pooling).item()
        ax.bar(range(len(ids)), weights[position].numpy(), color=colours)
        ax.set_ylabel("attention")
        ax.set_title(
            f"{pooling} pooling: position {position} ({labels[position]!r}) attends to", fontsize=10
        )
    axes[-1, 0].set_xticks(
        range(len(ids)), [repr(label)[1:-1] for label in labels], rotation=90, fontsize=8
    )
    return fig


# The chapter's three stages and ten steps (its figure 6.4), with the lessons that take each.
STAGES = (
    (
        "Stage 1: the data",
        (("1 Download the data", "1"), ("2 Balance and split", "1, 2"), ("3 Data loaders", "3")),
    ),
    (
        "Stage 2: the model",
        (
            ("4 Build GPT-2", "4"),
            ("5 Load pretrained weights", "4"),
            ("6 New head, partial unfreezing", "5, 6"),
            ("7 Loss and accuracy", "7"),
        ),
    ),
    (
        "Stage 3: fine-tune and use",
        (("8 Fine-tune", "7"), ("9 Evaluate", "8"), ("10 Classify new messages", "8")),
    ),
)
SPAM_EXAMPLE = "You are a winner you have been specially selected to receive $1000 cash."


def _box(ax, x: float, y: float, width: float, text: str, colour: str, **text_options) -> None:
    """Draw a rounded box of height 0.6 with its lower left corner at (x, y), text centred."""
    ax.add_patch(FancyBboxPatch((x, y), width, 0.6, boxstyle="round,pad=0.02", fc=colour, ec="0.3"))
    ax.text(x + width / 2, y + 0.3, text, ha="center", va="center", **text_options)


def draw_chapter_stages(stages=STAGES) -> Figure:
    """Draw the chapter's plan: three stages of steps, each with the lessons that take it."""
    fig = Figure(figsize=(9, 3.4), layout="constrained")
    ax = fig.add_subplot()
    tallest = max(len(steps) for _, steps in stages)
    for column, (stage, steps) in enumerate(stages):
        x = column * 3.1
        _box(ax, x, tallest, 2.9, stage, TRAINABLE_COLOUR, fontsize=10, weight="bold")
        for row, (step, lessons) in enumerate(steps):
            y = tallest - 1 - row
            _box(ax, x, y, 2.9, step, FROZEN_COLOUR, fontsize=9)
            ax.text(x + 2.85, y + 0.05, f"lesson {lessons}", ha="right", fontsize=7, color="0.3")
        if column:
            ax.annotate("", (x - 0.05, tallest + 0.3), (x - 0.15, tallest + 0.3),
                        arrowprops={"arrowstyle": "->"})  # fmt: skip
    ax.set_xlim(-0.1, len(stages) * 3.1)
    ax.set_ylim(-0.1, tallest + 0.7)
    ax.axis("off")
    return fig


def draw_finetuning_kinds(text: str = SPAM_EXAMPLE) -> Figure:
    """Draw the two kinds of fine-tuning side by side: instruction and classification (6.1)."""
    kinds = (
        ("Instruction fine-tuning",
         f"Is the following text spam? Answer with yes or no:\n'{text}'",
         f"GPT-2, output layer: {VOCAB_SIZE:,} tokens", "'Yes.' (any task, answered in words)"),
        ("Classification fine-tuning (this chapter)", f"'{text}'",
         "GPT-2, output layer: 2 classes", "spam  (one task, one of its classes)"),
    )  # fmt: skip
    fig = Figure(figsize=(10, 3.2), layout="constrained")
    for ax, (title, prompt, model, answer) in zip(fig.subplots(1, 2), kinds, strict=True):
        _box(ax, 0, 2.1, 1, "\n".join(textwrap.wrap(prompt, 48)), "white", fontsize=7.5)
        _box(ax, 0.15, 1.1, 0.7, model, FROZEN_COLOUR, fontsize=8.5)
        _box(ax, 0.15, 0.1, 0.7, answer, TRAINABLE_COLOUR, fontsize=8.5)
        for top in (2.1, 1.1):
            ax.annotate("", (0.5, top - 0.35), (0.5, top), arrowprops={"arrowstyle": "->"})
        ax.set_title(title, fontsize=10)
        ax.set_xlim(-0.05, 1.05)
        ax.set_ylim(0, 2.8)
        ax.axis("off")
    return fig


def draw_prediction(logits: torch.Tensor, classes=("ham", "spam")) -> Figure:
    """Draw one message's way to a label: its logits, their softmax, and the class argmax picks."""
    logits = logits.detach().float().cpu()
    probabilities = torch.softmax(logits, dim=-1)
    chosen = int(probabilities.argmax())
    colours = [
        TRAINABLE_COLOUR if index == chosen else FROZEN_COLOUR for index in range(len(logits))
    ]
    fig = Figure(figsize=(8, 2.4), layout="constrained")
    raw, softmax, label = fig.subplots(1, 3, width_ratios=(2, 2, 1))
    for ax, values, title in ((raw, logits, "logits"), (softmax, probabilities, "softmax")):
        ax.bar(list(classes), values.numpy(), color=colours)
        ax.bar_label(ax.containers[0], fmt="%.3f", fontsize=8)
        ax.axhline(0, color="0.3", linewidth=0.8)
        ax.set_title(title, fontsize=10)
    softmax.set_ylim(0, 1.2)
    label.text(0.5, 0.5, f"argmax\n-> {classes[chosen]}", ha="center", va="center", fontsize=12)
    label.axis("off")
    return fig


def draw_head_swap(model: GPTModel, num_classes: int = 2) -> Figure:
    """Draw a GPT model's parts from input to output, beside the classifier that swaps its head."""
    *body, head = model_parts(model)
    width = model.out_head.in_features
    new_head = f"output head ({width} -> {num_classes})"
    columns = (
        ("the language model", [*body, head], "0.8"),
        ("the classifier (chapter 6)", [*body, ModelPart(new_head, (width + 1) * num_classes, 0)],
         TRAINABLE_COLOUR),
    )  # fmt: skip
    fig = Figure(figsize=(9, 0.5 * len(body) + 1.6), layout="constrained")
    ax = fig.add_subplot()
    for column, (title, parts, head_colour) in enumerate(columns):
        x = column * 5.2
        for row, part in enumerate(parts):
            colour = head_colour if part is parts[-1] else FROZEN_COLOUR
            _box(ax, x, 0.8 * row, 4.4, f"{part.name}: {part.parameters:,}", colour, fontsize=8)
        ax.text(x + 2.2, 0.8 * len(parts) + 0.1, title, ha="center", fontsize=10, weight="bold")
    top = 0.8 * len(body) + 0.3
    ax.annotate("replaced", (5.15, top), (4.45, top), ha="center", va="bottom", fontsize=8,
                arrowprops={"arrowstyle": "->"})  # fmt: skip
    ax.set_xlim(-0.1, 9.7)
    ax.set_ylim(-0.2, 0.8 * len(body) + 1.4)
    ax.axis("off")
    return fig


def draw_training_loop(num_epochs: int = 5, eval_freq: int = 50, eval_iter: int = 5) -> Figure:
    """Draw the chapter's training loop: four steps a batch, and when it measures its progress."""
    steps = ("optimizer.zero_grad()", "calc_loss_batch(...)", "loss.backward()", "optimizer.step()")
    fig = Figure(figsize=(9, 3.2), layout="constrained")
    ax = fig.add_subplot()
    ax.text(4.5, 2.85, f"for each of {num_epochs} epochs, for each training batch:", ha="center")
    for index, step in enumerate(steps):
        _box(ax, index * 2.3, 1.2, 2.0, f"{index + 1}. {step}", FROZEN_COLOUR, fontsize=8)
        if index:
            ax.annotate("", (index * 2.3 - 0.05, 1.5), (index * 2.3 - 0.25, 1.5),
                        arrowprops={"arrowstyle": "->"})  # fmt: skip
    ax.annotate("next batch", (1.0, 1.85), (7.9, 1.85), ha="center", va="bottom", fontsize=8,
                arrowprops={"arrowstyle": "->", "connectionstyle": "arc3,rad=0.15"})  # fmt: skip
    measures = (
        f"every {eval_freq} steps: training and validation loss, {eval_iter} batches each",
        f"after each epoch: training and validation accuracy, {eval_iter} batches each",
    )
    for column, measure in enumerate(measures):
        _box(ax, column * 4.6, 0, 4.3, measure, TRAINABLE_COLOUR, fontsize=8)
    ax.set_xlim(-0.1, 9.1)
    ax.set_ylim(-0.1, 3.1)
    ax.axis("off")
    return fig


def draw_shuffle_and_cut(balanced_labels, split_labels, classes=("ham", "spam")) -> Figure:
    """Draw the labels of the balanced rows, then shuffled and cut into the three splits."""
    split_labels = [list(labels) for labels in split_labels]
    rows = [list(balanced_labels), [label for labels in split_labels for label in labels]]
    codes = np.array([[classes.index(label) for label in row] for row in rows])
    fig = Figure(figsize=(9, 2.2), layout="constrained")
    ax = fig.add_subplot()
    colours = [colormaps["tab10"](index) for index in range(len(classes))]
    ax.imshow(np.array(colours)[codes], aspect="auto", interpolation="nearest")
    ax.set_yticks([0, 1], ["balanced", "shuffled, cut"])
    start = 0
    for name, labels in zip(("training", "validation", "test"), split_labels, strict=True):
        ax.text(start + len(labels) / 2, 1.6, f"{name}: {len(labels):,}", ha="center", va="top")
        if start:
            ax.plot([start - 0.5] * 2, [0.5, 1.5], color="k", linewidth=2)
        start += len(labels)
    ax.set_ylim(2.1, -0.5)
    ax.set_xticks([])
    handles = [
        Patch(color=colour, label=label) for colour, label in zip(colours, classes, strict=True)
    ]
    ax.legend(handles=handles, loc="upper right", bbox_to_anchor=(1, 1.45), ncol=len(classes),
              frameon=False)  # fmt: skip
    return fig


def draw_frozen_prefix(model: GPTModel) -> Figure:
    """Draw which parts run once per message (frozen, cached) and which at every training step."""
    parts = model_parts(model)
    first_trained = next(i for i, part in enumerate(parts) if part.trainable)
    fig = Figure(figsize=(8, 0.4 * len(parts) + 0.8), layout="constrained")
    ax = fig.add_subplot()
    for row, part in enumerate(parts):
        colour = TRAINABLE_COLOUR if row >= first_trained else FROZEN_COLOUR
        _box(ax, 0, 0.7 * row, 3.6, part.name, colour, fontsize=8)
    spans = (
        (0, first_trained, "frozen: run once per message,\nits output kept (the cache)"),
        (first_trained, len(parts), "run at every training step"),
    )
    for first, end, text in spans:
        low, high = 0.7 * first + 0.05, 0.7 * end - 0.15
        ax.annotate("", (3.8, low), (3.8, high), arrowprops={"arrowstyle": "|-|"})
        ax.text(3.95, (low + high) / 2, text, va="center", fontsize=9)
    ax.set_xlim(-0.1, 7)
    ax.set_ylim(-0.2, 0.7 * len(parts) + 0.1)
    ax.axis("off")
    return fig


def draw_noise_band(test_accuracies: dict, reference: str, num_examples: int) -> Figure:
    """Draw test accuracies against a reference's, with the band inside which a gap is a tie."""
    centre = test_accuracies[reference]
    margin = tie_margin(centre, num_examples)
    names = sorted(test_accuracies, key=test_accuracies.get)
    values = [test_accuracies[name] for name in names]
    fig = Figure(figsize=(7, 0.28 * len(names) + 1.2), layout="constrained")
    ax = fig.add_subplot()
    ax.axvspan(centre - margin, centre + margin, color=FROZEN_COLOUR, alpha=0.6,
               label=f"a tie with {reference} (±{margin:.1%})")  # fmt: skip
    tied = [abs(value - centre) <= margin for value in values]
    ax.scatter(values, names, c=[PADDING_COLOUR if tie else TRAINABLE_COLOUR for tie in tied],
               edgecolors="0.3", zorder=3)  # fmt: skip
    ax.xaxis.set_major_formatter(lambda value, _: f"{value:.0%}")
    ax.set_xlabel(f"test accuracy ({num_examples} messages)")
    ax.legend(loc="lower right", fontsize=8)
    return fig
