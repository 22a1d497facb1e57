"""LoRA as appendix E builds it: the book's parameter count, the update, training and merging."""

import copy

import torch
from torch import nn

from gptclassifier.model.classifier import add_classification_head, count_parameters, set_trainable
from gptclassifier.model.gpt import GPTModel, model_config
from gptclassifier.model.lora import LinearWithLoRA, LoRALayer, merge_lora, replace_linear_with_lora


def lora_parameters_by_hand(emb_dim: int, n_layers: int, num_classes: int, rank: int) -> int:
    """Count A (in x rank) and B (rank x out) beside every linear layer of a GPT classifier."""
    attention = 4 * rank * (emb_dim + emb_dim)  # query, key, value, out_proj
    feed_forward = 2 * rank * (emb_dim + 4 * emb_dim)  # expand, then project back
    return n_layers * (attention + feed_forward) + rank * (emb_dim + num_classes)


def test_lora_on_gpt2_small_trains_the_books_2_666_528_parameters():
    with torch.device("meta"):  # shapes only: no memory, no time
        model = add_classification_head(GPTModel(model_config("gpt2-small")), 2)
        set_trainable(model, "lora", lora_rank=16, lora_alpha=16)
    total, trainable = count_parameters(model)
    assert trainable == 2_666_528 == lora_parameters_by_hand(768, 12, 2, 16)
    assert total == 124_441_346 + trainable  # the base and its new head are all still there


# The gpt2-nano classifiers here: seed 0, LoRA of rank 4 and alpha 2 beside every linear layer,
# in float64.
LORA = {"seed": 0, "lora_rank": 4, "lora_alpha": 2.0}


def test_every_linear_layer_gets_one_lora_update_and_nothing_else_trains(nano_classifier):
    model = nano_classifier("lora", **LORA).double()
    wrapped = [m for m in model.modules() if isinstance(m, LinearWithLoRA)]
    assert len(wrapped) == 3 * 6 + 1  # six per block (q, k, v, out_proj, two feed-forward), head
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert {id(m) for m in linear} == {id(m.linear) for m in wrapped}  # none left unwrapped
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {name for name, _ in model.named_parameters() if ".lora." in name}
    replace_linear_with_lora(model, 4, 2.0)  # again: layers already wrapped stay as they are
    assert len([m for m in model.modules() if isinstance(m, LinearWithLoRA)]) == len(wrapped)


def test_lora_adds_alpha_x_a_b_to_the_layer_and_starts_at_zero():
    torch.manual_seed(1)
    linear = nn.Linear(5, 3).double()
    layer = LinearWithLoRA(linear, rank=2, alpha=0.5).double()
    x = torch.randn(4, 5, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(layer(x), linear(x))  # B starts at zero
        layer.lora.B.normal_()
        by_hand = x @ linear.weight.T + linear.bias + 0.5 * (x @ layer.lora.A @ layer.lora.B)
        torch.testing.assert_close(layer(x), by_hand)


def test_the_update_is_a_weight_of_rank_at_most_r():
    torch.manual_seed(2)
    lora = LoRALayer(in_dim=10, out_dim=7, rank=3, alpha=2.0).double()
    with torch.no_grad():
        lora.B.normal_()
    update = lora.weight_update()
    assert update.shape == (7, 10)  # nn.Linear's layout: out x in
    assert torch.linalg.matrix_rank(update) == 3
    x = torch.randn(2, 10, dtype=torch.float64)
    torch.testing.assert_close(x @ update.T, lora(x))


def test_a_training_step_changes_only_the_lora_matrices(nano_classifier):
    model = nano_classifier("lora", **LORA).double()
    before = copy.deepcopy(model.state_dict())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    logits = model(torch.randint(0, 50257, (2, 6)))[:, -1]
    nn.functional.cross_entropy(logits, torch.tensor([0, 1])).backward()
    optimizer.step()
    changed = {name for name, t in model.state_dict().items() if not torch.equal(t, before[name])}
    assert changed and all(".lora.B" in name or ".lora.A" in name for name in changed)
    assert any(name.endswith(".lora.B") for name in changed)


def test_merging_folds_the_updates_into_plain_linear_layers(nano_classifier):
    model = nano_classifier("lora", **LORA).double()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoRALayer):
                module.B.normal_(std=0.1)  # a trained-looking update
    tokens = torch.randint(0, 50257, (3, 9))
    with torch.no_grad():
        expected = model(tokens)
        merged = merge_lora(model)
        actual = merged(tokens)
    assert not any(isinstance(m, LinearWithLoRA) for m in merged.modules())
    plain = GPTModel(model_config("gpt2-nano"))
    plain.out_head = nn.Linear(48, 2)
    assert merged.state_dict().keys() == plain.state_dict().keys()
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)
    assert (actual - plain.double()(tokens)).abs().max() > 1e-3  # not trivially the base
