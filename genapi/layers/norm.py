"""RMSNorm and LayerNorm over the last dimension, computed in float32."""

from __future__ import annotations

import torch
from torch import nn

from genapi.layers.config import NormConfig


class RMSNorm(nn.Module):
    """x / rms(x) * w, or * (1 + w) when the weight is stored zero-centred (Gemma)."""

    def __init__(self, dim: int, *, eps: float = 1e-6, zero_centered: bool = False):
        super().__init__()
        self.eps = eps
        self.zero_centered = zero_centered
        # A zero-centred weight starts at 0 so that a fresh norm is the identity scale.
        self.weight = nn.Parameter(torch.zeros(dim) if zero_centered else torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.zero_centered:
            return (x * (1.0 + self.weight.float())).to(dtype)
        return self.weight * x.to(dtype)


class LayerNorm(nn.Module):
    """Mean-centred normalisation with a scale (w or 1 + w) and a bias."""

    def __init__(self, dim: int, *, eps: float = 1e-5, zero_centered: bool = False):
        super().__init__()
        self.eps = eps
        self.zero_centered = zero_centered
        self.weight = nn.Parameter(torch.zeros(dim) if zero_centered else torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = 1.0 + self.weight if self.zero_centered else self.weight
        return nn.functional.layer_norm(x, (x.shape[-1],), weight, self.bias, self.eps)


def build_norm(config: NormConfig, dim: int) -> nn.Module:
    """The norm module described by `config`, over a last dimension of `dim`."""
    cls = RMSNorm if config.kind == "rms_norm" else LayerNorm
    return cls(dim, eps=config.eps, zero_centered=config.zero_centered)
