"""The Llama family: SmolLM2, TinyLlama, Llama 3.2 (pre-norm RMSNorm, SwiGLU, GQA, RoPE)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from genapi.layers import (
    AttentionConfig,
    BlockConfig,
    FeedForwardConfig,
    NormConfig,
    TransformerConfig,
)
from genapi.models import hf_config
from genapi.models.registry import ModelFamily, register
from genapi.models.weights import WeightTable


def config_from_hf(hf: Mapping[str, Any], *, name: str = "llama") -> TransformerConfig:
    """A genapi config from a Llama-style config.json (also used by Qwen2 and Tiny-LLM)."""
    heads = int(hf_config.require(hf, "num_attention_heads"))
    bias = bool(hf.get("attention_bias", False))
    norm = NormConfig(kind="rms_norm", eps=float(hf.get("rms_norm_eps", 1e-6)))
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise NotImplementedError(
            f"hidden_act={act!r} is not supported yet for Llama-style models: only 'silu'"
        )
    block = BlockConfig(
        attention=AttentionConfig(
            num_heads=heads,
            num_kv_heads=int(hf.get("num_key_value_heads") or heads),
            head_dim=hf_config.head_dim(hf),
            qkv_bias=bias,
            output_bias=bias,
            rotary=hf_config.rotary(hf),
        ),
        feed_forward=FeedForwardConfig(
            kind="gated",
            activation="silu",
            hidden_dim=int(hf_config.require(hf, "intermediate_size")),
            bias=bool(hf.get("mlp_bias", False)),
        ),
        pre_attention_norm=norm,
        pre_feed_forward_norm=norm,
    )
    return TransformerConfig(
        vocab_size=int(hf_config.require(hf, "vocab_size")),
        d_model=int(hf_config.require(hf, "hidden_size")),
        num_layers=int(hf_config.require(hf, "num_hidden_layers")),
        block=block,
        max_seq_len=int(hf.get("max_position_embeddings", 2048)),
        final_norm=norm,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        name=name,
    )


def weight_table(config: TransformerConfig) -> WeightTable:
    """Hugging Face LlamaForCausalLM names -> genapi names."""
    top = {
        "model.embed_tokens.weight": "embedding.weight",
        "model.norm.weight": "final_norm.weight",
    }
    ignored = ["model.layers.{layer}.self_attn.rotary_emb.inv_freq"]
    if config.tie_embeddings:
        ignored.append("lm_head.weight")  # some files store the tied head twice
    else:
        top["lm_head.weight"] = "lm_head.weight"
    per_layer = {
        "model.layers.{layer}.input_layernorm.weight": "blocks.{layer}.pre_attention_norm.weight",
        # Llama calls the norm in front of the MLP "post_attention_layernorm".
        "model.layers.{layer}.post_attention_layernorm.weight": (
            "blocks.{layer}.pre_feed_forward_norm.weight"
        ),
    }
    for proj in ("q", "k", "v", "o"):
        for kind in ("weight", "bias"):
            per_layer[f"model.layers.{{layer}}.self_attn.{proj}_proj.{kind}"] = (
                f"blocks.{{layer}}.attention.{proj}_proj.{kind}"
            )
    for proj in ("gate", "up", "down"):
        for kind in ("weight", "bias"):
            per_layer[f"model.layers.{{layer}}.mlp.{proj}_proj.{kind}"] = (
                f"blocks.{{layer}}.feed_forward.{proj}_proj.{kind}"
            )
    return WeightTable(top=top, per_layer=per_layer, ignored=tuple(ignored))


# https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct/blob/main/config.json
SMOLLM2_135M = {
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "vocab_size": 49152,
    "rms_norm_eps": 1e-5,
    "rope_theta": 100000.0,
    "max_position_embeddings": 8192,
    "tie_word_embeddings": True,
    "hidden_act": "silu",
}

# https://huggingface.co/HuggingFaceTB/SmolLM2-360M-Instruct/blob/main/config.json
SMOLLM2_360M = {
    **SMOLLM2_135M,
    "hidden_size": 960,
    "intermediate_size": 2560,
    "num_hidden_layers": 32,
    "num_attention_heads": 15,
    "num_key_value_heads": 5,
}

# https://huggingface.co/HuggingFaceTB/SmolLM2-1.7B-Instruct/blob/main/config.json
SMOLLM2_1_7B = {
    **SMOLLM2_135M,
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 24,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "rope_theta": 130000.0,
}

# https://huggingface.co/TinyLlama/TinyLlama-1.1B-Chat-v1.0/blob/main/config.json
TINYLLAMA_1_1B = {
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 22,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "vocab_size": 32000,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
    "hidden_act": "silu",
}

# https://huggingface.co/meta-llama/Llama-3.2-1B/blob/main/config.json
LLAMA3_2_1B = {
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "vocab_size": 128256,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "rope_type": "llama3",
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
    "max_position_embeddings": 131072,
    "tie_word_embeddings": True,
    "hidden_act": "silu",
}

# Llama 3.2's features at toy size: GQA, llama3 rope scaling whose three frequency bands all
# occur at head_dim 16, tied head.
TINY = {
    **LLAMA3_2_1B,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "vocab_size": 256,
    "max_position_embeddings": 256,
    "rope_scaling": {**LLAMA3_2_1B["rope_scaling"], "original_max_position_embeddings": 64},
}


def tiny_config() -> TransformerConfig:
    return config_from_hf(TINY, name="llama-tiny")


FAMILY = register(
    ModelFamily(
        name="llama",
        config_from_hf=config_from_hf,
        weight_table=weight_table,
        tiny_config=tiny_config,
        presets={
            "smollm2-135m": lambda: config_from_hf(SMOLLM2_135M, name="smollm2-135m"),
            "smollm2-360m": lambda: config_from_hf(SMOLLM2_360M, name="smollm2-360m"),
            "smollm2-1.7b": lambda: config_from_hf(SMOLLM2_1_7B, name="smollm2-1.7b"),
            "tinyllama-1.1b": lambda: config_from_hf(TINYLLAMA_1_1B, name="tinyllama-1.1b"),
            "llama3.2-1b": lambda: config_from_hf(LLAMA3_2_1B, name="llama3.2-1b"),
        },
        hf_architectures=("LlamaForCausalLM",),
        gguf_architectures=("llama",),
    )
)
