"""Conversion at full size: Phi-2 (2.7B) and TinyLlama-1.1B with seeded random weights.

    python benchmarks/scale.py [--models phi-2,tinyllama-1.1b] [--recipes dynamic_int8,none]
                               [--cache ~/.cache/genapi-bench] [--no-check] [--xnnpack]
                               [--markdown docs/scale.md]

1. Checkpoints: transformers' own PhiForCausalLM / LlamaForCausalLM, built from the real
   config.json (genapi's presets mirror them), with seeded random bf16 weights, written by
   `save_pretrained` as sharded safetensors into the cache folder. Generated once; later runs
   reuse them. The model is built on the meta device and materialized in bf16 only, so
   generation needs about the bf16 checkpoint size in memory, never an fp32 copy.
2. Conversions: each recipe in a fresh child process under `/usr/bin/time -v`
   (`benchmarks/convert.py`), streaming tensors from the safetensors shards into the file:
   wall time and peak RSS of the whole process.
3. Check (fp32 files): a prefill of the smallest length and one decode step in ai-edge-litert,
   against the genapi PyTorch model loaded in fp32 in another process, on the same tokens.
   XNNPACK is off by default for this check: its Interpreter packs the weights once per
   signature (2 x 11 GB for Phi-2), which does not fit in 24 GiB of RAM. `--xnnpack` also runs
   the check through CompiledModel with an XNNPACK weight cache file (packed once into the
   file, then mapped).

Disk: Phi-2 needs 5.6 GB for the checkpoint and 11 GB for the fp32 file (plus 11 GB for the
weight cache with `--xnnpack`); files are deleted after their check unless `--keep`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from convert import TIME_BINARY, _peak_rss_bytes, _wall_seconds, run_child  # noqa: E402

GIB = 2**30
MIB = 2**20
DEFAULT_CACHE = Path("~/.cache/genapi-bench").expanduser()
# Prefill lengths of the converted files (the check uses the smallest) and the KV cache.
PREFILL_LENGTHS = (8, 128)
KV_CACHE_LEN = 512
DECODE_TOKEN = 123
SHARD_SIZE = "2GB"
WEIGHT_STD = 0.02  # the init scale of both families in transformers
RSS_LIMIT_INT8 = 4 * GIB  # the bound for Phi-2 dynamic_int8 the benchmark holds genapi to
TOLERANCE = 1e-3  # on the fp32 files' logits against PyTorch


def _presets() -> dict[str, dict]:
    from genapi.models import llama, phi2

    return {"phi-2": phi2.PHI2, "tinyllama-1.1b": llama.TINYLLAMA_1_1B}


# -- checkpoints ------------------------------------------------------------------------------


def _seeded(name: str, shape: tuple[int, ...]):
    """Weights for one tensor, fixed by its name alone (so order and sharding do not matter)."""
    import torch

    gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    values = torch.randn(shape, generator=gen)
    if "norm" in name and name.endswith(".weight"):
        return 1.0 + 0.1 * values  # norms around one, so that no channel is switched off
    return WEIGHT_STD * values


def generate_checkpoint(preset: str, folder: Path) -> None:
    """Write the seeded checkpoint of `preset` into `folder` (the child's work)."""
    import torch
    import transformers

    hf = _presets()[preset]
    architecture = hf["architectures"][0]
    config_cls = {
        "PhiForCausalLM": transformers.PhiConfig,
        "LlamaForCausalLM": transformers.LlamaConfig,
    }[architecture]
    model_cls = getattr(transformers, architecture)
    config = config_cls(**{k: v for k, v in hf.items() if k != "architectures"})
    config.architectures = [architecture]
    with torch.device("meta"):
        model = model_cls(config)
    model = model.to(torch.bfloat16).to_empty(device="cpu")  # bf16 storage, no fp32 copy
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(_seeded(name, tuple(param.shape)))
    model.config.dtype = torch.bfloat16
    model.save_pretrained(folder, max_shard_size=SHARD_SIZE)
    (folder / "COMPLETE").write_text(f"{preset} seeded by tensor name, std {WEIGHT_STD}\n")


def _timed_child(args: list[str]) -> tuple[float, int, str]:
    """Run this script with `args` under /usr/bin/time -v: wall seconds, peak RSS, stdout."""
    if not Path(TIME_BINARY).is_file():
        raise SystemExit(f"{TIME_BINARY} is missing; install GNU time (apt-get install time)")
    command = [TIME_BINARY, "-v", sys.executable, str(Path(__file__).resolve()), *args]
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"{' '.join(args[:2])} failed with exit status {proc.returncode}")
    return _wall_seconds(proc.stderr), _peak_rss_bytes(proc.stderr), proc.stdout


