"""Exports: a run that needs no base, and a folder that transformers loads with our logits."""

import json
from importlib.metadata import PackageNotFoundError

import pandas as pd
import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file

from gptclassifier import export
from gptclassifier.cli import main
from gptclassifier.errors import ConfigError, DataError
from gptclassifier.evaluation.inference import classify_with_run, split_predictions
from gptclassifier.export import TESTED_TRANSFORMERS_VERSION, export_transformers
from gptclassifier.fine_tune import fine_tune
from gptclassifier.model.classifier import adapt_for_classification
from gptclassifier.model.lora import merge_lora
from gptclassifier.model.tokenizer import PAD_TOKEN_ID
from gptclassifier.model.weights import load_base_model
from gptclassifier.runs import load_run, save_model
from gptclassifier.settings import TrainSettings, train_settings
from gptclassifier.training.pooling import pool_logits

MESSAGES = [
    "WINNER!! Claim your prize now, call 09061701461",
    "Ok lar... Joking wif u oni...",
    "See you at 7 😊",
]
TOLERANCE = 1e-5


def save_tiny_run(folder, pooling: str, test_split: bool = True, **training):
    """Save a run of gpt2-nano with a changed trainable part and a two-way head with a bias.

    `training` adds to the run's training settings (the trainable part: `last_block`); the
    run's test split is MESSAGES, unless `test_split` is False.
    """
    base = load_base_model("gpt2-nano", seed=0)
    training = {"trainable": "last_block", "model": "gpt2-nano", "pooling": pooling, **training}
    settings = TrainSettings(**training)
    model = adapt_for_classification(base.model, settings, num_classes=2)
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.2 * torch.randn_like(parameter))
    config = {
        "model": base.config,
        "classes": ["ham", "spam"],
        "max_length": 24,
        "pooling": pooling,
        "precision": "float32",
        "training": training,
        "provenance": {"weights": base.provenance},
    }
    folder.mkdir()
    save_model(folder, model.eval(), config)
    if test_split:
        (folder / "data").mkdir()
        frame = pd.DataFrame({"Label": [1, 0, 0], "Text": MESSAGES})
        frame.to_csv(folder / "data" / "test.csv", index=False)
    return folder


def token_rows(tokenizer, pad_to: int | None = None) -> torch.Tensor:
    """Return the messages' token ids, right-padded with <|endoftext|> to one width."""
    ids = [tokenizer.encode(text) for text in MESSAGES]
    width = pad_to or max(map(len, ids))
    return torch.tensor([row + [PAD_TOKEN_ID] * (width - len(row)) for row in ids])


@pytest.fixture
def exported(tmp_path):
    """Return a function that saves a tiny run with a pooling and exports it for transformers."""

    def export(pooling: str):
        run = save_tiny_run(tmp_path / pooling, pooling)
        folder = export_transformers(run, tmp_path / f"{pooling}-hf", allow_pooling_change=True)
        return run, folder

    return export


def test_transformers_gives_our_logits_for_last_pooling_without_padding(
    transformers, tokenizer, exported
):
    run, folder = exported("last")
    ours, _ = load_run(run)
    theirs = transformers.GPT2ForSequenceClassification.from_pretrained(folder).eval()
    assert theirs.score.bias is None and ours.out_head.bias.abs().max() > 0.01
    for text in MESSAGES:  # one message at a time: nothing to pad
        ids = torch.tensor([tokenizer.encode(text)])
        with torch.no_grad():
            expected = ours(ids)[:, -1]
            assert (theirs(ids).logits - expected).abs().max() < TOLERANCE


def test_transformers_gives_our_logits_for_flexible_pooling_with_padding(
    transformers, tokenizer, exported
):
    run, folder = exported("flexible")
    ours, _ = load_run(run)
    theirs = transformers.GPT2ForSequenceClassification.from_pretrained(folder).eval()
    rows = token_rows(tokenizer, pad_to=24)
    assert (rows == PAD_TOKEN_ID).sum(dim=1).min() > 0  # every message is padded
    with torch.no_grad():
        expected = pool_logits(ours(rows), rows, "flexible")
        assert (theirs(rows).logits - expected).abs().max() < TOLERANCE
    ignored = theirs(rows, attention_mask=(rows != PAD_TOKEN_ID).long()).logits
    assert (ignored - expected).abs().max() < TOLERANCE  # as a tokenizer's mask asks


