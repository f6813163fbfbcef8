"""The table of lowerings: one function per ATen op (or family of ops) -> TFLite builtins.

Shapes are static: every lowering reads its output shape from the node's traced value.
Integer tensors are int32 on the TFLite side (see `lower.numpy_dtype`).
"""

from __future__ import annotations

import numpy as np
import torch

from genapi.export.lower import Const, LoweringContext, LoweringError, Tensor, lowering

aten = torch.ops.aten


def _schema():
    from genapi.export.tflite_writer import schema

    return schema()


def _options(name: str, **fields):
    opts = getattr(_schema(), name)()
    for key, value in fields.items():
        setattr(opts, key, value)
    return opts


def _rank(x) -> int:
    return len(x.shape)


def _axis(dim: int, rank: int) -> int:
    return dim + rank if dim < 0 else dim


# -- no-ops -------------------------------------------------------------------------------------


@lowering(aten.clone.default, aten.alias.default, aten.detach.default, aten.lift_fresh_copy.default)
def _identity(ctx, node, args, kwargs):
    return args[0]


@lowering(aten._to_copy.default, aten.to.dtype, aten.to.dtype_layout, aten.type_as.default)
def _to_copy(ctx, node, args, kwargs):
    x = args[0]
    out_dtype = node.meta["val"].dtype
    if np.dtype(_np(x.dtype)) == np.dtype(_np(out_dtype)):
        return Tensor(x.index, x.shape, out_dtype) if isinstance(x, Tensor) else x
    return ctx.op("CAST", [x], dtype=out_dtype)


def _np(dtype):
    from genapi.export.lower import numpy_dtype

    return numpy_dtype(dtype)


# -- shape ops ----------------------------------------------------------------------------------


@lowering(
    aten.view.default,
    aten._unsafe_view.default,
    aten.reshape.default,
    aten.unsqueeze.default,
    aten.squeeze.dim,
    aten.squeeze.dims,
    aten.squeeze.default,
    aten.flatten.using_ints,
)
def _reshape(ctx, node, args, kwargs):
    x = args[0]
    shape = tuple(node.meta["val"].shape)
    if tuple(x.shape) == shape:
        return x
    new_shape = ctx.int_vector(shape)
    return ctx.op("RESHAPE", [x, new_shape], dtype=x.dtype)


@lowering(aten.permute.default)
def _permute(ctx, node, args, kwargs):
    x, dims = args
    perm = [_axis(d, _rank(x)) for d in dims]
    if perm == list(range(len(perm))):
        return x
    return _emit_transpose(ctx, x, perm)


def _emit_transpose(ctx, x, perm) -> Tensor:
    out = ctx.output_like(dtype=x.dtype)
    ctx.emit("TRANSPOSE", [x, ctx.int_vector(perm)], [out], extra={"perm": tuple(perm)})
    return out


@lowering(aten.transpose.int)
def _transpose(ctx, node, args, kwargs):
    x, a, b = args
    perm = list(range(_rank(x)))
    a, b = _axis(a, len(perm)), _axis(b, len(perm))
    perm[a], perm[b] = perm[b], perm[a]
    return _emit_transpose(ctx, x, perm)


@lowering(aten.expand.default)
def _expand(ctx, node, args, kwargs):
    x = args[0]
    shape = tuple(node.meta["val"].shape)
    if tuple(x.shape) == shape:
        return x
    return ctx.op("BROADCAST_TO", [x, ctx.int_vector(shape)], dtype=x.dtype)


@lowering(aten.cat.default)
def _cat(ctx, node, args, kwargs):
    tensors = [t for t in args[0] if 0 not in t.shape]
    dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
    axis = _axis(dim, len(node.meta["val"].shape))
    if len(tensors) == 1:
        return tensors[0]
    rotated = _rotate_half_source(ctx, node, axis)
    if rotated is not None:
        return _rotate_half(ctx, rotated)
    opts = _options("ConcatenationOptionsT", axis=axis)
    return ctx.op("CONCATENATION", tensors, options=opts)


