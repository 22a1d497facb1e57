"""Run folders: what fine-tuning changed, as safetensors and JSON, written whole or not at all."""

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from gptclassifier.errors import ConfigError, DataError, DownloadError, GptClassifierError
from gptclassifier.files import read_json, write_json
from gptclassifier.model.classifier import adapt_for_classification
from gptclassifier.model.gpt import GPTModel
from gptclassifier.model.weights import base_digest, rebuild_base_model
from gptclassifier.settings import TrainSettings
from gptclassifier.training.device import parameter_dtype

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
# What a run's model.safetensors holds (config.json's "saved_parameters"; runs without it: all).
SAVED_TRAINED, SAVED_EVERYTHING = "trained", "all"


def ensure_run_dir_free(out_dir: Path, force: bool = False) -> None:
    """Refuse to go on if `out_dir` already exists, unless `force` allows replacing it."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not force:
        raise GptClassifierError(f"{out_dir} already exists: choose another --out or add --force")


@contextlib.contextmanager
def run_writer(out_dir: Path, force: bool = False):
    """Yield a temporary folder that replaces `out_dir` only if the block completes.

    An error or Ctrl-C inside the block removes the temporary folder and leaves any existing
    `out_dir` exactly as it was.
    """
    out_dir = Path(out_dir)
    ensure_run_dir_free(out_dir, force)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.partial-"))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    previous = None
    if out_dir.exists():
        previous = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.old-"))
        os.replace(out_dir, previous / out_dir.name)
    os.replace(staging, out_dir)
    if previous:
        shutil.rmtree(previous, ignore_errors=True)


def run_settings(config: dict) -> TrainSettings:
    """Return the training settings that a run's configuration records."""
    return TrainSettings(**config["training"])


def save_model(run_dir: Path, model: GPTModel, config: dict, everything: bool = False) -> None:
    """Save what training changed as model.safetensors, and the configuration as config.json.

    What training changed is the trainable parameters and the new head: loading
    rebuilds the base model that config["provenance"]["weights"] names and checks it against
    the digest recorded there. `everything` saves every parameter instead, a standalone model.
    """
    everything = everything or all(p.requires_grad for p in model.parameters())
    if not everything and "digest" not in config.get("provenance", {}).get("weights", {}):
        raise ValueError("saving only the trained parameters needs the base model's digest")
    state = {
        name: parameter.detach().cpu().contiguous()
        for name, parameter in _saved_parameters(model, everything).items()
    }
    save_file(state, Path(run_dir) / MODEL_FILE, metadata={"format": "pt"})
    saved = SAVED_EVERYTHING if everything else SAVED_TRAINED
    write_json(Path(run_dir) / CONFIG_FILE, config | {"saved_parameters": saved})


def load_run(run_dir: Path, device: torch.device | str = "cpu") -> tuple[GPTModel, dict]:
    """Return the fine-tuned model of a run directory, frozen as in training, and its configuration.

    Checks that the files exist, that every tensor has the shape that the configuration and
    the number of classes imply, and that the base model rebuilt for a run of trained
    parameters is the one it was trained on; never unpickles anything.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: no such run directory")
    missing = [name for name in (MODEL_FILE, CONFIG_FILE) if not (run_dir / name).is_file()]
    if missing:
        raise DataError(f"{run_dir}: incomplete run, {' and '.join(missing)} missing")
    try:
        config = read_json(run_dir / CONFIG_FILE)
        everything = config.get("saved_parameters", SAVED_EVERYTHING) == SAVED_EVERYTHING
        settings = run_settings(config)
        model = GPTModel(config["model"]) if everything else _base_of(run_dir, config)
        adapt_for_classification(model, settings, len(config["classes"]))
        model.to(parameter_dtype(config["precision"]))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError, ConfigError) as exc:
        raise DataError(
            f"{run_dir / CONFIG_FILE}: not a gptclassifier run configuration ({exc})"
        ) from None
    try:
        state = load_file(run_dir / MODEL_FILE)
    except (SafetensorError, OSError) as exc:
        raise DataError(f"{run_dir / MODEL_FILE}: cannot read it ({exc})") from None
    _check_shapes(_saved_parameters(model, everything), state, run_dir)
    model.load_state_dict(state, strict=everything)
    return model.to(device).eval(), config


def _saved_parameters(model: GPTModel, everything: bool) -> dict[str, torch.Tensor]:
    """Return the parameters a run's model.safetensors holds: all, or the trainable ones.

    The head is always among them: it is not part of the base model, even where it stays frozen
    (beside LoRA's updates).
    """
    return {
        name: parameter
        for name, parameter in model.named_parameters()
        if everything or parameter.requires_grad or name.startswith("out_head.")
    }


def _base_of(run_dir: Path, config: dict) -> GPTModel:
    """Rebuild the base model a run was trained on, or refuse in one line when it differs."""
    weights = config["provenance"]["weights"]
    name = config["training"]["model"]
    if weights["source"] == "pretrained":
        what = f"{name}, {weights['note']}"
    else:
        what = f"{name} with random weights of seed {weights['seed']}"
    try:
        base = rebuild_base_model(name, weights)
    except (DownloadError, DataError) as exc:
        raise DataError(f"{run_dir}: its base model ({what}) is not available: {exc}") from None
    found = base_digest(base)
    if found != weights["digest"]:
        raise DataError(
            f"{run_dir}: the base model found ({what}) is not the one it was trained on "
            f"(weights SHA-256 {found[:12]}, recorded {weights['digest'][:12]})"
        )
    return base


def _check_shapes(expected: dict, state: dict, run_dir: Path) -> None:
    """Raise a DataError that names the first tensor missing, extra or of the wrong shape."""
    if state.keys() != expected.keys():
        missing = sorted(expected.keys() - state.keys())
        extra = sorted(state.keys() - expected.keys())
        detail = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
        raise DataError(f"{run_dir / MODEL_FILE} does not match {CONFIG_FILE}: {detail}")
    for name, tensor in expected.items():
        if state[name].shape != tensor.shape:
            what = (
                f"{state[name].shape[0]} classes in the weights, {tensor.shape[0]} in {CONFIG_FILE}"
                if name.startswith("out_head.") and ".lora." not in name
                else f"{name} has shape {tuple(state[name].shape)}, expected {tuple(tensor.shape)}"
            )
            raise DataError(f"{run_dir / MODEL_FILE} does not match {CONFIG_FILE}: {what}")
