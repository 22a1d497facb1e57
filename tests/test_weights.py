"""Loading GPT-2 checkpoints: parity with Hugging Face's GPT-2, errors, downloads, fallbacks."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from gptclassifier.errors import ConfigError, DataError, DownloadError, FallbackWarning
from gptclassifier.model import weights
from gptclassifier.model.gpt import GPTModel, generate_text_simple, model_config
from gptclassifier.model.weights import (
    HUB_CHECKPOINTS,
    base_digest,
    download_gpt2,
    load_base_model,
    load_hf_checkpoint,
)

WIDTH, HEADS, LAYERS, POSITIONS = 40, 4, 2, 64  # 40 is no model's width: it needs config.json
REPO, REVISION = "tiny-org/tiny-gpt2", "0123456789abcdef0123456789abcdef01234567"
SEQUENCES = [
    [15496, 11, 995],  # "Hello, world"
    [464, 3290, 318, 257, 1332, 13, 50256, 40, 1101],
    list(range(1000, 1000 + 17 * POSITIONS, 17)),  # all 64 positions
]
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def hf_checkpoint(transformers, tmp_path_factory):
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
    with pytest.raises(DataError, match=r"config\.json.*number of heads.*40"):
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


# ---------------------------------------------------------------- through the Hugging Face client

PINNED = f"/{REPO}/resolve/{REVISION}/model.safetensors"
# Run in a fresh interpreter, so that the Hugging Face client reads the environment as a user's
# shell sets it; gpt2-small is pointed at the tiny checkpoint, with its SHA-256.
FETCH = """
import sys
from gptclassifier.model import weights
from gptclassifier.errors import DownloadError
weights.HUB_CHECKPOINTS["gpt2-small"] = weights.HubCheckpoint(*sys.argv[1:4])
try:
    print(weights.download_gpt2("gpt2-small"))
except DownloadError as exc:
    print("DownloadError:", exc)
"""


@pytest.fixture
def tiny_body(hf_checkpoint) -> bytes:
    """Return the bytes of the tiny checkpoint's model.safetensors."""
    return (hf_checkpoint[1] / "model.safetensors").read_bytes()


def serve_like_the_hub(server, body: bytes) -> None:
    """Serve `body` at the pinned address with the headers the Hub's client reads."""
    headers = {"X-Repo-Commit": REVISION, "ETag": f'"{sha256_bytes(body)}"'}
    server.serve(PINNED, body, headers=headers)


