"""The frozen blocks packed for oneDNN compute what the blocks compute under bfloat16 autocast."""

import copy

import pytest
import torch

from gptclassifier.model.classifier import set_causal_mask
from gptclassifier.model.lora import replace_linear_with_lora
from gptclassifier.training import packed_blocks
from gptclassifier.training.packed_blocks import PackedBlocks, can_pack, onednn_bfloat16
from gptclassifier.training.runners import FrozenPrefixCache

CPU = torch.device("cpu")
needs_onednn = pytest.mark.skipif(
    not can_pack([], CPU), reason="torch's oneDNN does not multiply bfloat16 on this CPU"
)


def frozen_part(model):
    """Return the frozen blocks of a last-block classifier."""
    return model.trf_blocks[:2]


@needs_onednn
def test_packed_blocks_compute_the_blocks_under_autocast(nano_classifier):
    blocks = frozen_part(nano_classifier("last_block", seed=0))
    x = torch.randn(5, 17, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        with torch.autocast("cpu", torch.bfloat16):
            mixed = blocks(x)
        exact = blocks(x)
    packed = PackedBlocks(blocks)(x)
    assert packed.dtype == mixed.dtype == torch.float32  # the shortcut stays float32
    # bfloat16 keeps 8 bits of each product: both differ from float32 by about 1%, and from
    # each other by as much (GELU and the query, key and value round once, not twice)
    scale = exact.abs().max()
    assert (packed - exact).abs().max() < 0.03 * scale
    assert (packed - mixed).abs().max() < 0.03 * scale
    assert not torch.equal(packed, exact)  # it did compute in bfloat16


@needs_onednn
def test_each_message_is_computed_alone(nano_classifier):
    blocks = frozen_part(nano_classifier("last_block", seed=0))
    x = torch.randn(4, 9, 48, generator=torch.Generator().manual_seed(1))
    packed = PackedBlocks(blocks)
    together = packed(x)
    for row in range(len(x)):  # causal and per message: no state leaks across rows or forward
        torch.testing.assert_close(packed(x[row : row + 1, :6]), together[row : row + 1, :6])


def test_only_plain_causal_blocks_on_a_cpu_are_packed(nano_classifier):
    model = nano_classifier("last_block", seed=0)
    assert can_pack(frozen_part(model), CPU) == onednn_bfloat16()
    assert not can_pack(frozen_part(model), torch.device("cuda"))
    assert not can_pack(frozen_part(set_causal_mask(copy.deepcopy(model), False)), CPU)
    assert not can_pack(frozen_part(replace_linear_with_lora(copy.deepcopy(model), 2, 1)), CPU)


@pytest.mark.parametrize("missing", ["oneDNN", "bfloat16"])
def test_without_onednn_bfloat16_nothing_is_packed(nano_classifier, monkeypatch, missing):
    if missing == "oneDNN":
        monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    else:  # an AVX2 CPU: torch's oneDNN refuses bfloat16 products there
        monkeypatch.setattr(packed_blocks, "ONEDNN", FakeOneDNN())
    assert not onednn_bfloat16()
    assert not can_pack(frozen_part(nano_classifier("last_block", seed=0)), CPU)


class FakeOneDNN:
    """torch.ops.mkldnn on a CPU without AVX-512: the operators, but no bfloat16."""

    def __getattr__(self, name):
        return getattr(torch.ops.mkldnn, name)

    @staticmethod
    def _is_mkldnn_bf16_supported():
        return False


@needs_onednn
@pytest.mark.parametrize("bfloat16", [False, True])
def test_the_cache_fills_packed_only_under_bfloat16(nano_classifier, monkeypatch, bfloat16):
    made = []

    class Counted(PackedBlocks):
        def __init__(self, blocks):
            made.append(len(blocks))
            super().__init__(blocks)

    monkeypatch.setattr("gptclassifier.training.runners.PackedBlocks", Counted)
    cached = FrozenPrefixCache(nano_classifier("last_block", seed=0), "flexible")
    rows = torch.randint(0, 50000, (12, 20), generator=torch.Generator().manual_seed(2))
    with torch.autocast("cpu", torch.bfloat16, enabled=bfloat16):
        cached.fill(rows)
    assert made == ([2] if bfloat16 else [])
    assert cached.packed is None  # the packed copy is dropped once the cache is full


@needs_onednn
def test_packed_and_unpacked_fills_keep_close_states(nano_classifier, monkeypatch):
    rows = torch.randint(0, 50000, (12, 20), generator=torch.Generator().manual_seed(3))
    model = nano_classifier("last_block", seed=0)
    states = []
    for packable in (True, False):
        monkeypatch.setattr(
            "gptclassifier.training.runners.can_pack",
            packed_blocks.can_pack if packable else lambda blocks, device: False,
        )
        cached = FrozenPrefixCache(model, "flexible")
        with torch.autocast("cpu", torch.bfloat16):
            cached.fill(rows)
        states.append(torch.cat([cached.cache[key] for key in sorted(cached.cache)]))
    packed, unpacked = states
    assert (packed - unpacked).abs().max() < 0.03 * unpacked.abs().max()
