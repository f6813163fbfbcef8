"""A static KV cache: fixed-size tensors per layer, written at the given positions.

The cache is passed into the model and returned updated, never mutated in place, so that an
exported signature sees it as plain inputs and outputs (`kv_cache_k_<i>`, `kv_cache_v_<i>`).

Layouts (B batch, S cache length, G kv heads, D head dim):
    "bsgd"        K and V [B, S, G, D]; the runtime needs a mask input to know S.
    "bgsd"        K and V [B, G, S, D].
    "transposed"  K [B, G, S, D] and V [B, G, D, S]: S sits at dimension 2 of K, where
                  LiteRT-LM reads it when there is no mask input.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from genapi.layers.config import KV_LAYOUTS, KVLayout, TransformerConfig


@dataclass
class KVCache:
    """Per-layer key and value tensors of one fixed cache length."""

    k: list[torch.Tensor]  # one tensor per layer, shaped by `layout`
    v: list[torch.Tensor]
    layout: KVLayout = "transposed"

    @classmethod
    def empty(
        cls,
        config: TransformerConfig,
        *,
        cache_len: int,
        layout: KVLayout = "transposed",
        batch: int = 1,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> KVCache:
        """A zero-filled cache of `cache_len` positions for every layer of `config`.

        Raises:
            ValueError: if `layout` is unknown or `cache_len` < 1.
        """
        if layout not in KV_LAYOUTS:
            raise ValueError(
                f"kv layout={layout!r} is not one of {', '.join(map(repr, KV_LAYOUTS))}"
            )
        if cache_len < 1:
            raise ValueError(f"cache_len={cache_len!r} must be >= 1")
        k, v = [], []
        for i in range(config.num_layers):
            k_shape, v_shape = config.cache_shape(
                i, cache_len=cache_len, layout=layout, batch=batch
            )
            k.append(torch.zeros(k_shape, dtype=dtype, device=device))
            v.append(torch.zeros(v_shape, dtype=dtype, device=device))
        return cls(k=k, v=v, layout=layout)

    @property
    def cache_len(self) -> int:
        return self.k[0].shape[1 if self.layout == "bsgd" else 2]


def write_kv(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    input_pos: torch.Tensor,
    layout: KVLayout,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Write new keys and values k, v [B, T, G, D] at positions `input_pos` [T].

    Returns:
        The updated caches, in `layout`.
    """
    if layout == "bsgd":
        return k_cache.index_copy(1, input_pos, k), v_cache.index_copy(1, input_pos, v)
    k = k.transpose(1, 2)  # [B, G, T, D]
    if layout == "bgsd":
        return k_cache.index_copy(2, input_pos, k), v_cache.index_copy(
            2, input_pos, v.transpose(1, 2)
        )
    return k_cache.index_copy(2, input_pos, k), v_cache.index_copy(
        3, input_pos, v.permute(0, 2, 3, 1)
    )


def read_kv(
    k_cache: torch.Tensor, v_cache: torch.Tensor, layout: KVLayout
) -> tuple[torch.Tensor, torch.Tensor]:
    """Views of the caches as K [B, G, S, D] and V [B, G, S, D]."""
    if layout == "bsgd":
        return k_cache.transpose(1, 2), v_cache.transpose(1, 2)
    if layout == "bgsd":
        return k_cache, v_cache
    return k_cache, v_cache.transpose(2, 3)
