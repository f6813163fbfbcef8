"""Session-wide fixtures: each real model is loaded and converted once per test session."""

from __future__ import annotations

import pytest
from real_models import gemma3_gguf, smollm2_gguf

import genapi
from genapi.export.llm import export_llm
from genapi.loading.checkpoint import model_weights, open_checkpoint, open_tokenizer

# The converted SmolLM2 used by the real-model tests: one prefill length, logits on prefill.
SMOLLM2_PREFILL, SMOLLM2_CACHE = 64, 128
# The converted Gemma 3 270M: small prefill and cache keep it quick to convert and run.
GEMMA3_PREFILL, GEMMA3_CACHE = 32, 128


@pytest.fixture(scope="session")
def smollm2_path():
    return smollm2_gguf()


@pytest.fixture(scope="session")
def gemma3_path():
    return gemma3_gguf()


@pytest.fixture(scope="session")
def smollm2_checkpoint(smollm2_path):
    return open_checkpoint(smollm2_path)


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_checkpoint):
    return open_tokenizer(smollm2_checkpoint)


@pytest.fixture(scope="session")
def smollm2_model(smollm2_checkpoint):
    """SmolLM2-135M-Instruct in genapi, fp32, weights dequantized from the GGUF."""
    return genapi.load(smollm2_checkpoint)


@pytest.fixture(scope="session")
def smollm2_tflite(smollm2_checkpoint, tmp_path_factory):
    """SmolLM2 converted to fp32 .tflite once, streamed from the GGUF by a meta model."""
    path = tmp_path_factory.mktemp("smollm2") / "smollm2.tflite"
    meta = genapi.build_model(smollm2_checkpoint.config, device="meta")
    return export_llm(
        meta,
        path,
        prefill_lengths=(SMOLLM2_PREFILL,),
        kv_cache_len=SMOLLM2_CACHE,
        prefill_logits=True,
        weights=model_weights(smollm2_checkpoint),
    )


@pytest.fixture(scope="session")
def gemma3_tflite(gemma3_path, tmp_path_factory):
    """Gemma 3 270M converted to fp32 .tflite once (prefill 32, KV cache 128, no prefill logits),
    streamed from the GGUF by a meta model."""
    checkpoint = open_checkpoint(gemma3_path)
    path = tmp_path_factory.mktemp("gemma3") / "gemma3.tflite"
    meta = genapi.build_model(checkpoint.config, device="meta")
    return export_llm(
        meta,
        path,
        prefill_lengths=(GEMMA3_PREFILL,),
        kv_cache_len=GEMMA3_CACHE,
        weights=model_weights(checkpoint),
    )


@pytest.fixture(scope="session")
def smollm2_int8_tflite(smollm2_checkpoint, tmp_path_factory):
    """SmolLM2 in dynamic_int8 (prefill 64, KV cache 128), for bundle and runner tests."""
    path = tmp_path_factory.mktemp("smollm2_int8") / "smollm2-int8.tflite"
    meta = genapi.build_model(smollm2_checkpoint.config, device="meta")
    return export_llm(
        meta,
        path,
        prefill_lengths=(SMOLLM2_PREFILL,),
        kv_cache_len=SMOLLM2_CACHE,
        quantize="dynamic_int8",
        weights=model_weights(smollm2_checkpoint),
    )


@pytest.fixture(scope="session")
def gemma3_int8_tflite(gemma3_path, tmp_path_factory):
    """Gemma 3 270M in dynamic_int8 (prefill 32, KV cache 128), for bundle and runner tests."""
    checkpoint = open_checkpoint(gemma3_path)
    path = tmp_path_factory.mktemp("gemma3_int8") / "gemma3-int8.tflite"
    meta = genapi.build_model(checkpoint.config, device="meta")
    return export_llm(
        meta,
        path,
        prefill_lengths=(GEMMA3_PREFILL,),
        kv_cache_len=GEMMA3_CACHE,
        quantize="dynamic_int8",
        weights=model_weights(checkpoint),
    )
