""".task and .litertlm bundles: metadata read from real tokenizers, deterministic aligned zips,
clear errors, the CLI, and Google's `litert_lm.Engine` running genapi's bundles with the same
greedy tokens as genapi's own runner.

The engine aborts the whole process on a file it dislikes, so it always runs in a child
process (`_run_engine`), through genapi's own `genapi.bundle.engine` functions.

Token comparison: the engine streams one text chunk per generated token; genapi's runner gives
ids, whose text pieces are compared chunk by chunk. Where they part, the runner's top-2 logit
gap at that step must be below `TIE_GAP` (the engine carries its own build of the kernels).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
from sentencepiece import sentencepiece_model_pb2

from genapi.bundle import (
    MetadataOverrides,
    metadata_from_tokenizer,
    read_bundle,
    write_bundle,
)
from genapi.bundle import task as task_format
from genapi.loading.checkpoint import open_checkpoint, open_tokenizer
from genapi.runtime import LiteRTGenerator
from genapi.tokenizer import Tokenizer

pytest.importorskip("litert_lm")
pytest.importorskip("litert_lm_builder")

TIE_GAP = 1e-3
NEW_TOKENS = 32
SMOLLM2_PROMPT = "What is the capital of France? Answer in one sentence."
GEMMA3_PROMPT = "Paris is the capital of"
# A Gemma-style chat template that writes BOS itself (as Gemma's instruction-tuned ones do).
GEMMA_STYLE_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>"
    "{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ m['content'] | trim }}"
    "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)

_MARK = "GENAPI_ENGINE_RESULT "
_ENGINE_SCRIPT = r"""
import json, sys, time
from genapi.bundle.engine import engine_stream, open_engine

for job in json.loads(sys.argv[1]):
    began = time.perf_counter()
    engine = open_engine(job["path"], threads=2)
    loaded = time.perf_counter()
    chunks = list(engine_stream(engine, job["prompt"], max_new_tokens=job["max_tokens"],
                                chat=job["chat"]))
    result = {"chunks": chunks, "bos": engine.bos_token_id, "eos": engine.eos_token_ids,
              "load_s": loaded - began, "generate_s": time.perf_counter() - loaded}
    del engine
    print(__MARK__ + json.dumps(result), flush=True)
""".replace("__MARK__", repr(_MARK))


def _run_engine(jobs: list[dict], *, timeout: float = 300) -> list[dict]:
    """Run bundles in `litert_lm.Engine` in a child process; one result per job."""
    proc = subprocess.run(
        [sys.executable, "-c", _ENGINE_SCRIPT, json.dumps(jobs)],
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        timeout=timeout,
    )
    results = [
        json.loads(ln[len(_MARK) :]) for ln in proc.stdout.splitlines() if ln.startswith(_MARK)
    ]
    if proc.returncode != 0 or len(results) != len(jobs):
        tail = "\n".join(proc.stderr.splitlines()[-25:])
        raise AssertionError(f"litert_lm.Engine failed (exit code {proc.returncode}):\n{tail}")
    return results


def _runner_greedy(model_path, ids: list[int], stops, n: int) -> tuple[list[int], list[float]]:
    """genapi's runner, greedy: the new ids and the top-2 logit gap at each step."""
    generator = LiteRTGenerator(model_path, num_threads=2)
    generator.prefill(ids[:-1])
    token, pos = ids[-1], len(ids) - 1
    out, gaps = [], []
    for _ in range(n):
        logits = generator.decode(token, pos)
        second, first = np.partition(logits, -2)[-2:]
        gaps.append(float(first - second))
        token = int(np.argmax(logits))
        if token in stops:
            break
        out.append(token)
        pos += 1
    return out, gaps


def _pieces(tokenizer: Tokenizer, ids: list[int]) -> list[str]:
    texts = [tokenizer.decode(ids[:i]) for i in range(len(ids) + 1)]
    return [texts[i + 1][len(texts[i]) :] for i in range(len(ids))]


