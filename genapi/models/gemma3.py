"""Gemma 3 (text): four RMSNorms per block stored as (1 + w), QK-norm, GeGLU, scaled embeddings,
and 5 local (sliding-window) layers for every global one, each kind with its own rope theta.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from genapi.layers import (
    AttentionConfig,
    BlockConfig,
    FeedForwardConfig,
    NormConfig,
    RotaryConfig,
    TransformerConfig,
)
from genapi.models import hf_config
from genapi.models.registry import ModelFamily, register
from genapi.models.weights import WeightTable

logger = logging.getLogger(__name__)

SLIDING, FULL = "sliding_attention", "full_attention"


def layer_types(hf: Mapping[str, Any]) -> list[str]:
    """Per-layer attention kind; without an explicit list, every `pattern`-th layer is global."""
    layers = int(hf_config.require(hf, "num_hidden_layers"))
    types = hf.get("layer_types")
    if types:
        if len(types) != layers:
            raise ValueError(
                f"config.json layer_types has {len(types)} entries but num_hidden_layers={layers}"
            )
        return list(types)
    pattern = int(hf.get("sliding_window_pattern", hf.get("_sliding_window_pattern", 6)))
    return [FULL if (i + 1) % pattern == 0 else SLIDING for i in range(layers)]


def rotaries(hf: Mapping[str, Any]) -> dict[str, RotaryConfig]:
    """Rotary configs of the global and the local layers, from either config.json dialect."""
    params = hf.get("rope_parameters") or {}
    if FULL in params or SLIDING in params:
        full, local = params.get(FULL) or {}, params.get(SLIDING) or {}
        return {
            FULL: RotaryConfig(
                theta=float(full.get("rope_theta", 1_000_000.0)),
                scaling=hf_config.rope_scaling(full),
            ),
            SLIDING: RotaryConfig(
                theta=float(local.get("rope_theta", 10_000.0)),
                scaling=hf_config.rope_scaling(local),
            ),
        }
    # Older configs: rope_theta and rope_scaling are global, rope_local_base_freq is local.
    return {
        FULL: RotaryConfig(
            theta=float(hf.get("rope_theta", 1_000_000.0)),
            scaling=hf_config.rope_scaling(hf.get("rope_scaling")),
        ),
        SLIDING: RotaryConfig(theta=float(hf.get("rope_local_base_freq", 10_000.0))),
    }


def config_from_hf(hf: Mapping[str, Any], *, name: str = "gemma3") -> TransformerConfig:
    """A genapi config from a Gemma3ForCausalLM (gemma3_text) config.json."""
    if hf.get("use_bidirectional_attention"):
        raise NotImplementedError(
            "use_bidirectional_attention=True is not supported yet: genapi builds causal models"
        )
    act = hf.get("hidden_activation", hf.get("hidden_act", "gelu_pytorch_tanh"))
    if act != "gelu_pytorch_tanh":
        raise NotImplementedError(f"hidden_activation={act!r} is not supported yet for Gemma 3")
    heads = int(hf_config.require(hf, "num_attention_heads"))
    d_model = int(hf_config.require(hf, "hidden_size"))
    dim = hf_config.head_dim(hf)
    norm = NormConfig(kind="rms_norm", eps=float(hf.get("rms_norm_eps", 1e-6)), zero_centered=True)
    rope = rotaries(hf)
    if hf.get("attn_logit_softcapping"):
        # transformers' Gemma 3 attention never applies this field; follow the reference.
        logger.warning(
            "ignoring attn_logit_softcapping=%r: Gemma 3 does not soft-cap attention scores",
            hf["attn_logit_softcapping"],
        )
    feed_forward = FeedForwardConfig(
        kind="gated",
        activation="gelu_tanh",
        hidden_dim=int(hf_config.require(hf, "intermediate_size")),
    )

    blocks = []
    for kind in layer_types(hf):
        if kind not in (SLIDING, FULL):
            raise ValueError(f"config.json layer type {kind!r} is not one of {SLIDING!r}, {FULL!r}")
        attention = AttentionConfig(
            num_heads=heads,
            num_kv_heads=int(hf.get("num_key_value_heads") or heads),
            head_dim=dim,
            qk_norm=norm,
            sliding_window=int(hf_config.require(hf, "sliding_window"))
            if kind == SLIDING
            else None,
            scale=float(hf.get("query_pre_attn_scalar", dim)) ** -0.5,
            rotary=rope[kind],
        )
        blocks.append(
            BlockConfig(
                attention=attention,
                feed_forward=feed_forward,
                pre_attention_norm=norm,
                post_attention_norm=norm,
                pre_feed_forward_norm=norm,
                post_feed_forward_norm=norm,
            )
        )

    final_softcap = hf.get("final_logit_softcapping")
    return TransformerConfig(
        vocab_size=int(hf_config.require(hf, "vocab_size")),
        d_model=d_model,
        num_layers=len(blocks),
        block=tuple(blocks),
        max_seq_len=int(hf.get("max_position_embeddings", 32768)),
        final_norm=norm,
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        embedding_scale=d_model**0.5,
        final_logit_softcap=float(final_softcap) if final_softcap else None,
        name=name,
    )


def weight_table(config: TransformerConfig) -> WeightTable:
    """Hugging Face Gemma3ForCausalLM names -> genapi names."""
    top = {
        "model.embed_tokens.weight": "embedding.weight",
        "model.norm.weight": "final_norm.weight",
    }
    ignored = []
    if config.tie_embeddings:
        ignored.append("lm_head.weight")
    else:
        top["lm_head.weight"] = "lm_head.weight"
    layer_renames = {
        "input_layernorm": "pre_attention_norm",
        "post_attention_layernorm": "post_attention_norm",
        "pre_feedforward_layernorm": "pre_feed_forward_norm",
        "post_feedforward_layernorm": "post_feed_forward_norm",
        "self_attn.q_proj": "attention.q_proj",
        "self_attn.k_proj": "attention.k_proj",
        "self_attn.v_proj": "attention.v_proj",
        "self_attn.o_proj": "attention.o_proj",
        "self_attn.q_norm": "attention.q_norm",
        "self_attn.k_norm": "attention.k_norm",
        "mlp.gate_proj": "feed_forward.gate_proj",
        "mlp.up_proj": "feed_forward.up_proj",
        "mlp.down_proj": "feed_forward.down_proj",
    }
    per_layer = {
        f"model.layers.{{layer}}.{src}.weight": f"blocks.{{layer}}.{dst}.weight"
        for src, dst in layer_renames.items()
    }
    return WeightTable(top=top, per_layer=per_layer, ignored=tuple(ignored))


# https://huggingface.co/google/gemma-3-270m/blob/main/config.json
GEMMA3_270M = {
    "architectures": ["Gemma3ForCausalLM"],
    "hidden_size": 640,
    "intermediate_size": 2048,
    "num_hidden_layers": 18,
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "head_dim": 256,
    "vocab_size": 262144,
    "query_pre_attn_scalar": 256,
    "sliding_window": 512,
    "rope_theta": 1000000.0,
    "rope_local_base_freq": 10000.0,
    "rope_scaling": None,
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 32768,
    "hidden_activation": "gelu_pytorch_tanh",
    "final_logit_softcapping": None,
    "attn_logit_softcapping": None,
    "tie_word_embeddings": True,
}

# https://huggingface.co/google/gemma-3-1b-it/blob/main/config.json
GEMMA3_1B = {
    **GEMMA3_270M,
    "hidden_size": 1152,
    "intermediate_size": 6912,
    "num_hidden_layers": 26,
}

# Gemma 3's features at toy size: 5 local : 1 global with a window (4) shorter than the test
# sequences, two rope thetas with linear scaling on the global one (as the larger Gemma 3
# models use), QK-norm, a query scale that differs from head_dim ** -0.5, a final soft-cap.
TINY = {
    **GEMMA3_270M,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 6,
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "head_dim": 32,
    "vocab_size": 256,
    "query_pre_attn_scalar": 24,
    "sliding_window": 4,
    "rope_scaling": {"rope_type": "linear", "factor": 8.0},
    "max_position_embeddings": 256,
    "final_logit_softcapping": 30.0,
}


def tiny_config() -> TransformerConfig:
    return config_from_hf(TINY, name="gemma3-tiny")


FAMILY = register(
    ModelFamily(
        name="gemma3",
        config_from_hf=config_from_hf,
        weight_table=weight_table,
        tiny_config=tiny_config,
        presets={
            "gemma3-270m": lambda: config_from_hf(GEMMA3_270M, name="gemma3-270m"),
            "gemma3-1b": lambda: config_from_hf(GEMMA3_1B, name="gemma3-1b"),
        },
        hf_architectures=("Gemma3ForCausalLM",),
        gguf_architectures=("gemma3",),
    )
)
