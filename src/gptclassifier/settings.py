"""What decides a run: the settings, their allowed values, and the `book` and `smoke` profiles."""

import os
from dataclasses import dataclass, fields, replace

from gptclassifier.errors import ConfigError, check_choice

PROFILE_VARIABLE = "GPTCLASSIFIER_PROFILE"

# The model setting's choices: GPT-2's four published sizes and what differs between them.
GPT_SIZES = {
    "gpt2-small": {"emb_dim": 768, "n_layers": 12, "n_heads": 12},  # 124M parameters
    "gpt2-medium": {"emb_dim": 1024, "n_layers": 24, "n_heads": 16},  # 355M
    "gpt2-large": {"emb_dim": 1280, "n_layers": 36, "n_heads": 20},  # 774M
    "gpt2-xl": {"emb_dim": 1600, "n_layers": 48, "n_heads": 25},  # 1558M
    # A tiny model with GPT-2's vocabulary, for tests and the smoke profile.
    "gpt2-nano": {"emb_dim": 48, "n_layers": 3, "n_heads": 3, "context_length": 128},  # 2.5M
    # Its larger siblings, growing as GPT-2's sizes do (wider, deeper, heads of the same width):
    # the smoke profile's stand-ins for gpt2-medium, gpt2-large and gpt2-xl.
    "gpt2-nano-medium": {"emb_dim": 64, "n_layers": 6, "n_heads": 4, "context_length": 128},  # 3.5M
    "gpt2-nano-large": {"emb_dim": 80, "n_layers": 9, "n_heads": 5, "context_length": 128},  # 4.7M
    "gpt2-nano-xl": {"emb_dim": 96, "n_layers": 12, "n_heads": 6, "context_length": 128},  # 6.2M
}
MODELS = tuple(GPT_SIZES)
WEIGHT_CHOICES = ("pretrained", "random")
TRAINABLE_STRATEGIES = ("last_layer", "last_block", "last_two_blocks", "all", "lora")
POOLINGS = ("last", "first", "flexible", "mean")
PADDINGS = ("longest", "context")  # to the longest training message, or to the model's context
PARSINGS = ("exact", "book")
LOOPS = ("fast", "chapter")
PRECISIONS = ("auto", "float32", "bfloat16", "float64")
# The allowed values of every setting that has a fixed set of them, by TrainSettings field.
CHOICES = {
    "model": MODELS,
    "weights": WEIGHT_CHOICES,
    "trainable": TRAINABLE_STRATEGIES,
    "pooling": POOLINGS,
    "padding": PADDINGS,
    "parsing": PARSINGS,
    "loop": LOOPS,
    "precision": PRECISIONS,
}
WHOLE_NUMBERS = ("num_epochs", "batch_size", "eval_freq", "eval_iter", "lora_rank")
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
        for name, choices in CHOICES.items():
            check_choice(name, getattr(self, name), choices)
        for name in WHOLE_NUMBERS:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a whole number of at least 1, not {value!r}")
        if not self.lr > 0 or not self.weight_decay >= 0:
            raise ConfigError(
                f"lr must be above 0 and weight_decay at least 0, not {self.lr} and "
                f"{self.weight_decay}"
            )


SETTING_NAMES = tuple(field.name for field in fields(TrainSettings))


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
        training=TrainSettings(model="gpt2-nano", lr=1e-3, eval_freq=15, eval_iter=2),
    ),
}


def get_profile(name: str | None = None) -> Profile:
    """Return the named profile, else the one $GPTCLASSIFIER_PROFILE names, else `book`."""
    name = name or os.environ.get(PROFILE_VARIABLE) or "book"
    check_choice("profile", name, PROFILES)
    return PROFILES[name]


def train_settings(profile: str | None = None, **overrides) -> TrainSettings:
    """Return a profile's training settings with every override that is not None applied."""
    chosen = {name: value for name, value in overrides.items() if value is not None}
    return replace(get_profile(profile).training, **chosen)
