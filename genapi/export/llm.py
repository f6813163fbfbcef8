"""Export of a genapi language model to one `.tflite` file with prefill and decode signatures."""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from genapi.export import lowerings  # noqa: F401  (registers the lowering table)
from genapi.export.calibrate import CalibrationOptions, calibrated_weights
from genapi.export.lower import Const, LoweringContext, Tensor, lower_program
from genapi.export.quantize import QuantRecipe, recipe
from genapi.export.tflite_writer import ModelBuilder
from genapi.export.trace import SignatureSpec, SignatureTrace, trace_signature
from genapi.layers import KV_LAYOUTS, DecoderLM, KVLayout

logger = logging.getLogger(__name__)


def signature_specs(
    *,
    prefill_lengths: Sequence[int],
    kv_cache_len: int,
    kv_layout: KVLayout,
    mask_input: bool,
    prefill_logits: bool,
) -> list[SignatureSpec]:
    """The signatures of an exported model, validated.

    Raises:
        ValueError: naming a bad length or layout.
    """
    if kv_layout not in KV_LAYOUTS:
        raise ValueError(
            f"kv_layout={kv_layout!r} is not one of {', '.join(map(repr, KV_LAYOUTS))}"
        )
    if kv_layout == "bsgd" and not mask_input:
        raise ValueError(
            "kv_layout='bsgd' needs mask_input=True (--mask-input): without a mask LiteRT-LM "
            "reads the cache length from dimension 2 of the K cache"
        )
    if kv_cache_len < 2:
        raise ValueError(f"kv_cache_len={kv_cache_len!r} must be >= 2")
    lengths = sorted(set(prefill_lengths))
    if not lengths:
        raise ValueError("prefill_lengths is empty; give at least one length, e.g. (8, 64, 128)")
    for t in lengths:
        if not 1 <= t <= kv_cache_len:
            raise ValueError(
                f"prefill length {t!r} must be between 1 and kv_cache_len={kv_cache_len}"
            )
    specs = [
        SignatureSpec(f"prefill_{t}", t, kv_cache_len, kv_layout, mask_input, prefill_logits)
        for t in lengths
    ]
    specs.append(SignatureSpec("decode", 1, kv_cache_len, kv_layout, mask_input, True))
    return specs


