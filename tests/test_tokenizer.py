"""GPT-2's tokenizer: known token ids, fully offline, identical to tiktoken's, downloaded safely."""

import hashlib
import inspect
import re
import shutil

import pytest
import tiktoken
from tiktoken_ext import openai_public

from gptclassifier.errors import DownloadError, FallbackWarning
from gptclassifier.model.tokenizer import (
    PACKAGED_VOCABULARY,
    PAD_TOKEN_ID,
    VOCABULARY_URL,
    build_tokenizer,
    download_vocabulary,
    get_tokenizer,
    vocabulary_files,
)

# The addresses tiktoken downloads GPT-2's vocabulary from (tiktoken_ext/openai_public.py).
TIKTOKEN_URLS = {
    "vocab.bpe": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
    "encoder.json": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
}
SAMPLES = [
    "Hello, world",
    "Do you have time for a coffee?",
    "You are a winner you have been specially selected to receive $1000 cash or a $2000 award.",
    "Café crème for 2,50 € 😊 — naïve résumé",
    "  spaces\tand\ttabs\n\nnew lines  ",
]


@pytest.fixture(autouse=True)
def fresh_tokenizer_state(tmp_path, monkeypatch):
    """Give tiktoken an empty cache folder and forget tokenizers built by earlier tests."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken"))
    get_tokenizer.cache_clear()
    tiktoken.registry.ENCODINGS.pop("gpt2", None)
    yield
    get_tokenizer.cache_clear()
    tiktoken.registry.ENCODINGS.pop("gpt2", None)


def seed_tiktoken_cache(cache):
    """Put the packaged vocabulary where tiktoken looks for its own downloads."""
    cache.mkdir(parents=True, exist_ok=True)
    for name, url in TIKTOKEN_URLS.items():
        key = hashlib.sha1(url.encode()).hexdigest()
        shutil.copyfile(PACKAGED_VOCABULARY / name, cache / key)


def test_known_token_ids_without_any_network():
    tokenizer = get_tokenizer()
    assert tokenizer.n_vocab == 50257
    assert tokenizer.encode("Hello, world") == [15496, 11, 995]
    assert tokenizer.encode("<|endoftext|>", allowed_special={"<|endoftext|>"}) == [PAD_TOKEN_ID]


def test_round_trip_of_unicode_text():
    tokenizer = get_tokenizer()
    for text in SAMPLES:
        assert tokenizer.decode(tokenizer.encode(text)) == text


def test_offline_build_equals_tiktokens_own_encoding(tmp_path):
    seed_tiktoken_cache(tmp_path / "tiktoken")
    reference = tiktoken.get_encoding("gpt2")
    ours = build_tokenizer(*vocabulary_files())
    assert ours.n_vocab == reference.n_vocab
    assert ours.special_tokens_set == reference.special_tokens_set
    every_id = range(reference.n_vocab)
    assert [ours.decode_single_token_bytes(i) for i in every_id] == [
        reference.decode_single_token_bytes(i) for i in every_id
    ]
    for text in SAMPLES:
        assert ours.encode(text) == reference.encode(text)


def packaged_vocabulary() -> dict[str, bytes]:
    """Return the bytes of GPT-2's two vocabulary files, as the package ships them."""
    return {name: (PACKAGED_VOCABULARY / name).read_bytes() for name in TIKTOKEN_URLS}


def serve_vocabulary(file_server) -> str:
    """Serve the two vocabulary files; return the folder address to download them from."""
    for name, content in packaged_vocabulary().items():
        file_server.serve(f"/gpt-2/{name}", content)
    return file_server.url("/gpt-2/")


def test_the_packaged_vocabulary_has_the_hashes_tiktoken_checks():
    source = inspect.getsource(openai_public.gpt2)
    for name, content in packaged_vocabulary().items():
        assert f'"{hashlib.sha256(content).hexdigest()}"' in source, name
    assert vocabulary_files() == (
        PACKAGED_VOCABULARY / "vocab.bpe",
        PACKAGED_VOCABULARY / "encoder.json",
    )  # read in place, with no FallbackWarning (an error in the tests)


def test_the_packaged_vocabulary_names_its_origin_license_and_hashes():
    notice = (PACKAGED_VOCABULARY / "LICENSE").read_text()
    assert "https://github.com/openai/gpt-2" in notice
    assert "Modified MIT License" in notice and "Copyright (c) 2019 OpenAI" in notice
    for name, content in packaged_vocabulary().items():
        assert re.search(
            rf"{re.escape(name)}\s+SHA-256 {hashlib.sha256(content).hexdigest()}", notice
        )


