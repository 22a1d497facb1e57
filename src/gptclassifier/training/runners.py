"""How a run computes: runners that turn token ids into class logits, the chapter's way or faster.

A runner wraps a GPTModel (the chapter's way: the whole model, then pooling; the fast way: the
frozen blocks once per message and one position through the last block; bfloat16), so the
training loop, the losses and the evaluation stay exactly the chapter's.
"""

import math
import os

import torch
import torch.nn.functional as F
from torch import nn

from gptclassifier.errors import ConfigError, check_choice
from gptclassifier.model.classifier import has_causal_mask
from gptclassifier.model.gpt import GPTModel, TransformerBlock
from gptclassifier.model.tokenizer import PAD_TOKEN_ID
from gptclassifier.progress import progress_bar
from gptclassifier.settings import POOLINGS, TrainSettings
from gptclassifier.training.packed_blocks import PackedBlocks, can_pack
from gptclassifier.training.pooling import pool_logits, pooled_positions

MEMORY_SHARE = 0.8  # of the free memory the cache may take: training needs the rest
# Tokens per batch of the cache's one pass: the fastest of 512 to 16,384 measured on a 2-core
# CPU (larger batches of short messages spend more time in per-sequence attention), except for
# padded messages in bfloat16, whose matmuls want taller batches (the chapter's 1,494 messages
# padded to 120 tokens: 104 s at 32 messages a batch against 113 s at 8).
TOKENS_PER_BATCH = 1024
PADDED_BFLOAT16_TOKENS_PER_BATCH = 4096
GIB = 2**30


class Runner(nn.Module):
    """A GPTModel as a run computes with it: token ids in, one row of class logits per message out.

    The contract between the ways of computing and what trains or uses a run (the loop, the
    metrics, inference): `model` is the GPTModel whose parameters train, `pooling` how each
    message's row is chosen (after the padding `pad_token_id`), and `context_length` the most
    tokens a message may have.
    """

    def __init__(self, model: GPTModel, pooling: str = "last", pad_token_id: int = PAD_TOKEN_ID):
        super().__init__()
        check_choice("pooling", pooling, POOLINGS)
        self.model = model
        self.pooling = pooling
        self.pad_token_id = pad_token_id

    @property
    def context_length(self) -> int:
        """The most tokens the model reads at once."""
        return self.model.pos_emb.num_embeddings


class PooledModel(Runner):
    """The chapter's way: the whole model runs on every position, then one row is pooled."""

    def forward(self, in_idx: torch.Tensor) -> torch.Tensor:
        return pool_logits(self.model(in_idx), in_idx, self.pooling, self.pad_token_id)


def classifier_logits(
    model: nn.Module, input_batch: torch.Tensor, pooling="last", pad_token_id=PAD_TOKEN_ID
) -> torch.Tensor:
    """Run a model and return one row of class logits per message.

    A Runner returns its rows itself (and refuses another pooling); the output of a bare
    GPTModel is pooled here.
    """
    if isinstance(model, Runner):
        if pooling != model.pooling:
            raise ConfigError(f"the model pools {model.pooling!r}, not {pooling!r}")
        return model(input_batch)
    return pool_logits(model(input_batch), input_batch, pooling, pad_token_id)


def context_length(model: nn.Module) -> int:
    """Return the most tokens a GPTModel or a Runner reads at once."""
    return model.context_length if isinstance(model, Runner) else model.pos_emb.num_embeddings


def frozen_blocks(model: GPTModel) -> int:
    """Return how many leading transformer blocks are frozen, together with the embeddings."""
    embeddings = (*model.tok_emb.parameters(), *model.pos_emb.parameters())
    if any(parameter.requires_grad for parameter in embeddings):
        return 0
    for index, block in enumerate(model.trf_blocks):
        if any(parameter.requires_grad for parameter in block.parameters()):
            return index
    return len(model.trf_blocks)


def cache_refusal(model: GPTModel) -> str | None:
    """Return why the frozen-prefix cache cannot serve `model`, in words, or None if it can."""
    if frozen_blocks(model) == 0:
        return "the embeddings or the first block are trained, so no frozen part can be cached"
    if not has_causal_mask(model):
        return "without the causal mask every state depends on the padding after it"
    dropout = max((m.p for m in model.modules() if isinstance(m, nn.Dropout)), default=0.0)
    if dropout > 0:
        return f"the model has dropout (rate {dropout:g}), which would make every pass differ"
    return None


