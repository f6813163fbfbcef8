"""The performance report: runs the benchmarks and writes docs/benchmarks.md and a PNG chart.

    python benchmarks/report.py [--out docs] [--only smollm2:none,gemma3:dynamic_int8]

For each model and recipe (SmolLM2-135M-Instruct fp32, dynamic_int8 and dynamic_int4 with
blocks of 32; Gemma 3 270M dynamic_int8), every measurement in a fresh process:

- conversion (`convert.py`): one `prefill_128` signature and a KV cache of 512, under
  `/usr/bin/time -v`: wall time and peak RSS of the whole process, file size;
- speed (`runtime_speed.py`'s child): a 128-token prefill and 32 greedy decode steps on 2
  threads, best of three, and the runtime RSS above the baseline after imports, with the XNNPACK
  weight cache built in an earlier process;
- accuracy (`quantization.py`): teacher-forced over `genapi/data/eval_prose.txt` against the
  float32 PyTorch model (top-1 agreement, perplexity, max logit error) and the greedy answer to
  the chat prompt.

The raw figures are also written to `benchmarks.json` next to the page.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from convert import run_child  # noqa: E402
from runtime_speed import CHILD as SPEED_CHILD  # noqa: E402

MIB = 2**20
ROWS = [
    ("smollm2", "none"),
    ("smollm2", "dynamic_int8"),
    ("smollm2", "dynamic_int4"),
    ("gemma3", "dynamic_int8"),
]
MODEL_NAMES = {"smollm2": "SmolLM2-135M-Instruct", "gemma3": "Gemma 3 270M"}
RECIPE_NAMES = {"none": "fp32", "dynamic_int8": "dynamic_int8", "dynamic_int4": "dynamic_int4/32"}


def _checkpoint(model: str) -> Path:
    sys.path.insert(0, str(HERE.parent / "tests"))
    from real_models import gemma3_gguf, smollm2_gguf

    return Path({"smollm2": smollm2_gguf, "gemma3": gemma3_gguf}[model]())


def measure_conversion(model: str, recipe: str, output: Path, work: Path) -> dict:
    args = argparse.Namespace(
        checkpoint=_checkpoint(model), prefill_lengths=[128], kv_cache_len=512, quantize=recipe
    )
    info = run_child(args, output, work / "result.json")
    return {
        "convert_s": info["process_wall"],
        "convert_peak_rss": info["peak_rss_bytes"],
        "file_bytes": info["file_bytes"],
        "load_average": os.getloadavg()[0],  # other work on the machine slows every figure
    }


def measure_speed(path: Path, work: Path) -> dict:
    cache = work / "weights.xnnpack_cache"
    run = [sys.executable, "-c", SPEED_CHILD, str(path), str(cache)]
    subprocess.run(run, check=True, capture_output=True)  # builds the weight cache
    result = json.loads(subprocess.run(run, check=True, capture_output=True).stdout)
    cache.unlink()
    return {
        "prefill_ms": result["prefill_ms"],
        "decode_ms": result["decode_ms"],
        "runtime_rss": result["peak"] - result["baseline"],
    }


def measure_accuracy(model: str, recipes: list[str], work: Path) -> dict[str, dict]:
    """Accuracy figures per recipe, from one child process per model."""
    out = work / f"accuracy-{model}.json"
    child = [sys.executable, str(Path(__file__).resolve()), "--accuracy-child", model]
    subprocess.run([*child, ",".join(recipes), "--json", str(out)], check=True)
    return json.loads(out.read_text())


def accuracy_child(model: str, recipes: list[str], out: Path) -> None:
    from quantization import evaluate

    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for result in evaluate(model, recipes, folder):
            report = result["report"]
            results[result["recipe"]] = {
                **asdict(report),
                "perplexity_increase": report.perplexity_increase,
                "answer": result["answer"],
            }
    out.write_text(json.dumps(results))


def run(rows: list[tuple[str, str]]) -> list[dict]:
    results = []
    with tempfile.TemporaryDirectory(prefix="genapi-report-") as folder:
        work = Path(folder)
        accuracy = {}
        for model in dict.fromkeys(m for m, _ in rows):
            print(f"accuracy of {model} ...", flush=True)
            accuracy[model] = measure_accuracy(model, [r for m, r in rows if m == model], work)
        for model, recipe in rows:
            print(f"{model} {recipe}: conversion ...", flush=True)
            path = work / f"{model}-{recipe}.tflite"
            row = {"model": model, "recipe": recipe}
            row.update(measure_conversion(model, recipe, path, work))
            print(f"{model} {recipe}: speed ...", flush=True)
            row.update(measure_speed(path, work))
            row.update(accuracy[model][recipe])
            path.unlink()
            print(json.dumps(row), flush=True)
            results.append(row)
    return results


def _machine() -> str:
    model = platform.processor() or "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        total = int(f.readline().split()[1]) * 1024
    return f"{model}, {os.cpu_count()} cores, {total / 2**30:.0f} GiB RAM"


SPEED_HEADER = (
    "| model | recipe | convert wall | convert peak RSS | file | prefill-128 | decode "
    "| runtime RSS | load avg |"
)
ACCURACY_HEADER = (
    "| model | recipe | top-1 agreement | perplexity (fp32 PyTorch) | max logit error | answer |"
)


def markdown(results: list[dict], chart: str) -> str:
    """docs/benchmarks.md: one table of speed and memory, one of accuracy."""
    lines = [
        "# Benchmarks",
        "",
        f"Written by `make bench` (`benchmarks/report.py`) on {time.strftime('%Y-%m-%d')};",
        f"machine: {_machine()}.",
        "Every figure comes from a fresh process. Files have one `prefill_128` signature and a",
        "KV cache of 512 (the shape of the reference figures below); the runtime is",
        "ai-edge-litert's CompiledModel on 2 threads with an XNNPACK weight cache file built in",
        "an earlier process. Single runs on a shared 2-core machine vary by 10-25%.",
        "",
        f"![decode, prefill, file size and conversion memory]({chart})",
        "",
        "## Speed and memory",
        "",
        SPEED_HEADER,
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {MODEL_NAMES[r['model']]} | {RECIPE_NAMES[r['recipe']]} "
            f"| {r['convert_s']:.1f} s | {r['convert_peak_rss'] / MIB:.0f} MiB "
            f"| {r['file_bytes'] / MIB:.1f} MiB | {r['prefill_ms']:.0f} ms "
            f"| {r['decode_ms']:.1f} ms/token | {r['runtime_rss'] / MIB:.0f} MiB "
            f"| {r['load_average']:.1f} |"
        )
    lines += [
        "",
        "Runtime RSS is the peak resident memory while generating, above the process's baseline",
        "after imports; the packed weights live in the mapped weight cache file. Load avg is the",
        "machine's 1-minute load average after the conversion (2 cores): above about 2, other",
        "work was competing and the timings of that row are slower than the machine can do.",
        "",
        "## Accuracy",
        "",
        "Teacher-forced over `genapi/data/eval_prose.txt` against the float32 PyTorch model; the",
        "answer is the greedy reply to the chat prompt `What is the capital of France? Answer in",
        "one sentence.` (16 tokens at most).",
        "",
        ACCURACY_HEADER,
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        answer = r["answer"].replace("|", "\\|").replace("\n", " ").strip()
        lines.append(
            f"| {MODEL_NAMES[r['model']]} | {RECIPE_NAMES[r['recipe']]} "
            f"| {100 * r['top1_agreement']:.1f}% over {r['tokens']} tokens "
            f"| {r['perplexity']:.3f} ({r['reference_perplexity']:.3f}, "
            f"{100 * r['perplexity_increase']:+.1f}%) | {r['max_logit_error']:.3g} | {answer} |"
        )
    lines += [
        "",
        "## Reference figures",
        "",
        "Google's litert-torch 0.10.0 on a SmolLM-135M-shaped checkpoint (seeded random weights),",
        "same file shape, run in ai-edge-litert's plain Interpreter, measured earlier on this",
        "machine. `make bench-peers` measures litert-torch and llama.cpp on the real SmolLM2",
        "side by side with genapi in one run: see [peers.md](peers.md).",
        "",
        "| litert-torch 0.10.0 | fp32 | dynamic_int8 |",
        "|---|---|---|",
        "| convert wall / peak RSS | 100 s / 3.9 GiB | 92 s / 3.9 GiB |",
        "| file | 541 MB | 143 MB |",
        "| prefill-128 | 188 ms | 117 ms |",
        "| decode | 40.7 ms/token | 28.3 ms/token |",
        "",
        "Full-size models (Phi-2 2.7B, TinyLlama-1.1B): [scale.md](scale.md), written by",
        "`make bench-scale`.",
    ]
    return "\n".join(lines) + "\n"


def chart(results: list[dict], path: Path) -> None:
    """Four bar charts: decode, prefill, file size and conversion peak RSS per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [
        f"{MODEL_NAMES[r['model']].split('-')[0]}\n{RECIPE_NAMES[r['recipe']]}" for r in results
    ]
    panels = [
        ("decode (ms/token)", [r["decode_ms"] for r in results]),
        ("prefill 128 tokens (ms)", [r["prefill_ms"] for r in results]),
        ("file (MiB)", [r["file_bytes"] / MIB for r in results]),
        ("conversion peak RSS (MiB)", [r["convert_peak_rss"] / MIB for r in results]),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    colors = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860"]
    for ax, (title, values) in zip(axes.flat, panels, strict=False):
        bars = ax.bar(range(len(values)), values, color=colors[: len(values)])
        ax.bar_label(bars, fmt="%.0f" if max(values) >= 100 else "%.1f", fontsize=8)
        ax.set_title(title)
        ax.set_xticks(range(len(values)), labels, fontsize=8)
        ax.margins(y=0.15)
    fig.suptitle("genapi on a 2-core x86 CPU (ai-edge-litert, 2 threads)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE.parent / "docs")
    parser.add_argument("--only", help="model:recipe pairs, comma-separated (default: all)")
    parser.add_argument("--from-json", action="store_true", help="only redraw from benchmarks.json")
    parser.add_argument("--accuracy-child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.accuracy_child:
        model, recipes = args.accuracy_child
        return accuracy_child(model, recipes.split(","), args.json)

    rows = ROWS
    if args.only:
        rows = [tuple(pair.split(":", 1)) for pair in args.only.split(",")]
        unknown = [row for row in rows if row not in ROWS]
        if unknown:
            raise SystemExit(f"unknown rows {unknown}; choose from {ROWS}")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.from_json:
        results = json.loads((args.out / "benchmarks.json").read_text())
    else:
        results = run(rows)
        (args.out / "benchmarks.json").write_text(json.dumps(results, indent=1) + "\n")
    chart(results, args.out / "benchmarks.png")
    (args.out / "benchmarks.md").write_text(markdown(results, "benchmarks.png"))
    print(f"wrote {args.out / 'benchmarks.md'} and {args.out / 'benchmarks.png'}")


if __name__ == "__main__":
    main()
