"""Accuracy, size and speed of each quantization recipe on a real model.

For each recipe: converts the model (prefill 128 with logits, KV cache 1024 so the whole
evaluation text fits), reports file size against fp32, the teacher-forced accuracy report
against the float32 PyTorch model over `genapi/data/eval_prose.txt` (top-1 agreement,
perplexity of both, max logit error), and the greedy answer to the chat prompt.

    python benchmarks/quantization.py [smollm2|gemma3] [--calibrate] [recipe[:block] ...]

Defaults: smollm2 with none, fp16, dynamic_int8, weight_only_int8, dynamic_int4:32/64/128.
`--calibrate` converts with calibration over `genapi/data/calibration_prose.txt` (see
`genapi.export.calibrate`; never the evaluation text).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Iterator

import genapi
from genapi.evaluation import accuracy_report, reference_logits, text_ids
from genapi.export.calibrate import default_text as default_calibration_text
from genapi.runtime import LiteRTGenerator
from genapi.runtime.generator import prompt_ids

QUESTION = "What is the capital of France? Answer in one sentence."
DEFAULT_RECIPES = [
    "none",
    "fp16",
    "dynamic_int8",
    "weight_only_int8",
    "dynamic_int4:32",
    "dynamic_int4:64",
    "dynamic_int4:128",
]


def _checkpoint(name: str) -> str:
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    from real_models import gemma3_gguf, smollm2_gguf

    return {"smollm2": smollm2_gguf, "gemma3": gemma3_gguf}[name]()


def evaluate(
    name: str, recipes: list[str], folder: str, *, calibrate: bool = False
) -> Iterator[dict]:
    """Convert `name` with each recipe into `folder` and yield its figures, one recipe at a time.

    Each result holds the recipe, the file size, the conversion seconds, the AccuracyReport
    and the greedy answer to the chat prompt; the file is deleted before the next recipe.
    """
    checkpoint = genapi.open_checkpoint(_checkpoint(name))
    tokenizer = genapi.open_tokenizer(checkpoint)
    model = genapi.load(checkpoint)
    ids = text_ids(tokenizer)
    calibration = text_ids(tokenizer, default_calibration_text()) if calibrate else None
    reference = reference_logits(model, ids)
    chat = prompt_ids(tokenizer, QUESTION, chat=tokenizer.chat_template is not None)
    for entry in recipes:
        recipe, _, block = entry.partition(":")
        path = os.path.join(folder, f"{name}-{recipe}-{block or 'x'}.tflite")
        start = time.perf_counter()
        genapi.export_llm(
            genapi.build_model(checkpoint.config, device="meta"),
            path,
            prefill_lengths=(128,),
            kv_cache_len=1024,
            prefill_logits=True,
            quantize=recipe,
            block_size=int(block or 32),
            weights=genapi.model_weights(checkpoint),
            calibration=calibration,
        )
        seconds = time.perf_counter() - start
        report = accuracy_report(path, model, ids, reference=reference)
        generator = LiteRTGenerator(path)
        answer = tokenizer.decode(
            list(generator.generate(chat, max_new_tokens=16, stop_ids=tokenizer.stop_ids))
        )
        yield {
            "recipe": entry,
            "file_bytes": os.path.getsize(path),
            "seconds": seconds,
            "report": report,
            "answer": answer,
        }
        os.remove(path)


def main() -> None:
    args = sys.argv[1:]
    name = args.pop(0) if args and args[0] in ("smollm2", "gemma3") else "smollm2"
    calibrate = "--calibrate" in args
    args = [a for a in args if a != "--calibrate"]
    recipes = args or DEFAULT_RECIPES
    sizes = {}
    with tempfile.TemporaryDirectory() as folder:
        for result in evaluate(name, recipes, folder, calibrate=calibrate):
            entry = result["recipe"]
            sizes[entry] = result["file_bytes"]
            ratio = sizes[entry] / sizes.get("none", sizes[entry])
            print(
                f"{entry:18s} {sizes[entry] / 2**20:7.1f} MiB ({100 * ratio:5.1f}% of fp32) "
                f"converted in {result['seconds']:5.1f} s | {result['report']} | "
                f"answer {result['answer']!r}",
                flush=True,
            )


if __name__ == "__main__":
    main()