def test_transformers_pipeline_classifies_as_the_run_does(transformers, exported):
    run, folder = exported("flexible")
    classify = transformers.pipeline("text-classification", model=str(folder), top_k=None)
    answers = classify(MESSAGES, truncation=True)  # as the model card shows
    for answer, prediction in zip(answers, classify_with_run(run, MESSAGES), strict=True):
        scores = {entry["label"]: entry["score"] for entry in answer}
        assert set(scores) == {"ham", "spam"}
        assert max(scores, key=scores.get) == prediction.label
        assert scores[prediction.label] == pytest.approx(prediction.probability, abs=TOLERANCE)


def test_truncation_cuts_a_long_message_where_the_run_cuts_it(transformers, exported):
    run, folder = exported("flexible")
    long = " ".join(MESSAGES * 4)
    classify = transformers.pipeline("text-classification", model=str(folder), top_k=None)
    [answer] = classify([long], truncation=True)
    with pytest.warns(UserWarning, match="cut to the first 24"):
        [prediction] = classify_with_run(run, [long])
    scores = {entry["label"]: entry["score"] for entry in answer}
    assert scores[prediction.label] == pytest.approx(prediction.probability, abs=TOLERANCE)


def test_the_exported_folder_holds_a_config_the_tokenizer_and_float32_weights(
    transformers, tokenizer, exported
):
    _, folder = exported("last")
    names = sorted(path.name for path in folder.iterdir())
    assert names == [
        "README.md", "config.json", "merges.txt", "model.safetensors", "tokenizer_config.json",
        "vocab.json",
    ]  # fmt: skip
    config = json.loads((folder / "config.json").read_text())
    assert config["id2label"] == {"0": "ham", "1": "spam"}
    assert config["pad_token_id"] == PAD_TOKEN_ID
    theirs = transformers.AutoTokenizer.from_pretrained(folder)
    for text in MESSAGES:
        assert theirs(text)["input_ids"] == tokenizer.encode(text)


def test_a_lora_run_is_merged_into_plain_weights_with_our_logits(transformers, tokenizer, tmp_path):
    run = save_tiny_run(tmp_path / "lora", "flexible", trainable="lora", lora_rank=4, lora_alpha=2)
    folder = export_transformers(run, tmp_path / "hf")
    assert not [name for name in load_file(folder / "model.safetensors") if "lora" in name]
    ours, _ = load_run(run)
    theirs = transformers.GPT2ForSequenceClassification.from_pretrained(folder).eval()
    rows = token_rows(tokenizer, pad_to=24)
    with torch.no_grad():
        expected = pool_logits(ours(rows), rows, "flexible")
        merged = pool_logits(merge_lora(load_run(run)[0])(rows), rows, "flexible")
        assert (theirs(rows).logits - expected).abs().max() < TOLERANCE
    assert (expected - merged).abs().max() < TOLERANCE  # merging changes no logit...
    zeroed = load_run(run)[0]
    for name, tensor in zeroed.named_parameters():
        if name.endswith("lora.B"):
            tensor.data.zero_()
    with torch.no_grad():  # ...and the updates were not nothing
        assert (pool_logits(zeroed(rows), rows, "flexible") - expected).abs().max() > 1e-3


