"""A decoder-only language model assembled from the building blocks."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from genapi.layers.attention import causal_mask, sliding_window_mask, split_mask
from genapi.layers.block import DecoderBlock
from genapi.layers.config import KVLayout, RotaryConfig, TransformerConfig
from genapi.layers.kv_cache import KVCache
from genapi.layers.norm import build_norm
from genapi.layers.rotary import RotaryEmbedding


@dataclass
class AttentionContext:
    """What every block's attention needs besides its own input: rotary tables and masks."""

    ropes: list[tuple[torch.Tensor, torch.Tensor]]  # (cos, sin) [T, R] per distinct rotary
    masks: list[torch.Tensor]  # additive [B or 1, 1, T, S + T] (`split_mask`); [0]: causal
    rope_of_block: list[int]  # block index -> index into ropes
    mask_of_block: list[int]  # block index -> index into masks

    def rope_of(self, block: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.ropes[self.rope_of_block[block]]

    def mask_of(self, block: int) -> torch.Tensor:
        return self.masks[self.mask_of_block[block]]


class DecoderLM(nn.Module):
    """Embedding, decoder blocks, final norm and output head over a static KV cache.

    Module names (the targets of every weight-name table):
        embedding, blocks.<i>.{pre_attention_norm, attention.{q,k,v,o}_proj,
        attention.{q,k}_norm, post_attention_norm, pre_feed_forward_norm,
        feed_forward.{gate,up,down}_proj, post_feed_forward_norm}, final_norm, lm_head.
    """

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(
            DecoderBlock(block, d_model=config.d_model) for block in config.blocks
        )
        self.final_norm = build_norm(config.final_norm, config.d_model)
        if not config.tie_embeddings:
            self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=config.lm_head_bias)

        # One rotary table per distinct rotary config (Gemma 3 has a local and a global one).
        rotary_keys: list[tuple[RotaryConfig, int]] = []
        self._rotary_of_block: list[int] = []
        for block in config.blocks:
            key = (block.attention.rotary, block.attention.head_dim)
            if key not in rotary_keys:
                rotary_keys.append(key)
            self._rotary_of_block.append(rotary_keys.index(key))
        self.rotary = nn.ModuleList(RotaryEmbedding(rc, head_dim=d) for rc, d in rotary_keys)

    def reset_buffers(self, *, device: torch.device | str | None = None) -> None:
        """Recompute derived buffers, e.g. on `device` for a model built on the meta device."""
        for rotary in self.rotary:
            rotary.reset_buffers(device=device)

    def forward(
        self,
        tokens: torch.Tensor,
        *,
        input_pos: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, KVCache]:
        """Run T tokens through the model, writing their keys and values into the cache.

        Args:
            tokens: token ids [B, T].
            input_pos: cache positions of the tokens [T]; defaults to 0..T-1.
            kv_cache: the cache to attend over and update; defaults to an empty cache of T
                positions (a plain full forward pass).
            mask: additive mask [B or 1, 1, T, S]; defaults to the causal mask built from
                `input_pos`. Sliding-window layers add their window to either.

        Returns:
            logits [B, T, V] and the updated cache.
        """
        x = self.embed(tokens)
        x, kv_cache = self.run_blocks(x, input_pos=input_pos, kv_cache=kv_cache, mask=mask)
        return self.head(x), kv_cache

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, T] -> hidden states [B, T, C], scaled when the config asks for it."""
        x = self.embedding(tokens)
        if self.config.embedding_scale is not None:
            x = x * torch.tensor(self.config.embedding_scale, dtype=x.dtype)
        return x

    def run_blocks(
        self,
        x: torch.Tensor,
        *,
        input_pos: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        mask: torch.Tensor | None = None,
        layout: KVLayout = "transposed",
    ) -> tuple[torch.Tensor, KVCache]:
        """Hidden states [B, T, C] through every block; arguments as in `forward`."""
        b, t, _ = x.shape
        if input_pos is None:
            input_pos = torch.arange(t, device=x.device)
        if kv_cache is None:
            kv_cache = KVCache.empty(
                self.config, cache_len=t, layout=layout, batch=b, dtype=x.dtype, device=x.device
            )
        context = self.attention_context(input_pos, kv_cache.cache_len, mask=mask)

        new_k, new_v = [], []
        for i in range(len(self.blocks)):
            x, k, v = self.run_block(i, x, input_pos=input_pos, context=context, kv_cache=kv_cache)
            new_k.append(k)
            new_v.append(v)
        return x, KVCache(k=new_k, v=new_v, layout=kv_cache.layout)

    def run_block(
        self,
        i: int,
        x: torch.Tensor,
        *,
        input_pos: torch.Tensor,
        context: AttentionContext,
        kv_cache: KVCache,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Block `i` on hidden states x [B, T, C]: its output and its updated k and v caches."""
        return self.blocks[i](
            x,
            rope=context.rope_of(i),
            input_pos=input_pos,
            mask=context.mask_of(i),
            k_cache=kv_cache.k[i],
            v_cache=kv_cache.v[i],
            layout=kv_cache.layout,
        )

    def attention_context(
        self, input_pos: torch.Tensor, cache_len: int, *, mask: torch.Tensor | None = None
    ) -> AttentionContext:
        """Rotary tables and masks for positions `input_pos` [T], computed once for all blocks.

        Args:
            input_pos: cache positions of the tokens.
            cache_len: S, the cache length.
            mask: an additive mask [B or 1, 1, T, S] to use instead of the causal one.
        """
        ropes = [rotary(input_pos) for rotary in self.rotary]
        full_mask = causal_mask(input_pos, cache_len) if mask is None else mask
        windows, mask_of_block = self.mask_slots(cache_len)
        masks = [full_mask] + [
            full_mask + sliding_window_mask(input_pos, cache_len, sliding_window=window)
            for window in windows[1:]
        ]
        return AttentionContext(
            ropes=ropes,
            masks=[split_mask(m, input_pos) for m in masks],
            rope_of_block=list(self._rotary_of_block),
            mask_of_block=mask_of_block,
        )

    def mask_slots(self, cache_len: int) -> tuple[list[int | None], list[int]]:
        """The distinct masks blocks need (None: full causal; w: a window of w) and, per
        block, the index of its mask. A window as long as the cache is no window at all."""
        windows: list[int | None] = [None]
        mask_of_block = []
        for block in self.blocks:
            window = block.config.attention.sliding_window
            if window is not None and window < cache_len and window not in windows:
                windows.append(window)
            has_window = window is not None and window < cache_len
            mask_of_block.append(windows.index(window) if has_window else 0)
        return windows, mask_of_block

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Hidden states [B, T, C] -> logits [B, T, V]."""
        x = self.final_norm(x)
        if self.config.tie_embeddings:
            logits = nn.functional.linear(x, self.embedding.weight)
        else:
            logits = self.lm_head(x)
        if self.config.final_logit_softcap is not None:
            cap = self.config.final_logit_softcap
            logits = torch.tanh(logits / cap) * cap
        return logits
