"""Building blocks of decoder-only language models, written to export cleanly.

Everything here has static shapes and no Python branching on tensor values, so that
`torch.export` traces it into one graph per signature.
"""

from genapi.layers.attention import CausalSelfAttention, causal_mask, sliding_window_mask
from genapi.layers.block import DecoderBlock
from genapi.layers.config import (
    KV_LAYOUTS,
    AttentionConfig,
    BlockConfig,
    FeedForwardConfig,
    KVLayout,
    NormConfig,
    RopeScaling,
    RotaryConfig,
    TransformerConfig,
)
from genapi.layers.feed_forward import FeedForward
from genapi.layers.kv_cache import KVCache, read_kv, write_kv
from genapi.layers.model import DecoderLM
from genapi.layers.norm import LayerNorm, RMSNorm, build_norm
from genapi.layers.rotary import RotaryEmbedding, apply_rotary, inverse_frequencies

__all__ = [
    "KV_LAYOUTS",
    "AttentionConfig",
    "BlockConfig",
    "CausalSelfAttention",
    "DecoderBlock",
    "DecoderLM",
    "FeedForward",
    "FeedForwardConfig",
    "KVCache",
    "KVLayout",
    "LayerNorm",
    "NormConfig",
    "RMSNorm",
    "RopeScaling",
    "RotaryConfig",
    "RotaryEmbedding",
    "TransformerConfig",
    "apply_rotary",
    "build_norm",
    "causal_mask",
    "inverse_frequencies",
    "read_kv",
    "sliding_window_mask",
    "write_kv",
]