@pytest.mark.parametrize(
    ("pooling", "training", "reason"),
    [
        ("first", {}, "classifies at the first token"),
        ("mean", {}, "classifies at the mean of every position"),
        ("last", {"causal_mask": False}, "trained without the causal mask"),
    ],
)
def test_what_transformers_cannot_compute_is_refused(tmp_path, pooling, training, reason):
    run = save_tiny_run(tmp_path / "run", pooling, **training)
    with pytest.raises(ConfigError, match=reason):
        export_transformers(run, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_a_first_token_run_is_refused_in_one_line(tmp_path, capsys):
    run = save_tiny_run(tmp_path / "first", "first")
    out = tmp_path / "hf"
    assert main(["export", str(run), "--format", "transformers", "--to", str(out)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert not out.exists()


def test_the_command_line_exports_for_transformers(transformers, tmp_path, capsys):
    run = save_tiny_run(tmp_path / "run", "flexible")
    out = tmp_path / "hf"
    assert main(["export", str(run), "--format", "transformers", "--to", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"exported {run} to {out}: model.safetensors")
    assert transformers.GPT2ForSequenceClassification.from_pretrained(out).num_labels == 2


# --- runs fine-tuned in the smoke profile, and what transformers predicts on their test split ---


@pytest.fixture(scope="module")
def smoke_runs(smoke_data, tmp_path_factory):
    """Return a function that fine-tunes one seeded smoke-profile epoch with a pooling, once."""
    runs = {}

    def run(pooling: str):
        if pooling not in runs:
            settings = train_settings("smoke", pooling=pooling, num_epochs=1)
            out = tmp_path_factory.mktemp("runs") / pooling
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv("GPTCLASSIFIER_CACHE", str(tmp_path_factory.mktemp("cache")))
                runs[pooling] = fine_tune(smoke_data, settings, out, "smoke", progress=False)
        return runs[pooling].run_dir

    return run


def transformers_agreement(transformers, run, folder) -> int:
    """Count the test messages on which transformers, loading `folder`, predicts as the run does.

    The run's predictions are split_predictions', its own computation; transformers reads each
    message as its pipeline does with truncation=True. Every prediction on either side must be
    clear of a tie, so that rounding cannot flip it.
    """
    ours = split_predictions(run, "test")
    theirs = transformers.GPT2ForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    batch = tokenizer(list(ours["text"]), truncation=True, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = theirs(**batch).logits
    assert (logits[:, 1] - logits[:, 0]).abs().min() > 1e-4
    assert (ours["P(spam)"] - 0.5).abs().min() > 1e-4
    predicted = [theirs.config.id2label[index] for index in logits.argmax(dim=-1).tolist()]
    return int((ours["predicted"] == predicted).sum())


@pytest.mark.slow
def test_a_last_token_run_is_refused_with_the_agreement_transformers_gives(
    transformers, smoke_runs, tmp_path
):
    run = smoke_runs("last")
    out = tmp_path / "hf"
    with pytest.raises(ConfigError, match="--allow-pooling-change") as refusal:
        export_transformers(run, out, progress=False)
    assert not out.exists()
    lines = []
    export_transformers(run, out, allow_pooling_change=True, progress=False, log=lines.append)
    agreed = transformers_agreement(transformers, run, out)
    total = len(pd.read_csv(run / "data" / "test.csv"))
    assert agreed < total  # the smoke run's last position and last real token disagree
    said = f"on the run's {total} test messages the exported model agrees with the run on {agreed} "
    assert said in str(refusal.value)
    assert lines == [f"transformers will read the last real token; {said}({agreed / total:.1%})"]
    assert said in (out / "README.md").read_text()


@pytest.mark.slow
def test_a_flexible_run_exports_unchecked_and_transformers_predicts_as_the_run(
    transformers, smoke_runs, tmp_path
):
    run = smoke_runs("flexible")
    lines = []
    out = export_transformers(run, tmp_path / "hf", progress=False, log=lines.append)
    assert lines == []
    total = len(pd.read_csv(run / "data" / "test.csv"))
    assert transformers_agreement(transformers, run, out) == total
    metrics = json.loads((run / "metrics.json").read_text())
    results = ModelCard.load(out / "README.md").data.eval_results  # as the Hub reads the card
    assert {(r.dataset_split, r.metric_type): r.metric_value for r in results} == {
        (split, name): metrics[split][name]
        for split in ("validation", "test")
        for name in ("accuracy", "precision", "recall", "f1")
    }


@pytest.mark.parametrize("split", [None, "Label,Text\n"])
def test_a_last_token_run_without_test_messages_names_the_file(tmp_path, split):
    run = save_tiny_run(tmp_path / "run", "last", test_split=False)
    if split is not None:
        (run / "data").mkdir()
        (run / "data" / "test.csv").write_text(split)
    with pytest.raises(DataError, match=r"data/test\.csv is missing or empty"):
        export_transformers(run, tmp_path / "hf", allow_pooling_change=True, progress=False)
    assert not (tmp_path / "hf").exists()


def test_config_names_the_transformers_installed_else_the_one_tested(
    transformers, tmp_path, monkeypatch
):
    run = save_tiny_run(tmp_path / "run", "flexible")
    folder = export_transformers(run, tmp_path / "hf")
    assert json.loads((folder / "config.json").read_text())["transformers_version"] == (
        transformers.__version__
    )

    def not_installed(name):
        raise PackageNotFoundError(name)

    monkeypatch.setattr(export, "version", not_installed)
    folder = export_transformers(run, tmp_path / "hf", force=True)
    config = json.loads((folder / "config.json").read_text())
    assert config["transformers_version"] == TESTED_TRANSFORMERS_VERSION
    assert transformers.GPT2Config.from_pretrained(folder).transformers_version == (
        TESTED_TRANSFORMERS_VERSION
    )