def available_memory(device: torch.device) -> int | None:
    """Return the bytes free on a CUDA device, else in the host's memory; None if unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # given in kB
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # no sysconf, or not these names
        return None


def cache_storage(need: int, device: torch.device, remedy: str = "--chapter") -> torch.device:
    """Return where `need` bytes of cached states fit: on `device`, else on the host; or refuse."""
    for place in dict.fromkeys((device, torch.device("cpu"))):  # the device, then the host
        free = available_memory(place)
        if free is None or need <= MEMORY_SHARE * free:
            return place
    raise ConfigError(
        f"the frozen-prefix cache needs {need / GIB:.1f} GiB of memory and the host has "
        f"{free / GIB:.1f} GiB available (it takes at most {MEMORY_SHARE:.0%}): train with {remedy}"
    )


class FrozenPrefixCache(Runner):
    """A GPTModel whose frozen part runs once per message and whose last block reads one position.

    The hidden states after the frozen embeddings and blocks are kept per message and reused
    in every later epoch and evaluation. With causal attention a position's state depends only
    on the tokens up to it, so a cached state is exact for any amount of padding; for
    `flexible` pooling only the real tokens' states are kept (an empty message keeps position
    0, which it is pooled at), and zeros stand in for padding that nothing reads. The states
    stay on the model's device when they fit there, else on the host. The last block, the
    final norm and the head then run at the pooled position only (block_at_positions): the
    forward pass returns the pooled logits, one row per message, equal to pooling the full
    model's output. `mean` pooling runs the trainable part over every position instead. The
    cache refuses to serve once the frozen part changed.
    """

    def __init__(self, model: GPTModel, pooling="last", pad_token_id: int = PAD_TOKEN_ID):
        refusal = cache_refusal(model)
        if refusal:
            raise ConfigError(f"the frozen-prefix cache cannot serve this model: {refusal}")
        super().__init__(model, pooling, pad_token_id)
        self.exact_padding = pooling != "flexible"
        self.num_frozen = frozen_blocks(model)
        self.frozen_weights = self._fingerprint()
        self.storage = self.device
        self.cache: dict[bytes, torch.Tensor] = {}
        self.packed: PackedBlocks | None = None  # the frozen blocks, packed while filling

    @property
    def device(self) -> torch.device:
        """The device of the wrapped model."""
        return self.model.pos_emb.weight.device

    def forward(self, in_idx: torch.Tensor) -> torch.Tensor:
        self._check_fresh()
        x = self._prefix_states(in_idx)
        trainable = list(self.model.trf_blocks[self.num_frozen :])
        if self.pooling == "mean":  # every position's logits count
            for block in trainable:
                x = block(x)
            return pool_logits(self.model.out_head(self.model.final_norm(x)), in_idx, "mean")
        positions = pooled_positions(in_idx, self.pooling, self.pad_token_id)
        for block in trainable[:-1]:
            x = block(x)
        if trainable:
            pooled = block_at_positions(trainable[-1], x, positions)
        else:  # only the final norm and the head are trained
            pooled = x[torch.arange(len(x), device=x.device), positions]
        return self.model.out_head(self.model.final_norm(pooled))

    def fill(
        self, *row_sets: torch.Tensor, tokens_per_batch: int | None = None, progress=False
    ) -> None:
        """Compute the states of many messages ahead, in batches of similar length.

        The longest messages go first, so the memory a batch needs only shrinks; each batch
        takes as many messages as fit in `tokens_per_batch` (at least one; by default, the
        fastest measured for this padding and precision). Under bfloat16 autocast on a CPU the
        frozen blocks run packed (PackedBlocks) while filling.
        """
        self._check_fresh()
        tokens_per_batch = tokens_per_batch or self._tokens_per_batch()
        self._place(sum(self._bytes_for(rows) for rows in row_sets))
        total = sum(len(rows) for rows in row_sets)
        frozen = self.model.trf_blocks[: self.num_frozen]
        if self._under_bfloat16() and can_pack(frozen, self.device):
            self.packed = PackedBlocks(frozen)
        try:
            self._fill(row_sets, tokens_per_batch, total, progress)
        finally:
            self.packed = None

    def _fill(self, row_sets, tokens_per_batch: int, total: int, progress) -> None:
        """Compute the states of every message of `row_sets` not cached, longest first."""
        with progress_bar(total, "frozen blocks, once", progress, "message") as bar:
            for rows in row_sets:
                rows = rows.cpu()
                lengths = (rows != self.pad_token_id).sum(dim=1).clamp(min=1)
                order = lengths.argsort(descending=True, stable=True).tolist()
                start = 0
                while start < len(order):
                    width = rows.shape[1] if self.exact_padding else int(lengths[order[start]])
                    chunk = order[start : start + max(1, tokens_per_batch // width)]
                    self._cache_missing(rows[chunk, :width].to(self.device))
                    start += len(chunk)
                    bar.update(len(chunk))

    def _under_bfloat16(self) -> bool:
        """Return whether autocast computes in bfloat16 on the model's device here."""
        device = self.device.type
        return torch.is_autocast_enabled(device) and (
            torch.get_autocast_dtype(device) == torch.bfloat16
        )

    def _tokens_per_batch(self) -> int:
        """Return the fastest measured tokens per batch for this padding and autocast precision."""
        padded_bfloat16 = self._under_bfloat16() and self.exact_padding
        return PADDED_BFLOAT16_TOKENS_PER_BATCH if padded_bfloat16 else TOKENS_PER_BATCH

    def _bytes_for(self, rows: torch.Tensor) -> int:
        """Return the memory that the states of `rows` take once cached."""
        if self.exact_padding:
            positions = rows.numel()
        else:
            positions = int((rows != self.pad_token_id).sum(dim=1).clamp(min=1).sum())
        weight = self.model.tok_emb.weight
        return positions * weight.shape[1] * weight.element_size()

    def _place(self, need: int) -> None:
        """Keep the states where they fit with `need` more bytes: the device, else the host."""
        need += sum(state.nbytes for state in self.cache.values())
        flexible = "--pooling flexible (as --fast does: only real tokens are cached) or "
        remedy = (flexible if self.exact_padding else "") + "--chapter (no cache)"
        self.storage = cache_storage(need, self.device, remedy)
        self.cache = {key: state.to(self.storage) for key, state in self.cache.items()}

    def _fingerprint(self) -> list[tuple[int, int]]:
        """Return where each frozen parameter's data lives and how often it changed in place."""
        model = self.model
        frozen = (model.tok_emb, model.pos_emb, *model.trf_blocks[: self.num_frozen])
        return [(p.data_ptr(), p._version) for module in frozen for p in module.parameters()]

    def _check_fresh(self) -> None:
        """Raise a ConfigError when the model's frozen part changed since the cache was made."""
        now = frozen_blocks(self.model)
        if now != self.num_frozen:
            raise ConfigError(
                f"the frozen-prefix cache was made with {self.num_frozen} frozen blocks and the "
                f"model now has {now}: build a new cache for the new trainable part"
            )
        if self._fingerprint() != self.frozen_weights:
            raise ConfigError(
                "the frozen weights changed after the frozen-prefix cache was made (loaded, "
                "edited or moved): build a new cache, or its states would be stale"
            )

    def _prefix_states(self, in_idx: torch.Tensor) -> torch.Tensor:
        """Return the frozen part's output for a batch, computing only what is not cached."""
        width = in_idx.shape[1]
        states = [self.cache[key][:width] for key in self._cache_missing(in_idx)]
        batch = nn.utils.rnn.pad_sequence(states, batch_first=True)  # zeros after the states
        return F.pad(batch, (0, 0, 0, width - batch.shape[1])).to(in_idx.device)

    def _cache_missing(self, in_idx: torch.Tensor) -> list[bytes]:
        """Run the frozen part on the rows whose states are not cached; return every row's key."""
        rows = in_idx.cpu()
        lengths = (rows != self.pad_token_id).sum(dim=1).tolist()
        keys = [row[:n].numpy().tobytes() for row, n in zip(rows, lengths, strict=True)]
        needed = [rows.shape[1] if self.exact_padding else max(n, 1) for n in lengths]
        # one row per distinct message that is not cached long enough; repeats are computed once
        missing = list({
            key: i for i, key in enumerate(keys)
            if key not in self.cache or len(self.cache[key]) < needed[i]
        }.values())  # fmt: skip
        if missing:
            states = self._run_prefix(in_idx[missing]).to(self.storage)
            for row, i in enumerate(missing):
                self.cache[keys[i]] = states[row, : needed[i]].clone()
        return keys

    @torch.no_grad()
    def _run_prefix(self, in_idx: torch.Tensor) -> torch.Tensor:
        """Run the embeddings and the frozen blocks (packed while filling, where they can be)."""
        x = self.model.embed(in_idx)
        if self.packed is not None:
            return self.packed(x)
        for block in self.model.trf_blocks[: self.num_frozen]:
            x = block(x)
        return x


