"""Conversion of an ordinary PyTorch module (a vision network, say) to a one-signature `.tflite`.

    edge = genapi.convert(model.eval(), (sample,))
    edge(sample)                  # runs the .tflite in ai-edge-litert
    edge.export("model.tflite")

The module is traced once with `torch.export` at the sample's shapes and lowered op by op
(`genapi.export.lowerings` and `genapi.export.lowerings_vision`). Tensors stay NCHW at the
signature; inside the graph, convolution data stays NHWC (see `lowerings_vision`).
"""

from __future__ import annotations

import logging
import operator
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import fx, nn
from torch.utils import _pytree as pytree

from genapi.export.lower import (
    LOWERINGS,
    Const,
    LoweringContext,
    LoweringError,
    Tensor,
    fold,
    source_line,
)
from genapi.export.lowerings_vision import (
    LAYOUT_LOWERINGS,
    QUANTIZE_MODES,
    absorbed,
    to_logical,
    track_layouts,
)
from genapi.export.tflite_writer import ModelBuilder

logger = logging.getLogger(__name__)

SIGNATURE = "serving_default"

# Ops that only check or describe a value; lowered to nothing.
_SKIPPED = {torch.ops.aten._assert_tensor_metadata.default}


class ConvertedModel:
    """A module converted to TFLite: call it like the module, or write it with `export`.

    Calls run the model in ai-edge-litert's Interpreter (XNNPACK applied by default). Inputs
    are torch tensors or numpy arrays of the sample's shapes, NCHW like the module's; outputs
    come back in the module's structure, as torch tensors when the inputs were tensors.
    """

    def __init__(
        self,
        content: bytes,
        *,
        input_names: Sequence[str],
        output_names: Sequence[str],
        out_spec: pytree.TreeSpec,
    ):
        self.content = content  # the .tflite file's bytes
        self.signature = SIGNATURE
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self._out_spec = out_spec
        self._runner = None

    def __repr__(self) -> str:
        return (
            f"ConvertedModel({len(self.content)} bytes, signature {self.signature!r}, "
            f"inputs {self.input_names}, outputs {self.output_names})"
        )

    def interpreter(self, *, num_threads: int | None = None):
        """A fresh ai-edge-litert `Interpreter` over the model, e.g. to set the thread count."""
        from ai_edge_litert.interpreter import Interpreter

        kwargs = {} if num_threads is None else {"num_threads": int(num_threads)}
        return Interpreter(model_content=self.content, **kwargs)

    def __call__(self, *args):
        if len(args) != len(self.input_names):
            raise TypeError(
                f"the converted model takes {len(self.input_names)} input(s) "
                f"({', '.join(self.input_names)}), got {len(args)}"
            )
        if self._runner is None:
            self._runner = self.interpreter().get_signature_runner(self.signature)
        details = self._runner.get_input_details()
        feeds = {}
        as_torch = any(isinstance(a, torch.Tensor) for a in args)
        for name, value in zip(self.input_names, args, strict=True):
            if isinstance(value, torch.Tensor):
                value = value.detach().cpu().numpy()
            expected = details[name]
            array = np.asarray(value).astype(expected["dtype"], copy=False)
            if tuple(array.shape) != tuple(expected["shape"]):
                raise ValueError(
                    f"input {name!r} has shape {list(array.shape)}; the model was converted "
                    f"for {list(expected['shape'])}"
                )
            feeds[name] = np.ascontiguousarray(array)
        results = self._runner(**feeds)
        outputs = [np.array(results[name]) for name in self.output_names]
        if as_torch:
            outputs = [torch.from_numpy(o) for o in outputs]
        return pytree.tree_unflatten(outputs, self._out_spec)

    def export(self, path: str | os.PathLike) -> Path:
        """Write the `.tflite` file atomically (a temporary file renamed over `path`).

        Returns:
            The path written.

        Raises:
            FileNotFoundError: if the folder of `path` does not exist.
        """
        path = Path(path)
        if not path.parent.is_dir():
            raise FileNotFoundError(f"output folder {str(path.parent)!r} does not exist")
        tmp = path.parent / f".{path.name}.tmp{os.getpid()}"
        try:
            with open(tmp, "wb") as f:
                f.write(self.content)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return path


