"""Next-token selection from logits: greedy, or temperature with top-k and top-p, seeded.

NumPy only, so that every runner (PyTorch or LiteRT) picks tokens the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.random import default_rng


@dataclass(frozen=True)
class SamplingConfig:
    """How to pick the next token; temperature 0 means greedy."""

    temperature: float = 0.0  # 0 picks the most likely token; higher flattens the distribution
    top_k: int | None = None  # keep only the k most likely tokens
    top_p: float | None = None  # keep the smallest set whose probability reaches p
    seed: int | None = None  # seed of the random generator, for repeatable samples

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature!r} must be >= 0")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k={self.top_k!r} must be >= 1 or None")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p!r} must be in (0, 1] or None")


class Sampler:
    """Picks token ids from logit vectors [V] according to a `SamplingConfig`."""

    def __init__(self, config: SamplingConfig | None = None):
        self.config = config or SamplingConfig()
        self._rng = default_rng(self.config.seed)

    def __call__(self, logits: np.ndarray) -> int:
        cfg = self.config
        logits = np.asarray(logits, dtype=np.float64).reshape(-1)
        if cfg.temperature == 0:
            return int(np.argmax(logits))

        logits = logits / cfg.temperature
        if cfg.top_k is not None and cfg.top_k < logits.size:
            kth = np.partition(logits, -cfg.top_k)[-cfg.top_k]
            logits = np.where(logits < kth, -np.inf, logits)
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        if cfg.top_p is not None and cfg.top_p < 1:
            order = np.argsort(-probs, kind="stable")
            cumulative = np.cumsum(probs[order])
            # Keep every token up to and including the one that reaches top_p.
            keep = order[: int(np.searchsorted(cumulative, cfg.top_p)) + 1]
            kept = np.zeros_like(probs)
            kept[keep] = probs[keep]
            probs = kept / kept.sum()
        return int(self._rng.choice(probs.size, p=probs))
