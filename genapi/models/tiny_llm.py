"""Tiny-LLM: a small Llama-layout model (d_model 128, 4 heads, 2 layers) to train and test with.

It has no checkpoint of its own on the Hub; it reads and writes Llama tensor names, so any
LlamaForCausalLM of the same shape loads into it.
"""

from __future__ import annotations

from genapi.layers import TransformerConfig
from genapi.models import llama
from genapi.models.registry import ModelFamily, register

# The equivalent Hugging Face LlamaForCausalLM config.json.
TINY_LLM = {
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 128,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "vocab_size": 5000,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "max_position_embeddings": 256,
    "tie_word_embeddings": True,
    "hidden_act": "silu",
}


def config() -> TransformerConfig:
    """The Tiny-LLM config: SwiGLU, MHA, sequence length 256, vocabulary of 5000."""
    return llama.config_from_hf(TINY_LLM, name="tiny-llm")


FAMILY = register(
    ModelFamily(
        name="tiny_llm",
        config_from_hf=lambda hf: llama.config_from_hf(hf, name="tiny-llm"),
        weight_table=llama.weight_table,
        tiny_config=config,
        presets={"tiny-llm": config},
    )
)
