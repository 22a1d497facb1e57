"""The fast way to fine-tune: frozen blocks once per message, one position through the last, bf16.

Each speed-up wraps the model or the batches, so the training loop, the losses and the
evaluation stay exactly the chapter's.
"""

import contextlib
import platform
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from gptclassifier.errors import ConfigError
from gptclassifier.model import GPTModel, TransformerBlock
from gptclassifier.tokenizer import PAD_TOKEN_ID
from gptclassifier.train import check_pooling, pooled_positions


def frozen_blocks(model: GPTModel) -> int:
    """Return how many leading transformer blocks are frozen, together with the embeddings."""
    embeddings = (*model.tok_emb.parameters(), *model.pos_emb.parameters())
    if any(parameter.requires_grad for parameter in embeddings):
        return 0
    for index, block in enumerate(model.trf_blocks):
        if any(parameter.requires_grad for parameter in block.parameters()):
            return index
    return len(model.trf_blocks)


class FrozenPrefixCache(nn.Module):
    """A GPTModel whose frozen part runs once per message and whose last block reads one position.

    The hidden states after the frozen embeddings and blocks are kept per message and reused
    in every later epoch and evaluation. With causal attention a position's state depends only
    on the tokens up to it, so a cached state is exact for any amount of padding; for
    `flexible` pooling only the real tokens' states are kept, and zeros stand in for padding
    that nothing reads. The last block then computes keys and values everywhere but its query,
    feed-forward, norm and head only at the pooled position: the forward pass returns the
    pooled logits, one row per message, equal to pooling the full model's output.
    """

    def __init__(self, model: GPTModel, pooling="last", pad_token_id: int = PAD_TOKEN_ID):
        super().__init__()
        self.num_frozen = frozen_blocks(model)
        if self.num_frozen == 0:
            raise ConfigError("nothing to cache: the embeddings or the first block are trainable")
        if any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules()):
            raise ConfigError("the frozen-prefix cache needs a model without dropout")
        check_pooling(pooling)
        self.model = model
        self.pooling = pooling
        self.pad_token_id = pad_token_id
        self.exact_padding = pooling != "flexible"
        self.cache: dict[bytes, torch.Tensor] = {}

    @property
    def pos_emb(self) -> nn.Embedding:
        """The wrapped model's position embedding (it tells the context length)."""
        return self.model.pos_emb

    def forward(self, in_idx: torch.Tensor) -> torch.Tensor:
        x = self._prefix_states(in_idx)
        positions = pooled_positions(in_idx, self.pooling, self.pad_token_id)
        trainable = list(self.model.trf_blocks[self.num_frozen :])
        for block in trainable[:-1]:
            x = block(x)
        if trainable:
            pooled = block_at_positions(trainable[-1], x, positions)
        else:  # only the final norm and the head are trained
            pooled = x[torch.arange(len(x), device=x.device), positions]
        return self.model.out_head(self.model.final_norm(pooled))

    def fill(self, rows: torch.Tensor, batch_size: int = 32) -> None:
        """Compute the states of many messages ahead, in batches of similar length."""
        lengths = (rows != self.pad_token_id).sum(dim=1)
        order = lengths.argsort().tolist()
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            width = rows.shape[1] if self.exact_padding else int(lengths[chunk].max().clamp(min=1))
            self._cache_missing(rows[chunk, :width])

    def _prefix_states(self, in_idx: torch.Tensor) -> torch.Tensor:
        """Return the frozen part's output for a batch, computing only what is not cached."""
        keys = self._cache_missing(in_idx)
        batch = torch.zeros(
            len(keys), in_idx.shape[1], self.model.tok_emb.embedding_dim,
            dtype=self.cache[keys[0]].dtype, device=in_idx.device,
        )  # fmt: skip
        for i, key in enumerate(keys):
            cached = self.cache[key][: in_idx.shape[1]]
            batch[i, : len(cached)] = cached
        return batch

    def _cache_missing(self, in_idx: torch.Tensor) -> list[bytes]:
        """Run the frozen part on the rows whose states are not cached; return every row's key."""
        width = in_idx.shape[1]
        lengths = (in_idx != self.pad_token_id).sum(dim=1).tolist()
        keys = [row[:n].cpu().numpy().tobytes() for row, n in zip(in_idx, lengths, strict=True)]
        needed = [width if self.exact_padding else n for n in lengths]
        # one row per distinct message that is not cached long enough; repeats are computed once
        missing = list({
            key: i for i, key in enumerate(keys)
            if key not in self.cache or len(self.cache[key]) < needed[i]
        }.values())  # fmt: skip
        if missing:
            states = self._run_prefix(in_idx[missing])
            for row, i in enumerate(missing):
                self.cache[keys[i]] = states[row, : needed[i]].clone()
        return keys

    @torch.no_grad()
    def _run_prefix(self, in_idx: torch.Tensor) -> torch.Tensor:
        """Run the embeddings and the frozen blocks."""
        model = self.model
        positions = torch.arange(in_idx.shape[1], device=in_idx.device)
        x = model.drop_emb(model.tok_emb(in_idx) + model.pos_emb(positions))
        for block in model.trf_blocks[: self.num_frozen]:
            x = block(x)
        return x


