"""llama.cpp side of `make bench-peers`; runs in the llama-cpp environment, not genapi's.

    python llama_cpp_child.py prepare SOURCE.gguf FOLDER   # F32, Q8_0, Q4_0 files, once
    python llama_cpp_child.py measure MODEL.gguf            # one JSON line
    python llama_cpp_child.py agreement FOLDER IDS.json     # one JSON line

`agreement` feeds the token ids (teacher-forced, one pass) through the F32 file and each
quantized one and reports, per format, top-1 agreement with F32 and perplexity: the figures
genapi's accuracy report gives, computed by llama.cpp on its own formats.

`prepare` requantizes the shipped Q4_1 file with llama.cpp's own quantizer (F32 is the Q4_1
weights dequantized, the same values genapi converts). `measure` times a 128-token prefill
and 32 greedy decode steps on 2 threads, best of three, and reads the peak RSS above the
baseline after imports.
"""

from __future__ import annotations

import ctypes
import json
import sys
import time
from pathlib import Path

import llama_cpp
import numpy as np
from child_common import PROMPT, STEPS, print_figures, status_bytes

# llama.cpp file types (enum llama_ftype).
FTYPES = {"F32": 0, "Q8_0": 7, "Q4_0": 2}


def prepare(source: Path, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, ftype in FTYPES.items():
        target = folder / f"smollm2-135m-{name}.gguf"
        if target.is_file():
            continue
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = ftype
        params.allow_requantize = True
        params.nthread = 2
        partial = target.with_suffix(".partial")
        status = llama_cpp.llama_model_quantize(
            str(source).encode(), str(partial).encode(), ctypes.byref(params)
        )
        if status != 0:
            raise SystemExit(f"llama_model_quantize to {name} failed with status {status}")
        partial.rename(target)


def measure(path: Path) -> None:
    baseline = status_bytes("VmRSS")
    llm = llama_cpp.Llama(
        model_path=str(path),
        n_ctx=512,
        n_batch=128,
        n_threads=2,
        n_threads_batch=2,
        logits_all=False,
        verbose=False,
    )
    vocab = llm.n_vocab()
    prefill, decode = [], []
    for _ in range(3):
        llm.reset()
        start = time.perf_counter()
        llm.eval(PROMPT)
        prefill.append(time.perf_counter() - start)
        start = time.perf_counter()
        for _ in range(STEPS):
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits(llm.ctx), shape=(vocab,))
            token = int(np.argmax(logits))
            llm.eval([token])
        decode.append((time.perf_counter() - start) / STEPS)
    print_figures(path, prefill, decode, baseline, version=llama_cpp.__version__)


def _teacher_forced(path: Path, ids: list[int]) -> np.ndarray:
    llm = llama_cpp.Llama(
        model_path=str(path),
        n_ctx=len(ids),
        n_batch=len(ids),
        n_threads=2,
        n_threads_batch=2,
        logits_all=True,
        verbose=False,
    )
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float64)


def _perplexity(logits: np.ndarray, ids: list[int]) -> float:
    x = logits[:-1] - logits[:-1].max(axis=1, keepdims=True)
    log_probs = x - np.log(np.exp(x).sum(axis=1, keepdims=True))
    return float(np.exp(-log_probs[np.arange(len(ids) - 1), ids[1:]].mean()))


def agreement(folder: Path, ids_file: Path) -> None:
    ids = json.loads(ids_file.read_text())
    reference = _teacher_forced(folder / "smollm2-135m-F32.gguf", ids)
    result = {"tokens": len(ids), "F32": {"perplexity": _perplexity(reference, ids)}}
    for name in FTYPES:
        if name != "F32":
            logits = _teacher_forced(folder / f"smollm2-135m-{name}.gguf", ids)
            result[name] = {
                "top1_agreement": float(np.mean(logits.argmax(1) == reference.argmax(1))),
                "perplexity": _perplexity(logits, ids),
            }
    print(json.dumps(result))


if __name__ == "__main__":
    if sys.argv[1] == "prepare":
        prepare(Path(sys.argv[2]), Path(sys.argv[3]))
    elif sys.argv[1] == "agreement":
        agreement(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        measure(Path(sys.argv[2]))
