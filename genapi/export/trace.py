"""torch.export of a language model's signatures: `prefill_<T>` and `decode`.

Each signature is a small wrapper module around the user's `DecoderLM` whose inputs and
outputs follow the LiteRT-LM contract: `tokens` [1, T] int32, `input_pos` [T] int32, an
optional additive `mask` [1, 1, T, S], and per layer `kv_cache_k_<i>` / `kv_cache_v_<i>` as
inputs and outputs; `logits` [1, T, V] when the signature returns them.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass

import torch
from torch import nn

from genapi.layers import BlockConfig, DecoderLM, KVLayout, RotaryConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SignatureSpec:
    """One signature of an exported language model."""

    key: str  # "prefill_<T>" or "decode"
    num_tokens: int  # T
    cache_len: int  # S
    layout: KVLayout  # KV cache layout
    mask_input: bool  # the mask is an input rather than built inside
    logits: bool  # the signature outputs logits

    def input_names(self, num_layers: int) -> list[str]:
        names = ["tokens", "input_pos"] + (["mask"] if self.mask_input else [])
        return names + _cache_names(num_layers)

    def output_names(self, num_layers: int) -> list[str]:
        return (["logits"] if self.logits else []) + _cache_names(num_layers)


def _cache_names(num_layers: int) -> list[str]:
    names = []
    for i in range(num_layers):
        names += [f"kv_cache_k_{i}", f"kv_cache_v_{i}"]
    return names


class PreludeModule(nn.Module):
    """Embeds the tokens and computes what all blocks share: rotary tables and masks."""

    def __init__(self, model: DecoderLM, spec: SignatureSpec):
        super().__init__()
        self.model = model
        self.spec = spec

    def forward(self, tokens, input_pos, *mask):
        x = self.model.embed(tokens)
        context = self.model.attention_context(
            input_pos.long(), self.spec.cache_len, mask=mask[0] if mask else None
        )
        ropes = [t for cos_sin in context.ropes for t in cos_sin]
        return (x, *ropes, *context.masks)


class BlockModule(nn.Module):
    """One decoder block with its rotary table and mask as inputs, traced once per shape."""

    def __init__(self, block: nn.Module, layout: KVLayout):
        super().__init__()
        self.block = block
        self.layout = layout

    def forward(self, x, cos, sin, mask, input_pos, k_cache, v_cache):
        return self.block(
            x,
            rope=(cos, sin),
            input_pos=input_pos.long(),
            mask=mask,
            k_cache=k_cache,
            v_cache=v_cache,
            layout=self.layout,
        )


class HeadModule(nn.Module):
    """Final norm, output head and soft-cap."""

    def __init__(self, model: DecoderLM):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.head(x)


@dataclass
class SignatureTrace:
    """The traced pieces of one signature; blocks of the same shape share one program."""

    prelude: torch.export.ExportedProgram
    blocks: list[torch.export.ExportedProgram]  # one per distinct block computation
    program_of_block: list[int]  # block index -> index into `blocks`
    head: torch.export.ExportedProgram | None  # None when the signature has no logits


def block_trace_key(config: BlockConfig):
    """Blocks whose traces are identical: the window and rotary base only change the mask
    and the rotary table, which are inputs of the block program."""
    attention = dataclasses.replace(
        config.attention,
        sliding_window=None,
        rotary=RotaryConfig(fraction=config.attention.rotary.fraction),
    )
    return dataclasses.replace(config, attention=attention)


def _export(module: nn.Module, args: tuple) -> torch.export.ExportedProgram:
    # The graph is lowered as traced, without ATen decompositions: ops like linear, matmul and
    # softmax map one to one onto TFLite builtins, and decomposing would double the cost.
    with torch.no_grad():
        return torch.export.export(module.eval(), args)


def trace_signature(model: DecoderLM, spec: SignatureSpec) -> SignatureTrace:
    """torch.export the prelude, each distinct block and the head of one signature.

    Tracing one block instead of the whole stack keeps the cost independent of depth: the
    lowering stamps the block program once per layer with that layer's weights.
    """
    start = time.perf_counter()
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    t, s = spec.num_tokens, spec.cache_len
    config = model.config

    tokens = torch.zeros((1, t), dtype=torch.int32, device=device)
    input_pos = torch.arange(t, dtype=torch.int32, device=device)
    mask = torch.zeros((1, 1, t, s), dtype=dtype, device=device)
    prelude_args = (tokens, input_pos, mask) if spec.mask_input else (tokens, input_pos)
    prelude = _export(PreludeModule(model, spec), prelude_args)

    keys: list = []
    blocks: list[torch.export.ExportedProgram] = []
    program_of_block = []
    x = torch.zeros((1, t, config.d_model), dtype=dtype, device=device)
    for i, block in enumerate(model.blocks):
        key = block_trace_key(block.config)
        if key not in keys:
            attention = block.config.attention
            rotary_dim = attention.rotary.rotary_dim(attention.head_dim)
            k_shape, v_shape = config.cache_shape(i, cache_len=s, layout=spec.layout)
            # Distinct tensors for distinct inputs: export folds an input passed twice into one.
            args = (
                x,
                torch.zeros((t, rotary_dim), dtype=torch.float32, device=device),
                torch.zeros((t, rotary_dim), dtype=torch.float32, device=device),
                torch.zeros((1, 1, t, s + t), dtype=dtype, device=device),  # see split_mask
                input_pos,
                torch.zeros(k_shape, dtype=dtype, device=device),
                torch.zeros(v_shape, dtype=dtype, device=device),
            )
            keys.append(key)
            blocks.append(_export(BlockModule(block, spec.layout), args))
        program_of_block.append(keys.index(key))

    head = _export(HeadModule(model), (x,)) if spec.logits else None
    logger.info(
        "traced %s in %.2f s (%d block program(s) for %d layers)",
        spec.key,
        time.perf_counter() - start,
        len(blocks),
        config.num_layers,
    )
    return SignatureTrace(prelude, blocks, program_of_block, head)
