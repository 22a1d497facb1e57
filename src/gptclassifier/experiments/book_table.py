"""The book's table of design experiments: what each row changes, and what the book measured."""

from collections.abc import Sequence
from dataclasses import dataclass, field

from gptclassifier.errors import check_choice
from gptclassifier.settings import get_profile


@dataclass(frozen=True)
class Experiment:
    """One row of the table: what it changes from the chapter, and the book's result for it."""

    name: str
    change: str  # in words
    settings: dict = field(default_factory=dict)  # TrainSettings overrides
    baseline: str | None = None  # a non-GPT model instead of fine-tuning
    book_row: int | None = None  # its row in the book's table
    book: tuple[float, float, float] | None = None  # the book's training, validation, test %
    book_minutes: float | None = None  # the book's training time, on an A100


def _row(number, name, change, settings, accuracies, minutes) -> Experiment:
    """Return an experiment of the book's table."""
    return Experiment(name, change, settings, None, number, accuracies, minutes)


# The book's table (ch06/02_bonus_additional-experiments): pretrained GPT-2, one seed, an A100.
# Row 15 (no padding, batch size 1, gradient accumulation over 8 steps) is left out: it trains
# the same steps as row 16 (flexible), which needs no accumulation.
# fmt: off
_BOOK_TABLE = (
    # row, name, what changes, settings, the book's training / validation / test %, minutes
    (1, "chapter", "the chapter's settings", {}, (96.63, 99.33, 95.00), 0.28),
    (2, "first", "train the first token", {"pooling": "first"}, (78.46, 80.54, 75.00), 0.28),
    (3, "last_layer", "train only the head", {"trainable": "last_layer"}, (78.65, 79.87, 72.00), 0.25),
    (4, "last_two_blocks", "train the last two blocks", {"trainable": "last_two_blocks"}, (98.85, 98.66, 98.33), 0.33),
    (5, "all", "train every layer", {"trainable": "all"}, (99.62, 96.64, 96.67), 0.69),
    (6, "gpt2-medium", "gpt2-medium (355M)", {"model": "gpt2-medium"}, (87.50, 91.28, 84.67), 0.75),
    (7, "gpt2-large", "gpt2-large (774M)", {"model": "gpt2-large"}, (99.52, 98.66, 96.67), 1.50),
    (8, "gpt2-xl", "gpt2-xl (1558M)", {"model": "gpt2-xl"}, (99.81, 99.81, 98.33), 2.83),
    (9, "gpt2-xl_all", "gpt2-xl, every layer", {"model": "gpt2-xl", "trainable": "all"}, (100.00, 98.66, 98.67), 8.12),
    (10, "random_all", "random weights, every layer", {"weights": "random", "trainable": "all"}, (100.00, 96.64, 93.67), 0.69),
    (11, "lora", "LoRA, rank 16, alpha 16", {"trainable": "lora", "lora_rank": 16, "lora_alpha": 16}, (100.00, 97.32, 96.67), 0.75),
    (12, "gpt2-xl_lora", "gpt2-xl, LoRA, rank 16, alpha 8", {"model": "gpt2-xl", "trainable": "lora", "lora_rank": 16, "lora_alpha": 8}, (100.00, 98.66, 98.33), 5.79),
    (13, "context_padding", "pad to the context (1024)", {"padding": "context"}, (83.08, 87.92, 78.33), 2.46),
    (14, "no_padding", "no padding: batch size 1", {"pooling": "flexible", "batch_size": 1}, (100.00, 98.66, 98.00), 1.75),
    (16, "flexible", "the last real token (flexible)", {"pooling": "flexible"}, (99.42, 98.66, 98.33), 0.30),
    (17, "no_causal_mask", "no causal mask", {"causal_mask": False}, (99.23, 98.66, 95.33), 0.29),
    (18, "ignore_index", "ignore_index 50256 in the loss", {"ignore_index": 50256}, (96.63, 99.33, 95.00), 0.28),
    (19, "mean", "the mean of every position", {"pooling": "mean"}, (97.79, 99.33, 96.33), 0.32),
)
# fmt: on
EXPERIMENTS = {
    experiment.name: experiment
    for experiment in (
        *(_row(*row) for row in _BOOK_TABLE),
        Experiment("majority", "baseline: always the commonest class", baseline="majority"),
        Experiment("tfidf", "baseline: TF-IDF and logistic regression", baseline="tfidf"),
    )
}


# What the rows' GPT-2 sizes become in a profile: in smoke, gpt2-nano's siblings (as gpt2-nano
# stands in for gpt2-small), so that every row runs in seconds.
PROFILE_MODELS = {
    "smoke": {
        "gpt2-medium": "gpt2-nano-medium",
        "gpt2-large": "gpt2-nano-large",
        "gpt2-xl": "gpt2-nano-xl",
    },
}


def row_settings(experiment: Experiment, profile: str | None = None) -> dict:
    """Return the settings a row changes in `profile`, with the profile's stand-in model sizes."""
    sizes = PROFILE_MODELS.get(get_profile(profile).name, {})
    model = experiment.settings.get("model")
    return experiment.settings | ({"model": sizes[model]} if model in sizes else {})


def choose_experiments(names: Sequence[str] | None = None) -> list[Experiment]:
    """Return the named experiments in the table's order (all when `names` is empty or None)."""
    if not names:
        return list(EXPERIMENTS.values())
    for name in names:
        check_choice("experiment", name, EXPERIMENTS)
    return [experiment for name, experiment in EXPERIMENTS.items() if name in names]
