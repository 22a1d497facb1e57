"""The errors a user can fix, and strict mode, which turns a fallback into an error."""

import pytest

from gptclassifier.errors import strict_mode


@pytest.mark.parametrize(
    ("value", "strict"), [("1", True), ("yes", True), ("0", False), ("", False), ("false", False)]
)
def test_strict_mode_reads_the_environment(monkeypatch, value, strict):
    monkeypatch.setenv("GPTCLASSIFIER_STRICT", value)
    assert strict_mode() is strict
