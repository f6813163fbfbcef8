"""Lowering of an exported ATen graph to TFLite builtin operators.

Walks the nodes of a `torch.export.ExportedProgram` in order. Each value is either a
`Tensor` of the TFLite subgraph being built or a `Const` known at conversion time. A node
whose inputs are all constants is folded: small constants (masks' position ranges, rotary
tables) are computed at once, while constants that depend on weights are folded lazily, so
that the weight data is read only when the writer streams it to disk. Every other node is
handed to the lowering registered for its ATen op in `LOWERINGS`.
"""

from __future__ import annotations

import hashlib
import logging
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import fx

from genapi.export.optimize import Op, optimize
from genapi.export.quantize import PartQuant, QuantizedWeight, QuantRecipe, fit_block_size
from genapi.export.tflite_writer import (
    INT4,
    LazyBuffer,
    ModelBuilder,
    Quantization,
    SubgraphBuilder,
)

logger = logging.getLogger(__name__)

# Integer tensors are int32 in the TFLite graph: positions and token ids never need more.
_NUMPY_DTYPES = {
    torch.float32: np.float32,
    torch.float16: np.float16,
    torch.int32: np.int32,
    torch.int64: np.int32,
    torch.bool: np.bool_,
    torch.int8: np.int8,
    torch.uint8: np.uint8,
}


def numpy_dtype(dtype: torch.dtype) -> type:
    """The TFLite-side numpy dtype of a torch dtype."""
    try:
        return _NUMPY_DTYPES[dtype]
    except KeyError:
        raise NotImplementedError(
            f"tensors of dtype {dtype} are not supported yet by the converter: "
            f"supported are {', '.join(str(d) for d in _NUMPY_DTYPES)}"
        ) from None


@dataclass(frozen=True)
class Tensor:
    """A tensor of the subgraph being built."""

    index: int
    shape: tuple[int, ...]
    dtype: torch.dtype


@dataclass
class Const:
    """A value known at conversion time, computed now (`value`) or when written (`produce`)."""

    key: str  # identifies the value across signatures, so shared data is stored once
    shape: tuple[int, ...]
    dtype: torch.dtype
    value: torch.Tensor | None = None  # small constants: computed at once
    produce: Callable[[], torch.Tensor] | None = None  # weight-derived: computed at write time

    @property
    def is_lazy(self) -> bool:
        return self.value is None

    def get(self) -> torch.Tensor:
        return self.value if self.value is not None else self.produce()


class LoweringError(NotImplementedError):
    """An ATen op (or a use of one) the converter cannot lower; names the source line."""


Lowering = Callable[["LoweringContext", fx.Node, tuple, dict], Any]
LOWERINGS: dict[Any, Lowering] = {}


def lowering(*ops) -> Callable[[Lowering], Lowering]:
    """Register a lowering function for one or more ATen ops."""

    def register(fn: Lowering) -> Lowering:
        for op in ops:
            LOWERINGS[op] = fn
        return fn

    return register


def source_line(node: fx.Node) -> str:
    """`file:line: code` of the model code that produced `node`, for error messages."""
    trace = (node.meta.get("stack_trace") or "").strip().splitlines()
    for i in range(len(trace) - 1, -1, -1):
        line = trace[i].strip()
        if line.startswith("File "):
            parts = line.split('"')
            where = parts[1] if len(parts) > 1 else line
            lineno = line.rsplit("line ", 1)[-1].split(",")[0]
            code = trace[i + 1].strip() if i + 1 < len(trace) else ""
            return f"{where}:{lineno}: {code}"
    return "<unknown source>"


