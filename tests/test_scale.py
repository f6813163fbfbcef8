"""Conversions at scale: data past 2 GiB, killed conversions, reproducible output files."""

from __future__ import annotations

import filecmp
import gc
import mmap
import os
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMOLLM2_CACHE, SMOLLM2_PREFILL
from tflite_helpers import SignatureLM
from torch import nn

import genapi
from genapi.export.llm import export_llm
from genapi.export.tflite_writer import TMP_MARKER, schema
from genapi.layers import KVCache
from genapi.loading.checkpoint import model_weights
from genapi.models import get_family, llama

TOLERANCE = 1e-4

# -- a model with more than 2 GiB of weights --------------------------------------------------

# The embedding alone is 8.5M x 64 fp32 = 2.18 GB, so every tensor written after it starts past
# 2 GiB. It is read by GATHER, which XNNPACK leaves unpacked in the mapped file. The output head
# is swapped for a small one: the configured [V, C] head would be a 2 GB FULLY_CONNECTED weight
# that XNNPACK packs into anonymous memory once per signature.
BIG_VOCAB = 8_500_000
HEAD_CLASSES = 256
BIG_CACHE = 16
CHUNK_ROWS = 1 << 16  # the embedding is built in chunks of rows that share one random block
PROMPT = [3, 4_000_000, BIG_VOCAB - 1]  # the last row lies past 2 GiB in the file
NEXT_TOKEN = BIG_VOCAB - 2


def _big_model(*, vocab_size: int = BIG_VOCAB, device: str = "meta") -> genapi.DecoderLM:
    hf = {**llama.TINY, "vocab_size": vocab_size, "tie_word_embeddings": False}
    model = genapi.build_model(get_family("llama").config_from_hf(hf), device=device)
    model.lm_head = nn.Linear(model.config.d_model, HEAD_CLASSES, bias=False, device=device)
    return model.eval()


def _chunk_shift(chunk: np.ndarray) -> np.ndarray:
    """Per-chunk offset of the embedding rows, so that chunks differ from each other."""
    return ((chunk * 37) % 101) / 101.0 - 0.5


def _embedding_rows(rows: np.ndarray, width: int) -> torch.Tensor:
    """Rows of the synthetic embedding table, computed without building the table."""
    block = np.random.default_rng(7).random((CHUNK_ROWS, width), dtype=np.float32) - 0.5
    chunk = rows // CHUNK_ROWS
    values = block[rows % CHUNK_ROWS] + _chunk_shift(chunk)[:, None].astype(np.float32)
    return torch.from_numpy(values)


def _embedding_table(vocab_size: int, width: int) -> torch.Tensor:
    """The whole synthetic embedding table [V, C]; equal to `_embedding_rows` of every row."""
    block = np.random.default_rng(7).random((CHUNK_ROWS, width), dtype=np.float32) - 0.5
    table = np.empty((vocab_size, width), np.float32)
    for chunk, start in enumerate(range(0, vocab_size, CHUNK_ROWS)):
        end = min(start + CHUNK_ROWS, vocab_size)
        shift = np.float32(_chunk_shift(np.array(chunk)))
        np.add(block[: end - start], shift, out=table[start:end])
    return torch.from_numpy(table)


class SyntheticWeights(Mapping[str, torch.Tensor]):
    """Seeded weights for a model's parameter names, produced on access and never kept.

    `head_seed` changes the output head's values only.
    """

    def __init__(self, model: nn.Module, *, head_seed: int = 0):
        self._shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
        self.head_seed = head_seed

    def __getitem__(self, name: str) -> torch.Tensor:
        shape = self._shapes[name]
        if name == "embedding.weight":
            return _embedding_table(*shape)
        seed = zlib.crc32(name.encode())
        if name == "lm_head.weight":
            seed += 1000 * self.head_seed
        values = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
        if name.endswith("norm.weight"):
            return 1.0 + 0.1 * values
        return values * (0.5 if name == "lm_head.weight" else 0.1)

    def __contains__(self, name: object) -> bool:
        return name in self._shapes  # without building the tensor, as Mapping's default would

    def __iter__(self) -> Iterator[str]:
        return iter(self._shapes)

    def __len__(self) -> int:
        return len(self._shapes)


@torch.no_grad()
def _reference_logits(weights: SyntheticWeights, tokens: list[int]) -> np.ndarray:
    """PyTorch logits of the prompt and one decode step, gathering only the rows used.

    The reference model's embedding holds just the rows of `tokens`; tokens are renumbered
    to index it. Everything else carries the same weights as the converted model.
    """
    used = sorted(set(tokens))
    model = _big_model(vocab_size=len(used), device="cpu")
    state = {name: weights[name] for name, _ in model.named_parameters()}
    state["embedding.weight"] = _embedding_rows(np.array(used), model.config.d_model)
    model.load_state_dict(state)
    local = torch.tensor([[used.index(t) for t in tokens]])

    n = len(PROMPT)
    cache = KVCache.empty(model.config, cache_len=BIG_CACHE)
    prefill, cache = model(local[:, :n], kv_cache=cache)
    step, _ = model(local[:, n:], input_pos=torch.tensor([n]), kv_cache=cache)
    return torch.cat([prefill[0], step[0]]).numpy()


