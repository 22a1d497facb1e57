"""GPT-2's pretrained weights from Hugging Face's safetensors files, without TensorFlow."""

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from gptclassifier.errors import DataError, DownloadError, check_choice, strict_mode, warn_fallback
from gptclassifier.files import sha256_of
from gptclassifier.model.gpt import GPTModel, model_config
from gptclassifier.settings import GPT_SIZES, WEIGHT_CHOICES

WEIGHTS_FILE = "model.safetensors"


@dataclass(frozen=True)
class HubCheckpoint:
    """GPT-2's model.safetensors in a Hugging Face Hub repository, pinned to a commit."""

    repo: str
    revision: str
    sha256: str | None = None  # known for gpt2-small; the pinned commit guards the others

    def fetch_command(self) -> str:
        """Return the shell command that puts this file into the Hugging Face cache."""
        return f"hf download {self.repo} {WEIGHTS_FILE} --revision {self.revision}"


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
# Hugging Face's names for GPTModel's tensors. A block's Conv1D layers store their weights as
# (in, out), the transpose of nn.Linear's (out, in); c_attn holds W_query, W_key and W_value.
EMBEDDINGS_AND_FINAL_NORM = {
    "wte.weight": "tok_emb.weight",
    "wpe.weight": "pos_emb.weight",
    "ln_f.weight": "final_norm.scale",
    "ln_f.bias": "final_norm.shift",
}
BLOCK_NORMS = {"ln_1": "norm1", "ln_2": "norm2"}
BLOCK_CONV1DS = {
    "attn.c_proj": "att.out_proj",
    "mlp.c_fc": "ff.layers.0",
    "mlp.c_proj": "ff.layers.2",
}
ATTENTION_PROJECTIONS = ("W_query", "W_key", "W_value")
IGNORED_KEYS = re.compile(r"(^lm_head\.weight$)|(\.attn\.(masked_)?bias$)")


@dataclass(frozen=True)
class BaseModel:
    """A GPT model and where its weights came from."""

    model: GPTModel
    config: dict
    provenance: dict


def hub_checkpoint(name: str) -> HubCheckpoint:
    """Return the pinned checkpoint of a GPT-2 size, or refuse a size without published weights."""
    if name not in HUB_CHECKPOINTS:
        raise DataError(
            f"no pretrained weights for {name!r}: choose one of {', '.join(HUB_CHECKPOINTS)}"
        )
    return HUB_CHECKPOINTS[name]


def cached_gpt2(name: str) -> Path | None:
    """Return the cached model.safetensors of a GPT-2 size in the Hugging Face cache, or None."""
    return _cached(HUB_CHECKPOINTS[name]) if name in HUB_CHECKPOINTS else None


def download_gpt2(name: str = "gpt2-small") -> Path:
    """Return GPT-2's model.safetensors from the Hugging Face cache, downloading it once.

    The Hub's own client fetches it, so $HF_HOME, $HF_HUB_CACHE, $HF_ENDPOINT and
    $HF_HUB_OFFLINE apply, and a copy that `transformers` downloaded is used as it is. A file
    whose SHA-256 is known and differs is fetched again once, then refused.
    """
    checkpoint = hub_checkpoint(name)
    path = _cached(checkpoint) or _from_hub(checkpoint)
    if checkpoint.sha256 is None:
        return path
    found = sha256_of(path)  # half a second for GPT-2 small: hashed once
    if found == checkpoint.sha256:
        return path
    damaged = f"{path} is damaged (SHA-256 {found}, expected {checkpoint.sha256})"
    try:
        path = _from_hub(checkpoint, force=True)
    except DownloadError as exc:
        raise DownloadError(f"{damaged} and {exc}") from None
    if sha256_of(path) != checkpoint.sha256:
        raise DownloadError(f"{damaged}, and so is the file downloaded again: refusing it")
    return path


def _cached(checkpoint: HubCheckpoint) -> Path | None:
    """Return a checkpoint's file in the Hugging Face cache, or None."""
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(checkpoint.repo, WEIGHTS_FILE, revision=checkpoint.revision)
    return Path(path) if isinstance(path, str) else None


