"""Run profiles: `book` (the chapter's data and settings) and `smoke` (seconds, offline)."""

import os
from dataclasses import dataclass, replace

from gptclassifier.errors import ConfigError

PROFILE_VARIABLE = "GPTCLASSIFIER_PROFILE"
STRICT_VARIABLE = "GPTCLASSIFIER_STRICT"
LOOPS = ("fast", "chapter")
# What `train --fast` sets, where the user chose nothing else: the fastest way.
FASTEST = {"pooling": "flexible", "precision": "auto", "bucket": True}


@dataclass(frozen=True)
class TrainSettings:
    """Everything that decides a fine-tuning run; the defaults are the chapter's."""

    model: str = "gpt2-small"
    weights: str = "pretrained"  # "random": seeded random weights, by choice
    trainable: str = "last_block"
    lora_rank: int = 16  # trainable "lora": the rank and scale of each low-rank update
    lora_alpha: float = 16.0
    pooling: str = "last"
    padding: str = "longest"  # to the longest training message; "context": the model's context
    causal_mask: bool = True  # False: every token attends to every other
    ignore_index: int = -100  # the class index that the loss skips (-100, as PyTorch: none)
    parsing: str = "book"  # the chapter's pandas read (5,572 messages); "exact" keeps 5,574
    loop: str = "fast"  # frozen blocks once per message; "chapter": every block every step
    precision: str = "float32"  # "bfloat16", "float64", or "auto" (bfloat16 where native)
    bucket: bool = False  # fast loop with flexible pooling: batch similar lengths together
    compile: bool = False  # fast loop: torch.compile the trainable part
    num_epochs: int = 5
    batch_size: int = 8
    lr: float = 5e-5
    weight_decay: float = 0.1
    eval_freq: int = 50
    eval_iter: int = 5
    seed: int = 123
    data_seed: int | None = None  # of balancing and splitting; None: `seed`

    @property
    def split_seed(self) -> int:
        """The seed that balances and splits the data."""
        return self.seed if self.data_seed is None else self.data_seed

    @property
    def trims_padding(self) -> bool:
        """Whether each batch is cut to its longest message (fast loop, flexible pooling)."""
        return self.loop == "fast" and self.pooling == "flexible"

    def __post_init__(self):
        if self.loop not in LOOPS:
            raise ConfigError(f"unknown loop {self.loop!r}: choose one of {', '.join(LOOPS)}")
        for name in ("num_epochs", "batch_size", "eval_freq", "eval_iter", "lora_rank"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a whole number of at least 1, not {value!r}")
        if not self.lr > 0 or not self.weight_decay >= 0:
            raise ConfigError(
                f"lr must be above 0 and weight_decay at least 0, not {self.lr} and "
                f"{self.weight_decay}"
            )


@dataclass(frozen=True)
class Profile:
    """The inputs of one kind of run; the code path is the same for all."""

    name: str
    data: str  # "sms": the SMS Spam Collection; "practice": the project's practice set
    training: TrainSettings


PROFILES = {
    "book": Profile("book", data="sms", training=TrainSettings()),
    "smoke": Profile(
        "smoke",
        data="practice",
        training=TrainSettings(model="gpt2-nano", lr=1e-3, eval_freq=5, eval_iter=2),
    ),
}


def get_profile(name: str | None = None) -> Profile:
    """Return the named profile, else the one $GPTCLASSIFIER_PROFILE names, else `book`."""
    name = name or os.environ.get(PROFILE_VARIABLE) or "book"
    try:
        return PROFILES[name]
    except KeyError:
        raise ConfigError(
            f"unknown profile {name!r}: choose one of {', '.join(PROFILES)}"
        ) from None


def strict_mode() -> bool:
    """Return whether $GPTCLASSIFIER_STRICT forbids falling back to stand-in data or weights."""
    return os.environ.get(STRICT_VARIABLE, "").strip().lower() not in ("", "0", "false", "no")


def train_settings(profile: str | None = None, **overrides) -> TrainSettings:
    """Return a profile's training settings with every override that is not None applied."""
    chosen = {name: value for name, value in overrides.items() if value is not None}
    return replace(get_profile(profile).training, **chosen)
