"""GPT-2's pretrained weights from Hugging Face's safetensors files, without TensorFlow."""

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from gptclassifier.download import cache_dir, download_file, sha256_of
from gptclassifier.errors import DataError, DownloadError, warn_fallback
from gptclassifier.model import GPT_SIZES, GPTModel, model_config
from gptclassifier.profiles import strict_mode


@dataclass(frozen=True)
class HubCheckpoint:
    """A model.safetensors file on the Hugging Face Hub, pinned to a commit."""

    repo: str
    revision: str
    sha256: str | None = None  # known for gpt2-small; the pinned commit guards the others
    hub: str = "https://huggingface.co"

    def urls(self) -> list[str]:
        """Return the pinned address, then the repository's current file as a fallback."""
        base = f"{self.hub}/{self.repo}/resolve"
        return [f"{base}/{self.revision}/model.safetensors", f"{base}/main/model.safetensors"]


HUB_CHECKPOINTS = {
    "gpt2-small": HubCheckpoint(
        "openai-community/gpt2",
        "607a30d783dfa663caf39e06633721c8d4cfcd7e",
        "248dfc3911869ec493c76e65bf2fcf7f615828b0254c12b473182f0f81d3a707",
    ),
    "gpt2-medium": HubCheckpoint(
        "openai-community/gpt2-medium", "6dcaa7a952f72f9298047fd5137cd6e4f05f41da"
    ),
    "gpt2-large": HubCheckpoint(
        "openai-community/gpt2-large", "32b71b12589c2f8d625668d2335a01cac3249519"
    ),
    "gpt2-xl": HubCheckpoint(
        "openai-community/gpt2-xl", "15ea56dee5df4983c59b2538573817e1667135e2"
    ),
}
HEADS_BY_WIDTH = {sizes["emb_dim"]: sizes["n_heads"] for sizes in GPT_SIZES.values()}
IGNORED_KEYS = re.compile(r"(^lm_head\.weight$)|(\.attn\.(masked_)?bias$)")


@dataclass(frozen=True)
class BaseModel:
    """A GPT model and where its weights came from."""

    model: GPTModel
    config: dict
    provenance: dict


def weights_path(name: str) -> Path:
    """Return where the cached model.safetensors of a GPT-2 size lives."""
    return cache_dir() / "gpt2" / name / "model.safetensors"


def download_gpt2(name: str = "gpt2-small", **download_options) -> Path:
    """Return the cached model.safetensors of a GPT-2 size, downloading it once."""
    if name not in HUB_CHECKPOINTS:
        raise DataError(
            f"no pretrained weights for {name!r}: choose one of {', '.join(HUB_CHECKPOINTS)}"
        )
    checkpoint = HUB_CHECKPOINTS[name]
    dest = weights_path(name)
    if dest.exists() and (checkpoint.sha256 is None or sha256_of(dest) == checkpoint.sha256):
        return dest
    return download_file(checkpoint.urls(), dest, checkpoint.sha256, **download_options)


def load_pretrained_gpt2(name: str = "gpt2-small", **download_options) -> GPTModel:
    """Return a GPTModel holding OpenAI's pretrained weights for a GPT-2 size."""
    return load_hf_checkpoint(download_gpt2(name, **download_options))


def load_base_model(name: str, seed: int = 123) -> BaseModel:
    """Return the pretrained model, or (offline) seeded random weights with a loud warning.

    Sizes without published weights (the tiny `gpt2-nano`) start from random weights quietly;
    $GPTCLASSIFIER_STRICT turns a failed download into an error instead of a fallback.
    """
    config = model_config(name)
    if name in HUB_CHECKPOINTS:
        try:
            path = download_gpt2(name)
            model = load_hf_checkpoint(path)
            checkpoint = HUB_CHECKPOINTS[name]
            note = f"{checkpoint.repo} at {checkpoint.revision[:7]}"
            provenance = {"source": "pretrained", "note": note, "path": str(path)}
            return BaseModel(model, config, provenance | asdict(checkpoint))
        except DownloadError as exc:
            remedy = (
                f"download {HUB_CHECKPOINTS[name].urls()[0]} and put it at {weights_path(name)}."
            )
            if strict_mode():
                raise DownloadError(f"{exc}. To fix: {remedy}") from None
            warn_fallback(
                f"RANDOM WEIGHTS: {name} IS NOT PRETRAINED, SO ACCURACY WILL BE POOR.",
                str(exc),
                remedy,
            )
            note = f"fallback: {exc}"
    else:
        note = f"{name} has no pretrained weights"
    torch.manual_seed(seed)
    return BaseModel(GPTModel(config), config, {"source": "random", "seed": seed, "note": note})