def _compare(chunks: list[str], pieces: list[str], gaps: list[float]) -> tuple[int, int | None]:
    """(tokens matched, the step where they part or None); fails unless that step is a tie."""
    matched = 0
    for chunk, piece in zip(chunks, pieces, strict=False):
        if chunk != piece:
            break
        matched += 1
    if matched == len(chunks) == len(pieces):
        return matched, None
    assert gaps[matched] < TIE_GAP, (
        f"engine and runner part at step {matched} where the runner's top-2 gap is "
        f"{gaps[matched]:.4g}: engine {chunks[matched : matched + 3]} runner "
        f"{pieces[matched : matched + 3]}"
    )
    return matched, matched


def _check_engine_matches_runner(bundle, model_path, prompt, *, chat, label, expect=None):
    contents = read_bundle(bundle)
    tokenizer = contents.tokenizer()
    metadata = contents.metadata(tokenizer)
    ids = metadata.prompt_ids(tokenizer, prompt, chat=chat)
    began = time.perf_counter()
    runner_ids, gaps = _runner_greedy(model_path, ids, set(metadata.stop_token_ids), NEW_TOKENS)
    runner_s = time.perf_counter() - began
    job = {"path": str(bundle), "prompt": prompt, "max_tokens": NEW_TOKENS, "chat": chat}
    [result] = _run_engine([job])
    text = "".join(result["chunks"])
    matched, parted = _compare(result["chunks"], _pieces(tokenizer, runner_ids), gaps)
    print(
        f"\n[{label}] engine {text!r}\n  tokens matched {matched}/{len(runner_ids)}"
        f"{'' if parted is None else f' (near-tie at step {parted})'}; prompt {len(ids)} ids; "
        f"engine load {result['load_s']:.1f} s, generate {result['generate_s']:.1f} s; "
        f"runner {runner_s:.1f} s; min top-2 gap {min(gaps):.3g}"
    )
    assert result["bos"] == metadata.start_token_id
    assert result["eos"] == [[t] for t in metadata.stop_token_ids]
    if expect is not None:
        assert expect in text
    return result


# ---- metadata from real tokenizers


@pytest.fixture(scope="module")
def gemma3_tokenizer(gemma3_path):
    return open_tokenizer(open_checkpoint(gemma3_path))


def test_smollm2_metadata_from_chat_template(smollm2_tokenizer):
    metadata = metadata_from_tokenizer(smollm2_tokenizer)
    # add_bos is False: no start token, so <|im_start|> (BOS id 1) comes once, from the prefix.
    assert metadata.start_token_id is None
    assert metadata.stop_token_ids == (2, 0)
    template = metadata.prompt_template
    assert template.user_prefix == "<|im_start|>user\n"
    assert template.user_suffix == "<|im_end|>\n"
    assert template.model_prefix == "<|im_start|>assistant\n"
    assert template.model_suffix == "<|im_end|>\n"
    assert (template.system_prefix, template.system_suffix) == (
        "<|im_start|>system\n",
        "<|im_end|>\n",
    )
    ids = metadata.prompt_ids(smollm2_tokenizer, SMOLLM2_PROMPT, chat=True)
    assert ids[:2] == [1, smollm2_tokenizer.encode("user")[0]]
    assert ids.count(1) == 2  # the user turn and the assistant turn


def test_gemma3_metadata_and_bos_written_by_template(gemma3_tokenizer):
    metadata = metadata_from_tokenizer(gemma3_tokenizer)
    assert metadata.start_token_id == 2  # <bos>
    assert metadata.stop_token_ids == (1, 106)
    assert metadata.prompt_template.is_empty  # a base model: no chat template
    assert metadata.prompt_ids(gemma3_tokenizer, GEMMA3_PROMPT, chat=False)[:1] == [2]

    chat = metadata_from_tokenizer(
        gemma3_tokenizer, overrides=MetadataOverrides(chat_template=GEMMA_STYLE_TEMPLATE)
    )
    # The template's own {{ bos_token }} is left to the start token: BOS once.
    assert chat.prompt_template.user_prefix == "<start_of_turn>user\n"
    assert chat.prompt_template.model_prefix == "<start_of_turn>model\n"
    assert chat.prompt_template.user_suffix == "<end_of_turn>\n"
    ids = chat.prompt_ids(gemma3_tokenizer, "Hi", chat=True)
    assert ids.count(2) == 1 and ids[0] == 2