def _from_hub(checkpoint: HubCheckpoint, force: bool = False) -> Path:
    """Fetch a checkpoint's file into the Hugging Face cache with the Hub's client."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_download, hf_hub_url
    from huggingface_hub.errors import HTTPError  # its transport's base: every network failure

    repo, revision = checkpoint.repo, checkpoint.revision
    where = f"{repo} {WEIGHTS_FILE} at {revision[:7]}"
    if force and constants.is_offline_mode():
        raise DownloadError(f"cannot fetch {where} again: HF_HUB_OFFLINE is set")
    try:
        if not constants.is_offline_mode():
            # One quick request first: without a network the Hub's client retries for 24 s.
            get_hf_file_metadata(hf_hub_url(repo, WEIGHTS_FILE, revision=revision))
        return Path(hf_hub_download(repo, WEIGHTS_FILE, revision=revision, force_download=force))
    except (OSError, HTTPError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DownloadError(f"cannot fetch {where}: {reason}") from None


def base_digest(model: GPTModel) -> str:
    """Return the SHA-256 of a base model's weights, all but the output layer, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if not name.startswith("out_head."):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy())
    return digest.hexdigest()


def rebuild_base_model(name: str, provenance: dict) -> GPTModel:
    """Return the base model that a run's provenance names, never a fallback.

    Pretrained weights come from the Hugging Face cache (or the Hub); random ones are rebuilt
    from their seed, as load_base_model made them. Raises DownloadError when the pinned file
    cannot be had.
    """
    if provenance["source"] == "pretrained":
        return load_hf_checkpoint(download_gpt2(name))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(provenance["seed"])
        return GPTModel(model_config(name))


def load_base_model(name: str, seed: int = 123, weights: str = "pretrained") -> BaseModel:
    """Return the pretrained model, or (offline) seeded random weights with a loud warning.

    Sizes without published weights (the tiny `gpt2-nano`) start from random weights quietly,
    as does `weights="random"`; $GPTCLASSIFIER_STRICT turns a failed download into an error
    instead of a fallback.
    """
    check_choice("weights", weights, WEIGHT_CHOICES)
    config = model_config(name)
    if weights == "random":
        note = "random weights were chosen"
    elif name in HUB_CHECKPOINTS:
        checkpoint = HUB_CHECKPOINTS[name]
        try:
            path = download_gpt2(name)
            model = load_hf_checkpoint(path)
            note = f"{checkpoint.repo} at {checkpoint.revision[:7]}"
            provenance = {"source": "pretrained", "note": note, "path": str(path)}
            provenance |= asdict(checkpoint) | {"digest": base_digest(model)}
            return BaseModel(model, config, provenance)
        except DownloadError as exc:
            remedy = (
                f"run `{checkpoint.fetch_command()}` where there is a network and copy the "
                "Hugging Face cache here (see $HF_HOME), or set $HF_ENDPOINT to a mirror."
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
    model = GPTModel(config)
    provenance = {"source": "random", "seed": seed, "note": note, "digest": base_digest(model)}
    return BaseModel(model, config, provenance)


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
    """Rename and reshape Hugging Face's GPT-2 tensors into GPTModel's state dict."""
    tensors = {key: value for key, value in tensors.items() if not IGNORED_KEYS.search(key)}
    used = set()

    def take(key):
        if key not in tensors:
            raise DataError(f"{file}: the checkpoint has no tensor {key}")
        used.add(key)
        return tensors[key]

    state = {ours: take(hf) for hf, ours in EMBEDDINGS_AND_FINAL_NORM.items()}
    state["out_head.weight"] = tensors["wte.weight"]  # GPT-2 ties its output layer to wte
    for b in range(n_layers):
        hf, ours = f"h.{b}.", f"trf_blocks.{b}."
        weights = take(hf + "attn.c_attn.weight").T.chunk(3, dim=0)
        biases = take(hf + "attn.c_attn.bias").chunk(3)
        for name, weight, bias in zip(ATTENTION_PROJECTIONS, weights, biases, strict=True):
            state[f"{ours}att.{name}.weight"] = weight
            state[f"{ours}att.{name}.bias"] = bias
        for hf_name, our_name in BLOCK_CONV1DS.items():
            state[f"{ours}{our_name}.weight"] = take(f"{hf}{hf_name}.weight").T
            state[f"{ours}{our_name}.bias"] = take(f"{hf}{hf_name}.bias")
        for hf_name, our_name in BLOCK_NORMS.items():
            state[f"{ours}{our_name}.scale"] = take(f"{hf}{hf_name}.weight")
            state[f"{ours}{our_name}.shift"] = take(f"{hf}{hf_name}.bias")
    unused = sorted(set(tensors) - used)
    if unused:
        raise DataError(f"{file}: tensors that GPT-2 does not have: {', '.join(unused[:5])}")
    return {key: value.contiguous() for key, value in state.items()}
