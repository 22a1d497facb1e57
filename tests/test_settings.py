"""Profiles pick inputs and settings; the environment chooses one; impossible settings fail."""

import pytest

from gptclassifier.cli import build_parser
from gptclassifier.errors import ConfigError
from gptclassifier.settings import (
    CHOICES,
    SETTING_NAMES,
    TrainSettings,
    get_profile,
    train_settings,
)


def test_book_is_the_default_with_the_chapters_settings():
    book = get_profile()
    assert (book.name, book.data) == ("book", "sms")
    chapter = book.training
    assert (chapter.model, chapter.trainable, chapter.pooling) == (
        "gpt2-small",
        "last_block",
        "last",
    )
    assert (chapter.batch_size, chapter.num_epochs, chapter.lr, chapter.weight_decay) == (
        8,
        5,
        5e-5,
        0.1,
    )
    assert (chapter.eval_freq, chapter.eval_iter, chapter.seed) == (50, 5, 123)
    assert (chapter.padding, chapter.causal_mask, chapter.ignore_index) == ("longest", True, -100)
    assert (chapter.weights, chapter.split_seed) == ("pretrained", 123)


def test_the_split_follows_the_seed_unless_a_data_seed_is_given():
    assert train_settings("book", seed=7).split_seed == 7
    assert train_settings("book", seed=7, data_seed=123).split_seed == 123


def test_overrides_replace_only_what_is_given():
    settings = train_settings("smoke", lr=0.5, num_epochs=None)
    assert settings.lr == 0.5
    assert settings.num_epochs == get_profile("smoke").training.num_epochs
    assert settings.model == "gpt2-nano"


def test_the_environment_and_an_argument_choose_the_profile(monkeypatch):
    monkeypatch.setenv("GPTCLASSIFIER_PROFILE", "smoke")
    assert get_profile().data == "practice"
    assert get_profile("book").name == "book"


def test_an_unknown_profile_lists_the_choices():
    with pytest.raises(ConfigError, match="unknown profile 'fast': choose one of book, smoke"):
        get_profile("fast")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"num_epochs": 0}, "num_epochs must be a whole number of at least 1, not 0"),
        ({"batch_size": -8}, "batch_size must be a whole number of at least 1, not -8"),
        ({"eval_freq": 2.5}, "eval_freq must be a whole number of at least 1, not 2.5"),
        ({"lr": 0.0}, "lr must be above 0"),
        ({"lr": float("nan")}, "lr must be above 0"),
        ({"weight_decay": -0.1}, "weight_decay at least 0"),
        ({"lora_rank": 0}, "lora_rank must be a whole number of at least 1, not 0"),
    ],
)
def test_impossible_settings_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        train_settings("smoke", **override)


@pytest.mark.parametrize("rank", [0, -1])
def test_a_rank_below_one_is_refused(rank):
    with pytest.raises(ConfigError, match="lora_rank"):
        TrainSettings(trainable="lora", lora_rank=rank)


@pytest.mark.parametrize("name", sorted(CHOICES))
def test_every_choice_is_checked_in_one_place_with_one_message(name):
    assert getattr(TrainSettings(), name) in CHOICES[name]
    with pytest.raises(ConfigError) as refused:
        TrainSettings(**{name: "nonsense"})
    choices = ", ".join(CHOICES[name])
    assert str(refused.value) == f"unknown {name} 'nonsense': choose one of {choices}"


def train_options(*argv: str) -> dict:
    """Return the train command's options by setting name, as `argv` chooses the profile."""
    train = build_parser(list(argv))._subparsers._group_actions[0].choices["train"]
    return {action.dest: action for action in train._actions}


def test_the_command_lines_choices_and_defaults_come_from_the_settings(monkeypatch):
    monkeypatch.delenv("GPTCLASSIFIER_PROFILE", raising=False)
    actions = train_options("train")
    for name, choices in CHOICES.items():
        if name == "loop":  # chosen by --chapter
            continue
        assert tuple(actions[name].choices) == choices, name
        assert f"default: {getattr(TrainSettings(), name)}, book profile" in actions[name].help
    smoke = train_options("train", "--profile", "smoke")
    assert "default: gpt2-nano, smoke profile" in smoke["model"].help
    assert f"default: {get_profile('smoke').training.lr}, smoke profile" in smoke["lr"].help
    assert {"num_epochs", "batch_size", "seed", "lora_rank"} <= set(actions) & set(SETTING_NAMES)