def fetch(hf_home: Path, sha256: str, **environment) -> str:
    """Run download_gpt2 in a fresh interpreter with $HF_HOME and more; return what it printed."""
    env = {**os.environ, "HF_HOME": str(hf_home), **environment}
    done = subprocess.run(
        [sys.executable, "-c", FETCH, REPO, REVISION, sha256],
        env=env, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return done.stdout.strip()


def hub_cache_file(hf_home: Path) -> Path:
    """Return where the Hugging Face cache keeps the tiny checkpoint at the pinned commit."""
    folder = "models--" + REPO.replace("/", "--")
    return hf_home / "hub" / folder / "snapshots" / REVISION / "model.safetensors"


def lay_out_hub_cache(hf_home: Path, body: bytes, etag: str | None = None) -> Path:
    """Put `body` in a Hugging Face cache as the Hub's client lays it out; return its path.

    The blob is named by the file's SHA-256 (the Hub's ETag of a large file), or by `etag`:
    the name of the intact file, for a copy damaged after it was downloaded.
    """
    snapshot = hub_cache_file(hf_home)
    blob = snapshot.parents[2] / "blobs" / (etag or sha256_bytes(body))
    blob.parent.mkdir(parents=True)
    blob.write_bytes(body)
    snapshot.parent.mkdir(parents=True)
    snapshot.symlink_to(Path("../../blobs") / blob.name)
    (snapshot.parents[2] / "refs").mkdir()
    (snapshot.parents[2] / "refs" / "main").write_text(REVISION)
    return snapshot


@pytest.mark.slow
def test_hf_endpoint_serves_the_download_into_hf_home(file_server, tiny_body, tmp_path):
    serve_like_the_hub(file_server, tiny_body)
    hf_home = tmp_path / "home"
    printed = fetch(hf_home, sha256_bytes(tiny_body), HF_ENDPOINT=file_server.base_url)
    assert printed == str(hub_cache_file(hf_home))
    assert hub_cache_file(hf_home).read_bytes() == tiny_body
    assert file_server.requests[PINNED] == 1
    again = fetch(hf_home, sha256_bytes(tiny_body), HF_ENDPOINT=file_server.base_url)
    assert again == printed and file_server.requests[PINNED] == 1  # the cache served it


def test_a_cache_laid_out_as_the_hub_does_is_found_offline(tiny_body, tmp_path, hf_checkpoint):
    hf_home = tmp_path / "home"
    laid_out = lay_out_hub_cache(hf_home, tiny_body)
    shutil.copy(hf_checkpoint[1] / "config.json", laid_out.parent)
    printed = fetch(hf_home, sha256_bytes(tiny_body), HF_HUB_OFFLINE="1")
    assert printed == str(laid_out)
    assert load_hf_checkpoint(Path(printed)).tok_emb.weight.shape == (50257, WIDTH)


def test_offline_without_a_cached_copy_fails_at_once(tiny_body, tmp_path):
    started = time.perf_counter()
    printed = fetch(tmp_path / "home", sha256_bytes(tiny_body), HF_HUB_OFFLINE="1")
    assert printed.startswith(f"DownloadError: cannot fetch {REPO} model.safetensors at 0123456")
    assert time.perf_counter() - started < 20


def test_a_damaged_cached_file_is_fetched_again(file_server, tiny_body, tmp_path):
    serve_like_the_hub(file_server, tiny_body)
    hf_home = tmp_path / "home"
    lay_out_hub_cache(hf_home, b"half a download", etag=sha256_bytes(tiny_body))
    printed = fetch(hf_home, sha256_bytes(tiny_body), HF_ENDPOINT=file_server.base_url)
    assert Path(printed).read_bytes() == tiny_body
    assert file_server.requests[PINNED] == 1


def test_a_damaged_cached_file_is_refused_offline(tiny_body, tmp_path):
    hf_home = tmp_path / "home"
    laid_out = lay_out_hub_cache(hf_home, b"half a download", etag=sha256_bytes(tiny_body))
    printed = fetch(hf_home, sha256_bytes(tiny_body), HF_HUB_OFFLINE="1")
    assert printed.startswith(f"DownloadError: {laid_out} is damaged (SHA-256 ")
    assert f"expected {sha256_bytes(tiny_body)}) and cannot fetch" in printed


def test_a_download_with_the_wrong_sha256_is_refused(file_server, tiny_body, tmp_path):
    tampered = tiny_body[:-1] + bytes([tiny_body[-1] ^ 1])
    serve_like_the_hub(file_server, tampered)
    printed = fetch(tmp_path / "home", sha256_bytes(tiny_body), HF_ENDPOINT=file_server.base_url)
    assert printed.startswith("DownloadError: ")
    assert printed.endswith("and so is the file downloaded again: refusing it")


@pytest.mark.slow
def test_the_cache_is_where_transformers_looks(file_server, tiny_body, tmp_path, hf_checkpoint):
    serve_like_the_hub(file_server, tiny_body)
    hf_home = tmp_path / "home"
    printed = fetch(hf_home, sha256_bytes(tiny_body), HF_ENDPOINT=file_server.base_url)
    shutil.copy(hf_checkpoint[1] / "config.json", Path(printed).parent)
    reader = (
        "import sys, transformers;"
        "m = transformers.GPT2LMHeadModel.from_pretrained(sys.argv[1], revision=sys.argv[2]);"
        "print(m.config.n_embd)"
    )
    done = subprocess.run(
        [sys.executable, "-c", reader, REPO, REVISION],
        env={**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"},
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert done.stdout.strip() == str(WIDTH)


def test_download_gpt2_of_a_size_without_weights_raises_data_error():
    with pytest.raises(DataError, match="no pretrained weights for 'gpt2-nano'"):
        download_gpt2("gpt2-nano")


# ---------------------------------------------------------------- load_base_model offline


@pytest.mark.slow
def test_load_base_model_offline_falls_back_to_seeded_random_weights_loudly():
    with pytest.warns(FallbackWarning, match="RANDOM WEIGHTS") as record:
        first = load_base_model("gpt2-small")
    message = str(record[0].message)
    assert "GPTCLASSIFIER_STRICT" in message
    assert HUB_CHECKPOINTS["gpt2-small"].fetch_command() in message
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


def test_random_weights_by_choice_fetch_nothing_and_say_so(monkeypatch):
    def no_download(name):
        raise AssertionError("random weights were chosen: nothing should be fetched")

    monkeypatch.setattr(weights, "download_gpt2", no_download)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        chosen = load_base_model("gpt2-small", seed=7, weights="random")
    assert chosen.provenance == {
        "source": "random",
        "seed": 7,
        "note": "random weights were chosen",
        "digest": base_digest(chosen.model),
    }
    assert chosen.model.tok_emb.weight.shape == (50257, 768)
    with pytest.raises(ConfigError, match="unknown weights 'none': choose one of pretrained"):
        load_base_model("gpt2-nano", weights="none")


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
        "digest": base_digest(again.model),
    }
    assert other.provenance["digest"] != first.provenance["digest"]
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
        assert checkpoint.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", checkpoint.sha256)
    assert (
        HUB_CHECKPOINTS["gpt2-small"].sha256
        == "248dfc3911869ec493c76e65bf2fcf7f615828b0254c12b473182f0f81d3a707"
    )


def test_hub_checkpoint_says_how_to_fetch_it():
    assert HUB_CHECKPOINTS["gpt2-small"].fetch_command() == (
        "hf download openai-community/gpt2 model.safetensors "
        "--revision 607a30d783dfa663caf39e06633721c8d4cfcd7e"
    )


def test_base_digest_sees_every_weight_but_the_output_layer():
    model = load_base_model("gpt2-nano", seed=0).model
    digest = base_digest(model)
    with torch.no_grad():
        model.out_head.weight.add_(1.0)  # replaced by the classification head anyway
        assert base_digest(model) == digest
        model.trf_blocks[1].att.W_key.weight[3, 5] += 1e-6
    assert base_digest(model) != digest