def _slice_range(node, rank: int) -> tuple[int, int, int] | None:
    """(axis, start, end) of a unit-step `aten.slice` node on a tensor of `rank`, else None."""
    if node.target != aten.slice.Tensor:
        return None
    x, dim, start, end, *rest = (*node.args, None, None, None)[:5]
    size = node.args[0].meta["val"].shape
    if rest and rest[0] not in (None, 1):
        return None
    axis = _axis(dim if dim is not None else 0, rank)
    start = 0 if start is None else start
    end = size[axis] if end is None else min(end, size[axis])
    return axis, start + size[axis] if start < 0 else start, end + size[axis] if end < 0 else end


def _rotate_half_source(ctx, node, axis: int):
    """x when `node` is cat((-x[..., h:], x[..., :h]), -1), rotary embedding's rotate-half."""
    parts = node.args[0]
    rank = len(node.meta["val"].shape)
    if len(parts) != 2 or axis != rank - 1 or parts[0].target != aten.neg.default:
        return None
    high, low = parts[0].args[0], parts[1]
    high_range, low_range = _slice_range(high, rank), _slice_range(low, rank)
    if high_range is None or low_range is None or high.args[0] is not low.args[0]:
        return None
    width = low.args[0].meta["val"].shape[-1]
    half = width // 2
    if width % 2 or high_range != (axis, half, width) or low_range != (axis, 0, half):
        return None
    source = ctx.env.get(low.args[0].name)
    return source if isinstance(source, Tensor) else None


def _rotate_half(ctx, x: Tensor) -> Tensor:
    """rotate_half(x) as one FULLY_CONNECTED by a signed permutation (instead of two slices,
    a negation and a concatenation). Exact: each output is one input times +-1 plus zeros."""
    width = x.shape[-1]
    half = width // 2
    matrix = torch.zeros(width, width)  # [out, in], as FULLY_CONNECTED stores weights
    matrix[torch.arange(half), torch.arange(half) + half] = -1.0
    matrix[torch.arange(half) + half, torch.arange(half)] = 1.0
    opts = _options("FullyConnectedOptionsT", keepNumDims=True)
    return ctx.op("FULLY_CONNECTED", [x, ctx.constant(matrix), None], options=opts)


@lowering(aten.slice.Tensor)
def _slice(ctx, node, args, kwargs):
    x = args[0]
    dim = _axis(args[1] if len(args) > 1 else 0, _rank(x))
    start = args[2] if len(args) > 2 and args[2] is not None else 0
    end = args[3] if len(args) > 3 and args[3] is not None else x.shape[dim]
    step = args[4] if len(args) > 4 else 1
    size = x.shape[dim]
    start = max(0, min(size, start + size if start < 0 else start))
    end = max(0, min(size, end + size if end < 0 else end))
    if start == 0 and end == size and step == 1:
        return x
    begin = [0] * _rank(x)
    stop = list(x.shape)
    strides = [1] * _rank(x)
    begin[dim], stop[dim], strides[dim] = start, end, step
    if step == 1:
        sizes = [e - b for b, e in zip(begin, stop, strict=True)]
        return ctx.op("SLICE", [x, ctx.int_vector(begin), ctx.int_vector(sizes)], dtype=x.dtype)
    return ctx.op(
        "STRIDED_SLICE",
        [x, ctx.int_vector(begin), ctx.int_vector(stop), ctx.int_vector(strides)],
        options=_options("StridedSliceOptionsT"),
        dtype=x.dtype,
    )


@lowering(aten.select.int)
def _select(ctx, node, args, kwargs):
    x, dim, index = args
    dim = _axis(dim, _rank(x))
    index = index + x.shape[dim] if index < 0 else index
    begin = [0] * _rank(x)
    sizes = list(x.shape)
    begin[dim], sizes[dim] = index, 1
    sliced = ctx.new_tensor(sizes, x.dtype)
    ctx.emit("SLICE", [x, ctx.int_vector(begin), ctx.int_vector(sizes)], [sliced])
    shape = tuple(node.meta["val"].shape)
    return ctx.op("RESHAPE", [sliced, ctx.int_vector(shape)], dtype=x.dtype)


