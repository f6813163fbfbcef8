"""Seeded random Hugging Face models built by transformers' own classes, for parity tests."""

from __future__ import annotations

import torch
import transformers

# config.json `architectures` value -> (config class, model class) in transformers.
HF_CLASSES = {
    "LlamaForCausalLM": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
    "Qwen2ForCausalLM": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    "PhiForCausalLM": (transformers.PhiConfig, transformers.PhiForCausalLM),
    "Gemma3ForCausalLM": (transformers.Gemma3TextConfig, transformers.Gemma3ForCausalLM),
}


def random_hf_model(hf_config: dict, *, seed: int = 0, spread: float = 0.1):
    """A transformers model for `hf_config` whose every weight is perturbed by seeded noise.

    Noise on top of the library's own init keeps norms and biases away from their trivial
    starting values (ones, zeros), so that a wrong mapping of any tensor shows in the logits.
    """
    config_cls, model_cls = HF_CLASSES[hf_config["architectures"][0]]
    kwargs = {k: v for k, v in hf_config.items() if k != "architectures"}
    config = config_cls(**kwargs)
    config.architectures = list(hf_config["architectures"])
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = model_cls(config).float().eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * spread)
    return model
