"""The real SmolLM2-135M-Instruct and Gemma 3 270M, loaded from their GGUF files, against
transformers' own models built from the same files.

Run with `pytest -s` to see the measured figures.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import gguf
import pytest
import torch
from real_models import transformers_reference
from safetensors.torch import save_file

import genapi
from genapi.loading.checkpoint import open_checkpoint, open_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
CHAT_PROMPT = "What is the capital of France? Answer in one sentence."
# Plain prose, written for this test; only its first 64 tokens are used.
PROSE = (
    "On the first cold morning of autumn, the baker opened her shop a little later than usual. "
    "Snow had not fallen yet, but the wind carried the smell of wood smoke down the narrow "
    "street, and the windows of the houses were still dark. She lit the old oven, set out the "
    "flour and the salt, and waited for the water in the kettle to boil before she began to "
    "knead the dough for the day's bread."
)
GEMMA_PROMPT = "Paris is the capital of"
GEMMA_TEXT = "The river runs past the old mill, and the children wave at every boat."
LOGIT_TOLERANCE = 1e-3
MEMORY_BOUND = 1.5  # added peak RSS of genapi.load / fp32 weight bytes


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """One intra-op thread: beside a busy neighbour, two threads on two cores run these small
    models 5-10x slower (each op waits for the descheduled thread). Results are unaffected."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _transformers_model(path: Path):
    """transformers' own model for a GGUF file: its config and dequantized tensors, eager
    attention, float32."""
    from transformers import AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    # transformers asks gguf for the same name map once per module of the model (about 400
    # times for SmolLM2, 8 s here); the map is only read, so one per (arch, layers) serves all.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gguf, "get_tensor_name_map", functools.cache(gguf.get_tensor_name_map))
        config, tensors = transformers_reference(path)
    with no_init_weights():  # every weight is overwritten below; skip the random init
        model = AutoModelForCausalLM.from_config(
            config, attn_implementation="eager", dtype=torch.float32
        )
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    assert not unexpected and set(missing) == tied, (missing, unexpected)
    model.tie_weights()
    if tied:
        assert model.lm_head.weight is model.model.embed_tokens.weight
    return model.eval()


@torch.no_grad()
def _max_logit_diff(model, reference, ids: list[int]) -> tuple[float, float]:
    """Max abs difference of full-forward logits, and the largest logit for scale."""
    tokens = torch.tensor([ids])
    expected = reference(tokens).logits.float()
    logits, _ = model(tokens)
    assert logits.shape == expected.shape
    return (logits - expected).abs().max().item(), expected.abs().max().item()


# ---- SmolLM2-135M-Instruct


def test_smollm2_answers_paris(smollm2_model, smollm2_tokenizer):
    tok = smollm2_tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": CHAT_PROMPT}])
    prompt = tok.encode(text, add_bos=tok.add_bos)
    max_new = 32
    answer = list(
        genapi.generate(smollm2_model, prompt, max_new_tokens=max_new, stop_ids=tok.stop_ids)
    )
    reply = tok.decode(answer)
    print(f"\nSmolLM2 ({len(prompt)} prompt tokens) answers: {reply!r}")
    assert "Paris" in reply
    assert len(answer) < max_new, "generation did not reach a stop token"


def test_smollm2_logits_match_transformers(smollm2_path, smollm2_model, smollm2_tokenizer):
    ids = smollm2_tokenizer.encode(PROSE, add_bos=smollm2_tokenizer.add_bos)
    assert len(ids) >= 64
    ids = ids[:64]
    reference = _transformers_model(smollm2_path)
    diff, scale = _max_logit_diff(smollm2_model, reference, ids)
    print(
        f"\nSmolLM2 logits vs transformers, 64 tokens: max abs diff {diff:.2e} (max |logit| "
        f"{scale:.1f})"
    )
    assert diff <= LOGIT_TOLERANCE


