"""The benchmarks: the Trainer way's model, data and batches; how every way is run and timed."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from gptclassifier.data.sms import load_data
from gptclassifier.data.splits import prepare_splits
from gptclassifier.model.classifier import adapt_for_classification, count_parameters
from gptclassifier.model.tokenizer import PAD_TOKEN_ID
from gptclassifier.model.weights import load_base_model
from gptclassifier.settings import TrainSettings

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
NANO = TrainSettings(model="gpt2-nano")
MESSAGES = ["WINNER!! Claim your prize now", "Ok lar... Joking wif u oni...", "See you at 7"]


def load_script(name: str):
    """Import a benchmark script as a module, without running it."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def trainer_way(transformers):
    """Return benchmarks/trainer_way.py as a module."""
    return load_script("trainer_way")


@pytest.fixture(scope="module")
def finetune_speed():
    """Return benchmarks/finetune_speed.py as a module."""
    return load_script("finetune_speed")


def test_pad_batch_pads_to_the_longest_message_and_masks_the_padding(trainer_way):
    batch = trainer_way.pad_batch(
        [{"input_ids": [5, 6, 7], "labels": 1}, {"input_ids": [8], "labels": 0}]
    )
    pad = PAD_TOKEN_ID
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, pad, pad]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [1, 0]


def test_random_start_is_the_package_classifier_read_at_the_last_real_token(
    trainer_way, tokenizer, tmp_path
):
    folder = trainer_way.starting_weights(NANO, 2, tmp_path / "start")
    hf = trainer_way.starting_model(folder, NANO, 2).eval()
    base = load_base_model("gpt2-nano", NANO.seed, "random")
    ours = adapt_for_classification(base.model, NANO, 2).eval()
    ids = [tokenizer.encode(text) for text in MESSAGES]
    batch = trainer_way.pad_batch([{"input_ids": row, "labels": 0} for row in ids])
    with torch.no_grad():
        logits = hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        expected = torch.stack([ours(torch.tensor([row]))[0, -1] for row in ids])
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)


def test_cached_weights_load_as_they_are_with_a_seeded_head(trainer_way, tmp_path, monkeypatch):
    config = trainer_way.hf_config(trainer_way.model_config("gpt2-nano"), 2)
    body = trainer_way.GPT2ForSequenceClassification(config).transformer
    tensors = {name: tensor.clone() for name, tensor in body.state_dict().items()}
    save_file(tensors, tmp_path / "model.safetensors")
    monkeypatch.setattr(trainer_way, "cached_gpt2", lambda name: tmp_path / "model.safetensors")
    folder = trainer_way.starting_weights(NANO, 2, tmp_path / "not written")
    assert folder == tmp_path
    first, second = (trainer_way.starting_model(folder, NANO, 2) for _ in range(2))
    torch.testing.assert_close(first.transformer.state_dict(), tensors, rtol=0, atol=0)
    torch.testing.assert_close(first.score.weight, second.score.weight, rtol=0, atol=0)


def test_only_the_chapters_trainable_part_trains(trainer_way, tmp_path):
    hf = trainer_way.starting_model(trainer_way.starting_weights(NANO, 2, tmp_path), NANO, 2)
    trainer_way.freeze_all_but_last_block(hf)
    base = load_base_model("gpt2-nano", NANO.seed, "random")
    _, ours = count_parameters(adapt_for_classification(base.model, NANO, 2))
    _, trainable = count_parameters(hf)
    assert trainable == ours - 2  # the package's head has a bias of 2; `score` has none


def test_tokenize_gives_the_tokenizers_ids_cut_to_the_longest_training_message(
    trainer_way, tokenizer
):
    train = pd.DataFrame({"Label": [0, 1], "Text": ["hi there", "call now to claim a prize"]})
    long = "a message much longer than any message of the training split, by far"
    other = pd.DataFrame({"Label": [1], "Text": [long]})
    examples = trainer_way.tokenize({"train": train, "validation": other, "test": other}, 128)
    longest = len(tokenizer.encode("call now to claim a prize"))
    assert [row["input_ids"] for row in examples["train"]] == [
        tokenizer.encode(text) for text in train["Text"]
    ]
    assert examples["test"] == [{"input_ids": tokenizer.encode(long)[:longest], "labels": 1}]


