"""A run folder checks itself: a changed fact in config.json is refused, naming the field."""

import json
import os
import shutil

import pytest

from gptclassifier.cli import main
from gptclassifier.errors import DataError
from gptclassifier.model.gpt import model_config
from gptclassifier.runs import load_run

NANO = model_config("gpt2-nano")
TRAINABLES = ("last_block", "lora")
# (the run's trainable part, the field of config.json changed, its new value, what load_run says)
REFUSALS = [
    (
        "last_block",
        "pooling",
        "mean",
        'config.json: pooling is "mean", but training.pooling is "last"',
    ),
    (
        "last_block",
        "training.pooling",
        "mean",
        'config.json: pooling is "last", but training.pooling is "mean"',
    ),
    *(
        (
            "last_block",
            f"model.{key}",
            value,
            f"config.json: model.{key} is {json.dumps(value)}, "
            f"but training.model gpt2-nano has {json.dumps(NANO[key])}",
        )
        for key, value in (("n_layers", 2), ("n_heads", 4), ("qkv_bias", False), ("emb_dim", 64))
    ),
    (
        "last_block",
        "classes",
        ["ham", "spam", "other"],
        "model.safetensors does not match config.json: "
        "the number of classes is 2 in the weights, 3 in config.json",
    ),
    (
        "last_block",
        "saved_parameters",
        "all",
        "model.safetensors does not match config.json: "
        'saved_parameters is "trained" in the weights, "all" in config.json',
    ),
    (
        "lora",
        "training.lora_rank",
        8,
        "model.safetensors does not match config.json: "
        "training.lora_rank is 16 in the weights, 8 in config.json",
    ),
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """Return runs of one smoke epoch, trained with the command line, by trainable part."""
    runs = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GPTCLASSIFIER_CACHE", str(tmp_path_factory.mktemp("cache")))
        for trainable in TRAINABLES:
            args = ["train", "--profile", "smoke", "--trainable", trainable, "--epochs", "1"]
            assert main([*args, "--out", str(runs / trainable), "--no-progress", "-q"]) == 0
    return {trainable: runs / trainable for trainable in TRAINABLES}


def changed(run, folder, field: str, value):
    """Return a copy of `run` in `folder` whose config.json has `field` (dotted) set to `value`."""
    copy = shutil.copytree(run, folder / run.name)
    config = json.loads((copy / "config.json").read_text())
    *parents, key = field.split(".")
    entry = config
    for parent in parents:
        entry = entry[parent]
    entry[key] = value
    (copy / "config.json").write_text(json.dumps(config))
    return copy


@pytest.mark.parametrize(("trainable", "field", "value", "message"), REFUSALS)
def test_a_changed_field_is_refused_in_one_line_naming_it(
    trained, tmp_path, capsys, trainable, field, value, message
):
    run = changed(trained[trainable], tmp_path, field, value)
    with pytest.raises(DataError) as refusal:
        load_run(run)
    assert str(refusal.value) == f"{run}{os.sep}{message}"
    assert main(["classify", "--model", str(run), "hi"]) == 2
    printed = capsys.readouterr()
    assert printed.err == f"gptclassifier: error: {run}{os.sep}{message}\n"
    assert printed.out == ""


@pytest.mark.parametrize("trainable", ["last_block", pytest.param("lora", marks=pytest.mark.slow)])
def test_an_untouched_run_loads_and_predicts_as_in_training(trained, tmp_path, capsys, trainable):
    run = trained[trainable]
    model, config = load_run(run)
    assert config == json.loads((run / "config.json").read_text())
    assert main(["evaluate", "--model", str(run), "--split", "test", "--json", "-q"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    recorded = json.loads((run / "metrics.json").read_text())["test"]
    assert evaluated["num_examples"] == recorded["num_examples"]
    # rounding may flip one message's prediction on another CPU
    difference = abs(evaluated["accuracy"] - recorded["accuracy"]) * recorded["num_examples"]
    assert difference <= 1 + 1e-9


def test_a_run_saved_before_saved_parameters_existed_still_classifies(trained, tmp_path, capsys):
    run = trained["last_block"]
    standalone = tmp_path / "standalone"
    assert main(["export", str(run), "--to", str(standalone), "-q"]) == 0
    config = json.loads((standalone / "config.json").read_text())
    del config["saved_parameters"]  # such runs held every parameter, as an export does
    (standalone / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert main(["classify", "--model", str(run), "WIN a prize now!", "see you"]) == 0
    original = capsys.readouterr().out
    assert main(["classify", "--model", str(standalone), "WIN a prize now!", "see you"]) == 0
    assert capsys.readouterr().out == original