# -- gathers and the cache update ---------------------------------------------------------------


@lowering(aten.embedding.default)
def _embedding(ctx, node, args, kwargs):
    weight, indices = args[0], args[1]
    if isinstance(weight, Const) and _rank(weight) == 2:
        table, pq = ctx.weight(weight, "embedding")
        if pq.scheme in ("int8", "int4"):
            # EMBEDDING_LOOKUP dequantizes only the rows it gathers; it takes 1-D ids.
            count = int(np.prod(indices.shape, dtype=np.int64))
            flat = ctx.op("RESHAPE", [indices, ctx.int_vector([count])], shape=(count,),
                          dtype=indices.dtype)  # fmt: skip
            columns = weight.shape[1]
            rows = ctx.op("EMBEDDING_LOOKUP", [flat, table], shape=(count, columns))
            if pq.zero_points:  # add each block's offset to the symmetric int4 rows
                blocks = columns // pq.block_size
                offsets = ctx.weight_offsets(weight, pq)
                row_offsets = ctx.op("EMBEDDING_LOOKUP", [flat, offsets], shape=(count, blocks))
                split = (count, blocks, pq.block_size)
                rows = ctx.op(
                    "ADD",
                    [
                        ctx.op("RESHAPE", [rows, ctx.int_vector(split)], shape=split),
                        ctx.op(
                            "RESHAPE",
                            [row_offsets, ctx.int_vector((count, blocks, 1))],
                            shape=(count, blocks, 1),
                        ),
                    ],
                    shape=split,
                    options=_options("AddOptionsT"),
                )
            out_shape = (*indices.shape, columns)
            return ctx.op("RESHAPE", [rows, ctx.int_vector(out_shape)], shape=out_shape)
        weight = _dequantized(ctx, table, pq)
    opts = _options("GatherOptionsT", axis=0, batchDims=0)
    return ctx.op("GATHER", [weight, indices], options=opts)


def _part_of_linear(key: str) -> str:
    """The recipe part a linear layer's weight belongs to, from its (first) parameter name."""
    name = key.removeprefix("stack(").split(",")[0]
    if name.startswith(("lm_head.", "embedding.")):
        return "head"  # a tied head reads the embedding table
    if ".attention." in name:
        return "attention"
    return "feed_forward"


