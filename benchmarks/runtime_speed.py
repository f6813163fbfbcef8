"""Speed and memory of SmolLM2-135M-Instruct in genapi.runtime, one recipe per fresh process.

For each recipe: converts the model with one prefill length of 128 and a KV cache of 512 (the
shape of the reference figures in DESIGN.md), builds the XNNPACK weight cache in a first
process, then in a second one times a 128-token prefill and 32 greedy decode steps on 2
threads, three times, and keeps the best run; it also reads the peak RSS above the baseline
after imports. Prints one line per recipe.

    python benchmarks/runtime_speed.py [recipe[:block] ...]   (default: none dynamic_int8
                                                               dynamic_int4:32)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import json, sys, time
import numpy as np

def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024

import ai_edge_litert.compiled_model  # noqa: F401  (imports count in the baseline)
from genapi.runtime import LiteRTGenerator

baseline = status("VmRSS")
generator = LiteRTGenerator(sys.argv[1], weight_cache=sys.argv[2], num_threads=2)
prompt = list(range(100, 228))
prefill, decode = [], []
for _ in range(3):
    start = time.perf_counter()
    generator.prefill(prompt)
    prefill.append(time.perf_counter() - start)
    token, steps = 42, 32
    start = time.perf_counter()
    for pos in range(128, 128 + steps):
        token = int(np.argmax(generator.decode(token, pos)))
    decode.append((time.perf_counter() - start) / steps)
print(json.dumps({"baseline": baseline, "peak": status("VmHWM"),
                  "prefill_ms": 1000 * min(prefill), "decode_ms": 1000 * min(decode)}))
"""

DEFAULT = ["none", "dynamic_int8", "dynamic_int4:32"]


def _convert(checkpoint, folder: str, entry: str) -> tuple[str, float]:
    import genapi

    recipe, _, block = entry.partition(":")
    path = os.path.join(folder, f"smollm2-{recipe}-{block or 'x'}.tflite")
    start = time.perf_counter()
    genapi.export_llm(
        genapi.build_model(checkpoint.config, device="meta"),
        path,
        prefill_lengths=(128,),
        kv_cache_len=512,
        quantize=recipe,
        block_size=int(block or 32),
        weights=genapi.model_weights(checkpoint),
    )
    return path, time.perf_counter() - start


def main() -> None:
    import genapi
    from genapi.defaults import default_checkpoint

    checkpoint = genapi.open_checkpoint(default_checkpoint())
    mib = 2**20
    print("recipe             file MiB  convert s  prefill-128 ms  decode ms/token  RSS/file")
    with tempfile.TemporaryDirectory() as folder:
        for entry in sys.argv[1:] or DEFAULT:
            path, seconds = _convert(checkpoint, folder, entry)
            cache = os.path.join(folder, "weights.xnnpack_cache")
            run = [sys.executable, "-c", CHILD, path, cache]
            subprocess.run(run, check=True, capture_output=True)  # builds the weight cache
            result = json.loads(subprocess.run(run, check=True, capture_output=True).stdout)
            size = os.path.getsize(path)
            ratio = (result["peak"] - result["baseline"]) / size
            print(
                f"{entry:18s} {size / mib:8.1f}  {seconds:9.1f}  {result['prefill_ms']:14.1f}  "
                f"{result['decode_ms']:15.2f}  {ratio:8.2f}x",
                flush=True,
            )
            os.remove(path)
            os.remove(cache)


if __name__ == "__main__":
    main()