def test_overrides_are_applied_or_rejected(smollm2_tokenizer):
    metadata = metadata_from_tokenizer(
        smollm2_tokenizer,
        overrides=MetadataOverrides(start_token="1", stop_tokens=["<|im_end|>"], user_prefix="U:"),
    )
    assert (metadata.start_token_id, metadata.stop_token_ids) == (1, (2,))
    assert metadata.prompt_template.user_prefix == "U:"
    none = metadata_from_tokenizer(
        smollm2_tokenizer, overrides=MetadataOverrides(start_token="none")
    )
    assert none.start_token_id is None
    with pytest.raises(ValueError, match="'<nope>' is not one token"):
        metadata_from_tokenizer(
            smollm2_tokenizer, overrides=MetadataOverrides(stop_tokens=["<nope>"])
        )
    with pytest.raises(ValueError, match="99999 is outside the vocabulary"):
        metadata_from_tokenizer(smollm2_tokenizer, overrides=MetadataOverrides(start_token="99999"))


# ---- tiny models, a SentencePiece tokenizer of the same vocabulary


def _sentencepiece_bytes(vocab_size: int) -> bytes:
    """A unigram SentencePiece model of exactly `vocab_size` pieces: <unk>, <bos>, <eos>, then
    one printable character each."""
    proto = sentencepiece_model_pb2.ModelProto()
    kinds = sentencepiece_model_pb2.ModelProto.SentencePiece
    for piece, kind in (
        ("<unk>", kinds.UNKNOWN),
        ("<bos>", kinds.CONTROL),
        ("<eos>", kinds.CONTROL),
    ):
        proto.pieces.add(piece=piece, score=0.0, type=kind)
    code = 0x21
    while len(proto.pieces) < vocab_size:
        ch = chr(code)
        if ch.isprintable() and not ch.isspace() and code != 0xAD:
            proto.pieces.add(piece=ch, score=-float(len(proto.pieces)), type=kinds.NORMAL)
        code += 1
    proto.trainer_spec.model_type = sentencepiece_model_pb2.TrainerSpec.UNIGRAM
    proto.trainer_spec.vocab_size = vocab_size
    proto.trainer_spec.unk_id, proto.trainer_spec.bos_id, proto.trainer_spec.eos_id = 0, 1, 2
    proto.trainer_spec.pad_id = -1
    proto.trainer_spec.bos_piece, proto.trainer_spec.eos_piece = "<bos>", "<eos>"
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = False
    return proto.SerializeToString()


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """family -> (.tflite path, SentencePiece tokenizer) for the tiny model of every family."""
    import torch

    from genapi import build_model
    from genapi.export.llm import export_llm
    from genapi.models import families

    tmp = tmp_path_factory.mktemp("tiny_bundles")
    models = {}
    for name, family in sorted(families().items()):
        torch.manual_seed(0)
        config = family.tiny_config()
        model = build_model(config).eval()
        with torch.no_grad():
            for param in model.parameters():  # a wider spread than the default init
                param.normal_(0.0, 0.5)
        path = export_llm(model, tmp / f"{name}.tflite", prefill_lengths=(8,), kv_cache_len=32)
        models[name] = (path, Tokenizer.from_sentencepiece(_sentencepiece_bytes(config.vocab_size)))
    return tmp, models


