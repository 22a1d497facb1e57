"""The classification head, partial unfreezing and parameter counts of section 6.5."""

import pytest
import torch

from gptclassifier.errors import ConfigError
from gptclassifier.model.classifier import add_classification_head, count_parameters, set_trainable
from gptclassifier.model.gpt import GPTModel, model_config
from gptclassifier.settings import TRAINABLE_STRATEGIES


def names_of(*modules_with_prefixes) -> set[str]:
    """Return the full parameter names of (prefix, module) pairs, e.g. ("out_head", head)."""
    return {
        f"{prefix}.{name}"
        for prefix, module in modules_with_prefixes
        for name, _ in module.named_parameters()
    }


def expected_trainable(model: GPTModel, strategy: str) -> set[str]:
    """Return the names of the parameters that `strategy` should train, from the chapter."""
    if strategy == "all":
        return {name for name, _ in model.named_parameters()}
    if strategy == "lora":  # only the low-rank matrices beside the frozen layers
        return {name for name, _ in model.named_parameters() if ".lora." in name}
    parts = [("out_head", model.out_head)]
    blocks = {"last_layer": 0, "last_block": 1, "last_two_blocks": 2}[strategy]
    if blocks:
        parts.append(("final_norm", model.final_norm))
        last = len(model.trf_blocks)
        parts += [(f"trf_blocks.{i}", model.trf_blocks[i]) for i in range(last - blocks, last)]
    return names_of(*parts)


@pytest.fixture(scope="module")
def gpt2_small_classifier() -> GPTModel:
    """Return gpt2-small with the chapter's 2-class head and `last_block` unfrozen."""
    torch.manual_seed(123)
    model = add_classification_head(GPTModel(model_config("gpt2-small")), 2, seed=123)
    return set_trainable(model, "last_block")


def test_gpt2_small_with_a_two_class_head_has_the_books_parameter_counts(gpt2_small_classifier):
    assert count_parameters(gpt2_small_classifier) == (124_441_346, 7_090_946)
    assert gpt2_small_classifier.out_head.weight.shape == (2, 768)
    assert gpt2_small_classifier.out_head.bias.shape == (2,)


@pytest.mark.parametrize("strategy", TRAINABLE_STRATEGIES)
def test_each_strategy_trains_exactly_the_modules_it_names(nano_classifier, strategy):
    model = set_trainable(nano_classifier(), strategy)
    expected = expected_trainable(model, strategy)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == expected
    independent_count = sum(p.numel() for name, p in model.named_parameters() if name in expected)
    total = sum(p.numel() for p in model.parameters())
    assert count_parameters(model) == (total, independent_count)


def test_strategies_are_the_five_the_project_documents():
    assert set(TRAINABLE_STRATEGIES) == {
        "last_layer", "last_block", "last_two_blocks", "all", "lora"
    }  # fmt: skip


def test_last_layer_trains_only_the_head_parameters(nano_classifier):
    model = set_trainable(nano_classifier(num_classes=3), "last_layer")
    head_size = 48 * 3 + 3
    assert count_parameters(model)[1] == head_size


def test_set_trainable_refreezes_after_all(nano_classifier):
    model = set_trainable(set_trainable(nano_classifier(), "all"), "last_layer")
    assert not model.tok_emb.weight.requires_grad
    assert not model.trf_blocks[-1].att.W_query.weight.requires_grad
    assert model.out_head.weight.requires_grad


def test_head_with_the_same_seed_has_identical_weights(nano_classifier):
    first, second = nano_classifier(seed=1, head_seed=1), nano_classifier(seed=1, head_seed=1)
    torch.manual_seed(999)  # the body differs, but the head depends only on its seed
    third = add_classification_head(GPTModel(model_config("gpt2-nano")), 2, seed=1)
    for other in (second, third):
        assert torch.equal(first.out_head.weight, other.out_head.weight)
        assert torch.equal(first.out_head.bias, other.out_head.bias)


def test_head_with_a_different_seed_has_different_weights():
    torch.manual_seed(0)
    body = GPTModel(model_config("gpt2-nano"))
    first = add_classification_head(body, 2, seed=1).out_head.weight.detach().clone()
    second = add_classification_head(body, 2, seed=2).out_head.weight.detach().clone()
    assert not torch.equal(first, second)


def test_adding_a_head_does_not_disturb_the_global_random_state():
    model = GPTModel(model_config("gpt2-nano"))
    torch.manual_seed(42)
    add_classification_head(model, 2, seed=7)
    after_head = torch.rand(5)
    torch.manual_seed(42)
    without_head = torch.rand(5)
    assert torch.equal(after_head, without_head)


def test_unknown_strategy_raises_config_error_listing_the_choices(nano_classifier):
    with pytest.raises(ConfigError, match="last_few") as raised:
        set_trainable(nano_classifier(), "last_few")
    for choice in ("last_layer", "last_block", "last_two_blocks", "all"):
        assert choice in str(raised.value)


@pytest.mark.parametrize("strategy", ["last_layer", "last_block", "all"])
def test_a_training_step_changes_only_the_trainable_parameters(nano_classifier, strategy):
    model = set_trainable(nano_classifier(), strategy)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    inputs, targets = torch.randint(0, 50257, (4, 12)), torch.tensor([0, 1, 1, 0])
    loss = torch.nn.functional.cross_entropy(model(inputs)[:, -1, :], targets)
    loss.backward()
    optimizer.step()
    for name, p in model.named_parameters():
        if name in trainable:
            assert not torch.equal(p, before[name]), f"{name} should have changed"
        else:
            assert torch.equal(p, before[name]), f"{name} should be frozen"