@dataclass
class LoweringContext:
    """State of lowering one exported program into one subgraph."""

    model: ModelBuilder
    graph: SubgraphBuilder
    node: fx.Node | None = None
    _const_tensors: dict[tuple[str, Any], Tensor] = field(default_factory=dict)
    _names: dict[str, int] = field(default_factory=dict)
    cache: dict[Any, Any] = field(default_factory=dict)  # for lowerings to share helper tensors
    graph_inputs: set[int] = field(default_factory=set)  # indices of the signature's inputs
    fuse_linear: bool = True  # merge linears that read one input into one FULLY_CONNECTED
    quant: QuantRecipe | None = None  # how weights are stored; None keeps them float
    # Per program being lowered: its values, its fusable linear groups, fused results.
    env: dict[str, Any] = field(default_factory=dict)
    linear_groups: dict[str, list[fx.Node]] = field(default_factory=dict)
    fused: dict[str, Any] = field(default_factory=dict)
    ops: list[Op] = field(default_factory=list)  # operators, written by `finish`
    shapes: dict[int, tuple] = field(default_factory=dict)  # tensor index -> shape
    dtypes: dict[int, torch.dtype] = field(default_factory=dict)  # tensor index -> dtype

    # -- tensors ------------------------------------------------------------------------------

    def unique_name(self, base: str) -> str:
        count = self._names.get(base, 0)
        self._names[base] = count + 1
        return base if count == 0 else f"{base}_{count}"

    def new_tensor(self, shape, dtype: torch.dtype, name: str | None = None) -> Tensor:
        """An empty (activation) tensor of the subgraph."""
        name = self.unique_name(name or (self.node.name if self.node is not None else "t"))
        index = self.graph.add_tensor(name, tuple(shape), numpy_dtype(dtype))
        self.shapes[index] = tuple(int(d) for d in shape)
        self.dtypes[index] = dtype
        return Tensor(index, tuple(int(d) for d in shape), dtype)

    def input_tensor(self, name: str, shape, dtype: torch.dtype) -> Tensor:
        """A signature input of the subgraph."""
        index = self.graph.add_tensor(name, tuple(shape), numpy_dtype(dtype))
        self.shapes[index] = tuple(int(d) for d in shape)
        self.dtypes[index] = dtype
        self.graph_inputs.add(index)
        return Tensor(index, tuple(int(d) for d in shape), dtype)

    def output_like(self, node: fx.Node | None = None, *, dtype: torch.dtype | None = None):
        node = node or self.node
        val = node.meta["val"]
        return self.new_tensor(tuple(val.shape), dtype or val.dtype, name=node.name)

    def tensor(self, value, *, dtype: torch.dtype | None = None) -> Tensor:
        """`value` as a subgraph tensor, turning constants into constant tensors."""
        if isinstance(value, Tensor):
            return value
        if isinstance(value, (int, float, bool)):
            dtype = dtype or (torch.float32 if isinstance(value, float) else torch.int32)
            value = self.constant(torch.tensor(value, dtype=dtype))
        if not isinstance(value, Const):
            raise LoweringError(f"cannot use {value!r} as a tensor")
        target_dtype = dtype or value.dtype
        cache_key = (value.key, target_dtype)
        if cache_key in self._const_tensors:
            return self._const_tensors[cache_key]
        np_dtype = numpy_dtype(target_dtype)
        if value.is_lazy:
            produce = value.produce

            def make() -> np.ndarray:
                array = produce().to(target_dtype).numpy().astype(np_dtype, copy=False)
                return np.ascontiguousarray(array)

            data = LazyBuffer(
                nbytes=int(np.prod(value.shape, dtype=np.int64)) * np.dtype(np_dtype).itemsize,
                dtype=np.dtype(np_dtype),
                produce=make,
            )
        else:
            data = np.ascontiguousarray(value.value.to(target_dtype).numpy().astype(np_dtype))
        buffer = self.model.add_buffer(data, key=(value.key, str(np_dtype)))
        name = self.unique_name(_tensor_name(value.key))
        index = self.graph.add_tensor(name, value.shape, np_dtype, buffer=buffer)
        self.shapes[index] = tuple(value.shape)
        self.dtypes[index] = target_dtype
        result = Tensor(index, value.shape, target_dtype)
        self._const_tensors[cache_key] = result
        return result

    def weight(self, value: Const, part: str) -> tuple[Tensor, PartQuant]:
        """`value` stored the way the recipe says for `part` (see `genapi.export.quantize`).

        Returns the stored tensor (float32, float16, int8 or int4) and the part's scheme; the
        caller emits DEQUANTIZE where the consuming kernel needs float weights. Weights
        quantized the same way for two uses (a tied embedding and head) are stored once.
        """
        pq = self.quant.part(part) if self.quant is not None else PartQuant()
        if pq.scheme == "none" or not np.issubdtype(numpy_dtype(value.dtype), np.floating):
            return self.tensor(value, dtype=torch.float32), pq
        pq = fit_block_size(pq, value.shape, name=value.key)
        cache_key = (value.key, pq.key)
        if cache_key in self._const_tensors:
            return self._const_tensors[cache_key], pq
        shape = tuple(value.shape)
        buffer_key = (value.key, pq.key)
        # One QuantizedWeight per stored weight for the whole model: the subgraphs share its
        # buffer, so they must share the scales its production fills in.
        stored = self.model.shared.get(("quantized", buffer_key))
        if stored is None:
            stored = QuantizedWeight(value.get, shape, pq)
            self.model.shared[("quantized", buffer_key)] = stored
        name = self.unique_name(_tensor_name(value.key))
        if pq.scheme == "fp16":
            index = self.graph.add_constant(name, stored.lazy_values(), key=buffer_key)
            dtype = torch.float16
        elif pq.scheme == "int8":
            index = self.graph.add_constant(
                name,
                stored.lazy_values(),
                key=buffer_key,
                quantization=Quantization(stored.row_scales, np.zeros(shape[0], np.int64), 0),
            )
            dtype = torch.int8
        else:  # int4 blocks
            index = self.graph.add_constant(
                name,
                stored.lazy_values(),
                key=buffer_key,
                dtype=INT4,
                quantization=Quantization(
                    stored.lazy_block_scales(),
                    np.zeros(0, np.int64),
                    0,
                    block_size=pq.block_size,
                ),
            )
            dtype = torch.int8  # bookkeeping only: the tensor is INT4
        self.shapes[index] = shape
        self.dtypes[index] = dtype
        result = Tensor(index, shape, dtype)
        self._const_tensors[cache_key] = result
        return result, pq

    def weight_offsets(self, value: Const, pq: PartQuant) -> Tensor:
        """The per-block offsets of an asymmetric int4 weight: int8 `[rows, blocks]` with one
        scale per row. Call after `weight` for the same value, with the scheme it returned."""
        cache_key = (value.key, pq.key, "offsets")
        if cache_key in self._const_tensors:
            return self._const_tensors[cache_key]
        stored = self.model.shared[("quantized", (value.key, pq.key))]
        rows = stored.shape[0]
        index = self.graph.add_constant(
            self.unique_name(_tensor_name(value.key) + "_offsets"),
            stored.lazy_offsets(),
            key=(value.key, pq.key, "offsets"),
            quantization=Quantization(stored.offset_scales, np.zeros(rows, np.int64), 0),
        )
        self.shapes[index] = stored.blocks
        self.dtypes[index] = torch.int8
        result = Tensor(index, stored.blocks, torch.int8)
        self._const_tensors[cache_key] = result
        return result

    def constant(self, value: torch.Tensor | np.ndarray, *, dtype=None) -> Const:
        """A small constant computed now, keyed by its content so equal ones are shared."""
        tensor = torch.as_tensor(value)
        if dtype is not None:
            tensor = tensor.to(dtype)
        tensor = tensor.detach().cpu().contiguous()
        digest = hashlib.sha1(tensor.numpy().tobytes()).hexdigest()[:16]
        key = f"const:{tensor.dtype}:{tuple(tensor.shape)}:{digest}"
        return Const(key=key, shape=tuple(tensor.shape), dtype=tensor.dtype, value=tensor)

    def int_vector(self, values) -> Tensor:
        """A constant int32 vector tensor (shapes, axes, permutations)."""
        return self.tensor(self.constant(torch.tensor(list(values), dtype=torch.int32)))

    # -- operators ----------------------------------------------------------------------------

    def emit(self, op: str, inputs, outputs, *, options=None, version: int = 1, extra=None) -> None:
        """Queue an operator; `extra` records constant inputs the optimizer reasons about."""
        ins = [-1 if t is None else self.tensor(t).index for t in inputs]
        outs = [t.index for t in outputs]
        self.ops.append(Op(op, ins, outs, options, version, dict(extra or {})))

    def finish(self, outputs: list[int]) -> None:
        """Optimise the queued operators and add the live ones to the subgraph."""

        def reshape(source: int, shape: tuple) -> tuple[Op, int]:
            dtype = self.dtypes[source]
            out = self.new_tensor(shape, dtype, name="reshape")
            return Op("RESHAPE", [source, self.int_vector(shape).index], [out.index]), out.index

        for op in optimize(self.ops, shapes=self.shapes, keep=set(outputs), reshape=reshape):
            self.graph.add_operator(
                op.op, op.inputs, op.outputs, options=op.options, version=op.version
            )
        self.ops = []

    def op(self, op: str, inputs, *, shape=None, dtype=None, options=None, version=1) -> Tensor:
        """Emit `op` with one output shaped like the current node unless told otherwise."""
        if shape is None:
            out = self.output_like(dtype=dtype)
        else:
            out = self.new_tensor(shape, dtype or torch.float32, name=self.node.name)
        self.emit(op, inputs, [out], options=options, version=version)
        return out


