"""torch.export of a language model's signatures: `prefill_<T>` and `decode`.

Each signature is a small wrapper module around the user's `DecoderLM` whose inputs and
outputs follow the LiteRT-LM contract: `tokens` [1, T] int32, `input_pos` [T] int32, an
optional additive `mask` [1, 1, T, S], and per layer `kv_cache_k_<i>` / `kv_cache_v_<i>` as
inputs and outputs; `logits` [1, T, V] when the signature returns them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
from torch import nn

from genapi.layers import DecoderLM, KVCache, KVLayout

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


class SignatureModule(nn.Module):
    """Adapts `DecoderLM.forward` to one signature's flat inputs and outputs."""

    def __init__(self, model: DecoderLM, spec: SignatureSpec):
        super().__init__()
        self.model = model
        self.spec = spec

    def forward(self, tokens, input_pos, *rest):
        spec = self.spec
        mask = rest[0] if spec.mask_input else None
        caches = rest[1:] if spec.mask_input else rest
        cache = KVCache(k=list(caches[0::2]), v=list(caches[1::2]), layout=spec.layout)
        x = self.model.embed(tokens)
        x, cache = self.model.run_blocks(x, input_pos=input_pos.long(), kv_cache=cache, mask=mask)
        outputs = []
        if spec.logits:
            outputs.append(self.model.head(x))
        for k, v in zip(cache.k, cache.v, strict=True):
            outputs += [k, v]
        return tuple(outputs)


def sample_inputs(model: DecoderLM, spec: SignatureSpec, *, device) -> tuple[torch.Tensor, ...]:
    """Example inputs of `spec`'s shapes (values do not matter: shapes are static)."""
    t, s = spec.num_tokens, spec.cache_len
    dtype = next(model.parameters()).dtype
    inputs = [
        torch.zeros((1, t), dtype=torch.int32, device=device),
        torch.arange(t, dtype=torch.int32, device=device),
    ]
    if spec.mask_input:
        inputs.append(torch.zeros((1, 1, t, s), dtype=dtype, device=device))
    cache = KVCache.empty(model.config, cache_len=s, layout=spec.layout, dtype=dtype, device=device)
    for k, v in zip(cache.k, cache.v, strict=True):
        inputs += [k, v]
    return tuple(inputs)


def export_signature(model: DecoderLM, spec: SignatureSpec) -> torch.export.ExportedProgram:
    """torch.export one signature of `model` (which may live on the meta device)."""
    device = next(model.parameters()).device
    start = time.perf_counter()
    module = SignatureModule(model, spec).eval()
    # The graph is lowered as traced, without ATen decompositions: ops like linear, matmul and
    # softmax map one to one onto TFLite builtins, and decomposing would double the cost.
    with torch.no_grad():
        program = torch.export.export(module, sample_inputs(model, spec, device=device))
    logger.info("traced %s in %.2f s", spec.key, time.perf_counter() - start)
    return program
