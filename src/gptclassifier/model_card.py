"""The model card of an exported run: the Hub's metadata, then what a reader needs to know."""

from pathlib import Path

from huggingface_hub import EvalResult, ModelCardData

from gptclassifier.data.sms import SMS_ARCHIVE_SHA256, SMS_FILE_SHA256
from gptclassifier.runs import run_settings

SMS_DATASET = "ucirvine/sms_spam"  # the SMS Spam Collection on the Hugging Face Hub
CARD_METRICS = {"accuracy": "accuracy", "precision": "precision", "recall": "recall", "f1": "F1"}
CARD_SPLITS = ("validation", "test")
TAGS = ["gpt2", "text-classification", "spam-detection", "gptclassifier"]
EXAMPLE = "WINNER!! Claim your prize now, call 09061701461"


def model_card(config: dict, metrics: dict | None, name: str, agreement: str | None) -> str:
    """Return the README.md of an exported run named `name`: YAML front matter, then its text.

    `metrics` is the run's metrics.json (None where it has none); `agreement` says how often
    the exported model predicts what the run predicts, where transformers pools differently.
    """
    base_model, weights = _weights(config)
    hub_dataset, dataset_name, data = _data(config)
    front_matter = ModelCardData(
        base_model=base_model,
        datasets=[hub_dataset] if hub_dataset else None,
        license="mit",
        library_name="transformers",
        pipeline_tag="text-classification",
        metrics=list(CARD_METRICS),
        tags=TAGS,
        model_name=name,
        eval_results=_eval_results(metrics, hub_dataset, dataset_name),
    )
    classes = " or ".join(f"`{label}`" for label in config["classes"])
    body = [
        f"# {name}",
        f"GPT-2 ({config['training']['model']}) fine-tuned to label a text message {classes}, "
        "with gptclassifier, as chapter 6 of *Build a Large Language Model (From Scratch)* does.",
        weights,
        data,
        "## How to use",
        "```python\nfrom transformers import pipeline\n\n"
        f'classify = pipeline("text-classification", model="{name}")  # this folder\n'
        f'classify("{EXAMPLE}", truncation=True)  # at most {config["max_length"]} tokens, '
        "as the run read them\n```",
        "## Training",
        _table(("setting", "value"), _settings(config).items()),
        "## Results",
        _results(metrics),
        "## Pooling",
        _pooling(config, agreement),
    ]
    return f"---\n{front_matter.to_yaml()}\n---\n\n" + "\n\n".join(body) + "\n"


def _eval_results(metrics: dict | None, hub_dataset, dataset_name: str) -> list | None:
    """Return the run's validation and test metrics as the Hub's model-index results."""
    if not metrics:
        return None
    return [
        EvalResult(
            task_type="text-classification",
            dataset_type=hub_dataset or "local",
            dataset_name=dataset_name,
            dataset_split=split,
            metric_type=metric,
            metric_value=metrics[split][metric],
            metric_name=f"{split} {label}",
        )
        for split in CARD_SPLITS
        for metric, label in CARD_METRICS.items()
    ]


def _weights(config: dict) -> tuple[str | None, str]:
    """Return the base model's Hub id (None for random weights) and a sentence about it."""
    weights = config.get("provenance", {}).get("weights", {})
    if weights.get("source") == "pretrained":
        repo = weights["repo"]
        return repo, (
            f"Base model: [{repo}](https://huggingface.co/{repo}) at revision "
            f"{weights['revision'][:7]}."
        )
    if weights.get("source") == "random":
        return None, (
            f"> **The base weights were random (seed {weights['seed']}), not pretrained GPT-2** "
            f"({weights['note']})."
        )
    return None, "The run does not record its base weights."


def _data(config: dict) -> tuple[str | None, str, str]:
    """Return the data's Hub id (None where it has none), its name, and a sentence about it."""
    data = config.get("provenance", {}).get("data")
    if data is None:
        return None, "unrecorded data", "The run does not record the messages it was trained on."
    split = f"balanced and split 70/10/20 with seed {run_settings(config).split_seed}"
    if data["source"] == "uci" or data["sha256"] in (SMS_FILE_SHA256, SMS_ARCHIVE_SHA256):
        return (
            SMS_DATASET,
            "SMS Spam Collection",
            (
                f"Data: the [SMS Spam Collection](https://huggingface.co/datasets/{SMS_DATASET}) "
                f"(UCI, SHA-256 verified), {split}."
            ),
        )
    if data["source"] == "practice":
        why = f" ({data['note']})" if data["note"] else ""
        return (
            None,
            "gptclassifier practice set",
            (
                "> **WARNING: trained on gptclassifier's practice set of made-up messages, NOT on "
                f"the SMS Spam Collection**{why}. Its metrics say nothing about real spam."
            ),
        )
    file = Path(data["path"]).name
    return None, file, f"Data: a local file, {file} (SHA-256 {data['sha256'][:12]}), {split}."


def _settings(config: dict) -> dict:
    """Return what decided the run: its training settings, message length and precision."""
    return config["training"] | {
        "max_length": f"{config['max_length']} tokens",
        "precision": config["precision"],  # as resolved: never `auto`
    }


def _results(metrics: dict | None) -> str:
    """Return the run's validation and test metrics as a Markdown table."""
    if not metrics:
        return "The run folder holds no metrics.json."
    rows = [("messages", *(f"{metrics[split]['num_examples']:,}" for split in CARD_SPLITS))]
    rows += [
        (label, *(f"{metrics[split][metric]:.2%}" for split in CARD_SPLITS))
        for metric, label in CARD_METRICS.items()
    ]
    return _table(("", *CARD_SPLITS), rows) + (
        "\n\nMeasured by gptclassifier on the run's own splits, spam being the positive class."
    )


def _pooling(config: dict, agreement: str | None) -> str:
    """Say where the run read each message's logits, and what changes in transformers."""
    if agreement is None:
        return (
            "The run classified each message at its last real token (`flexible` pooling), which "
            "is where transformers' GPT2ForSequenceClassification reads it (its pad_token_id is "
            "`<|endoftext|>`): this model predicts what the run predicted."
        )
    return (
        "The run classified each message at the last position of its batch, padded with "
        f"`<|endoftext|>` to {config['max_length']} tokens (`last` pooling, the chapter's way). "
        "transformers reads each message's last real token instead, so a padded message may be "
        f"classified differently: {agreement}. The metrics above are the run's."
    )


def _table(header: tuple, rows) -> str:
    """Return a Markdown table."""
    lines = [header, ("---",) * len(header), *rows]
    return "\n".join("| " + " | ".join(map(str, line)) + " |" for line in lines)
