"""Run profiles: `book` (the chapter's data and settings) and `smoke` (seconds, offline)."""

import os
from dataclasses import dataclass

from gptclassifier.errors import ConfigError

PROFILE_VARIABLE = "GPTCLASSIFIER_PROFILE"
STRICT_VARIABLE = "GPTCLASSIFIER_STRICT"


@dataclass(frozen=True)
class Profile:
    """The inputs and settings of one kind of run; the code path is the same for all."""

    name: str
    data: str  # "sms": the SMS Spam Collection; "practice": the project's practice set
    model: str
    batch_size: int
    num_epochs: int
    lr: float
    weight_decay: float
    eval_freq: int
    eval_iter: int
    seed: int = 123


PROFILES = {
    "book": Profile(
        name="book",
        data="sms",
        model="gpt2-small",
        batch_size=8,
        num_epochs=5,
        lr=5e-5,
        weight_decay=0.1,
        eval_freq=50,
        eval_iter=5,
    ),
    "smoke": Profile(
        name="smoke",
        data="practice",
        model="gpt2-nano",
        batch_size=8,
        num_epochs=2,
        lr=5e-4,
        weight_decay=0.1,
        eval_freq=5,
        eval_iter=2,
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
