"""The model card of an exported run: Hub metadata that parses, and what a reader must be told."""

import re
from dataclasses import asdict

import pytest
import yaml

from gptclassifier.data.sms import SMS_FILE_SHA256
from gptclassifier.model.gpt import model_config
from gptclassifier.model_card import model_card
from gptclassifier.settings import TrainSettings

PRETRAINED = {
    "source": "pretrained",
    "repo": "openai-community/gpt2",
    "revision": "607a30d783dfa663caf39e06633721c8d4cfcd7e",
    "note": "openai-community/gpt2 at 607a30d",
}
RANDOM = {"source": "random", "seed": 7, "note": "gpt2-nano has no pretrained weights"}
UCI = {"source": "uci", "path": "/cache/SMSSpamCollection", "sha256": SMS_FILE_SHA256, "note": ""}
PRACTICE = {"source": "practice", "path": "/pkg/practice.tsv", "sha256": "ab" * 32, "note": ""}
METRICS = {
    split: {
        "accuracy": accuracy,
        "precision": 0.96,
        "recall": 0.9863,
        "f1": 0.973,
        "num_examples": n,
    }
    for split, accuracy, n in (
        ("train", 0.99, 1045),
        ("validation", 0.9733, 149),
        ("test", 0.9567, 300),
    )
}
AGREEMENT = "on the run's 300 test messages the exported model agrees with the run on 297 (99.0%)"


def run_config(weights=PRETRAINED, data=UCI, pooling="last") -> dict:
    """Return a run's config.json as fine-tuning writes it, with these sources and pooling."""
    model = "gpt2-small" if weights is PRETRAINED else "gpt2-nano"
    return {
        "model": model_config(model),
        "classes": ["ham", "spam"],
        "max_length": 120,
        "pooling": pooling,
        "training": asdict(TrainSettings(model=model, pooling=pooling, data_seed=5)),
        "precision": "float32",
        "provenance": {"weights": weights, "data": data},
    }


def front_matter(card: str) -> dict:
    """Return the YAML between the card's opening `---` lines, parsed."""
    found = re.match(r"---\n(.*?)\n---\n", card, re.DOTALL)
    assert found, "the card does not open with YAML front matter"
    return yaml.safe_load(found.group(1))


def test_the_front_matter_names_the_base_the_data_the_task_and_the_license():
    metadata = front_matter(model_card(run_config(), METRICS, "gpt2-spam", AGREEMENT))
    assert metadata["base_model"] == "openai-community/gpt2"
    assert metadata["datasets"] == ["ucirvine/sms_spam"]
    assert metadata["pipeline_tag"] == "text-classification"
    assert metadata["library_name"] == "transformers"
    assert metadata["license"] == "mit"
    assert metadata["metrics"] == ["accuracy", "precision", "recall", "f1"]
    assert "gpt2" in metadata["tags"]


def test_the_model_index_holds_the_validation_and_test_metrics_of_metrics_json():
    metadata = front_matter(model_card(run_config(), METRICS, "gpt2-spam", AGREEMENT))
    [model] = metadata["model-index"]
    assert model["name"] == "gpt2-spam"
    found = {}
    for result in model["results"]:
        assert result["task"]["type"] == "text-classification"
        assert result["dataset"]["type"] == "ucirvine/sms_spam"
        for metric in result["metrics"]:
            found[result["dataset"]["split"], metric["type"]] = metric["value"]
    assert found == {
        (split, name): METRICS[split][name]
        for split in ("validation", "test")
        for name in ("accuracy", "precision", "recall", "f1")
    }


def test_the_body_shows_the_metrics_the_settings_and_how_to_load_it():
    card = model_card(run_config(), METRICS, "gpt2-spam", AGREEMENT)
    assert "| accuracy | 97.33% | 95.67% |" in card
    assert "| messages | 149 | 300 |" in card
    assert "| lr | 5e-05 |" in card and "| max_length | 120 tokens |" in card
    assert 'pipeline("text-classification", model="gpt2-spam")' in card
    assert "split 70/10/20 with seed 5" in card  # the data seed, not the training seed
    assert "[openai-community/gpt2](https://huggingface.co/openai-community/gpt2)" in card


def test_random_weights_and_the_practice_set_are_said_loudly_and_claim_no_hub_ids():
    card = model_card(run_config(RANDOM, PRACTICE), METRICS, "nano", AGREEMENT)
    metadata = front_matter(card)
    assert "base_model" not in metadata and "datasets" not in metadata
    assert "**The base weights were random (seed 7), not pretrained GPT-2**" in card
    assert "NOT on the SMS Spam Collection" in card
    [model] = metadata["model-index"]
    assert {result["dataset"]["type"] for result in model["results"]} == {"local"}


@pytest.mark.parametrize(
    ("data", "dataset"),
    [
        ({**UCI, "source": "local", "path": "/home/me/SMSSpamCollection.tsv"}, "ucirvine/sms_spam"),
        ({**PRACTICE, "source": "local", "path": "/home/me/tickets.csv"}, None),
    ],
)
def test_a_local_file_is_the_sms_spam_collection_only_by_its_hash(data, dataset):
    card = model_card(run_config(data=data), METRICS, "gpt2-spam", AGREEMENT)
    assert front_matter(card).get("datasets") == ([dataset] if dataset else None)
    if dataset is None:
        assert "a local file, tickets.csv" in card


def test_the_pooling_section_gives_the_agreement_when_transformers_pools_differently():
    changed = model_card(run_config(), METRICS, "gpt2-spam", AGREEMENT)
    assert f"classified differently: {AGREEMENT}." in changed
    same = model_card(run_config(pooling="flexible"), METRICS, "gpt2-spam", None)
    assert "agrees" not in same and "predicts what the run predicted" in same


def test_a_run_without_metrics_json_says_so_and_has_no_results():
    card = model_card(run_config(), None, "gpt2-spam", AGREEMENT)
    assert "model-index" not in front_matter(card)
    assert "The run folder holds no metrics.json." in card