@pytest.mark.slow
def test_trainer_way_trains_the_chapters_steps(trainer_way, smoke_data):
    pytest.importorskip("accelerate", reason="Trainer needs accelerate (the bench extra)")
    settings = TrainSettings(model="gpt2-nano", num_epochs=2, lr=1e-3)
    result = trainer_way.fine_tune_with_trainer(smoke_data, settings, "float32")
    train = len(prepare_splits(smoke_data)["train"])
    assert result["training messages"] == train
    assert result["steps"] == 2 * math.ceil(train / 8)
    assert set(result["phases"]) == {"model", "tokenizing", "training", "evaluation"}
    assert 0 <= result["validation"] <= 1 and 0 <= result["test"] <= 1


def test_messages_written_for_the_ways_split_as_in_memory(finetune_speed, tmp_path):
    labeled = finetune_speed.practice_like_real(123, 0.02)
    read = load_data(finetune_speed.write_messages(labeled, tmp_path / "messages.csv"))
    assert read.classes == labeled.classes
    for name, split in prepare_splits(labeled).items():
        pd.testing.assert_frame_equal(prepare_splits(read)[name], split)


def test_every_way_runs_the_same_work(finetune_speed, tmp_path):
    chapter = TrainSettings(num_epochs=2, weights="random")
    ways = finetune_speed.every_way(chapter, tmp_path / "messages.csv", True, tmp_path / "start")
    assert len(ways) == 6
    assert len(finetune_speed.every_way(chapter, tmp_path / "m.csv", False, tmp_path)) == 4
    for way in ways.values():
        assert str(tmp_path / "messages.csv") in way.command
        if way.settings is None:
            assert way.command[way.command.index("--epochs") + 1] == "2"
            assert way.command[way.command.index("--start") + 1] == str(tmp_path / "start")
        else:
            sent = json.loads(way.command[way.command.index("--one-way") + 1])
            assert TrainSettings(**sent) == way.settings
            assert (way.settings.num_epochs, way.settings.weights) == (2, "random")


def test_a_way_is_timed_as_a_whole_process(finetune_speed):
    printed = {"phases": {"training": 0.05}, "validation": 0.5, "test": 0.25}
    script = f"import time; time.sleep(0.3); print('a log line'); print({json.dumps(printed)!r})"
    row = finetune_speed.run_way(finetune_speed.Way((sys.executable, "-c", script)))
    assert row["total"] >= 0.3
    assert row["start-up"] == pytest.approx(row["total"] - 0.05)
    assert (row["training"], row["validation"], row["test"]) == (0.05, 0.5, 0.25)


def test_a_failed_way_stops_the_benchmark_with_its_error(finetune_speed):
    script = "import sys; sys.exit('no such data')"
    with pytest.raises(SystemExit, match="no such data"):
        finetune_speed.run_way(finetune_speed.Way((sys.executable, "-c", script)))


def test_like_for_like_speed_ups(finetune_speed, capsys):
    seconds = {
        "the chapter's loop": 100, "exact, float32": 20, "exact, bfloat16": 10,
        "fast (--fast)": 4, "Trainer, float32": 40, "Trainer, bfloat16": 30,
    }  # fmt: skip
    finetune_speed.print_like_for_like({name: {"total": s} for name, s in seconds.items()})
    assert capsys.readouterr().out.splitlines() == [
        "same results: exact (float32 / bfloat16) vs the chapter's loop: 5.0x / 10.0x",
        "same pooling (last real token): --fast vs the Trainer's faster setting: 7.5x",
        "speedup: 25.0x",
    ]
