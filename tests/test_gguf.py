"""GGUFCheckpoint against transformers' own GGUF loader, on real files and on small ones written
here with gguf.GGUFWriter."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import torch
from real_models import gemma3_gguf, smollm2_gguf, transformers_reference

from genapi.loading import GGUFCheckpoint, llama_cpp_permute_qk, llama_cpp_unpermute_qk
from genapi.loading import gguf as gguf_module

os.environ.setdefault("HF_HUB_OFFLINE", "1")

Q = gguf.GGMLQuantizationType


# ---- real files


@pytest.fixture(scope="module")
def smollm2() -> tuple[GGUFCheckpoint, Any, dict[str, torch.Tensor]]:
    path = smollm2_gguf()
    return (GGUFCheckpoint(path), *transformers_reference(path))


@pytest.fixture(scope="module")
def gemma3() -> tuple[GGUFCheckpoint, Any, dict[str, torch.Tensor]]:
    path = gemma3_gguf()
    return (GGUFCheckpoint(path), *transformers_reference(path))


def assert_tensors_match(ckpt: GGUFCheckpoint, reference: Mapping[str, torch.Tensor]) -> None:
    names = ckpt.tensor_names()
    assert sorted(names) == sorted(reference)
    bad = []
    for name in names:
        ours, theirs = ckpt.read_tensor(name), reference[name]
        assert ckpt.tensor_shape(name) == ours.shape
        if ours.dtype != torch.float32 or ours.shape != theirs.shape:
            bad.append(f"{name}: {ours.dtype} {tuple(ours.shape)} vs {tuple(theirs.shape)}")
        elif not torch.equal(ours, theirs):
            diff = (ours - theirs).abs().max().item()
            if diff > 1e-6:
                bad.append(f"{name}: max abs diff {diff}")
    assert not bad, "tensors differ from transformers':\n" + "\n".join(bad)


def test_fast_reader_matches_gguf_reader():
    path = smollm2_gguf()
    fast, stock = gguf_module._FastReader(path), gguf.GGUFReader(path)
    assert list(fast.fields) == list(stock.fields)
    for key, field in stock.fields.items():
        assert fast.fields[key].contents() == field.contents(), key
    assert [t.name for t in fast.tensors] == [t.name for t in stock.tensors]
    for ours, theirs in zip(fast.tensors, stock.tensors, strict=True):
        assert ours.tensor_type == theirs.tensor_type
        assert np.array_equal(ours.shape, theirs.shape)
        assert np.array_equal(ours.data, theirs.data), ours.name


def test_smollm2_config_matches_design(smollm2):
    ckpt, _, _ = smollm2
    config = ckpt.hf_config()
    assert ckpt.architecture == "llama"
    assert config["architectures"] == ["LlamaForCausalLM"]
    expected = {
        "hidden_size": 576,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "head_dim": 64,
        "intermediate_size": 1536,
        "vocab_size": 49152,
        "rope_theta": 1e5,
        "tie_word_embeddings": True,
        "rope_scaling": None,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    assert {key: config[key] for key in expected} == expected
    assert config["rms_norm_eps"] == pytest.approx(1e-5)
    assert "lm_head.weight" not in ckpt.tensor_names()


def test_smollm2_config_matches_transformers(smollm2):
    ckpt, reference, _ = smollm2
    config = ckpt.hf_config()
    for key in (
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "rms_norm_eps",
        "vocab_size",
        "max_position_embeddings",
        "tie_word_embeddings",
        "bos_token_id",
        "eos_token_id",
    ):
        assert config[key] == getattr(reference, key), key
    assert config["rope_theta"] == reference.rope_parameters["rope_theta"]


def test_smollm2_tensors_match_transformers(smollm2):
    ckpt, _, reference = smollm2
    assert_tensors_match(ckpt, reference)


def test_smollm2_qk_are_unpermuted(smollm2):
    ckpt, _, _ = smollm2
    raw_q = ckpt.read_gguf_tensor("blk.4.attn_q.weight")
    raw_k = ckpt.read_gguf_tensor("blk.4.attn_k.weight")
    q = ckpt.read_tensor("model.layers.4.self_attn.q_proj.weight")
    k = ckpt.read_tensor("model.layers.4.self_attn.k_proj.weight")
    assert not torch.equal(q, raw_q)
    assert torch.equal(q, llama_cpp_unpermute_qk(raw_q, num_heads=9))
    assert torch.equal(k, llama_cpp_unpermute_qk(raw_k, num_heads=3))
    v = ckpt.read_tensor("model.layers.4.self_attn.v_proj.weight")
    assert torch.equal(v, ckpt.read_gguf_tensor("blk.4.attn_v.weight"))


def test_gemma3_config(gemma3):
    ckpt, reference, _ = gemma3
    config = ckpt.hf_config()
    assert ckpt.architecture == "gemma3"
    expected = {
        "architectures": ["Gemma3ForCausalLM"],
        "hidden_size": 640,
        "num_hidden_layers": 18,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "head_dim": 256,
        "intermediate_size": 2048,
        "vocab_size": 262144,
        "sliding_window": 512,
        "query_pre_attn_scalar": 256,
        "rope_theta": 1e6,
        "rope_local_base_freq": 1e4,
        "tie_word_embeddings": True,
        "hidden_activation": "gelu_pytorch_tanh",
        "final_logit_softcapping": None,
        "attn_logit_softcapping": None,
        "bos_token_id": 2,
        "eos_token_id": 1,
    }
    assert {key: config[key] for key in expected} == expected
    full = [i for i, kind in enumerate(config["layer_types"]) if kind == "full_attention"]
    assert full == [5, 11, 17]
    assert config["layer_types"] == reference.layer_types
    assert config["rms_norm_eps"] == reference.rms_norm_eps
    assert config["query_pre_attn_scalar"] == reference.query_pre_attn_scalar
    assert config["rope_theta"] == reference.rope_parameters["full_attention"]["rope_theta"]
    local = reference.rope_parameters["sliding_attention"]["rope_theta"]
    assert config["rope_local_base_freq"] == local


def test_gemma3_tensors_match_transformers(gemma3):
    ckpt, _, reference = gemma3
    assert_tensors_match(ckpt, reference)


def test_gemma3_norms_lose_the_offset(gemma3):
    ckpt, _, _ = gemma3
    pairs = {
        "model.norm.weight": "output_norm.weight",
        "model.layers.2.input_layernorm.weight": "blk.2.attn_norm.weight",
        "model.layers.2.post_attention_layernorm.weight": "blk.2.post_attention_norm.weight",
        "model.layers.2.pre_feedforward_layernorm.weight": "blk.2.ffn_norm.weight",
        "model.layers.2.post_feedforward_layernorm.weight": "blk.2.post_ffw_norm.weight",
        "model.layers.2.self_attn.q_norm.weight": "blk.2.attn_q_norm.weight",
        "model.layers.2.self_attn.k_norm.weight": "blk.2.attn_k_norm.weight",
    }
    for hf_name, gguf_name in pairs.items():
        assert torch.equal(ckpt.read_tensor(hf_name), ckpt.read_gguf_tensor(gguf_name) - 1)
    # Gemma 3 is not permuted.
    q = ckpt.read_tensor("model.layers.2.self_attn.q_proj.weight")
    assert torch.equal(q, ckpt.read_gguf_tensor("blk.2.attn_q.weight"))
    assert {ckpt.tensor_type(n) for n in ckpt.tensor_names()} >= {"Q5_0", "Q4_K", "Q6_K", "Q8_0"}


# ---- small files written here


def write_gguf(
    path: Path,
    arch: str,
    metadata: Mapping[str, Any],
    tensors: Mapping[str, np.ndarray | tuple[np.ndarray, gguf.GGMLQuantizationType]],
) -> Path:
    """A GGUF file; `{arch}` in a key is the architecture; a tensor given as (bytes, type) is
    stored raw with that type, a float array as its own dtype."""
    writer = gguf.GGUFWriter(str(path), arch)
    for key, value in metadata.items():
        key = key.format(arch=arch)
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        elif isinstance(value, str):
            writer.add_string(key, value)
        else:
            writer.add_array(key, list(value))
    for name, tensor in tensors.items():
        if isinstance(tensor, tuple):
            writer.add_tensor(name, tensor[0], raw_dtype=tensor[1])
        else:
            writer.add_tensor(name, tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_permutation_round_trip():
    rng = torch.Generator().manual_seed(0)
    weight = torch.randn(3 * 8, 5, generator=rng)  # [H * D, C], H=3, D=8
    permuted = llama_cpp_permute_qk(weight, num_heads=3)
    assert not torch.equal(permuted, weight)
    assert torch.equal(llama_cpp_unpermute_qk(permuted, num_heads=3), weight)
    bias = torch.randn(3 * 8, generator=rng)
    unpermuted = llama_cpp_unpermute_qk(llama_cpp_permute_qk(bias, num_heads=3), num_heads=3)
    assert torch.equal(unpermuted, bias)

    # One head of 4 rows: rotary pairs (0, 2) and (1, 3) become adjacent.
    rows = torch.arange(4.0)[:, None]
    assert llama_cpp_permute_qk(rows, num_heads=1).flatten().tolist() == [0, 2, 1, 3]

    # The same inverse as transformers' (K of a grouped-query model: 2 KV heads).
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    stored = torch.randn(2 * 8, 5, generator=rng)
    theirs = LlamaTensorProcessor()._reverse_permute_weights(stored.numpy(), 6, 2)
    assert torch.equal(llama_cpp_unpermute_qk(stored, num_heads=2), torch.from_numpy(theirs))


def _k_quant_blocks(qtype: gguf.GGMLQuantizationType, rows: int, rng) -> np.ndarray:
    """Random K-quant blocks with finite fp16 scales (gguf cannot quantize K types)."""
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, size=(rows, 256 // block_size * type_size), dtype=np.uint8)
    view = blocks.reshape(-1, type_size)
    scale_offsets = {Q.Q2_K: (80, 82), Q.Q3_K: (108,), Q.Q4_K: (0, 2), Q.Q5_K: (0, 2)}
    for offset in scale_offsets.get(qtype, (208,)):  # Q6_K keeps d at byte 208
        scales = rng.uniform(0.001, 0.1, size=view.shape[0]).astype(np.float16)
        view[:, offset : offset + 2] = scales.view(np.uint8).reshape(-1, 2)
    return blocks


def test_dequantization_known_values(tmp_path):
    from transformers.integrations.gguf.dequant import dequantize as torch_dequantize

    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 256)).astype(np.float32)  # [out, in]
    quantizable = (Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1)
    k_quants = (Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K)
    tensors: dict[str, Any] = {"f32": x, "f16": x.astype(np.float16)}
    tensors.update({t.name: (gguf.quants.quantize(x, t), t) for t in quantizable})
    tensors.update({t.name: (_k_quant_blocks(t, 4, rng), t) for t in k_quants})
    # One hand-made Q8_0 block: d = 0.25, quants -16..15 -> values -4.0 .. 3.75.
    block = np.zeros(34, dtype=np.uint8)
    block[:2] = np.array([0.25], dtype=np.float16).view(np.uint8)
    block[2:] = np.arange(-16, 16, dtype=np.int8).view(np.uint8)
    tensors["q8_0_known"] = (block[None, :], Q.Q8_0)
    ckpt = GGUFCheckpoint(write_gguf(tmp_path / "quants.gguf", "llama", {}, tensors))

    assert torch.equal(ckpt.read_gguf_tensor("f32"), torch.from_numpy(x))
    assert torch.equal(ckpt.read_gguf_tensor("f16"), torch.from_numpy(x.astype(np.float16)).float())
    bf16 = torch.from_numpy(x).bfloat16().float()
    assert torch.equal(ckpt.read_gguf_tensor("BF16"), bf16)
    known = ckpt.read_gguf_tensor("q8_0_known")
    assert known.shape == (1, 32)
    assert known.flatten().tolist() == [q * 0.25 for q in range(-16, 16)]

    for qtype in quantizable[1:]:
        values = ckpt.read_gguf_tensor(qtype.name)
        assert values.shape == (4, 256) and values.dtype == torch.float32
        expected = gguf.quants.dequantize(gguf.quants.quantize(x, qtype), qtype)
        assert torch.equal(values, torch.from_numpy(expected)), qtype.name
        # within one quantization step of the input (step = block amax / 2^(bits - 1))
        bits = int(qtype.name[1])
        step = np.abs(x.reshape(-1, 32)).max(axis=1, keepdims=True) / 2 ** (bits - 1)
        error = np.abs(values.numpy().reshape(-1, 32) - x.reshape(-1, 32))
        assert (error <= step * 1.01).all(), qtype.name

    for qtype in (Q.Q8_0, Q.Q4_0, Q.Q4_1, *k_quants):
        raw = tensors[qtype.name][0]
        theirs = torch_dequantize(torch.from_numpy(raw).flatten(), int(qtype)).reshape(4, 256)
        ours = ckpt.read_gguf_tensor(qtype.name)
        assert ours.shape == (4, 256)
        assert torch.allclose(ours, theirs, rtol=1e-6, atol=1e-6), qtype.name


def _llama3_rope_freqs(head_dim: int, theta: float, scaling: Mapping[str, float]) -> np.ndarray:
    """The rope_freqs tensor llama.cpp's converter writes for Llama 3 rope scaling."""
    inv_freq = theta ** -(np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    original, factor = scaling["original_max_position_embeddings"], scaling["factor"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    out = []
    for wavelen in 2 * math.pi / inv_freq:
        if wavelen < original / high:
            out.append(1.0)
        elif wavelen > original / low:
            out.append(factor)
        else:
            smooth = (original / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def _linear(rng, out_features: int, in_features: int) -> np.ndarray:
    return rng.standard_normal((out_features, in_features)).astype(np.float32)


def test_llama_names_permutation_and_rope_scaling(tmp_path):
    rng = np.random.default_rng(1)
    layers, hidden, heads, kv_heads, head_dim, ffn, vocab = 2, 32, 4, 2, 64, 48, 40
    scaling = {
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    hf: dict[str, np.ndarray] = {
        "model.embed_tokens.weight": _linear(rng, vocab, hidden),
        "model.norm.weight": rng.standard_normal(hidden).astype(np.float32),
        "lm_head.weight": _linear(rng, vocab, hidden),
    }
    stored = {
        "token_embd.weight": hf["model.embed_tokens.weight"],
        "output_norm.weight": hf["model.norm.weight"],
        "output.weight": hf["lm_head.weight"],
        "rope_freqs.weight": _llama3_rope_freqs(head_dim, 500000.0, scaling),
    }
    for i in range(layers):
        p = f"model.layers.{i}."
        hf[p + "self_attn.q_proj.weight"] = _linear(rng, heads * head_dim, hidden)
        hf[p + "self_attn.k_proj.weight"] = _linear(rng, kv_heads * head_dim, hidden)
        hf[p + "mlp.down_proj.weight"] = _linear(rng, hidden, ffn)
        hf[p + "input_layernorm.weight"] = rng.standard_normal(hidden).astype(np.float32)
        q = llama_cpp_permute_qk(torch.from_numpy(hf[p + "self_attn.q_proj.weight"]), num_heads=4)
        k = llama_cpp_permute_qk(torch.from_numpy(hf[p + "self_attn.k_proj.weight"]), num_heads=2)
        stored[f"blk.{i}.attn_q.weight"] = q.numpy()
        stored[f"blk.{i}.attn_k.weight"] = k.numpy()
        stored[f"blk.{i}.ffn_down.weight"] = hf[p + "mlp.down_proj.weight"]
        stored[f"blk.{i}.attn_norm.weight"] = hf[p + "input_layernorm.weight"]
    metadata = {
        "{arch}.block_count": layers,
        "{arch}.embedding_length": hidden,
        "{arch}.feed_forward_length": ffn,
        "{arch}.attention.head_count": heads,
        "{arch}.attention.head_count_kv": kv_heads,
        "{arch}.attention.layer_norm_rms_epsilon": 1e-5,
        "{arch}.rope.freq_base": 500000.0,
        "{arch}.rope.dimension_count": head_dim,
        "{arch}.context_length": 131072,
    }
    ckpt = GGUFCheckpoint(write_gguf(tmp_path / "llama.gguf", "llama", metadata, stored))

    assert sorted(ckpt.tensor_names()) == sorted(hf)  # rope_freqs is derived, not a weight
    for name, expected in hf.items():
        assert ckpt.tensor_shape(name) == expected.shape
        assert torch.equal(ckpt.read_tensor(name), torch.from_numpy(expected)), name
    config = ckpt.hf_config()
    assert config["tie_word_embeddings"] is False
    assert config["head_dim"] == head_dim and config["num_key_value_heads"] == kv_heads
    recovered = config["rope_scaling"]
    assert recovered["rope_type"] == "llama3"
    for key, value in scaling.items():
        assert recovered[key] == pytest.approx(value, rel=1e-4), key


def test_gemma3_offset_and_config_on_a_small_file(tmp_path):
    rng = np.random.default_rng(2)
    layers, hidden, head_dim = 12, 16, 8
    norms = {
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "post_attention_norm",
        "pre_feedforward_layernorm": "ffn_norm",
        "post_feedforward_layernorm": "post_ffw_norm",
        "self_attn.q_norm": "attn_q_norm",
        "self_attn.k_norm": "attn_k_norm",
    }
    hf = {"model.norm.weight": rng.standard_normal(hidden).astype(np.float32)}
    stored = {"output_norm.weight": hf["model.norm.weight"] + 1}
    hf["model.embed_tokens.weight"] = stored["token_embd.weight"] = _linear(rng, 24, hidden)
    for i in range(layers):
        for hf_name, gguf_name in norms.items():
            size = head_dim if hf_name.startswith("self_attn.") else hidden
            weight = rng.standard_normal(size).astype(np.float32)
            hf[f"model.layers.{i}.{hf_name}.weight"] = weight
            stored[f"blk.{i}.{gguf_name}.weight"] = weight + 1
        hf[f"model.layers.{i}.self_attn.q_proj.weight"] = _linear(rng, 2 * head_dim, hidden)
        stored[f"blk.{i}.attn_q.weight"] = hf[f"model.layers.{i}.self_attn.q_proj.weight"]
    metadata = {
        "{arch}.block_count": layers,
        "{arch}.embedding_length": hidden,
        "{arch}.feed_forward_length": 32,
        "{arch}.attention.head_count": 2,
        "{arch}.attention.head_count_kv": 1,
        "{arch}.attention.key_length": head_dim,
        "{arch}.attention.layer_norm_rms_epsilon": 1e-6,
        "{arch}.attention.sliding_window": 4,
        "{arch}.rope.freq_base": 1e6,
        "{arch}.rope.freq_base_swa": 5e3,
        "{arch}.rope.scaling.type": "linear",
        "{arch}.rope.scaling.factor": 8.0,
        "{arch}.final_logit_softcapping": 30.0,
    }
    ckpt = GGUFCheckpoint(write_gguf(tmp_path / "gemma3.gguf", "gemma3", metadata, stored))

    assert sorted(ckpt.tensor_names()) == sorted(hf)
    for name, expected in hf.items():
        assert torch.allclose(ckpt.read_tensor(name), torch.from_numpy(expected), atol=1e-6), name
    config = ckpt.hf_config()
    assert config["layer_types"] == (["sliding_attention"] * 5 + ["full_attention"]) * 2
    assert config["query_pre_attn_scalar"] == head_dim
    assert config["rope_local_base_freq"] == 5e3
    assert config["rope_scaling"] == {"rope_type": "linear", "factor": 8.0}
    assert config["final_logit_softcapping"] == 30.0
    assert config["attn_logit_softcapping"] is None


def test_phi2_fused_qkv_and_qwen2_biases(tmp_path):
    rng = np.random.default_rng(3)
    hidden, heads = 16, 4
    q, k, v = (_linear(rng, hidden, hidden) for _ in range(3))
    bias = rng.standard_normal(3 * hidden).astype(np.float32)
    phi2 = {
        "token_embd.weight": _linear(rng, 20, hidden),
        "output_norm.weight": np.ones(hidden, np.float32),
        "output_norm.bias": np.zeros(hidden, np.float32),
        "output.weight": _linear(rng, 20, hidden),
        "output.bias": np.zeros(20, np.float32),
        "blk.0.attn_qkv.weight": np.concatenate([q, k, v]),
        "blk.0.attn_qkv.bias": bias,
        "blk.0.attn_output.weight": _linear(rng, hidden, hidden),
        "blk.0.ffn_up.weight": _linear(rng, 64, hidden),
        "blk.0.ffn_down.weight": _linear(rng, hidden, 64),
    }
    metadata = {
        "{arch}.block_count": 1,
        "{arch}.embedding_length": hidden,
        "{arch}.feed_forward_length": 64,
        "{arch}.attention.head_count": heads,
        "{arch}.attention.head_count_kv": heads,
        "{arch}.attention.layer_norm_epsilon": 1e-5,
        "{arch}.rope.dimension_count": 2,
    }
    ckpt = GGUFCheckpoint(write_gguf(tmp_path / "phi2.gguf", "phi2", metadata, phi2))
    config = ckpt.hf_config()
    assert config["architectures"] == ["PhiForCausalLM"]
    assert config["partial_rotary_factor"] == 0.5 and config["layer_norm_eps"] == pytest.approx(
        1e-5
    )
    assert "rms_norm_eps" not in config and config["tie_word_embeddings"] is False
    prefix = "model.layers.0."
    for i, (part, weight) in enumerate(zip("qkv", (q, k, v), strict=True)):
        name = f"{prefix}self_attn.{part}_proj"
        assert torch.equal(ckpt.read_tensor(name + ".weight"), torch.from_numpy(weight))
        expected_bias = torch.from_numpy(bias[i * hidden : (i + 1) * hidden])
        assert torch.equal(ckpt.read_tensor(name + ".bias"), expected_bias)
        assert ckpt.tensor_shape(name + ".weight") == (hidden, hidden)
    names = set(ckpt.tensor_names())
    assert {f"{prefix}self_attn.dense.weight", f"{prefix}mlp.fc1.weight"} <= names
    assert {"model.final_layernorm.bias", "lm_head.bias"} <= names

    qwen2 = {
        "token_embd.weight": _linear(rng, 20, hidden),
        "blk.0.attn_q.weight": q,
        "blk.0.attn_q.bias": bias[:hidden],
    }
    metadata = {
        "{arch}.block_count": 1,
        "{arch}.embedding_length": hidden,
        "{arch}.feed_forward_length": 64,
        "{arch}.attention.head_count": heads,
        "{arch}.attention.head_count_kv": 2,
        "{arch}.attention.layer_norm_rms_epsilon": 1e-6,
    }
    ckpt = GGUFCheckpoint(write_gguf(tmp_path / "qwen2.gguf", "qwen2", metadata, qwen2))
    assert ckpt.hf_config()["attention_bias"] is True
    assert ckpt.hf_config()["architectures"] == ["Qwen2ForCausalLM"]
    # No llama.cpp permutation outside the Llama family.
    assert torch.equal(ckpt.read_tensor(f"{prefix}self_attn.q_proj.weight"), torch.from_numpy(q))
    assert torch.equal(
        ckpt.read_tensor(f"{prefix}self_attn.q_proj.bias"), torch.from_numpy(bias[:hidden])
    )


def test_user_errors_name_the_bad_value(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.gguf"):
        GGUFCheckpoint(tmp_path / "nothing.gguf")

    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="not a GGUF file"):
        GGUFCheckpoint(text)

    f64 = {"token_embd.weight": np.zeros((4, 8), np.float64)}
    ckpt = GGUFCheckpoint(write_gguf(tmp_path / "f64.gguf", "llama", {}, f64))
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(ckpt.path.read_bytes()[:100])
    with pytest.raises(ValueError, match="cut.gguf' cannot be read"):
        GGUFCheckpoint(cut)
    with pytest.raises(NotImplementedError, match=r"F64 .* is not supported yet: .*Q4_K"):
        ckpt.read_gguf_tensor("token_embd.weight")
    with pytest.raises(KeyError, match="not_there"):
        ckpt.read_gguf_tensor("not_there")

    metadata = {"{arch}.block_count": 1}
    mamba = GGUFCheckpoint(write_gguf(tmp_path / "mamba.gguf", "mamba", metadata, f64))
    assert mamba.architecture == "mamba"
    with pytest.raises(
        ValueError, match="mamba.gguf.*'mamba' is not supported; supported: .*llama"
    ):
        mamba.hf_config()
    with pytest.raises(ValueError, match="'mamba'"):
        mamba.tensor_names()