def _tensor_name(key: str) -> str:
    if key.startswith("const:"):
        return "const"
    return key


def _is_value(x) -> bool:
    return isinstance(x, (Tensor, Const))


def _flatten(args) -> list:
    out = []
    for a in args:
        if isinstance(a, (list, tuple)):
            out.extend(_flatten(a))
        else:
            out.append(a)
    return out


def _materialize(x):
    if isinstance(x, Const):
        return x.get()
    if isinstance(x, (list, tuple)):
        return type(x)(_materialize(a) for a in x)
    return x


def _describe(x) -> str:
    if isinstance(x, Const):
        return x.key
    if isinstance(x, (list, tuple)):
        return "[" + ",".join(_describe(a) for a in x) + "]"
    return repr(x)


def fold(node: fx.Node, args: tuple, kwargs: dict) -> Const:
    """Fold a node whose inputs are all constants into a constant."""
    target = node.target
    if "device" in kwargs:  # factories traced on the meta device are evaluated on the CPU
        kwargs = {**kwargs, "device": torch.device("cpu")}
    values = _flatten(list(args) + list(kwargs.values()))
    lazy = any(isinstance(v, Const) and v.is_lazy for v in values)
    val = node.meta.get("val")
    if lazy:
        key = f"{target}({_describe(args)};{_describe(sorted(kwargs.items()))})"

        def produce() -> torch.Tensor:
            return target(*_materialize(args), **_materialize(kwargs))

        return Const(key=key, shape=tuple(val.shape), dtype=val.dtype, produce=produce)
    result = target(*_materialize(args), **_materialize(kwargs))
    tensor = torch.as_tensor(result)
    digest = hashlib.sha1(tensor.detach().contiguous().numpy().tobytes()).hexdigest()[:16]
    key = f"const:{tensor.dtype}:{tuple(tensor.shape)}:{digest}"
    return Const(key=key, shape=tuple(tensor.shape), dtype=tensor.dtype, value=tensor)


