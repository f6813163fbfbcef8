"""Run a genapi `.tflite` (LiteRT-LM signatures) on the CPU with ai-edge-litert, without torch.

The file has `prefill_<T>` signatures and one `decode` signature with inputs `tokens`,
`input_pos`, an optional additive `mask` and per layer `kv_cache_k_<i>`/`kv_cache_v_<i>`,
which come back as outputs under the same names; `decode` also outputs `logits` [1, 1, V].

Generation follows LiteRT-LM: every prompt token but the last goes through prefill calls,
the last one is fed to the first decode call, whose logits give the first new token.

BOS rule: `Tokenizer.encode` adds no BOS. `prompt_ids` prepends `tokenizer.bos_id` once when
`tokenizer.add_bos` says the model wants it (and the text does not already start with it,
as chat templates that write BOS themselves do). `LiteRTGenerator.generate` takes ids as
they are and adds nothing.

Runtime: `ai_edge_litert.compiled_model.CompiledModel` on the CPU (XNNPACK). With a weight
cache file (`weight_cache=`) XNNPACK packs the weights once into that file and maps it on
later runs, so all signatures share one packed copy instead of one per signature (the
`Interpreter` packs shared weights once per subgraph).
Measured on SmolLM2-135M fp32 (538 MB file, two signatures): process RSS after a short run
was 1.68 GB without a cache file (as with the Interpreter) and 0.62 GB with one already built
(0.74 GB on the run that builds it; the cache file is 539 MB). Packing happens at the first call.

Buffers: the runtime's own `TensorBuffer`s are created once per signature input/output and
reused on every call. (`TensorBuffer.create_from_host_memory` would bind NumPy arrays without a
copy, but it makes 1-D buffers, which CompiledModel 2.3.0 rejects for fixed-shape inputs:
"Cannot auto-resize tensor tokens".) So tokens, positions and the mask [1, 1, T, S] are copied
in and decode logits [V] are copied out each call; all of these are small.

KV cache hand-back: one set of cache buffers is made once and bound as both the inputs and
the outputs of every call, so the cache is updated in place and never copied outside the
graph. This is safe because of how genapi lowers the cache update: attention reads each
layer's cache input as it was plus the new keys and values, and the DYNAMIC_UPDATE_SLICE
ops that write the new positions come after every other op of the signature, so no read of
a cache follows its write. (Those writes are also why the blocks run as one XNNPACK
partition: a write between blocks would split it.) Every
signature has the same cache shapes, so the same buffers serve prefill and decode. (Two
alternating sets give identical logits, checked on SmolLM2 over 300 tokens, at twice the
cache memory: 24 MB more for SmolLM2 with a 512-position fp32 cache.)
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from genapi.sampling import Sampler, SamplingConfig

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from genapi.tokenizer import Tokenizer

MASK_VALUE = -1e30  # additive mask value of hidden cache slots
_KV_NAME = re.compile(r"kv_cache_([kv])_(\d+)$")


def prompt_ids(tokenizer: Tokenizer, text: str, *, chat: bool) -> list[int]:
    """Token ids of a prompt, with BOS once if the model wants it.

    Args:
        tokenizer: the model's tokenizer.
        text: the prompt, or the user message when `chat` is set.
        chat: wrap `text` as one user message in the tokenizer's chat template first.
    """
    if chat:
        text = tokenizer.apply_chat_template([{"role": "user", "content": text}])
    ids = tokenizer.encode(text)
    bos = tokenizer.bos_id
    if tokenizer.add_bos and bos is not None and ids[:1] != [bos]:
        ids = [bos, *ids]
    return ids


@dataclass
class GenerationStats:
    """Timings of the last `generate` run.

    Prefill covers the prompt tokens but the last (the prefill calls); decode covers every
    decode call, the first of which consumes the last prompt token and yields the first new
    token. `decode_tokens` counts tokens sampled, a final stop token included.
    """

    prompt_tokens: int = 0
    prefill_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_tokens: int = 0
    decode_seconds: float = 0.0
    time_to_first_token: float = 0.0

    @property
    def prefill_tokens_per_second(self) -> float:
        return self.prefill_tokens / self.prefill_seconds if self.prefill_seconds else 0.0

    @property
    def decode_tokens_per_second(self) -> float:
        return self.decode_tokens / self.decode_seconds if self.decode_seconds else 0.0

    def __str__(self) -> str:
        return (
            f"prompt {self.prompt_tokens} tokens, prefill {self.prefill_seconds:.3f} s "
            f"({self.prefill_tokens_per_second:.1f} tok/s), decode {self.decode_tokens} tokens "
            f"({self.decode_tokens_per_second:.1f} tok/s), "
            f"first token after {self.time_to_first_token:.3f} s"
        )


class _Signature:
    """One signature's runtime buffers for tokens, positions, mask and (optional) logits."""

    def __init__(self, model, key: str):
        self.key = key
        inputs = model.get_input_tensor_details(key)
        outputs = model.get_output_tensor_details(key)
        self.length = int(inputs["tokens"]["shape"][1])
        self.mask_shape = tuple(inputs["mask"]["shape"]) if "mask" in inputs else None
        self.logits_shape = tuple(outputs["logits"]["shape"]) if "logits" in outputs else None
        self.cache_shapes = {
            name: (tuple(d["shape"]), d["dtype"])
            for name, d in inputs.items()
            if _KV_NAME.match(name)
        }
        names = ["tokens", "input_pos"] + (["mask"] if self.mask_shape else [])
        self.inputs = {name: model.create_input_buffer_by_name(key, name) for name in names}
        # Prefill logits (when the file has them) are computed but never read.
        self.outputs = (
            {"logits": model.create_output_buffer_by_name(key, "logits")}
            if self.logits_shape
            else {}
        )


