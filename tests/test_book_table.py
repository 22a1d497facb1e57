"""The book's table of design experiments: every row a valid run, rows chosen by name."""

import pytest

from gptclassifier.errors import ConfigError
from gptclassifier.experiments.book_table import EXPERIMENTS, choose_experiments, row_settings
from gptclassifier.model.gpt import model_config
from gptclassifier.settings import TrainSettings, get_profile


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


def test_the_smoke_profile_swaps_gpt2s_sizes_for_stand_ins_that_grow_alike():
    for experiment in EXPERIMENTS.values():
        assert row_settings(experiment, "book") == experiment.settings
        smoke = row_settings(experiment, "smoke")
        assert smoke.keys() == experiment.settings.keys()
        assert {k: v for k, v in smoke.items() if k != "model"} == {
            k: v for k, v in experiment.settings.items() if k != "model"
        }
    sizes = ("chapter", "gpt2-medium", "gpt2-large", "gpt2-xl")
    for profile in ("book", "smoke"):
        default = get_profile(profile).training.model
        configs = [
            model_config(row_settings(EXPERIMENTS[name], profile).get("model", default))
            for name in sizes
        ]
        for key in ("emb_dim", "n_layers", "n_heads"):
            values = [config[key] for config in configs]
            assert values == sorted(set(values)), (profile, key)  # each size larger
        assert len({config["emb_dim"] // config["n_heads"] for config in configs}) == 1
        assert all(config["emb_dim"] % config["n_heads"] == 0 for config in configs)
        assert all(config["vocab_size"] == 50257 for config in configs)
