"""Loading GPT-2 checkpoints: parity with Hugging Face's GPT-2, errors, downloads, fallbacks."""

import hashlib
import json
import re
import shutil
import warnings
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from gptclassifier import weights
from gptclassifier.errors import DataError, DownloadError, FallbackWarning
from gptclassifier.model import GPTModel, generate_text_simple, model_config
from gptclassifier.weights import (
    HUB_CHECKPOINTS,
    HubCheckpoint,
    download_gpt2,
    load_base_model,
    load_hf_checkpoint,
    load_pretrained_gpt2,
)

WIDTH, HEADS, LAYERS, POSITIONS = 64, 4, 2, 64  # 64 is no GPT-2 width, so it needs config.json
REPO, REVISION = "tiny-org/tiny-gpt2", "0123456789abcdef0123456789abcdef01234567"
SEQUENCES = [
    [15496, 11, 995],  # "Hello, world"
    [464, 3290, 318, 257, 1332, 13, 50256, 40, 1101],
    list(range(1000, 1000 + 17 * POSITIONS, 17)),  # all 64 positions
]
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory):
    """Return a seeded random Hugging Face GPT-2 (eval mode) and the folder it was saved to."""
    config = transformers.GPT2Config(
        vocab_size=50257,
        n_positions=POSITIONS,
        n_embd=WIDTH,
        n_layer=LAYERS,
        n_head=HEADS,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    torch.manual_seed(1234)
    model = transformers.GPT2LMHeadModel(config).eval()
    # Fresh biases are 0 and LayerNorm weights 1; perturb every tensor so that a swapped bias,
    # a missed transpose or a mixed-up q/k/v chunk shows in the logits.
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    folder = tmp_path_factory.mktemp("hf-gpt2")
    model.save_pretrained(folder)
    return model, folder


def hf_logits(hf_model, tokens: list[int]) -> torch.Tensor:
    """Return the Hugging Face model's logits for one sequence."""
    with torch.no_grad():
        return hf_model(torch.tensor([tokens])).logits


def our_logits(model: GPTModel, tokens: list[int]) -> torch.Tensor:
    """Return GPTModel's logits for one sequence."""
    model.eval()
    with torch.no_grad():
        return model(torch.tensor([tokens]))


def max_logit_difference(model: GPTModel, hf_model) -> float:
    """Return the largest absolute logit difference over SEQUENCES."""
    return max(
        (our_logits(model, tokens) - hf_logits(hf_model, tokens)).abs().max().item()
        for tokens in SEQUENCES
    )


def hf_greedy(hf_model, tokens: list[int], steps: int) -> list[int]:
    """Greedy continuation by hand: argmax over the Hugging Face model's last logits."""
    tokens = list(tokens)
    for _ in range(steps):
        tokens.append(int(hf_logits(hf_model, tokens)[0, -1].argmax()))
    return tokens


def checkpoint_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Return the tensors of a saved model.safetensors."""
    return load_file(folder / "model.safetensors")


def edited_checkpoint(folder: Path, dest: Path, drop=(), put=None) -> Path:
    """Write a copy of a checkpoint without the `drop` tensors and with the `put` ones."""
    tensors = {key: value for key, value in checkpoint_tensors(folder).items() if key not in drop}
    return write_checkpoint(dest, tensors | (put or {}), config_from=folder)


def write_checkpoint(folder: Path, tensors: dict, config_from: Path | None = None) -> Path:
    """Write tensors as folder/model.safetensors, with a copy of config.json if given."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {key: value.contiguous() for key, value in tensors.items()}, folder / "model.safetensors"
    )
    if config_from is not None:
        shutil.copy(config_from / "config.json", folder / "config.json")
    return folder


def sha256_bytes(data: bytes) -> str:
    """Return the SHA-256 of bytes as hex."""
    return hashlib.sha256(data).hexdigest()


def cached_files(cache: Path) -> list[Path]:
    """Return every file under the cache folder."""
    return sorted(path for path in cache.rglob("*") if path.is_file()) if cache.exists() else []


