"""What every peer's child script shares: the prompt, the step count and the JSON line of
figures. Standard library only: the children run in the peers' own environments."""

from __future__ import annotations

import json
from pathlib import Path

PROMPT = list(range(100, 228))  # a 128-token prompt of plain token ids
STEPS = 32  # greedy decode steps after it


def status_bytes(key: str) -> int:
    """A memory figure of this process from /proc/self/status (VmRSS, VmHWM), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def print_figures(path: Path, prefill: list[float], decode: list[float], baseline: int, **extra):
    """One JSON line: the best prefill and per-token decode times (ms), the peak RSS above
    `baseline`, the artefact's size and any `extra` figures."""
    figures = {
        "prefill_ms": 1000 * min(prefill),
        "decode_ms": 1000 * min(decode),
        "runtime_rss": status_bytes("VmHWM") - baseline,
        "file_bytes": path.stat().st_size,
    }
    print(json.dumps({**figures, **extra}))