def _write_sharded_folder(checkpoint, folder: Path, *, shards: int = 2) -> None:
    """`checkpoint` as a Hugging Face folder: config.json, `shards` safetensors files and the
    index, each shard read and written before the next one."""
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(checkpoint.hf_config, indent=2))
    names = list(checkpoint.tensors)
    per_shard = -(-len(names) // shards)
    weight_map, total = {}, 0
    for i in range(shards):
        shard = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {name: checkpoint.tensors[name] for name in names[i * per_shard :][:per_shard]}
        save_file(part, folder / shard, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, shard))
        total += sum(t.numel() * t.element_size() for t in part.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def test_smollm2_as_sharded_safetensors_loads_identically(
    smollm2_checkpoint, smollm2_model, tmp_path
):
    folder = tmp_path / "smollm2-hf"
    _write_sharded_folder(smollm2_checkpoint, folder)
    assert len(list(folder.glob("*.safetensors"))) >= 2

    model = genapi.load(folder)
    # The same architecture; only the label (taken from the file or folder name) differs.
    assert model.config.name == "smollm2-hf"
    assert dataclasses.replace(model.config, name="") == dataclasses.replace(
        smollm2_model.config, name=""
    )
    ours, theirs = model.state_dict(), smollm2_model.state_dict()
    assert list(ours) == list(theirs)
    differ = [name for name in ours if not torch.equal(ours[name], theirs[name])]
    assert not differ, f"tensors differ: {differ}"
    print(
        f"\nSmolLM2 from {len(list(folder.glob('*.safetensors')))} safetensors shards: "
        f"{len(ours)} tensors identical to the GGUF load"
    )


def test_load_peak_memory(smollm2_path):
    """`genapi.load` of the GGUF, in a fresh process, adds at most 1.5x the fp32 weights to the
    peak RSS (one copy of the weights, plus what is in flight)."""
    script = REPO / "benchmarks" / "load_memory.py"
    run = subprocess.run(
        [sys.executable, str(script), str(smollm2_path), "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    mib = 1024 * 1024
    print(
        f"\ngenapi.load(SmolLM2 GGUF) in a fresh process: fp32 weights "
        f"{result['fp32_weight_bytes'] / mib:.1f} MiB, added peak RSS "
        f"{result['added_peak'] / mib:.1f} MiB, ratio {result['ratio']:.3f} "
        f"(bound {MEMORY_BOUND}), {result['seconds']:.1f} s"
    )
    assert result["added_peak"] <= MEMORY_BOUND * result["fp32_weight_bytes"], (
        f"added peak is {result['ratio']:.3f}x the fp32 weights; "
        "`python benchmarks/load_memory.py --breakdown` shows where it goes"
    )


# ---- Gemma 3 270M


@pytest.fixture(scope="module")
def gemma3_checkpoint(gemma3_path):
    return open_checkpoint(gemma3_path)


@pytest.fixture(scope="module")
def gemma3_tokenizer(gemma3_checkpoint):
    return open_tokenizer(gemma3_checkpoint)


@pytest.fixture(scope="module")
def gemma3_model(gemma3_checkpoint):
    return genapi.load(gemma3_checkpoint)


def test_gemma3_continues_with_france(gemma3_model, gemma3_tokenizer):
    tok = gemma3_tokenizer
    prompt = tok.encode(GEMMA_PROMPT, add_bos=tok.add_bos)
    continuation = list(
        genapi.generate(gemma3_model, prompt, max_new_tokens=5, stop_ids=tok.stop_ids)
    )
    print(f"\nGemma 3 270M continues {GEMMA_PROMPT!r} with {tok.decode(continuation)!r}")
    assert continuation, "Gemma stopped at once"
    assert tok.decode(continuation[:1]) == " France"


def test_gemma3_logits_match_transformers(gemma3_path, gemma3_model, gemma3_tokenizer):
    ids = gemma3_tokenizer.encode(GEMMA_TEXT, add_bos=gemma3_tokenizer.add_bos)
    reference = _transformers_model(gemma3_path)
    diff, scale = _max_logit_diff(gemma3_model, reference, ids)
    print(
        f"\nGemma 3 logits vs transformers, {len(ids)} tokens: max abs diff {diff:.2e} "
        f"(max |logit| {scale:.1f})"
    )
    assert diff <= LOGIT_TOLERANCE
