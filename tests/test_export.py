"""Converted `.tflite` files match the genapi PyTorch model in ai-edge-litert."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hf_reference import random_hf_model
from tflite_helpers import SignatureLM

import genapi
from genapi.export.llm import export_llm
from genapi.export.lower import LoweringError
from genapi.layers import KVCache
from genapi.loading.checkpoint import model_weights, open_checkpoint
from genapi.models import gemma3, get_family, llama, load_weights, phi2, qwen2, tiny_llm

PROMPT, DECODE_STEPS, CACHE_LEN = 11, 16, 48
TOLERANCE = 1e-4

FAMILIES = {
    "llama": llama.TINY,
    "qwen2": qwen2.TINY,
    "phi2": phi2.TINY,
    "gemma3": gemma3.TINY,
    "tiny_llm": tiny_llm.TINY_LLM,
}
# (family, kv layout, mask input): every family in the default layout, both layouts with and
# without a mask on one family.
VARIANTS = [(name, "transposed", False) for name in FAMILIES] + [
    ("llama", "transposed", True),
    ("llama", "bsgd", True),
    ("llama", "bgsd", False),
    ("gemma3", "bsgd", True),
]


def _model(name: str):
    family = get_family(name)
    config = family.config_from_hf(FAMILIES[name])
    model = genapi.build_model(config).eval()
    hf_model = random_hf_model(FAMILIES[name])
    load_weights(
        model, hf_model.state_dict(), family.weight_table(config), num_layers=config.num_layers
    )
    return model


@torch.no_grad()
def _reference(model, tokens: list[int]):
    """PyTorch logits of prefill + teacher-forced decode steps, through the static cache."""
    cache = KVCache.empty(model.config, cache_len=CACHE_LEN)
    logits, cache = model(torch.tensor([tokens[:PROMPT]]), kv_cache=cache)
    steps = [logits[0]]
    for pos in range(PROMPT, len(tokens)):
        step, cache = model(
            torch.tensor([[tokens[pos]]]), input_pos=torch.tensor([pos]), kv_cache=cache
        )
        steps.append(step[0])
    return torch.cat(steps).numpy()


@pytest.mark.parametrize("name, layout, mask_input", VARIANTS)
def test_tflite_matches_pytorch(tmp_path, name, layout, mask_input):
    model = _model(name)
    path = export_llm(
        model,
        tmp_path / "model.tflite",
        prefill_lengths=(4, 16),
        kv_cache_len=CACHE_LEN,
        kv_layout=layout,
        mask_input=mask_input,
        prefill_logits=True,
    )
    gen = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, model.config.vocab_size, (PROMPT + DECODE_STEPS,), generator=gen)
    tokens = tokens.tolist()
    expected = _reference(model, tokens)

    lm = SignatureLM(path, cache_len=CACHE_LEN)
    got = [lm.prefill(tokens[:PROMPT])]
    for token in tokens[PROMPT:]:
        got.append(lm.decode(token)[None])
    got = np.concatenate(got)
    error = np.abs(got - expected).max()
    print(f"{name} {layout} mask={mask_input}: max abs logit error {error:.2e}")
    assert error <= TOLERANCE
    assert (got.argmax(-1) == expected.argmax(-1)).all()


def test_greedy_tokens_match_pytorch_generate(tmp_path):
    model = _model("gemma3")
    path = export_llm(model, tmp_path / "m.tflite", prefill_lengths=(8,), kv_cache_len=CACHE_LEN)
    prompt = [5, 9, 200, 31, 7]
    expected = list(genapi.generate(model, prompt, max_new_tokens=16, cache_len=CACHE_LEN))

    # Without prefill logits, the last prompt token goes through decode, as LiteRT-LM does it.
    lm = SignatureLM(path, cache_len=CACHE_LEN)
    assert lm.prefill(prompt[:-1]) is None
    token, got = prompt[-1], []
    for _ in range(16):
        token = int(lm.decode(token).argmax())
        got.append(token)
    assert got == expected


def test_signatures_follow_the_litert_lm_contract(tmp_path):
    model = _model("llama")
    path = export_llm(model, tmp_path / "m.tflite", prefill_lengths=(8, 4), kv_cache_len=32)
    lm = SignatureLM(path, cache_len=32)
    assert set(lm.signatures) == {"prefill_4", "prefill_8", "decode"}
    decode = lm.interpreter.get_signature_runner("decode")
    inputs, outputs = decode.get_input_details(), decode.get_output_details()
    caches = {f"kv_cache_{kind}_{i}" for i in range(2) for kind in "kv"}
    assert set(inputs) == {"tokens", "input_pos"} | caches
    assert set(outputs) == {"logits"} | caches
    assert list(inputs["tokens"]["shape"]) == [1, 1] and inputs["tokens"]["dtype"] == np.int32
    assert list(inputs["input_pos"]["shape"]) == [1]
    assert list(outputs["logits"]["shape"]) == [1, 1, model.config.vocab_size]
    assert list(inputs["kv_cache_k_0"]["shape"]) == [1, 2, 32, 16]  # [1, G, S, D]
    assert list(inputs["kv_cache_v_0"]["shape"]) == [1, 2, 16, 32]  # [1, G, D, S]
    prefill = lm.interpreter.get_signature_runner("prefill_8").get_output_details()
    assert "logits" not in prefill


def test_meta_model_streams_weights_from_a_checkpoint(tmp_path):
    hf_model = random_hf_model(qwen2.TINY)
    hf_model.save_pretrained(tmp_path / "ckpt", max_shard_size="40KB")
    ckpt = open_checkpoint(tmp_path / "ckpt")
    meta = genapi.build_model(ckpt.config, device="meta")
    streamed = export_llm(
        meta, tmp_path / "meta.tflite", prefill_lengths=(8,), kv_cache_len=32,
        weights=model_weights(ckpt),
    )  # fmt: skip
    loaded = export_llm(
        genapi.load(ckpt), tmp_path / "loaded.tflite", prefill_lengths=(8,), kv_cache_len=32
    )
    assert streamed.read_bytes() == loaded.read_bytes()


def test_op_without_lowering_names_op_and_source_and_leaves_no_file(tmp_path):
    model = _model("llama")
    original = model.blocks[0].feed_forward.act
    model.blocks[0].feed_forward.act = lambda x: torch.erfinv(torch.tanh(x)) + original(x)
    out = tmp_path / "bad.tflite"
    with pytest.raises(LoweringError, match=r"aten\.erfinv.*feed_forward\.py:\d+"):
        export_llm(model, out, prefill_lengths=(4,), kv_cache_len=16)
    assert list(tmp_path.iterdir()) == []


def test_invalid_export_options_are_rejected(tmp_path):
    model = _model("llama")
    with pytest.raises(ValueError, match="kv_layout='bsgd' needs mask_input=True"):
        export_llm(model, tmp_path / "m.tflite", kv_layout="bsgd")
    with pytest.raises(ValueError, match="prefill length 600 must be between 1 and"):
        export_llm(model, tmp_path / "m.tflite", prefill_lengths=(600,), kv_cache_len=512)
    assert list(tmp_path.iterdir()) == []
