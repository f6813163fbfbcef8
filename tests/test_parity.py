"""genapi models match transformers on seeded random weights in real Hugging Face naming."""

from __future__ import annotations

import pytest
import torch
from hf_reference import random_hf_model

from genapi.layers import KV_LAYOUTS, KVCache
from genapi.models import build_model, gemma3, get_family, llama, load_weights, phi2, qwen2
from genapi.models import tiny_llm as tiny_llm_module

TOLERANCE = 1e-5
PROMPT_LEN, DECODE_STEPS, CACHE_LEN = 12, 8, 32

# family name -> Hugging Face config.json of its tiny test model.
CASES = {
    "llama": llama.TINY,
    "llama-untied": {**llama.TINY, "tie_word_embeddings": False},
    "tinyllama-shape": {
        **llama.TINYLLAMA_1_1B,
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 8,
        "num_key_value_heads": 1,
        "vocab_size": 256,
    },  # fmt: skip
    "qwen2": qwen2.TINY,
    "phi2": phi2.TINY,
    "gemma3": gemma3.TINY,
    "tiny_llm": tiny_llm_module.TINY_LLM,
}
FAMILY_OF = {"llama-untied": "llama", "tinyllama-shape": "llama"}


def _genapi_model(case: str, hf_model):
    family = get_family(FAMILY_OF.get(case, case))
    config = family.config_from_hf(CASES[case])
    model = build_model(config).eval()
    load_weights(
        model, hf_model.state_dict(), family.weight_table(config), num_layers=config.num_layers
    )
    return model


@pytest.fixture(scope="module", params=sorted(CASES))
def pair(request):
    case = request.param
    hf_model = random_hf_model(CASES[case])
    tokens = torch.randint(0, CASES[case]["vocab_size"], (1, PROMPT_LEN + DECODE_STEPS),
                           generator=torch.Generator().manual_seed(7))  # fmt: skip
    with torch.no_grad():
        reference = hf_model(tokens).logits
    return case, _genapi_model(case, hf_model), tokens, reference


def test_reference_logits_are_not_trivial(pair):
    _, _, _, reference = pair
    assert reference.std() > 0.1, "noise too small for a 1e-5 comparison to mean anything"


@torch.no_grad()
def test_full_forward_matches_transformers(pair):
    _, model, tokens, reference = pair
    logits, _ = model(tokens)
    assert (logits - reference).abs().max().item() <= TOLERANCE


@pytest.mark.parametrize("layout", KV_LAYOUTS)
@torch.no_grad()
def test_prefill_then_decode_matches_transformers(pair, layout):
    _, model, tokens, reference = pair
    cache = KVCache.empty(model.config, cache_len=CACHE_LEN, layout=layout)
    logits, cache = model(
        tokens[:, :PROMPT_LEN], input_pos=torch.arange(PROMPT_LEN), kv_cache=cache
    )
    steps = [logits]
    for pos in range(PROMPT_LEN, PROMPT_LEN + DECODE_STEPS):
        step, cache = model(tokens[:, pos : pos + 1], input_pos=torch.tensor([pos]), kv_cache=cache)
        steps.append(step)
    logits = torch.cat(steps, dim=1)
    assert (logits - reference).abs().max().item() <= TOLERANCE


def test_sliding_window_is_shorter_than_the_test_sequence():
    window = gemma3.tiny_config().block_config(0).attention.sliding_window
    assert window is not None and window < PROMPT_LEN
