"""Where the chapter's training loop spends its work, in FLOPs by phase, and what each idea removes.

FLOPs are counted as `torch.utils.flop_counter` counts them: the matrix products only, two
per multiply-add, and attention over every query-key pair (the causal mask is not discounted).
Norms, GELU, softmax, embeddings and the optimiser's update are left out: a few percent.
"""

import math
from collections import Counter
from dataclasses import dataclass

from matplotlib.figure import Figure

from gptclassifier.errors import ConfigError
from gptclassifier.model.tokenizer import PAD_TOKEN_ID

PHASES = (
    "frozen blocks, training steps",
    "frozen blocks, evaluation",
    "frozen blocks, once per message",
    "trainable block, forward",
    "output head, forward",
    "backward",
)
# Each way keeps the ideas of the ways above it and adds one.
WAYS = {
    "the chapter's loop": {},
    "+ frozen blocks once": {"cache": True},
    "+ one position through the last block": {"cache": True, "one_position": True},
    "+ padding trimmed": {"cache": True, "one_position": True, "trim": True},
}
UNITS = ((1e15, "PFLOP"), (1e12, "TFLOP"), (1e9, "GFLOP"), (1e6, "MFLOP"), (1, "FLOP"))


def real_tokens(ids) -> tuple[int, ...]:
    """Return a padded message's tokens without its padding."""
    return tuple(token for token in ids if token != PAD_TOKEN_ID)


