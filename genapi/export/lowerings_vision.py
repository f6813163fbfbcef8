"""Lowerings for vision models: convolutions, batch norm, pooling, resizing and activations,
with NCHW tensors kept in TFLite's NHWC layout from one operator to the next.

PyTorch's convolutions read NCHW tensors and TFLite's read NHWC. A TRANSPOSE on each side of
every convolution would cost two copies of each activation; instead each tensor carries a
*layout*, the permutation `perm` with `physical = logical.permute(perm)` (NHWC data of an NCHW
tensor has perm (0, 2, 3, 1)). The lowerings in `LAYOUT_LOWERINGS` take and produce tensors in
any layout: they rewrite the axes of reductions, concatenation and softmax, permute broadcast
constants, and reshape without a transpose when the data order allows it (flatten after global
pooling). Any other op gets its inputs transposed back to the logical layout first. A typical
network thus holds one TRANSPOSE where the NCHW input meets the first convolution, and one
where an NHWC result leaves the graph, if one does.

Layouts are tracked only after `track_layouts(ctx)`; lowered by the plain `lower_program`, the
ops registered here into `LOWERINGS` take and return tensors in the logical layout.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import fx

from genapi.export import lowerings  # noqa: F401  (the base table these lowerings extend)
from genapi.export.lower import LOWERINGS, Const, LoweringContext, LoweringError, Tensor
from genapi.export.quantize import int8_per_channel
from genapi.export.tflite_writer import Quantization, schema

aten = torch.ops.aten

NHWC = (0, 2, 3, 1)  # the layout of NCHW tensors whose data is stored NHWC

QUANTIZE_MODES = ("none", "dynamic_int8")

# Under dynamic_int8, weights with fewer elements stay float: they cost little.
MIN_QUANTIZED_ELEMENTS = 1024

# Under dynamic_int8, convolutions reading at most this many channels (the stem reading an
# RGB image) stay float: their weights are a tiny share of the model, while raw pixels lose
# the most to the hybrid kernels' int8 activations (ResNet-18's stem alone costs ~2 dB of SNR).
MAX_FLOAT_STEM_CHANNELS = 4

# Versions of the hybrid (float activations, int8 per-channel weights) kernels.
_HYBRID_VERSION = {"CONV_2D": 5, "DEPTHWISE_CONV_2D": 6, "FULLY_CONNECTED": 5}

# Padding value that max pooling never selects.
_LOWEST = float(np.finfo(np.float32).min)

_LAYOUTS = "vision.layouts"  # ctx.cache key: tensor index -> layout
_ABSORBED = "vision.absorbed"  # ctx.cache key: node name -> value computed by an earlier op
_QUANTIZE = "vision.quantize"  # ctx.cache key: the quantize mode

Lowering = Callable[[LoweringContext, fx.Node, tuple, dict], object]

# Lowerings that understand layouts; the vision driver tries them before `LOWERINGS`.
LAYOUT_LOWERINGS: dict[object, Lowering] = {}


def layout_lowering(*ops) -> Callable[[Lowering], Lowering]:
    """Register a layout-aware lowering; ops the base table lacks also go into `LOWERINGS`."""

    def register(fn: Lowering) -> Lowering:
        for op in ops:
            if op is None:
                continue
            LAYOUT_LOWERINGS[op] = fn
            LOWERINGS.setdefault(op, fn)
        return fn

    return register


def track_layouts(ctx: LoweringContext, *, quantize: str = "none") -> None:
    """Let the lowerings of `ctx` keep tensors in NHWC and fuse activations into producers."""
    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"quantize={quantize!r} is not one of {', '.join(QUANTIZE_MODES)}")
    ctx.cache[_LAYOUTS] = {}
    ctx.cache[_ABSORBED] = {}
    ctx.cache[_QUANTIZE] = quantize


def absorbed(ctx: LoweringContext, node: fx.Node):
    """The value of `node` if an earlier lowering computed it (a folded batch norm, a fused
    activation), else None."""
    return ctx.cache.get(_ABSORBED, {}).get(node.name)


def _tracking(ctx) -> bool:
    return _LAYOUTS in ctx.cache


def _options(name: str, **fields):
    opts = getattr(schema(), name)()
    for key, value in fields.items():
        setattr(opts, key, value)
    return opts


def _identity(rank: int) -> tuple[int, ...]:
    return tuple(range(rank))


def _permuted(shape, perm) -> tuple[int, ...]:
    return tuple(int(shape[p]) for p in perm)


def _axis(dim: int, rank: int) -> int:
    return dim + rank if dim < 0 else dim


def _logical_rank(node: fx.Node) -> int:
    return len(node.meta["val"].shape)


# -- layouts ------------------------------------------------------------------------------------


def layout_of(ctx: LoweringContext, value) -> tuple[int, ...]:
    """The layout of `value`: identity unless its data is stored permuted."""
    rank = len(getattr(value, "shape", ()))
    if isinstance(value, Tensor):
        perm = ctx.cache.get(_LAYOUTS, {}).get(value.index)
        if perm is not None:
            return perm
    return _identity(rank)


def logical_shape(ctx: LoweringContext, x: Tensor) -> tuple[int, ...]:
    """The PyTorch-side shape of `x`, whatever its layout."""
    perm = layout_of(ctx, x)
    shape = [0] * len(perm)
    for i, p in enumerate(perm):
        shape[p] = x.shape[i]
    return tuple(shape)


def _transpose(ctx: LoweringContext, x: Tensor, perm, name: str) -> Tensor:
    out = ctx.new_tensor(_permuted(x.shape, perm), x.dtype, name=name)
    ctx.emit("TRANSPOSE", [x, ctx.int_vector(perm)], [out], extra={"perm": tuple(perm)})
    return out


def to_logical(ctx: LoweringContext, x):
    """`x` with its data in PyTorch's order (one TRANSPOSE per tensor at most, shared)."""
    if not isinstance(x, Tensor):
        return x
    perm = layout_of(ctx, x)
    if perm == _identity(len(perm)):
        return x
    key = ("vision.logical", x.index)
    if key not in ctx.cache:
        inverse = tuple(perm.index(d) for d in range(len(perm)))
        ctx.cache[key] = _transpose(ctx, x, inverse, name="to_nchw")
    return ctx.cache[key]


