"""Summarise a `.tflite` file: signatures, op counts per signature and weight bytes.

Reads only the flatbuffer (through a memory map), never the tensor data, so large files are
inspected in milliseconds. Buffers stored inline (`data`) and after the flatbuffer
(`offset`/`size`, as genapi writes them) are both understood.
"""

from __future__ import annotations

import mmap
import os
from collections import Counter
from pathlib import Path
from typing import Any

from genapi.export.tflite_writer import FILE_IDENTIFIER, schema

# The runtime treats offsets 0 and 1 as "no data stored after the flatbuffer".
_MIN_VALID_OFFSET = 2


def _enum_names(enum_class: type) -> dict[int, str]:
    return {v: k for k, v in vars(enum_class).items() if isinstance(v, int) and k.isupper()}


def _str(value: bytes | None) -> str:
    return "" if value is None else value.decode("utf-8", errors="replace")


def _buffer_size(buffer) -> int:
    if buffer.Offset() >= _MIN_VALID_OFFSET:
        return int(buffer.Size())
    return int(buffer.DataLength())


def _op_name(opcode, op_names: dict[int, str]) -> str:
    # Files written before builtin_code existed carry the code only in the deprecated field.
    code = max(opcode.BuiltinCode(), opcode.DeprecatedBuiltinCode())
    name = op_names.get(code, f"BUILTIN_{code}")
    if name == "CUSTOM":
        return f"CUSTOM:{_str(opcode.CustomCode())}"
    return name


def _tensor_info(subgraph, index: int, type_names: dict[int, str]) -> dict[str, Any]:
    tensor = subgraph.Tensors(index)
    signature = [int(tensor.ShapeSignature(j)) for j in range(tensor.ShapeSignatureLength())]
    info = {
        "tensor_index": index,
        "shape": [int(tensor.Shape(j)) for j in range(tensor.ShapeLength())],
        "dtype": type_names.get(tensor.Type(), str(tensor.Type())).lower(),
    }
    if signature and -1 in signature:
        info["shape_signature"] = signature
    return info


def _summarise(model) -> dict[str, Any]:
    s = schema()
    op_names = _enum_names(s.BuiltinOperator)
    type_names = _enum_names(s.TensorType)
    opcodes = [
        _op_name(model.OperatorCodes(i), op_names) for i in range(model.OperatorCodesLength())
    ]

    # Weight bytes count each buffer a tensor refers to once, however many tensors share it.
    tensor_buffers: set[int] = set()
    for g in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(g)
        for t in range(subgraph.TensorsLength()):
            tensor_buffers.add(subgraph.Tensors(t).Buffer())
    buffer_sizes = [_buffer_size(model.Buffers(i)) for i in range(model.BuffersLength())]
    metadata = {}
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        size = buffer_sizes[entry.Buffer()] if entry.Buffer() < len(buffer_sizes) else 0
        metadata[_str(entry.Name())] = size

    signatures = []
    for i in range(model.SignatureDefsLength()):
        sig = model.SignatureDefs(i)
        subgraph = model.Subgraphs(sig.SubgraphIndex())
        counts = Counter(
            opcodes[subgraph.Operators(j).OpcodeIndex()] for j in range(subgraph.OperatorsLength())
        )
        signatures.append(
            {
                "key": _str(sig.SignatureKey()),
                "subgraph_index": int(sig.SubgraphIndex()),
                "inputs": [
                    {
                        "name": _str(sig.Inputs(j).Name()),
                        **_tensor_info(subgraph, sig.Inputs(j).TensorIndex(), type_names),
                    }
                    for j in range(sig.InputsLength())
                ],
                "outputs": [
                    {
                        "name": _str(sig.Outputs(j).Name()),
                        **_tensor_info(subgraph, sig.Outputs(j).TensorIndex(), type_names),
                    }
                    for j in range(sig.OutputsLength())
                ],
                # Most frequent first, ties by name, so reports and JSON diffs are stable.
                "ops": dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))),
                "num_ops": int(subgraph.OperatorsLength()),
                "num_tensors": int(subgraph.TensorsLength()),
            }
        )

    return {
        "version": int(model.Version()),
        "description": _str(model.Description()),
        "num_subgraphs": int(model.SubgraphsLength()),
        "num_buffers": int(model.BuffersLength()),
        "weight_bytes": sum(
            buffer_sizes[b] for b in sorted(tensor_buffers) if b < len(buffer_sizes)
        ),
        "metadata": metadata,
        "signatures": signatures,
    }


