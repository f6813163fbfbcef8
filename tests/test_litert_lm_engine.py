"""A genapi `.tflite`, wrapped into a `.litertlm`, runs in Google's `litert_lm.Engine` and
generates the same greedy tokens as the PyTorch model.

BOS rule (measured with litert-lm-api 0.18.1): the engine tokenizes the prompt text with the
bundled tokenizer (which adds nothing here: `engine.tokenize` gives the bare ids) and prepends
the LlmMetadata `start_token` itself, with or without `apply_prompt_template`. The model thus
sees `[bos] + tokenizer.encode(prompt)`; the PyTorch side is fed exactly that. (A tokenizer
whose post-processor adds BOS would give two.)
"""

from __future__ import annotations

import pytest
from hf_reference import random_hf_model
from litert_lm_helpers import build_litertlm, make_byte_tokenizer_json, run_engine_result
from tokenizers import Tokenizer

from genapi import build_model, generate
from genapi.export.llm import export_llm
from genapi.models import get_family, llama, load_weights

pytest.importorskip("litert_lm")
pytest.importorskip("litert_lm_builder")

VOCAB = 320
HF_CONFIG = {**llama.TINY, "vocab_size": VOCAB}
# A wider weight spread than the parity tests so greedy output does not settle on one token.
SPREAD = 0.5
KV_CACHE_LEN = 64
PREFILL_LENGTHS = (8, 32)
MAX_NEW_TOKENS = 16
PROMPTS = {
    "short": "Hello,World!",  # 13 ids with BOS: a single prefill call
    "long": "The_quick_brown_fox_jumps_over_the_lazy_dog.",  # 45 ids: several prefill calls
}
VARIANTS = {
    "transposed": {"kv_layout": "transposed", "mask_input": False},
    "bsgd-mask": {"kv_layout": "bsgd", "mask_input": True},
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("litert_lm")
    tokenizer_path = tmp / "tokenizer.json"
    bos_id, eos_id = make_byte_tokenizer_json(tokenizer_path, vocab_size=VOCAB)
    family = get_family("llama")
    config = family.config_from_hf(HF_CONFIG)
    model = build_model(config).eval()
    hf_model = random_hf_model(HF_CONFIG, seed=0, spread=SPREAD)
    load_weights(
        model, hf_model.state_dict(), family.weight_table(config), num_layers=config.num_layers
    )
    return tmp, tokenizer_path, Tokenizer.from_file(str(tokenizer_path)), bos_id, eos_id, model


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def litertlm_file(request, setup):
    tmp, tokenizer_path, _, bos_id, eos_id, model = setup
    tflite = export_llm(
        model,
        tmp / f"{request.param}.tflite",
        prefill_lengths=PREFILL_LENGTHS,
        kv_cache_len=KV_CACHE_LEN,
        **VARIANTS[request.param],
    )
    return build_litertlm(
        tflite,
        tokenizer_path,
        tmp / f"{request.param}.litertlm",
        bos_id=bos_id,
        eos_id=eos_id,
        max_tokens=KV_CACHE_LEN,
    )


def _torch_greedy(model, ids, eos_id):
    return list(
        generate(
            model, ids, max_new_tokens=MAX_NEW_TOKENS, stop_ids=[eos_id], cache_len=KV_CACHE_LEN
        )
    )


@pytest.mark.parametrize("prompt", sorted(PROMPTS))
def test_engine_matches_pytorch_greedy(setup, litertlm_file, prompt):
    _, _, tokenizer, bos_id, eos_id, model = setup
    text = PROMPTS[prompt]
    ids = tokenizer.encode(text).ids
    assert len(ids) == len(text)  # one id per character
    assert len(ids) + 1 + MAX_NEW_TOKENS <= KV_CACHE_LEN

    expected = _torch_greedy(model, [bos_id, *ids], eos_id)
    # The test means something only if the output is varied and free of special tokens.
    assert len(set(expected)) >= 5, expected
    assert bos_id not in expected
    # ...and if it tells the BOS rule apart.
    assert _torch_greedy(model, ids, eos_id) != expected

    result = run_engine_result(litertlm_file, text, max_tokens=MAX_NEW_TOKENS, timeout=60)
    assert result["bos"] == bos_id
    assert result["eos"] == [[eos_id]]
    assert result["prompt_ids"] == ids  # the tokenizer adds no BOS; the engine adds it
    assert result["text"] == tokenizer.decode(expected)