def _run_tflite(path: Path) -> np.ndarray:
    lm = SignatureLM(path, cache_len=BIG_CACHE)
    logits = np.concatenate([lm.prefill(PROMPT), lm.decode(NEXT_TOKEN)[None]])
    del lm
    gc.collect()  # unmaps the file before it is deleted
    return logits


def _param_offsets(path: Path) -> dict[str, int]:
    """Parameter name -> file offset of its data, read from the flatbuffer only."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        model = schema().Model.GetRootAs(mm, 0)
        offsets = {}
        for g in range(model.SubgraphsLength()):
            subgraph = model.Subgraphs(g)
            for t in range(subgraph.TensorsLength()):
                tensor = subgraph.Tensors(t)
                name = tensor.Name().decode()
                if name.endswith(".weight"):
                    offsets[name] = int(model.Buffers(tensor.Buffer()).Offset())
        del model, subgraph, tensor
    return offsets


def _convert_big(meta: genapi.DecoderLM, path: Path, weights: SyntheticWeights) -> Path:
    start = time.perf_counter()
    export_llm(
        meta,
        path,
        prefill_lengths=(4,),
        kv_cache_len=BIG_CACHE,
        prefill_logits=True,
        weights=weights,
    )
    print(f"converted {path.stat().st_size / 2**30:.2f} GiB in {time.perf_counter() - start:.1f} s")
    return path


def test_weights_past_2_gib_are_read_from_their_offsets(tmp_path):
    meta = _big_model()
    tokens = [*PROMPT, NEXT_TOKEN]
    weights = SyntheticWeights(meta, head_seed=0)
    path = _convert_big(meta, tmp_path / "big.tflite", weights)

    assert path.stat().st_size > 2**31
    offsets = _param_offsets(path)
    assert min(offsets, key=offsets.get) == "embedding.weight"
    assert max(offsets, key=offsets.get) == "lm_head.weight"
    assert offsets["lm_head.weight"] > 2**31
    assert offsets["final_norm.weight"] > 2**31

    got = _run_tflite(path)
    expected = _reference_logits(weights, tokens)
    error = np.abs(got - expected).max()
    print(f"max abs logit error {error:.2e}")
    assert error <= TOLERANCE
    path.unlink()

    # New values for the last tensor only: the outputs follow them.
    weights.head_seed = 1
    path = _convert_big(meta, tmp_path / "big.tflite", weights)
    changed = _run_tflite(path)
    path.unlink()
    assert np.abs(changed - got).max() > 0.1
    assert np.abs(changed - _reference_logits(weights, tokens)).max() <= TOLERANCE


# -- a conversion killed half way --------------------------------------------------------------

# Converts the tiny Llama from a meta model; reading `final_norm.weight` (done only while the
# file is written) signals the parent through a file and then hangs, waiting to be killed.
_KILLED_CONVERSION = """
import sys, time
from collections.abc import Mapping
from pathlib import Path

import torch

import genapi
from genapi.models import get_family, llama

out, ready = Path(sys.argv[1]), Path(sys.argv[2])
config = get_family("llama").config_from_hf(llama.TINY)
torch.manual_seed(0)
tensors = genapi.build_model(config).state_dict()


class Hanging(Mapping):
    def __getitem__(self, name):
        if name == "final_norm.weight":
            ready.touch()
            time.sleep(600)
        return tensors[name]

    def __contains__(self, name):
        return name in tensors

    def __iter__(self):
        return iter(tensors)

    def __len__(self):
        return len(tensors)


meta = genapi.build_model(config, device="meta")
genapi.export_llm(meta, out, prefill_lengths=(4,), kv_cache_len=16, weights=Hanging())
"""


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"conversion exited with {proc.returncode}: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"conversion did not reach the hanging tensor within {timeout} s")
        time.sleep(0.05)


def test_killed_conversion_leaves_no_output_and_next_one_removes_its_temp_file(tmp_path):
    out, ready = tmp_path / "model.tflite", tmp_path / "ready"
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_CONVERSION, str(out), str(ready)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(ready, proc, timeout=120)
        temp = tmp_path / f".model.tflite{TMP_MARKER}{proc.pid}"
        assert temp.is_file() and temp.stat().st_size > 0
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()

    assert proc.returncode == -9
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([temp.name, ready.name])

    config = get_family("llama").config_from_hf(llama.TINY)
    export_llm(genapi.build_model(config), out, prefill_lengths=(4,), kv_cache_len=16)
    assert not temp.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, ready.name])


# -- reproducible output --------------------------------------------------------------------


def test_converting_smollm2_twice_gives_identical_bytes(
    smollm2_checkpoint, smollm2_tflite, tmp_path
):
    meta = genapi.build_model(smollm2_checkpoint.config, device="meta")
    again = export_llm(
        meta,
        tmp_path / "again.tflite",
        prefill_lengths=(SMOLLM2_PREFILL,),
        kv_cache_len=SMOLLM2_CACHE,
        prefill_logits=True,
        weights=model_weights(smollm2_checkpoint),
    )
    assert again.stat().st_size == smollm2_tflite.stat().st_size
    assert filecmp.cmp(again, smollm2_tflite, shallow=False)
    os.remove(again)