def test_task_bytes_are_deterministic_and_aligned(tiny_models):
    tmp, models = tiny_models
    path, tokenizer = models["llama"]
    first = write_bundle(path, tokenizer, tmp / "a.task")
    second = write_bundle(path, tokenizer, tmp / "b.task")
    assert first.read_bytes() == second.read_bytes()
    assert oct(first.stat().st_mode & 0o777) != oct(0o600)  # not left private by mkstemp

    entries = task_format.read_task_entries(first)
    assert list(entries) == ["TF_LITE_PREFILL_DECODE", "TOKENIZER_MODEL", "METADATA"]
    assert entries["TF_LITE_PREFILL_DECODE"][0] % 64 == 0
    assert all(offset % 4 == 0 for offset, _ in entries.values())
    with zipfile.ZipFile(first) as archive:
        assert archive.testzip() is None  # CRCs check out
        assert all(i.compress_type == zipfile.ZIP_STORED for i in archive.infolist())
        assert {i.date_time for i in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}
        assert archive.read("TF_LITE_PREFILL_DECODE") == path.read_bytes()
    assert not [p for p in tmp.iterdir() if p.name.endswith(".partial")]


def test_task_zip64_records_read_back(tiny_models, monkeypatch):
    tmp, models = tiny_models
    path, tokenizer = models["llama"]
    monkeypatch.setattr(task_format, "ZIP64_LIMIT", 1000)  # every entry and offset past it
    bundle = write_bundle(path, tokenizer, tmp / "zip64.task")
    with zipfile.ZipFile(bundle) as archive:
        assert archive.testzip() is None
        assert archive.read("TF_LITE_PREFILL_DECODE") == path.read_bytes()
    contents = read_bundle(bundle)
    assert contents.model_offset % 64 == 0
    assert contents.model_size == path.stat().st_size


def test_bundle_errors_leave_nothing(tiny_models, smollm2_tokenizer):
    tmp, models = tiny_models
    path, tokenizer = models["llama"]
    with pytest.raises(ValueError, match="cannot carry a Jinja chat template"):
        write_bundle(
            path, tokenizer, tmp / "x.task", overrides=MetadataOverrides(jinja_template="{{ x }}")
        )
    with pytest.raises(ValueError, match="exceeds the model's KV cache of 32"):
        write_bundle(
            path, tokenizer, tmp / "x.litertlm", overrides=MetadataOverrides(max_num_tokens=64)
        )
    with pytest.raises(ValueError, match="must end in .task or .litertlm"):
        write_bundle(path, tokenizer, tmp / "x.zip")
    with pytest.raises(ValueError, match="tokenizer has 49152 tokens"):
        write_bundle(path, smollm2_tokenizer, tmp / "x.litertlm")
    assert not [p for p in tmp.iterdir() if p.name.startswith(("x.", ".x."))]

    bad = tmp / "bad.task"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a .task file"):
        read_bundle(bad)
    bad = tmp / "bad.litertlm"
    bad.write_bytes(b"LITERTXX" + bytes(64))
    with pytest.raises(ValueError, match="not a .litertlm file"):
        read_bundle(bad)


def test_bpe_task_is_refused(smollm2_tflite, smollm2_tokenizer, tmp_path):
    with pytest.raises(ValueError, match="SentencePiece tokenizer.*write a .litertlm"):
        write_bundle(smollm2_tflite, smollm2_tokenizer, tmp_path / "smollm2.task")
    assert list(tmp_path.iterdir()) == []


def test_tiny_models_of_every_family_run_in_engine(tiny_models):
    tmp, models = tiny_models
    jobs, expected = [], []
    for name, (path, tokenizer) in models.items():
        metadata = metadata_from_tokenizer(tokenizer)
        ids = metadata.prompt_ids(tokenizer, "Hello!", chat=False)
        runner_ids, gaps = _runner_greedy(path, ids, set(metadata.stop_token_ids), 12)
        for suffix in (".task", ".litertlm"):
            bundle = write_bundle(path, tokenizer, tmp / f"{name}{suffix}")
            jobs.append({"path": str(bundle), "prompt": "Hello!", "max_tokens": 12, "chat": False})
            expected.append((f"{name}{suffix}", _pieces(tokenizer, runner_ids), gaps))
    results = _run_engine(jobs)
    for (label, pieces, gaps), result in zip(expected, results, strict=True):
        assert result["bos"] == 1 and result["eos"] == [[2]], label
        matched, _ = _compare(result["chunks"], pieces, gaps)
        print(f"[{label}] {matched}/{len(pieces)} tokens as the runner")


