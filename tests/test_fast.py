"""The fast way gives the chapter's results: cached frozen blocks, trimmed padding, precision."""

import copy

import pytest
import torch

from gptclassifier.data import load_data
from gptclassifier.dataset import (
    LengthBucketSampler,
    create_data_loaders,
    create_datasets,
    trim_padding,
)
from gptclassifier.errors import ConfigError
from gptclassifier.fast import (
    Autocast,
    FrozenPrefixCache,
    block_at_positions,
    choose_precision,
    frozen_blocks,
    speed_up,
)
from gptclassifier.finetune import add_classification_head, set_trainable
from gptclassifier.model import GPTModel, TransformerBlock, model_config
from gptclassifier.prepare import prepare_splits
from gptclassifier.tokenizer import PAD_TOKEN_ID, get_tokenizer
from gptclassifier.train import classifier_logits, evaluating, pool_logits, train_classifier

SMOKE = {"num_epochs": 3, "eval_freq": 5, "eval_iter": 2}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """Return the practice data's datasets for the tiny model."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GPTCLASSIFIER_CACHE", str(tmp_path_factory.mktemp("cache")))
        splits = prepare_splits(load_data(profile="smoke"))
    return create_datasets(splits, get_tokenizer(), context_length=128)


def classifier(strategy="last_block", seed=0):
    """Return a seeded tiny GPT with a two-class head and `strategy` trainable."""
    torch.manual_seed(seed)
    model = add_classification_head(GPTModel(model_config("gpt2-nano")), 2)
    return set_trainable(model, strategy)


def train(datasets, model, runner, pooling="last", trim=False):
    """Train `runner` (the model or a wrapper of it) with the smoke settings; return history."""
    loaders = create_data_loaders(datasets, batch_size=8, seed=123, trim=trim)
    torch.manual_seed(123)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    return train_classifier(
        runner, loaders["train"], loaders["validation"], optimizer, "cpu",
        pooling=pooling, progress=False, **SMOKE,
    )  # fmt: skip


@pytest.mark.parametrize("strategy", ["last_layer", "last_block", "last_two_blocks"])
@pytest.mark.parametrize("pooling", ["last", "first"])
def test_cached_training_equals_the_chapters_loop(datasets, strategy, pooling):
    plain = classifier(strategy)
    expected = train(datasets, plain, plain, pooling)
    model = classifier(strategy)
    history = train(datasets, model, FrozenPrefixCache(model, pooling), pooling)
    for name in ("train_losses", "val_losses", "train_accs", "val_accs"):
        assert getattr(history, name) == pytest.approx(getattr(expected, name), abs=1e-5)
    assert history.eval_steps == expected.eval_steps
    # Some true gradients are zero: softmax cancels a key bias (it shifts all of a query's
    # scores alike), and the first token attends only to itself, so its query and key do not
    # matter. AdamW turns each way's rounding noise there into full-size steps; skip them.
    noise_only = ("W_query", "W_key") if pooling == "first" else ("W_key.bias",)
    theirs = dict(plain.named_parameters())
    for name, ours in model.named_parameters():
        if not any(part in name for part in noise_only):
            assert torch.allclose(ours, theirs[name], atol=1e-5), name


def test_flexible_pooling_with_trimmed_padding_gives_the_same_training(datasets):
    plain = classifier()
    expected = train(datasets, plain, plain, pooling="flexible")
    model = classifier()
    fast = speed_up(model, "flexible", datasets=datasets.values())
    history = train(datasets, model, fast, pooling="flexible", trim=True)
    assert history.train_losses == pytest.approx(expected.train_losses, abs=1e-5)
    assert history.val_accs == pytest.approx(expected.val_accs, abs=1e-6)


def test_trimmed_batches_predict_like_globally_padded_ones(datasets):
    model = classifier().eval()
    global_padding = create_data_loaders(datasets, batch_size=8)["test"]
    trimmed = create_data_loaders(datasets, batch_size=8, trim=True)["test"]
    with evaluating(model):
        for (full, labels), (short, same_labels) in zip(global_padding, trimmed, strict=True):
            assert short.shape[1] <= full.shape[1] and torch.equal(labels, same_labels)
            assert torch.allclose(
                classifier_logits(model, full, "flexible"),
                classifier_logits(model, short, "flexible"),
                atol=1e-5,
            )


def test_the_cache_serves_any_padding_exactly(datasets):
    model = classifier().eval()
    short = [ids for ids in datasets["train"].encoded_texts if ids[19] == PAD_TOKEN_ID][:6]
    rows = torch.tensor(short)  # messages of under 20 tokens, padded to the training length
    cached = FrozenPrefixCache(model, "last")
    with torch.no_grad():
        first = cached(rows[:, :20])  # cached at width 20, then asked for the full width
        assert torch.allclose(cached(rows), model(rows)[:, -1], atol=1e-5)
        assert torch.allclose(cached(rows[:, :20]), first, atol=1e-5)
    assert len(cached.cache) == 6


@pytest.mark.parametrize("strategy", ["last_layer", "last_block", "last_two_blocks"])
@pytest.mark.parametrize("pooling", ["last", "first", "flexible"])
def test_the_cache_returns_the_pooled_logits_of_the_full_model(datasets, strategy, pooling):
    model = classifier(strategy).eval()
    rows = torch.tensor(datasets["test"].encoded_texts[:8])
    cached = FrozenPrefixCache(model, pooling)
    with torch.no_grad():
        pooled = cached(rows)
        assert pooled.shape == (8, 2)
        assert torch.allclose(pooled, pool_logits(model(rows), rows, pooling), atol=1e-5)
        assert torch.equal(classifier_logits(cached, rows, pooling), pooled)


def test_block_at_positions_equals_the_whole_block():
    torch.manual_seed(0)
    block = TransformerBlock(model_config("gpt2-nano")).eval()
    x = torch.randn(4, 9, block.att.d_out)
    positions = torch.tensor([8, 0, 3, 5])
    with torch.no_grad():
        expected = block(x)[torch.arange(4), positions]
        assert torch.allclose(block_at_positions(block, x, positions), expected, atol=1e-5)
        x[1, 1:] = 1e3  # what comes after a pooled position never reaches it
        assert torch.allclose(block_at_positions(block, x, positions)[1], expected[1], atol=1e-5)


def test_flexible_pooling_keeps_only_the_real_tokens_states(datasets):
    model = classifier().eval()
    rows = torch.tensor(datasets["test"].encoded_texts[:8])
    zeros = FrozenPrefixCache(model, "flexible")
    with torch.no_grad():
        zeros(rows)
    for row in rows:
        real = row[row != PAD_TOKEN_ID]
        assert len(zeros.cache[real.numpy().tobytes()]) == len(real)


def test_fill_precomputes_every_message(datasets):
    model = classifier()
    cached = FrozenPrefixCache(model, "flexible")
    cached.fill(torch.tensor(datasets["train"].encoded_texts), batch_size=16)
    rows = torch.tensor(datasets["train"].encoded_texts[:8])
    calls = []
    cached._run_prefix = lambda in_idx: calls.append(in_idx) or None
    cached(rows)
    assert calls == []  # everything came from the cache


def test_frozen_blocks_counts_the_frozen_prefix():
    assert frozen_blocks(classifier("last_block")) == 2
    assert frozen_blocks(classifier("last_two_blocks")) == 1
    assert frozen_blocks(classifier("last_layer")) == 3
    assert frozen_blocks(classifier("all")) == 0


def test_the_cache_refuses_what_it_cannot_serve():
    with pytest.raises(ConfigError, match="nothing to cache"):
        FrozenPrefixCache(classifier("all"))
    dropout = add_classification_head(GPTModel(model_config("gpt2-nano", drop_rate=0.1)), 2)
    with pytest.raises(ConfigError, match="without dropout"):
        FrozenPrefixCache(set_trainable(dropout, "last_block"))
    with pytest.raises(ConfigError, match="unknown pooling"):
        FrozenPrefixCache(classifier(), "mean")
    assert isinstance(speed_up(classifier("all"), "last"), GPTModel)  # nothing to wrap


def test_autocast_returns_float32_logits_close_to_float32():
    model = classifier().eval()
    rows = torch.randint(0, 50000, (2, 12))
    with torch.no_grad():
        mixed = Autocast(model)(rows)
        exact = model(rows)
    assert mixed.dtype == torch.float32
    assert torch.allclose(mixed, exact, atol=0.1)
    assert isinstance(speed_up(copy.deepcopy(model), "last", "bfloat16"), Autocast)


def test_choose_precision():
    cpu = torch.device("cpu")
    assert choose_precision(cpu, "float32") == "float32"
    assert choose_precision(cpu, "bfloat16") == "bfloat16"
    assert choose_precision(cpu, "auto") in ("float32", "bfloat16")
    with pytest.raises(ConfigError, match="unknown precision"):
        choose_precision(cpu, "float16x")


def test_trim_padding_cuts_to_the_longest_message():
    batch = [
        (torch.tensor([5, 6, PAD_TOKEN_ID, PAD_TOKEN_ID]), torch.tensor(0)),
        (torch.tensor([7, PAD_TOKEN_ID, PAD_TOKEN_ID, PAD_TOKEN_ID]), torch.tensor(1)),
    ]
    inputs, labels = trim_padding(batch)
    assert inputs.tolist() == [[5, 6], [7, PAD_TOKEN_ID]]
    assert labels.tolist() == [0, 1]


def test_length_buckets_cover_every_message_once_per_epoch():
    lengths = [(i * 37) % 50 for i in range(100)]
    sampler = LengthBucketSampler(lengths, batch_size=8, generator=torch.Generator().manual_seed(1))
    batches = list(sampler)
    assert len(batches) == len(sampler) == 12
    seen = [index for batch in batches for index in batch]
    assert len(seen) == len(set(seen)) == 96
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches)
    assert spread < 12 * 25  # sorted within chunks: batches hold similar lengths
    assert list(sampler) != batches  # a new order every epoch


def test_a_repeated_message_is_computed_once(datasets):
    cached = FrozenPrefixCache(classifier(), "flexible")
    rows = torch.tensor(datasets["train"].encoded_texts[:3] * 2)
    computed = []
    run_prefix = cached._run_prefix
    cached._run_prefix = lambda in_idx: computed.append(len(in_idx)) or run_prefix(in_idx)
    cached.fill(rows)
    assert sum(computed) == 3 and len(cached.cache) == 3
