"""Write `.tflite` files without TensorFlow: a small builder over the TFLite flatbuffer schema.

The lowering code describes a model as subgraphs of tensors and builtin operators, named by
signatures, over one shared pool of constant buffers. `ModelBuilder.write` lays the file out as

    [flatbuffer][pad][buffer 1 data][pad][buffer 2 data]...

Each data region starts 64-byte aligned and is referenced from its `Buffer` table by `offset`
(from the start of the file) and `size` instead of an inline `data` vector. This keeps the
flatbuffer small (the Python flatbuffers builder cannot grow past 2 GiB), lets weights be
streamed to disk one buffer at a time, and lets the runtime map weights straight from the file.

The schema bindings come from `ai_edge_litert.schema_py_generated` (the LiteRT wheel ships
them; no `.fbs` file is needed).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import numpy as np

logger = logging.getLogger(__name__)

# Alignment of every data region in the file. 64 bytes covers the widest SIMD loads, so the
# runtime can use mapped weights in place.
DATA_ALIGNMENT = 64

# TFLite's schema version; the runtime rejects any other.
SCHEMA_VERSION = 3

# The identifier TFLite writes at bytes 4..8 of every model file.
FILE_IDENTIFIER = b"TFL3"

# The runtime treats offsets 0 and 1 as "no external data", so 1 is a safe placeholder that
# still makes flatbuffers emit the field (it drops fields equal to their default, 0).
_OFFSET_PLACEHOLDER = 1

# Builtin codes above this need `deprecated_builtin_code = 127` plus the real `builtin_code`.
_PLACEHOLDER_FOR_GREATER_OP_CODES = 127

# Tensor dtype marker for packed signed 4-bit integers (two values per byte, low nibble first).
INT4 = "int4"

_NUMPY_TO_TENSOR_TYPE = {
    "float32": "FLOAT32",
    "float16": "FLOAT16",
    "float64": "FLOAT64",
    "int32": "INT32",
    "int64": "INT64",
    "int16": "INT16",
    "int8": "INT8",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "bool": "BOOL",
    INT4: "INT4",
}

_schema_module: ModuleType | None = None


def schema() -> ModuleType:
    """Return the TFLite schema bindings (`ai_edge_litert.schema_py_generated`).

    Imported on first use so that genapi imports without the LiteRT wheel.

    Returns:
        The generated flatbuffers module with readers, builders and the object API.

    Raises:
        ImportError: if `ai-edge-litert` is not installed.
    """
    global _schema_module
    if _schema_module is None:
        try:
            from ai_edge_litert import schema_py_generated
        except ImportError as err:
            raise ImportError(
                "writing or reading .tflite files needs the TFLite schema bindings from "
                "ai-edge-litert: pip install ai-edge-litert==2.3.0"
            ) from err
        _schema_module = schema_py_generated
    return _schema_module


def tensor_type(dtype: np.dtype | str | type) -> int:
    """Map a numpy dtype (or the `INT4` marker) to a TFLite `TensorType` value.

    Args:
        dtype: a numpy dtype, dtype name, numpy scalar type, or `INT4`.

    Returns:
        The `TensorType` enum value.

    Raises:
        ValueError: if the dtype has no TFLite equivalent here.
    """
    name = INT4 if isinstance(dtype, str) and dtype == INT4 else np.dtype(dtype).name
    if name not in _NUMPY_TO_TENSOR_TYPE:
        raise ValueError(
            f"dtype {name!r} has no TFLite tensor type here; valid: {sorted(_NUMPY_TO_TENSOR_TYPE)}"
        )
    return getattr(schema().TensorType, _NUMPY_TO_TENSOR_TYPE[name])


def pack_int4(values: np.ndarray) -> np.ndarray:
    """Pack signed 4-bit values two per byte, as TFLite's INT4 tensors store them.

    Element 2k goes to the low nibble of byte k and element 2k+1 to its high nibble; an odd
    count leaves the last high nibble zero.

    Args:
        values: integers in [-8, 7], any integer dtype and shape (read in C order).

    Returns:
        A flat uint8 array of `ceil(values.size / 2)` bytes.

    Raises:
        ValueError: if `values` is not integer or holds a value outside [-8, 7].
    """
    if not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"int4 values must be integers, got dtype {values.dtype}")
    flat = np.ascontiguousarray(values).reshape(-1).astype(np.int16)
    if flat.size and (flat.min() < -8 or flat.max() > 7):
        raise ValueError(f"int4 values must lie in [-8, 7], got range [{flat.min()}, {flat.max()}]")
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, np.int16)])
    nibbles = (flat & 0x0F).astype(np.uint8)
    return nibbles[0::2] | (nibbles[1::2] << 4)


@dataclass(frozen=True)
class LazyBuffer:
    """Constant data produced only when the file is written.

    Lets a converter register every weight up front while holding at most one converted
    tensor in memory at a time during `ModelBuilder.write`.
    """

    nbytes: int  # exact size of the data `produce` returns
    dtype: np.dtype | str  # numpy dtype of the produced array (uint8 for packed int4)
    produce: Callable[[], np.ndarray] = field(repr=False)  # called once per `write`
    shape: tuple[int, ...] | None = None  # tensor shape, needed by `add_constant` only

    def __post_init__(self):
        if self.nbytes < 0:
            raise ValueError(f"LazyBuffer.nbytes must be >= 0, got {self.nbytes!r}")
        object.__setattr__(self, "dtype", np.dtype(self.dtype))


BufferSource = np.ndarray | LazyBuffer


@dataclass
class Quantization:
    """Quantization parameters of one tensor (maps to `QuantizationParameters`).

    Per-tensor: one scale and zero point. Per-channel: one per index of `quantized_dimension`.
    Blockwise (`block_size` set, for 2-D `[rows, columns]` weights, `quantized_dimension` 0):
    `scale` holds one symmetric scale per block of `block_size` columns, shape
    `[rows, columns / block_size]`; it is stored as a separate FLOAT16 constant tensor
    referenced from `BlockwiseQuantization`, as litert-torch's int4 files do. XNNPACK rounds
    those scales to bfloat16; the builtin kernel uses them as they are.

    Scales of weights produced lazily may be filled in while the file is written: per-channel
    `scale` arrays are read when the flatbuffer is packed, after all data is written, so a
    `LazyBuffer` may fill them in place; blockwise scales may be a `LazyBuffer` themselves
    (produced after the weight's buffer).
    """

    scale: np.ndarray | LazyBuffer  # float scales
    zero_point: np.ndarray  # integer zero points, same length as `scale` (unused if blockwise)
    quantized_dimension: int = 0  # the channel axis for per-channel scales
    block_size: int | None = None  # elements per block along the last axis, if blockwise


@dataclass
class _Buffer:
    source: BufferSource | None  # None for the empty sentinel and empty buffers
    nbytes: int
    key: Hashable | None


@dataclass
class _Operator:
    opcode_index: int
    inputs: list[int]
    outputs: list[int]
    options: object | None


@dataclass
class _Tensor:
    name: str
    shape: list[int]
    type: int
    buffer: int
    quantization: object | None  # QuantizationParametersT
    shape_signature: list[int] | None
    is_variable: bool


class SubgraphBuilder:
    """Tensors and operators of one subgraph; created by `ModelBuilder.subgraph`."""

    def __init__(self, model: ModelBuilder, index: int, name: str):
        self.name = name
        self.index = index  # position in the model's subgraph list
        self._model = model
        self._tensors: list[_Tensor] = []
        self._operators: list[_Operator] = []
        self._inputs: list[int] = []
        self._outputs: list[int] = []

    @property
    def num_tensors(self) -> int:
        """Number of tensors added so far."""
        return len(self._tensors)

    def add_tensor(
        self,
        name: str,
        shape: Sequence[int],
        dtype: np.dtype | str,
        *,
        buffer: int = 0,
        quantization: Quantization | None = None,
        shape_signature: Sequence[int] | None = None,
        is_variable: bool = False,
    ) -> int:
        """Add a tensor.

        Args:
            name: tensor name (shown by tools; signature names are set separately).
            shape: static shape.
            dtype: numpy dtype or `INT4`.
            buffer: index from `ModelBuilder.add_buffer` for constants; 0 for activations.
            quantization: quantization parameters, if the tensor is quantized.
            shape_signature: shape with -1 for dynamic dimensions, if any.
            is_variable: whether the tensor is a variable (stateful) tensor.

        Returns:
            The tensor's index within this subgraph.

        Raises:
            ValueError: on a negative dimension, a bad buffer index, or a shape signature of
                another rank.
        """
        shape = [int(d) for d in shape]
        if any(d < 0 for d in shape):
            raise ValueError(f"tensor {name!r}: shape {shape} has a negative dimension")
        if not 0 <= buffer < len(self._model._buffers):
            raise ValueError(
                f"tensor {name!r}: buffer {buffer} does not exist "
                f"(valid: 0..{len(self._model._buffers) - 1})"
            )
        if shape_signature is not None:
            shape_signature = [int(d) for d in shape_signature]
            if len(shape_signature) != len(shape):
                raise ValueError(
                    f"tensor {name!r}: shape_signature {shape_signature} has another rank "
                    f"than shape {shape}"
                )
        type_ = tensor_type(dtype)
        quant = None
        if quantization is not None:
            quant = self._quantization(name, shape, buffer, quantization)
        self._tensors.append(
            _Tensor(name, shape, type_, buffer, quant, shape_signature, is_variable)
        )
        return len(self._tensors) - 1

    def add_constant(
        self,
        name: str,
        array: np.ndarray | LazyBuffer,
        *,
        key: Hashable | None = None,
        quantization: Quantization | None = None,
        dtype: np.dtype | str | None = None,
    ) -> int:
        """Add a constant tensor backed by a (possibly shared) buffer.

        Args:
            name: tensor name.
            array: the data, or a `LazyBuffer` with `shape` set.
            key: buffers added with an equal key are stored once (e.g. the weight's name).
            quantization: quantization parameters of the stored values.
            dtype: `INT4` to store int values in [-8, 7] packed two per byte (`array` must
                be an ndarray then); otherwise the tensor type follows the data.

        Returns:
            The tensor's index within this subgraph.

        Raises:
            ValueError: if a `LazyBuffer` has no shape, or as `add_buffer` / `add_tensor`.
        """
        if isinstance(array, LazyBuffer):
            if array.shape is None:
                raise ValueError(f"constant {name!r}: a LazyBuffer needs `shape` here")
            if dtype is not None and dtype != INT4:
                raise ValueError(f"constant {name!r}: dtype must be None or INT4, got {dtype!r}")
            shape, tensor_dtype = array.shape, dtype or array.dtype
            buffer = self._model.add_buffer(array, key=key)
        elif dtype == INT4:
            shape, tensor_dtype = array.shape, INT4
            buffer = self._model.add_buffer(pack_int4(array), key=key)
        elif dtype is None:
            shape, tensor_dtype = array.shape, array.dtype
            buffer = self._model.add_buffer(array, key=key)
        else:
            raise ValueError(f"constant {name!r}: dtype must be None or INT4, got {dtype!r}")
        return self.add_tensor(name, shape, tensor_dtype, buffer=buffer, quantization=quantization)

    def add_operator(
        self,
        op: str,
        inputs: Sequence[int],
        outputs: Sequence[int],
        *,
        options: object | None = None,
        version: int = 1,
    ) -> None:
        """Add a builtin operator; operators run in the order they are added.

        Args:
            op: `BuiltinOperator` name, e.g. "FULLY_CONNECTED".
            inputs: tensor indices; -1 marks an omitted optional input.
            outputs: tensor indices.
            options: an object-API options instance such as `schema().FullyConnectedOptionsT()`;
                its union type is derived from the class name.
            version: operator version (kernels pick behaviour by it).

        Raises:
            ValueError: on an unknown op, a bad tensor index, or options that are not a
                `BuiltinOptions` member.
            NotImplementedError: for options stored in `builtin_options_2`.
        """
        n = len(self._tensors)
        for idx in inputs:
            if not -1 <= idx < n:
                raise ValueError(f"{op}: input tensor {idx} out of range (-1..{n - 1})")
        for idx in outputs:
            if not 0 <= idx < n:
                raise ValueError(f"{op}: output tensor {idx} out of range (0..{n - 1})")
        if options is not None:
            _options_type(options)  # validate now, where the caller's stack is useful
        opcode_index = self._model._opcode_index(op, version)
        self._operators.append(
            _Operator(opcode_index, [int(i) for i in inputs], [int(o) for o in outputs], options)
        )

    def _quantization(self, name: str, shape: list[int], buffer: int, q: Quantization) -> object:
        s = schema()
        params = s.QuantizationParametersT()
        params.quantizedDimension = int(q.quantized_dimension)
        if q.block_size is None:
            scale = np.asarray(q.scale, np.float32).reshape(-1)
            zero_point = np.asarray(q.zero_point, np.int64).reshape(-1)
            if scale.shape != zero_point.shape:
                raise ValueError(
                    f"tensor {name!r}: {scale.size} scales but {zero_point.size} zero points"
                )
            params.scale = scale
            params.zeroPoint = zero_point
            return params

        # XNNPACK refuses blockwise weights quantized along any axis but the output channels.
        if q.quantized_dimension != 0 or len(shape) != 2:
            raise ValueError(
                f"tensor {name!r}: blockwise quantization needs a 2-D [rows, columns] tensor and "
                f"quantized_dimension 0, got shape {shape} and {q.quantized_dimension}"
            )
        rows, columns = shape
        if q.block_size <= 0 or columns % q.block_size:
            raise ValueError(
                f"tensor {name!r}: block_size {q.block_size!r} must divide the {columns} columns"
            )
        if isinstance(q.scale, LazyBuffer):
            scales = q.scale
            shape_ok = scales.shape == (rows, columns // q.block_size)
            shape_ok = shape_ok and scales.dtype == np.float16
        else:
            scales = np.ascontiguousarray(q.scale, np.float16)
            shape_ok = scales.shape == (rows, columns // q.block_size)
        if not shape_ok:
            raise ValueError(
                f"tensor {name!r}: blockwise scales must be float16 of shape "
                f"{(rows, columns // q.block_size)}, got {scales.shape}"
            )
        # The scales live in their own FLOAT16 tensor. Keying its buffer by the weight's buffer
        # stores it once whenever the weight itself is shared between subgraphs.
        key = ("genapi.blockwise_scales", buffer) if buffer else None
        scales_index = self.add_constant(f"{name}_scales", scales, key=key)
        details = s.BlockwiseQuantizationT()
        details.scales = scales_index
        details.blockSize = int(q.block_size)
        # No zero points: the blockwise kernels are symmetric. -1 keeps the field from pointing
        # at tensor 0.
        details.zeroPoints = -1
        params.detailsType = s.QuantizationDetails.BlockwiseQuantization
        params.details = details
        return params

    def _to_object(self) -> object:
        s = schema()
        sub = s.SubGraphT()
        sub.name = self.name
        sub.inputs = list(self._inputs)
        sub.outputs = list(self._outputs)
        sub.tensors = []
        for t in self._tensors:
            tensor = s.TensorT()
            tensor.name = t.name
            tensor.shape = list(t.shape)
            tensor.type = t.type
            tensor.buffer = t.buffer
            tensor.quantization = t.quantization
            tensor.shapeSignature = t.shape_signature
            tensor.isVariable = t.is_variable
            tensor.hasRank = True  # every genapi tensor has a known rank, scalars included
            sub.tensors.append(tensor)
        sub.operators = []
        for o in self._operators:
            op = s.OperatorT()
            op.opcodeIndex = o.opcode_index
            op.inputs = o.inputs
            op.outputs = o.outputs
            if o.options is not None:
                op.builtinOptionsType = _options_type(o.options)
                op.builtinOptions = o.options
            sub.operators.append(op)
        return sub


def _options_type(options: object) -> int:
    s = schema()
    cls = type(options).__name__
    union_name = cls[:-1] if cls.endswith("T") else cls
    value = getattr(s.BuiltinOptions, union_name, None)
    if isinstance(value, int) and getattr(s, cls, None) is type(options):
        return value
    if isinstance(getattr(s.BuiltinOptions2, union_name, None), int):
        raise NotImplementedError(
            f"operator options {cls} are not supported yet: they belong in builtin_options_2, "
            "which the writer does not emit"
        )
    raise ValueError(
        f"options {cls!r} is not an object-API BuiltinOptions class of the schema "
        "(expected e.g. schema().FullyConnectedOptionsT())"
    )


def _align(n: int) -> int:
    return (n + DATA_ALIGNMENT - 1) // DATA_ALIGNMENT * DATA_ALIGNMENT


def _little_endian_contiguous(array: np.ndarray) -> np.ndarray:
    # TFLite data is little-endian whatever the host; bool and bytes have no byte order.
    if array.dtype.byteorder == ">" or (array.dtype.byteorder == "=" and sys.byteorder == "big"):
        array = array.astype(array.dtype.newbyteorder("<"))
    return np.ascontiguousarray(array)


class ModelBuilder:
    """Collects buffers, subgraphs, signatures and metadata, then writes a `.tflite` file.

    Example:
        mb = ModelBuilder()
        sg = mb.subgraph("decode")
        x = sg.add_tensor("x", [1, 4], np.float32)
        w = sg.add_constant("w", weight, key="layer0.w")
        y = sg.add_tensor("y", [1, 8], np.float32)
        sg.add_operator("FULLY_CONNECTED", [x, w, -1], [y])
        mb.add_signature("decode", sg, inputs={"x": x}, outputs={"y": y})
        mb.write("model.tflite")
    """

    def __init__(self, *, description: str = "genapi"):
        self.description = description
        self._buffers: list[_Buffer] = [_Buffer(None, 0, None)]  # 0: the schema's sentinel
        self._buffer_by_key: dict[Hashable, int] = {}
        self._subgraphs: list[SubgraphBuilder] = []
        self._opcodes: list[tuple[str, int]] = []
        self._opcode_by_key: dict[tuple[str, int], int] = {}
        self._signatures: list[tuple[str, SubgraphBuilder, dict[str, int], dict[str, int]]] = []
        self._metadata: list[tuple[str, int]] = []
        # State converters share between the subgraphs they build (e.g. quantized weights).
        self.shared: dict[Hashable, object] = {}

    @property
    def num_buffers(self) -> int:
        """Number of buffers, the sentinel included."""
        return len(self._buffers)

    def add_buffer(self, data: BufferSource | None, *, key: Hashable | None = None) -> int:
        """Register constant data.

        Args:
            data: an array (kept by reference until `write`, which stores it C-contiguous and
                little-endian), a `LazyBuffer`, or None for the empty sentinel buffer 0.
            key: data added again with an equal key returns the first buffer, so weights are
                shared between subgraphs. The data is not compared, only its size and dtype.

        Returns:
            The buffer index.

        Raises:
            ValueError: if `key` was used before for data of another size or dtype.
            TypeError: if `data` is neither an ndarray, a LazyBuffer nor None.
        """
        if data is None:
            return 0
        if not isinstance(data, (np.ndarray, LazyBuffer)):
            raise TypeError(
                f"buffer data must be a numpy array or LazyBuffer, got {type(data).__name__}"
            )
        if key is not None and key in self._buffer_by_key:
            index = self._buffer_by_key[key]
            first = self._buffers[index].source
            if data.nbytes != first.nbytes or data.dtype != first.dtype:
                raise ValueError(
                    f"buffer key {key!r} was first used for {first.nbytes} bytes of {first.dtype}, "
                    f"now for {data.nbytes} bytes of {data.dtype}"
                )
            return index
        self._buffers.append(_Buffer(data, int(data.nbytes), key))
        index = len(self._buffers) - 1
        if key is not None:
            self._buffer_by_key[key] = index
        return index

    def subgraph(self, name: str) -> SubgraphBuilder:
        """Create a subgraph; subgraphs are numbered in creation order.

        Args:
            name: the subgraph's name.

        Returns:
            Its builder.
        """
        sub = SubgraphBuilder(self, len(self._subgraphs), name)
        self._subgraphs.append(sub)
        return sub

    def add_signature(
        self,
        key: str,
        subgraph: SubgraphBuilder,
        *,
        inputs: dict[str, int],
        outputs: dict[str, int],
    ) -> None:
        """Name a subgraph's inputs and outputs under a signature key.

        The subgraph's own input and output lists are set from these, in the given order.
        An input and an output may share a name (as LiteRT-LM's KV cache contract requires).

        Args:
            key: the signature key, e.g. "decode" or "prefill_128".
            subgraph: a subgraph of this model without a signature yet.
            inputs: signature name -> tensor index in `subgraph`.
            outputs: signature name -> tensor index in `subgraph`.

        Raises:
            ValueError: on a repeated key, a subgraph of another model or with a signature
                already, or a bad tensor index.
        """
        if any(k == key for k, *_ in self._signatures):
            raise ValueError(f"signature {key!r} already exists")
        if subgraph._model is not self:
            raise ValueError(f"subgraph {subgraph.name!r} belongs to another ModelBuilder")
        for other_key, other, *_ in self._signatures:
            if other is subgraph:
                raise ValueError(
                    f"subgraph {subgraph.name!r} already has signature {other_key!r}; "
                    "a subgraph carries one signature"
                )
        for kind, mapping in (("input", inputs), ("output", outputs)):
            for name, idx in mapping.items():
                if not 0 <= idx < subgraph.num_tensors:
                    raise ValueError(
                        f"signature {key!r}: {kind} {name!r} -> tensor {idx} is not in "
                        f"subgraph {subgraph.name!r} (0..{subgraph.num_tensors - 1})"
                    )
        subgraph._inputs = [int(i) for i in inputs.values()]
        subgraph._outputs = [int(i) for i in outputs.values()]
        self._signatures.append((key, subgraph, dict(inputs), dict(outputs)))

    def add_metadata(self, name: str, data: bytes) -> None:
        """Add a `model.metadata` entry backed by its own buffer.

        Args:
            name: metadata name.
            data: its bytes.

        Raises:
            ValueError: if `name` was added before.
        """
        if any(n == name for n, _ in self._metadata):
            raise ValueError(f"metadata {name!r} already exists")
        buffer = self.add_buffer(np.frombuffer(bytes(data), dtype=np.uint8).copy())
        self._metadata.append((name, buffer))

    def write(self, path: str | os.PathLike, *, progress: bool = False) -> None:
        """Write the model atomically: to a temp file beside `path`, then renamed over it.

        Lazy buffers are produced here, one at a time, in buffer order.

        Args:
            path: destination file.
            progress: show a progress bar (bytes written) when stderr is a terminal.

        Raises:
            ValueError: if a LazyBuffer produces data of the wrong size or dtype.
            OSError: if the file cannot be written. In both cases nothing is left at `path`
                from this call and the temp file is removed.
        """
        path = Path(path)
        remove_stale_temporaries(path.parent)
        tmp = path.parent / f".{path.name}{TMP_MARKER}{os.getpid()}"
        try:
            with open(tmp, "wb") as f:
                flatbuffer = self._write_all(f, progress=progress)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)
        logger.debug(
            "wrote %s: flatbuffer %d bytes, %d buffers, %d bytes in total",
            path,
            len(flatbuffer),
            len(self._buffers),
            path.stat().st_size,
        )

    def to_bytes(self) -> bytes:
        """Return the file contents in memory (for small models and tests).

        Returns:
            The same bytes `write` would store.
        """
        import io

        out = io.BytesIO()
        self._write_all(out, progress=False)
        return out.getvalue()

    def _write_all(self, f, *, progress: bool) -> bytes:
        """Write the file to the seekable `f`; return the flatbuffer.

        The data goes first, after a placeholder flatbuffer of the final size, and the real
        flatbuffer last: lazy buffers may fill in quantization scales (which live in the
        flatbuffer) only when they produce their data.
        """
        model = self._model_object()
        placeholder = _pack(model)
        offsets = self._assign_offsets(model, len(placeholder))
        f.write(placeholder)
        self._write_data(f, len(placeholder), offsets, progress=progress)
        end = f.tell()
        final = _pack(model)
        assert len(final) == len(placeholder), "flatbuffer size changed when it was filled in"
        f.seek(0)
        f.write(final)
        f.seek(end)
        return final

    def _assign_offsets(self, model: object, flatbuffer_size: int) -> list[int]:
        # Offsets are fixed-width fields: filling them in does not change the flatbuffer's size.
        offsets, position = [], _align(flatbuffer_size)
        for b, buffer in zip(self._buffers, model.buffers, strict=True):
            if b.nbytes:
                offsets.append(position)
                buffer.offset = position
                position = _align(position + b.nbytes)
            else:
                offsets.append(0)
        return offsets

    def _write_data(self, f, position: int, offsets: list[int], *, progress: bool) -> None:
        from tqdm import tqdm

        total = sum(b.nbytes for b in self._buffers)
        show = progress and sys.stderr.isatty()
        with tqdm(total=total, unit="B", unit_scale=True, disable=not show) as bar:
            for index, (b, offset) in enumerate(zip(self._buffers, offsets, strict=True)):
                if not b.nbytes:
                    continue
                array = self._materialize(index, b)
                f.write(b"\0" * (offset - position))
                # memoryview avoids copying large weights into a bytes object.
                f.write(memoryview(array.reshape(-1).view(np.uint8)))
                position = offset + b.nbytes
                bar.update(b.nbytes)
                del array

    @staticmethod
    def _materialize(index: int, b: _Buffer) -> np.ndarray:
        if isinstance(b.source, LazyBuffer):
            array = b.source.produce()
            if not isinstance(array, np.ndarray):
                raise ValueError(
                    f"LazyBuffer for buffer {index} (key {b.key!r}) produced "
                    f"{type(array).__name__}, expected a numpy array"
                )
            if array.dtype != b.source.dtype or array.nbytes != b.nbytes:
                raise ValueError(
                    f"LazyBuffer for buffer {index} (key {b.key!r}) promised {b.nbytes} bytes of "
                    f"{b.source.dtype}, produced {array.nbytes} bytes of {array.dtype}"
                )
        else:
            array = b.source
        return _little_endian_contiguous(array)

    def _opcode_index(self, op: str, version: int) -> int:
        key = (op, int(version))
        if key not in self._opcode_by_key:
            if not isinstance(getattr(schema().BuiltinOperator, op, None), int):
                raise ValueError(
                    f"unknown builtin operator {op!r}; valid names are the members of "
                    "schema().BuiltinOperator, e.g. 'FULLY_CONNECTED'"
                )
            if version < 1:
                raise ValueError(f"{op}: version must be >= 1, got {version!r}")
            self._opcode_by_key[key] = len(self._opcodes)
            self._opcodes.append(key)
        return self._opcode_by_key[key]

    def _model_object(self) -> object:
        s = schema()
        model = s.ModelT()
        model.version = SCHEMA_VERSION
        model.description = self.description

        model.operatorCodes = []
        for op, version in self._opcodes:
            code = getattr(s.BuiltinOperator, op)
            opcode = s.OperatorCodeT()
            opcode.builtinCode = code
            opcode.deprecatedBuiltinCode = min(code, _PLACEHOLDER_FOR_GREATER_OP_CODES)
            opcode.version = version
            model.operatorCodes.append(opcode)

        model.buffers = []
        for b in self._buffers:
            buffer = s.BufferT()
            if b.nbytes:
                buffer.offset = _OFFSET_PLACEHOLDER
                buffer.size = b.nbytes
            model.buffers.append(buffer)

        model.metadata = []
        for name, index in self._metadata:
            entry = s.MetadataT()
            entry.name = name
            entry.buffer = index
            model.metadata.append(entry)

        model.signatureDefs = []
        for key, sub, inputs, outputs in self._signatures:
            sig = s.SignatureDefT()
            sig.signatureKey = key
            sig.subgraphIndex = sub.index
            sig.inputs = [_tensor_map(s, n, i) for n, i in inputs.items()]
            sig.outputs = [_tensor_map(s, n, i) for n, i in outputs.items()]
            model.signatureDefs.append(sig)

        model.subgraphs = [sub._to_object() for sub in self._subgraphs]
        return model


def _pack(model: object) -> bytes:
    import flatbuffers

    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())


def _tensor_map(s: ModuleType, name: str, index: int) -> object:
    entry = s.TensorMapT()
    entry.name = name
    entry.tensorIndex = int(index)
    return entry


TMP_MARKER = ".genapi-tmp-"


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete temp files a killed conversion left in `folder` (their process is gone).

    Returns:
        The files removed.
    """
    removed = []
    for tmp in folder.glob(f".*{TMP_MARKER}*"):
        pid = tmp.name.rsplit(TMP_MARKER, 1)[-1]
        if not pid.isdigit() or _process_alive(int(pid)):
            continue
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
        logger.info("removed %s, left by an interrupted conversion", tmp)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_dir(folder: Path) -> None:
    # Makes the rename durable; not every platform lets a directory be opened.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