def ensure_checkpoint(preset: str, cache: Path) -> tuple[Path, dict | None]:
    """The cached checkpoint folder, generated first if missing, and generation figures."""
    folder = cache / f"{preset}-seeded"
    if (folder / "COMPLETE").is_file():
        return folder, None
    print(f"generating {preset} checkpoint in {folder} ...", flush=True)
    folder.mkdir(parents=True, exist_ok=True)
    wall, peak, _ = _timed_child(["--generate", preset, "--folder", str(folder)])
    size = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    print(f"  {size / GIB:.2f} GiB in {wall:.0f} s, peak RSS {peak / GIB:.2f} GiB", flush=True)
    return folder, {"wall_s": wall, "peak_rss": peak, "bytes": size}


# -- the check --------------------------------------------------------------------------------


def _prompt(vocab_size: int, length: int) -> list[int]:
    """Token ids spread over the vocabulary, the last one included."""
    return [(i * 7919 + 11) % vocab_size for i in range(length - 1)] + [vocab_size - 1]


def reference_logits(folder: Path, length: int, out: Path) -> None:
    """The child's work: genapi's PyTorch model in fp32, prefill then one decode step."""
    import numpy as np
    import torch

    import genapi
    from genapi.layers import KVCache

    checkpoint = genapi.open_checkpoint(folder)
    model = genapi.load(checkpoint)
    prompt = _prompt(checkpoint.config.vocab_size, length)
    cache = KVCache.empty(model.config, cache_len=KV_CACHE_LEN, layout="transposed")
    with torch.no_grad():
        _, cache = model(torch.tensor([prompt]), input_pos=torch.arange(length), kv_cache=cache)
        logits, _ = model(
            torch.tensor([[DECODE_TOKEN]]), input_pos=torch.tensor([length]), kv_cache=cache
        )
    np.save(out, logits[0, -1].numpy())


