"""A decoder block with sequential or parallel residuals and optional post-norms."""

from __future__ import annotations

import torch
from torch import nn

from genapi.layers.attention import CausalSelfAttention
from genapi.layers.config import BlockConfig, KVLayout
from genapi.layers.feed_forward import FeedForward
from genapi.layers.norm import build_norm


class DecoderBlock(nn.Module):
    """sequential: h = x + attn(n1(x)); out = h + ff(n2(h)), each branch optionally post-normed.

    parallel: out = x + attn(n1(x)) + ff(n1(x)), as Phi-2 computes it.
    """

    def __init__(self, config: BlockConfig, *, d_model: int):
        super().__init__()
        self.config = config
        self.pre_attention_norm = build_norm(config.pre_attention_norm, d_model)
        self.attention = CausalSelfAttention(config.attention, d_model=d_model)
        if config.post_attention_norm is not None:
            self.post_attention_norm = build_norm(config.post_attention_norm, d_model)
        if config.pre_feed_forward_norm is not None:
            self.pre_feed_forward_norm = build_norm(config.pre_feed_forward_norm, d_model)
        self.feed_forward = FeedForward(config.feed_forward, d_model=d_model)
        if config.post_feed_forward_norm is not None:
            self.post_feed_forward_norm = build_norm(config.post_feed_forward_norm, d_model)

    def forward(
        self,
        x: torch.Tensor,
        *,
        rope: tuple[torch.Tensor, torch.Tensor],
        input_pos: torch.Tensor,
        mask: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        layout: KVLayout,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, T, C] -> ([B, T, C], k_cache, v_cache); arguments as in CausalSelfAttention."""
        normed = self.pre_attention_norm(x)
        attn, k_cache, v_cache = self.attention(
            normed,
            rope=rope,
            input_pos=input_pos,
            mask=mask,
            k_cache=k_cache,
            v_cache=v_cache,
            layout=layout,
        )

        if self.config.residual == "parallel":
            return attn + self.feed_forward(normed) + x, k_cache, v_cache

        if self.config.post_attention_norm is not None:
            attn = self.post_attention_norm(attn)
        x = x + attn
        ff = self.feed_forward(self.pre_feed_forward_norm(x))
        if self.config.post_feed_forward_norm is not None:
            ff = self.post_feed_forward_norm(ff)
        return x + ff, k_cache, v_cache
