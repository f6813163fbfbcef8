"""Phi-2: LayerNorm, parallel attention and MLP, partial rotary (40%), biases everywhere."""

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

# Hugging Face activation names that are GELU with the tanh approximation.
_GELU_TANH = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


def config_from_hf(hf: Mapping[str, Any], *, name: str = "phi2") -> TransformerConfig:
    """A genapi config from a PhiForCausalLM config.json."""
    heads = int(hf_config.require(hf, "num_attention_heads"))
    norm = NormConfig(kind="layer_norm", eps=float(hf.get("layer_norm_eps", 1e-5)))
    act = hf.get("hidden_act", "gelu_new")
    if act not in (*_GELU_TANH, "gelu"):
        raise NotImplementedError(f"hidden_act={act!r} is not supported yet for Phi models")
    block = BlockConfig(
        attention=AttentionConfig(
            num_heads=heads,
            num_kv_heads=int(hf.get("num_key_value_heads") or heads),
            head_dim=hf_config.head_dim(hf),
            qkv_bias=True,
            output_bias=True,
            qk_norm=norm if hf.get("qk_layernorm") else None,
            rotary=hf_config.rotary(hf),
        ),
        feed_forward=FeedForwardConfig(
            kind="mlp",
            activation="gelu_tanh" if act in _GELU_TANH else "gelu",
            hidden_dim=int(hf_config.require(hf, "intermediate_size")),
            bias=True,
        ),
        pre_attention_norm=norm,
        pre_feed_forward_norm=None,
        residual="parallel",
    )
    return TransformerConfig(
        vocab_size=int(hf_config.require(hf, "vocab_size")),
        d_model=int(hf_config.require(hf, "hidden_size")),
        num_layers=int(hf_config.require(hf, "num_hidden_layers")),
        block=block,
        max_seq_len=int(hf.get("max_position_embeddings", 2048)),
        final_norm=norm,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        lm_head_bias=not hf.get("tie_word_embeddings", False),
        name=name,
    )


def weight_table(config: TransformerConfig) -> WeightTable:
    """Hugging Face PhiForCausalLM names -> genapi names."""
    top = {"model.embed_tokens.weight": "embedding.weight"}
    per_layer = {}
    renames = {
        "model.final_layernorm": "final_norm",
        "lm_head": "lm_head",
    }
    layer_renames = {
        "input_layernorm": "pre_attention_norm",
        "self_attn.q_proj": "attention.q_proj",
        "self_attn.k_proj": "attention.k_proj",
        "self_attn.v_proj": "attention.v_proj",
        "self_attn.dense": "attention.o_proj",
        "self_attn.q_layernorm": "attention.q_norm",
        "self_attn.k_layernorm": "attention.k_norm",
        "mlp.fc1": "feed_forward.up_proj",
        "mlp.fc2": "feed_forward.down_proj",
    }
    for kind in ("weight", "bias"):
        for src, dst in renames.items():
            top[f"{src}.{kind}"] = f"{dst}.{kind}"
        for src, dst in layer_renames.items():
            per_layer[f"model.layers.{{layer}}.{src}.{kind}"] = f"blocks.{{layer}}.{dst}.{kind}"
    return WeightTable(
        top=top,
        per_layer=per_layer,
        ignored=("model.layers.{layer}.self_attn.rotary_emb.inv_freq",),
    )


# https://huggingface.co/microsoft/phi-2/blob/main/config.json
PHI2 = {
    "architectures": ["PhiForCausalLM"],
    "hidden_size": 2560,
    "intermediate_size": 10240,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": 51200,
    "partial_rotary_factor": 0.4,
    "rope_theta": 10000.0,
    "layer_norm_eps": 1e-5,
    "max_position_embeddings": 2048,
    "hidden_act": "gelu_new",
    "qk_layernorm": False,
    "tie_word_embeddings": False,
}

# Phi-2's features at toy size: partial rotary 0.4 (6 of 16 head dims), parallel residual,
# LayerNorm, GELU-tanh MLP, biases, untied head with bias.
TINY = {
    **PHI2,
    "hidden_size": 64,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "vocab_size": 256,
    "max_position_embeddings": 256,
}


def tiny_config() -> TransformerConfig:
    return config_from_hf(TINY, name="phi2-tiny")


FAMILY = register(
    ModelFamily(
        name="phi2",
        config_from_hf=config_from_hf,
        weight_table=weight_table,
        tiny_config=tiny_config,
        presets={"phi-2": lambda: config_from_hf(PHI2, name="phi-2")},
        hf_architectures=("PhiForCausalLM",),
        gguf_architectures=("phi2",),
    )
)