def litert_logits(path: Path, out: Path, *, xnnpack: bool) -> None:
    """The child's work: the smallest prefill of the file and one decode step in ai-edge-litert."""
    import numpy as np

    if xnnpack:
        from genapi.runtime import LiteRTGenerator

        generator = LiteRTGenerator(path, weight_cache=path.with_suffix(".xnnpack_cache"))
        length = generator.prefill_lengths[0]
        vocab_size = generator.decode(0, 0).shape[-1]  # any call; the prefill overwrites it
        generator.prefill(_prompt(vocab_size, length))
        np.save(out, generator.decode(DECODE_TOKEN, length))
        return

    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(
        model_path=str(path),
        num_threads=2,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    keys = sorted(
        (k for k in interpreter.get_signature_list() if k.startswith("prefill_")),
        key=lambda k: int(k.split("_")[1]),
    )
    prefill = interpreter.get_signature_runner(keys[0])
    decode = interpreter.get_signature_runner("decode")
    length = int(keys[0].split("_")[1])
    inputs = decode.get_input_details()
    cache = {
        name: np.zeros(d["shape"], d["dtype"])
        for name, d in inputs.items()
        if name.startswith("kv_cache_")
    }
    vocab_size = int(decode.get_output_details()["logits"]["shape"][-1])
    tokens = np.array([_prompt(vocab_size, length)], np.int32)
    result = prefill(tokens=tokens, input_pos=np.arange(length, dtype=np.int32), **cache)
    cache = {name: result[name] for name in cache}
    result = decode(
        tokens=np.array([[DECODE_TOKEN]], np.int32),
        input_pos=np.array([length], np.int32),
        **cache,
    )
    np.save(out, result["logits"].reshape(-1))


def check(folder: Path, path: Path, work: Path, *, xnnpack: bool) -> list[dict]:
    """Max |logit difference| of one decode step, ai-edge-litert against PyTorch.

    One result with XNNPACK off, and a second with XNNPACK on if `xnnpack`.
    """
    import numpy as np

    theirs = work / f"{path.stem}-torch.npy"
    length = str(min(PREFILL_LENGTHS))
    ref_wall, ref_peak, _ = _timed_child(
        ["--reference-child", str(folder), "--length", length, "--out", str(theirs)]
    )
    print(f"  PyTorch fp32: {ref_wall:.0f} s, peak RSS {ref_peak / GIB:.2f} GiB", flush=True)
    reference = np.load(theirs)
    results = []
    for mode in (False, True) if xnnpack else (False,):
        ours = work / f"{path.stem}-litert-{'xnnpack' if mode else 'builtin'}.npy"
        child = ["--litert-child", str(path), "--out", str(ours), *(["--xnnpack"] if mode else [])]
        wall, peak, _ = _timed_child(child)
        logits = np.load(ours)
        results.append(
            {
                "max_logit_diff": float(np.abs(logits - reference).max()),
                "logit_scale": float(np.abs(reference).max()),
                "same_argmax": bool(logits.argmax() == reference.argmax()),
                "litert_wall_s": wall,
                "litert_peak_rss": peak,
                "torch_wall_s": ref_wall,
                "torch_peak_rss": ref_peak,
                "xnnpack": mode,
            }
        )
        print(
            f"  ai-edge-litert, XNNPACK {'on' if mode else 'off'}: {wall:.0f} s, peak RSS "
            f"{peak / GIB:.2f} GiB, max logit diff {results[-1]['max_logit_diff']:.2e} "
            f"(largest logit {results[-1]['logit_scale']:.2f})",
            flush=True,
        )
    return results


# -- driver -----------------------------------------------------------------------------------


def convert(folder: Path, recipe: str, output: Path, work: Path) -> dict:
    args = argparse.Namespace(
        checkpoint=folder,
        prefill_lengths=list(PREFILL_LENGTHS),
        kv_cache_len=KV_CACHE_LEN,
        quantize=recipe,
    )
    info = run_child(args, output, work / "result.json")
    return {
        "wall_s": info["process_wall"],
        "peak_rss": info["peak_rss_bytes"],
        "file_bytes": info["file_bytes"],
        "fp32_weight_bytes": info["fp32_weight_bytes"],
        "stages": info["stages"],
        "load_average": os.getloadavg()[0],  # other work on the machine slows the wall time
    }


RECIPE_NAMES = {"none": "fp32", "dynamic_int8": "dynamic_int8"}


CONVERSION_HEADER = (
    "| model | recipe | parameters (fp32 bytes) | file | conversion wall (load avg) | peak RSS "
    "| RSS / file |"
)
CHECK_HEADER = (
    "| model | XNNPACK | max logit diff | largest logit | same argmax | ai-edge-litert wall, "
    "peak RSS | PyTorch wall, peak RSS |"
)
XNNPACK_NOTE = """XNNPACK off: ai-edge-litert's Interpreter with its builtin kernels, which read the
weights from the mapped file (with XNNPACK the Interpreter packs the weights once per signature,
about twice the fp32 weight bytes, 22 GB for Phi-2: more than this 24 GiB machine holds).
XNNPACK on: CompiledModel with an XNNPACK weight cache file, packed once and then mapped. Peak
RSS is mostly mapped file pages (shared, reclaimable page cache)."""


def markdown(results: dict) -> str:
    """The results as a Markdown page."""
    lengths = ", ".join(map(str, PREFILL_LENGTHS))
    lines = [
        "# Conversion at scale",
        "",
        f"Written by `make bench-scale` (`benchmarks/scale.py`) on {results['date']}; machine:",
        f"{_machine()}. Seeded random weights in real Hugging Face naming, written by",
        "transformers' own classes as bf16 sharded safetensors. Files have prefill lengths",
        f"{lengths} and a KV cache of {KV_CACHE_LEN}. Each conversion runs in a fresh process",
        "under `/usr/bin/time -v`; peak RSS is that of the whole process, imports included.",
        "",
        CONVERSION_HEADER,
        "|---|---|---|---|---|---|---|",
    ]
    for preset, entry in results["models"].items():
        for recipe, c in entry["conversions"].items():
            lines.append(
                f"| {preset} | {RECIPE_NAMES.get(recipe, recipe)} "
                f"| {c['fp32_weight_bytes'] / GIB:.2f} GiB "
                f"| {c['file_bytes'] / 1e9:.2f} GB ({c['file_bytes'] / GIB:.2f} GiB) "
                f"| {c['wall_s']:.0f} s{_load(c)} | {c['peak_rss'] / GIB:.2f} GiB "
                f"| {c['peak_rss'] / c['file_bytes']:.2f}x |"
            )
    if results.get("note"):
        lines += ["", results["note"]]
    lines += ["", "## Running the fp32 files", ""]
    checks = [(p, c) for p, e in results["models"].items() for c in e.get("checks", [])]
    if not checks:
        lines.append("Not run (`--no-check`).")
    else:
        lines += [
            f"A prefill of {min(PREFILL_LENGTHS)} tokens and one decode step in ai-edge-litert,",
            "against genapi's PyTorch model in fp32 (loaded in a separate process) on the same",
            "tokens; max |difference| over the decode step's logits.",
            "",
            CHECK_HEADER,
            "|---|---|---|---|---|---|---|",
        ]
        for preset, c in checks:
            lines.append(
                f"| {preset} | {'on (weight cache file)' if c['xnnpack'] else 'off'} "
                f"| {c['max_logit_diff']:.2e} | {c['logit_scale']:.2f} | {c['same_argmax']} "
                f"| {c['litert_wall_s']:.0f} s, {c['litert_peak_rss'] / GIB:.2f} GiB "
                f"| {c['torch_wall_s']:.0f} s, {c['torch_peak_rss'] / GIB:.2f} GiB |"
            )
        lines += ["", XNNPACK_NOTE]
    generated = [(p, e["generated"]) for p, e in results["models"].items() if e.get("generated")]
    if generated:
        lines += ["", "Checkpoint generation (once, then cached):", ""]
        for preset, g in generated:
            lines.append(
                f"- {preset}: {g['bytes'] / GIB:.2f} GiB of safetensors in {g['wall_s']:.0f} s, "
                f"peak RSS {g['peak_rss'] / GIB:.2f} GiB."
            )
    return "\n".join(lines) + "\n"


def _load(conversion: dict) -> str:
    load = conversion.get("load_average")
    return "" if load is None else f" ({load:.1f})"


def _machine() -> str:
    model = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        total = int(f.readline().split()[1]) * 1024
    return f"{model}, {os.cpu_count()} cores, {total / GIB:.0f} GiB RAM"


def run(args: argparse.Namespace) -> dict:
    cache = args.cache
    work = cache / "work"
    work.mkdir(parents=True, exist_ok=True)
    results = {"date": time.strftime("%Y-%m-%d"), "models": {}, "failures": []}
    for preset in args.models:
        folder, generated = ensure_checkpoint(preset, cache)
        entry = results["models"][preset] = {"generated": generated, "conversions": {}}
        for recipe in args.recipes:
            output = work / f"{preset}-{recipe}.tflite"
            print(f"converting {preset} to {recipe} ...", flush=True)
            c = entry["conversions"][recipe] = convert(folder, recipe, output, work)
            print(
                f"  {c['file_bytes'] / GIB:.2f} GiB in {c['wall_s']:.0f} s, "
                f"peak RSS {c['peak_rss'] / GIB:.2f} GiB",
                flush=True,
            )
            if preset == "phi-2" and recipe == "dynamic_int8" and c["peak_rss"] > RSS_LIMIT_INT8:
                results["failures"].append(
                    f"Phi-2 dynamic_int8 peak RSS {c['peak_rss'] / GIB:.2f} GiB is above the "
                    f"{RSS_LIMIT_INT8 / GIB:.0f} GiB bound"
                )
            if recipe == "none" and args.check:
                print(f"checking {output.name} ...", flush=True)
                entry["checks"] = check(folder, output, work, xnnpack=args.xnnpack)
                results["failures"] += [
                    f"{preset} fp32 logits differ by {c['max_logit_diff']:.2e} (> {TOLERANCE:g})"
                    for c in entry["checks"]
                    if c["max_logit_diff"] > TOLERANCE
                ]
            if not args.keep:
                output.unlink()
                output.with_suffix(".xnnpack_cache").unlink(missing_ok=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="phi-2,tinyllama-1.1b")
    parser.add_argument("--recipes", default="dynamic_int8,none")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--no-check", dest="check", action="store_false")
    parser.add_argument("--xnnpack", action="store_true", help="check with XNNPACK too (above)")
    parser.add_argument("--keep", action="store_true", help="keep the converted files")
    parser.add_argument("--markdown", type=Path, help="write the results page here")
    parser.add_argument("--json", type=Path, help="write the raw results here")
    parser.add_argument("--from-json", type=Path, help="only render the page of saved results")
    # The children's entry points.
    parser.add_argument("--generate", help=argparse.SUPPRESS)
    parser.add_argument("--reference-child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--litert-child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.generate:
        return generate_checkpoint(args.generate, args.folder)
    if args.reference_child:
        return reference_logits(args.reference_child, args.length, args.out)
    if args.litert_child:
        return litert_logits(args.litert_child, args.out, xnnpack=args.xnnpack)

    if args.from_json:
        page = markdown(json.loads(args.from_json.read_text()))
        if args.markdown:
            args.markdown.write_text(page)
        return print(page)

    args.models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(args.models) - set(_presets()))
    if unknown:
        raise SystemExit(f"unknown models {unknown}; choose from {sorted(_presets())}")
    args.recipes = [r for r in args.recipes.split(",") if r]
    results = run(args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    page = markdown(results)
    if args.markdown:
        args.markdown.write_text(page)
    print(page)
    if results["failures"]:
        raise SystemExit("FAILED: " + "; ".join(results["failures"]))


if __name__ == "__main__":
    main()