def inspect_model(path: str | os.PathLike) -> dict[str, Any]:
    """Summarise a `.tflite` file without reading its tensor data.

    Args:
        path: the `.tflite` file.

    Returns:
        A JSON-serialisable dict: `path`, `file_size`, `version`, `description`,
        `num_subgraphs`, `num_buffers`, `weight_bytes` (bytes of buffers referenced by
        tensors, shared buffers counted once), `metadata` (name -> bytes), and `signatures`,
        a list of dicts with `key`, `subgraph_index`, `inputs`/`outputs` (each `name`,
        `tensor_index`, `shape`, `dtype`, and `shape_signature` if dynamic), `ops`
        (op name -> count, most frequent first), `num_ops` and `num_tensors`.

    Raises:
        FileNotFoundError: if `path` does not exist.
        ValueError: if the file is not a TFLite model.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such .tflite file: {str(path)!r}")
    file_size = path.stat().st_size
    if file_size < 8:
        raise ValueError(f"{str(path)!r} is not a TFLite model: only {file_size} bytes")

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        if mm[4:8] != FILE_IDENTIFIER:
            raise ValueError(
                f"{str(path)!r} is not a TFLite model: identifier {bytes(mm[4:8])!r}, "
                f"expected {FILE_IDENTIFIER!r}"
            )
        model = schema().Model.GetRootAs(mm, 0)
        info = _summarise(model)
        del model  # drop the reader's view of the map before it closes

    return {"path": str(path), "file_size": file_size, **info}


def hybrid_per_channel_ops(path: str | os.PathLike) -> int:
    """Count FULLY_CONNECTED ops that take float inputs and int8/int4 weights with more than one
    scale (the hybrid per-channel kernels some older runtimes compute wrong)."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        model = schema().Model.GetRootAs(mm, 0)
        count = _count_hybrid_per_channel(model)
        del model  # drop the reader's view of the map before it closes
    return count


def _count_hybrid_per_channel(model) -> int:
    s = schema()
    codes = [
        max(model.OperatorCodes(i).BuiltinCode(), model.OperatorCodes(i).DeprecatedBuiltinCode())
        for i in range(model.OperatorCodesLength())
    ]
    count = 0
    for g in range(model.SubgraphsLength()):
        graph = model.Subgraphs(g)
        for o in range(graph.OperatorsLength()):
            op = graph.Operators(o)
            if codes[op.OpcodeIndex()] != s.BuiltinOperator.FULLY_CONNECTED:
                continue
            x, w = graph.Tensors(op.Inputs(0)), graph.Tensors(op.Inputs(1))
            q = w.Quantization()
            count += int(
                x.Type() == s.TensorType.FLOAT32
                and w.Type() in (s.TensorType.INT8, s.TensorType.INT4)
                and q is not None
                and (q.ScaleLength() > 1 or q.DetailsType() != 0)
            )
    return count


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _format_io(entry: dict[str, Any]) -> str:
    shape = entry.get("shape_signature", entry["shape"])
    return f"{entry['name']}: {entry['dtype']}[{', '.join(str(d) for d in shape)}]"


def _grouped_io(entries: list[dict[str, Any]]) -> list[str]:
    """One line per tensor, but runs of numbered names with one shape ("kv_cache_k_0" ...
    "kv_cache_k_29") folded into a single line."""
    groups: dict[tuple, list[int]] = {}
    order: list[tuple] = []
    singles = []
    for entry in entries:
        stem, _, number = entry["name"].rpartition("_")
        if stem and number.isdigit():
            key = (stem, _format_io({**entry, "name": ""}))
            if key not in groups:
                groups[key] = []
                order.append(key)
            groups[key].append(int(number))
        else:
            singles.append(_format_io(entry))
    lines = list(singles)
    for stem, rest in order:
        numbers = sorted(groups[(stem, rest)])
        if len(numbers) == 1:
            lines.append(f"{stem}_{numbers[0]}{rest}")
        else:
            lines.append(f"{stem}_{{{numbers[0]}..{numbers[-1]}}}{rest} (x{len(numbers)})")
    return lines


def format_report(info: dict[str, Any]) -> str:
    """Render an `inspect_model` result for people.

    Args:
        info: the dict `inspect_model` returned.

    Returns:
        A multi-line report (no trailing newline).
    """
    summary = (
        f"{info['path']}: {_human_bytes(info['file_size'])}, "
        f"weights {_human_bytes(info['weight_bytes'])}, "
        f"{info['num_subgraphs']} subgraphs, {info['num_buffers']} buffers"
    )
    lines = [
        summary,
        f"description: {info['description']!r} (schema version {info['version']})",
    ]
    if info["metadata"]:
        entries = ", ".join(f"{k} ({v} B)" for k, v in info["metadata"].items())
        lines.append(f"metadata: {entries}")
    for sig in info["signatures"]:
        lines.append("")
        lines.append(
            f"signature {sig['key']!r} (subgraph {sig['subgraph_index']}): "
            f"{sig['num_ops']} ops, {sig['num_tensors']} tensors"
        )
        lines.extend(f"  in   {line}" for line in _grouped_io(sig["inputs"]))
        lines.extend(f"  out  {line}" for line in _grouped_io(sig["outputs"]))
        width = max((len(name) for name in sig["ops"]), default=0)
        lines.extend(f"  {name:<{width}}  {count:>6}" for name, count in sig["ops"].items())
    return "\n".join(lines)