# ---- real models in the engine


def test_smollm2_litertlm_in_engine(smollm2_int8_tflite, smollm2_tokenizer, tmp_path):
    """Real SmolLM2 in dynamic_int8 with its byte-level BPE tokenizer."""
    model = smollm2_int8_tflite
    bundle = write_bundle(model, smollm2_tokenizer, tmp_path / "smollm2.litertlm")
    contents = read_bundle(bundle)
    assert contents.tokenizer_kind == "tokenizer.json"
    assert contents.model_size == model.stat().st_size
    _check_engine_matches_runner(
        bundle, model, SMOLLM2_PROMPT, chat=True, label="SmolLM2 int8 .litertlm", expect="Paris"
    )


@pytest.mark.parametrize("suffix", [".task", ".litertlm"])
def test_gemma3_bundle_in_engine(gemma3_int8_tflite, gemma3_tokenizer, tmp_path, suffix):
    """Real Gemma 3 270M in dynamic_int8 with its SentencePiece model."""
    model = gemma3_int8_tflite
    bundle = write_bundle(model, gemma3_tokenizer, tmp_path / f"gemma3{suffix}")
    assert read_bundle(bundle).tokenizer_kind == "sentencepiece"
    _check_engine_matches_runner(
        bundle, model, GEMMA3_PROMPT, chat=False, label=f"Gemma 3 int8 {suffix}", expect="France"
    )


# ---- the CLI


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "genapi", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def test_cli_convert_to_litertlm_and_generate(smollm2_path, tmp_path):
    out = tmp_path / "smollm2.litertlm"
    proc = _cli(
        "convert", str(smollm2_path), "-o", str(out), "--prefill-lengths", "32",
        "--kv-cache-len", "64", "--stop-tokens", "<|im_end|>",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smollm2.litertlm"]  # no temp .tflite
    assert read_bundle(out).metadata().stop_token_ids == (2,)

    answers = {}
    for engine in ("litert-lm", "genapi"):
        proc = _cli("generate", str(out), "--engine", engine, "--prompt", SMOLLM2_PROMPT,
                    "--max-new-tokens", "16")  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        answers[engine] = proc.stdout.strip()
    print(f"\n[CLI generate] {answers}")
    assert "Paris" in answers["litert-lm"]
    assert answers["litert-lm"] == answers["genapi"]


def test_cli_bad_bundle_requests(smollm2_path, smollm2_tflite, tmp_path, capsys):
    from genapi.cli import main

    cases = [
        (["convert", str(smollm2_path), "-o", str(tmp_path / "m.task")], "SentencePiece"),
        (["convert", str(smollm2_path), "-o", str(tmp_path / "m.tflite"), "--start-token", "1"],
         "apply only to .task and .litertlm"),
        (["bundle", str(smollm2_tflite), "--tokenizer", str(smollm2_path), "-o",
          str(tmp_path / "m.litertlm"), "--stop-tokens", "<nope>"], "'<nope>' is not one token"),
        (["bundle", str(smollm2_tflite), "--tokenizer", str(smollm2_path), "-o",
          str(tmp_path / "m.litertlm"), "--max-num-tokens", "4096"],
         "exceeds the model's KV cache"),
        (["bundle", str(smollm2_tflite), "--tokenizer", str(smollm2_path), "-o",
          str(tmp_path / "m.task")], "SentencePiece"),
        (["generate", str(tmp_path / "missing.task"), "--prompt", "x"], "no such bundle"),
    ]  # fmt: skip
    for args, message in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (args, err)
    assert list(tmp_path.iterdir()) == []
