"""Pooling: which position's logits classify each message (section 6.6 and the flexible way)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gptclassifier.errors import ConfigError
from gptclassifier.training.pooling import pool_logits, pooled_positions
from gptclassifier.training.runners import classifier_logits

PAD = 50256


def hand_built_batch():
    """Return logits whose value encodes (row, position), and right-padded inputs."""
    rows, positions = torch.meshgrid(torch.arange(3), torch.arange(5), indexing="ij")
    logits = torch.stack([rows * 10.0 + positions, -(rows * 10.0 + positions)], dim=-1)
    inputs = torch.tensor(
        [
            [11, 12, PAD, PAD, PAD],  # last real token at position 1
            [21, 22, 23, 24, 25],  # no padding: position 4
            [31, PAD, PAD, PAD, PAD],  # position 0
        ]
    )
    return logits, inputs


def test_last_pooling_picks_the_last_position():
    logits, inputs = hand_built_batch()
    assert pool_logits(logits, inputs, "last")[:, 0].tolist() == [4.0, 14.0, 24.0]


def test_first_pooling_picks_the_first_position():
    logits, inputs = hand_built_batch()
    assert pool_logits(logits, inputs, "first")[:, 0].tolist() == [0.0, 10.0, 20.0]


def test_flexible_pooling_picks_the_last_real_token_of_each_row():
    logits, inputs = hand_built_batch()
    pooled = pool_logits(logits, inputs, "flexible")
    assert pooled.shape == (3, 2)
    assert pooled[:, 0].tolist() == [1.0, 14.0, 20.0]
    assert pooled[:, 1].tolist() == [-1.0, -14.0, -20.0]


def test_mean_pooling_averages_every_position_padding_included():
    logits, inputs = hand_built_batch()
    # row r holds 10r + 0..4 at its five positions: their mean is 10r + 2
    assert pool_logits(logits, inputs, "mean")[:, 0].tolist() == [2.0, 12.0, 22.0]
    with pytest.raises(ConfigError, match="no one position"):
        pooled_positions(inputs, "mean")


def test_unknown_pooling_raises_config_error_listing_the_choices():
    logits, inputs = hand_built_batch()
    with pytest.raises(ConfigError, match="median") as raised:
        pool_logits(logits, inputs, "median")
    for choice in ("last", "first", "flexible", "mean"):
        assert choice in str(raised.value)


def with_padding(ids: list[int], pads: int) -> torch.Tensor:
    """Return one message followed by `pads` padding tokens, as a batch of one."""
    return torch.tensor([ids + [PAD] * pads])


def test_flexible_pooling_does_not_depend_on_the_padding(nano_classifier, tokenizer):
    model = nano_classifier()
    ids = tokenizer.encode("WINNER!! Claim your free prize now, call 0800 123 456")
    with torch.no_grad():
        results = [
            classifier_logits(model, with_padding(ids, pads), "flexible") for pads in (0, 5, 50)
        ]
    for other in results[1:]:
        torch.testing.assert_close(other, results[0], atol=1e-5, rtol=0)


def test_last_pooling_changes_with_the_padding(nano_classifier, tokenizer):
    model = nano_classifier()
    ids = tokenizer.encode("WINNER!! Claim your free prize now, call 0800 123 456")
    with torch.no_grad():
        unpadded = classifier_logits(model, with_padding(ids, 0), "last")
        padded = classifier_logits(model, with_padding(ids, 50), "last")
        flexible = classifier_logits(model, with_padding(ids, 0), "flexible")
    torch.testing.assert_close(unpadded, flexible)  # without padding the two agree
    assert not torch.allclose(unpadded, padded, atol=1e-3)


LENGTHS = st.lists(st.integers(1, 12), min_size=1, max_size=5)


def padded_batch(lengths: list[int], width: int) -> torch.Tensor:
    """Return messages of the given lengths (token ids 1, 2, ...) right-padded to `width`."""
    return torch.tensor([list(range(1, n + 1)) + [PAD] * (width - n) for n in lengths])


@given(lengths=LENGTHS, extra=st.integers(0, 6), more=st.integers(1, 6))
def test_flexible_pooling_reads_the_last_real_token_for_any_padding(lengths, extra, more):
    width = max(lengths) + extra
    logits = torch.randn(len(lengths), width + more, 3)
    rows = torch.arange(len(lengths))
    expected = logits[rows, torch.tensor(lengths) - 1]
    narrow = pool_logits(logits[:, :width], padded_batch(lengths, width), "flexible")
    wide = pool_logits(logits, padded_batch(lengths, width + more), "flexible")
    assert torch.equal(narrow, expected) and torch.equal(wide, expected)
    assert torch.equal(
        pool_logits(logits, padded_batch(lengths, width + more), "last"), logits[:, -1]
    )
    assert torch.equal(
        pool_logits(logits, padded_batch(lengths, width + more), "first"), logits[:, 0]
    )


@settings(max_examples=25)
@given(
    messages=st.lists(
        st.lists(st.integers(0, PAD - 1), min_size=1, max_size=20), min_size=1, max_size=4
    ),
    pads=st.integers(1, 30),
)
def test_a_models_flexible_logits_ignore_any_amount_of_padding(nano_classifier, messages, pads):
    model = nano_classifier()
    width = max(map(len, messages))

    def batch(extra):
        return torch.tensor([ids + [PAD] * (width + extra - len(ids)) for ids in messages])

    with torch.no_grad():
        tight = classifier_logits(model, batch(0), "flexible")
        loose = classifier_logits(model, batch(pads), "flexible")
        alone = torch.cat(
            [classifier_logits(model, torch.tensor([ids]), "flexible") for ids in messages]
        )
    torch.testing.assert_close(loose, tight, atol=1e-5, rtol=0)
    torch.testing.assert_close(alone, tight, atol=1e-5, rtol=0)