def convert(
    module: nn.Module,
    sample_args: Sequence[Any] | torch.Tensor,
    *,
    quantize: str | None = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
) -> ConvertedModel:
    """Convert `module` to TFLite with one signature, `serving_default`.

    Args:
        module: the model; converted in eval mode (a module in training mode is switched to
            eval for the trace and back).
        sample_args: the positional tensor inputs the model is traced with; their shapes and
            dtypes are the converted model's.
        quantize: None or "none" for float32; "dynamic_int8" for int8 per-channel conv and
            fully connected weights with float activations (TFLite's hybrid kernels).
        input_names: signature input names; default the names of `forward`'s parameters.
        output_names: signature output names; default "output" for one tensor, the keys of a
            returned dict or the fields of a named tuple, else "output_<i>".

    Returns:
        A `ConvertedModel`, callable like `module` and writable with `.export(path)`.

    Raises:
        ValueError: for an unknown `quantize`, non-tensor inputs or names of the wrong count.
        genapi.export.lower.LoweringError: for an op the converter cannot lower, naming the op,
            the module it came from and the source line.
    """
    quantize = quantize or "none"
    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"quantize={quantize!r} is not one of {', '.join(QUANTIZE_MODES)}")
    if isinstance(sample_args, torch.Tensor):
        sample_args = (sample_args,)
    sample_args = tuple(sample_args)
    for i, arg in enumerate(sample_args):
        if not isinstance(arg, torch.Tensor):
            raise ValueError(
                f"sample_args[{i}] is a {type(arg).__name__}; only tensor inputs are supported"
            )

    start = time.perf_counter()
    program = _trace(module, sample_args)
    user_inputs = [s for s in program.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    input_names = _names(
        "input_names", input_names, [s.arg.name for s in user_inputs], len(sample_args)
    )
    out_spec = program.call_spec.out_spec
    output_names = _names(
        "output_names", output_names, _default_output_names(out_spec), out_spec.num_leaves
    )

    builder = ModelBuilder(description=f"genapi: {type(module).__name__}")
    graph = builder.subgraph(SIGNATURE)
    ctx = LoweringContext(model=builder, graph=graph, fuse_linear=False)
    track_layouts(ctx, quantize=quantize)
    inputs = {}
    for spec, name, sample in zip(user_inputs, input_names, sample_args, strict=True):
        inputs[spec.arg.name] = ctx.input_tensor(name, tuple(sample.shape), sample.dtype)
    values = lower_module_program(ctx, program, inputs)

    outputs = {}
    for name, value in zip(output_names, values, strict=True):
        outputs[name] = _output_tensor(ctx, value, name)
    ctx.finish(list(outputs.values()))
    signature_inputs = {name: t.index for name, t in zip(input_names, inputs.values(), strict=True)}
    builder.add_signature(SIGNATURE, graph, inputs=signature_inputs, outputs=outputs)
    content = builder.to_bytes()
    logger.info(
        "converted %s in %.2f s (%d bytes)",
        type(module).__name__,
        time.perf_counter() - start,
        len(content),
    )
    return ConvertedModel(
        content, input_names=input_names, output_names=output_names, out_spec=out_spec
    )


def _trace(module: nn.Module, sample_args: tuple) -> torch.export.ExportedProgram:
    was_training = module.training
    if was_training:
        logger.warning("%s is in training mode; converting it in eval mode", type(module).__name__)
        module.eval()
    try:
        with torch.no_grad():
            return torch.export.export(module, sample_args)
    finally:
        if was_training:
            module.train()


def _names(what: str, given, default: list[str], count: int) -> list[str]:
    names = list(default if given is None else given)
    if len(names) != count:
        raise ValueError(f"{what} has {len(names)} name(s) {names}, the model has {count}")
    if len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"{what} must be distinct non-empty strings, got {names}")
    return names


def _default_output_names(spec: pytree.TreeSpec) -> list[str]:
    if spec.is_leaf():
        return ["output"]
    leaves = all(child.is_leaf() for child in spec.children())
    if leaves and spec.type is dict and all(isinstance(k, str) for k in spec.context):
        return list(spec.context)
    if leaves and hasattr(spec.context, "_fields"):  # a named tuple
        return list(spec.context._fields)
    return [f"output_{i}" for i in range(spec.num_leaves)]


