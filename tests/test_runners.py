"""The fast way gives the chapter's results: cached frozen blocks, trimmed padding, precision."""

import copy
import re

import pytest
import torch

from gptclassifier.data.loaders import create_data_loaders, create_datasets
from gptclassifier.errors import ConfigError
from gptclassifier.model.classifier import add_classification_head, set_causal_mask, set_trainable
from gptclassifier.model.gpt import GPTModel, TransformerBlock, model_config
from gptclassifier.model.tokenizer import PAD_TOKEN_ID
from gptclassifier.settings import TrainSettings
from gptclassifier.training import runners
from gptclassifier.training.device import has_fused_adamw
from gptclassifier.training.loop import evaluating, train_classifier
from gptclassifier.training.pooling import pool_logits
from gptclassifier.training.runners import (
    GIB,
    Autocast,
    FrozenPrefixCache,
    PooledModel,
    Runner,
    available_memory,
    block_at_positions,
    cache_refusal,
    cache_storage,
    classifier_logits,
    classifier_runner,
    context_length,
    frozen_blocks,
    speed_up,
)

SMOKE = {"num_epochs": 3, "eval_freq": 5, "eval_iter": 2}


@pytest.fixture(scope="module")
def datasets(smoke_splits, tokenizer):
    """Return the practice data's datasets for the tiny model."""
    return create_datasets(smoke_splits, tokenizer, context_length=128)


# The classifiers here are nano_classifier(strategy, seed=0), most in float64 (.double()): there
# two ways of computing agree to ~1e-15, where float32 agrees only to ~1e-7 and the order of the
# sums differs between CPUs.


def train(datasets, model, runner, pooling="last", trim=False, fused=False):
    """Train `runner` (the model or a wrapper of it) with the smoke settings; return history."""
    loaders = create_data_loaders(datasets, batch_size=8, trim=trim)
    torch.manual_seed(123)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1, fused=fused)
    return train_classifier(
        runner, loaders["train"], loaders["validation"], optimizer, "cpu",
        pooling=pooling, progress=False, **SMOKE,
    )  # fmt: skip


def assert_same_training(history, expected, model, plain):
    """Assert two float64 trainings measured the same and ended with the same parameters."""
    for name in ("train_losses", "val_losses", "train_accs", "val_accs"):
        assert getattr(history, name) == pytest.approx(getattr(expected, name), rel=1e-9)
    assert history.eval_steps == expected.eval_steps
    # Some true gradients are zero (a key bias: softmax cancels it), and AdamW turns their
    # rounding noise into steps of about lr * noise / eps: ~1e-11 per step in float64, where
    # float32's noise makes them full-size steps.
    theirs = dict(plain.named_parameters())
    for name, ours in model.named_parameters():
        torch.testing.assert_close(ours, theirs[name], rtol=0, atol=1e-8, msg=name)


@pytest.mark.parametrize("strategy", ["last_layer", "last_block", "last_two_blocks"])
@pytest.mark.parametrize("pooling", ["last", "first", "mean"])
def test_cached_training_equals_the_chapters_loop(nano_classifier, datasets, strategy, pooling):
    plain = nano_classifier(strategy, seed=0).double()
    expected = train(datasets, plain, plain, pooling)
    model = nano_classifier(strategy, seed=0).double()
    history = train(datasets, model, FrozenPrefixCache(model, pooling), pooling)
    assert_same_training(history, expected, model, plain)


def test_flexible_pooling_with_trimmed_padding_gives_the_same_training(nano_classifier, datasets):
    plain = nano_classifier("last_block", seed=0).double()
    expected = train(datasets, plain, plain, pooling="flexible")
    model = nano_classifier("last_block", seed=0).double()
    fast = speed_up(model, "flexible", "float64", datasets=datasets.values())
    assert isinstance(fast, FrozenPrefixCache)
    history = train(datasets, model, fast, pooling="flexible", trim=True)
    assert_same_training(history, expected, model, plain)


def test_the_fused_adamw_trains_as_the_chapters(nano_classifier, datasets):
    assert has_fused_adamw(torch.device("cpu"))
    plain = nano_classifier("last_block", seed=0).double()
    expected = train(datasets, plain, plain)
    model = nano_classifier("last_block", seed=0).double()
    history = train(datasets, model, FrozenPrefixCache(model, "last"), fused=True)
    assert_same_training(history, expected, model, plain)


