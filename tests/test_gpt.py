"""GPT-2 from scratch: configurations, layers against hand computations, causality, generation."""

import math

import pytest
import torch
from torch import nn

from gptclassifier.errors import ConfigError
from gptclassifier.model.gpt import (
    GELU,
    GPTModel,
    LayerNorm,
    MultiHeadAttention,
    generate_text_simple,
    model_config,
    text_to_token_ids,
    token_ids_to_text,
)

# The sizes OpenAI published for GPT-2 (Radford et al. 2019, and the released hparams.json).
PUBLISHED_SIZES = {
    "gpt2-small": (768, 12, 12),
    "gpt2-medium": (1024, 24, 16),
    "gpt2-large": (1280, 36, 20),
    "gpt2-xl": (1600, 48, 25),
}


def tiny_config(**overrides) -> dict:
    """Return a small GPT configuration that builds and runs in milliseconds."""
    return model_config("gpt2-nano", **{"context_length": 16, **overrides})


def tiny_model(seed: int = 0, **overrides) -> GPTModel:
    """Return a seeded tiny GPTModel in eval mode."""
    torch.manual_seed(seed)
    return GPTModel(tiny_config(**overrides)).eval()


def count_parameters(model: nn.Module) -> int:
    """Return the number of scalar parameters of a module."""
    return sum(parameter.numel() for parameter in model.parameters())


def gpt_parameter_formula(vocab: int, context: int, dim: int, layers: int, qkv_bias: bool) -> int:
    """Count GPTModel's parameters by hand: embeddings, blocks, final norm and untied out_head."""
    attention = 3 * dim * dim + (3 * dim if qkv_bias else 0) + dim * dim + dim
    feed_forward = dim * 4 * dim + 4 * dim + 4 * dim * dim + dim
    norms = 2 * 2 * dim
    return (
        vocab * dim
        + context * dim
        + layers * (attention + feed_forward + norms)
        + 2 * dim
        + (vocab * dim)
    )


@pytest.fixture(scope="module")
def gpt2_small() -> GPTModel:
    """Return one randomly initialised gpt2-small for the whole module (it takes ~2 s)."""
    torch.manual_seed(0)
    return GPTModel(model_config("gpt2-small")).eval()


# ---------------------------------------------------------------- model_config


@pytest.mark.parametrize("name", sorted(PUBLISHED_SIZES))
def test_model_config_has_the_published_gpt2_sizes(name):
    emb_dim, n_layers, n_heads = PUBLISHED_SIZES[name]
    config = model_config(name)
    assert config["emb_dim"] == emb_dim
    assert config["n_layers"] == n_layers
    assert config["n_heads"] == n_heads
    assert config["context_length"] == 1024
    assert config["vocab_size"] == 50257
    assert config["qkv_bias"] is True
    assert config["drop_rate"] == 0.0
    assert config["emb_dim"] % config["n_heads"] == 0


def test_model_config_defaults_to_gpt2_small():
    assert model_config() == model_config("gpt2-small")


def test_model_config_nano_is_tiny_with_gpt2_vocabulary():
    config = model_config("gpt2-nano")
    assert config["vocab_size"] == 50257
    assert config["context_length"] == 128
    assert (config["emb_dim"], config["n_layers"], config["n_heads"]) == (48, 3, 3)


def test_model_config_overrides_replace_keys_without_changing_the_defaults():
    config = model_config("gpt2-medium", drop_rate=0.1, context_length=256, qkv_bias=False)
    assert config["drop_rate"] == 0.1
    assert config["context_length"] == 256
    assert config["qkv_bias"] is False
    assert config["emb_dim"] == 1024 and config["n_layers"] == 24
    # The override must not leak into later calls (no shared dict mutated).
    again = model_config("gpt2-medium")
    assert again["drop_rate"] == 0.0 and again["context_length"] == 1024
    assert again["qkv_bias"] is True
    config["emb_dim"] = 7
    assert model_config("gpt2-medium")["emb_dim"] == 1024


def test_model_config_unknown_name_raises_config_error_naming_the_choices():
    with pytest.raises(ConfigError, match="gpt2-tiny") as info:
        model_config("gpt2-tiny")
    assert "gpt2-small" in str(info.value)


