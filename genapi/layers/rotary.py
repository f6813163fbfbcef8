"""Rotary position embeddings in Hugging Face's half-split form, full or partial."""

from __future__ import annotations

import math

import torch
from torch import nn

from genapi.layers.config import RopeScaling, RotaryConfig


def inverse_frequencies(config: RotaryConfig, rotary_dim: int) -> torch.Tensor:
    """Per-pair inverse frequencies [rotary_dim / 2] in float32, scaled as `config` asks."""
    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.int64).float() / rotary_dim
    inv_freq = 1.0 / (config.theta**exponents)
    if config.scaling is not None:
        inv_freq = _scale_frequencies(inv_freq, config.scaling)
    return inv_freq


def _scale_frequencies(inv_freq: torch.Tensor, scaling: RopeScaling) -> torch.Tensor:
    if scaling.kind == "linear":
        return inv_freq / scaling.factor

    # "llama3": long wavelengths are slowed by `factor`, short ones kept, and the band in
    # between blends the two so that the frequency curve stays continuous.
    low_freq_wavelen = scaling.original_max_positions / scaling.low_freq_factor
    high_freq_wavelen = scaling.original_max_positions / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (scaling.original_max_positions / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


class RotaryEmbedding(nn.Module):
    """Computes cos/sin tables for positions and rotates the leading `rotary_dim` of each head."""

    def __init__(self, config: RotaryConfig, *, head_dim: int):
        super().__init__()
        self.config = config
        self.rotary_dim = config.rotary_dim(head_dim)
        # Derived from the config, not a weight: kept out of the state dict.
        self.register_buffer("inv_freq", inverse_frequencies(config, self.rotary_dim), False)

    def reset_buffers(self, *, device: torch.device | str | None = None) -> None:
        """Recompute `inv_freq` on `device` (default: where it is), e.g. for a meta model."""
        device = self.inv_freq.device if device is None else device
        self.inv_freq = inverse_frequencies(self.config, self.rotary_dim).to(device)

    def forward(self, input_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin tables for positions `input_pos` [T], each [T, rotary_dim], float32."""
        freqs = input_pos.float()[:, None] * self.inv_freq[None, :]  # [T, R/2]
        angles = torch.cat((freqs, freqs), dim=-1)  # [T, R]
        return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, T, H, D] by cos/sin [T, R]; dimensions past R pass through unchanged."""
    rotary_dim = cos.shape[-1]
    cos = cos[:, None, :].to(x.dtype)  # [T, 1, R]
    sin = sin[:, None, :].to(x.dtype)
    if rotary_dim == x.shape[-1]:
        return x * cos + _rotate_half(x) * sin
    x_rot, x_pass = x[..., :rotary_dim], x[..., rotary_dim:]
    return torch.cat((x_rot * cos + _rotate_half(x_rot) * sin, x_pass), dim=-1)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
