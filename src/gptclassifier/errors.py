"""The exceptions and warnings that gptclassifier raises for its users, and strict mode."""

import os
import warnings
from collections.abc import Iterable

STRICT_VARIABLE = "GPTCLASSIFIER_STRICT"


class GptClassifierError(Exception):
    """A problem the user can fix; the command line prints it as one sentence."""


class DataError(GptClassifierError):
    """A data file or data frame that cannot be used as it is."""


class DownloadError(GptClassifierError):
    """A file that could not be downloaded intact from any of its addresses."""


class ConfigError(GptClassifierError):
    """An unknown profile, option or setting."""


def check_choice(what: str, value, choices: Iterable) -> None:
    """Raise a ConfigError naming `what` when `value` is not one of `choices`."""
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(f"unknown {what} {value!r}: choose one of {', '.join(map(str, choices))}")


class FolderBusyError(GptClassifierError):
    """An output folder that another gptclassifier process is writing."""


class FallbackWarning(UserWarning):
    """Real data or weights were unavailable, so a stand-in is used instead."""


def warn_fallback(headline: str, reason: str, remedy: str) -> None:
    """Issue a FallbackWarning framed so that it cannot be missed in a log or a notebook."""
    rule = "!" * 78
    message = (
        f"\n{rule}\n{headline}\nWhy: {reason}\nTo fix: {remedy}\n"
        f"Set GPTCLASSIFIER_STRICT=1 to make this an error instead.\n{rule}"
    )
    warnings.warn(message, FallbackWarning, stacklevel=3)


def strict_mode() -> bool:
    """Return whether $GPTCLASSIFIER_STRICT forbids falling back to stand-in data or weights."""
    return os.environ.get(STRICT_VARIABLE, "").strip().lower() not in ("", "0", "false", "no")