def test_attention_width_not_divisible_by_heads_raises_config_error():
    with pytest.raises(ConfigError, match="divisible"):
        MultiHeadAttention(d_in=10, d_out=10, dropout=0.0, num_heads=3)


# ---------------------------------------------------------------- parameter count and shape


def test_gpt2_small_parameter_count_with_untied_output_layer(gpt2_small):
    total = count_parameters(gpt2_small)
    qkv_biases = [
        getattr(block.att, name).bias
        for block in gpt2_small.trf_blocks
        for name in ("W_query", "W_key", "W_value")
    ]
    assert len(qkv_biases) == 36 and all(bias.shape == (768,) for bias in qkv_biases)
    # The book's 163,009,536 is for qkv_bias=False; GPT-2 (and model_config) has q/k/v biases,
    # which add 12 layers x 3 x 768 = 27,648 parameters.
    assert total - sum(bias.numel() for bias in qkv_biases) == 163_009_536
    assert total == 163_037_184 == gpt_parameter_formula(50257, 1024, 768, 12, qkv_bias=True)
    assert gpt_parameter_formula(50257, 1024, 768, 12, qkv_bias=False) == 163_009_536
    # Without the untied output layer it is Hugging Face's well-known 124,439,808.
    assert gpt2_small.out_head.weight.shape == (50257, 768)
    assert gpt2_small.out_head.bias is None
    assert total - gpt2_small.out_head.weight.numel() == 124_439_808


def test_gpt2_small_output_shape_and_context_limit(gpt2_small):
    tokens = torch.randint(0, 50257, (2, 7))
    with torch.no_grad():
        logits = gpt2_small(tokens)
    assert logits.shape == (2, 7, 50257)
    assert torch.isfinite(logits).all()
    with pytest.raises(ValueError, match="1025 tokens exceed the context length of 1024"):
        gpt2_small(torch.zeros(1, 1025, dtype=torch.long))


def test_more_tokens_than_the_context_length_raises_a_clear_value_error():
    model = tiny_model(context_length=8)
    model(torch.zeros(1, 8, dtype=torch.long))  # exactly the context length is fine
    with pytest.raises(ValueError, match=r"9 tokens exceed the context length of 8"):
        model(torch.zeros(1, 9, dtype=torch.long))


# ---------------------------------------------------------------- layers


def test_layer_norm_matches_a_hand_computation_with_biased_variance_and_eps():
    torch.manual_seed(1)
    norm = LayerNorm(4)
    with torch.no_grad():
        norm.scale.copy_(torch.tensor([1.5, -0.5, 2.0, 0.25]))
        norm.shift.copy_(torch.tensor([0.1, 0.2, -0.3, 0.0]))
    # Rows of ordinary and of tiny spread: with variance ~1e-6 the eps of 1e-5 dominates.
    x = torch.cat([torch.randn(3, 4), 1e-3 * torch.randn(2, 4)]).double().float()
    mean = x.mean(dim=-1, keepdim=True)
    variance = ((x - mean) ** 2).sum(dim=-1, keepdim=True) / x.shape[-1]  # biased: divide by n
    expected = (x - mean) / torch.sqrt(variance + 1e-5) * norm.scale + norm.shift
    with torch.no_grad():
        actual = norm(x)
    assert (actual - expected).abs().max() < 1e-5
    assert norm.eps == 1e-5


def test_layer_norm_starts_as_plain_standardisation():
    norm = LayerNorm(6)
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])
    with torch.no_grad():
        out = norm(x)
    assert abs(out.mean().item()) < 1e-6
    assert abs(out.var(unbiased=False).item() - 1.0) < 1e-4


def test_gelu_matches_the_tanh_formula():
    x = torch.linspace(-6, 6, 1201, dtype=torch.float64)
    expected = 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    actual = GELU()(x)
    assert (actual - expected).abs().max() < 1e-10
    # The tanh approximation differs measurably from the exact erf GELU.
    exact = 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))
    assert (actual - exact).abs().max() > 1e-4


