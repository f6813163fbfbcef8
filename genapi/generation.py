"""Text generation with a genapi model in PyTorch, over the static KV cache.

This is the reference the converted files are compared with: prefill the prompt in one
call, then decode one token at a time, exactly as the on-device runners do.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch

from genapi.layers import DecoderLM, KVCache, KVLayout
from genapi.sampling import Sampler, SamplingConfig


@torch.no_grad()
def generate(
    model: DecoderLM,
    prompt_ids: Sequence[int],
    *,
    max_new_tokens: int = 64,
    stop_ids: Iterable[int] = (),
    sampling: SamplingConfig | None = None,
    cache_len: int | None = None,
    layout: KVLayout = "transposed",
) -> Iterator[int]:
    """Yield new token ids one at a time until a stop id or `max_new_tokens`.

    Args:
        model: the model, in eval mode.
        prompt_ids: the prompt's token ids, BOS included if the model wants one.
        max_new_tokens: most tokens to generate.
        stop_ids: ids that end generation; the stop id itself is not yielded.
        sampling: how to pick tokens; greedy by default.
        cache_len: KV cache length; defaults to prompt + max_new_tokens, capped at the
            model's max_seq_len.
        layout: KV cache layout.

    Raises:
        ValueError: if the prompt is empty or does not fit in the cache.
    """
    prompt = list(prompt_ids)
    if not prompt:
        raise ValueError("prompt_ids is empty; at least one token is needed")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens!r} must be >= 1")
    if cache_len is None:
        cache_len = min(len(prompt) + max_new_tokens, model.config.max_seq_len)
    if len(prompt) >= cache_len:
        raise ValueError(
            f"prompt of {len(prompt)} tokens does not fit a KV cache of {cache_len} positions"
        )
    stop = set(stop_ids)
    sampler = Sampler(sampling)
    param = next(model.parameters())
    cache = KVCache.empty(
        model.config, cache_len=cache_len, layout=layout, dtype=param.dtype, device=param.device
    )

    tokens = torch.tensor([prompt], device=param.device)
    logits, cache = model(tokens, input_pos=torch.arange(len(prompt)), kv_cache=cache)
    pos = len(prompt)
    for _ in range(max_new_tokens):
        token = sampler(logits[0, -1].float().cpu().numpy())
        if token in stop:
            return
        yield token
        if pos >= cache_len:
            return
        step = torch.tensor([[token]], device=param.device)
        logits, cache = model(step, input_pos=torch.tensor([pos]), kv_cache=cache)
        pos += 1
