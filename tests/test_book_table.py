"""The book's table of design experiments: every row a valid run, rows chosen by name."""

import pytest

from gptclassifier.errors import ConfigError
from gptclassifier.experiments.book_table import EXPERIMENTS, choose_experiments
from gptclassifier.settings import TrainSettings


def test_every_row_of_the_table_is_a_valid_run():
    for experiment in EXPERIMENTS.values():
        TrainSettings(**experiment.settings)  # a typo in a setting name would raise here
    assert [e.book_row for e in EXPERIMENTS.values() if e.book_row] == [
        *range(1, 15), *range(16, 20)
    ]  # fmt: skip
    # The book's own finding: ignore_index on class labels changes nothing.
    assert EXPERIMENTS["ignore_index"].book == EXPERIMENTS["chapter"].book


def test_unknown_rows_are_refused_naming_the_choices():
    with pytest.raises(ConfigError, match="unknown experiment 'lore'.*lora"):
        choose_experiments(["chapter", "lore"])
    assert [e.name for e in choose_experiments(["tfidf", "chapter"])] == ["chapter", "tfidf"]
    assert len(choose_experiments(None)) == len(EXPERIMENTS)
