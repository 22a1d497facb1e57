"""Turn a GPT language model into a classifier: a new output head and partial unfreezing."""

import torch
from torch import nn

from gptclassifier.errors import ConfigError
from gptclassifier.model import GPTModel

TRAINABLE_STRATEGIES = ("last_layer", "last_block", "last_two_blocks", "all")


def add_classification_head(model: GPTModel, num_classes: int, seed: int = 123) -> GPTModel:
    """Replace the vocabulary-sized output layer by a seeded `num_classes`-way linear layer."""
    emb_dim = model.out_head.in_features
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.out_head = nn.Linear(emb_dim, num_classes)
    return model


def set_trainable(model: GPTModel, strategy: str = "last_block") -> GPTModel:
    """Freeze the model, then unfreeze the parts that `strategy` names.

    last_layer: the output head only; last_block (the chapter): the last transformer block,
    the final LayerNorm and the head; last_two_blocks: the same with two blocks; all: everything.
    """
    if strategy not in TRAINABLE_STRATEGIES:
        choices = ", ".join(TRAINABLE_STRATEGIES)
        raise ConfigError(f"unknown trainable strategy {strategy!r}: choose one of {choices}")
    blocks = {"last_layer": 0, "last_block": 1, "last_two_blocks": 2}.get(strategy)
    model.requires_grad_(strategy == "all")
    if blocks is not None:
        model.out_head.requires_grad_(True)
        if blocks:
            model.final_norm.requires_grad_(True)
            model.trf_blocks[-blocks:].requires_grad_(True)
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """Return the number of parameters in total and the number that will be trained."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable
