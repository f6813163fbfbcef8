"""Helpers to wrap a genapi `.tflite` into a `.litertlm` and run it in Google's LiteRT-LM engine.

The engine (`litert_lm`, from the `litert-lm-api` wheel) aborts the whole process on a file it
dislikes, so `run_engine` always runs it in a child process with a time limit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tokenizers import Tokenizer, decoders, models

BOS_TOKEN, EOS_TOKEN = "<bos>", "<eos>"

# Marks the child's one line of result on stdout (the engine logs freely).
_RESULT_MARK = "LITERT_LM_RESULT "

_ENGINE_SCRIPT = r"""
import json, sys
import litert_lm

path, prompt, max_tokens, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
engine = litert_lm.Engine(path, backend=litert_lm.Backend.CPU(thread_count=threads))
# top_k=1 keeps only the best logit: greedy whatever the temperature.
session = engine.create_session(
    apply_prompt_template=True,
    sampler_config=litert_lm.SamplerConfig(top_k=1),
    max_output_tokens=max_tokens,
)
session.run_prefill([prompt])
texts = session.run_decode().texts
result = {"text": texts[0] if texts else "", "bos": engine.bos_token_id,
          "eos": engine.eos_token_ids, "prompt_ids": engine.tokenize(prompt)}
print(__MARK__ + json.dumps(result), flush=True)
""".replace("__MARK__", repr(_RESULT_MARK))


def _tokenizer_alphabet(size: int) -> list[str]:
    """`size` distinct printable characters, printable ASCII first (no space)."""
    chars = [chr(c) for c in range(0x21, 0x7F)]
    code = 0xA1
    while len(chars) < size:
        ch = chr(code)
        if ch.isprintable() and not ch.isspace() and code != 0xAD:  # U+00AD is invisible
            chars.append(ch)
        code += 1
    return chars[:size]


def make_byte_tokenizer_json(path: str | os.PathLike, *, vocab_size: int = 320) -> tuple[int, int]:
    """Write a tiny Hugging Face `tokenizer.json` with exactly `vocab_size` ids; return (bos, eos).

    Ids 0 .. vocab_size - 3 are one printable character each (the 94 printable ASCII
    characters without space, then Latin-1 and Latin Extended letters), as a BPE model
    without merges and a `Fuse` decoder; the last two ids are the special tokens `<bos>` and
    `<eos>`. Unlike a byte-level vocabulary, every id decodes on its own to valid UTF-8 and
    to a distinct character, so a random model's output decodes the same however a runtime
    streams it, and equal text means equal token ids. There is no post-processor: encoding
    adds no BOS (the runtime adds it).
    """
    if vocab_size < 100:
        raise ValueError(f"vocab_size={vocab_size} is too small; use at least 100")
    chars = _tokenizer_alphabet(vocab_size - 2)
    tokenizer = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(chars)}, merges=[]))
    tokenizer.add_special_tokens([BOS_TOKEN, EOS_TOKEN])
    tokenizer.decoder = decoders.Fuse()
    bos_id, eos_id = tokenizer.token_to_id(BOS_TOKEN), tokenizer.token_to_id(EOS_TOKEN)
    assert (bos_id, eos_id) == (vocab_size - 2, vocab_size - 1)
    assert tokenizer.get_vocab_size() == vocab_size
    tokenizer.save(str(path))
    return bos_id, eos_id


def build_litertlm(
    tflite_path: str | os.PathLike,
    tokenizer_json_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    bos_id: int,
    eos_id: int,
    max_tokens: int,
) -> Path:
    """Wrap a prefill/decode `.tflite` and a `tokenizer.json` into a `.litertlm` file.

    The LlmMetadata holds BOS as start token, EOS as the only stop token, prompt templates
    whose user and model prefixes and suffixes are all empty (the prompt reaches the model
    as is), greedy sampling and `max_tokens` as the context size (the KV cache length).
    """
    from litert_lm_builder import litertlm_builder
    from litert_lm_builder.runtime.proto import llm_metadata_pb2, sampler_params_pb2

    metadata = llm_metadata_pb2.LlmMetadata()
    metadata.start_token.token_ids.ids.append(bos_id)
    metadata.stop_tokens.add().token_ids.ids.append(eos_id)
    for affixes in (metadata.prompt_templates.user, metadata.prompt_templates.model):
        affixes.prefix = ""
        affixes.suffix = ""
    metadata.sampler_params.type = sampler_params_pb2.SamplerParameters.GREEDY
    metadata.sampler_params.k = 1
    metadata.max_num_tokens = max_tokens
    metadata.supports_thinking = False
    metadata.supports_function_calling = False
    metadata.llm_model_type.generic_model.SetInParent()

    out_path = Path(out_path)
    with tempfile.TemporaryDirectory() as tmp:
        metadata_path = os.path.join(tmp, "llm_metadata.pb")
        Path(metadata_path).write_bytes(metadata.SerializeToString())
        builder = litertlm_builder.LitertLmFileBuilder()
        builder.add_tflite_model(str(tflite_path), litertlm_builder.TfLiteModelType.PREFILL_DECODE)
        builder.add_hf_tokenizer(str(tokenizer_json_path))
        builder.add_llm_metadata(metadata_path)
        partial = out_path.with_name(out_path.name + ".partial")
        with open(partial, "wb") as f:
            # validate_metadata refuses to build without LlmMetadata (the engine would abort).
            builder.build(f, validate_metadata=True)
        partial.replace(out_path)
    return out_path


def run_engine_result(
    litertlm_path: str | os.PathLike,
    prompt: str,
    *,
    max_tokens: int,
    threads: int = 2,
    timeout: float = 60.0,
) -> dict:
    """Run `litert_lm.Engine` on the CPU in a child process, greedy, for up to `max_tokens`
    new tokens; return {"text", "bos", "eos", "prompt_ids"} as the engine reported them.

    Raises:
        RuntimeError: with the child's exit code and stderr tail if it failed or aborted.
        subprocess.TimeoutExpired: if it ran past `timeout` seconds (the child is killed).
    """
    args = [str(litertlm_path), prompt, str(max_tokens), str(threads)]
    proc = subprocess.run(
        [sys.executable, "-c", _ENGINE_SCRIPT, *args],
        capture_output=True,
        encoding="utf-8",
        errors="replace",  # the engine may log raw bytes of a bad file
        timeout=timeout,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(_RESULT_MARK)]
    if proc.returncode != 0 or not lines:
        tail = "\n".join((proc.stderr + proc.stdout).splitlines()[-30:])
        raise RuntimeError(
            f"litert_lm.Engine failed on {litertlm_path} (exit code {proc.returncode}):\n{tail}"
        )
    return json.loads(lines[-1][len(_RESULT_MARK) :])


def run_engine(
    litertlm_path: str | os.PathLike, prompt: str, *, max_tokens: int, timeout: float = 60.0
) -> str:
    """The text `litert_lm.Engine` generates greedily for `prompt` (see `run_engine_result`)."""
    return run_engine_result(litertlm_path, prompt, max_tokens=max_tokens, timeout=timeout)["text"]
