"""Causal self-attention over a static KV cache: MHA, GQA and MQA in one module."""

from __future__ import annotations

import torch
from torch import nn

from genapi.layers.config import AttentionConfig, KVLayout
from genapi.layers.kv_cache import read_kv, write_kv
from genapi.layers.norm import build_norm
from genapi.layers.rotary import apply_rotary

# Added to the scores of hidden positions. Finite, so that sums of masks stay finite in float32
# and a softmax row can never turn into NaN.
MASK_VALUE = -1e30


def causal_mask(input_pos: torch.Tensor, cache_len: int) -> torch.Tensor:
    """Additive mask [1, 1, T, S]: the query at position p sees cache slot j when j <= p."""
    slots = torch.arange(cache_len, device=input_pos.device)[None, :]  # [1, S]
    mask = torch.where(slots <= input_pos[:, None], 0.0, MASK_VALUE)
    return mask[None, None]


def split_mask(mask: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
    """A mask over the cache after this call's write -> one over [old cache | new tokens].

    Attention reads the cache as it was before the call plus the T new keys and values,
    and the cache write happens apart from it (see `CausalSelfAttention.forward`). The write
    covers T consecutive slots from input_pos[0] (moved back to end inside the cache, as
    DYNAMIC_UPDATE_SLICE does), whatever positions padding rows carry: those slots are hidden
    in the old part, and column r of the new part is the mask's column at slot start + r.

    Args:
        mask: additive mask [B or 1, 1, T, S] over the cache slots after the write.
        input_pos: the cache positions of the T new tokens.

    Returns:
        The additive mask [B or 1, 1, T, S + T].
    """
    t, s = input_pos.shape[0], mask.shape[-1]
    first = input_pos[:1]
    start = torch.where(first > s - t, s - t, first)
    slots = torch.arange(s, device=input_pos.device)
    written = torch.logical_and(slots >= start, slots < start + t)
    old = torch.where(written, MASK_VALUE, mask)
    new = mask[..., start + torch.arange(t, device=input_pos.device)]
    return torch.cat([old, new], dim=-1)


def sliding_window_mask(
    input_pos: torch.Tensor, cache_len: int, *, sliding_window: int
) -> torch.Tensor:
    """Additive mask [1, 1, T, S]: position p sees slot j when j > p - w (w slots, p included)."""
    slots = torch.arange(cache_len, device=input_pos.device)[None, :]
    mask = torch.where(slots > input_pos[:, None] - sliding_window, 0.0, MASK_VALUE)
    return mask[None, None]


class CausalSelfAttention(nn.Module):
    """Projects to q, k, v; normalises and rotates q and k; attends over the cache."""

    def __init__(self, config: AttentionConfig, *, d_model: int):
        super().__init__()
        self.config = config
        h, g, d = config.num_heads, config.num_kv_heads, config.head_dim
        self.q_proj = nn.Linear(d_model, h * d, bias=config.qkv_bias)
        self.k_proj = nn.Linear(d_model, g * d, bias=config.qkv_bias)
        self.v_proj = nn.Linear(d_model, g * d, bias=config.qkv_bias)
        self.o_proj = nn.Linear(h * d, d_model, bias=config.output_bias)
        if config.qk_norm is not None:
            self.q_norm = build_norm(config.qk_norm, d)
            self.k_norm = build_norm(config.qk_norm, d)

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
        """Attend from x [B, T, C] at positions `input_pos` [T].

        Args:
            x: input hidden states [B, T, C].
            rope: cos and sin tables [T, R] for `input_pos`.
            input_pos: cache slots the T new tokens occupy.
            mask: additive mask [B or 1, 1, T, S] over the cache slots after the write, or
                the same mask split by `split_mask` into [B or 1, 1, T, S + T] (as the model
                passes it, computed once for all blocks).
            k_cache, v_cache: this layer's cache, in `layout`.
            layout: the KV cache layout.

        Returns:
            The output [B, T, C] and the updated k and v caches.
        """
        cfg = self.config
        b, t, _ = x.shape
        h, g, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim

        q = self.q_proj(x).view(b, t, h, d)
        k = self.k_proj(x).view(b, t, g, d)
        v = self.v_proj(x).view(b, t, g, d)
        if cfg.qk_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        cos, sin = rope
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)

        # Attention reads the cache as it was plus the new keys and values; nothing reads the
        # written cache. In an exported graph the writes then depend on k and v only, so the
        # runtime can run every block as one delegated partition and the writes after it
        # (a write between blocks would split the graph and the delegate's memory with it).
        keys, values = read_kv(k_cache, v_cache, layout)  # [B, G, S, D] each
        if mask.shape[-1] == keys.shape[2]:
            mask = split_mask(mask, input_pos)
        out = self._attend(q, k, v, keys, values, mask)  # [B, T, H * D]
        k_cache, v_cache = write_kv(k_cache, v_cache, k, v, input_pos, layout)
        return self.o_proj(out), k_cache, v_cache

    def _attend(self, q, k, v, keys, values, mask) -> torch.Tensor:
        cfg = self.config
        b, t, h, d = q.shape
        g = cfg.num_kv_heads
        r = h // g
        s = keys.shape[2]

        # Query head n uses kv head n // r: fold the r heads of a group into the row axis so
        # that one batched matmul per group covers them, without repeating K and V.
        # The scale goes on q, T x H x D values, rather than on the T x H x (S + T) scores.
        q = (q * cfg.query_scale).transpose(1, 2).reshape(b, g, r * t, d)  # [B, G, R*T, D]
        k, v = k.transpose(1, 2), v.transpose(1, 2)  # [B, G, T, D]
        scores = torch.cat(
            [torch.matmul(q, keys.transpose(2, 3)), torch.matmul(q, k.transpose(2, 3))], dim=-1
        )  # [B, G, R*T, S + T]
        if cfg.logit_softcap is not None:
            scores = torch.tanh(scores / cfg.logit_softcap) * cfg.logit_softcap
        # Rows of group g are its r query heads, each over T positions: as [B, H, T, S + T]
        # the mask [B, 1, T, S + T] broadcasts in 4D, which every runtime kernel handles.
        scores = scores.view(b, h, t, s + t) + mask
        probs = torch.softmax(scores.float(), dim=-1).to(q.dtype).view(b, g, r * t, s + t)
        out = torch.matmul(probs[..., :s], values) + torch.matmul(probs[..., s:], v)
        return out.view(b, h, t, d).transpose(1, 2).reshape(b, t, h * d)
