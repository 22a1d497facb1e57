"""Run folders: what fine-tuning changed, as safetensors and JSON, written whole or not at all."""

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from gptclassifier.errors import ConfigError, DataError, DownloadError, GptClassifierError
from gptclassifier.files import read_json, write_json
from gptclassifier.locks import output_lock, refuse_if_busy
from gptclassifier.model.classifier import adapt_for_classification, count_parameters
from gptclassifier.model.gpt import GPTModel, model_config
from gptclassifier.model.weights import base_digest, rebuild_base_model
from gptclassifier.settings import TrainSettings
from gptclassifier.training.device import parameter_dtype

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
# What a run's model.safetensors holds (config.json's "saved_parameters"; runs without it: all).
SAVED_TRAINED, SAVED_EVERYTHING = "trained", "all"
BLOCK = re.compile(r"trf_blocks\.(\d+)\.")
QUERY_WEIGHT = re.compile(r"trf_blocks\.\d+\.att\.W_query(\.linear)?\.weight")


def ensure_run_dir_free(out_dir: Path, force: bool = False) -> None:
    """Refuse to go on if another process writes `out_dir`, or if it exists and not `force`."""
    out_dir = Path(out_dir)
    refuse_if_busy(out_dir)
    if out_dir.exists() and not force:
        raise GptClassifierError(f"{out_dir} already exists: choose another --out or add --force")


@contextlib.contextmanager
def run_writer(out_dir: Path, force: bool = False):
    """Yield a temporary folder that becomes `out_dir` only if the block completes.

    The lock on `out_dir` is held throughout. An error or Ctrl-C inside the block removes the
    temporary folder and leaves any existing `out_dir` exactly as it was. An existing `out_dir`
    (one that appeared while the block ran: callers check before their work) is replaced only
    with `force`; otherwise the new folder is kept beside it, under a name that says so.
    """
    out_dir = Path(out_dir)
    with output_lock(out_dir):
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.partial-"))
        try:
            yield staging
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if out_dir.exists() and not force:
            kept = out_dir.with_name(f"{out_dir.name}.new-{time.strftime('%Y%m%d-%H%M%S')}")
            os.rename(staging, kept)
            raise GptClassifierError(
                f"{out_dir} already exists: the new result is kept beside it in {kept}; "
                f"add --force to let it replace {out_dir}"
            )
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
    try:
        save_file(state, Path(run_dir) / MODEL_FILE, metadata={"format": "pt"})
    except SafetensorError as exc:  # how safetensors reports a failed write, a full disk among them
        raise OSError(errno.EIO, str(exc)) from None  # the command names its output folder
    saved = SAVED_EVERYTHING if everything else SAVED_TRAINED
    write_json(Path(run_dir) / CONFIG_FILE, config | {"saved_parameters": saved})


def load_run(run_dir: Path, device: torch.device | str = "cpu") -> tuple[GPTModel, dict]:
    """Return the fine-tuned model of a run directory, frozen as in training, and its configuration.

    Checks that the files exist; that config.json states each fact it holds twice the same way
    (the pooling, the model's dimensions beside its name); that every fact the tensors also tell
    (what was saved, the precision, the dimensions, the classes, the LoRA rank) agrees; that
    every tensor has the shape the configuration implies; and that the base model rebuilt for a
    run of trained parameters is the one it was trained on. Never unpickles anything.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: no such run directory")
    missing = [name for name in (MODEL_FILE, CONFIG_FILE) if not (run_dir / name).is_file()]
    if missing:
        raise DataError(f"{run_dir}: incomplete run, {' and '.join(missing)} missing")
    try:
        config = read_json(run_dir / CONFIG_FILE)
        settings = run_settings(config)
        _check_copies(run_dir, config, settings)
        state = _read_tensors(run_dir)
        _check_against_tensors(run_dir, config, settings, state)
        everything = config.get("saved_parameters", SAVED_EVERYTHING) == SAVED_EVERYTHING
        model = GPTModel(config["model"]) if everything else _base_of(run_dir, config)
        adapt_for_classification(model, settings, len(config["classes"]))
        model.to(parameter_dtype(config["precision"]))
        _check_counts(run_dir, config, model)
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError, ConfigError) as exc:
        raise DataError(
            f"{run_dir / CONFIG_FILE}: not a gptclassifier run configuration ({exc})"
        ) from None
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
        raise _mismatch(run_dir, f"missing {missing[0]}" if missing else f"unexpected {extra[0]}")
    for name, tensor in expected.items():
        if state[name].shape != tensor.shape:
            found = tuple(state[name].shape)
            raise _mismatch(run_dir, f"{name} has shape {found}, expected {tuple(tensor.shape)}")


def _check_copies(run_dir: Path, config: dict, settings: TrainSettings) -> None:
    """Raise a DataError naming the first fact that config.json states twice, differently.

    Readers use the top-level pooling and model, while the model is rebuilt from training's.
    """
    size = model_config(settings.model)
    copies = [
        (f"model.{key}", config["model"].get(key), f"training.model {settings.model} has", value)
        for key, value in size.items()
    ]
    pooling = config.get("pooling", settings.pooling)
    copies.append(("pooling", pooling, "training.pooling is", settings.pooling))
    if settings.precision != "auto":  # else config.json records the precision that "auto" chose
        copies.append(
            ("precision", config["precision"], "training.precision is", settings.precision)
        )
    for field, value, reference, expected in copies:
        if value != expected:
            raise DataError(
                f"{run_dir / CONFIG_FILE}: {field} is {json.dumps(value)}, "
                f"but {reference} {json.dumps(expected)}"
            )
    saved = config.get("saved_parameters", SAVED_EVERYTHING)
    if saved not in (SAVED_TRAINED, SAVED_EVERYTHING):
        raise DataError(
            f"{run_dir / CONFIG_FILE}: saved_parameters is {json.dumps(saved)}, "
            f"neither {json.dumps(SAVED_TRAINED)} nor {json.dumps(SAVED_EVERYTHING)}"
        )
    if config.get("max_length", 0) > size["context_length"]:
        raise DataError(
            f"{run_dir / CONFIG_FILE}: max_length is {config['max_length']}, "
            f"more than model.context_length {size['context_length']}"
        )


def _read_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    """Return the tensors of a run's model.safetensors, or refuse a file that is not one."""
    try:
        return load_file(run_dir / MODEL_FILE)
    except (SafetensorError, OSError) as exc:
        raise DataError(f"{run_dir / MODEL_FILE}: cannot read it ({exc})") from None


