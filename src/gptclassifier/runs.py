"""Run directories: a fine-tuned model as safetensors plus JSON, written whole or not at all."""

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from gptclassifier.errors import DataError, GptClassifierError
from gptclassifier.fast import parameter_dtype
from gptclassifier.finetune import add_classification_head, set_trainable
from gptclassifier.model import GPTModel

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


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


def write_json(path: Path, data: dict) -> None:
    """Write a dict as indented UTF-8 JSON."""
    Path(path).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def save_model(run_dir: Path, model: GPTModel, config: dict) -> None:
    """Save the weights as model.safetensors and the run's configuration as config.json."""
    state = {
        name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()
    }
    save_file(state, Path(run_dir) / MODEL_FILE, metadata={"format": "pt"})
    write_json(Path(run_dir) / CONFIG_FILE, config)


def load_run(run_dir: Path, device: torch.device | str = "cpu") -> tuple[GPTModel, dict]:
    """Return the fine-tuned model of a run directory, frozen as in training, and its configuration.

    Checks that the files exist and that every tensor has the shape that the configuration and
    the number of classes imply; never unpickles anything.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: no such run directory")
    missing = [name for name in (MODEL_FILE, CONFIG_FILE) if not (run_dir / name).is_file()]
    if missing:
        raise DataError(f"{run_dir}: incomplete run, {' and '.join(missing)} missing")
    try:
        config = json.loads((run_dir / CONFIG_FILE).read_text(encoding="utf-8"))
        model = GPTModel(config["model"])
        add_classification_head(model, len(config["classes"]))
        set_trainable(model, config["training"]["trainable"])
        model.to(parameter_dtype(config["precision"]))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(
            f"{run_dir / CONFIG_FILE}: not a gptclassifier run configuration ({exc})"
        ) from None
    try:
        state = load_file(run_dir / MODEL_FILE)
    except (SafetensorError, OSError) as exc:
        raise DataError(f"{run_dir / MODEL_FILE}: cannot read it ({exc})") from None
    _check_shapes(model, state, run_dir)
    model.load_state_dict(state)
    return model.to(device).eval(), config


def _check_shapes(model: GPTModel, state: dict, run_dir: Path) -> None:
    """Raise a DataError that names the first tensor missing, extra or of the wrong shape."""
    expected = model.state_dict()
    if state.keys() != expected.keys():
        missing = sorted(expected.keys() - state.keys())
        extra = sorted(state.keys() - expected.keys())
        detail = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
        raise DataError(f"{run_dir / MODEL_FILE} does not match {CONFIG_FILE}: {detail}")
    for name, tensor in expected.items():
        if state[name].shape != tensor.shape:
            what = (
                f"{state[name].shape[0]} classes in the weights, {tensor.shape[0]} in {CONFIG_FILE}"
                if name.startswith("out_head")
                else f"{name} has shape {tuple(state[name].shape)}, expected {tuple(tensor.shape)}"
            )
            raise DataError(f"{run_dir / MODEL_FILE} does not match {CONFIG_FILE}: {what}")