def to_layout(ctx: LoweringContext, x, perm: tuple[int, ...]):
    """`x` (a tensor in any layout, or a constant of the same rank) stored in layout `perm`."""
    if isinstance(x, Const):
        if perm == _identity(len(perm)):
            return x
        return _permuted_const(x, perm)
    if layout_of(ctx, x) == perm:
        return x
    x = to_logical(ctx, x)
    if perm == _identity(len(perm)):
        return x
    key = ("vision.layout", x.index, perm)
    if key not in ctx.cache:
        out = _transpose(ctx, x, perm, name="to_nhwc")
        if _tracking(ctx):
            ctx.cache[_LAYOUTS][out.index] = perm
        ctx.cache[key] = out
    return ctx.cache[key]


def _result(ctx: LoweringContext, out: Tensor, perm: tuple[int, ...]) -> Tensor:
    """Hand back `out`, stored in layout `perm`: tagged when tracking, else transposed back."""
    if perm == _identity(len(perm)):
        return out
    if _tracking(ctx):
        ctx.cache[_LAYOUTS][out.index] = perm
        return out
    inverse = tuple(perm.index(d) for d in range(len(perm)))
    return _transpose(ctx, out, inverse, name="to_nchw")


def _permuted_const(x: Const, perm) -> Const:
    def produce() -> torch.Tensor:
        return x.get().permute(*perm).contiguous()

    key = f"{x.key}:perm{''.join(map(str, perm))}"
    return Const(key=key, shape=_permuted(x.shape, perm), dtype=x.dtype, produce=produce)


def _out(ctx: LoweringContext, node: fx.Node, perm, *, dtype=None, name=None) -> Tensor:
    """A tensor for `node`'s result stored in layout `perm`."""
    val = node.meta["val"]
    return ctx.new_tensor(_permuted(val.shape, perm), dtype or val.dtype, name=name or node.name)


def _common_layout(ctx: LoweringContext, values, rank: int) -> tuple[int, ...]:
    """The layout to compute an elementwise op of rank `rank` in: that of its first permuted
    tensor operand of full rank, so NHWC data stays NHWC."""
    for v in values:
        if isinstance(v, Tensor) and len(v.shape) == rank:
            perm = layout_of(ctx, v)
            if perm != _identity(rank):
                return perm
    return _identity(rank)


def _operand(ctx: LoweringContext, value, perm, rank: int, dtype: torch.dtype):
    """An operand of an elementwise op computed in layout `perm`, broadcast to `rank`."""
    if isinstance(value, (int, float, bool)):
        return ctx.tensor(ctx.constant(torch.tensor(value, dtype=dtype)))
    identity = perm == _identity(rank)
    if isinstance(value, Const):
        if not identity and len(value.shape) not in (0, rank):
            value = _unsqueezed_const(value, rank)
        if not identity and len(value.shape) == rank:
            value = _permuted_const(value, perm)
        return ctx.tensor(value, dtype=dtype if value.dtype != dtype else None)
    if identity:
        return to_logical(ctx, value)
    if layout_of(ctx, value) == perm:
        return value
    value = to_logical(ctx, value)
    if 0 < len(value.shape) < rank:
        shape = (1,) * (rank - len(value.shape)) + tuple(value.shape)
        reshaped = ctx.new_tensor(shape, value.dtype, name="broadcast")
        ctx.emit("RESHAPE", [value, ctx.int_vector(shape)], [reshaped])
        value = reshaped
    if len(value.shape) == 0:
        return value
    return to_layout(ctx, value, perm)


def _unsqueezed_const(x: Const, rank: int) -> Const:
    shape = (1,) * (rank - len(x.shape)) + tuple(x.shape)

    def produce() -> torch.Tensor:
        return x.get().reshape(shape)

    return Const(key=f"{x.key}:rank{rank}", shape=shape, dtype=x.dtype, produce=produce)


# -- activations fused into their producer ------------------------------------------------------

_RELU_OPS = {aten.relu.default, aten.relu_.default}
_HARDTANH_OPS = {aten.hardtanh.default, aten.hardtanh_.default}


def _hardtanh_bounds(node: fx.Node) -> tuple[float, float]:
    low = node.args[1] if len(node.args) > 1 else node.kwargs.get("min_val", -1.0)
    high = node.args[2] if len(node.args) > 2 else node.kwargs.get("max_val", 1.0)
    return float(low), float(high)


def _fusable_activation(ctx: LoweringContext, node: fx.Node) -> tuple[str, fx.Node | None]:
    """("RELU"/"RELU6", the activation node) when `node`'s only use is an activation that
    TFLite can fuse into the op computing `node`; ("NONE", None) otherwise."""
    if not _tracking(ctx) or len(node.users) != 1:
        return "NONE", None
    user = next(iter(node.users))
    if user.target in _RELU_OPS:
        return "RELU", user
    if user.target is aten.relu6.default or (
        user.target in _HARDTANH_OPS and _hardtanh_bounds(user) == (0.0, 6.0)
    ):
        return "RELU6", user
    return "NONE", None


def _activation_code(name: str) -> int:
    return getattr(schema().ActivationFunctionType, name)


def _absorb(ctx: LoweringContext, node: fx.Node | None, value) -> None:
    if node is not None:
        ctx.cache[_ABSORBED][node.name] = value


# -- weights ------------------------------------------------------------------------------------


def _quantizing(ctx: LoweringContext) -> bool:
    return ctx.cache.get(_QUANTIZE, "none") == "dynamic_int8"


