"""GPT-2 written out from scratch, with the book's names, and greedy text generation."""

import torch
import torch.nn.functional as F
from torch import nn

from gptclassifier.errors import ConfigError, check_choice
from gptclassifier.settings import GPT_SIZES

BASE_CONFIG = {
    "vocab_size": 50257,  # GPT-2's byte-pair vocabulary
    "context_length": 1024,  # the most tokens the model can see at once
    "drop_rate": 0.0,  # the chapter fine-tunes without dropout
    "qkv_bias": True,  # GPT-2 has biases in its query, key and value projections
}


def model_config(name: str = "gpt2-small", **overrides) -> dict:
    """Return the configuration dict of a named model size, with any keys overridden."""
    check_choice("model", name, GPT_SIZES)
    return {**BASE_CONFIG, **GPT_SIZES[name], **overrides}


class LayerNorm(nn.Module):
    """Normalise each token's vector to mean 0 and variance 1, then scale and shift it."""

    def __init__(self, emb_dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(emb_dim))
        self.shift = nn.Parameter(torch.zeros(emb_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.scale.shape, self.scale, self.shift, self.eps)


class GELU(nn.Module):
    """GPT-2's activation: the tanh approximation of the Gaussian error linear unit."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate="tanh")


class FeedForward(nn.Module):
    """Expand each token to four times its width, apply GELU, and project back."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(cfg["emb_dim"], 4 * cfg["emb_dim"]),
            GELU(),
            nn.Linear(4 * cfg["emb_dim"], cfg["emb_dim"]),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class MultiHeadAttention(nn.Module):
    """Causal self-attention: each token attends to itself and the tokens before it.

    Setting `causal` to False lets every token attend to every other (an experiment of the book).
    """

    def __init__(self, d_in: int, d_out: int, dropout: float, num_heads: int, qkv_bias=False):
        super().__init__()
        if d_out % num_heads:
            raise ConfigError(f"emb_dim {d_out} is not divisible by n_heads {num_heads}")
        self.d_out = d_out
        self.num_heads = num_heads
        self.head_dim = d_out // num_heads
        self.dropout = dropout
        self.causal = True
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.out_proj = nn.Linear(d_out, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, num_tokens, _ = x.shape
        shape = (batch, num_tokens, self.num_heads, self.head_dim)
        queries = self.W_query(x).view(shape).transpose(1, 2)
        keys = self.W_key(x).view(shape).transpose(1, 2)
        values = self.W_value(x).view(shape).transpose(1, 2)
        # softmax(QK^T / sqrt(head_dim) + causal mask) V, computed by one fused kernel
        context = F.scaled_dot_product_attention(
            queries,
            keys,
            values,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=self.causal,
        )
        return self.out_proj(context.transpose(1, 2).reshape(batch, num_tokens, self.d_out))


class TransformerBlock(nn.Module):
    """Attention and feed-forward, each behind a LayerNorm and inside a shortcut."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.att = MultiHeadAttention(
            d_in=cfg["emb_dim"],
            d_out=cfg["emb_dim"],
            dropout=cfg["drop_rate"],
            num_heads=cfg["n_heads"],
            qkv_bias=cfg["qkv_bias"],
        )
        self.ff = FeedForward(cfg)
        self.norm1 = LayerNorm(cfg["emb_dim"])
        self.norm2 = LayerNorm(cfg["emb_dim"])
        self.drop_shortcut = nn.Dropout(cfg["drop_rate"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_shortcut(self.att(self.norm1(x)))
        return x + self.drop_shortcut(self.ff(self.norm2(x)))


class GPTModel(nn.Module):
    """Token and position embeddings, a stack of transformer blocks, a norm and an output layer."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.tok_emb = nn.Embedding(cfg["vocab_size"], cfg["emb_dim"])
        self.pos_emb = nn.Embedding(cfg["context_length"], cfg["emb_dim"])
        self.drop_emb = nn.Dropout(cfg["drop_rate"])
        self.trf_blocks = nn.Sequential(*[TransformerBlock(cfg) for _ in range(cfg["n_layers"])])
        self.final_norm = LayerNorm(cfg["emb_dim"])
        self.out_head = nn.Linear(cfg["emb_dim"], cfg["vocab_size"], bias=False)

    def embed(self, in_idx: torch.Tensor) -> torch.Tensor:
        """Return the input of the first block: token plus position embeddings, with dropout."""
        num_tokens = in_idx.shape[1]
        if num_tokens > self.pos_emb.num_embeddings:
            raise ValueError(
                f"{num_tokens} tokens exceed the context length of {self.pos_emb.num_embeddings}"
            )
        positions = torch.arange(num_tokens, device=in_idx.device)
        return self.drop_emb(self.tok_emb(in_idx) + self.pos_emb(positions))

    def forward(self, in_idx: torch.Tensor) -> torch.Tensor:
        return self.out_head(self.final_norm(self.trf_blocks(self.embed(in_idx))))


def text_to_token_ids(text: str, tokenizer) -> torch.Tensor:
    """Encode text into a batch of one sequence of token ids."""
    return torch.tensor(tokenizer.encode(text, allowed_special={"<|endoftext|>"})).unsqueeze(0)


def token_ids_to_text(token_ids: torch.Tensor, tokenizer) -> str:
    """Decode a batch of one sequence of token ids into text."""
    return tokenizer.decode(token_ids.squeeze(0).tolist())


@torch.no_grad()
def generate_text_simple(
    model: nn.Module, idx: torch.Tensor, max_new_tokens: int, context_size: int
) -> torch.Tensor:
    """Append `max_new_tokens` tokens, each time the one with the highest logit (greedy)."""
    for _ in range(max_new_tokens):
        logits = model(idx[:, -context_size:])[:, -1, :]
        idx = torch.cat((idx, logits.argmax(dim=-1, keepdim=True)), dim=1)
    return idx
