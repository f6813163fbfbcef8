"""Runtime memory of a converted file in genapi.runtime, measured in a fresh process.

Converts SmolLM2-135M-Instruct (fp32) unless a .tflite is given, builds the XNNPACK weight
cache in a first process, then in a second one reads the peak RSS above the baseline after
imports while running a 128-token prefill and 32 decode steps (three times; the child of
`runtime_speed.py`), and prints it against the file.

    python benchmarks/runtime_memory.py [model.tflite]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from runtime_speed import CHILD  # the same measurement: 128-token prefill, 32 decode steps


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
        print(f"decode:                  {result['decode_ms']:8.2f} ms/token")


if __name__ == "__main__":
    main()