def _weight(ctx: LoweringContext, weight: Const, *, axis: int, quantize: bool = True) -> Tensor:
    """A conv or fully connected weight, as int8 with per-channel scales along `axis` under
    dynamic_int8 (for the hybrid kernels), else float32."""
    count = int(np.prod(weight.shape, dtype=np.int64))
    if not (quantize and _quantizing(ctx)) or count < MIN_QUANTIZED_ELEMENTS:
        return ctx.tensor(weight, dtype=torch.float32)
    key = ("vision.int8", weight.key, axis)
    if key not in ctx.cache:
        values, scales = int8_per_channel(weight.get().float().numpy(), axis=axis)
        quant = Quantization(
            scale=scales,
            zero_point=np.zeros(scales.shape, np.int64),
            quantized_dimension=axis,
        )
        name = ctx.unique_name(weight.key.split("*")[0].split(":")[0])
        index = ctx.graph.add_constant(name, values, key=(weight.key, "int8"), quantization=quant)
        ctx.shapes[index] = tuple(weight.shape)
        ctx.dtypes[index] = torch.int8
        ctx.cache[key] = Tensor(index, tuple(weight.shape), torch.int8)
    return ctx.cache[key]


def _version(op: str, weight: Tensor) -> int:
    return _HYBRID_VERSION[op] if weight.dtype == torch.int8 else 1


def _lazy(key: str, shape, fn: Callable[[], torch.Tensor], dtype=torch.float32) -> Const:
    return Const(key=key, shape=tuple(shape), dtype=dtype, produce=fn)


# -- convolution --------------------------------------------------------------------------------


_BATCH_NORMS = {aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default}


def _batch_norm_args(ctx: LoweringContext, node: fx.Node):
    """(weight, bias, mean, var, eps, training) of a batch-norm node, values from `ctx.env`."""

    def value(a):
        return ctx.env[a.name] if isinstance(a, fx.Node) else a

    args = [None] + [value(a) for a in node.args[1:]]
    if node.target is aten.batch_norm.default:
        _, weight, bias, mean, var, training, _, eps = args[:8]
    else:
        _, weight, bias, mean, var, _, eps = args[:7]
        training = False
    return weight, bias, mean, var, float(eps), bool(training)


def _foldable_batch_norm(ctx: LoweringContext, node: fx.Node):
    """(batch-norm node, its output node) when `node`'s only use is an eval batch norm with
    constant parameters that can be folded into the convolution."""
    if not _tracking(ctx) or len(node.users) != 1:
        return None
    bn = next(iter(node.users))
    if bn.target not in _BATCH_NORMS or bn.args[0] is not node:
        return None
    weight, bias, mean, var, _, training = _batch_norm_args(ctx, bn)
    if training or not all(v is None or isinstance(v, Const) for v in (weight, bias)):
        return None
    if not (isinstance(mean, Const) and isinstance(var, Const)):
        return None
    if bn.target is aten.batch_norm.default:
        return bn, bn
    users = list(bn.users)
    if len(users) != 1 or users[0].args[1] != 0:
        return None
    return bn, users[0]


def _bn_scale_shift(weight, bias, mean: Const, var: Const, eps: float):
    """Per-channel (scale, shift) with batch_norm(x) = x * scale + shift."""
    channels = mean.shape[0]
    key = f"bn({mean.key},{var.key},{weight.key if weight else None},{bias.key if bias else None})"

    def scale() -> torch.Tensor:
        s = torch.rsqrt(var.get().double() + eps)
        if weight is not None:
            s = s * weight.get().double()
        return s

    def shift() -> torch.Tensor:
        t = -mean.get().double() * scale()
        if bias is not None:
            t = t + bias.get().double()
        return t

    return (
        _lazy(f"{key}:scale", (channels,), lambda: scale().float()),
        _lazy(f"{key}:shift", (channels,), lambda: shift().float()),
    )


def _spatial_plan(in_hw, out_hw, kernel, strides, pads, *, same_ok: bool = True):
    """How TFLite reproduces a PyTorch window op: ("VALID" | "SAME", explicit pads or None).

    TFLite offers SAME (padding split with the smaller half first) and VALID. When PyTorch's
    padding differs from SAME's, the input is padded explicitly and the op runs VALID; only the
    padding that windows reach is added.
    """
    valid = same = True
    explicit = []
    for size, out, k, s, (before, _) in zip(in_hw, out_hw, kernel, strides, pads, strict=True):
        reach = max(0, (out - 1) * s + k - size - before)  # padding the last window reads
        explicit.append((before, reach))
        if before != 0 or reach != 0:
            valid = False
        out_same = math.ceil(size / s)
        total = max((out_same - 1) * s + k - size, 0)
        if out != out_same or before != total // 2:
            same = False
    if valid:
        return "VALID", None
    if same and same_ok:
        return "SAME", None
    return "VALID", explicit


def _pad(ctx: LoweringContext, x: Tensor, pads, value: float = 0.0) -> Tensor:
    """x (NHWC) padded by `pads` [(top, bottom), (left, right)]."""
    (top, bottom), (left, right) = pads
    n, h, w, c = x.shape
    out = ctx.new_tensor((n, h + top + bottom, w + left + right, c), x.dtype, name="pad")
    paddings = torch.tensor([[0, 0], [top, bottom], [left, right], [0, 0]], dtype=torch.int32)
    inputs = [x, ctx.tensor(ctx.constant(paddings))]
    if value != 0.0:
        inputs.append(ctx.tensor(ctx.constant(torch.tensor([value], dtype=torch.float32))))
        ctx.emit("PADV2", inputs, [out])
    else:
        ctx.emit("PAD", inputs, [out])
    if _tracking(ctx):
        ctx.cache[_LAYOUTS][out.index] = NHWC
    return out


def _pair(value) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    value = list(value)
    return (value[0], value[0]) if len(value) == 1 else (value[0], value[1])


