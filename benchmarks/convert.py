"""Wall time and peak memory of converting the real SmolLM2-135M to fp32 `.tflite`.

    python benchmarks/convert.py [--checkpoint model.gguf] [--prefill-lengths 128]
                                 [--kv-cache-len 512] [--quantize none] [--output model.tflite]

The conversion runs in a child process under `/usr/bin/time -v`, so the peak RSS covers the
whole process (imports included) and nothing the parent did counts towards it. The child
streams the weights from the GGUF file into the writer: a model on the meta device plus
`model_weights(checkpoint)`, as `genapi convert` does. Defaults follow the reference
conversion in DESIGN.md (litert-torch 0.10.0: one prefill length of 128, a KV cache of 512,
100 s wall and about 7-8x the fp32 weight bytes of peak RSS).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# litert-torch 0.10.0 on a SmolLM-135M-shaped checkpoint, measured on this machine (DESIGN.md).
REFERENCE_WALL_SECONDS = 100.0
REFERENCE_RSS_RATIO = "7-8x"

TIME_BINARY = "/usr/bin/time"
MIB = 1024 * 1024


def convert(args: argparse.Namespace) -> dict:
    """The child's work: open, stream and convert; wall seconds per stage and sizes."""
    import genapi
    from genapi.loading.checkpoint import model_weights, open_checkpoint

    start = time.perf_counter()
    checkpoint = open_checkpoint(args.checkpoint)
    weights = model_weights(checkpoint)
    meta = genapi.build_model(checkpoint.config, device="meta")
    load = time.perf_counter() - start

    timings: dict[str, float] = {}
    path = genapi.export_llm(
        meta,
        args.output,
        prefill_lengths=args.prefill_lengths,
        kv_cache_len=args.kv_cache_len,
        quantize=args.quantize,
        weights=weights,
        timings=timings,
    )
    return {
        "stages": {"load": load, **timings},
        "convert_wall": time.perf_counter() - start,
        # parameters() yields a tied embedding once, as the file stores it.
        "fp32_weight_bytes": sum(p.numel() * 4 for p in meta.parameters()),
        "file_bytes": path.stat().st_size,
    }


def _wall_seconds(text: str) -> float:
    """`h:mm:ss` or `m:ss.ss` from /usr/bin/time's "Elapsed (wall clock) time" line."""
    value = re.search(r"Elapsed \(wall clock\) time .*: (\S+)", text).group(1)
    seconds = 0.0
    for part in value.split(":"):
        seconds = seconds * 60 + float(part)
    return seconds


def _peak_rss_bytes(text: str) -> int:
    return int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1)) * 1024


def run_child(args: argparse.Namespace, output: Path, result: Path) -> dict:
    """Run the conversion under /usr/bin/time -v; the child's result plus wall and peak RSS."""
    if not Path(TIME_BINARY).is_file():
        raise SystemExit(f"{TIME_BINARY} is missing; install GNU time (apt-get install time)")
    command = [
        TIME_BINARY,
        "-v",
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        str(result),
        "--checkpoint",
        str(args.checkpoint),
        "--prefill-lengths",
        ",".join(map(str, args.prefill_lengths)),
        "--kv-cache-len",
        str(args.kv_cache_len),
        "--quantize",
        args.quantize,
        "--output",
        str(output),
    ]
    proc = subprocess.run(command, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"the conversion failed with exit status {proc.returncode}")
    info = json.loads(result.read_text())
    info["process_wall"] = _wall_seconds(proc.stderr)
    info["peak_rss_bytes"] = _peak_rss_bytes(proc.stderr)
    return info


def format_table(info: dict, args: argparse.Namespace) -> str:
    """The measurements as a two-column table."""
    stages = info["stages"]
    weights = info["fp32_weight_bytes"]
    rows = [
        ("load (open_checkpoint, model_weights, meta model)", f"{stages['load']:.2f} s"),
        ("trace", f"{stages['trace']:.2f} s"),
        ("lower", f"{stages['lower']:.2f} s"),
        ("write", f"{stages['write']:.2f} s"),
        ("conversion wall (load to written file)", f"{info['convert_wall']:.2f} s"),
        ("process wall (with imports)", f"{info['process_wall']:.2f} s"),
        ("peak RSS (whole process)", f"{info['peak_rss_bytes'] / MIB:.0f} MiB"),
        ("fp32 weight bytes", f"{weights / MIB:.0f} MiB"),
        ("file size", f"{info['file_bytes'] / MIB:.0f} MiB"),
        (
            f"peak RSS / fp32 weights (litert-torch {REFERENCE_RSS_RATIO})",
            f"{info['peak_rss_bytes'] / weights:.2f}x",
        ),
        (
            f"process wall / {REFERENCE_WALL_SECONDS:.0f} s (litert-torch)",
            f"{info['process_wall'] / REFERENCE_WALL_SECONDS:.3f}",
        ),
    ]
    title = (
        f"{args.checkpoint.name} {args.quantize}, "
        f"prefill {','.join(map(str, args.prefill_lengths))}, "
        f"KV cache {args.kv_cache_len}"
    )
    width = max(len(name) for name, _ in rows)
    value_width = max(len(value) for _, value in rows)
    rule = "-" * (width + value_width + 3)
    lines = [title, rule]
    lines += [f"{name:<{width}}   {value:>{value_width}}" for name, value in rows]
    return "\n".join([*lines, rule])


def _lengths(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of integers, e.g. 128 or 8,64,128"
        ) from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--checkpoint", type=Path, help="a GGUF file or HF folder (default: SmolLM2)"
    )
    parser.add_argument("--prefill-lengths", type=_lengths, default=[128], help="e.g. 128 or 8,128")
    parser.add_argument("--kv-cache-len", type=int, default=512)
    parser.add_argument("--quantize", default="none", help="a recipe name, e.g. dynamic_int8")
    parser.add_argument("--output", type=Path, help="keep the .tflite here (default: deleted)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)  # result file of a child
    args = parser.parse_args()

    if args.checkpoint is None:
        from genapi.defaults import default_checkpoint

        args.checkpoint = default_checkpoint()
    if args.child is not None:
        args.child.write_text(json.dumps(convert(args)))
        return

    folder = Path(tempfile.mkdtemp(prefix="genapi-convert-bench-"))
    try:
        output = args.output or folder / "model.tflite"
        info = run_child(args, output, folder / "result.json")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(format_table(info, args))


if __name__ == "__main__":
    main()
