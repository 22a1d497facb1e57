"""Which position's logits classify a message: the chapter's last token, or another choice."""

import torch

from gptclassifier.errors import ConfigError, check_choice
from gptclassifier.model.tokenizer import PAD_TOKEN_ID
from gptclassifier.settings import POOLINGS


def pooled_positions(
    input_batch: torch.Tensor, pooling: str = "last", pad_token_id=PAD_TOKEN_ID
) -> torch.Tensor:
    """Return, per message, the position whose logits classify it.

    `last` is the chapter's choice, `first` the first token, and `flexible` the last real token
    of each right-padded message: the only position that has seen the whole message and
    nothing else, so its logits do not depend on the padding. (`mean` reads every position.)
    """
    check_choice("pooling", pooling, POOLINGS)
    if pooling == "mean":
        raise ConfigError("mean pooling averages every position's logits: it has no one position")
    batch, width = input_batch.shape
    if pooling == "last":
        return torch.full((batch,), width - 1, device=input_batch.device)
    if pooling == "first":
        return torch.zeros(batch, dtype=torch.long, device=input_batch.device)
    return (input_batch != pad_token_id).sum(dim=1).clamp(min=1) - 1  # flexible


def pool_logits(
    logits: torch.Tensor, input_batch: torch.Tensor, pooling="last", pad_token_id=PAD_TOKEN_ID
) -> torch.Tensor:
    """Keep one position's logits per message (see pooled_positions), or their mean over all.

    `mean` averages the logits of every position, padding included, as the book's
    `--average_embeddings` experiment does.
    """
    if pooling == "mean":
        return logits.mean(dim=1)
    positions = pooled_positions(input_batch, pooling, pad_token_id)
    return logits[torch.arange(len(logits), device=logits.device), positions]
