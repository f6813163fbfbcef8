"""A minimal greedy loop over a genapi `.tflite`'s signatures, run by ai-edge-litert."""

from __future__ import annotations

import numpy as np
from ai_edge_litert.interpreter import Interpreter

MASK_VALUE = -1e30


class SignatureLM:
    """Steps a converted model: prefill through `prefill_<T>`, then one token per `decode`."""

    def __init__(self, path, *, cache_len: int):
        self.interpreter = Interpreter(model_path=str(path))
        self.signatures = self.interpreter.get_signature_list()
        self.cache_len = cache_len
        self.prefill_lengths = sorted(
            int(key.split("_")[1]) for key in self.signatures if key.startswith("prefill_")
        )
        decode = self.interpreter.get_signature_runner("decode")
        details = decode.get_input_details()
        self.mask_input = "mask" in details
        self.cache = {
            name: np.zeros(d["shape"], dtype=d["dtype"])
            for name, d in details.items()
            if name.startswith("kv_cache_")
        }
        self.pos = 0

    def _mask(self, positions: np.ndarray) -> dict:
        if not self.mask_input:
            return {}
        visible = np.arange(self.cache_len)[None, :] <= positions[:, None]
        return {"mask": np.where(visible, 0.0, MASK_VALUE).astype(np.float32)[None, None]}

    def _run(self, key: str, tokens: list[int]) -> dict:
        t = len(tokens)
        positions = np.arange(self.pos, self.pos + t, dtype=np.int32)
        runner = self.interpreter.get_signature_runner(key)
        out = runner(
            tokens=np.asarray([tokens], dtype=np.int32),
            input_pos=positions,
            **self._mask(positions),
            **self.cache,
        )
        self.cache = {name: out[name] for name in self.cache}
        return out

    def prefill(self, tokens: list[int]) -> np.ndarray | None:
        """Run the prompt through the smallest prefill signature that fits; logits [n, V]."""
        n = len(tokens)
        length = next(t for t in self.prefill_lengths if t >= n)
        padded = list(tokens) + [0] * (length - n)
        out = self._run(f"prefill_{length}", padded)
        self.pos += n
        return out["logits"][0, :n] if "logits" in out else None

    def decode(self, token: int) -> np.ndarray:
        """Feed one token; its logits [V]."""
        out = self._run("decode", [token])
        self.pos += 1
        return out["logits"][0, 0]