# ---------------------------------------------------------------- parity with transformers


def test_hf_checkpoint_layout_is_what_the_loader_expects(hf_checkpoint):
    _, folder = hf_checkpoint
    keys = set(checkpoint_tensors(folder))
    assert "transformer.wte.weight" in keys and "transformer.h.1.attn.c_attn.weight" in keys
    assert json.loads((folder / "config.json").read_text())["n_head"] == HEADS


def test_loaded_hf_checkpoint_gives_the_same_logits_as_transformers(hf_checkpoint):
    hf_model, folder = hf_checkpoint
    model = load_hf_checkpoint(folder)
    assert isinstance(model, GPTModel)
    assert model.pos_emb.num_embeddings == POSITIONS
    assert len(model.trf_blocks) == LAYERS
    assert model.trf_blocks[0].att.num_heads == HEADS
    difference = max_logit_difference(model, hf_model)
    print(f"max abs logit difference against transformers: {difference:.3e}")
    assert difference < TOLERANCE
    # The logits are far from trivial, so the tolerance is meaningful.
    assert hf_logits(hf_model, SEQUENCES[1]).std() > 0.1


def test_loaded_hf_checkpoint_continues_text_greedily_like_transformers(hf_checkpoint):
    hf_model, folder = hf_checkpoint
    model = load_hf_checkpoint(folder).eval()
    prompt = SEQUENCES[1]
    ours = generate_text_simple(model, torch.tensor([prompt]), 15, context_size=POSITIONS)
    assert ours[0].tolist() == hf_greedy(hf_model, prompt, 15)


def test_model_safetensors_file_path_loads_like_the_folder(hf_checkpoint):
    hf_model, folder = hf_checkpoint
    model = load_hf_checkpoint(folder / "model.safetensors")
    assert max_logit_difference(model, hf_model) < TOLERANCE
    model = load_hf_checkpoint(str(folder))  # a string path too
    assert max_logit_difference(model, hf_model) < TOLERANCE


def openai_layout(tensors: dict) -> dict:
    """Rename to the official OpenAI layout: no `transformer.` prefix, plus the old mask buffers."""
    renamed = {key.removeprefix("transformer."): value for key, value in tensors.items()}
    mask = torch.tril(torch.ones(POSITIONS, POSITIONS)).view(1, 1, POSITIONS, POSITIONS)
    for block in range(LAYERS):
        renamed[f"h.{block}.attn.bias"] = mask.clone()
        renamed[f"h.{block}.attn.masked_bias"] = torch.tensor(-1e4)
    return renamed


def test_openai_layout_without_prefix_and_with_mask_buffers_loads(hf_checkpoint, tmp_path):
    hf_model, folder = hf_checkpoint
    tensors = openai_layout(checkpoint_tensors(folder))
    assert not any(key.startswith("transformer.") for key in tensors)
    written = write_checkpoint(tmp_path / "openai", tensors, config_from=folder)
    assert max_logit_difference(load_hf_checkpoint(written), hf_model) < TOLERANCE


def test_lm_head_copy_of_the_embeddings_is_accepted(hf_checkpoint, tmp_path):
    hf_model, folder = hf_checkpoint
    tensors = checkpoint_tensors(folder)
    tensors["lm_head.weight"] = tensors["transformer.wte.weight"].clone()
    written = write_checkpoint(tmp_path / "with-head", tensors, config_from=folder)
    assert max_logit_difference(load_hf_checkpoint(written), hf_model) < TOLERANCE


def test_without_config_json_the_heads_come_from_the_width_table(
    hf_checkpoint, tmp_path, monkeypatch
):
    hf_model, folder = hf_checkpoint
    written = write_checkpoint(tmp_path / "no-config", checkpoint_tensors(folder))
    assert not (written / "config.json").exists()
    monkeypatch.setattr(weights, "HEADS_BY_WIDTH", {**weights.HEADS_BY_WIDTH, WIDTH: HEADS})
    model = load_hf_checkpoint(written)
    assert model.trf_blocks[0].att.num_heads == HEADS
    assert max_logit_difference(model, hf_model) < TOLERANCE


