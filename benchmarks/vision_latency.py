"""ResNet-18 latency: genapi's .tflite in ai-edge-litert against PyTorch eager, same machine.

Converts a seeded random ResNet-18 (the architecture from tests/vision_models.py) at 1x3x224x224
to fp32 and dynamic_int8 `.tflite`, then times single-image inference with the same thread
count in ai-edge-litert's Interpreter (XNNPACK applied by default) and in PyTorch eager
(`torch.no_grad`), interleaving the runners round by round so that a busy neighbour slows all
of them alike. Prints the median and best milliseconds per image and the ratio to PyTorch.

    python benchmarks/vision_latency.py [--threads 2] [--runs 30] [--size 224]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from vision_models import ResNet18, images, seeded  # noqa: E402

import genapi  # noqa: E402


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=30, help="timed rounds per runner")
    parser.add_argument("--size", type=int, default=224, help="input height and width")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    model = seeded(ResNet18, seed=1, size=args.size)
    x = images(1, args.size, seed=3)

    runners = {}
    with torch.no_grad():
        reference = model(x)
    runners["PyTorch eager"] = lambda: model(x)
    for quantize in (None, "dynamic_int8"):
        start = time.perf_counter()
        edge = genapi.convert(model, (x,), quantize=quantize)
        seconds = time.perf_counter() - start
        runner = edge.interpreter(num_threads=args.threads).get_signature_runner(edge.signature)
        feed = {edge.input_names[0]: x.numpy()}
        out = runner(**feed)[edge.output_names[0]]
        error = float(np.abs(out - reference.numpy()).max() / reference.abs().max())
        label = f"LiteRT {quantize or 'fp32'}"
        print(
            f"{label}: converted in {seconds:.1f} s, {len(edge.content) / 1e6:.1f} MB, "
            f"max error {error:.1e} of the largest output"
        )
        runners[label] = lambda runner=runner, feed=feed: runner(**feed)

    with torch.no_grad():
        for fn in runners.values():  # warm up: XNNPACK packs weights on the first run
            for _ in range(3):
                fn()
        times: dict[str, list[float]] = {name: [] for name in runners}
        for _ in range(args.runs):
            for name, fn in runners.items():
                times[name].append(_timed(fn))

    base = statistics.median(times["PyTorch eager"])
    print(f"\nResNet-18, 1x3x{args.size}x{args.size}, {args.threads} threads, {args.runs} runs")
    print(f"{'runner':<22}{'median ms':>10}{'best ms':>10}{'vs PyTorch':>12}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<22}{median:>10.1f}{min(values):>10.1f}{median / base:>11.2f}x")


if __name__ == "__main__":
    main()
