"""Check that a `.tflite` has the signatures LiteRT-LM and MediaPipe need, before any engine
sees it (the engine aborts the whole process on a file it cannot use, or runs wrongly without
an error when an output is misnamed).

Only the flatbuffer is read, through a memory map, so the model may sit inside a bundle.
"""

from __future__ import annotations

import mmap
import os
import re
from dataclasses import dataclass

from genapi.export.tflite_writer import FILE_IDENTIFIER, schema

_KV = re.compile(r"kv_cache_([kv])_(\d+)$")


@dataclass(frozen=True)
class ModelShape:
    """What the bundles need to know about a prefill/decode model."""

    prefill_lengths: tuple[int, ...]  # T of each prefill signature
    cache_len: int  # KV cache length S
    vocab_size: int  # V of the decode logits
    num_layers: int


def _io(subgraph, entries, count) -> dict[str, tuple[tuple[int, ...], int]]:
    out = {}
    for j in range(count):
        entry = entries(j)
        tensor = subgraph.Tensors(entry.TensorIndex())
        shape = tuple(int(tensor.Shape(k)) for k in range(tensor.ShapeLength()))
        out[entry.Name().decode("utf-8", errors="replace")] = (shape, int(tensor.Type()))
    return out


def check_llm_model_bytes(buffer, offset: int = 0, *, name: str = "model") -> ModelShape:
    """Check the LiteRT-LM signature contract of the model starting at `offset` in `buffer`.

    Args:
        buffer: bytes or a memory map holding the `.tflite`.
        offset: where the `.tflite` starts.
        name: how to call the model in error messages.

    Returns:
        The model's prefill lengths, cache length, vocabulary size and layer count.

    Raises:
        ValueError: naming what is missing or misshapen.
    """
    if bytes(buffer[offset + 4 : offset + 8]) != FILE_IDENTIFIER:
        raise ValueError(f"{name} is not a TFLite model (no {FILE_IDENTIFIER!r} identifier)")
    s = schema()
    model = s.Model.GetRootAs(buffer, offset)
    float32, int32 = s.TensorType.FLOAT32, s.TensorType.INT32
    signatures = {}
    for i in range(model.SignatureDefsLength()):
        sig = model.SignatureDefs(i)
        subgraph = model.Subgraphs(sig.SubgraphIndex())
        key = sig.SignatureKey().decode("utf-8", errors="replace")
        signatures[key] = (
            _io(subgraph, sig.Inputs, sig.InputsLength()),
            _io(subgraph, sig.Outputs, sig.OutputsLength()),
        )
    del model

    prefills = sorted(k for k in signatures if k.startswith("prefill"))
    if "decode" not in signatures or not prefills:
        raise ValueError(
            f"{name} has signatures {sorted(signatures)}; LiteRT-LM needs `decode` and at least "
            "one `prefill_<T>` (convert with genapi convert)"
        )
    lengths = []
    for key in ["decode", *prefills]:
        inputs, outputs = signatures[key]
        for needed in ("tokens", "input_pos"):
            if needed not in inputs or inputs[needed][1] != int32:
                raise ValueError(f"{name}: signature {key!r} has no int32 input {needed!r}")
        tokens_shape = inputs["tokens"][0]
        if len(tokens_shape) != 2 or tokens_shape[0] != 1:
            raise ValueError(f"{name}: {key!r} tokens have shape {tokens_shape}, not [1, T]")
        lengths.append(tokens_shape[1])
        kv_in = {n for n in inputs if _KV.match(n)}
        kv_out = {n for n in outputs if _KV.match(n)}
        if not kv_in or kv_in != kv_out:
            raise ValueError(
                f"{name}: signature {key!r} must take and return the same kv_cache_k_<i> / "
                f"kv_cache_v_<i> tensors (inputs {sorted(kv_in)}, outputs {sorted(kv_out)})"
            )
    if lengths[0] != 1:
        raise ValueError(f"{name}: decode takes {lengths[0]} tokens, not 1")

    inputs, outputs = signatures["decode"]
    logits = outputs.get("logits")
    if logits is None or len(logits[0]) != 3 or logits[1] != float32:
        raise ValueError(
            f"{name}: decode needs a float32 `logits` output of shape [1, 1, V] "
            f"(found {logits[0] if logits else 'none'})"
        )
    if "mask" in inputs:
        cache_len = inputs["mask"][0][-1]
    else:
        cache_len = inputs["kv_cache_k_0"][0][2] if "kv_cache_k_0" in inputs else 0
    kv_names = [n for n in inputs if _KV.match(n)]
    return ModelShape(
        prefill_lengths=tuple(lengths[1:]),
        cache_len=int(cache_len),
        vocab_size=int(logits[0][-1]),
        num_layers=len(kv_names) // 2,
    )


def check_llm_model(path: str | os.PathLike) -> ModelShape:
    """`check_llm_model_bytes` on a `.tflite` file.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if it is not a LiteRT-LM prefill/decode model.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such .tflite file: {str(path)!r}")
    if os.path.getsize(path) < 8:
        raise ValueError(f"{str(path)!r} is not a TFLite model: it is too short")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        return check_llm_model_bytes(mm, 0, name=repr(str(path)))