def test_config_json_number_of_heads_wins_over_the_width_table(hf_checkpoint, monkeypatch):
    hf_model, folder = hf_checkpoint
    monkeypatch.setattr(weights, "HEADS_BY_WIDTH", {**weights.HEADS_BY_WIDTH, WIDTH: 8})
    model = load_hf_checkpoint(folder)
    assert model.trf_blocks[0].att.num_heads == HEADS
    assert max_logit_difference(model, hf_model) < TOLERANCE


def test_without_config_json_an_unknown_width_needs_config_json(hf_checkpoint, tmp_path):
    _, folder = hf_checkpoint
    assert WIDTH not in weights.HEADS_BY_WIDTH
    written = write_checkpoint(tmp_path / "no-config", checkpoint_tensors(folder))
    with pytest.raises(DataError, match=r"config\.json.*number of heads.*64"):
        load_hf_checkpoint(written)


def test_width_table_holds_every_gpt2_size():
    assert {768: 12, 1024: 16, 1280: 20, 1600: 25}.items() <= weights.HEADS_BY_WIDTH.items()


# ---------------------------------------------------------------- errors


def test_missing_file_raises_data_error(tmp_path):
    with pytest.raises(DataError, match="cannot read it as a safetensors file"):
        load_hf_checkpoint(tmp_path / "absent.safetensors")
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "model.safetensors"))):
        load_hf_checkpoint(tmp_path)  # a folder without model.safetensors


@pytest.mark.parametrize(
    "content", [b"<!DOCTYPE html><html>Sign in to continue</html>", b"", b"\x00\x01"]
)
def test_file_that_is_not_safetensors_raises_data_error(tmp_path, content):
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    with pytest.raises(DataError, match="cannot read it as a safetensors file"):
        load_hf_checkpoint(path)


@pytest.mark.parametrize(
    "missing", ["h.1.mlp.c_fc.bias", "h.0.attn.c_attn.weight", "ln_f.weight", "h.1.ln_2.bias"]
)
def test_checkpoint_missing_a_tensor_names_it(hf_checkpoint, tmp_path, missing):
    _, folder = hf_checkpoint
    written = edited_checkpoint(folder, tmp_path / "missing", drop={f"transformer.{missing}"})
    with pytest.raises(DataError, match=rf"has no tensor {re.escape(missing)}$"):
        load_hf_checkpoint(written)


def test_checkpoint_missing_a_whole_block_raises_data_error(hf_checkpoint, tmp_path):
    # config.json says n_layer=2: a file without any h.1.* tensor is truncated, and must not
    # load silently as a one-block model.
    _, folder = hf_checkpoint
    block_1 = {key for key in checkpoint_tensors(folder) if ".h.1." in key}
    written = edited_checkpoint(folder, tmp_path / "no-block-1", drop=block_1)
    assert json.loads((written / "config.json").read_text())["n_layer"] == LAYERS
    with pytest.raises(DataError, match=r"h\.1\.|layer"):
        load_hf_checkpoint(written)


def test_checkpoint_without_embeddings_raises_data_error(hf_checkpoint, tmp_path):
    _, folder = hf_checkpoint
    written = edited_checkpoint(folder, tmp_path / "no-wpe", drop={"transformer.wpe.weight"})
    with pytest.raises(DataError, match="no GPT-2 embeddings"):
        load_hf_checkpoint(written)


def test_checkpoint_with_an_extra_unknown_tensor_raises_data_error(hf_checkpoint, tmp_path):
    _, folder = hf_checkpoint
    extra = {"transformer.h.0.attn.rotary.weight": torch.zeros(3)}
    written = edited_checkpoint(folder, tmp_path / "extra", put=extra)
    with pytest.raises(DataError, match=r"tensors that GPT-2 does not have: h\.0\.attn\.rotary"):
        load_hf_checkpoint(written)


