"""Profiles pick inputs and settings; the environment chooses one."""

import pytest

from gptclassifier.errors import ConfigError
from gptclassifier.profiles import get_profile, strict_mode


def test_book_is_the_default_with_the_chapters_settings():
    book = get_profile()
    assert book.name == "book" and book.data == "sms" and book.model == "gpt2-small"
    chapter = (book.batch_size, book.num_epochs, book.lr, book.weight_decay, book.seed)
    assert chapter == (8, 5, 5e-5, 0.1, 123)
    assert (book.eval_freq, book.eval_iter) == (50, 5)


def test_the_environment_and_an_argument_choose_the_profile(monkeypatch):
    monkeypatch.setenv("GPTCLASSIFIER_PROFILE", "smoke")
    assert get_profile().data == "practice"
    assert get_profile("book").name == "book"


def test_an_unknown_profile_lists_the_choices():
    with pytest.raises(ConfigError, match="unknown profile 'fast': choose one of book, smoke"):
        get_profile("fast")


@pytest.mark.parametrize(
    ("value", "strict"), [("1", True), ("yes", True), ("0", False), ("", False), ("false", False)]
)
def test_strict_mode_reads_the_environment(monkeypatch, value, strict):
    monkeypatch.setenv("GPTCLASSIFIER_STRICT", value)
    assert strict_mode() is strict