# Ops that only describe or re-label a value; lowered to nothing.
_SKIPPED = {torch.ops.aten._assert_tensor_metadata.default}


def lower_program(
    program: torch.export.ExportedProgram,
    ctx: LoweringContext,
    *,
    inputs: Mapping[str, Tensor],
    params: Callable[[str], Const],
    buffers: Callable[[str], Const],
) -> list:
    """Lower `program` into `ctx.graph`.

    Args:
        program: the exported (and decomposed) program of one signature.
        ctx: the lowering context of the target subgraph.
        inputs: user input name (as in the program's signature) -> subgraph tensor.
        params: parameter name -> lazy constant for its data.
        buffers: buffer or lifted-constant name -> constant.

    Returns:
        The values of the program's user outputs, in order.

    Raises:
        LoweringError: for an op with no lowering, naming it and its source line.
    """
    sig = program.graph_signature
    env: dict[str, Any] = {}
    placeholder_source = {}
    for spec in sig.input_specs:
        placeholder_source[spec.arg.name] = spec
    ctx.env = env
    ctx.linear_groups = linear_groups(program) if ctx.fuse_linear else {}
    ctx.fused = {}
    for node in program.graph.nodes:
        ctx.node = node
        if node.op == "placeholder":
            spec = placeholder_source[node.name]
            kind = spec.kind.name
            if kind == "USER_INPUT":
                env[node.name] = inputs[node.name]
            elif kind == "PARAMETER":
                env[node.name] = params(spec.target)
            elif kind in ("BUFFER", "CONSTANT_TENSOR"):
                env[node.name] = buffers(spec.target)
            else:
                raise LoweringError(f"program input {node.name!r} of kind {kind} is not supported")
        elif node.op == "call_function":
            if node.target in _SKIPPED:
                continue
            args = fx.node.map_arg(node.args, lambda n: env[n.name])
            kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n.name])
            env[node.name] = _lower_node(ctx, node, args, kwargs)
        elif node.op == "output":
            outputs = fx.node.map_arg(node.args[0], lambda n: env[n.name])
            return list(outputs)
    raise LoweringError("exported program has no output node")


def linear_groups(program: torch.export.ExportedProgram) -> dict[str, list[fx.Node]]:
    """Linear nodes that read the same input with parameter weights (q, k and v; gate and
    up), by node name, for lowering as one FULLY_CONNECTED whose output is sliced."""
    kinds = {spec.arg.name: spec.kind.name for spec in program.graph_signature.input_specs}

    def is_param(arg) -> bool:
        return isinstance(arg, fx.Node) and kinds.get(arg.name) == "PARAMETER"

    groups: dict[tuple, list[fx.Node]] = {}
    for node in program.graph.nodes:
        if node.op != "call_function" or node.target is not torch.ops.aten.linear.default:
            continue
        bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
        if not is_param(node.args[1]) or not (bias is None or is_param(bias)):
            continue
        source = node.args[0]
        if isinstance(source, fx.Node):
            groups.setdefault((source.name, bias is None), []).append(node)
    return {n.name: group for group in groups.values() if len(group) > 1 for n in group}


def _lower_node(ctx: LoweringContext, node: fx.Node, args: tuple, kwargs: dict):
    if node.target is operator.getitem:  # picks one output of a multi-output op
        return args[0][args[1]]
    values = _flatten(list(args) + list(kwargs.values()))
    if not any(isinstance(v, Tensor) for v in values):
        return fold(node, args, kwargs)
    fn = LOWERINGS.get(node.target)
    if fn is None:
        raise LoweringError(
            f"no TFLite lowering for ATen op {node.target} (from {source_line(node)})"
        )
    try:
        return fn(ctx, node, args, kwargs)
    except LoweringError as err:
        if "(from " in str(err):
            raise
        raise LoweringError(f"{err} (op {node.target} from {source_line(node)})") from None
