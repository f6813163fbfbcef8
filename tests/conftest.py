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


def _convert_once(checkpoint, folder, name: str, *, prefill: int, cache: int, **options):
    """`checkpoint` converted once, by a meta model that streams its weights from the file."""
    meta = genapi.build_model(checkpoint.config, device="meta")
    return export_llm(
        meta,
        folder / name,
        prefill_lengths=(prefill,),
        kv_cache_len=cache,
        weights=model_weights(checkpoint),
        **options,
    )


@pytest.fixture(scope="session")
def smollm2_tflite(smollm2_checkpoint, tmp_path_factory):
    """SmolLM2 in fp32 (prefill 64 with logits, KV cache 128)."""
    folder = tmp_path_factory.mktemp("smollm2")
    return _convert_once(
        smollm2_checkpoint,
        folder,
        "smollm2.tflite",
        prefill=SMOLLM2_PREFILL,
        cache=SMOLLM2_CACHE,
        prefill_logits=True,
    )


@pytest.fixture(scope="session")
def gemma3_tflite(gemma3_path, tmp_path_factory):
    """Gemma 3 270M in fp32 (prefill 32, KV cache 128, no prefill logits)."""
    folder = tmp_path_factory.mktemp("gemma3")
    checkpoint = open_checkpoint(gemma3_path)
    return _convert_once(
        checkpoint, folder, "gemma3.tflite", prefill=GEMMA3_PREFILL, cache=GEMMA3_CACHE
    )


@pytest.fixture(scope="session")
def smollm2_int8_tflite(smollm2_checkpoint, tmp_path_factory):
    """SmolLM2 in dynamic_int8 (prefill 64, KV cache 128), for bundle and runner tests."""
    folder = tmp_path_factory.mktemp("smollm2_int8")
    return _convert_once(
        smollm2_checkpoint,
        folder,
        "smollm2-int8.tflite",
        prefill=SMOLLM2_PREFILL,
        cache=SMOLLM2_CACHE,
        quantize="dynamic_int8",
    )


@pytest.fixture(scope="session")
def gemma3_int8_tflite(gemma3_path, tmp_path_factory):
    """Gemma 3 270M in dynamic_int8 (prefill 32, KV cache 128), for bundle and runner tests."""
    folder = tmp_path_factory.mktemp("gemma3_int8")
    checkpoint = open_checkpoint(gemma3_path)
    return _convert_once(
        checkpoint,
        folder,
        "gemma3-int8.tflite",
        prefill=GEMMA3_PREFILL,
        cache=GEMMA3_CACHE,
        quantize="dynamic_int8",
    )
