"""GPT-2's byte-pair tokenizer (tiktoken's `gpt2` encoding), available with or without a network."""

import functools
import warnings
from pathlib import Path

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks
from tiktoken_ext.openai_public import r50k_pat_str

from gptclassifier.download import download_file
from gptclassifier.errors import FallbackWarning
from gptclassifier.files import cache_dir, sha256_of

END_OF_TEXT = "<|endoftext|>"
PAD_TOKEN_ID = 50256  # <|endoftext|>, which the chapter also uses for padding
VOCAB_SIZE = 50257

# The SHA-256 of GPT-2's two vocabulary files, the same that tiktoken checks.
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"


# Where tiktoken itself fetches them from.
VOCABULARY_URL = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
VOCABULARY_FILES = {"vocab.bpe": VOCAB_BPE_SHA256, "encoder.json": ENCODER_JSON_SHA256}


# GPT-2's two vocabulary files as this package ships them (origin and license: LICENSE there).
PACKAGED_VOCABULARY = Path(__file__).with_name("gpt2_vocabulary")


@functools.cache
def get_tokenizer() -> tiktoken.Encoding:
    """Return GPT-2's tokenizer, built from its two vocabulary files (vocabulary_files)."""
    return build_tokenizer(*vocabulary_files())


def vocabulary_files(folder: Path = PACKAGED_VOCABULARY) -> tuple[Path, Path]:
    """Return GPT-2's vocab.bpe and encoder.json from `folder` if intact, else downloaded ones.

    The package ships them, byte for byte the files tiktoken downloads, so no network access is
    needed; a missing or damaged one is fetched from tiktoken's address with a FallbackWarning.
    """
    for name, sha256 in VOCABULARY_FILES.items():
        if not _intact(folder / name, sha256):
            warnings.warn(
                f"GPT-2's vocabulary file {folder / name} is missing or does not have the hash "
                "tiktoken expects; downloading the vocabulary instead.",
                FallbackWarning,
                stacklevel=2,
            )
            return download_vocabulary(VOCABULARY_URL)
    return folder / "vocab.bpe", folder / "encoder.json"


def build_tokenizer(vocab_bpe: Path, encoder_json: Path) -> tiktoken.Encoding:
    """Build tiktoken's GPT-2 encoding from the two vocabulary files, checking their hashes."""
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(vocab_bpe),
        encoder_json_file=str(encoder_json),
        vocab_bpe_hash=VOCAB_BPE_SHA256,
        encoder_json_hash=ENCODER_JSON_SHA256,
    )
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={END_OF_TEXT: PAD_TOKEN_ID},
        explicit_n_vocab=VOCAB_SIZE,
    )


def download_vocabulary(url: str) -> tuple[Path, Path]:
    """Return the cached vocab.bpe and encoder.json, downloading any missing or damaged one."""
    paths = []
    for name, sha256 in VOCABULARY_FILES.items():
        path = cache_dir() / "gpt2-tokenizer" / name
        if not _intact(path, sha256):
            download_file([url + name], path, sha256)
        paths.append(path)
    return paths[0], paths[1]


def _intact(path: Path, sha256: str) -> bool:
    """Return whether `path` is a file with the given SHA-256."""
    return path.is_file() and sha256_of(path) == sha256