def block_at_positions(
    block: TransformerBlock, x: torch.Tensor, positions: torch.Tensor
) -> torch.Tensor:
    """Return a transformer block's output at one position per row, as (batch, emb_dim).

    Equal to `block(x)[rows, positions]`, with no keys or values: for normalized inputs n, the
    score q . (W_k n + b_k) is (W_k^T q) . n + q . b_k, and the values' weighted sum is W_v times
    the inputs' weighted sum, plus b_v: a dot product per head and position, not two matmuls.
    """
    att = block.att
    batch, width, _ = x.shape
    rows = torch.arange(batch, device=x.device)

    def per_head(weight: torch.Tensor) -> torch.Tensor:  # (d_out, d_in) -> (heads, head_dim, d_in)
        return weight.view(att.num_heads, att.head_dim, -1)

    normed = block.norm1(x)  # (batch, width, d_in)
    query = att.W_query(normed[rows, positions]).view(batch, att.num_heads, att.head_dim)
    folded = torch.einsum("bhk,hki->bhi", query, per_head(att.W_key.weight))
    scores = folded @ normed.transpose(1, 2)  # (batch, heads, width)
    if att.W_key.bias is not None:  # the same for every position: softmax cancels it
        scores = scores + (query * att.W_key.bias.view_as(query[0])).sum(-1, keepdim=True)
    hidden = torch.arange(width, device=x.device) > positions[:, None]  # the causal mask
    scores = (scores / math.sqrt(att.head_dim)).masked_fill(hidden[:, None], float("-inf"))
    mixed = torch.softmax(scores, dim=-1) @ normed  # (batch, heads, d_in)
    context = torch.einsum("bhi,hki->bhk", mixed, per_head(att.W_value.weight))
    if att.W_value.bias is not None:  # the weights sum to 1
        context = context + att.W_value.bias.view_as(context[0])
    shortcut = x[rows, positions] + att.out_proj(context.reshape(batch, att.d_out))
    return shortcut + block.ff(block.norm2(shortcut))


