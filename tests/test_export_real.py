"""The real SmolLM2-135M-Instruct converted to fp32 .tflite says what the PyTorch model says."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SMOLLM2_CACHE
from tflite_helpers import SignatureLM

import genapi
from genapi.layers import KVCache

PROMPT = "What is the capital of France? Answer in one sentence."
DECODE_STEPS = 16


@pytest.fixture(scope="module")
def prompt_ids(smollm2_tokenizer):
    tok = smollm2_tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": PROMPT}])
    return tok.encode(text, add_bos=tok.add_bos)


@torch.no_grad()
def _pytorch_steps(model, prompt_ids, tokens, *, dtype=torch.float32):
    """Logits of the prompt and of decoding `tokens` one at a time, through the cache."""
    cache = KVCache.empty(model.config, cache_len=SMOLLM2_CACHE, dtype=dtype)
    logits, cache = model(torch.tensor([prompt_ids]), kv_cache=cache)
    steps = [logits[0].double().numpy()]
    for pos, token in enumerate(tokens, start=len(prompt_ids)):
        step, cache = model(torch.tensor([[token]]), input_pos=torch.tensor([pos]), kv_cache=cache)
        steps.append(step[0].double().numpy())
    return steps


def test_smollm2_tflite_matches_pytorch(smollm2_model, smollm2_tflite, smollm2_checkpoint,
                                        smollm2_tokenizer, prompt_ids):  # fmt: skip
    expected = list(
        genapi.generate(
            smollm2_model,
            prompt_ids,
            max_new_tokens=DECODE_STEPS,
            cache_len=SMOLLM2_CACHE,
            stop_ids=(),
        )
    )
    assert "Paris" in smollm2_tokenizer.decode(expected)

    lm = SignatureLM(smollm2_tflite, cache_len=SMOLLM2_CACHE)
    got = [lm.prefill(prompt_ids).astype(np.float64)]
    for token in expected:
        got.append(lm.decode(token)[None].astype(np.float64))
    assert [int(g[-1].argmax()) for g in got[:-1]] == expected

    reference = _pytorch_steps(smollm2_model, prompt_ids, expected)
    error = max(np.abs(g - r).max() for g, r in zip(got, reference, strict=True))

    # fp32 arithmetic itself is the floor here: measure both fp32 implementations against
    # the same model evaluated in float64.
    exact = _pytorch_steps(
        genapi.load(smollm2_checkpoint, dtype=torch.float64),
        prompt_ids,
        expected,
        dtype=torch.float64,
    )
    tflite_error = max(np.abs(g - e).max() for g, e in zip(got, exact, strict=True))
    torch_error = max(np.abs(r - e).max() for r, e in zip(reference, exact, strict=True))
    print(
        f"SmolLM2 fp32 .tflite vs PyTorch: max abs logit error {error:.2e}; vs float64: "
        f".tflite {tflite_error:.2e}, PyTorch fp32 {torch_error:.2e}"
    )
    assert tflite_error <= 1.25 * torch_error