def _has_compiled_model() -> bool:
    try:
        import ai_edge_litert.compiled_model  # noqa: F401
    except ImportError:
        return False
    return True


class _HostBuffer:
    """A NumPy stand-in for a LiteRT TensorBuffer (write / read) for the Interpreter path."""

    def __init__(self, shape, dtype):
        self.array = np.zeros(shape, dtype=dtype)

    def write(self, values: np.ndarray) -> None:
        self.array = np.asarray(values, dtype=self.array.dtype).reshape(self.array.shape)

    def read(self, count: int, dtype) -> np.ndarray:
        return self.array.reshape(-1)[:count].astype(dtype, copy=False)


class _InterpreterModel:
    """The CompiledModel calls the generator uses, over an Interpreter's signature runners.

    For machines with only `tflite-runtime` (see DESIGN notes in the README): it applies no
    XNNPACK weight cache, so each signature holds its own packed weights, and the KV cache is
    copied in and out of every call.
    """

    def __init__(self, path: Path, num_threads: int):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            try:
                from tflite_runtime.interpreter import Interpreter
            except ImportError:
                raise ImportError(
                    "running .tflite files needs ai-edge-litert (pip install ai-edge-litert) "
                    "or tflite-runtime"
                ) from None
            _warn_old_runtime(path)
        self._interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
        self._runners = {}

    def _runner(self, key: str):
        if key not in self._runners:
            self._runners[key] = self._interpreter.get_signature_runner(key)
        return self._runners[key]

    def get_signature_list(self):
        return self._interpreter.get_signature_list()

    def get_input_tensor_details(self, key: str) -> dict:
        return self._runner(key).get_input_details()

    def get_output_tensor_details(self, key: str) -> dict:
        return self._runner(key).get_output_details()

    def create_input_buffer_by_name(self, key: str, name: str) -> _HostBuffer:
        d = self.get_input_tensor_details(key)[name]
        return _HostBuffer(d["shape"], d["dtype"])

    def create_output_buffer_by_name(self, key: str, name: str) -> _HostBuffer:
        d = self.get_output_tensor_details(key)[name]
        return _HostBuffer(d["shape"], d["dtype"])

    def run_by_name(self, key: str, inputs: dict, outputs: dict) -> None:
        results = self._runner(key)(**{name: buf.array for name, buf in inputs.items()})
        for name, buf in outputs.items():
            buf.array = results[name]