def block_at_positions(
    block: TransformerBlock, x: torch.Tensor, positions: torch.Tensor
) -> torch.Tensor:
    """Return a transformer block's output at one position per row, as (batch, emb_dim).

    Equal to `block(x)[rows, positions]`: the other positions serve only as keys and values.
    """
    att = block.att
    batch, width, _ = x.shape
    rows = torch.arange(batch, device=x.device)

    def heads(states: torch.Tensor) -> torch.Tensor:
        return states.view(batch, -1, att.num_heads, att.head_dim).transpose(1, 2)

    normed = block.norm1(x)
    query = heads(att.W_query(normed[rows, positions]))
    keys, values = heads(att.W_key(normed)), heads(att.W_value(normed))
    visible = torch.arange(width, device=x.device) <= positions[:, None]  # the causal mask
    context = F.scaled_dot_product_attention(query, keys, values, attn_mask=visible[:, None, None])
    shortcut = x[rows, positions] + att.out_proj(context.reshape(batch, att.d_out))
    return shortcut + block.ff(block.norm2(shortcut))


class Autocast(nn.Module):
    """Run a model under automatic mixed precision and return float32 logits."""

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        self.model = model
        self.dtype = dtype

    @property
    def pos_emb(self) -> nn.Embedding:
        """The wrapped model's position embedding (it tells the context length)."""
        return self.model.pos_emb

    def forward(self, in_idx: torch.Tensor) -> torch.Tensor:
        with torch.autocast(in_idx.device.type, dtype=self.dtype):
            return self.model(in_idx).float()


def bf16_is_fast(device: torch.device) -> bool:
    """Return whether this device multiplies bfloat16 matrices in hardware."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu" and platform.system() == "Linux":
        flags = Path("/proc/cpuinfo").read_text(errors="replace").split()
        return "amx_bf16" in flags or "avx512_bf16" in flags
    return False


def choose_precision(device: torch.device, precision: str = "auto") -> str:
    """Resolve `auto` to bfloat16 where the hardware has it, else float32."""
    if precision not in ("auto", "float32", "bfloat16"):
        raise ConfigError(f"unknown precision {precision!r}: choose auto, float32 or bfloat16")
    if precision == "auto":
        return "bfloat16" if bf16_is_fast(device) else "float32"
    return precision


def speed_up(model: GPTModel, pooling: str, precision="float32", compile=False, datasets=()):
    """Wrap a model with every speed-up that leaves its results as they are meant to be.

    The frozen-prefix cache is filled ahead with the messages of `datasets`. Returns the model
    to train and evaluate; its parameters are the original model's.
    """
    fast: nn.Module = model
    with contextlib.suppress(ConfigError):  # nothing frozen, or dropout: no cache
        fast = FrozenPrefixCache(model, pooling)
        device = next(model.parameters()).device
        with torch.autocast(device.type, torch.bfloat16, enabled=precision == "bfloat16"):
            for dataset in datasets:
                fast.fill(torch.tensor(dataset.encoded_texts, device=device))
    if precision == "bfloat16":
        fast = Autocast(fast)
    if compile:
        fast = torch.compile(fast, dynamic=True)
    return fast