def _check_against_tensors(
    run_dir: Path, config: dict, settings: TrainSettings, state: dict
) -> None:
    """Raise a DataError naming the first fact that the tensors and config.json tell differently."""
    for field, in_weights, in_config in _facts_in_both(config, settings, state):
        if in_weights != in_config:
            raise _mismatch(
                run_dir,
                f"{field} is {json.dumps(in_weights)} in the weights, "
                f"{json.dumps(in_config)} in {CONFIG_FILE}",
            )


def _facts_in_both(config: dict, settings: TrainSettings, state: dict) -> Iterator[tuple]:
    """Yield (field, what the tensors show, what config.json records) for each fact both tell."""
    everything = "tok_emb.weight" in state  # no strategy but "all" trains the embeddings
    saved = SAVED_EVERYTHING if everything else SAVED_TRAINED
    yield "saved_parameters", saved, config.get("saved_parameters", SAVED_EVERYTHING)
    # bfloat16 runs keep float32 parameters: float32 weights agree with either precision.
    precision = config["precision"]
    dtypes = sorted({str(tensor.dtype).removeprefix("torch.") for tensor in state.values()})
    kept = str(parameter_dtype(precision)).removeprefix("torch.")
    yield "precision", precision if dtypes == [kept] else "/".join(dtypes), precision
    model = config["model"]
    if everything:
        blocks = {int(match[1]) for name in state if (match := BLOCK.match(name))}
        yield "model.n_layers", max(blocks, default=-1) + 1, model["n_layers"]
        yield "model.vocab_size", state["tok_emb.weight"].shape[0], model["vocab_size"]
        if "pos_emb.weight" in state:
            yield "model.context_length", state["pos_emb.weight"].shape[0], model["context_length"]
    head = state.get("out_head.weight", state.get("out_head.linear.weight"))
    if head is not None:
        yield "model.emb_dim", head.shape[1], model["emb_dim"]
        yield "the number of classes", head.shape[0], len(config["classes"])
    query = next((name for name in state if QUERY_WEIGHT.fullmatch(name)), None)
    if query:
        yield "model.qkv_bias", query.removesuffix("weight") + "bias" in state, model["qkv_bias"]
    ranks = [tensor.shape[1] for name, tensor in state.items() if name.endswith(".lora.A")]
    if ranks:
        yield "training.lora_rank", ranks[0], settings.lora_rank


def _check_counts(run_dir: Path, config: dict, model: GPTModel) -> None:
    """Raise a DataError when config.json's parameter counts are not the rebuilt model's."""
    counted = dict(zip(("total", "trainable"), count_parameters(model), strict=True))
    for key, recorded in config.get("parameters", {}).items():
        if key in counted and recorded != counted[key]:
            raise DataError(
                f"{run_dir / CONFIG_FILE}: parameters.{key} is {json.dumps(recorded)}, "
                f"but the model it describes has {counted[key]}"
            )


def _mismatch(run_dir: Path, detail: str) -> DataError:
    """Return the DataError for a model.safetensors that does not fit its config.json."""
    return DataError(f"{run_dir / MODEL_FILE} does not match {CONFIG_FILE}: {detail}")