def assert_close(actual, expected):
    """Assert float64 logits agree to rounding."""
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)


def test_trimmed_batches_predict_like_globally_padded_ones(nano_classifier, datasets):
    model = nano_classifier("last_block", seed=0).double().eval()
    global_padding = create_data_loaders(datasets, batch_size=8)["test"]
    trimmed = create_data_loaders(datasets, batch_size=8, trim=True)["test"]
    with evaluating(model):
        for (full, labels), (short, same_labels) in zip(global_padding, trimmed, strict=True):
            assert short.shape[1] <= full.shape[1] and torch.equal(labels, same_labels)
            assert_close(
                classifier_logits(model, short, "flexible"),
                classifier_logits(model, full, "flexible"),
            )


def test_the_cache_serves_any_padding_exactly(nano_classifier, datasets):
    model = nano_classifier("last_block", seed=0).double().eval()
    short = [ids for ids in datasets["train"].encoded_texts if ids[19] == PAD_TOKEN_ID][:6]
    rows = torch.tensor(short)  # messages of under 20 tokens, padded to the training length
    cached = FrozenPrefixCache(model, "last")
    with torch.no_grad():
        first = cached(rows[:, :20])  # cached at width 20, then asked for the full width
        assert_close(cached(rows), model(rows)[:, -1])
        assert_close(cached(rows[:, :20]), first)
    assert len(cached.cache) == 6


@pytest.mark.parametrize("strategy", ["last_layer", "last_block", "last_two_blocks"])
@pytest.mark.parametrize("pooling", ["last", "first", "flexible", "mean"])
def test_the_cache_returns_the_pooled_logits_of_the_full_model(
    nano_classifier, datasets, strategy, pooling
):
    model = nano_classifier(strategy, seed=0).double().eval()
    rows = torch.tensor(datasets["test"].encoded_texts[:8])
    cached = FrozenPrefixCache(model, pooling)
    with torch.no_grad():
        pooled = cached(rows)
        assert pooled.shape == (8, 2)
        assert_close(pooled, pool_logits(model(rows), rows, pooling))
        assert torch.equal(classifier_logits(cached, rows, pooling), pooled)


def test_an_empty_message_gets_the_full_models_logits(nano_classifier, datasets):
    model = nano_classifier("last_block", seed=0).double().eval()
    rows = torch.tensor(datasets["test"].encoded_texts[:3])
    rows[1] = PAD_TOKEN_ID  # nothing but padding: flexible pooling reads position 0
    expected = pool_logits(model(rows), rows, "flexible").detach()
    filled = FrozenPrefixCache(model, "flexible")
    filled.fill(rows)
    lazy = FrozenPrefixCache(model, "flexible")
    with torch.no_grad():
        assert_close(lazy(rows), expected)
        assert_close(filled(rows), expected)
        assert_close(lazy(rows[1:2, :1]), expected[1:2])  # a trimmed batch keeps one column


def test_block_at_positions_equals_the_whole_block():
    torch.manual_seed(0)
    block = TransformerBlock(model_config("gpt2-nano")).double().eval()
    x = torch.randn(4, 9, block.att.d_out, dtype=torch.float64)
    positions = torch.tensor([8, 0, 3, 5])
    with torch.no_grad():
        expected = block(x)[torch.arange(4), positions]
        assert_close(block_at_positions(block, x, positions), expected)
        x[1, 1:] = 1e3  # what comes after a pooled position never reaches it
        assert_close(block_at_positions(block, x, positions)[1], expected[1])


def test_flexible_pooling_keeps_only_the_real_tokens_states(nano_classifier, datasets):
    model = nano_classifier("last_block", seed=0).eval()
    rows = torch.tensor(datasets["test"].encoded_texts[:8])
    zeros = FrozenPrefixCache(model, "flexible")
    with torch.no_grad():
        zeros(rows)
    for row in rows:
        real = row[row != PAD_TOKEN_ID]
        assert len(zeros.cache[real.numpy().tobytes()]) == len(real)