def _output_tensor(ctx: LoweringContext, value, name: str) -> int:
    """The index of a tensor holding output `name` in PyTorch's layout."""
    if not isinstance(value, (Tensor, Const)):
        raise LoweringError(f"output {name!r} is {value!r}; only tensor outputs are supported")
    tensor = ctx.tensor(to_logical(ctx, value))
    if tensor.index in ctx.graph_inputs or isinstance(value, Const):
        # An input passed through (or a constant) still needs a tensor of its own.
        out = ctx.new_tensor(tensor.shape, tensor.dtype, name=name)
        ctx.emit("RESHAPE", [tensor, ctx.int_vector(tensor.shape)], [out])
        return out.index
    return tensor.index


def lower_module_program(
    ctx: LoweringContext, program: torch.export.ExportedProgram, inputs: dict[str, Tensor]
) -> list:
    """Lower `program` into `ctx.graph`, tracking layouts; return its user outputs' values.

    Args:
        ctx: the lowering context, after `track_layouts`.
        program: the exported module.
        inputs: placeholder name of each user input -> its signature tensor.

    Raises:
        LoweringError: naming the op, the module it came from and the source line.
    """
    state = program.state_dict
    env: dict[str, Any] = {}
    ctx.env = env
    specs = {s.arg.name: s for s in program.graph_signature.input_specs}
    for node in program.graph.nodes:
        ctx.node = node
        if node.op == "placeholder":
            env[node.name] = _placeholder(ctx, program, specs[node.name], inputs, state)
        elif node.op == "call_function":
            if node.target in _SKIPPED:
                continue
            env[node.name] = _lower(ctx, node, env)
            if _is_inplace(node.target) and isinstance(node.args[0], fx.Node):
                env[node.args[0].name] = env[node.name]
        elif node.op == "output":
            kinds = [s.kind.name for s in program.graph_signature.output_specs]
            values = fx.node.map_arg(node.args[0], lambda n: env[n.name])
            return [v for v, kind in zip(values, kinds, strict=True) if kind == "USER_OUTPUT"]
    raise LoweringError("exported program has no output node")


def _placeholder(ctx, program, spec, inputs, state):
    kind = spec.kind.name
    if kind == "USER_INPUT":
        return inputs[spec.arg.name]
    if kind in ("PARAMETER", "BUFFER", "CONSTANT_TENSOR"):
        target = spec.target
        value = state[target] if target in state else program.constants[target]
        if not isinstance(value, torch.Tensor):
            raise LoweringError(f"program constant {target!r} is not a tensor")
        value = value.detach()
        return Const(
            key=target,
            shape=tuple(value.shape),
            dtype=value.dtype,
            produce=lambda value=value: value,
        )
    raise LoweringError(f"program input {spec.arg.name!r} of kind {kind} is not supported")


def _is_inplace(target) -> bool:
    schema = getattr(target, "_schema", None)
    if schema is None or not schema.arguments:
        return False
    alias = schema.arguments[0].alias_info
    return alias is not None and alias.is_write


def _lower(ctx: LoweringContext, node: fx.Node, env: dict):
    done = absorbed(ctx, node)
    if done is not None:
        return done
    args = fx.node.map_arg(node.args, lambda n: env[n.name])
    kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n.name])
    if node.target is operator.getitem:
        return args[0][args[1]]
    values = pytree.tree_leaves((args, kwargs))
    if not any(isinstance(v, Tensor) for v in values):
        return fold(node, args, kwargs)
    fn = LAYOUT_LOWERINGS.get(node.target)
    if fn is None:
        fn = LOWERINGS.get(node.target)
        if fn is None:
            raise LoweringError(f"no TFLite lowering for ATen op {node.target} ({where(node)})")
        # Lowerings outside the layout-aware table see PyTorch's layout.
        args = pytree.tree_map(lambda v: to_logical(ctx, v), args)
        kwargs = pytree.tree_map(lambda v: to_logical(ctx, v), kwargs)
    try:
        return fn(ctx, node, args, kwargs)
    except LoweringError as err:
        if "(in module " in str(err):
            raise
        raise LoweringError(f"{err} (op {node.target} {where(node)})") from None


def where(node: fx.Node) -> str:
    """'in module <path> (<class>), from <file>:<line>: <code>' for error messages."""
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        path, cls = list(stack.values())[-1]
        cls = cls if isinstance(cls, str) else f"{cls.__module__}.{cls.__qualname__}"
        module = f"{path or '<root>'!r} ({cls.rsplit('.', 1)[-1]})"
    else:
        module = "'<unknown>'"
    return f"in module {module}, from {source_line(node)}"