def copy_of_the_packaged_vocabulary(folder):
    """Copy the packaged vocabulary folder; return the copy."""
    shutil.copytree(PACKAGED_VOCABULARY, folder)
    return folder


@pytest.mark.parametrize("name", ["vocab.bpe", "encoder.json"])
def test_a_damaged_packaged_file_falls_back_to_a_verified_download(
    file_server, tmp_path, monkeypatch, name
):
    packaged = copy_of_the_packaged_vocabulary(tmp_path / "packaged")
    with open(packaged / name, "ab") as file:
        file.write(b"\n")
    monkeypatch.setattr(
        "gptclassifier.model.tokenizer.VOCABULARY_URL", serve_vocabulary(file_server)
    )
    with pytest.warns(FallbackWarning, match=rf"{name} is missing or does not have the hash"):
        vocab, encoder = vocabulary_files(packaged)
    cache = tmp_path / "cache" / "gpt2-tokenizer"
    assert (vocab, encoder) == (cache / "vocab.bpe", cache / "encoder.json")
    assert {path.name: path.read_bytes() for path in cache.iterdir()} == packaged_vocabulary()
    assert file_server.requests == {"/gpt-2/vocab.bpe": 1, "/gpt-2/encoder.json": 1}
    assert build_tokenizer(vocab, encoder).encode("Hello, world") == [15496, 11, 995]


def test_without_packaged_files_the_tokenizer_is_built_from_a_download(
    file_server, tmp_path, monkeypatch
):
    absent = tmp_path / "absent"
    monkeypatch.setattr(
        "gptclassifier.model.tokenizer.vocabulary_files", lambda: vocabulary_files(absent)
    )
    monkeypatch.setattr(
        "gptclassifier.model.tokenizer.VOCABULARY_URL", serve_vocabulary(file_server)
    )
    with pytest.warns(FallbackWarning, match="downloading the vocabulary instead"):
        tokenizer = get_tokenizer()
    assert tokenizer.encode("Hello, world") == [15496, 11, 995]
    folder = tmp_path / "cache" / "gpt2-tokenizer"
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == packaged_vocabulary()


def test_a_damaged_packaged_file_without_a_network_is_a_download_error(tmp_path):
    packaged = copy_of_the_packaged_vocabulary(tmp_path / "packaged")
    (packaged / "encoder.json").write_bytes(b"{}")
    with pytest.warns(FallbackWarning), pytest.raises(DownloadError, match="download vocab.bpe"):
        vocabulary_files(packaged)


def test_the_vocabulary_is_downloaded_once_and_a_damaged_copy_again(file_server, tmp_path):
    url = serve_vocabulary(file_server)
    vocab, encoder = download_vocabulary(url)
    download_vocabulary(url)
    assert file_server.requests == {"/gpt-2/vocab.bpe": 1, "/gpt-2/encoder.json": 1}
    encoder.write_bytes(b"{}")
    assert download_vocabulary(url) == (vocab, encoder)
    assert file_server.requests["/gpt-2/encoder.json"] == 2
    assert build_tokenizer(vocab, encoder).encode("Hello, world") == [15496, 11, 995]


def test_wrong_vocabulary_bytes_are_refused_and_not_kept(file_server, tmp_path):
    url = serve_vocabulary(file_server)
    file_server.serve("/gpt-2/vocab.bpe", b"#version: 0.2\nnot GPT-2's merges\n")
    with pytest.raises(DownloadError, match="vocab.bpe.*SHA-256"):
        download_vocabulary(url)
    assert not (tmp_path / "cache" / "gpt2-tokenizer" / "vocab.bpe").exists()


def test_tampered_vocabulary_files_are_refused(tmp_path):
    packaged = copy_of_the_packaged_vocabulary(tmp_path / "packaged")
    with open(packaged / "vocab.bpe", "a") as vocab:
        vocab.write("Ġx Ġy\n")
    with pytest.raises(ValueError, match="[Hh]ash"):
        build_tokenizer(packaged / "vocab.bpe", packaged / "encoder.json")


def test_the_vocabulary_address_is_tiktokens():
    source = inspect.getsource(openai_public.gpt2)
    for name in ("vocab.bpe", "encoder.json"):
        assert f'"{VOCABULARY_URL}{name}"' in source
        assert TIKTOKEN_URLS[name] == VOCABULARY_URL + name