def test_checkpoint_with_a_wrongly_shaped_tensor_raises_data_error(hf_checkpoint, tmp_path):
    _, folder = hf_checkpoint
    wrong = {"transformer.h.1.mlp.c_fc.weight": torch.zeros(WIDTH, 3 * WIDTH)}
    written = edited_checkpoint(folder, tmp_path / "bad-shape", put=wrong)
    with pytest.raises(DataError, match="do not fit GPT-2"):
        load_hf_checkpoint(written)


# ---------------------------------------------------------------- downloads from a local hub


@pytest.fixture
def local_hub(hf_checkpoint, file_server, monkeypatch):
    """Point gpt2-small at the tiny checkpoint on the local server; return the server's paths."""
    hf_model, folder = hf_checkpoint
    body = (folder / "model.safetensors").read_bytes()
    checkpoint = HubCheckpoint(REPO, REVISION, sha256_bytes(body), hub=file_server.base_url)
    monkeypatch.setattr(weights, "HUB_CHECKPOINTS", {"gpt2-small": checkpoint})
    # The downloaded file comes without config.json: the heads come from the width table.
    monkeypatch.setattr(weights, "HEADS_BY_WIDTH", {**weights.HEADS_BY_WIDTH, WIDTH: HEADS})
    pinned = f"/{REPO}/resolve/{REVISION}/model.safetensors"
    main = f"/{REPO}/resolve/main/model.safetensors"
    assert checkpoint.urls() == [file_server.url(pinned), file_server.url(main)]
    return {"server": file_server, "body": body, "pinned": pinned, "main": main, "hf": hf_model}


def test_load_pretrained_gpt2_downloads_the_pinned_file_and_loads_it(local_hub, tmp_path):
    server = local_hub["server"]
    server.serve(local_hub["pinned"], local_hub["body"])
    server.serve(local_hub["main"], b"the main branch must not be needed")
    model = load_pretrained_gpt2("gpt2-small", progress=False)
    assert max_logit_difference(model, local_hub["hf"]) < TOLERANCE
    assert server.requests == {local_hub["pinned"]: 1}
    dest = tmp_path / "cache" / "gpt2" / "gpt2-small" / "model.safetensors"
    assert dest.read_bytes() == local_hub["body"]
    assert cached_files(tmp_path / "cache") == [dest]


def test_download_falls_back_to_main_when_the_pinned_revision_is_missing(local_hub, tmp_path):
    server = local_hub["server"]
    server.serve(local_hub["main"], local_hub["body"])  # the pinned address answers 404
    model = load_pretrained_gpt2("gpt2-small", progress=False)
    assert max_logit_difference(model, local_hub["hf"]) < TOLERANCE
    assert server.requests == {local_hub["pinned"]: 1, local_hub["main"]: 1}


def test_download_with_a_wrong_sha256_fails_and_leaves_no_file(local_hub, tmp_path):
    server = local_hub["server"]
    tampered = local_hub["body"][:-1] + bytes([local_hub["body"][-1] ^ 1])
    server.serve(local_hub["pinned"], tampered)
    server.serve(local_hub["main"], tampered)
    with pytest.raises(DownloadError, match="SHA-256"):
        download_gpt2("gpt2-small", progress=False)
    assert server.requests == {local_hub["pinned"]: 1, local_hub["main"]: 1}
    assert cached_files(tmp_path / "cache") == []


def test_second_download_uses_the_cache(local_hub):
    server = local_hub["server"]
    server.serve(local_hub["pinned"], local_hub["body"])
    first = download_gpt2("gpt2-small", progress=False)
    second = download_gpt2("gpt2-small", progress=False)
    assert first == second and first.read_bytes() == local_hub["body"]
    assert server.requests == {local_hub["pinned"]: 1}
    load_pretrained_gpt2("gpt2-small", progress=False)
    assert server.requests == {local_hub["pinned"]: 1}


def test_corrupt_cached_file_is_downloaded_again(local_hub, tmp_path):
    server = local_hub["server"]
    server.serve(local_hub["pinned"], local_hub["body"])
    dest = tmp_path / "cache" / "gpt2" / "gpt2-small" / "model.safetensors"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"half a download")
    assert download_gpt2("gpt2-small", progress=False) == dest
    assert dest.read_bytes() == local_hub["body"]
    assert server.requests == {local_hub["pinned"]: 1}