def export_llm(
    model: DecoderLM,
    path: str | os.PathLike,
    *,
    prefill_lengths: Sequence[int] = (8, 64, 128),
    kv_cache_len: int = 512,
    kv_layout: KVLayout = "transposed",
    mask_input: bool = False,
    prefill_logits: bool = False,
    quantize: str | QuantRecipe = "none",
    block_size: int = 32,
    weights: Mapping[str, torch.Tensor] | None = None,
    timings: dict[str, float] | None = None,
    progress: bool = False,
    calibration: Sequence[int] | None = None,
    calibration_options: CalibrationOptions | None = None,
) -> Path:
    """Convert `model` to a `.tflite` file with `prefill_<T>` and `decode` signatures.

    The signatures share one copy of the weights. The model may live on the meta device, in
    which case `weights` supplies its tensors (read one at a time while the file is written).

    Args:
        model: the genapi model to convert.
        path: the output file; written atomically.
        prefill_lengths: one `prefill_<T>` signature per length.
        kv_cache_len: the KV cache length S.
        kv_layout: "transposed" (K [1, G, S, D], V [1, G, D, S]; needs no mask input),
            "bgsd" or "bsgd" (the latter needs `mask_input`).
        mask_input: take the additive mask [1, 1, T, S] as an input instead of building it.
        prefill_logits: prefill signatures also output logits [1, T, V].
        quantize: a recipe name ("none", "fp16", "dynamic_int8", "weight_only_int8",
            "dynamic_int4") or a `genapi.export.quantize.QuantRecipe` with per-part schemes.
            Weights are quantized one at a time while the file is written.
        block_size: columns per int4 block (32, 64 or 128) for a recipe given by name.
        weights: genapi parameter name -> tensor, for a model on the meta device (or to
            override the model's own weights).
        timings: if given, filled with wall seconds per stage: "trace", "lower", "write"
            (and "calibrate" when calibrating).
        progress: show a progress bar while writing, when stderr is a terminal.
        calibration: token ids of a calibration text (e.g. `genapi.evaluation.text_ids(
            tokenizer, genapi.export.calibrate.default_text())`): the int8 and int4 weights
            are then rounded to lose less accuracy (see `genapi.export.calibrate`), in the
            same stored format. This loads the model: its float32 weights are held in memory
            (read from `weights` for a model on the meta device) while calibrating. Ignored
            by recipes without int8 or int4 weights.
        calibration_options: a `genapi.export.calibrate.CalibrationOptions`; defaults to
            smoothing (alpha 0.5, dynamic recipes only) and error-compensating rounding.

    Returns:
        The path written.

    Raises:
        ValueError: for invalid options.
        genapi.export.lower.LoweringError: for an op the converter cannot lower.
    """
    quant = (
        quantize if isinstance(quantize, QuantRecipe) else recipe(quantize, block_size=block_size)
    )
    specs = signature_specs(
        prefill_lengths=prefill_lengths,
        kv_cache_len=kv_cache_len,
        kv_layout=kv_layout,
        mask_input=mask_input,
        prefill_logits=prefill_logits,
    )
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"output folder {str(path.parent)!r} does not exist")
    model = model.eval()
    if calibration is not None and any(p.scheme in ("int8", "int4") for p in quant.parts.values()):
        start = time.perf_counter()
        weights = calibrated_weights(
            model, quant, calibration, weights=weights, options=calibration_options
        )
        if timings is not None:
            timings["calibrate"] = time.perf_counter() - start
    on_meta = next(model.parameters()).device.type == "meta"
    if on_meta and weights is None:
        raise ValueError("the model is on the meta device; pass weights= to supply its tensors")
    buffers = _cpu_buffers(model, on_meta=on_meta)
    param_shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    param_dtypes = {name: p.dtype for name, p in model.named_parameters()}
    own = None if on_meta else dict(model.named_parameters())

    def param(target: str) -> Const:
        name = target.removeprefix("model.")
        source = weights if weights is not None and name in weights else own

        def produce() -> torch.Tensor:
            return source[name].detach().to(param_dtypes[name])

        return Const(key=name, shape=param_shapes[name], dtype=param_dtypes[name], produce=produce)

    builder = ModelBuilder(description=f"genapi: {model.config.name}")
    stages = {"trace": 0.0, "lower": 0.0, "write": 0.0}
    for spec in specs:
        # One program at a time: a traced 30-layer graph holds hundreds of MB of metadata.
        start = time.perf_counter()
        trace = trace_signature(model, spec)
        stages["trace"] += time.perf_counter() - start
        start = time.perf_counter()
        _lower_signature(builder, spec, trace, model, param, buffers, quant)
        del trace
        gc.collect()
        stages["lower"] += time.perf_counter() - start
    start = time.perf_counter()
    builder.write(path, progress=progress)
    stages["write"] = time.perf_counter() - start
    if timings is not None:
        timings.update(stages)
    logger.info("wrote %s (%d signatures)", path, len(specs))
    if any(p.dynamic for p in quant.parts.values()):
        logger.warning(
            "the %s recipe uses hybrid FULLY_CONNECTED kernels (%s weights, float "
            "activations): correct in ai-edge-litert and LiteRT-LM, computed wrong by "
            "tflite-runtime 2.14 (outputs equal the bias); use --quantize none, fp16 or "
            "weight_only_int8 for that runtime",
            quant.name,
            " and ".join(sorted({p.scheme for p in quant.parts.values() if p.dynamic})),
        )
    return path


def _cpu_buffers(model: DecoderLM, *, on_meta: bool) -> dict[str, torch.Tensor]:
    """The model's derived buffers (rotary frequencies) with values, also for a meta model."""
    if not on_meta:
        return dict(model.named_buffers())
    model.reset_buffers(device="cpu")
    values = {name: b.clone() for name, b in model.named_buffers()}
    model.reset_buffers(device="meta")  # tracing needs every tensor on one device
    return values