@dataclass(frozen=True)
class Workload:
    """What the chapter's loop runs through: real lengths, padded length and loop settings."""

    train_lengths: tuple[int, ...]
    val_lengths: tuple[int, ...]
    distinct_lengths: tuple[int, ...]  # one per distinct message of all splits (the cache's pass)
    pad_to: int
    num_epochs: int
    batch_size: int
    eval_freq: int
    eval_iter: int

    @classmethod
    def of(cls, datasets: dict, settings) -> "Workload":
        """Return the workload of training on `datasets` with a profile's TrainSettings."""
        lengths = {name: [max(1, len(real_tokens(ids))) for ids in dataset.encoded_texts]
                   for name, dataset in datasets.items()}  # fmt: skip
        distinct = {real_tokens(ids) for data in datasets.values() for ids in data.encoded_texts}
        return cls(
            tuple(lengths["train"]),
            tuple(lengths["validation"]),
            tuple(max(1, len(tokens)) for tokens in distinct),
            datasets["train"].max_length,
            settings.num_epochs,
            settings.batch_size,
            settings.eval_freq,
            settings.eval_iter,
        )

    def passes(self, trim: bool = False):
        """Yield (messages, {width: probability}, training) for every pass the loop makes.

        Batches are padded to `pad_to`, or with `trim` to their longest message: for a shuffled
        training batch that width is random, and its probabilities are exact.
        """
        size = self.batch_size
        steps = self.num_epochs * (len(self.train_lengths) // size)
        measurements = len(range(0, steps, self.eval_freq)) + self.num_epochs
        if trim:
            train_widths = batch_width_probabilities(self.train_lengths, size)
        else:
            train_widths = {self.pad_to: 1.0}
        yield steps * size, train_widths, True
        train_batches = min(self.eval_iter, len(self.train_lengths) // size)
        yield measurements * train_batches * size, train_widths, False
        val_batches = min(self.eval_iter, math.ceil(len(self.val_lengths) / size))
        for start in range(0, val_batches * size, size):
            batch = self.val_lengths[start : start + size]
            yield measurements * len(batch), {max(batch) if trim else self.pad_to: 1.0}, False


def batch_width_probabilities(lengths, batch_size: int) -> dict[int, float]:
    """Return how likely each longest length is in a batch drawn at random without replacement.

    The k-th shortest message is the longest of the batch when the other messages come from
    the k - 1 shorter ones: comb(k - 1, batch_size - 1) of the comb(n, batch_size) batches.
    """
    ordered, batches = sorted(lengths), math.comb(len(lengths), batch_size)
    probabilities = Counter()
    for k, length in enumerate(ordered[batch_size - 1 :], start=batch_size):
        probabilities[length] += math.comb(k - 1, batch_size - 1) / batches
    return dict(probabilities)


def block_flops(emb_dim: int, width: int) -> int:
    """Return one transformer block's forward FLOPs for one message of `width` tokens.

    At every position: the query, key, value and output projections and the feed-forward
    (4 x emb_dim wide), 24 emb_dim^2 in all, and attention over the `width` positions.
    """
    return width * (24 * emb_dim * emb_dim + 4 * width * emb_dim)


def one_position_block_flops(emb_dim: int, width: int, heads: int) -> int:
    """Return the FLOPs of a block's output at one position of a message (block_at_positions).

    The projections and the feed-forward run once, the query folded into the key weights and
    the value weights applied to the mixed inputs (24 emb_dim^2); each head scores and mixes
    every position's input.
    """
    return 24 * emb_dim * emb_dim + 4 * heads * width * emb_dim


def count_flops(
    workload: Workload,
    cfg: dict,
    num_frozen: int,
    num_classes: int = 2,
    cache: bool = False,
    one_position: bool = False,
    trim: bool = False,
) -> dict[str, float]:
    """Return the FLOPs of the training loop by phase (PHASES), with the ideas named.

    `cache`: the frozen blocks run once per distinct message; `one_position`: the last block's
    query, feed-forward and the head run at the pooled position only; `trim`: batches are
    padded to their longest message, and the cache keeps only real tokens (its own pass, over
    messages sorted by length, is counted without padding).
    """
    layers, dim = cfg["n_layers"], cfg["emb_dim"]
    if not 0 <= num_frozen < layers:
        raise ConfigError(f"count_flops needs a trainable block: {num_frozen} of {layers} frozen")
    flops = dict.fromkeys(PHASES, 0.0)
    for messages, widths, training in workload.passes(trim):
        for width, probability in widths.items():
            count, queries = messages * probability, 1 if one_position else width
            full_block = block_flops(dim, width)
            last_block = (
                one_position_block_flops(dim, width, cfg["n_heads"]) if one_position else full_block
            )
            trainable = (layers - num_frozen - 1) * full_block + last_block
            head = 2 * queries * dim * num_classes
            if not cache:
                phase = "training steps" if training else "evaluation"
                flops[f"frozen blocks, {phase}"] += count * num_frozen * full_block
            flops["trainable block, forward"] += count * trainable
            flops["output head, forward"] += count * head
            if training:  # the gradients of the inputs and of the weights: twice the forward
                flops["backward"] += 2 * count * (trainable + head)
    if cache:
        distinct = workload.distinct_lengths
        widths = distinct if trim else (workload.pad_to,) * len(distinct)
        once = sum(num_frozen * block_flops(dim, width) for width in widths)
        flops["frozen blocks, once per message"] = float(once)
    return flops


def flops_by_way(workload: Workload, cfg: dict, num_frozen: int, num_classes: int = 2) -> dict:
    """Return {way: {phase: FLOPs}} for every way in WAYS."""
    return {
        way: count_flops(workload, cfg, num_frozen, num_classes, **ideas)
        for way, ideas in WAYS.items()
    }


def flop_unit(flops: float) -> tuple[float, str]:
    """Return the largest unit (scale and name) that is at most `flops`."""
    return next(((scale, name) for scale, name in UNITS if flops >= scale), UNITS[-1])


def plot_flops(by_way: dict) -> Figure:
    """Draw each way's FLOPs as a bar stacked by phase, the chapter's loop on top."""
    totals = {way: sum(phases.values()) for way, phases in by_way.items()}
    chapter = next(iter(totals.values()))
    scale, unit = flop_unit(chapter)
    fig = Figure(figsize=(8, 3.6), layout="constrained")
    ax = fig.add_subplot()
    ways = list(by_way)[::-1]  # barh draws from the bottom up
    left = [0.0] * len(ways)
    for phase in PHASES:
        values = [by_way[way][phase] / scale for way in ways]
        if any(values):
            ax.barh(ways, values, left=left, label=phase)
            left = [start + value for start, value in zip(left, values, strict=True)]
    for row, way in enumerate(ways):
        ratio = "" if totals[way] == chapter else f"  ({chapter / totals[way]:.1f}x less work)"
        ax.annotate(f" {totals[way] / scale:,.3g} {unit}{ratio}", (left[row], row), va="center")
    ax.set_xlim(0, 1.5 * chapter / scale)
    ax.set_title("Where the training loop's work goes, and what each idea removes")
    ax.set_xlabel(f"work of the whole training loop ({unit})")
    ax.legend(loc="lower right", fontsize="small")
    return fig
