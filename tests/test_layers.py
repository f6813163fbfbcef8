"""Building blocks on their own: config validation, masks, rotary, cache layouts, soft-caps."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from genapi.layers import (
    AttentionConfig,
    BlockConfig,
    CausalSelfAttention,
    FeedForwardConfig,
    KVCache,
    NormConfig,
    RopeScaling,
    RotaryConfig,
    TransformerConfig,
    causal_mask,
    inverse_frequencies,
    sliding_window_mask,
)
from genapi.models import llama


def test_heads_not_divisible_by_kv_heads_names_both_fields():
    with pytest.raises(ValueError, match=r"num_heads=6.*num_kv_heads=4"):
        AttentionConfig(num_heads=6, num_kv_heads=4, head_dim=16)


@pytest.mark.parametrize(
    "build, fields",
    [
        (lambda: NormConfig(kind="batch_norm"), "kind='batch_norm'"),
        (lambda: NormConfig(eps=0.0), "eps=0.0"),
        (lambda: RotaryConfig(fraction=1.5), "fraction=1.5"),
        (lambda: AttentionConfig(4, 4, 10, rotary=RotaryConfig(fraction=0.3)), "fraction=0.3"),
        (lambda: AttentionConfig(4, 4, 16, sliding_window=0), "sliding_window=0"),
        (lambda: FeedForwardConfig(activation="swish", hidden_dim=8), "activation='swish'"),
        (lambda: FeedForwardConfig(hidden_dim=0), "hidden_dim=0"),
        (
            lambda: RopeScaling(kind="llama3", factor=8, low_freq_factor=4, high_freq_factor=1),
            "high_freq_factor=1",
        ),  # fmt: skip
    ],
)
def test_invalid_configs_name_the_field_and_value(build, fields):
    with pytest.raises(ValueError, match=fields.replace("(", r"\(")):
        build()


def test_invalid_model_level_combinations():
    block = llama.tiny_config().block
    with pytest.raises(ValueError, match="lm_head_bias=True.*tie_embeddings=True"):
        TransformerConfig(vocab_size=8, d_model=64, num_layers=1, block=block, lm_head_bias=True)
    with pytest.raises(ValueError, match="3 per-layer configs but num_layers=2"):
        TransformerConfig(vocab_size=8, d_model=64, num_layers=2, block=(block,) * 3)
    with pytest.raises(ValueError, match="pre_feed_forward_norm must be None"):
        dataclasses.replace(block, residual="parallel")


def test_causal_and_sliding_masks():
    pos = torch.tensor([3, 4])
    visible = causal_mask(pos, 8)[0, 0] == 0
    assert visible.tolist() == [[j <= p for j in range(8)] for p in (3, 4)]
    window = sliding_window_mask(pos, 8, sliding_window=2)[0, 0] == 0
    assert window.tolist() == [[j > p - 2 for j in range(8)] for p in (3, 4)]


def test_llama3_scaling_keeps_high_frequencies_and_divides_low_ones():
    plain = inverse_frequencies(RotaryConfig(theta=500000.0), 64)
    scaling = RopeScaling(kind="llama3", factor=32.0, original_max_positions=8192)
    scaled = inverse_frequencies(RotaryConfig(theta=500000.0, scaling=scaling), 64)
    wavelen = 2 * math.pi / plain
    assert torch.equal(scaled[wavelen < 8192 / 4], plain[wavelen < 8192 / 4])
    assert torch.allclose(scaled[wavelen > 8192], plain[wavelen > 8192] / 32)


def test_linear_scaling_divides_every_frequency():
    plain = inverse_frequencies(RotaryConfig(), 16)
    scaled = inverse_frequencies(RotaryConfig(scaling=RopeScaling(kind="linear", factor=4)), 16)
    assert torch.allclose(scaled, plain / 4)


@pytest.mark.parametrize(
    "layout, k_shape, v_shape",
    [
        ("bsgd", (1, 10, 2, 16), (1, 10, 2, 16)),
        ("bgsd", (1, 2, 10, 16), (1, 2, 10, 16)),
        ("transposed", (1, 2, 10, 16), (1, 2, 16, 10)),
    ],
)
def test_cache_layout_shapes(layout, k_shape, v_shape):
    cache = KVCache.empty(llama.tiny_config(), cache_len=10, layout=layout)
    assert tuple(cache.k[0].shape) == k_shape and tuple(cache.v[0].shape) == v_shape
    assert cache.cache_len == 10


def test_unknown_cache_layout_is_rejected():
    with pytest.raises(ValueError, match="kv layout='bhsd' is not one of"):
        KVCache.empty(llama.tiny_config(), cache_len=4, layout="bhsd")


def _naive_attention(attn: CausalSelfAttention, x: torch.Tensor) -> torch.Tensor:
    """Textbook attention without a cache or rotary, repeating K and V per query head."""
    cfg = attn.config
    b, t, _ = x.shape
    q = attn.q_proj(x).view(b, t, cfg.num_heads, cfg.head_dim).transpose(1, 2)
    k = attn.k_proj(x).view(b, t, cfg.num_kv_heads, cfg.head_dim).transpose(1, 2)
    v = attn.v_proj(x).view(b, t, cfg.num_kv_heads, cfg.head_dim).transpose(1, 2)
    rep = cfg.num_heads // cfg.num_kv_heads
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    scores = q @ k.transpose(-1, -2) * cfg.query_scale
    scores = torch.tanh(scores / cfg.logit_softcap) * cfg.logit_softcap
    scores = scores.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), float("-inf"))
    out = torch.softmax(scores, -1) @ v
    return attn.o_proj(out.transpose(1, 2).reshape(b, t, -1))


@torch.no_grad()
def test_attention_logit_softcap_matches_textbook_attention():
    cfg = AttentionConfig(num_heads=4, num_kv_heads=2, head_dim=8, logit_softcap=2.0, scale=1.0)
    torch.manual_seed(0)
    attn = CausalSelfAttention(cfg, d_model=32)
    x = torch.randn(1, 5, 32) * 3
    cos, sin = torch.ones(5, 8), torch.zeros(5, 8)  # a rotary table that rotates nothing
    k_shape, v_shape = (1, 2, 5, 8), (1, 2, 8, 5)
    out, _, _ = attn(
        x,
        rope=(cos, sin),
        input_pos=torch.arange(5),
        mask=causal_mask(torch.arange(5), 5),
        k_cache=torch.zeros(k_shape),
        v_cache=torch.zeros(v_shape),
        layout="transposed",
    )
    assert torch.allclose(out, _naive_attention(attn, x), atol=1e-5)


def test_block_config_defaults_are_a_pre_norm_block():
    block = BlockConfig(
        attention=AttentionConfig(num_heads=2, num_kv_heads=1, head_dim=8),
        feed_forward=FeedForwardConfig(hidden_dim=16),
    )
    assert block.residual == "sequential" and block.pre_feed_forward_norm is not None
