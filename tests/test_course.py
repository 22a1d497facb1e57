"""What a lesson says it runs on, and the run that lessons share."""

import inspect
import json

import pytest

pytest.importorskip("IPython", reason="IPython (with the lab extra) is not installed")

from gptclassifier.data.loaders import SpamDataset  # noqa: E402
from gptclassifier.data.sms import sms_cache_path  # noqa: E402
from gptclassifier.data.splits import create_balanced_dataset  # noqa: E402
from gptclassifier.lessons.course import (  # noqa: E402
    describe_sources,
    fine_tuned_run,
    read_run,
    show_source,
    start_lesson,
)
from gptclassifier.model.weights import HUB_CHECKPOINTS  # noqa: E402


def test_smoke_profile_says_practice_data_and_random_weights():
    assert describe_sources("smoke").splitlines() == [
        "profile: smoke (the practice data and a tiny model, so that every cell runs in seconds)",
        "data:    the project's practice set of SMS-like messages (made here, no download)",
        "weights: random initialisation (gpt2-nano has no pretrained weights)",
    ]


def test_book_profile_says_what_it_will_fetch_and_what_it_has(tmp_path, monkeypatch):
    before = describe_sources("book").splitlines()
    assert before[1].endswith("downloaded from UCI on first use (practice set if offline)")
    assert before[2].endswith("from Hugging Face on first use (random if offline)")

    small = HUB_CHECKPOINTS["gpt2-small"]
    in_hub_cache = (
        tmp_path / "hf" / "hub" / f"models--{small.repo.replace('/', '--')}" / "snapshots"
        / small.revision / "model.safetensors"
    )  # fmt: skip
    for path in (sms_cache_path(), in_hub_cache):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"")
    after = describe_sources("book").splitlines()
    assert after[1] == "data:    the SMS Spam Collection, downloaded earlier (in the cache)"
    assert after[2] == (
        "weights: OpenAI's pretrained gpt2-small, downloaded earlier (in the Hugging Face cache)"
    )

    monkeypatch.setenv("GPTCLASSIFIER_SMS_FILE", str(tmp_path / "mine.zip"))
    assert "your copy" in describe_sources("book").splitlines()[1]


def test_start_lesson_prints_and_returns_the_profile(monkeypatch, capsys):
    monkeypatch.setenv("GPTCLASSIFIER_PROFILE", "smoke")
    assert start_lesson().name == "smoke"
    assert capsys.readouterr().out.startswith("profile: smoke")


def test_fine_tuned_run_is_trained_once_and_then_reused(tmp_path):
    run = fine_tuned_run("smoke", tmp_path / "run")
    model_file = run / "model.safetensors"
    first = model_file.stat().st_mtime_ns
    assert fine_tuned_run("smoke", run) == run
    assert model_file.stat().st_mtime_ns == first

    saved = read_run(run)  # what fine_tune returned, read back
    assert saved.run_dir == run and saved.config["profile"] == "smoke"
    assert (
        saved.history.train_losses == json.loads((run / "history.json").read_text())["train_losses"]
    )
    assert (
        saved.metrics["test"]["accuracy"]
        == json.loads((run / "metrics.json").read_text())["test"]["accuracy"]
    )
    assert tuple(saved.history)[4] == saved.history.examples_seen > 0

    config = json.loads((run / "config.json").read_text())
    config["training"]["lr"] = 0.5  # a run made with other settings is not reused
    (run / "config.json").write_text(json.dumps(config))
    fine_tuned_run("smoke", run)
    assert json.loads((run / "config.json").read_text())["training"]["lr"] != 0.5


@pytest.mark.parametrize(
    ("part", "stale"),
    [
        ("data", {"source": "practice", "sha256": "0" * 64}),
        ("weights", {"source": "pretrained"}),
        ("weights", {"source": "random", "seed": 123}),  # saved before runs named their base
    ],
)
def test_fine_tuned_run_is_retrained_on_other_data_or_weights(tmp_path, part, stale):
    run = fine_tuned_run("smoke", tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    current = config["provenance"][part]
    config["provenance"][part] = stale  # as if trained on other messages, or pretrained weights
    (run / "config.json").write_text(json.dumps(config))
    fine_tuned_run("smoke", run)
    assert json.loads((run / "config.json").read_text())["provenance"][part] == current


def test_show_source_renders_the_running_code_highlighted():
    shown = show_source(create_balanced_dataset)
    assert shown.data.startswith("def create_balanced_dataset(")
    assert shown.data == inspect.getsource(create_balanced_dataset)
    assert '<span class="k">def</span>' in shown._repr_html_()  # highlighted, not plain text
    assert show_source(SpamDataset).data.startswith("class SpamDataset(")