def _warn_old_runtime(path: Path) -> None:
    """tflite-runtime 2.14 computes hybrid FULLY_CONNECTED with per-channel int8 weights wrong
    (its output equals the bias): say so when such a file is about to run in it."""
    from genapi.export.inspect import hybrid_per_channel_ops

    if hybrid_per_channel_ops(path):
        logger.warning(
            "%s has FULLY_CONNECTED ops with per-channel int8/int4 weights and float inputs; "
            "tflite-runtime 2.14 computes these wrong (outputs equal the bias). Install "
            "ai-edge-litert, or convert with --quantize none, fp16 or weight_only_int8.",
            path,
        )


class LiteRTGenerator:
    """Generates tokens from a genapi `.tflite` with ai-edge-litert's CompiledModel (CPU).

    Attributes:
        prefill_lengths: the T of each `prefill_<T>` signature, ascending.
        cache_len: the KV cache length S.
        has_mask: whether the signatures take a `mask` input.
        kv_names: the KV cache tensor names, in signature order.
        stats: timings of the last `generate` run.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        num_threads: int = 2,
        weight_cache: str | os.PathLike[str] | None = None,
        backend: str = "auto",
    ):
        """Open and compile a model.

        Args:
            path: the `.tflite` file.
            num_threads: CPU threads of XNNPACK.
            weight_cache: a FILE path for XNNPACK's packed weights (created on first use and
                mapped afterwards); None packs in memory, once per signature.
            backend: "compiled" (ai-edge-litert's CompiledModel), "interpreter" (a signature
                runner of ai-edge-litert's or else tflite-runtime's Interpreter), or "auto":
                CompiledModel when ai-edge-litert is installed, else tflite-runtime.
        """
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no model file at {self.path}")
        if backend not in ("auto", "compiled", "interpreter"):
            raise ValueError(f"backend={backend!r} is not one of 'auto', 'compiled', 'interpreter'")
        if backend == "auto":
            backend = "compiled" if _has_compiled_model() else "interpreter"
        self.backend = backend
        if backend == "interpreter":
            self._model = _InterpreterModel(self.path, num_threads)
        else:
            self._model = self._compiled_model(num_threads, weight_cache)
        self._setup()

    def _compiled_model(self, num_threads: int, weight_cache):
        # Imported here so that `import genapi.runtime` stays cheap.
        from ai_edge_litert.compiled_model import (
            CompiledModel,
            CpuOptions,
            HardwareAccelerator,
            Options,
        )

        cpu = CpuOptions(num_threads=num_threads)
        if weight_cache is not None:
            weight_cache = Path(weight_cache)
            if weight_cache.is_dir():
                raise ValueError(f"weight_cache must be a file path, not a folder: {weight_cache}")
            weight_cache.parent.mkdir(parents=True, exist_ok=True)
            cpu.xnnpack_weight_cache_path = str(weight_cache)
        self.weight_cache = weight_cache
        options = Options(HardwareAccelerator.CPU, cpu_options=cpu)
        return CompiledModel.from_file(str(self.path), options=options)

    def _setup(self) -> None:
        keys = list(self._model.get_signature_list())
        prefill_keys = [k for k in keys if k.startswith("prefill")]
        if "decode" not in keys or not prefill_keys:
            raise ValueError(
                f"{self.path} has signatures {keys}; a `decode` and `prefill_<T>` are needed"
            )
        self._decode = _Signature(self._model, "decode")
        if self._decode.logits_shape is None:
            raise ValueError(f"{self.path}: the decode signature has no `logits` output")
        prefills = [_Signature(self._model, k) for k in prefill_keys]
        self._prefills = sorted(prefills, key=lambda s: s.length)
        self._vocab_size = int(self._decode.logits_shape[-1])
        self.prefill_lengths = tuple(s.length for s in self._prefills)
        self.has_mask = self._decode.mask_shape is not None

        shapes = self._decode.cache_shapes
        self.kv_names = tuple(shapes)
        for sig in self._prefills:
            if sig.cache_shapes != shapes:
                raise ValueError(f"{sig.key} and decode disagree on the KV cache shapes")
        self.cache_len = self._cache_len(shapes)

        # One cache set, read and written in place by every call (see the module docstring).
        # It is zeroed once: never-written slots are hidden by the mask, but hidden slots
        # still enter attention as value * 0, and uninitialized NaNs would poison it.
        self._cache = {
            name: self._model.create_output_buffer_by_name("decode", name) for name in shapes
        }
        for name, (shape, dtype) in shapes.items():
            self._cache[name].write(np.zeros(shape, dtype=dtype))
        self.stats = GenerationStats()

    def _cache_len(self, shapes: dict) -> int:
        """S: the mask's last dim, else dim 2 of K (K [1, G, S, D], V [1, G, D, S])."""
        if self.has_mask:
            return int(self._decode.mask_shape[-1])
        k_shapes = [shape for name, (shape, _) in shapes.items() if "_k_" in name]
        if not k_shapes:
            raise ValueError(f"{self.path}: no kv_cache_k_<i> inputs")
        return int(k_shapes[0][2])

    def __repr__(self) -> str:
        return (
            f"LiteRTGenerator({str(self.path)!r}, prefill_lengths={self.prefill_lengths}, "
            f"cache_len={self.cache_len}, mask={self.has_mask}, layers={len(self.kv_names) // 2})"
        )

    # ---- one signature call

    def _run(self, sig: _Signature, tokens: Sequence[int], start: int) -> None:
        """Run `sig` on `tokens` (padded with 0 to its length) at positions start, start+1, ..."""
        n = len(tokens)
        padded = np.zeros(sig.length, dtype=np.int32)
        padded[:n] = tokens
        sig.inputs["tokens"].write(padded)
        positions = np.arange(start, start + sig.length, dtype=np.int32)
        sig.inputs["input_pos"].write(positions)
        if sig.mask_shape is not None:
            visible = np.arange(self.cache_len)[None, :] <= positions[:, None]
            sig.inputs["mask"].write(np.where(visible, 0.0, MASK_VALUE).astype(np.float32))
        self._model.run_by_name(
            sig.key, {**sig.inputs, **self._cache}, {**sig.outputs, **self._cache}
        )

    def _pick_prefill(self, remaining: int, start: int) -> _Signature | None:
        """The smallest prefill that takes all `remaining` tokens, else the largest full chunk.

        A signature of length T writes cache slots start..start+T-1 (padding included), so it
        must end inside the cache: DYNAMIC_UPDATE_SLICE would otherwise shift the write back
        over real entries. None means no prefill fits; the caller then uses decode steps.
        """
        fits = [s for s in self._prefills if start + s.length <= self.cache_len]
        for sig in fits:
            if sig.length >= remaining:
                return sig
        full = [s for s in fits if s.length <= remaining]
        return full[-1] if full else None

    def prefill(self, tokens: Sequence[int], start: int = 0) -> None:
        """Write `tokens` at positions start.. into the KV cache (no logits)."""
        pos, tokens = start, list(tokens)
        while pos - start < len(tokens):
            rest = tokens[pos - start :]
            sig = self._pick_prefill(len(rest), pos)
            if sig is None:  # too close to the cache end for any prefill: one token at a time
                self._run(self._decode, rest[:1], pos)
                pos += 1
                continue
            # A partial chunk is padded with token 0 at the following positions. Those rows
            # write garbage into cache slots past the prompt, but no real token sees them:
            # the mask (or the model's position-based causal mask) hides slots beyond each
            # query's position, and the decode call at position p writes slot p before it
            # reads it. So every padded slot is overwritten before it becomes visible.
            chunk = rest[: sig.length]
            self._run(sig, chunk, pos)
            pos += len(chunk)

    def decode(self, token: int, pos: int) -> np.ndarray:
        """Feed one token at `pos`; returns its logits [V]."""
        self._run(self._decode, [token], pos)
        return self._decode.outputs["logits"].read(self._vocab_size, np.float32)

    def logits(self, tokens: Sequence[int], start: int = 0) -> np.ndarray:
        """Teacher-forced logits [len(tokens), V]: row i predicts the token after tokens[i].

        Uses the prefill signatures that output logits (converted with `prefill_logits`) in
        the largest chunks that fit, and decode steps for the rest or for files without them.
        """
        tokens = list(tokens)
        if start + len(tokens) > self.cache_len:
            raise ValueError(
                f"{len(tokens)} tokens from position {start} do not fit the KV cache of "
                f"{self.cache_len}"
            )
        out = np.empty((len(tokens), self._vocab_size), np.float32)
        with_logits = [s for s in self._prefills if s.logits_shape is not None]
        done = 0
        while done < len(tokens):
            pos, rest = start + done, len(tokens) - done
            fits = [s for s in with_logits if pos + s.length <= self.cache_len]
            sig = next((s for s in fits if s.length >= rest), fits[-1] if fits else None)
            if sig is None or (sig.length > rest and rest == 1):
                out[done] = self.decode(tokens[done], pos)
                done += 1
                continue
            n = min(sig.length, rest)
            self._run(sig, tokens[done : done + n], pos)
            rows = sig.outputs["logits"].read(sig.length * self._vocab_size, np.float32)
            out[done : done + n] = rows.reshape(sig.length, self._vocab_size)[:n]
            done += n
        return out

    # ---- generation

    def generate(
        self,
        prompt_ids: Sequence[int],
        *,
        max_new_tokens: int = 64,
        sampling: SamplingConfig | None = None,
        stop_ids: Iterable[int] = (),
    ) -> Iterator[int]:
        """Yield new token ids one at a time until a stop id, `max_new_tokens` or a full cache.

        Args:
            prompt_ids: the prompt, BOS included if the model wants one (see `prompt_ids`).
            max_new_tokens: most tokens to generate.
            sampling: how to pick tokens; greedy by default.
            stop_ids: ids that end generation; the stop id is not yielded.

        Raises:
            ValueError: if the prompt is empty or does not fit in the KV cache.
        """
        prompt = [int(t) for t in prompt_ids]
        if not prompt:
            raise ValueError("prompt_ids is empty; at least one token is needed")
        if len(prompt) + 1 > self.cache_len:
            raise ValueError(
                f"prompt of {len(prompt)} tokens does not fit the KV cache of "
                f"{self.cache_len} positions (at most {self.cache_len - 1} prompt tokens)"
            )
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens!r} must be >= 1")
        return self._generate(prompt, max_new_tokens, Sampler(sampling), set(stop_ids))

    def _generate(
        self, prompt: list[int], max_new_tokens: int, sampler: Sampler, stop: set[int]
    ) -> Iterator[int]:
        n = len(prompt)
        stats = self.stats = GenerationStats(prompt_tokens=n, prefill_tokens=n - 1)
        began = time.perf_counter()
        self.prefill(prompt[:-1])
        stats.prefill_seconds = time.perf_counter() - began

        token, pos = prompt[-1], n - 1
        for _ in range(max_new_tokens):
            step = time.perf_counter()
            token = sampler(self.decode(token, pos))
            now = time.perf_counter()
            stats.decode_seconds += now - step
            stats.decode_tokens += 1
            if stats.decode_tokens == 1:
                stats.time_to_first_token = now - began
            if token in stop:
                return
            yield token
            pos += 1
            if pos >= self.cache_len:  # the cache is full: no slot for this token
                return