def load_hf_checkpoint(path: Path) -> GPTModel:
    """Return a GPTModel with the weights of a Hugging Face GPT-2 folder or model.safetensors."""
    path = Path(path)
    file = path / "model.safetensors" if path.is_dir() else path
    try:
        tensors = load_file(file)
    except (FileNotFoundError, SafetensorError, OSError) as exc:
        raise DataError(f"{file}: cannot read it as a safetensors file ({exc})") from None
    tensors = {key.removeprefix("transformer."): value for key, value in tensors.items()}
    config = _config_of(tensors, file.parent / "config.json")
    model = GPTModel(config)
    state = _to_state_dict(tensors, config["n_layers"], file)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise DataError(f"{file}: the weights do not fit GPT-2 ({exc})") from None
    return model


def _config_of(tensors: dict, config_file: Path) -> dict:
    """Work out the model configuration from config.json, else from the tensor shapes."""
    if "wte.weight" not in tensors or "wpe.weight" not in tensors:
        raise DataError(f"{config_file.parent}: no GPT-2 embeddings (wte, wpe) in the checkpoint")
    vocab_size, emb_dim = tensors["wte.weight"].shape
    blocks = {int(match.group(1)) for key in tensors if (match := re.match(r"h\.(\d+)\.", key))}
    hf = json.loads(config_file.read_text()) if config_file.is_file() else {}
    n_heads = hf.get("n_head", HEADS_BY_WIDTH.get(emb_dim))
    if n_heads is None:
        raise DataError(f"{config_file}: needed to tell the number of heads of width {emb_dim}")
    return model_config(
        "gpt2-small",
        vocab_size=vocab_size,
        context_length=tensors["wpe.weight"].shape[0],
        emb_dim=emb_dim,
        n_layers=hf.get("n_layer", max(blocks, default=-1) + 1),
        n_heads=n_heads,
    )


def _to_state_dict(tensors: dict, n_layers: int, file: Path) -> dict:
    """Rename and reshape Hugging Face's GPT-2 tensors into GPTModel's state dict.

    GPT-2's Conv1D layers store weights as (in, out), the transpose of nn.Linear's (out, in),
    and c_attn holds the query, key and value projections side by side.
    """
    tensors = {key: value for key, value in tensors.items() if not IGNORED_KEYS.search(key)}
    used = set()

    def take(key):
        if key not in tensors:
            raise DataError(f"{file}: the checkpoint has no tensor {key}")
        used.add(key)
        return tensors[key]

    state = {
        "tok_emb.weight": take("wte.weight"),
        "pos_emb.weight": take("wpe.weight"),
        "final_norm.scale": take("ln_f.weight"),
        "final_norm.shift": take("ln_f.bias"),
        "out_head.weight": tensors["wte.weight"],  # GPT-2 ties its output layer to wte
    }
    for b in range(n_layers):
        hf, ours = f"h.{b}.", f"trf_blocks.{b}."
        q, k, v = take(hf + "attn.c_attn.weight").T.chunk(3, dim=0)
        q_bias, k_bias, v_bias = take(hf + "attn.c_attn.bias").chunk(3)
        for name, weight, bias in (
            ("W_query", q, q_bias),
            ("W_key", k, k_bias),
            ("W_value", v, v_bias),
        ):
            state[f"{ours}att.{name}.weight"] = weight
            state[f"{ours}att.{name}.bias"] = bias
        for hf_name, our_name in (
            ("attn.c_proj", "att.out_proj"),
            ("mlp.c_fc", "ff.layers.0"),
            ("mlp.c_proj", "ff.layers.2"),
        ):
            state[f"{ours}{our_name}.weight"] = take(f"{hf}{hf_name}.weight").T
            state[f"{ours}{our_name}.bias"] = take(f"{hf}{hf_name}.bias")
        for hf_name, our_name in (("ln_1", "norm1"), ("ln_2", "norm2")):
            state[f"{ours}{our_name}.scale"] = take(f"{hf}{hf_name}.weight")
            state[f"{ours}{our_name}.shift"] = take(f"{hf}{hf_name}.bias")
    unused = sorted(set(tensors) - used)
    if unused:
        raise DataError(f"{file}: tensors that GPT-2 does not have: {', '.join(unused[:5])}")
    return {key: value.contiguous() for key, value in state.items()}
