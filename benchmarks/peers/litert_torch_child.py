"""litert-torch side of `make bench-peers`; runs in the litert-torch environment, not genapi's.

    python litert_torch_child.py HF_FOLDER RECIPE OUTPUT.tflite

Converts SmolLM2 with litert-torch's own SmolLM2 example converter: one prefill length of 128,
a KV cache of 512 and the mask as an input (the form LiteRT-LM runs, which genapi's runner
reads too), quantized with RECIPE ("none" or "dynamic_int8"). The caller times this process.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path


def main() -> None:
    folder, recipe, output = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    with tempfile.TemporaryDirectory(dir=output.parent) as work:
        command = [
            sys.executable,
            "-m",
            "litert_torch.generative.examples.smollm.convert_v2_to_tflite",
            f"--checkpoint_path={folder}",
            f"--output_path={work}",
            "--output_name_prefix=smollm2",
            "--prefill_seq_lens=128",
            "--kv_cache_max_len=512",
            f"--quantize={recipe}",
            "--mask_as_input=true",
        ]
        subprocess.run(command, check=True)
        produced = sorted(Path(work).glob("*.tflite"))
        if len(produced) != 1:
            raise SystemExit(f"expected one .tflite from litert-torch, found {produced}")
        produced[0].rename(output)


if __name__ == "__main__":
    main()
