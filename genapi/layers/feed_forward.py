"""Position-wise feed-forward networks: gated (SwiGLU, GeGLU) and plain MLP."""

from __future__ import annotations

import torch
from torch import nn

from genapi.layers.config import Activation, FeedForwardConfig


def activation_fn(kind: Activation):
    """The elementwise function named by `kind`."""
    if kind == "silu":
        return nn.functional.silu
    if kind == "gelu":
        return nn.functional.gelu
    if kind == "gelu_tanh":
        return lambda x: nn.functional.gelu(x, approximate="tanh")
    if kind == "relu":
        return nn.functional.relu
    raise ValueError(f"activation={kind!r} is not one of 'silu', 'gelu', 'gelu_tanh', 'relu'")


class FeedForward(nn.Module):
    """gated: down(act(gate(x)) * up(x)); mlp: down(act(up(x)))."""

    def __init__(self, config: FeedForwardConfig, *, d_model: int):
        super().__init__()
        self.gated = config.kind == "gated"
        self.act = activation_fn(config.activation)
        if self.gated:
            self.gate_proj = nn.Linear(d_model, config.hidden_dim, bias=config.bias)
        self.up_proj = nn.Linear(d_model, config.hidden_dim, bias=config.bias)
        self.down_proj = nn.Linear(config.hidden_dim, d_model, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))
        return self.down_proj(self.act(self.up_proj(x)))
