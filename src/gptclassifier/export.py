"""Standalone copies of a run: every parameter in one folder, or a folder for `transformers`."""

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import save_file
from torch.utils.data import Subset

from gptclassifier.data.loaders import SpamDataset, evaluation_loader
from gptclassifier.errors import ConfigError, DataError
from gptclassifier.files import read_json, write_json
from gptclassifier.locks import locks_out_dir
from gptclassifier.model.classifier import has_causal_mask
from gptclassifier.model.gpt import GPTModel
from gptclassifier.model.lora import merge_lora
from gptclassifier.model.tokenizer import END_OF_TEXT, PAD_TOKEN_ID, get_tokenizer, vocabulary_files
from gptclassifier.model.weights import (
    ATTENTION_PROJECTIONS,
    BLOCK_CONV1DS,
    BLOCK_NORMS,
    EMBEDDINGS_AND_FINAL_NORM,
)
from gptclassifier.model_card import model_card
from gptclassifier.progress import progress_bar, silent
from gptclassifier.runs import (
    CONFIG_FILE,
    MODEL_FILE,
    ensure_run_dir_free,
    load_run,
    run_settings,
    run_writer,
    save_model,
)
from gptclassifier.training.device import choose_device
from gptclassifier.training.loop import evaluating
from gptclassifier.training.runners import PooledModel, classifier_runner

FORMATS = ("run", "transformers")
# config.json's transformers_version where transformers is not installed: the release that
# tests/test_export.py loaded exported folders with when this format was last changed.
TESTED_TRANSFORMERS_VERSION = "5.25.0"


@dataclass(frozen=True)
class Agreement:
    """On how many of a run's test messages transformers' reading predicts what the run does."""

    agreed: int
    total: int

    def __str__(self) -> str:
        share = self.agreed / self.total
        return (
            f"on the run's {self.total} test messages the exported model agrees with the run "
            f"on {self.agreed} ({share:.1%})"
        )


@locks_out_dir
def export_run(run_dir: Path, out_dir: Path, force: bool = False) -> Path:
    """Write a copy of a run whose model.safetensors holds every parameter; return its folder.

    The other files (metrics, history, plots, the splits) are copied as they are.
    """
    ensure_run_dir_free(out_dir, force)
    model, config = load_run(run_dir)
    with run_writer(out_dir, force) as staging:
        for item in Path(run_dir).iterdir():
            if item.name in (MODEL_FILE, CONFIG_FILE):
                continue
            copy = shutil.copytree if item.is_dir() else shutil.copy2
            copy(item, staging / item.name)
        save_model(staging, model, config, everything=True)
    return Path(out_dir)


