"""Runtime memory of a converted file in genapi.runtime, measured in a fresh process.

Converts SmolLM2-135M-Instruct (fp32) unless a .tflite is given, builds the XNNPACK weight
cache in a first process, then in a second one reads the peak RSS above the baseline after
imports while generating 32 tokens after a 128-token prompt, and prints it against the file.

    python benchmarks/runtime_memory.py [model.tflite]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import json, sys

def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024

import ai_edge_litert.compiled_model  # noqa: F401  (imports count in the baseline)
from genapi.runtime import LiteRTGenerator

baseline = status("VmRSS")
generator = LiteRTGenerator(sys.argv[1], weight_cache=sys.argv[2])
tokens = list(generator.generate(list(range(100, 228)), max_new_tokens=32, stop_ids=()))
print(json.dumps({"baseline": baseline, "peak": status("VmHWM"), "tokens": len(tokens),
                  "decode_tok_s": generator.stats.decode_tokens_per_second}))
"""


def _convert(folder: str) -> str:
    import genapi
    from genapi.defaults import default_checkpoint

    checkpoint = genapi.open_checkpoint(default_checkpoint())
    path = os.path.join(folder, "smollm2-fp32.tflite")
    meta = genapi.build_model(checkpoint.config, device="meta")
    genapi.export_llm(
        meta,
        path,
        prefill_lengths=(128,),
        kv_cache_len=512,
        weights=genapi.model_weights(checkpoint),
    )
    return path


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = sys.argv[1] if len(sys.argv) > 1 else _convert(folder)
        cache = os.path.join(folder, "weights.xnnpack_cache")
        run = [sys.executable, "-c", CHILD, path, cache]
        subprocess.run(run, check=True, capture_output=True)  # builds the weight cache
        result = json.loads(subprocess.run(run, check=True, capture_output=True).stdout)
        size = os.path.getsize(path)
        added = result["peak"] - result["baseline"]
        mib = 2**20
        print(f"file:                    {size / mib:8.1f} MiB  ({os.path.basename(path)})")
        print(f"baseline after imports:  {result['baseline'] / mib:8.1f} MiB")
        print(f"peak RSS:                {result['peak'] / mib:8.1f} MiB")
        print(f"added peak / file size:  {added / size:8.2f}x  (litert-torch, Interpreter: 3-4x)")
        print(f"decode:                  {result['decode_tok_s']:8.1f} tok/s")


if __name__ == "__main__":
    main()