class Autocast(Runner):
    """Run another runner under automatic mixed precision and return float32 logits."""

    def __init__(self, runner: Runner, dtype: torch.dtype = torch.bfloat16):
        super().__init__(runner.model, runner.pooling, runner.pad_token_id)
        self.runner = runner
        self.dtype = dtype

    def forward(self, in_idx: torch.Tensor) -> torch.Tensor:
        with torch.autocast(in_idx.device.type, dtype=self.dtype):
            return self.runner(in_idx).float()


def speed_up(
    model: GPTModel, pooling: str, precision="float32", compile=False, datasets=(), progress=False
):
    """Return the fastest runner of a model whose results are the ones meant.

    The frozen-prefix cache, where `cache_refusal` allows it, is filled ahead with the
    messages of `datasets` (with a progress bar if `progress`); else the whole model runs
    (PooledModel). Its parameters are the original model's.
    """
    runner: Runner
    if cache_refusal(model) is None:
        runner = FrozenPrefixCache(model, pooling)
        rows = [torch.tensor(dataset.encoded_texts) for dataset in datasets]
        with torch.autocast(runner.device.type, torch.bfloat16, enabled=precision == "bfloat16"):
            runner.fill(*rows, progress=progress)
    else:
        runner = PooledModel(model, pooling)
    if precision == "bfloat16":
        runner = Autocast(runner)
    if compile:
        runner.compile(dynamic=True)
    return runner


def classifier_runner(
    model: GPTModel, settings: TrainSettings, precision: str, datasets=(), progress=False
) -> Runner:
    """Return the runner a run computes with: the loop's way and the precision it chose.

    `precision` is the resolved one (never `auto`); `datasets` fill the fast loop's cache ahead.
    """
    if settings.loop == "fast":
        return speed_up(model, settings.pooling, precision, settings.compile, datasets, progress)
    runner = PooledModel(model, settings.pooling)
    return Autocast(runner) if precision == "bfloat16" else runner
