"""genapi.runtime: torch-free generation from a `.tflite` with ai-edge-litert's CompiledModel."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from conftest import SMOLLM2_CACHE
from test_export import _model

import genapi
from genapi.runtime import LiteRTGenerator, prompt_ids
from genapi.sampling import SamplingConfig

CHAT_PROMPT = "What is the capital of France? Answer in one sentence."
CACHE_LEN = 32
PROMPT = [5, 9, 200, 31, 7, 3, 100, 42, 17, 88, 250, 1, 64, 128, 77, 19, 23, 160, 2]  # 19


@pytest.fixture(scope="module")
def tiny():
    """A tiny random Llama, with prefill lengths 4 and 8 so that prompts take several calls."""
    return _model("llama")


@pytest.fixture(scope="module")
def tiny_tflite(tiny, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "tiny.tflite"
    return genapi.export_llm(tiny, path, prefill_lengths=(4, 8), kv_cache_len=CACHE_LEN)


def test_smollm2_greedy_matches_pytorch(smollm2_tflite, smollm2_model, smollm2_tokenizer, tmp_path):
    ids = prompt_ids(smollm2_tokenizer, CHAT_PROMPT, chat=True)
    expected = list(
        genapi.generate(smollm2_model, ids, max_new_tokens=32, cache_len=SMOLLM2_CACHE, stop_ids=())
    )
    cache = tmp_path / "weights.xnnpack_cache"
    gen = LiteRTGenerator(smollm2_tflite, weight_cache=cache)
    assert gen.cache_len == SMOLLM2_CACHE and gen.prefill_lengths == (64,)
    got = list(gen.generate(ids, max_new_tokens=32, stop_ids=()))
    print(gen.stats)
    assert got == expected
    assert "Paris" in smollm2_tokenizer.decode(got)
    assert gen.stats.prompt_tokens == len(ids) and gen.stats.decode_tokens == 32
    assert cache.is_file() and cache.stat().st_size > 0


@pytest.mark.parametrize("layout, mask_input", [("transposed", False), ("bsgd", True)])
def test_multi_chunk_prefill_matches_pytorch(tiny, tmp_path, layout, mask_input):
    path = genapi.export_llm(
        tiny,
        tmp_path / "m.tflite",
        prefill_lengths=(4, 8),
        kv_cache_len=CACHE_LEN,
        kv_layout=layout,
        mask_input=mask_input,
    )
    expected = list(genapi.generate(tiny, PROMPT, max_new_tokens=12, cache_len=CACHE_LEN))
    gen = LiteRTGenerator(path)
    assert (gen.cache_len, gen.has_mask) == (CACHE_LEN, mask_input)
    calls = []
    run = gen._run
    gen._run = lambda sig, tokens, start: (calls.append((sig.key, start)), run(sig, tokens, start))
    got = list(gen.generate(PROMPT, max_new_tokens=12))
    assert got == expected
    # 18 prompt tokens in prefill: 8 + 8 + 2 (padded to 4), then the last one in decode.
    assert calls[:4] == [("prefill_8", 0), ("prefill_8", 8), ("prefill_4", 16), ("decode", 18)]


def test_generation_stops_at_a_full_cache(tiny_tflite):
    gen = LiteRTGenerator(tiny_tflite)
    got = list(gen.generate(PROMPT, max_new_tokens=100))
    assert len(got) == CACHE_LEN - len(PROMPT) + 1  # decode positions 18 .. 31


def test_bad_prompts_raise(tiny_tflite):
    gen = LiteRTGenerator(tiny_tflite)
    with pytest.raises(ValueError, match=rf"\b{CACHE_LEN}\b.*\b{CACHE_LEN}\b"):
        gen.generate([1] * CACHE_LEN, max_new_tokens=4)
    with pytest.raises(ValueError, match="empty"):
        gen.generate([], max_new_tokens=4)
    assert len(list(gen.generate([1] * (CACHE_LEN - 1), max_new_tokens=4))) == 2


def test_seeded_sampling_is_reproducible(tiny_tflite):
    gen = LiteRTGenerator(tiny_tflite)
    config = SamplingConfig(temperature=1.0, top_k=40, top_p=0.95, seed=7)
    first = list(gen.generate(PROMPT[:5], max_new_tokens=20, sampling=config))
    again = list(gen.generate(PROMPT[:5], max_new_tokens=20, sampling=config))
    assert first == again and len(first) == 20
    greedy = list(gen.generate(PROMPT[:5], max_new_tokens=20))
    assert first != greedy


def test_stop_ids_end_generation_unyielded(tiny, tiny_tflite):
    gen = LiteRTGenerator(tiny_tflite)
    full = list(gen.generate(PROMPT[:5], max_new_tokens=10))
    stop = full[3]
    got = list(gen.generate(PROMPT[:5], max_new_tokens=10, stop_ids={stop}))
    assert got == full[: full.index(stop)]


class _StubTokenizer:
    """Just what `prompt_ids` uses; encodes characters as ids and writes BOS as "^"."""

    bos_id, bos_token = 1, "^"

    def __init__(self, add_bos: bool, template_writes_bos: bool):
        self.add_bos, self.template_writes_bos = add_bos, template_writes_bos

    def encode(self, text: str) -> list[int]:
        return [self.bos_id if c == "^" else ord(c) for c in text]

    def apply_chat_template(self, messages) -> str:
        bos = "^" if self.template_writes_bos else ""
        return bos + "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"


@pytest.mark.parametrize("add_bos", [False, True])
@pytest.mark.parametrize("template_writes_bos", [False, True])
def test_prompt_ids_bos_rule(add_bos, template_writes_bos):
    tok = _StubTokenizer(add_bos, template_writes_bos)
    want = [1] if add_bos else []
    assert prompt_ids(tok, "Hi", chat=False) == want + [ord("H"), ord("i")]
    chat = prompt_ids(tok, "Hi", chat=True)
    body = tok.encode("<user>Hi<assistant>")
    # BOS at most once: from the template, else prepended when the model wants it.
    assert chat == ([1] if add_bos or template_writes_bos else []) + body


def test_runtime_does_not_import_torch(tiny_tflite, tmp_path):
    script = textwrap.dedent(
        f"""
        import sys
        from genapi.runtime import LiteRTGenerator
        gen = LiteRTGenerator({str(tiny_tflite)!r}, weight_cache={str(tmp_path / "wc")!r})
        tokens = list(gen.generate({PROMPT!r}, max_new_tokens=5))
        assert len(tokens) == 5, tokens
        assert "torch" not in sys.modules, "genapi.runtime imported torch"
        print("ok", tokens)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ok" in result.stdout


def test_interpreter_backend_matches_compiled_model(smollm2_int8_tflite, smollm2_tokenizer):
    """The fallback for machines with only tflite-runtime (here run on ai-edge-litert's
    Interpreter): same greedy tokens as the CompiledModel path."""
    from genapi.export.inspect import hybrid_per_channel_ops

    ids = prompt_ids(smollm2_tokenizer, "What is the capital of France?", chat=True)
    runs = {}
    for backend in ("compiled", "interpreter"):
        generator = LiteRTGenerator(smollm2_int8_tflite, backend=backend)
        runs[backend] = list(generator.generate(ids, max_new_tokens=12, stop_ids=()))
    assert runs["compiled"] == runs["interpreter"]
    assert hybrid_per_channel_ops(smollm2_int8_tflite) > 0  # what the old-runtime warning reads
