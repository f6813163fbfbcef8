"""Qwen2 / Qwen2.5: the Llama layout with biases on the q, k and v projections."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from genapi.layers import TransformerConfig
from genapi.models import llama
from genapi.models.registry import ModelFamily, register


def config_from_hf(hf: Mapping[str, Any], *, name: str = "qwen2") -> TransformerConfig:
    """A genapi config from a Qwen2ForCausalLM config.json."""
    base = llama.config_from_hf({**hf, "attention_bias": False}, name=name)
    block = base.block_config(0)
    attention = dataclasses.replace(block.attention, qkv_bias=True, output_bias=False)
    blocks = []
    window = hf.get("sliding_window") if hf.get("use_sliding_window") else None
    for i in range(base.num_layers):
        # Qwen2 slides only on layers from `max_window_layers` on, and only when enabled.
        sliding = window is not None and i >= int(hf.get("max_window_layers", 0))
        layer_attention = dataclasses.replace(attention, sliding_window=window if sliding else None)
        blocks.append(dataclasses.replace(block, attention=layer_attention))
    if all(b == blocks[0] for b in blocks):
        return dataclasses.replace(base, block=blocks[0])
    return dataclasses.replace(base, block=tuple(blocks))


# https://huggingface.co/Qwen/Qwen2.5-0.5B-Instruct/blob/main/config.json
QWEN2_5_0_5B = {
    "architectures": ["Qwen2ForCausalLM"],
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "max_position_embeddings": 32768,
    "sliding_window": 32768,
    "max_window_layers": 21,
    "use_sliding_window": False,
    "tie_word_embeddings": True,
    "hidden_act": "silu",
}

# https://huggingface.co/Qwen/Qwen2.5-1.5B-Instruct/blob/main/config.json
QWEN2_5_1_5B = {
    **QWEN2_5_0_5B,
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "num_hidden_layers": 28,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    "max_window_layers": 21,
}

# Qwen2.5's features at toy size: QKV bias, GQA, an untied head to cover that path too.
TINY = {
    **QWEN2_5_0_5B,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 256,
    "max_position_embeddings": 256,
    "tie_word_embeddings": False,
}


def tiny_config() -> TransformerConfig:
    return config_from_hf(TINY, name="qwen2-tiny")


FAMILY = register(
    ModelFamily(
        name="qwen2",
        config_from_hf=config_from_hf,
        weight_table=llama.weight_table,
        tiny_config=tiny_config,
        presets={
            "qwen2.5-0.5b": lambda: config_from_hf(QWEN2_5_0_5B, name="qwen2.5-0.5b"),
            "qwen2.5-1.5b": lambda: config_from_hf(QWEN2_5_1_5B, name="qwen2.5-1.5b"),
        },
        hf_architectures=("Qwen2ForCausalLM",),
        gguf_architectures=("qwen2",),
    )
)