def _block_sums(ctx, x: Tensor, block_size: int) -> Tensor:
    """Sums of `x` over consecutive blocks of its last dimension, shared by its readers: one
    FULLY_CONNECTED by a 0/1 matrix (one op where RESHAPE + SUM would take two)."""
    key = ("block_sums", x.index, block_size)
    if key not in ctx.cache:
        columns = x.shape[-1]
        blocks = columns // block_size
        matrix = torch.zeros(blocks, columns)  # [out, in]
        matrix[torch.arange(columns) // block_size, torch.arange(columns)] = 1.0
        sums = ctx.new_tensor((*x.shape[:-1], blocks), x.dtype, name="block_sums")
        opts = _options("FullyConnectedOptionsT", keepNumDims=True)
        ctx.emit("FULLY_CONNECTED", [x, ctx.constant(matrix), None], [sums], options=opts)
        ctx.cache[key] = sums
    return ctx.cache[key]


def _dequantized(ctx, stored: Tensor, pq) -> Tensor:
    """`stored` as float32 weights: a DEQUANTIZE unless it is float32 already."""
    if stored.dtype == torch.float32:
        return stored
    key = ("dequantized", stored.index)
    if key not in ctx.cache:
        out = ctx.new_tensor(stored.shape, torch.float32, name="dequantized")
        ctx.emit("DEQUANTIZE", [stored], [out])
        ctx.cache[key] = out
    return ctx.cache[key]


def _fully_connected(ctx, x, weight: Const, bias, out) -> None:
    """Emit FULLY_CONNECTED, with the weight stored as the recipe says: int8 and int4 weights
    feed the hybrid kernels directly when the recipe is dynamic, others are dequantized."""
    part = _part_of_linear(weight.key)
    stored, pq = ctx.weight(weight, part)
    opts = _options("FullyConnectedOptionsT", keepNumDims=True)
    if pq.zero_points:
        # x . (values * scale + offset) over each block = the symmetric product plus the
        # offsets times the block sums of x: a second product 1/block_size the size.
        main = ctx.new_tensor(out.shape, torch.float32, name=f"{ctx.graph.name}_fc")
        ctx.emit("FULLY_CONNECTED", [x, stored, bias], [main], options=opts, version=5)
        sums = _block_sums(ctx, x, pq.block_size)
        correction = ctx.new_tensor(out.shape, torch.float32, name="offset_fc")
        offsets = ctx.weight_offsets(weight, pq)
        ctx.emit("FULLY_CONNECTED", [sums, offsets, None], [correction], options=opts, version=5)
        ctx.emit("ADD", [main, correction], [out], options=_options("AddOptionsT"))
    elif pq.scheme in ("int8", "int4") and pq.dynamic:
        ctx.emit("FULLY_CONNECTED", [x, stored, bias], [out], options=opts, version=5)
    else:
        ctx.emit("FULLY_CONNECTED", [x, _dequantized(ctx, stored, pq), bias], [out], options=opts)


@lowering(aten.index.Tensor)
def _index(ctx, node, args, kwargs):
    x, indices = args
    given = [i for i, index in enumerate(indices) if index is not None]
    if len(given) != 1:
        raise LoweringError("only indexing one dimension with one index tensor is supported")
    axis = given[0]
    opts = _options("GatherOptionsT", axis=axis, batchDims=0)
    return ctx.op("GATHER", [x, indices[axis]], options=opts)


@lowering(aten.index_copy.default)
def _index_copy(ctx, node, args, kwargs):
    """cache.index_copy(dim, positions, values) with contiguous positions."""
    cache, dim, positions, values = args
    indices = [None] * _rank(cache)
    indices[_axis(dim, _rank(cache))] = positions
    return _index_put(ctx, node, (cache, indices, values), {})


@lowering(aten.index_put.default)
def _index_put(ctx, node, args, kwargs):
    """cache[..., pos, ...] = values with contiguous positions -> DYNAMIC_UPDATE_SLICE."""
    cache, indices, values = args[0], args[1], args[2]
    accumulate = args[3] if len(args) > 3 else kwargs.get("accumulate", False)
    given = [i for i, idx in enumerate(indices) if idx is not None]
    if accumulate or len(given) != 1:
        raise LoweringError("index_put is lowered only as a write along one indexed dimension")
    dim = given[0]
    positions = indices[dim]
    rank = _rank(cache)
    expected = list(cache.shape)
    expected[dim] = positions.shape[0]
    if list(values.shape) != expected:
        raise LoweringError(
            f"index_put values of shape {list(values.shape)} do not cover the slice {expected}"
        )
    # The cache positions written by one call are consecutive, so the write is one slice
    # starting at the first position.
    start = _start_indices(ctx, positions, dim, rank)
    return ctx.op("DYNAMIC_UPDATE_SLICE", [cache, values, start], dtype=cache.dtype)


def _start_indices(ctx: LoweringContext, positions, dim: int, rank: int) -> Tensor:
    key = ("start", positions.index if isinstance(positions, Tensor) else positions.key, dim, rank)
    if key in ctx.cache:
        return ctx.cache[key]
    first = ctx.new_tensor((1,), torch.int32, name="first_pos")
    ctx.emit("SLICE", [positions, ctx.int_vector([0]), ctx.int_vector([1])], [first])
    parts = []
    if dim > 0:
        parts.append(ctx.int_vector([0] * dim))
    parts.append(first)
    if rank - dim - 1 > 0:
        parts.append(ctx.int_vector([0] * (rank - dim - 1)))
    start = ctx.new_tensor((rank,), torch.int32, name="cache_start")
    ctx.emit("CONCATENATION", parts, [start], options=_options("ConcatenationOptionsT", axis=0))
    ctx.cache[key] = start
    return start


# -- linear algebra -----------------------------------------------------------------------------


@lowering(aten.linear.default)
def _linear(ctx, node, args, kwargs):
    x, weight = args[0], args[1]
    bias = args[2] if len(args) > 2 else kwargs.get("bias")
    if not isinstance(weight, Const):
        raise LoweringError("linear with a computed (non-constant) weight is not supported")
    if node.name in ctx.fused:
        return ctx.fused[node.name]
    group = ctx.linear_groups.get(node.name)
    if group is not None:
        return _fused_linear(ctx, node, x, group)
    out = ctx.output_like()
    _fully_connected(ctx, x, weight, bias, out)
    return out


def _fused_linear(ctx, node, x, group) -> Tensor:
    """One FULLY_CONNECTED over the stacked weights of `group`, sliced into its outputs: the
    input is read (and, when quantized, converted) once instead of once per projection."""
    weights = [ctx.env[m.args[1].name] for m in group]
    biases = [ctx.env[m.args[2].name] if len(m.args) > 2 else None for m in group]
    rows = [w.shape[0] for w in weights]
    weight = _stacked(weights)
    bias = None if biases[0] is None else _stacked(biases)
    out_shape = (*x.shape[:-1], sum(rows))
    fused = ctx.new_tensor(out_shape, x.dtype, name=f"{node.name}_fused")
    _fully_connected(ctx, x, weight, bias, fused)
    offset = 0
    for member, count in zip(group, rows, strict=True):
        begin = [0] * len(out_shape)
        begin[-1] = offset
        sizes = [*out_shape[:-1], count]
        out = ctx.new_tensor(sizes, x.dtype, name=member.name)
        ctx.emit("SLICE", [fused, ctx.int_vector(begin), ctx.int_vector(sizes)], [out])
        ctx.fused[member.name] = out
        offset += count
    return ctx.fused[node.name]


def _stacked(parts: list[Const]) -> Const:
    """Constants concatenated along their first dimension, produced when written."""

    def produce() -> torch.Tensor:
        return torch.cat([p.get() for p in parts], dim=0)

    shape = (sum(p.shape[0] for p in parts), *parts[0].shape[1:])
    key = "stack(" + ",".join(p.key for p in parts) + ")"
    return Const(key=key, shape=shape, dtype=parts[0].dtype, produce=produce)


@lowering(aten.bmm.default, aten.mm.default, aten.matmul.default)
def _matmul(ctx, node, args, kwargs):
    a, b = args
    if _rank(a) < 2 or _rank(b) < 2:
        raise LoweringError("matmul of a vector is not supported; reshape it to a matrix")
    return ctx.op("BATCH_MATMUL", [a, b], options=_options("BatchMatMulOptionsT"))


# -- elementwise --------------------------------------------------------------------------------


def _binary(op: str, options: str | None):
    def lower(ctx, node, args, kwargs):
        a, b = args[0], args[1]
        alpha = kwargs.get("alpha", 1)
        out_dtype = node.meta["val"].dtype
        if alpha != 1:
            b = ctx.op("MUL", [b, ctx.tensor(float(alpha), dtype=out_dtype)], dtype=out_dtype)
        a = _operand(ctx, a, out_dtype)
        b = _operand(ctx, b, out_dtype)
        opts = _options(options) if options else None
        return ctx.op(op, [a, b], options=opts)

    return lower


def _operand(ctx: LoweringContext, x, dtype: torch.dtype):
    if isinstance(x, (int, float, bool)):
        return ctx.tensor(ctx.constant(torch.tensor(x, dtype=dtype)))
    if isinstance(x, Const) and x.dtype != dtype:
        return ctx.tensor(x, dtype=dtype)
    return x


for _op, _name, _opts in [
    ((aten.add.Tensor, aten.add.Scalar), "ADD", "AddOptionsT"),
    ((aten.sub.Tensor, aten.sub.Scalar), "SUB", "SubOptionsT"),
    ((aten.mul.Tensor, aten.mul.Scalar), "MUL", "MulOptionsT"),
    ((aten.div.Tensor, aten.div.Scalar), "DIV", "DivOptionsT"),
    ((aten.maximum.default,), "MAXIMUM", None),
    ((aten.minimum.default,), "MINIMUM", None),
]:
    lowering(*_op)(_binary(_name, _opts))


def _compare(op: str):
    def lower(ctx, node, args, kwargs):
        a, b = args
        dtype = a.dtype if isinstance(a, (Tensor, Const)) else b.dtype
        return ctx.op(op, [_operand(ctx, a, dtype), _operand(ctx, b, dtype)], dtype=torch.bool)

    return lower


for _op, _name in [
    ((aten.le.Tensor, aten.le.Scalar), "LESS_EQUAL"),
    ((aten.lt.Tensor, aten.lt.Scalar), "LESS"),
    ((aten.ge.Tensor, aten.ge.Scalar), "GREATER_EQUAL"),
    ((aten.gt.Tensor, aten.gt.Scalar), "GREATER"),
    ((aten.eq.Tensor, aten.eq.Scalar), "EQUAL"),
]:
    lowering(*_op)(_compare(_name))


@lowering(aten.logical_and.default, aten.bitwise_and.Tensor)
def _and(ctx, node, args, kwargs):
    return ctx.op("LOGICAL_AND", list(args[:2]), dtype=torch.bool)


def _unary(op: str, options=None):
    def lower(ctx, node, args, kwargs):
        return ctx.op(op, [args[0]], options=_options(options) if options else None)

    return lower


for _op, _name in [
    (aten.rsqrt.default, "RSQRT"),
    (aten.sqrt.default, "SQRT"),
    (aten.neg.default, "NEG"),
    (aten.cos.default, "COS"),
    (aten.sin.default, "SIN"),
    (aten.tanh.default, "TANH"),
    (aten.sigmoid.default, "LOGISTIC"),
    (aten.exp.default, "EXP"),
    (aten.relu.default, "RELU"),
    (aten.abs.default, "ABS"),
]:
    lowering(_op)(_unary(_name))


@lowering(aten.pow.Tensor_Scalar)
def _pow(ctx, node, args, kwargs):
    x, exponent = args
    if exponent == 2:
        return ctx.op("MUL", [x, x], options=_options("MulOptionsT"))
    return ctx.op("POW", [x, ctx.tensor(float(exponent), dtype=x.dtype)])


@lowering(aten.gelu.default)
def _gelu(ctx, node, args, kwargs):
    approximate = kwargs.get("approximate", args[1] if len(args) > 1 else "none") == "tanh"
    return ctx.op("GELU", [args[0]], options=_options("GeluOptionsT", approximate=approximate))


@lowering(aten.silu.default)
def _silu(ctx, node, args, kwargs):
    x = args[0]
    gate = ctx.new_tensor(x.shape, x.dtype, name=f"{node.name}_sigmoid")
    ctx.emit("LOGISTIC", [x], [gate])
    return ctx.op("MUL", [x, gate], options=_options("MulOptionsT"))


@lowering(aten.where.self, aten.where.Scalar, aten.where.ScalarSelf, aten.where.ScalarOther)
def _where(ctx, node, args, kwargs):
    cond, a, b = args
    dtype = node.meta["val"].dtype
    return ctx.op("SELECT_V2", [cond, _operand(ctx, a, dtype), _operand(ctx, b, dtype)])


# -- reductions and normalisation ---------------------------------------------------------------


def _reduce(op: str):
    def lower(ctx, node, args, kwargs):
        x = args[0]
        dims = args[1] if len(args) > 1 else kwargs.get("dim")
        keep = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
        if dims is None:
            dims = list(range(_rank(x)))
        axes = [_axis(d, _rank(x)) for d in ([dims] if isinstance(dims, int) else dims)]
        opts = _options("ReducerOptionsT", keepDims=bool(keep))
        return ctx.op(op, [x, ctx.int_vector(axes)], options=opts)

    return lower


lowering(aten.mean.dim)(_reduce("MEAN"))
lowering(aten.sum.dim_IntList)(_reduce("SUM"))
lowering(aten.amax.default)(_reduce("REDUCE_MAX"))


@lowering(aten._softmax.default, aten.softmax.int)
def _softmax(ctx, node, args, kwargs):
    x, dim = args[0], args[1]
    if node.meta["val"].dtype != x.dtype:
        x = ctx.op("CAST", [x], shape=x.shape, dtype=node.meta["val"].dtype)
    if _axis(dim, _rank(x)) != _rank(x) - 1:
        raise LoweringError(f"softmax over dim {dim} (not the last) is not supported")
    return ctx.op("SOFTMAX", [x], options=_options("SoftmaxOptionsT", beta=1.0))


@lowering(aten.layer_norm.default)
def _layer_norm_single(ctx, node, args, kwargs):
    x, normalized_shape = args[0], args[1]
    weight = args[2] if len(args) > 2 else kwargs.get("weight")
    bias = args[3] if len(args) > 3 else kwargs.get("bias")
    eps = args[4] if len(args) > 4 else kwargs.get("eps", 1e-5)
    return _layer_norm(ctx, node, (x, normalized_shape, weight, bias, eps), {})[0]


@lowering(aten.native_layer_norm.default)
def _layer_norm(ctx, node, args, kwargs):
    x, normalized_shape, weight, bias, eps = args
    if len(normalized_shape) != 1:
        raise LoweringError("layer norm over more than the last dimension is not supported")
    rank = _rank(x)
    reduced = (*x.shape[:-1], 1)
    axes = ctx.int_vector([rank - 1])
    keep = _options("ReducerOptionsT", keepDims=True)

    def tmp(shape, suffix):
        return ctx.new_tensor(shape, x.dtype, name=f"{node.name}_{suffix}")

    mean, centred, squared, var, var_eps, rstd, normed = (
        tmp(reduced, "mean"),
        tmp(x.shape, "centred"),
        tmp(x.shape, "sq"),
        tmp(reduced, "var"),
        tmp(reduced, "var_eps"),
        tmp(reduced, "rstd"),
        tmp(x.shape, "normed"),
    )
    ctx.emit("MEAN", [x, axes], [mean], options=keep)
    ctx.emit("SUB", [x, mean], [centred], options=_options("SubOptionsT"))
    ctx.emit("MUL", [centred, centred], [squared], options=_options("MulOptionsT"))
    ctx.emit("MEAN", [squared, axes], [var], options=keep)
    ctx.emit("ADD", [var, ctx.tensor(float(eps))], [var_eps], options=_options("AddOptionsT"))
    ctx.emit("RSQRT", [var_eps], [rstd])
    result = normed
    ctx.emit("MUL", [centred, rstd], [normed], options=_options("MulOptionsT"))
    if weight is not None:
        scaled = tmp(x.shape, "scaled")
        ctx.emit("MUL", [result, weight], [scaled], options=_options("MulOptionsT"))
        result = scaled
    if bias is not None:
        shifted = tmp(x.shape, "shifted")
        ctx.emit("ADD", [result, bias], [shifted], options=_options("AddOptionsT"))
        result = shifted
    return (result, None, None)