def reference_attention(mha: MultiHeadAttention, x: torch.Tensor, causal=True) -> torch.Tensor:
    """Compute (causal) multi-head attention step by step, as the book writes it out."""
    batch, num_tokens, _ = x.shape
    heads, head_dim = mha.num_heads, mha.d_out // mha.num_heads
    queries = mha.W_query(x).view(batch, num_tokens, heads, head_dim).transpose(1, 2)
    keys = mha.W_key(x).view(batch, num_tokens, heads, head_dim).transpose(1, 2)
    values = mha.W_value(x).view(batch, num_tokens, heads, head_dim).transpose(1, 2)
    scores = queries @ keys.transpose(2, 3) / math.sqrt(head_dim)
    if causal:
        mask = torch.triu(torch.ones(num_tokens, num_tokens, dtype=torch.bool), diagonal=1)
        scores = scores.masked_fill(mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    context = (weights @ values).transpose(1, 2).reshape(batch, num_tokens, mha.d_out)
    return mha.out_proj(context)


@pytest.mark.parametrize(
    ("d_in", "d_out", "heads", "qkv_bias"), [(6, 8, 2, True), (12, 12, 3, False)]
)
def test_multi_head_attention_matches_an_explicit_reference(d_in, d_out, heads, qkv_bias):
    torch.manual_seed(2)
    mha = MultiHeadAttention(d_in, d_out, dropout=0.0, num_heads=heads, qkv_bias=qkv_bias)
    assert (mha.W_query.bias is not None) is qkv_bias
    x = torch.randn(2, 5, d_in)
    with torch.no_grad():
        actual = mha(x)
        expected = reference_attention(mha, x)
    assert actual.shape == (2, 5, d_out)
    assert (actual - expected).abs().max() < 1e-5


def test_attention_without_the_causal_mask_lets_every_token_see_every_other():
    torch.manual_seed(2)
    mha = MultiHeadAttention(6, 6, dropout=0.0, num_heads=2, qkv_bias=True)
    mha.causal = False
    x = torch.randn(2, 5, 6, dtype=torch.float64)
    mha.double()
    with torch.no_grad():
        actual = mha(x)
        torch.testing.assert_close(actual, reference_attention(mha, x, causal=False))
        # the first token now sees the last: changing the last changes the first's output
        changed = x.clone()
        changed[:, -1] += 1
        assert (mha(changed)[:, 0] - actual[:, 0]).abs().max() > 1e-3


def test_multi_head_attention_first_token_only_sees_itself():
    torch.manual_seed(3)
    mha = MultiHeadAttention(8, 8, dropout=0.0, num_heads=2, qkv_bias=True)
    x = torch.randn(1, 4, 8)
    with torch.no_grad():
        alone = mha(x[:, :1])
        in_context = mha(x)
        # A single token's attention weight on itself is 1: the output is out_proj(values).
        expected = mha.out_proj(mha.W_value(x[:, :1]))
    assert (in_context[:, :1] - alone).abs().max() < 1e-6
    assert (alone - expected).abs().max() < 1e-6


# ---------------------------------------------------------------- causality and dropout


def test_changing_a_token_changes_no_logits_before_it():
    model = tiny_model(seed=4)
    tokens = torch.randint(0, 50257, (1, 12))
    for t in (0, 5, 11):
        changed = tokens.clone()
        changed[0, t] = (changed[0, t] + 1234) % 50257
        with torch.no_grad():
            before, after = model(tokens), model(changed)
        assert torch.allclose(before[:, :t], after[:, :t], atol=1e-6, rtol=0)
        # ...while the logits at t itself (and later) do change, so the check is not vacuous.
        assert (before[:, t:] - after[:, t:]).abs().amax(dim=-1).min() > 1e-4


def test_dropout_is_stochastic_in_train_mode_and_deterministic_in_eval_mode():
    model = tiny_model(seed=5, drop_rate=0.5)
    tokens = torch.randint(0, 50257, (2, 10))
    model.train()
    with torch.no_grad():
        first, second = model(tokens), model(tokens)
    assert not torch.allclose(first, second)
    model.eval()
    with torch.no_grad():
        third, fourth = model(tokens), model(tokens)
    assert torch.equal(third, fourth)
    assert not torch.allclose(first, third)


def test_drop_rate_zero_is_deterministic_even_in_train_mode():
    model = tiny_model(seed=6).train()
    tokens = torch.randint(0, 50257, (1, 6))
    with torch.no_grad():
        assert torch.equal(model(tokens), model(tokens))


# ---------------------------------------------------------------- generation


class RecordingModel(nn.Module):
    """Wrap a model and record the token ids of every call."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.calls: list[torch.Tensor] = []

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        self.calls.append(idx.clone())
        return self.model(idx)


def expected_greedy(model: nn.Module, idx: torch.Tensor, steps: int, window: int) -> torch.Tensor:
    """Greedy decoding written independently: argmax of the last logits over the last `window`."""
    rows = []
    with torch.no_grad():
        for row in idx.tolist():
            for _ in range(steps):
                logits = model(torch.tensor([row[-window:]]))
                row = row + [int(torch.argmax(logits[0, -1]))]
            rows.append(row)
    return torch.tensor(rows)


def test_generate_text_simple_appends_exactly_the_greedy_tokens():
    model = tiny_model(seed=7, context_length=32)
    start = torch.tensor([[15496, 11, 995], [464, 3290, 318]])
    out = generate_text_simple(model, start, max_new_tokens=6, context_size=32)
    assert out.shape == (2, 3 + 6)
    assert torch.equal(out[:, :3], start)
    assert torch.equal(out, expected_greedy(model, start, 6, 32))


def test_generate_text_simple_feeds_only_the_last_context_size_tokens():
    model = tiny_model(seed=8, context_length=8)
    recorder = RecordingModel(model)
    start = torch.tensor([[1, 2, 3, 4, 5]])
    # 5 + 10 tokens exceed the model's context of 8: without cropping the model would raise.
    out = generate_text_simple(recorder, start, max_new_tokens=10, context_size=8)
    assert out.shape == (1, 15)
    assert [call.shape[1] for call in recorder.calls] == [5, 6, 7] + [8] * 7
    for step, call in enumerate(recorder.calls):
        assert torch.equal(call, out[:, : 5 + step][:, -8:])
    assert torch.equal(out, expected_greedy(model, start, 10, 8))


def test_generate_text_simple_respects_a_context_size_below_the_models():
    model = tiny_model(seed=9, context_length=16)
    recorder = RecordingModel(model)
    start = torch.tensor([[10, 20, 30, 40, 50, 60]])
    out = generate_text_simple(recorder, start, max_new_tokens=4, context_size=3)
    assert all(call.shape[1] == 3 for call in recorder.calls)
    assert torch.equal(out, expected_greedy(model, start, 4, 3))


def test_generate_text_simple_with_zero_new_tokens_returns_the_input():
    model = tiny_model(seed=10)
    start = torch.tensor([[7, 8, 9]])
    assert torch.equal(generate_text_simple(model, start, 0, 16), start)


def test_generate_text_simple_does_not_record_gradients():
    model = tiny_model(seed=11)
    out = generate_text_simple(model, torch.tensor([[1, 2]]), 2, 16)
    assert not out.requires_grad


# ---------------------------------------------------------------- text <-> token ids


def test_text_to_token_ids_gives_a_batch_of_gpt2_ids(tokenizer):
    ids = text_to_token_ids("Hello, world", tokenizer)
    assert ids.shape == (1, 3)
    assert ids.tolist() == [[15496, 11, 995]]  # GPT-2's ids for "Hello", ",", " world"


@pytest.mark.parametrize(
    "text",
    [
        "Every effort moves you",
        "Hi<|endoftext|>WINNER!! Claim your £1000 prize now: call 09061701461.",
        "<|endoftext|>",
        "  spaces,\ttabs and\nnewlines  ",
    ],
)
def test_text_and_token_ids_round_trip(tokenizer, text):
    ids = text_to_token_ids(text, tokenizer)
    assert ids.dim() == 2 and ids.shape[0] == 1
    assert token_ids_to_text(ids, tokenizer) == text
    assert (50256 in ids[0].tolist()) is ("<|endoftext|>" in text)


def test_end_of_text_is_one_special_token(tokenizer):
    ids = text_to_token_ids("a<|endoftext|>b", tokenizer)
    assert ids[0].tolist().count(50256) == 1
    assert len(ids[0]) == 3
