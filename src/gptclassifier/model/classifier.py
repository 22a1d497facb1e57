"""From a language model to a classifier: a new output head, what trains, the causal mask."""

import torch
from torch import nn

from gptclassifier.errors import check_choice
from gptclassifier.model.gpt import GPTModel
from gptclassifier.model.lora import replace_linear_with_lora
from gptclassifier.settings import TRAINABLE_STRATEGIES, TrainSettings


def add_classification_head(model: GPTModel, num_classes: int, seed: int = 123) -> GPTModel:
    """Replace the vocabulary-sized output layer by a seeded `num_classes`-way linear layer."""
    emb_dim = model.out_head.in_features
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.out_head = nn.Linear(emb_dim, num_classes)
    return model


def set_trainable(
    model: GPTModel, strategy: str = "last_block", lora_rank: int = 16, lora_alpha: float = 16
) -> GPTModel:
    """Freeze the model, then unfreeze the parts that `strategy` names.

    last_layer: the output head only; last_block (the chapter): the last transformer block,
    the final LayerNorm and the head; last_two_blocks: the same with two blocks; all: everything;
    lora (appendix E): nothing of the model, but a LoRA update of `lora_rank` and `lora_alpha`
    beside every linear layer, the head's included.
    """
    check_choice("trainable strategy", strategy, TRAINABLE_STRATEGIES)
    blocks = {"last_layer": 0, "last_block": 1, "last_two_blocks": 2}.get(strategy)
    model.requires_grad_(strategy == "all")
    if strategy == "lora":
        replace_linear_with_lora(model, lora_rank, lora_alpha)
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


def set_causal_mask(model: GPTModel, enabled: bool = True) -> GPTModel:
    """Let each token attend only to itself and earlier tokens (GPT-2's way), or to all tokens."""
    for block in model.trf_blocks:
        block.att.causal = enabled
    return model


def has_causal_mask(model: GPTModel) -> bool:
    """Return whether every block of `model` lets each token attend only to earlier ones."""
    return all(block.att.causal for block in model.trf_blocks)


def adapt_for_classification(
    model: GPTModel, settings: TrainSettings, num_classes: int
) -> GPTModel:
    """Give a base model the run's head, trainable part and attention mask.

    The head and the LoRA matrices are drawn from `settings.seed`, without touching the global
    random generator.
    """
    add_classification_head(model, num_classes, settings.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        set_trainable(model, settings.trainable, settings.lora_rank, settings.lora_alpha)
    return set_causal_mask(model, settings.causal_mask)
