"""The FLOP counter agrees with torch's own counter on the loops it describes, way by way."""

import itertools
from fractions import Fraction

import pandas as pd
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from gptclassifier.data.loaders import SpamDataset, create_data_loaders
from gptclassifier.errors import ConfigError
from gptclassifier.model.gpt import TransformerBlock, model_config
from gptclassifier.model.tokenizer import PAD_TOKEN_ID
from gptclassifier.settings import TrainSettings
from gptclassifier.training.flops import (
    PHASES,
    WAYS,
    Workload,
    batch_width_probabilities,
    block_flops,
    count_flops,
    flop_unit,
    flops_by_way,
    one_position_block_flops,
    plot_flops,
)
from gptclassifier.training.loop import train_classifier
from gptclassifier.training.runners import block_at_positions, speed_up

CFG = model_config("gpt2-nano")
SETTINGS = TrainSettings(num_epochs=2, batch_size=4, eval_freq=3, eval_iter=2)
WIDTH = 10  # every message padded to this many tokens


class IdsTokenizer:
    """Reads a text of space-separated token ids: messages of exactly the lengths a test wants."""

    def encode(self, text, disallowed_special=()):
        return [int(token) for token in text.split()]


def messages(lengths, seed) -> pd.DataFrame:
    """Return messages of random token ids with the given lengths, labelled 0, 1, 0, ..."""
    generator = torch.Generator().manual_seed(seed)
    ids = [torch.randint(0, 50000, (n,), generator=generator).tolist() for n in lengths]
    texts = [" ".join(map(str, row)) for row in ids]
    return pd.DataFrame({"Text": texts, "Label": [i % 2 for i in range(len(lengths))]})


def make_datasets(train, validation, test) -> dict:
    """Return the three splits padded to WIDTH; the test split repeats the first training ones."""
    frames = {"train": messages(train, 1), "validation": messages(validation, 2)}
    frames["test"] = messages(test, 1)  # the same seed: the first training messages again
    return {name: SpamDataset(frame, IdsTokenizer(), WIDTH) for name, frame in frames.items()}


VARIED = ([3, 7, 5, 9, 2, 6, 4, 8, 5, 3, 7], [4, 6, 2, 9, 5], [3, 7, 5])
EQUAL = ([5] * 11, [4] * 5, [5] * 3)  # trimmed batches then have one width, whatever the shuffle


def measured_flops(model, datasets, ideas) -> tuple[int, int]:
    """Return torch's count of the cache's pass and of the training loop, trained as `ideas` say."""
    cache, trim = ideas.get("cache", False), ideas.get("trim", False)
    pooling = "flexible" if trim else "last"
    loaders = create_data_loaders(datasets, SETTINGS.batch_size, trim=trim)
    optimizer = torch.optim.AdamW(model.parameters())
    with sdpa_kernel(SDPBackend.MATH):  # attention as plain matrix products, which torch counts
        with FlopCounterMode(display=False) as once:
            runner = speed_up(model, pooling, datasets=datasets.values()) if cache else model
        with FlopCounterMode(display=False) as loop:
            train_classifier(
                runner, loaders["train"], loaders["validation"], optimizer, "cpu",
                SETTINGS.num_epochs, SETTINGS.eval_freq, SETTINGS.eval_iter, pooling,
                progress=False,
            )  # fmt: skip
    return once.get_total_flops(), loop.get_total_flops()


@pytest.mark.parametrize(
    ("lengths", "ideas"),
    [
        (VARIED, {}),  # the chapter's loop
        (VARIED, WAYS["+ one position through the last block"]),  # the fast loop's exact mode
        (EQUAL, WAYS["+ padding trimmed"]),  # the fast loop with flexible pooling
        (EQUAL, {"trim": True}),  # the chapter's loop with flexible pooling and trimmed batches
    ],
)
def test_count_flops_matches_torchs_count_of_the_real_loop(nano_classifier, lengths, ideas):
    datasets = make_datasets(*lengths)
    counted = count_flops(Workload.of(datasets, SETTINGS), CFG, num_frozen=2, **ideas)
    once, loop = measured_flops(nano_classifier("last_block", seed=0), datasets, ideas)
    assert once > 0 if ideas.get("cache") else once == 0
    assert counted["frozen blocks, once per message"] == once
    assert sum(counted.values()) - once == pytest.approx(loop, rel=1e-12)


def test_the_frozen_blocks_are_counted_where_torch_counts_them(nano_classifier):
    model = nano_classifier("last_block", seed=0)
    inputs = torch.tensor(make_datasets(*VARIED)["train"].encoded_texts[:4])
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(inputs)
    per_module = counter.get_flop_counts()
    for name in ("GPTModel.trf_blocks.0", "GPTModel.trf_blocks.2"):
        assert sum(per_module[name].values()) == 4 * block_flops(CFG["emb_dim"], WIDTH)
    assert sum(per_module["GPTModel.out_head"].values()) == 4 * WIDTH * 2 * CFG["emb_dim"] * 2


def test_block_flops_match_torchs_count_of_one_block_and_of_one_position():
    torch.manual_seed(0)
    block, x = TransformerBlock(CFG), torch.randn(3, 6, CFG["emb_dim"])
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as whole:
        block(x)
    with FlopCounterMode(display=False) as one:
        block_at_positions(block, x, torch.tensor([5, 2, 0]))
    dim, heads = CFG["emb_dim"], CFG["n_heads"]
    assert whole.get_total_flops() == 3 * block_flops(dim, 6)
    assert one.get_total_flops() == 3 * one_position_block_flops(dim, 6, heads)
    # GPT-2 small at 120 tokens, by hand: 120 x (24 x 768^2 + 4 x 120 x 768), and once
    # 24 x 768^2 plus 4 x 12 heads x 120 x 768: one position costs 1/94 of the whole block.
    assert block_flops(768, 120) == 1_742_929_920
    assert one_position_block_flops(768, 120, heads=12) == 18_579_456


def test_batch_width_probabilities_match_every_possible_batch():
    lengths = [4, 1, 9, 4, 7, 2, 9]
    batches = list(itertools.combinations(lengths, 3))
    expected = {}
    for batch in batches:
        expected[max(batch)] = expected.get(max(batch), 0) + Fraction(1, len(batches))
    assert batch_width_probabilities(lengths, 3) == pytest.approx(
        {width: float(share) for width, share in expected.items()}
    )


def test_workload_reads_real_lengths_and_counts_repeated_messages_once():
    workload = Workload.of(make_datasets(*VARIED), SETTINGS)
    assert workload.train_lengths == tuple(VARIED[0])
    assert workload.val_lengths == tuple(VARIED[1])
    assert sorted(workload.distinct_lengths) == sorted(VARIED[0] + VARIED[1])  # test repeats train
    assert workload.pad_to == WIDTH
    assert (workload.num_epochs, workload.batch_size) == (2, 4)


def test_an_empty_message_counts_one_token():
    dataset = SpamDataset(messages([0, 3], 1), IdsTokenizer(), WIDTH)
    workload = Workload.of({"train": dataset, "validation": dataset}, SETTINGS)
    assert workload.train_lengths == (1, 3)
    assert sorted(workload.distinct_lengths) == [1, 3]
    assert dataset.encoded_texts[0] == [PAD_TOKEN_ID] * WIDTH


def test_each_idea_removes_work_and_none_changes_what_it_does_not_touch():
    by_way = flops_by_way(Workload.of(make_datasets(*VARIED), SETTINGS), CFG, num_frozen=2)
    chapter, cached, one, trimmed = by_way.values()
    totals = [sum(phases.values()) for phases in by_way.values()]
    assert totals == sorted(totals, reverse=True) and len(set(totals)) == 4
    assert cached["frozen blocks, training steps"] == cached["frozen blocks, evaluation"] == 0
    assert chapter["frozen blocks, once per message"] == 0
    for phase in ("trainable block, forward", "output head, forward", "backward"):
        assert cached[phase] == chapter[phase]
    assert one["frozen blocks, once per message"] == cached["frozen blocks, once per message"]
    assert trimmed["frozen blocks, once per message"] < one["frozen blocks, once per message"]


def test_count_flops_needs_a_trainable_block():
    workload = Workload.of(make_datasets(*VARIED), SETTINGS)
    with pytest.raises(ConfigError, match="3 of 3 frozen"):
        count_flops(workload, CFG, num_frozen=3)


def test_flop_unit_picks_the_largest_unit_not_above_the_number():
    assert flop_unit(1.57e14) == (1e12, "TFLOP")
    assert flop_unit(999.0) == (1, "FLOP")
    assert flop_unit(0.5) == (1, "FLOP")


def test_plot_flops_stacks_every_phase_to_each_ways_total():
    by_way = flops_by_way(Workload.of(make_datasets(*VARIED), SETTINGS), CFG, num_frozen=2)
    ax = plot_flops(by_way).axes[0]
    scale = flop_unit(sum(by_way["the chapter's loop"].values()))[0]
    ends = {}
    for patch in ax.patches:
        row = round(patch.get_y() + patch.get_height() / 2)
        ends[row] = max(ends.get(row, 0.0), patch.get_x() + patch.get_width())
    ways = list(by_way)[::-1]  # drawn from the bottom up: the chapter's loop on top
    for row, way in enumerate(ways):
        assert ends[row] == pytest.approx(sum(by_way[way].values()) / scale)
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert set(legend) <= set(PHASES) and "backward" in legend