def _lower_signature(builder, spec, trace: SignatureTrace, model, param, buffers, quant) -> None:
    """Lower one signature: the prelude, each layer's block program with its own weights, and
    the head, into one subgraph."""
    graph = builder.subgraph(spec.key)
    ctx = LoweringContext(model=builder, graph=graph, quant=quant)
    num_layers = model.config.num_layers
    names = spec.input_names(num_layers)
    signature_inputs: dict[str, int] = {}
    for name in names:
        shape, dtype = _input_shape(model, spec, name)
        signature_inputs[name] = ctx.input_tensor(name, shape, dtype).index
    tensors = {
        name: Tensor(i, ctx.shapes[i], ctx.dtypes[i]) for name, i in signature_inputs.items()
    }

    prelude_inputs = [tensors["tokens"], tensors["input_pos"]]
    if spec.mask_input:
        prelude_inputs.append(tensors["mask"])
    prelude = _lower_piece(ctx, trace.prelude, prelude_inputs, param, buffers)
    x = prelude[0]
    num_ropes = len(model.rotary)
    ropes = [(prelude[1 + 2 * r], prelude[2 + 2 * r]) for r in range(num_ropes)]
    masks = prelude[1 + 2 * num_ropes :]

    outputs: dict[str, object] = {}
    rope_of_block = model._rotary_of_block
    _, mask_of_block = model.mask_slots(spec.cache_len)
    for i in range(num_layers):
        cos, sin = ropes[rope_of_block[i]]
        program = trace.blocks[trace.program_of_block[i]]
        k_name, v_name = f"kv_cache_k_{i}", f"kv_cache_v_{i}"

        def layer_param(target: str, i=i) -> Const:
            return param(f"blocks.{i}." + target.removeprefix("block."))

        x, k, v = _lower_piece(
            ctx,
            program,
            [x, cos, sin, masks[mask_of_block[i]], tensors["input_pos"], tensors[k_name],
             tensors[v_name]],
            layer_param,
            buffers,
        )  # fmt: skip
        outputs[k_name], outputs[v_name] = k, v

    if trace.head is not None:
        outputs["logits"] = _lower_piece(ctx, trace.head, [x], param, buffers)[0]

    signature_outputs = {
        name: _named_output(ctx, outputs[name], name) for name in spec.output_names(num_layers)
    }
    ctx.finish(list(signature_outputs.values()))
    builder.add_signature(spec.key, graph, inputs=signature_inputs, outputs=signature_outputs)


def _input_shape(model: DecoderLM, spec, name: str) -> tuple[tuple[int, ...], torch.dtype]:
    t, s = spec.num_tokens, spec.cache_len
    dtype = next(model.parameters()).dtype
    if name == "tokens":
        return (1, t), torch.int32
    if name == "input_pos":
        return (t,), torch.int32
    if name == "mask":
        return (1, 1, t, s), dtype
    kind, layer = name.removeprefix("kv_cache_").split("_")
    k_shape, v_shape = model.config.cache_shape(int(layer), cache_len=s, layout=spec.layout)
    return (k_shape if kind == "k" else v_shape), dtype


def _lower_piece(ctx, program, inputs: list, param, buffers) -> list:
    """Lower a traced piece with its user inputs bound to `inputs`, in order."""
    user_inputs = [s for s in program.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    bound = {spec.arg.name: value for spec, value in zip(user_inputs, inputs, strict=True)}

    def buffer(target: str) -> Const:
        # Buffers come from the model (recomputed on the CPU for a meta model); lifted
        # constants from the program.
        name = target.removeprefix("model.")
        if name in buffers:
            return ctx.constant(buffers[name])
        return ctx.constant(program.constants[target])

    return lower_program(program, ctx, inputs=bound, params=param, buffers=buffer)


def _named_output(ctx: LoweringContext, value, name: str) -> int:
    """The tensor index behind output `name`; runtimes address outputs by signature name."""
    tensor = ctx.tensor(value)
    if tensor.index in ctx.graph_inputs:
        # An input passed through unchanged still needs a tensor of its own as an output.
        out = ctx.new_tensor(tensor.shape, tensor.dtype, name=name)
        ctx.emit("RESHAPE", [tensor, ctx.int_vector(tensor.shape)], [out])
        return out.index
    return tensor.index