@locks_out_dir
def export_transformers(
    run_dir: Path,
    out_dir: Path,
    force: bool = False,
    allow_pooling_change: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = silent,
) -> Path:
    """Write a folder that transformers' GPT2ForSequenceClassification and pipeline load.

    transformers classifies at each message's last real token (its pad_token_id is
    <|endoftext|>), as `flexible` pooling does; it has no way to read the first token or a mean.
    A `last`-pooled run read the last position of its padded batch instead: how often the export
    still predicts what the run predicts is measured on the run's test split and logged, and
    the export is refused unless `allow_pooling_change`. LoRA's updates are merged into the
    weights. The tensors are float32, with GPT-2's tokenizer files (cutting a message to the
    run's max_length with truncation=True, as the run did) and a model card beside them.
    """
    ensure_run_dir_free(out_dir, force)  # before the measurement, not after
    model, config = load_run(run_dir)
    reads = {"first": "the first token", "mean": "the mean of every position"}
    if config["pooling"] in reads:
        raise ConfigError(
            f"{run_dir} classifies at {reads[config['pooling']]}, and transformers' "
            "GPT2ForSequenceClassification reads the last token: it cannot be exported to it"
        )
    if not has_causal_mask(model):
        raise ConfigError(
            f"{run_dir} was trained without the causal mask, and transformers' GPT-2 always "
            "applies it: it cannot be exported to it"
        )
    agreement = None
    if config["pooling"] == "last":
        agreement = pooling_agreement(run_dir, progress)
        log(f"transformers will read the last real token; {agreement}")
        if not allow_pooling_change:
            raise ConfigError(
                f"{run_dir} classifies at the last position of its padded batch and transformers "
                f"at the last real token: {agreement}; add --allow-pooling-change to export it"
            )
    merge_lora(model)
    hf_config = transformers_config(config["model"], config["classes"], model.final_norm.eps)
    tokenizer_config = {
        "tokenizer_class": "GPT2Tokenizer",
        # the most tokens of a message the run reads: truncation=True cuts messages as it did
        "model_max_length": config["max_length"],
        **dict.fromkeys(("bos_token", "eos_token", "unk_token", "pad_token"), END_OF_TEXT),
        "add_prefix_space": False,
    }
    metrics_file = Path(run_dir) / "metrics.json"
    metrics = read_json(metrics_file) if metrics_file.is_file() else None
    card = model_card(config, metrics, Path(out_dir).name, str(agreement) if agreement else None)
    vocab_bpe, encoder_json = vocabulary_files()
    with run_writer(out_dir, force) as staging:
        save_file(transformers_tensors(model), staging / MODEL_FILE, metadata={"format": "pt"})
        write_json(staging / CONFIG_FILE, hf_config)
        write_json(staging / "tokenizer_config.json", tokenizer_config)
        shutil.copy(encoder_json, staging / "vocab.json")
        shutil.copy(vocab_bpe, staging / "merges.txt")
        (staging / "README.md").write_text(card, encoding="utf-8")
    return Path(out_dir)


def transformers_version() -> str:
    """Return the version of transformers installed here, else the one the export is tested with."""
    try:
        return version("transformers")
    except PackageNotFoundError:
        return TESTED_TRANSFORMERS_VERSION


def pooling_agreement(run_dir: Path, progress: bool = True) -> Agreement:
    """Count the run's test messages whose prediction transformers' reading leaves unchanged.

    The run predicts as it computed in training (its pooling, its padding, its precision);
    the exported folder reads each message cut to the run's max_length (as its tokenizer cuts
    with truncation=True) at its last real token, in float32, with LoRA's updates merged.
    """
    device = choose_device()
    model, config = load_run(run_dir, device)
    settings = run_settings(config)
    messages = _test_split(run_dir)
    tokenizer = get_tokenizer()
    dataset = SpamDataset(messages, tokenizer, config["max_length"])
    # shortest first: the exported model's batches, cut to their longest message, stay short
    padding = [row.count(PAD_TOKEN_ID) for row in dataset.encoded_texts]
    by_length = Subset(dataset, sorted(range(len(dataset)), key=padding.__getitem__, reverse=True))
    with progress_bar(2 * len(messages), "comparing with transformers", progress, "message") as bar:
        ours = _predicted(
            classifier_runner(model, settings, config["precision"]),
            evaluation_loader(by_length, settings.batch_size, settings.trims_padding),
            device,
            bar,
        )
        theirs = _predicted(
            PooledModel(merge_lora(model).float(), "flexible"),
            evaluation_loader(by_length, settings.batch_size, trim=True),
            device,
            bar,
        )
    return Agreement(int((ours == theirs).sum()), len(messages))


def _test_split(run_dir: Path) -> pd.DataFrame:
    """Return a run's test messages, or say that measuring a change of pooling needs them."""
    path = Path(run_dir) / "data" / "test.csv"
    messages = pd.read_csv(path, keep_default_na=False) if path.is_file() else pd.DataFrame()
    if messages.empty:
        raise DataError(
            f"{path} is missing or empty: exporting a last-token run measures on its test split "
            "how often transformers predicts what it predicts (fine-tuning writes the split there)"
        )
    return messages