def test_download_gpt2_of_a_size_without_weights_raises_data_error():
    with pytest.raises(DataError, match="no pretrained weights for 'gpt2-nano'"):
        download_gpt2("gpt2-nano")


# ---------------------------------------------------------------- load_base_model offline


def test_load_base_model_offline_falls_back_to_seeded_random_weights_loudly():
    with pytest.warns(FallbackWarning, match="RANDOM WEIGHTS") as record:
        first = load_base_model("gpt2-small")
    message = str(record[0].message)
    assert "GPTCLASSIFIER_STRICT" in message
    assert HUB_CHECKPOINTS["gpt2-small"].urls()[0] in message
    assert first.provenance["source"] == "random"
    assert first.provenance["seed"] == 123
    assert first.provenance["note"].startswith("fallback:")
    assert first.config == model_config("gpt2-small")
    assert first.model.tok_emb.weight.shape == (50257, 768)
    with pytest.warns(FallbackWarning, match="RANDOM WEIGHTS"):
        second = load_base_model("gpt2-small")
    first_state, second_state = first.model.state_dict(), second.model.state_dict()
    assert first_state.keys() == second_state.keys()
    assert all(torch.equal(first_state[key], second_state[key]) for key in first_state)


def test_load_base_model_offline_in_strict_mode_raises_download_error(monkeypatch):
    monkeypatch.setenv("GPTCLASSIFIER_STRICT", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DownloadError, match="model.safetensors"):
            load_base_model("gpt2-small")


def test_load_base_model_nano_uses_random_weights_without_any_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        first = load_base_model("gpt2-nano", seed=7)
        again = load_base_model("gpt2-nano", seed=7)
        other = load_base_model("gpt2-nano", seed=8)
    assert first.provenance == {
        "source": "random",
        "seed": 7,
        "note": "gpt2-nano has no pretrained weights",
    }
    assert first.config == model_config("gpt2-nano")
    assert len(first.model.trf_blocks) == 3
    assert torch.equal(first.model.tok_emb.weight, again.model.tok_emb.weight)
    assert torch.equal(first.model.out_head.weight, again.model.out_head.weight)
    assert not torch.equal(first.model.tok_emb.weight, other.model.tok_emb.weight)


# ---------------------------------------------------------------- the pinned checkpoints


def test_hub_checkpoints_are_pinned_to_commits():
    assert set(HUB_CHECKPOINTS) == {"gpt2-small", "gpt2-medium", "gpt2-large", "gpt2-xl"}
    for name, checkpoint in HUB_CHECKPOINTS.items():
        assert re.fullmatch(r"[0-9a-f]{40}", checkpoint.revision), name
        assert checkpoint.repo == f"openai-community/{name.replace('gpt2-small', 'gpt2')}"
        assert checkpoint.hub == "https://huggingface.co"
        assert checkpoint.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", checkpoint.sha256)
    assert (
        HUB_CHECKPOINTS["gpt2-small"].sha256
        == "248dfc3911869ec493c76e65bf2fcf7f615828b0254c12b473182f0f81d3a707"
    )


def test_hub_checkpoint_urls_give_the_pinned_address_then_main():
    small = HUB_CHECKPOINTS["gpt2-small"]
    assert small.urls() == [
        "https://huggingface.co/openai-community/gpt2/resolve/"
        "607a30d783dfa663caf39e06633721c8d4cfcd7e/model.safetensors",
        "https://huggingface.co/openai-community/gpt2/resolve/main/model.safetensors",
    ]
    local = HubCheckpoint("a/b", "c" * 40, hub="http://127.0.0.1:9")
    assert local.urls() == [
        f"http://127.0.0.1:9/a/b/resolve/{'c' * 40}/model.safetensors",
        "http://127.0.0.1:9/a/b/resolve/main/model.safetensors",
    ]