@layout_lowering(aten.conv2d.default, aten.conv2d.padding, aten.convolution.default)
def _conv(ctx, node, args, kwargs):
    if node.target is aten.convolution.default:
        x, weight, bias, stride, padding, dilation, transposed, _, groups = args[:9]
        if transposed:
            raise LoweringError(
                "transposed convolution is not supported yet: it needs TRANSPOSE_CONV"
            )
    else:
        names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
        defaults = (None, None, None, 1, 0, 1, 1)
        given = dict(zip(names, args, strict=False))
        x, weight, bias, stride, padding, dilation, groups = (
            given.get(n, kwargs.get(n, d)) for n, d in zip(names, defaults, strict=True)
        )
    if not isinstance(weight, Const):
        raise LoweringError("convolution with a computed (non-constant) weight is not supported")
    if len(weight.shape) != 4:
        raise LoweringError(
            f"{len(weight.shape) - 2}-D convolution is not supported yet: only conv2d is lowered"
        )
    if bias is not None and not isinstance(bias, Const):
        raise LoweringError("convolution with a computed (non-constant) bias is not supported")

    # Batch norm after the convolution folds into its weights; ReLU / ReLU6 after either fuse.
    last = node
    folded = _foldable_batch_norm(ctx, node)
    if folded is not None:
        bn, last = folded
        bn_weight, bn_bias, mean, var, eps, _ = _batch_norm_args(ctx, bn)
        scale, shift = _bn_scale_shift(bn_weight, bn_bias, mean, var, eps)
        weight, bias = _folded_conv(weight, bias, scale, shift)
    activation, act_node = _fusable_activation(ctx, last)

    stride, dilation = _pair(stride), _pair(dilation)
    kh, kw = weight.shape[2:]
    if isinstance(padding, str):
        if padding == "valid":
            pads = [(0, 0), (0, 0)]
        else:  # "same": PyTorch puts the smaller half first, as SAME does
            pads = [(t // 2, t - t // 2) for t in (dilation[0] * (kh - 1), dilation[1] * (kw - 1))]
    else:
        pads = [(p, p) for p in _pair(padding)]

    x = to_layout(ctx, x, NHWC)
    out_nchw = tuple(node.meta["val"].shape)
    kernel = (dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1)
    mode, explicit = _spatial_plan(x.shape[1:3], out_nchw[2:], kernel, stride, pads)
    if explicit is not None:
        x = _pad(ctx, x, explicit)

    out = ctx.new_tensor(_permuted(out_nchw, NHWC), torch.float32, name=last.name)
    common = {
        "padding": getattr(schema().Padding, mode),
        "strideH": stride[0],
        "strideW": stride[1],
        "dilationHFactor": dilation[0],
        "dilationWFactor": dilation[1],
        "fusedActivationFunction": _activation_code(activation),
    }
    channels = x.shape[3]
    if bias is None:
        bias = _lazy(
            f"{weight.key}:zero_bias", (weight.shape[0],), lambda: torch.zeros(out_nchw[1])
        )
    if groups == 1:
        _conv2d(ctx, x, weight, bias, out, common)
    elif groups == channels and weight.shape[1] == 1:
        _depthwise(ctx, x, weight, bias, out, common, multiplier=weight.shape[0] // channels)
    else:
        _grouped_conv(ctx, x, weight, bias, out, common, groups)

    if last is not node:
        _absorb(ctx, bn, (out, None, None) if last is not bn else out)
        _absorb(ctx, last, out)
    _absorb(ctx, act_node, out)
    return _result(ctx, out, NHWC)


def _folded_conv(weight: Const, bias: Const | None, scale: Const, shift: Const):
    def folded_weight() -> torch.Tensor:
        return weight.get().float() * scale.get().reshape(-1, 1, 1, 1)

    def folded_bias() -> torch.Tensor:
        b = shift.get()
        return b + bias.get().float() * scale.get() if bias is not None else b

    new_weight = _lazy(f"{weight.key}*{scale.key}", weight.shape, folded_weight)
    key = f"{bias.key if bias is not None else weight.key + ':nobias'}*{scale.key}+shift"
    return new_weight, _lazy(key, (weight.shape[0],), folded_bias)


def _ohwi(weight: Const) -> Const:
    def produce() -> torch.Tensor:
        return weight.get().permute(0, 2, 3, 1).contiguous()

    return _lazy(f"{weight.key}:ohwi", _permuted(weight.shape, NHWC), produce, weight.dtype)


def _conv2d(ctx, x, weight: Const, bias: Const, out: Tensor, common: dict) -> None:
    stem = weight.shape[1] <= MAX_FLOAT_STEM_CHANNELS
    filt = _weight(ctx, _ohwi(weight), axis=0, quantize=not stem)
    opts = _options("Conv2DOptionsT", **common)
    ctx.emit("CONV_2D", [x, filt, bias], [out], options=opts, version=_version("CONV_2D", filt))


def _depthwise(ctx, x, weight: Const, bias: Const, out: Tensor, common: dict, *, multiplier):
    # [C*M, 1, KH, KW] -> [1, KH, KW, C*M]: output channel c*M + m reads input channel c in both.
    def produce() -> torch.Tensor:
        return weight.get().permute(1, 2, 3, 0).contiguous()

    shape = (1, weight.shape[2], weight.shape[3], weight.shape[0])
    filt = _weight(ctx, _lazy(f"{weight.key}:1hwc", shape, produce, weight.dtype), axis=3)
    opts = _options("DepthwiseConv2DOptionsT", depthMultiplier=multiplier, **common)
    version = _version("DEPTHWISE_CONV_2D", filt)
    if version == 1 and (common["dilationHFactor"] > 1 or common["dilationWFactor"] > 1):
        version = 2
    ctx.emit("DEPTHWISE_CONV_2D", [x, filt, bias], [out], options=opts, version=version)


def _grouped_conv(ctx, x, weight: Const, bias: Const, out: Tensor, common: dict, groups: int):
    """SPLIT the channels, one CONV_2D per group, CONCATENATION of the results."""
    n, h, w, c = x.shape
    per_in, per_out = c // groups, weight.shape[0] // groups
    parts_in = [ctx.new_tensor((n, h, w, per_in), x.dtype, name="group") for _ in range(groups)]
    ctx.emit(
        "SPLIT",
        [ctx.tensor(ctx.constant(torch.tensor(3, dtype=torch.int32))), x],
        parts_in,
        options=_options("SplitOptionsT", numSplits=groups),
    )
    parts_out = []
    for g in range(groups):
        rows = slice(g * per_out, (g + 1) * per_out)
        w_g = _lazy(
            f"{weight.key}[g{g}/{groups}]",
            (per_out, *weight.shape[1:]),
            lambda rows=rows: weight.get()[rows],
            weight.dtype,
        )
        b_g = _lazy(f"{bias.key}[g{g}/{groups}]", (per_out,), lambda rows=rows: bias.get()[rows])
        part = ctx.new_tensor((*out.shape[:3], per_out), out.dtype, name="group_conv")
        _conv2d(ctx, parts_in[g], w_g, b_g, part, common)
        parts_out.append(part)
    opts = _options("ConcatenationOptionsT", axis=3)
    ctx.emit("CONCATENATION", parts_out, [out], options=opts)


@layout_lowering(*_BATCH_NORMS)
def _batch_norm(ctx, node, args, kwargs):
    """A batch norm not folded into a convolution: x * scale + shift per channel."""
    x = args[0]
    weight, bias, mean, var, eps, training = _batch_norm_args(ctx, node)
    if training:
        raise LoweringError("batch norm in training mode is not supported: call model.eval()")
    if not (isinstance(mean, Const) and isinstance(var, Const)):
        raise LoweringError("batch norm needs constant running statistics")
    scale, shift = _bn_scale_shift(weight, bias, mean, var, eps)
    perm = layout_of(ctx, x)
    rank = len(perm)
    # Constants shaped to broadcast along the channel axis wherever the layout puts it.
    shape = [1] * rank
    shape[perm.index(1)] = mean.shape[0]

    def shaped(c: Const) -> Tensor:
        return ctx.tensor(_lazy(f"{c.key}:{shape}", shape, lambda: c.get().reshape(shape)))

    scaled = ctx.new_tensor(x.shape, x.dtype, name=f"{node.name}_scaled")
    ctx.emit("MUL", [x, shaped(scale)], [scaled], options=_options("MulOptionsT"))
    out = ctx.new_tensor(x.shape, x.dtype, name=node.name)
    ctx.emit("ADD", [scaled, shaped(shift)], [out], options=_options("AddOptionsT"))
    out = _result(ctx, out, perm)
    return (out, None, None) if node.target is not aten.batch_norm.default else out


# -- elementwise --------------------------------------------------------------------------------


def _elementwise(ctx, node, op: str, x: Tensor, options=None, *, extra_inputs=()) -> Tensor:
    """A layout-preserving op on `x`: computed on the stored data, same layout out."""
    perm = layout_of(ctx, x)
    if not _tracking(ctx):
        x, perm = to_logical(ctx, x), _identity(len(perm))
    out = ctx.new_tensor(x.shape, node.meta["val"].dtype, name=node.name)
    ctx.emit(op, [x, *extra_inputs], [out], options=options)
    return _result(ctx, out, perm)


def _unary(op: str, options: str | None = None):
    def lower(ctx, node, args, kwargs):
        return _elementwise(ctx, node, op, args[0], _options(options) if options else None)

    return lower


for _ops, _name in [
    ((aten.relu.default, aten.relu_.default), "RELU"),
    ((aten.relu6.default,), "RELU6"),
    ((aten.sigmoid.default, aten.sigmoid_.default), "LOGISTIC"),
    ((aten.hardswish.default, aten.hardswish_.default), "HARD_SWISH"),
    ((aten.tanh.default, aten.tanh_.default), "TANH"),
    ((aten.exp.default,), "EXP"),
    ((aten.neg.default,), "NEG"),
    ((aten.abs.default,), "ABS"),
    ((aten.sqrt.default,), "SQRT"),
    ((aten.rsqrt.default,), "RSQRT"),
]:
    layout_lowering(*_ops)(_unary(_name))


@layout_lowering(
    aten.clone.default,
    aten.alias.default,
    aten.detach.default,
    aten.dropout.default,
    aten.dropout_.default,
)
def _identity_op(ctx, node, args, kwargs):
    is_dropout = node.target in (aten.dropout.default, aten.dropout_.default)
    if is_dropout and (args[2] if len(args) > 2 else kwargs.get("train")):
        raise LoweringError("dropout in training mode is not supported: call model.eval()")
    return args[0]


@layout_lowering(aten.hardtanh.default, aten.hardtanh_.default)
def _hardtanh(ctx, node, args, kwargs):
    low, high = _hardtanh_bounds(node)
    return _clamp(ctx, node, args[0], low, high)


@layout_lowering(aten.clamp.default, aten.clamp_.default)
def _clamp_op(ctx, node, args, kwargs):
    low = args[1] if len(args) > 1 else kwargs.get("min")
    high = args[2] if len(args) > 2 else kwargs.get("max")
    if not all(v is None or isinstance(v, (int, float)) for v in (low, high)):
        raise LoweringError("clamp with tensor bounds is not supported; use scalar bounds")
    return _clamp(ctx, node, args[0], low, high)


def _clamp(ctx, node, x, low, high) -> Tensor:
    if (low, high) == (0.0, 6.0):
        return _elementwise(ctx, node, "RELU6", x)
    if (low, high) == (-1.0, 1.0):
        return _elementwise(ctx, node, "RELU_N1_TO_1", x)
    if low in (0, 0.0) and high is None:
        return _elementwise(ctx, node, "RELU", x)
    result = x
    for op, bound in (("MAXIMUM", low), ("MINIMUM", high)):
        if bound is not None:
            c = ctx.tensor(ctx.constant(torch.tensor(float(bound), dtype=x.dtype)))
            result = _elementwise(ctx, node, op, result, extra_inputs=(c,))
    return result


@layout_lowering(aten.leaky_relu.default, aten.leaky_relu_.default)
def _leaky_relu(ctx, node, args, kwargs):
    slope = args[1] if len(args) > 1 else kwargs.get("negative_slope", 0.01)
    return _elementwise(
        ctx, node, "LEAKY_RELU", args[0], _options("LeakyReluOptionsT", alpha=slope)
    )


@layout_lowering(aten.hardsigmoid.default, aten.hardsigmoid_.default)
def _hardsigmoid(ctx, node, args, kwargs):
    """relu6(x + 3) / 6, the ReLU6 fused into the ADD."""
    x = args[0]
    perm = layout_of(ctx, x)
    if not _tracking(ctx):
        x, perm = to_logical(ctx, x), _identity(len(perm))
    shifted = ctx.new_tensor(x.shape, x.dtype, name=f"{node.name}_relu6")
    opts = _options("AddOptionsT", fusedActivationFunction=_activation_code("RELU6"))
    ctx.emit("ADD", [x, ctx.tensor(3.0)], [shifted], options=opts)
    out = ctx.new_tensor(x.shape, x.dtype, name=node.name)
    ctx.emit("MUL", [shifted, ctx.tensor(1.0 / 6.0)], [out], options=_options("MulOptionsT"))
    return _result(ctx, out, perm)


@layout_lowering(aten.silu.default, aten.silu_.default)
def _silu(ctx, node, args, kwargs):
    x = args[0]
    perm = layout_of(ctx, x)
    if not _tracking(ctx):
        x, perm = to_logical(ctx, x), _identity(len(perm))
    gate = ctx.new_tensor(x.shape, x.dtype, name=f"{node.name}_sigmoid")
    ctx.emit("LOGISTIC", [x], [gate])
    out = ctx.new_tensor(x.shape, x.dtype, name=node.name)
    ctx.emit("MUL", [x, gate], [out], options=_options("MulOptionsT"))
    return _result(ctx, out, perm)


@layout_lowering(aten.gelu.default, aten.gelu_.default)
def _gelu(ctx, node, args, kwargs):
    approximate = kwargs.get("approximate", args[1] if len(args) > 1 else "none") == "tanh"
    opts = _options("GeluOptionsT", approximate=approximate)
    return _elementwise(ctx, node, "GELU", args[0], opts)


def _binary(op: str, options: str):
    def lower(ctx, node, args, kwargs):
        a, b = args[0], args[1]
        alpha = kwargs.get("alpha", 1)
        val = node.meta["val"]
        rank, dtype = len(val.shape), val.dtype
        perm = _common_layout(ctx, [a, b], rank) if _tracking(ctx) else _identity(rank)
        if alpha != 1:
            b = _scaled(ctx, node, b, alpha)
        pa = _operand(ctx, a, perm, rank, dtype)
        pb = _operand(ctx, b, perm, rank, dtype)
        activation, act_node = _fusable_activation(ctx, node)
        opts = _options(options, fusedActivationFunction=_activation_code(activation))
        out = _out(ctx, node, perm)
        ctx.emit(op, [pa, pb], [out], options=opts)
        _absorb(ctx, act_node, out)
        return _result(ctx, out, perm)

    return lower


def _scaled(ctx, node, b, alpha):
    """`b * alpha`, for add and sub with `alpha`."""
    if isinstance(b, (int, float)):
        return b * alpha
    if isinstance(b, Const):
        return _lazy(f"{b.key}*{alpha}", b.shape, lambda: b.get() * alpha, b.dtype)
    factor = ctx.tensor(ctx.constant(torch.tensor(float(alpha), dtype=b.dtype)))
    return _elementwise(ctx, node, "MUL", b, _options("MulOptionsT"), extra_inputs=(factor,))


for _ops, _name, _opts in [
    ((aten.add.Tensor, aten.add.Scalar, aten.add_.Tensor, aten.add_.Scalar), "ADD", "AddOptionsT"),
    ((aten.sub.Tensor, aten.sub.Scalar, aten.sub_.Tensor), "SUB", "SubOptionsT"),
    ((aten.mul.Tensor, aten.mul.Scalar, aten.mul_.Tensor, aten.mul_.Scalar), "MUL", "MulOptionsT"),
    ((aten.div.Tensor, aten.div.Scalar, aten.div_.Tensor), "DIV", "DivOptionsT"),
]:
    layout_lowering(*_ops)(_binary(_name, _opts))


# -- shape ops ----------------------------------------------------------------------------------


@layout_lowering(aten.cat.default)
def _cat(ctx, node, args, kwargs):
    values = [t for t in args[0] if 0 not in t.shape]
    val = node.meta["val"]
    rank = len(val.shape)
    dim = _axis(args[1] if len(args) > 1 else kwargs.get("dim", 0), rank)
    if len(values) == 1:
        return values[0]
    perm = _common_layout(ctx, values, rank) if _tracking(ctx) else _identity(rank)
    parts = [_operand(ctx, v, perm, rank, val.dtype) for v in values]
    out = _out(ctx, node, perm)
    opts = _options("ConcatenationOptionsT", axis=perm.index(dim))
    ctx.emit("CONCATENATION", parts, [out], options=opts)
    return _result(ctx, out, perm)


@layout_lowering(
    aten.view.default,
    aten._unsafe_view.default,
    aten.reshape.default,
    aten.flatten.using_ints,
    aten.squeeze.dim,
    aten.squeeze.dims,
    aten.squeeze.default,
    aten.unsqueeze.default,
)
def _reshape(ctx, node, args, kwargs):
    """RESHAPE of the stored data when its order equals PyTorch's (true of NHWC data whose
    spatial size is 1x1, as after global pooling); otherwise of the logical data."""
    x = args[0]
    perm = layout_of(ctx, x)
    logical = logical_shape(ctx, x)
    order = [d for d in perm if logical[d] != 1]
    if order != sorted(order):
        x = to_logical(ctx, x)
    shape = tuple(node.meta["val"].shape)
    if tuple(x.shape) == shape and layout_of(ctx, x) == _identity(len(shape)):
        return x
    out = ctx.new_tensor(shape, x.dtype, name=node.name)
    ctx.emit("RESHAPE", [x, ctx.int_vector(shape)], [out])
    return out


@layout_lowering(aten.slice.Tensor)
def _slice(ctx, node, args, kwargs):
    x = args[0]
    perm = layout_of(ctx, x)
    rank = len(perm)
    size = logical_shape(ctx, x)
    dim = _axis(args[1] if len(args) > 1 else 0, rank)
    start = args[2] if len(args) > 2 and args[2] is not None else 0
    end = args[3] if len(args) > 3 and args[3] is not None else size[dim]
    step = args[4] if len(args) > 4 else 1
    start = max(0, min(size[dim], start + size[dim] if start < 0 else start))
    end = max(0, min(size[dim], end + size[dim] if end < 0 else end))
    if start == 0 and end == size[dim] and step == 1:
        return x
    axis = perm.index(dim)
    begin, stop, strides = [0] * rank, list(x.shape), [1] * rank
    begin[axis], stop[axis], strides[axis] = start, end, step
    out = _out(ctx, node, perm)
    if step == 1:
        sizes = [e - b for b, e in zip(begin, stop, strict=True)]
        ctx.emit("SLICE", [x, ctx.int_vector(begin), ctx.int_vector(sizes)], [out])
    else:
        ctx.emit(
            "STRIDED_SLICE",
            [x, ctx.int_vector(begin), ctx.int_vector(stop), ctx.int_vector(strides)],
            [out],
            options=_options("StridedSliceOptionsT"),
        )
    return _result(ctx, out, perm)


# -- reductions ---------------------------------------------------------------------------------


def _reduce(op: str):
    def lower(ctx, node, args, kwargs):
        x = args[0]
        perm = layout_of(ctx, x)
        rank = len(perm)
        whole = node.target in (aten.mean.default, aten.sum.default)  # (x, *, dtype)
        dims = None if whole else args[1] if len(args) > 1 else kwargs.get("dim")
        keep = bool(args[2] if len(args) > 2 else kwargs.get("keepdim", False))
        if dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0):
            dims = list(range(rank))
        dims = {_axis(d, rank) for d in ([dims] if isinstance(dims, int) else dims)}
        axes = sorted(perm.index(d) for d in dims)
        if keep:
            out_perm = perm
        else:
            kept = [d for d in perm if d not in dims]
            out_perm = tuple(sorted(kept).index(d) for d in kept)
        out = _out(ctx, node, out_perm)
        opts = _options("ReducerOptionsT", keepDims=keep)
        ctx.emit(op, [x, ctx.int_vector(axes)], [out], options=opts)
        return _result(ctx, out, out_perm)

    return lower


layout_lowering(aten.mean.dim, aten.mean.default)(_reduce("MEAN"))
layout_lowering(aten.sum.dim_IntList, aten.sum.default)(_reduce("SUM"))
layout_lowering(aten.amax.default)(_reduce("REDUCE_MAX"))


@layout_lowering(aten.softmax.int, aten._softmax.default)
def _softmax(ctx, node, args, kwargs):
    x, dim = args[0], args[1]
    if node.meta["val"].dtype != x.dtype:
        raise LoweringError(f"softmax to another dtype ({node.meta['val'].dtype}) is not supported")
    perm = layout_of(ctx, x)
    rank = len(perm)
    dim = _axis(dim, rank)
    if perm.index(dim) != rank - 1:
        x, perm = to_logical(ctx, x), _identity(rank)
    if perm.index(dim) != rank - 1:
        raise LoweringError(f"softmax over dim {dim} (not the last) is not supported")
    out = ctx.new_tensor(x.shape, x.dtype, name=node.name)
    ctx.emit("SOFTMAX", [x], [out], options=_options("SoftmaxOptionsT", beta=1.0))
    return _result(ctx, out, perm)


# -- pooling ------------------------------------------------------------------------------------


def _window_args(args, kwargs, names, defaults):
    given = dict(zip(names, args, strict=False))
    return [given.get(n, kwargs.get(n, d)) for n, d in zip(names, defaults, strict=True)]


def _pool(ctx, node, x, op: str, kernel, stride, padding, *, pad_value, same_ok, explicit_ok=True):
    kernel = _pair(kernel)
    stride = _pair(stride) if stride else kernel
    pads = [(p, p) for p in _pair(padding)]
    x = to_layout(ctx, x, NHWC)
    out_nchw = tuple(node.meta["val"].shape)
    mode, explicit = _spatial_plan(
        x.shape[1:3], out_nchw[2:], kernel, stride, pads, same_ok=same_ok
    )
    if explicit is not None:
        if not explicit_ok:
            raise LoweringError(
                f"{op} with padding {list(_pair(padding))} (count_include_pad=False) is not "
                "supported: TFLite's SAME padding places it differently"
            )
        x = _pad(ctx, x, explicit, pad_value)
    out = _out(ctx, node, NHWC)
    opts = _options(
        "Pool2DOptionsT",
        padding=getattr(schema().Padding, mode),
        strideH=stride[0],
        strideW=stride[1],
        filterHeight=kernel[0],
        filterWidth=kernel[1],
    )
    ctx.emit(op, [x], [out], options=opts)
    return _result(ctx, out, NHWC)


@layout_lowering(aten.max_pool2d.default)
def _max_pool(ctx, node, args, kwargs):
    x, kernel, stride, padding, dilation, _ = _window_args(
        args,
        kwargs,
        ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode"),
        (None, None, (), 0, 1, False),
    )
    if _pair(dilation) != (1, 1):
        raise LoweringError("max pooling with dilation is not supported yet")
    # Windows that hang over the edge (padding, ceil_mode) never pick the padded values.
    return _pool(
        ctx, node, x, "MAX_POOL_2D", kernel, stride, padding, pad_value=_LOWEST, same_ok=True
    )


@layout_lowering(aten.avg_pool2d.default)
def _avg_pool(ctx, node, args, kwargs):
    x, kernel, stride, padding, ceil_mode, include_pad, divisor = _window_args(
        args,
        kwargs,
        (
            "input",
            "kernel_size",
            "stride",
            "padding",
            "ceil_mode",
            "count_include_pad",
            "divisor_override",
        ),
        (None, None, (), 0, False, True, None),
    )
    if divisor is not None:
        raise LoweringError("avg_pool2d with divisor_override is not supported yet")
    kernel_hw = _pair(kernel)
    stride_hw = _pair(stride) if stride else kernel_hw
    pads = _pair(padding)
    in_hw = node.args[0].meta["val"].shape[2:]
    floor_out = [
        (size + 2 * p - k) // s + 1
        for size, p, k, s in zip(in_hw, pads, kernel_hw, stride_hw, strict=True)
    ]
    if ceil_mode and list(node.meta["val"].shape[2:]) != floor_out:
        raise LoweringError("avg_pool2d with ceil_mode changing the output size is not supported")
    # TFLite's SAME averages only the values inside the input, as count_include_pad=False.
    return _pool(
        ctx,
        node,
        x,
        "AVERAGE_POOL_2D",
        kernel_hw,
        stride_hw,
        padding,
        pad_value=0.0,
        same_ok=not include_pad,
        explicit_ok=include_pad,
    )


@layout_lowering(aten.adaptive_avg_pool2d.default, aten._adaptive_avg_pool2d.default)
def _adaptive_avg_pool(ctx, node, args, kwargs):
    x = args[0]
    in_hw = tuple(node.args[0].meta["val"].shape[2:])
    out_hw = tuple(node.meta["val"].shape[2:])
    x = to_layout(ctx, x, NHWC)
    if out_hw == (1, 1):  # global pooling
        out = _out(ctx, node, NHWC)
        opts = _options("ReducerOptionsT", keepDims=True)
        ctx.emit("MEAN", [x, ctx.int_vector([1, 2])], [out], options=opts)
        return _result(ctx, out, NHWC)
    if any(i % o for i, o in zip(in_hw, out_hw, strict=True)):
        raise LoweringError(
            f"adaptive_avg_pool2d from {list(in_hw)} to {list(out_hw)} is not supported: "
            "the input size must be a multiple of the output size"
        )
    kernel = tuple(i // o for i, o in zip(in_hw, out_hw, strict=True))
    return _pool(ctx, node, x, "AVERAGE_POOL_2D", kernel, kernel, 0, pad_value=0.0, same_ok=True)


# -- resizing -----------------------------------------------------------------------------------


def _check_scales(node: fx.Node, scales) -> None:
    """PyTorch samples at 1/scale_factor, TFLite at in/out: equal only for exact sizes."""
    if not scales:
        return
    in_hw = node.args[0].meta["val"].shape[2:]
    out_hw = node.meta["val"].shape[2:]
    for size, out, scale in zip(in_hw, out_hw, scales, strict=True):
        if scale is not None and not math.isclose(size * scale, out, rel_tol=1e-9):
            raise LoweringError(
                f"interpolate with scale_factor={scale} from size {size} gives a fractional "
                "size; pass size= instead"
            )


def _resize(ctx, node, x, op: str, opts) -> Tensor:
    x = to_layout(ctx, x, NHWC)
    out = _out(ctx, node, NHWC)
    size = ctx.int_vector(list(node.meta["val"].shape[2:]))
    ctx.emit(op, [x, size], [out], options=opts)
    return _result(ctx, out, NHWC)


@layout_lowering(
    aten.upsample_nearest2d.vec,
    aten.upsample_nearest2d.default,
    aten._upsample_nearest_exact2d.vec,
    aten._upsample_nearest_exact2d.default,
)
def _upsample_nearest(ctx, node, args, kwargs):
    if node.target.overloadpacket in (aten.upsample_nearest2d, aten._upsample_nearest_exact2d) and (
        node.target._overloadname == "vec"
    ):
        scales = args[2] if len(args) > 2 else kwargs.get("scale_factors")
    else:
        scales = list(args[2:4]) if len(args) > 2 else None
    _check_scales(node, scales)
    # "nearest" samples floor(i * in / out), "nearest-exact" floor((i + 0.5) * in / out).
    exact = node.target.overloadpacket is aten._upsample_nearest_exact2d
    opts = _options("ResizeNearestNeighborOptionsT", alignCorners=False, halfPixelCenters=exact)
    return _resize(ctx, node, args[0], "RESIZE_NEAREST_NEIGHBOR", opts)


@layout_lowering(aten.upsample_bilinear2d.vec, aten.upsample_bilinear2d.default)
def _upsample_bilinear(ctx, node, args, kwargs):
    align_corners = bool(args[2])
    if node.target is aten.upsample_bilinear2d.vec:
        scales = args[3] if len(args) > 3 else kwargs.get("scale_factors")
    else:
        scales = list(args[3:5]) if len(args) > 3 else None
    if not align_corners:
        _check_scales(node, scales)
    # align_corners=False samples at (i + 0.5) * in / out - 0.5: TFLite's half-pixel centers.
    opts = _options(
        "ResizeBilinearOptionsT", alignCorners=align_corners, halfPixelCenters=not align_corners
    )
    return _resize(ctx, node, args[0], "RESIZE_BILINEAR", opts)


# -- fully connected ----------------------------------------------------------------------------


@layout_lowering(aten.linear.default)
def _linear(ctx, node, args, kwargs):
    x, weight = to_logical(ctx, args[0]), args[1]
    bias = args[2] if len(args) > 2 else kwargs.get("bias")
    if not isinstance(weight, Const):
        raise LoweringError("linear with a computed (non-constant) weight is not supported")
    stored = _weight(ctx, weight, axis=0)
    activation, act_node = _fusable_activation(ctx, node)
    opts = _options(
        "FullyConnectedOptionsT",
        keepNumDims=True,
        fusedActivationFunction=_activation_code(activation),
    )
    out = ctx.output_like()
    version = _version("FULLY_CONNECTED", stored)
    ctx.emit("FULLY_CONNECTED", [x, stored, bias], [out], options=opts, version=version)
    _absorb(ctx, act_node, out)
    return out