def _predicted(runner, loader, device, bar) -> torch.Tensor:
    """Return the class a runner predicts for every message of a loader, moving `bar` along."""
    predicted = []
    with evaluating(runner):
        for inputs, _ in loader:
            predicted.append(runner(inputs.to(device)).argmax(dim=-1).cpu())
            bar.update(len(inputs))
    return torch.cat(predicted)


def transformers_config(model_config: dict, classes, layer_norm_epsilon: float) -> dict:
    """Return GPT2ForSequenceClassification's config.json for a GPTModel's configuration."""
    return {
        "architectures": ["GPT2ForSequenceClassification"],
        "model_type": "gpt2",
        "vocab_size": model_config["vocab_size"],
        "n_positions": model_config["context_length"],
        "n_embd": model_config["emb_dim"],
        "n_layer": model_config["n_layers"],
        "n_head": model_config["n_heads"],
        "activation_function": "gelu_new",  # the tanh approximation, as GPTModel's GELU
        "layer_norm_epsilon": layer_norm_epsilon,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "bos_token_id": PAD_TOKEN_ID,
        "eos_token_id": PAD_TOKEN_ID,
        "pad_token_id": PAD_TOKEN_ID,
        "id2label": dict(enumerate(classes)),
        "label2id": {name: index for index, name in enumerate(classes)},
        "dtype": "float32",
        "transformers_version": transformers_version(),
    }


@torch.no_grad()
def transformers_tensors(model: GPTModel) -> dict[str, torch.Tensor]:
    """Return a classifier's tensors under GPT2ForSequenceClassification's names, in float32.

    Its `score` layer has no bias, so the head's bias b is folded into the final norm's shift:
    W (n + s + d) = W (n + s) + b for the shift d = W⁺ b, the pseudo-inverse of W applied to b
    (W has far fewer rows than columns, so W W⁺ is the identity).
    """
    state = {name: tensor.double() for name, tensor in model.state_dict().items()}
    head, bias = state["out_head.weight"], state.get("out_head.bias")
    if bias is not None:
        shift = torch.linalg.pinv(head) @ bias
        if not torch.allclose(head @ shift, bias, atol=1e-9):
            raise ConfigError("the head's rows are linearly dependent: its bias cannot be folded")
        state["final_norm.shift"] = state["final_norm.shift"] + shift
    tensors = {f"transformer.{hf}": state[ours] for hf, ours in EMBEDDINGS_AND_FINAL_NORM.items()}
    tensors["score.weight"] = head
    for b in range(len(model.trf_blocks)):
        hf, ours = f"transformer.h.{b}.", f"trf_blocks.{b}."
        weights = [state[f"{ours}att.{name}.weight"] for name in ATTENTION_PROJECTIONS]
        biases = [
            state.get(f"{ours}att.{name}.bias", torch.zeros(len(weights[0]), dtype=torch.float64))
            for name in ATTENTION_PROJECTIONS
        ]  # GPT-2 always has these biases: zeros stand in for a model built without them
        tensors[f"{hf}attn.c_attn.weight"] = torch.cat(weights).T
        tensors[f"{hf}attn.c_attn.bias"] = torch.cat(biases)
        for hf_name, our_name in BLOCK_CONV1DS.items():
            tensors[f"{hf}{hf_name}.weight"] = state[f"{ours}{our_name}.weight"].T
            tensors[f"{hf}{hf_name}.bias"] = state[f"{ours}{our_name}.bias"]
        for hf_name, our_name in BLOCK_NORMS.items():
            tensors[f"{hf}{hf_name}.weight"] = state[f"{ours}{our_name}.scale"]
            tensors[f"{hf}{hf_name}.bias"] = state[f"{ours}{our_name}.shift"]
    return {name: tensor.float().contiguous() for name, tensor in tensors.items()}
