"""The chapter end to end in the smoke profile: data, model, training, evaluation, saved run."""

import json

import pandas as pd
import pytest
import torch

from gptclassifier.evaluation.inference import classify_with_run, evaluate_run
from gptclassifier.fine_tune import fine_tune
from gptclassifier.runs import load_run
from gptclassifier.settings import train_settings

RUN_FILES = {
    "model.safetensors", "config.json", "metrics.json", "history.json", "data",
    "loss.png", "loss.pdf", "accuracy.png", "accuracy.pdf",
    "confusion_matrix.png", "confusion_matrix.pdf",
}  # fmt: skip


@pytest.fixture(scope="module")
def smoke_run(smoke_data, tmp_path_factory):
    """Fine-tune once in the smoke profile; return the result, the log and the live updates."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GPTCLASSIFIER_CACHE", str(tmp_path_factory.mktemp("cache")))
        settings = train_settings("smoke")
        assert settings.parsing == "book"  # smoke_data's parsing
        data = smoke_data
        out = tmp_path_factory.mktemp("runs") / "smoke"
        lines, updates = [], []

        def on_update(history):
            updates.append((len(history.train_losses), len(history.train_accs)))

        result = fine_tune(
            data, settings, out, "smoke", progress=False, log=lines.append, on_update=on_update
        )
    return result, lines, updates


def test_the_live_view_hears_of_every_measurement(smoke_run):
    result, _, updates = smoke_run
    history = result.history
    measurements = len(history.train_losses) + len(history.train_accs)
    assert len(updates) == measurements
    assert updates[-1] == (len(history.train_losses), history.num_epochs)


def test_the_run_directory_holds_everything_promised(smoke_run):
    result, _, _ = smoke_run
    assert {path.name for path in result.run_dir.iterdir()} == RUN_FILES
    assert {path.name for path in (result.run_dir / "data").iterdir()} == {
        "train.csv", "validation.csv", "test.csv", "dataset.json",
    }  # fmt: skip
    assert (result.run_dir / "loss.png").read_bytes().startswith(b"\x89PNG")


def test_config_records_settings_and_provenance(smoke_run, tokenizer):
    result, _, _ = smoke_run
    config = json.loads((result.run_dir / "config.json").read_text())
    assert config["profile"] == "smoke"
    assert config["classes"] == ["ham", "spam"]
    assert config["training"]["lr"] == 1e-3 and config["training"]["trainable"] == "last_block"
    assert config["provenance"]["data"]["source"] == "practice"
    assert config["provenance"]["weights"]["source"] == "random"
    assert config["parameters"]["trainable"] < config["parameters"]["total"]
    train = pd.read_csv(result.run_dir / "data" / "train.csv", keep_default_na=False)
    longest = max(len(tokenizer.encode(text)) for text in train["Text"])
    assert config["max_length"] == min(longest, config["model"]["context_length"])


def test_the_model_learns_and_metrics_agree_with_a_fresh_evaluation(smoke_run):
    result, _, _ = smoke_run
    history = result.history
    assert history.train_losses[-1] < history.train_losses[0]
    assert result.metrics["validation"]["accuracy"] > 0.7
    for split in ("validation", "test"):
        assert evaluate_run(result.run_dir, split) == result.metrics[split]
    saved = json.loads((result.run_dir / "history.json").read_text())
    assert saved["train_losses"] == history.train_losses


def test_the_log_follows_the_chapter(smoke_run):
    _, lines, _ = smoke_run
    assert lines[0].startswith("estimate: about ")
    assert lines[1].startswith("data: practice")
    assert lines[2].startswith("weights: random")
    assert lines[3].startswith("model: gpt2-nano, 2,503,490 parameters, 28,466 trainable")
    assert lines[4].startswith("fast loop ready in ")
    assert lines[4].endswith("(the frozen blocks ran once over 480 messages)")
    assert lines[5].startswith("Ep 1 (Step 000000): Train loss ")
    assert sum(line.startswith("Training accuracy: ") for line in lines) == 5


def test_the_run_times_each_phase(smoke_run):
    result, _, _ = smoke_run
    seconds = result.phases.seconds
    phases = ["tokenizing", "model", "cache pass", "training", "evaluation", "saving"]
    assert list(seconds) == phases
    assert all(value > 0 for value in seconds.values())
    assert result.history.seconds <= seconds["training"]
    assert result.phases.summary().startswith(f"tokenizing {seconds['tokenizing']:.1f} s, model ")


class Stop(Exception):
    """Raised by a stand-in training loop once it has seen what it came for."""


@pytest.mark.parametrize("loop", ["chapter", "fast"])
def test_training_starts_from_the_seeded_global_generator(smoke_data, tmp_path, monkeypatch, loop):
    # The chapter seeds the global generator right before training, and every shuffle draws
    # from it; nothing may draw in between (the cache's pass, the optimizer, a progress bar).
    seen = {}

    def record(runner, train_loader, val_loader, optimizer, *args, **kwargs):
        seen["state"] = torch.random.get_rng_state()
        seen["generator"] = train_loader.generator
        seen["fused"] = optimizer.defaults["fused"]
        raise Stop

    monkeypatch.setattr("gptclassifier.fine_tune.train_classifier", record)
    settings = train_settings("smoke", loop=loop, seed=7)
    with pytest.raises(Stop):
        fine_tune(smoke_data, settings, tmp_path / "run", "smoke", progress=False)
    torch.manual_seed(7)
    assert torch.equal(seen["state"], torch.random.get_rng_state())
    assert seen["generator"] is None  # no private generator: the global one shuffles
    assert seen["fused"] == (loop == "fast")  # the chapter's loop keeps the chapter's AdamW


def test_a_model_the_cache_cannot_serve_says_which_loop_runs(smoke_data, tmp_path):
    settings = train_settings("smoke", trainable="all", num_epochs=1)
    lines = []
    fine_tune(
        smoke_data, settings, tmp_path / "run", "smoke", progress=False,
        log=lines.append,
    )  # fmt: skip
    assert lines[4].startswith("the chapter's loop runs every block on every step: ")
    assert not any("frozen blocks ran once" in line for line in lines)


def test_classify_with_run_matches_the_loaded_model(smoke_run, tokenizer):
    result, _, _ = smoke_run
    texts = ["Congratulations! You WON a £1000 prize, call now", "running late, see u at 7"]
    predictions = classify_with_run(result.run_dir, texts)
    model, config = load_run(result.run_dir)
    for text, prediction in zip(texts, predictions, strict=True):
        ids = tokenizer.encode(text)
        ids += [50256] * (config["max_length"] - len(ids))
        with torch.no_grad():
            probabilities = torch.softmax(model(torch.tensor([ids]))[0, -1], dim=-1)
        assert prediction.label == config["classes"][probabilities.argmax()]
        assert prediction.probability == pytest.approx(probabilities.max().item(), abs=1e-6)


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_the_fast_loop_repeats_exactly_with_the_same_seed_and_threads(
    smoke_data, tmp_path, precision
):
    settings = train_settings(
        "smoke", loop="fast", pooling="flexible", bucket=True, precision=precision, num_epochs=2
    )
    assert settings.parsing == "book"  # smoke_data's parsing
    data = smoke_data
    threads = torch.get_num_threads()
    histories, weights = [], []
    for attempt in range(2):
        torch.set_num_threads(threads)
        result = fine_tune(data, settings, tmp_path / str(attempt), "smoke", progress=False)
        histories.append({**result.history.as_dict(), "seconds": None})
        weights.append(load_run(result.run_dir)[0].state_dict())
    assert histories[0] == histories[1]
    for name, tensor in weights[0].items():
        assert torch.equal(tensor, weights[1][name]), name
