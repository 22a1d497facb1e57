"""LoRA as appendix E of the book builds it: a trainable low-rank update beside each layer."""

import math

import torch
from torch import nn


class LoRALayer(nn.Module):
    """The update alpha * x A B: A (in_dim x rank) starts random, B (rank x out_dim) at zero."""

    def __init__(self, in_dim: int, out_dim: int, rank: int, alpha: float):
        super().__init__()
        self.A = nn.Parameter(torch.empty(in_dim, rank))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))  # as nn.Linear initialises its weight
        self.B = nn.Parameter(torch.zeros(rank, out_dim))  # so training starts at the base model
        self.alpha = alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.alpha * (x @ self.A @ self.B)

    def weight_update(self) -> torch.Tensor:
        """Return the update as an (out_dim, in_dim) matrix, the layout of nn.Linear's weight."""
        return self.alpha * (self.A @ self.B).T


class LinearWithLoRA(nn.Module):
    """A linear layer plus its LoRA update: linear(x) + alpha * x A B."""

    def __init__(self, linear: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.linear = linear
        self.lora = LoRALayer(linear.in_features, linear.out_features, rank, alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.lora(x)


def replace_linear_with_lora(model: nn.Module, rank: int, alpha: float) -> nn.Module:
    """Wrap every nn.Linear inside `model` in a LinearWithLoRA (layers already wrapped stay)."""
    for name, module in model.named_children():
        if isinstance(module, nn.Linear):
            setattr(model, name, LinearWithLoRA(module, rank, alpha))
        elif not isinstance(module, LinearWithLoRA):
            replace_linear_with_lora(module, rank, alpha)
    return model


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold each LoRA update into its layer's weight, leaving plain nn.Linear layers."""
    for name, module in model.named_children():
        if isinstance(module, LinearWithLoRA):
            merged = module.linear
            merged.weight.copy_(merged.weight.double() + module.lora.weight_update().double())
            setattr(model, name, merged)
        else:
            merge_lora(module)
    return model