def test_fill_precomputes_every_message(nano_classifier, datasets):
    model = nano_classifier("last_block", seed=0)
    cached = FrozenPrefixCache(model, "flexible")
    cached.fill(torch.tensor(datasets["train"].encoded_texts), tokens_per_batch=256)
    rows = torch.tensor(datasets["train"].encoded_texts[:8])
    calls = []
    cached._run_prefix = lambda in_idx: calls.append(in_idx) or None
    cached(rows)
    assert calls == []  # everything came from the cache


@pytest.mark.parametrize("pooling", ["last", "flexible"])
def test_fill_batches_hold_a_token_budget_longest_first(nano_classifier, datasets, pooling):
    cached = FrozenPrefixCache(nano_classifier("last_block", seed=0).double(), pooling)
    shapes, run_prefix = [], cached._run_prefix
    cached._run_prefix = lambda in_idx: shapes.append(tuple(in_idx.shape)) or run_prefix(in_idx)
    rows = torch.tensor(datasets["train"].encoded_texts)
    cached.fill(rows, tokens_per_batch=100)
    assert sum(count for count, _ in shapes) == len({row.numpy().tobytes() for row in rows})
    assert all(count * width <= 100 or count == 1 for count, width in shapes)
    widths = [width for _, width in shapes]
    assert widths == sorted(widths, reverse=True) and len(shapes) > 2
    if pooling == "last":
        assert set(widths) == {rows.shape[1]}
    lazy = FrozenPrefixCache(nano_classifier("last_block", seed=0).double(), pooling)
    assert_close(cached(rows[:16]), lazy(rows[:16]))


@pytest.mark.parametrize("pooling", ["last", "flexible"])
@pytest.mark.parametrize("bfloat16", [False, True])
def test_fill_takes_the_budget_measured_for_its_padding_and_precision(
    nano_classifier, pooling, bfloat16
):
    cached = FrozenPrefixCache(nano_classifier("last_block", seed=0), pooling)
    counts, run_prefix = [], cached._run_prefix
    cached._run_prefix = lambda in_idx: counts.append(len(in_idx)) or run_prefix(in_idx)
    rows = torch.randint(0, 50000, (40, 120))
    with torch.autocast("cpu", torch.bfloat16, enabled=bfloat16):
        cached.fill(rows)
    padded_bfloat16 = bfloat16 and pooling == "last"
    budget = (
        runners.PADDED_BFLOAT16_TOKENS_PER_BATCH if padded_bfloat16 else runners.TOKENS_PER_BATCH
    )
    assert counts[0] == budget // 120


def test_one_position_per_message_runs_in_bfloat16_under_autocast(nano_classifier, datasets):
    cached = FrozenPrefixCache(nano_classifier("last_block", seed=0), "last")
    rows = torch.tensor(datasets["test"].encoded_texts[:8])
    cached.fill(rows)  # float32 states
    outputs = []
    feed_forward = cached.model.trf_blocks[-1].ff.layers[0]
    feed_forward.register_forward_hook(lambda module, args, output: outputs.append(output.dtype))
    with torch.no_grad():
        mixed, exact = Autocast(cached)(rows), cached(rows)
    assert outputs == [torch.bfloat16, torch.float32]
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, exact, rtol=0, atol=0.05)


def test_a_batch_crosses_between_host_and_device_once(nano_classifier, datasets, monkeypatch):
    calls = {"cpu": 0, "to": 0}
    for name in calls:
        original = getattr(torch.Tensor, name)

        def counted(tensor, *args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(tensor, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    cached = FrozenPrefixCache(nano_classifier("last_block", seed=0), "flexible")
    rows = torch.tensor(datasets["test"].encoded_texts[:8])
    with torch.no_grad():
        cached(rows)  # keys from one copy; the states stored in one go, then served in one
        assert calls == {"cpu": 1, "to": 2}
        calls.update(cpu=0, to=0)
        cached(rows)  # all cached: keys from one copy, the batch served in one go
        assert calls == {"cpu": 1, "to": 1}


def test_frozen_blocks_counts_the_frozen_prefix(nano_classifier):
    assert frozen_blocks(nano_classifier("last_block", seed=0)) == 2
    assert frozen_blocks(nano_classifier("last_two_blocks", seed=0)) == 1
    assert frozen_blocks(nano_classifier("last_layer", seed=0)) == 3
    assert frozen_blocks(nano_classifier("all", seed=0)) == 0


def test_the_cache_refuses_what_it_cannot_serve(nano_classifier):
    assert cache_refusal(nano_classifier("last_block", seed=0)) is None
    everything = nano_classifier("all", seed=0)
    reason = cache_refusal(everything)
    assert "no frozen part" in reason
    with pytest.raises(ConfigError, match=re.escape(reason)):
        FrozenPrefixCache(everything)
    dropout = add_classification_head(GPTModel(model_config("gpt2-nano", drop_rate=0.1)), 2)
    set_trainable(dropout, "last_block")
    assert "dropout (rate 0.1)" in cache_refusal(dropout)
    with pytest.raises(ConfigError, match="dropout"):
        FrozenPrefixCache(dropout)
    with pytest.raises(ConfigError, match="unknown pooling"):
        FrozenPrefixCache(nano_classifier("last_block", seed=0), "median")
    unmasked = set_causal_mask(nano_classifier("last_block", seed=0), False)
    assert "without the causal mask" in cache_refusal(unmasked)
    assert "no frozen part" in cache_refusal(
        nano_classifier("lora", seed=0)
    )  # LoRA trains the first block
    for refused in (unmasked, everything, dropout):  # the whole model runs, as the chapter's
        runner = speed_up(refused, "last")
        assert type(runner) is PooledModel and runner.model is refused


def edit_in_place(model):
    """Change a frozen weight in place, as a hand edit would."""
    with torch.no_grad():
        model.trf_blocks[0].norm1.scale.mul_(2)


STALE = {
    "trainable": lambda model: set_trainable(model, "last_two_blocks"),
    "loaded": lambda model: model.load_state_dict(copy.deepcopy(model.state_dict())),
    "edited": edit_in_place,
    "converted": lambda model: model.double(),
}


@pytest.mark.parametrize("change", STALE.values(), ids=STALE.keys())
def test_the_cache_refuses_stale_states(nano_classifier, datasets, change):
    rows = torch.tensor(datasets["test"].encoded_texts[:4])
    model = nano_classifier("last_block", seed=0)
    cached = FrozenPrefixCache(model, "last")
    cached.fill(rows)
    with torch.no_grad():
        model.out_head.weight.mul_(2)  # the trained part may change
        cached(rows)
    change(model)
    with pytest.raises(ConfigError, match="build a new cache"):
        cached(rows)
    with pytest.raises(ConfigError, match="build a new cache"):
        cached.fill(rows)


def test_the_cache_stays_where_its_states_fit(monkeypatch):
    free = {"cuda": 10 * GIB, "cpu": 100 * GIB}
    monkeypatch.setattr(runners, "available_memory", lambda device: free[device.type])
    cuda = torch.device("cuda")
    assert cache_storage(2 * GIB, cuda) == cuda
    assert cache_storage(20 * GIB, cuda) == torch.device("cpu")  # served a batch at a time
    with pytest.raises(ConfigError, match=r"needs 200\.0 GiB .* has 100\.0 GiB .*--chapter"):
        cache_storage(200 * GIB, cuda)
    free.update(cuda=None, cpu=None)  # unknown: assume it fits
    assert cache_storage(200 * GIB, cuda) == cuda


@pytest.mark.parametrize("pooling", ["last", "flexible"])
def test_the_cache_estimates_its_memory_before_filling(
    nano_classifier, datasets, monkeypatch, pooling
):
    # Distinct rows: the cache keeps one copy of a repeated message.
    rows = torch.unique(torch.tensor(datasets["train"].encoded_texts), dim=0)
    rows[0] = PAD_TOKEN_ID  # an empty message keeps one position
    lengths = (rows != PAD_TOKEN_ID).sum(dim=1).clamp(min=1)
    positions = rows.numel() if pooling == "last" else int(lengths.sum())
    need = positions * 48 * 8  # emb_dim of gpt2-nano, float64
    monkeypatch.setattr(runners, "available_memory", lambda device: need / runners.MEMORY_SHARE)
    cached = FrozenPrefixCache(nano_classifier("last_block", seed=0).double(), pooling)
    cached.fill(rows[:-1])
    assert cached.storage == torch.device("cpu")
    with pytest.raises(ConfigError, match="needs .* GiB of memory") as refusal:
        cached.fill(rows[-1:], rows[:1])
    message = str(refusal.value)
    assert "\n" not in message and "--chapter" in message
    assert ("--pooling flexible" in message) == (pooling == "last")  # the one that caches less
    monkeypatch.setattr(runners, "available_memory", lambda device: 1000)
    with pytest.raises(ConfigError, match="frozen-prefix cache needs"):
        speed_up(nano_classifier("last_block", seed=0), pooling, datasets=datasets.values())


def test_available_memory_is_read_where_the_system_tells_it(monkeypatch):
    cpu = torch.device("cpu")
    assert available_memory(cpu) is None or available_memory(cpu) > 0

    def no_meminfo(*args, **kwargs):
        raise OSError("no /proc here")

    monkeypatch.setattr(runners, "open", no_meminfo, raising=False)
    monkeypatch.setattr(runners.os, "sysconf", lambda name: 4096, raising=False)
    assert available_memory(cpu) == 4096 * 4096
    monkeypatch.delattr(runners.os, "sysconf", raising=False)
    assert available_memory(cpu) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_states_kept_on_the_host_serve_a_cuda_model(nano_classifier, datasets, monkeypatch):
    monkeypatch.setattr(
        runners, "available_memory", lambda device: 0 if device.type == "cuda" else None
    )
    model = nano_classifier("last_block", seed=0).double().cuda().eval()
    rows = torch.tensor(datasets["test"].encoded_texts[:8])
    cached = FrozenPrefixCache(model, "flexible")
    cached.fill(rows)
    assert cached.storage == torch.device("cpu")
    assert all(state.device.type == "cpu" for state in cached.cache.values())
    rows = rows.cuda()
    with torch.no_grad():
        assert_close(cached(rows), pool_logits(model(rows), rows, "flexible"))


def test_autocast_returns_float32_logits_close_to_float32(nano_classifier):
    model = nano_classifier("last_block", seed=0).eval()
    rows = torch.randint(0, 50000, (2, 12))
    with torch.no_grad():
        mixed = Autocast(PooledModel(model))(rows)
        exact = pool_logits(model(rows), rows, "last")
    assert mixed.dtype == torch.float32
    assert torch.allclose(mixed, exact, atol=0.1)
    assert isinstance(speed_up(copy.deepcopy(model), "last", "bfloat16"), Autocast)


def test_a_repeated_message_is_computed_once(nano_classifier, datasets):
    cached = FrozenPrefixCache(nano_classifier("last_block", seed=0), "flexible")
    rows = torch.tensor(datasets["train"].encoded_texts[:3] * 2)
    computed = []
    run_prefix = cached._run_prefix
    cached._run_prefix = lambda in_idx: computed.append(len(in_idx)) or run_prefix(in_idx)
    cached.fill(rows)
    assert sum(computed) == 3 and len(cached.cache) == 3


def test_every_runner_keeps_the_contract(nano_classifier, datasets):
    model = nano_classifier("last_block", seed=0)
    rows = torch.tensor(datasets["validation"].encoded_texts[:4])
    chapter = TrainSettings(model="gpt2-nano", loop="chapter", pooling="flexible")
    made = [
        PooledModel(model, "flexible"),
        speed_up(model, "flexible", datasets=[datasets["validation"]]),
        speed_up(model, "flexible", "bfloat16"),
        classifier_runner(model, chapter, "bfloat16"),
    ]
    assert [type(runner) for runner in made] == [PooledModel, FrozenPrefixCache, Autocast, Autocast]
    for runner in made:
        assert isinstance(runner, Runner) and runner.model is model
        assert context_length(runner) == context_length(model) == 128
        with torch.no_grad():
            assert classifier_logits(runner, rows, "flexible").shape == (4, 2)
        with pytest.raises(ConfigError, match="the model pools 'flexible', not 'last'"):
            classifier_logits(runner, rows, "last")
