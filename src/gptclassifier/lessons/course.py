"""Lesson helpers: what a lesson runs on, and the package's own code shown where it is taught."""

import inspect
import os
from dataclasses import asdict
from pathlib import Path

from IPython.display import Code

from gptclassifier.data.sms import SMS_FILE_VARIABLE, LabeledData, load_data, sms_cache_path
from gptclassifier.files import read_json
from gptclassifier.fine_tune import RunResult, fine_tune
from gptclassifier.model.weights import HUB_CHECKPOINTS, cached_gpt2
from gptclassifier.progress import Phases
from gptclassifier.settings import Profile, get_profile
from gptclassifier.training.loop import History

PROFILE_PURPOSES = {
    "book": "the chapter's data, model and settings",
    "smoke": "the practice data and a tiny model, so that every cell runs in seconds",
}


def describe_sources(profile: str | None = None) -> str:
    """Return three lines: the profile, and the sources of its data and of its weights."""
    chosen = get_profile(profile)
    return "\n".join(
        [
            f"profile: {chosen.name} ({PROFILE_PURPOSES[chosen.name]})",
            f"data:    {_data_source(chosen)}",
            f"weights: {_weights_source(chosen.training.model)}",
        ]
    )


def _data_source(profile: Profile) -> str:
    """Describe where the profile's messages will come from, without fetching anything."""
    if profile.data == "practice":
        return "the project's practice set of SMS-like messages (made here, no download)"
    if os.environ.get(SMS_FILE_VARIABLE):
        return f"your copy of the SMS Spam Collection (${SMS_FILE_VARIABLE})"
    if sms_cache_path().is_file():
        return "the SMS Spam Collection, downloaded earlier (in the cache)"
    return "the SMS Spam Collection, downloaded from UCI on first use (practice set if offline)"


def _pretrained_cached(model: str) -> bool:
    """Tell whether the model's pretrained weights are in the Hugging Face cache."""
    return cached_gpt2(model) is not None


def _weights_source(model: str) -> str:
    """Describe where the model's weights will come from, without fetching anything."""
    if model not in HUB_CHECKPOINTS:
        return f"random initialisation ({model} has no pretrained weights)"
    if _pretrained_cached(model):
        return f"OpenAI's pretrained {model}, downloaded earlier (in the Hugging Face cache)"
    return f"OpenAI's pretrained {model}, from Hugging Face on first use (random if offline)"


def start_lesson(profile: str | None = None) -> Profile:
    """Print what this lesson runs on and return the profile."""
    print(describe_sources(profile))
    return get_profile(profile)


def fine_tuned_run(profile: str | None = None, run_dir: Path | str | None = None) -> Path:
    """Return a run fine-tuned with the profile's settings, training it first if it is missing.

    Lessons that use a trained classifier share this run, so that it is trained once.
    """
    chosen = get_profile(profile)
    run_dir = Path(run_dir or f"runs/lessons-{chosen.name}")
    data = load_data(profile=chosen.name, parsing=chosen.training.parsing)
    if not _is_current(run_dir / "config.json", chosen, data):
        fine_tune(data, chosen.training, run_dir, chosen.name, force=True, progress=False)
    return run_dir


def read_run(run_dir: Path | str) -> RunResult:
    """Return a saved run's result (history, metrics, configuration) without training again."""
    run_dir = Path(run_dir)
    return RunResult(
        run_dir,
        History(**read_json(run_dir / "history.json")),
        read_json(run_dir / "metrics.json"),
        read_json(run_dir / "config.json"),
        Phases(),
    )


def _is_current(config_file: Path, profile: Profile, data: LabeledData) -> bool:
    """Tell whether a saved run used the profile's settings, these data and today's weights."""
    if not config_file.is_file():
        return False
    config = read_json(config_file)
    provenance = config.get("provenance", {})
    # Trained offline on random weights, a run is stale once the pretrained ones are cached.
    random_weights_now = not _pretrained_cached(profile.training.model)
    return (
        config.get("profile") == profile.name
        and config.get("training") == asdict(profile.training)
        and provenance.get("data", {}).get("sha256") == data.provenance.sha256
        and (provenance.get("weights", {}).get("source") == "random") == random_weights_now
        and "digest" in provenance.get("weights", {})  # runs from before it held every weight
    )


def show_source(obj) -> Code:
    """Return the package's own source of a function or class, highlighted as in an editor."""
    return Code(inspect.getsource(obj), language="python")
