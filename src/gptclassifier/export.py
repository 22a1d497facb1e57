"""Standalone copies of a run: every parameter in one folder, or a folder for `transformers`."""

import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from gptclassifier.errors import ConfigError
from gptclassifier.files import write_json
from gptclassifier.model.classifier import has_causal_mask
from gptclassifier.model.gpt import GPTModel
from gptclassifier.model.lora import merge_lora
from gptclassifier.model.tokenizer import END_OF_TEXT, PAD_TOKEN_ID, vocabulary_files
from gptclassifier.model.weights import (
    ATTENTION_PROJECTIONS,
    BLOCK_CONV1DS,
    BLOCK_NORMS,
    EMBEDDINGS_AND_FINAL_NORM,
)
from gptclassifier.runs import CONFIG_FILE, MODEL_FILE, load_run, run_writer, save_model

FORMATS = ("run", "transformers")


def export_run(run_dir: Path, out_dir: Path, force: bool = False) -> Path:
    """Write a copy of a run whose model.safetensors holds every parameter; return its folder.

    The other files (metrics, history, plots, the splits) are copied as they are.
    """
    model, config = load_run(run_dir)
    with run_writer(out_dir, force) as staging:
        for item in Path(run_dir).iterdir():
            if item.name in (MODEL_FILE, CONFIG_FILE):
                continue
            copy = shutil.copytree if item.is_dir() else shutil.copy2
            copy(item, staging / item.name)
        save_model(staging, model, config, everything=True)
    return Path(out_dir)


def export_transformers(run_dir: Path, out_dir: Path, force: bool = False) -> Path:
    """Write a folder that transformers' GPT2ForSequenceClassification and pipeline load.

    transformers classifies at each message's last real token (its pad_token_id is
    <|endoftext|>), as `flexible` pooling does, and at the last position of a message without
    padding, as `last` pooling does; it has no way to read the first token or a mean. LoRA's
    updates are merged into the weights. The tensors are float32, with GPT-2's tokenizer files
    beside them.
    """
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
    merge_lora(model)
    classes = config["classes"]
    model_config = config["model"]
    hf_config = {
        "architectures": ["GPT2ForSequenceClassification"],
        "model_type": "gpt2",
        "vocab_size": model_config["vocab_size"],
        "n_positions": model_config["context_length"],
        "n_embd": model_config["emb_dim"],
        "n_layer": model_config["n_layers"],
        "n_head": model_config["n_heads"],
        "activation_function": "gelu_new",  # the tanh approximation, as GPTModel's GELU
        "layer_norm_epsilon": model.final_norm.eps,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "bos_token_id": PAD_TOKEN_ID,
        "eos_token_id": PAD_TOKEN_ID,
        "pad_token_id": PAD_TOKEN_ID,
        "id2label": dict(enumerate(classes)),
        "label2id": {name: index for index, name in enumerate(classes)},
        "dtype": "float32",
    }
    tokenizer_config = {
        "tokenizer_class": "GPT2Tokenizer",
        "model_max_length": model_config["context_length"],
        **dict.fromkeys(("bos_token", "eos_token", "unk_token", "pad_token"), END_OF_TEXT),
        "add_prefix_space": False,
    }
    vocab_bpe, encoder_json = vocabulary_files()
    with run_writer(out_dir, force) as staging:
        save_file(transformers_tensors(model), staging / MODEL_FILE, metadata={"format": "pt"})
        write_json(staging / CONFIG_FILE, hf_config)
        write_json(staging / "tokenizer_config.json", tokenizer_config)
        shutil.copy(encoder_json, staging / "vocab.json")
        shutil.copy(vocab_bpe, staging / "merges.txt")
    return Path(out_dir)


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
