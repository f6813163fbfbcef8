"""Typed configuration of a decoder-only transformer.

A `TransformerConfig` is a tree of small frozen dataclasses, one per building block. Every
field carries a comment, kinds are `Literal`s, and combinations that cannot be built raise
`ValueError` naming the field and its value as soon as the config is created.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

NormKind = Literal["rms_norm", "layer_norm"]
Activation = Literal["silu", "gelu", "gelu_tanh", "relu"]
FeedForwardKind = Literal["gated", "mlp"]
RopeScalingKind = Literal["linear", "llama3"]
Residual = Literal["sequential", "parallel"]
KVLayout = Literal["bsgd", "bgsd", "transposed"]

KV_LAYOUTS: tuple[KVLayout, ...] = ("bsgd", "bgsd", "transposed")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True)
class NormConfig:
    """A normalisation layer over the last dimension."""

    kind: NormKind = "rms_norm"  # RMSNorm (Llama, Gemma) or LayerNorm with bias (Phi-2)
    eps: float = 1e-6  # added to the variance before the reciprocal square root
    zero_centered: bool = False  # scale by (1 + w) instead of w, as Gemma stores its norms

    def __post_init__(self) -> None:
        _require(
            self.kind in ("rms_norm", "layer_norm"),
            f"norm kind={self.kind!r} is not one of 'rms_norm', 'layer_norm'",
        )
        _require(self.eps > 0, f"norm eps={self.eps!r} must be > 0")


@dataclass(frozen=True)
class RopeScaling:
    """Frequency scaling of rotary embeddings, as found in Hugging Face `rope_scaling`."""

    kind: RopeScalingKind  # "linear" divides all frequencies; "llama3" scales low ones only
    factor: float  # overall scaling factor (8.0 in Llama 3.x's "llama3" scaling)
    low_freq_factor: float = 1.0  # "llama3" only: wavelengths above ctx/low are divided
    high_freq_factor: float = 4.0  # "llama3" only: wavelengths below ctx/high are kept
    original_max_positions: int = 8192  # "llama3" only: context length of pre-training

    def __post_init__(self) -> None:
        _require(
            self.kind in ("linear", "llama3"),
            f"rope scaling kind={self.kind!r} is not one of 'linear', 'llama3'",
        )
        _require(self.factor > 0, f"rope scaling factor={self.factor!r} must be > 0")
        if self.kind == "llama3":
            _require(
                self.high_freq_factor > self.low_freq_factor,
                f"rope scaling high_freq_factor={self.high_freq_factor!r} must be greater than "
                f"low_freq_factor={self.low_freq_factor!r}",
            )
            _require(
                self.original_max_positions > 0,
                f"rope scaling original_max_positions={self.original_max_positions!r} must be > 0",
            )


@dataclass(frozen=True)
class RotaryConfig:
    """Rotary position embedding applied to queries and keys (Hugging Face half-split form)."""

    theta: float = 10_000.0  # base of the geometric frequency ladder
    fraction: float = 1.0  # share of each head's dimensions that rotate (Phi-2: 0.4)
    scaling: RopeScaling | None = None  # optional frequency scaling

    def __post_init__(self) -> None:
        _require(self.theta > 0, f"rotary theta={self.theta!r} must be > 0")
        _require(0 < self.fraction <= 1, f"rotary fraction={self.fraction!r} must be in (0, 1]")

    def rotary_dim(self, head_dim: int) -> int:
        """Number of leading dimensions of each head that are rotated."""
        return int(head_dim * self.fraction)


@dataclass(frozen=True)
class AttentionConfig:
    """Causal self-attention: MHA when kv heads == heads, MQA when kv heads == 1, else GQA."""

    num_heads: int  # query heads H
    num_kv_heads: int  # key/value heads G; H must be a multiple of G
    head_dim: int  # per-head width D
    qkv_bias: bool = False  # bias on the q, k and v projections (Qwen2, Phi-2)
    output_bias: bool = False  # bias on the output projection (Phi-2)
    qk_norm: NormConfig | None = None  # norm over D applied to q and k before rotary (Gemma 3)
    logit_softcap: float | None = None  # scores become cap * tanh(scores / cap)
    sliding_window: int | None = None  # attend to at most this many most recent positions
    scale: float | None = None  # multiplier of q.k; None means head_dim ** -0.5
    rotary: RotaryConfig = field(default_factory=RotaryConfig)  # rotary embedding of q and k

    def __post_init__(self) -> None:
        for name in ("num_heads", "num_kv_heads", "head_dim"):
            value = getattr(self, name)
            _require(value >= 1, f"attention {name}={value!r} must be >= 1")
        _require(
            self.num_heads % self.num_kv_heads == 0,
            f"attention num_heads={self.num_heads!r} is not divisible by "
            f"num_kv_heads={self.num_kv_heads!r}",
        )
        if self.logit_softcap is not None:
            _require(
                self.logit_softcap > 0,
                f"attention logit_softcap={self.logit_softcap!r} must be > 0 or None",
            )
        if self.sliding_window is not None:
            _require(
                self.sliding_window >= 1,
                f"attention sliding_window={self.sliding_window!r} must be >= 1 or None",
            )
        rotary_dim = self.rotary.rotary_dim(self.head_dim)
        _require(
            rotary_dim >= 2 and rotary_dim % 2 == 0,
            f"rotary fraction={self.rotary.fraction!r} of head_dim={self.head_dim!r} gives "
            f"{rotary_dim} rotary dimensions; it must be an even number >= 2",
        )

    @property
    def query_scale(self) -> float:
        return self.scale if self.scale is not None else self.head_dim**-0.5


@dataclass(frozen=True)
class FeedForwardConfig:
    """Position-wise feed-forward: gated (SwiGLU, GeGLU) or a plain two-layer MLP."""

    kind: FeedForwardKind = "gated"  # "gated": down(act(gate(x)) * up(x)); "mlp": fc2(act(fc1(x)))
    activation: Activation = "silu"  # silu for SwiGLU, gelu_tanh for GeGLU and Phi-2
    hidden_dim: int = 0  # width of the intermediate layer
    bias: bool = False  # bias on every projection (Phi-2)

    def __post_init__(self) -> None:
        _require(
            self.kind in ("gated", "mlp"),
            f"feed_forward kind={self.kind!r} is not one of 'gated', 'mlp'",
        )
        _require(
            self.activation in ("silu", "gelu", "gelu_tanh", "relu"),
            f"feed_forward activation={self.activation!r} is not one of "
            "'silu', 'gelu', 'gelu_tanh', 'relu'",
        )
        _require(self.hidden_dim >= 1, f"feed_forward hidden_dim={self.hidden_dim!r} must be >= 1")


@dataclass(frozen=True)
class BlockConfig:
    """One decoder block: attention and feed-forward with their norms and residuals."""

    attention: AttentionConfig  # the self-attention of this block
    feed_forward: FeedForwardConfig  # the feed-forward of this block
    pre_attention_norm: NormConfig = field(default_factory=NormConfig)  # before attention
    post_attention_norm: NormConfig | None = None  # on the attention output (Gemma 3)
    pre_feed_forward_norm: NormConfig | None = field(default_factory=NormConfig)  # before FF
    post_feed_forward_norm: NormConfig | None = None  # on the feed-forward output (Gemma 3)
    residual: Residual = "sequential"  # "parallel": x + attn(n(x)) + ff(n(x)) (Phi-2)

    def __post_init__(self) -> None:
        _require(
            self.residual in ("sequential", "parallel"),
            f"block residual={self.residual!r} is not one of 'sequential', 'parallel'",
        )
        if self.residual == "parallel":
            _require(
                self.pre_feed_forward_norm is None,
                "block residual='parallel' shares pre_attention_norm with the feed-forward; "
                f"pre_feed_forward_norm must be None, not {self.pre_feed_forward_norm!r}",
            )
        else:
            _require(
                self.pre_feed_forward_norm is not None,
                "block residual='sequential' needs pre_feed_forward_norm, got None",
            )


@dataclass(frozen=True)
class TransformerConfig:
    """A decoder-only language model: embedding, blocks, final norm and output head."""

    vocab_size: int  # V: rows of the embedding table and of the logits
    d_model: int  # C: width of the residual stream
    num_layers: int  # number of decoder blocks
    block: BlockConfig | tuple[BlockConfig, ...]  # one config for all blocks, or one per block
    max_seq_len: int = 2048  # longest sequence the model is built for
    final_norm: NormConfig = field(default_factory=NormConfig)  # after the last block
    tie_embeddings: bool = True  # output head reuses the embedding table
    lm_head_bias: bool = False  # bias on the output head (Phi-2); needs an untied head
    embedding_scale: float | None = None  # embeddings are multiplied by this (Gemma: sqrt(C))
    final_logit_softcap: float | None = None  # logits become cap * tanh(logits / cap)
    name: str = "custom"  # a label used in logs and file metadata

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "num_layers", "max_seq_len"):
            value = getattr(self, name)
            _require(value >= 1, f"{name}={value!r} must be >= 1")
        if isinstance(self.block, list):
            object.__setattr__(self, "block", tuple(self.block))
        if isinstance(self.block, tuple):
            _require(
                len(self.block) == self.num_layers,
                f"block has {len(self.block)} per-layer configs but num_layers={self.num_layers!r}",
            )
        _require(
            not (self.tie_embeddings and self.lm_head_bias),
            "lm_head_bias=True needs an untied head, but tie_embeddings=True",
        )
        if self.final_logit_softcap is not None:
            _require(
                self.final_logit_softcap > 0,
                f"final_logit_softcap={self.final_logit_softcap!r} must be > 0 or None",
            )

    def block_config(self, index: int) -> BlockConfig:
        """The config of block `index`."""
        if isinstance(self.block, tuple):
            return self.block[index]
        return self.block

    @property
    def blocks(self) -> tuple[BlockConfig, ...]:
        return tuple(self.block_config(i) for i in range(self.num_layers))

    def cache_shape(self, index: int, *, cache_len: int, layout: KVLayout, batch: int = 1):
        """Shapes of block `index`'s K and V cache tensors for a KV layout.

        Returns:
            `(k_shape, v_shape)`; "bsgd": both [B, S, G, D]; "bgsd": both [B, G, S, D];
            "transposed": K [B, G, S, D] and V [B, G, D, S].
        """
        attn = self.block_config(index).attention
        g, d, s = attn.num_kv_heads, attn.head_dim, cache_len
        if layout == "bsgd":
            return (batch, s, g, d), (batch, s, g, d)
        if layout == "bgsd":
            return (batch, g, s, d), (batch, g, s, d)
        if layout == "transposed":
            return (batch, g, s, d), (batch, g, d, s)
        raise ValueError(f"kv layout={layout!r} is not one of {', '.join(map(repr, KV_LAYOUTS))}")
