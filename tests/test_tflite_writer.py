"""The `.tflite` writer and inspector, checked against ai-edge-litert's Interpreter.

Models are built by hand with `ModelBuilder` (no torch involved): two signatures over two
subgraphs sharing weights, a KV-cache-style DYNAMIC_UPDATE_SLICE whose output carries the
input's name (as LiteRT-LM requires), and quantized FULLY_CONNECTED weights.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")

from ai_edge_litert.interpreter import Interpreter, OpResolverType  # noqa: E402

from genapi.export.inspect import _summarise, format_report, inspect_model  # noqa: E402
from genapi.export.tflite_writer import (  # noqa: E402
    DATA_ALIGNMENT,
    INT4,
    LazyBuffer,
    ModelBuilder,
    Quantization,
    pack_int4,
    schema,
)

C_IN, C_OUT, S = 16, 8, 12  # input features, output features, cache length
PREFILL_T = 4


def _weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "w": rng.standard_normal((C_OUT, C_IN)).astype(np.float32),
        "b": rng.standard_normal(C_OUT).astype(np.float32),
        "shift": rng.standard_normal(C_OUT).astype(np.float32),
    }


def _build(weights: dict[str, np.ndarray], *, lazy_w: LazyBuffer | None = None) -> ModelBuilder:
    """prefill_4 and decode: out = x @ w.T + b + shift; cache[:, pos:pos+T] = out."""
    s = schema()
    mb = ModelBuilder(description="genapi test")
    for key, t in (("prefill_4", PREFILL_T), ("decode", 1)):
        g = mb.subgraph(key)
        x = g.add_tensor("x", [1, t, C_IN], np.float32)
        cache = g.add_tensor("cache", [1, S, C_OUT], np.float32)
        start = g.add_tensor("start", [3], np.int32)
        w = g.add_constant("w", lazy_w if lazy_w is not None else weights["w"], key="fc.w")
        b = g.add_constant("b", weights["b"], key="fc.b")
        shift = g.add_constant("shift", weights["shift"], key="shift")
        h = g.add_tensor("h", [1, t, C_OUT], np.float32)
        out = g.add_tensor("out", [1, t, C_OUT], np.float32)
        new_cache = g.add_tensor("new_cache", [1, S, C_OUT], np.float32)

        fc = s.FullyConnectedOptionsT()
        fc.keepNumDims = True
        g.add_operator("FULLY_CONNECTED", [x, w, b], [h], options=fc)
        g.add_operator("ADD", [h, shift], [out], options=s.AddOptionsT())
        g.add_operator("DYNAMIC_UPDATE_SLICE", [cache, out, start], [new_cache])
        mb.add_signature(
            key,
            g,
            inputs={"x": x, "cache": cache, "start": start},
            outputs={"out": out, "cache": new_cache},
        )
    mb.add_metadata("genapi_test", b"hello")
    return mb


def _reference(weights, x, cache, pos):
    out = x @ weights["w"].T + weights["b"] + weights["shift"]
    new_cache = cache.copy()
    new_cache[:, pos : pos + x.shape[1]] = out
    return out, new_cache


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    weights = _weights()
    path = tmp_path_factory.mktemp("model") / "two_signatures.tflite"
    _build(weights).write(path)
    return path, weights


def test_signatures_run_and_match_numpy(model_file):
    path, weights = model_file
    interpreter = Interpreter(model_path=str(path))
    signatures = interpreter.get_signature_list()
    assert set(signatures) == {"prefill_4", "decode"}
    for sig in signatures.values():
        # The cache goes in and comes out under one name: the LiteRT-LM contract.
        assert sorted(sig["inputs"]) == ["cache", "start", "x"]
        assert sorted(sig["outputs"]) == ["cache", "out"]

    rng = np.random.default_rng(1)
    cache = np.zeros((1, S, C_OUT), np.float32)
    for key, t, pos in (("prefill_4", PREFILL_T, 0), ("decode", 1, PREFILL_T)):
        x = rng.standard_normal((1, t, C_IN)).astype(np.float32)
        got = interpreter.get_signature_runner(key)(
            x=x, cache=cache, start=np.array([0, pos, 0], np.int32)
        )
        want_out, want_cache = _reference(weights, x, cache, pos)
        assert np.abs(got["out"] - want_out).max() <= 1e-5
        assert np.abs(got["cache"] - want_cache).max() <= 1e-5
        cache = got["cache"]  # feed decode the cache prefill returned
    assert np.abs(cache[:, PREFILL_T + 1 :]).max() == 0


def test_weights_are_stored_once(model_file):
    path, weights = model_file
    info = inspect_model(path)
    assert info["weight_bytes"] == sum(a.nbytes for a in weights.values())
    assert info["num_buffers"] == 1 + len(weights) + 1  # sentinel, weights, metadata

    model = schema().Model.GetRootAs(path.read_bytes(), 0)
    fc_weight_buffers = set()
    for g in range(model.SubgraphsLength()):
        sub = model.Subgraphs(g)
        fc = sub.Operators(0)
        fc_weight_buffers.add(sub.Tensors(fc.Inputs(1)).Buffer())
    assert len(fc_weight_buffers) == 1


def test_buffers_follow_the_flatbuffer_aligned(model_file):
    path, weights = model_file
    data = path.read_bytes()
    model = schema().Model.GetRootAs(data, 0)
    assert model.Version() == 3
    assert model.Description() == b"genapi test"

    regions = []
    for i in range(model.BuffersLength()):
        buffer = model.Buffers(i)
        assert buffer.DataLength() == 0  # nothing inline
        if buffer.Size():
            assert buffer.Offset() % DATA_ALIGNMENT == 0
            regions.append((buffer.Offset(), buffer.Size()))
    assert regions == sorted(regions)
    for (offset, size), (next_offset, _) in zip(regions, regions[1:], strict=False):
        assert offset + size <= next_offset
    assert regions[-1][0] + regions[-1][1] == len(data)

    first = regions[0][0]
    stored = {bytes(data[o : o + n]) for o, n in regions}
    assert {a.tobytes() for a in weights.values()} | {b"hello"} == stored

    # The whole flatbuffer lies before the first data region: reading every signature, tensor
    # and operator from the truncated prefix must not run past its end.
    prefix_summary = _summarise(schema().Model.GetRootAs(data[:first], 0))
    assert prefix_summary["signatures"] == inspect_model(path)["signatures"]


def test_identical_builds_give_identical_bytes(tmp_path):
    first, second = tmp_path / "a.tflite", tmp_path / "b.tflite"
    _build(_weights()).write(first)
    _build(_weights()).write(second)
    assert first.read_bytes() == second.read_bytes()
    assert _build(_weights()).to_bytes() == first.read_bytes()


def test_lazy_buffer_is_produced_once_at_write(tmp_path):
    weights = _weights()
    calls = []

    def produce():
        calls.append(1)
        return weights["w"]

    lazy = LazyBuffer(weights["w"].nbytes, np.float32, produce, shape=weights["w"].shape)
    mb = _build(weights, lazy_w=lazy)
    assert calls == []
    path = tmp_path / "lazy.tflite"
    mb.write(path)
    assert calls == [1]  # two subgraphs, one shared buffer, one call
    assert path.read_bytes() == _build(weights).to_bytes()


def test_failed_write_leaves_nothing(tmp_path):
    def produce():
        raise RuntimeError("conversion failed")

    lazy = LazyBuffer(C_OUT * C_IN * 4, np.float32, produce, shape=(C_OUT, C_IN))
    mb = _build(_weights(), lazy_w=lazy)
    with pytest.raises(RuntimeError, match="conversion failed"):
        mb.write(tmp_path / "broken.tflite")
    assert os.listdir(tmp_path) == []


def test_lazy_buffer_of_wrong_size_is_rejected(tmp_path):
    lazy = LazyBuffer(C_OUT * C_IN * 4, np.float32, lambda: np.zeros(3, np.float32), shape=(8, 16))
    with pytest.raises(ValueError, match="promised"):
        _build(_weights(), lazy_w=lazy).write(tmp_path / "wrong.tflite")
    assert os.listdir(tmp_path) == []


def test_inspect_reports_signatures_and_ops(model_file):
    path, _ = model_file
    info = inspect_model(path)
    json.dumps(info)  # must be serialisable as is
    assert info["num_subgraphs"] == 2
    assert info["file_size"] == path.stat().st_size
    assert info["metadata"] == {"genapi_test": 5}
    assert [s["key"] for s in info["signatures"]] == ["prefill_4", "decode"]
    prefill, decode = info["signatures"]
    assert [(e["name"], e["shape"], e["dtype"]) for e in prefill["inputs"]] == [
        ("x", [1, PREFILL_T, C_IN], "float32"),
        ("cache", [1, S, C_OUT], "float32"),
        ("start", [3], "int32"),
    ]
    assert [(e["name"], e["shape"]) for e in decode["outputs"]] == [
        ("out", [1, 1, C_OUT]),
        ("cache", [1, S, C_OUT]),
    ]
    for sig in info["signatures"]:
        assert sig["ops"] == {"ADD": 1, "DYNAMIC_UPDATE_SLICE": 1, "FULLY_CONNECTED": 1}
        assert sig["num_ops"] == 3
    report = format_report(info)
    assert "signature 'decode'" in report and "DYNAMIC_UPDATE_SLICE" in report


def test_operator_codes_are_deduplicated_and_extended(model_file):
    path, _ = model_file
    model = schema().Model.GetRootAs(path.read_bytes(), 0)
    codes = [model.OperatorCodes(i) for i in range(model.OperatorCodesLength())]
    assert len(codes) == 3  # six operators, three kinds
    dus = schema().BuiltinOperator.DYNAMIC_UPDATE_SLICE
    assert [(c.DeprecatedBuiltinCode(), c.BuiltinCode()) for c in codes][2] == (127, dus)


def test_bad_calls_name_the_problem():
    s = schema()
    mb = ModelBuilder()
    g = mb.subgraph("main")
    x = g.add_tensor("x", [2], np.float32)
    with pytest.raises(ValueError, match="NOT_AN_OP"):
        g.add_operator("NOT_AN_OP", [x], [x])
    with pytest.raises(ValueError, match="out of range"):
        g.add_operator("ADD", [x, 5], [x])
    with pytest.raises(NotImplementedError, match="builtin_options_2"):
        g.add_operator("STABLEHLO_CONCATENATE", [x], [x], options=s.StablehloConcatenateOptionsT())
    with pytest.raises(ValueError, match="not an object-API"):
        g.add_operator("ADD", [x, x], [x], options=object())
    mb.add_buffer(np.zeros(4, np.float32), key="k")
    with pytest.raises(ValueError, match="first used"):
        mb.add_buffer(np.zeros(5, np.float32), key="k")
    with pytest.raises(ValueError, match="no TFLite tensor type"):
        g.add_tensor("c", [1], np.complex128)


def test_pack_int4_low_nibble_first():
    packed = pack_int4(np.array([1, -1, -8, 7, 3], np.int8))
    assert packed.tolist() == [0xF1, 0x78, 0x03]
    with pytest.raises(ValueError, match=r"\[-8, 7\]"):
        pack_int4(np.array([8], np.int8))


def _single_fc(weight_fn, path) -> None:
    s = schema()
    mb = ModelBuilder()
    g = mb.subgraph("main")
    x = g.add_tensor("x", [1, 3, 64], np.float32)
    w = weight_fn(g)
    y = g.add_tensor("y", [1, 3, C_OUT], np.float32)
    fc = s.FullyConnectedOptionsT()
    fc.keepNumDims = True
    g.add_operator("FULLY_CONNECTED", [x, w, -1], [y], options=fc, version=5)
    mb.add_signature("main", g, inputs={"x": x}, outputs={"y": y})
    mb.write(path)


def _run_fc(path, x, *, xnnpack: bool) -> np.ndarray:
    kwargs = {} if xnnpack else {"experimental_op_resolver_type": _NO_DELEGATES}
    return Interpreter(model_path=str(path), **kwargs).get_signature_runner("main")(x=x)["y"]


_NO_DELEGATES = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES


def _binary_input() -> np.ndarray:
    # Hybrid kernels quantize activations to int8 per row; 0/1 rows with a 1 in them quantize
    # exactly under both symmetric and asymmetric schemes, so outputs can be compared tightly.
    x = (np.random.default_rng(2).random((1, 3, 64)) < 0.5).astype(np.float32)
    x[..., 0] = 1
    return x


def _bfloat16_round(a: np.ndarray) -> np.ndarray:
    bits = a.astype(np.float32).view(np.uint32)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return rounded.astype(np.uint32).view(np.float32)


@pytest.mark.parametrize("xnnpack", [True, False], ids=["xnnpack", "builtin"])
def test_hybrid_int8_per_channel_fully_connected(tmp_path, xnnpack):
    w = np.random.default_rng(3).standard_normal((C_OUT, 64)).astype(np.float32)
    scale = (np.abs(w).max(1) / 127).astype(np.float32)
    q = np.round(w / scale[:, None]).astype(np.int8)
    quant = Quantization(scale, np.zeros(C_OUT, np.int64), quantized_dimension=0)
    path = tmp_path / "int8.tflite"
    _single_fc(lambda g: g.add_constant("w", q, quantization=quant), path)

    x = _binary_input()
    want = x @ (q * scale[:, None]).T
    assert np.abs(_run_fc(path, x, xnnpack=xnnpack) - want).max() <= 1e-4


@pytest.mark.parametrize("xnnpack", [True, False], ids=["xnnpack", "builtin"])
def test_int4_blockwise_fully_connected(tmp_path, xnnpack):
    block = 32
    w = np.random.default_rng(4).standard_normal((C_OUT, 64)).astype(np.float32)
    blocks = w.reshape(C_OUT, 64 // block, block)
    scale = (np.abs(blocks).max(2) / 7).astype(np.float16)
    q = np.clip(np.round(blocks / scale[..., None].astype(np.float32)), -8, 7).astype(np.int8)
    quant = Quantization(scale, np.zeros(0, np.int64), block_size=block)
    path = tmp_path / "int4.tflite"
    _single_fc(
        lambda g: g.add_constant("w", q.reshape(C_OUT, 64), dtype=INT4, quantization=quant), path
    )
    info = inspect_model(path)
    assert info["weight_bytes"] == C_OUT * 64 // 2 + scale.nbytes

    # XNNPACK rounds the fp16 block scales to bfloat16; the builtin kernel uses them as stored.
    used = _bfloat16_round(scale) if xnnpack else scale.astype(np.float32)
    want = _binary_input() @ (q * used[..., None]).reshape(C_OUT, 64).T
    assert np.abs(_run_fc(path, _binary_input(), xnnpack=xnnpack) - want).max() <= 1e-4


def test_blockwise_scales_are_shared_with_their_weight():
    q = np.zeros((C_OUT, 64), np.int8)
    quant = Quantization(np.ones((C_OUT, 2), np.float16), np.zeros(0, np.int64), block_size=32)
    mb = ModelBuilder()
    for key in ("a", "b"):
        g = mb.subgraph(key)
        g.add_constant("w", q, key="w", dtype=INT4, quantization=quant)
    assert mb.num_buffers == 3  # sentinel, packed weight, scales
    with pytest.raises(ValueError, match="must divide"):
        bad = Quantization(quant.scale, quant.zero_point, block_size=48)
        mb.subgraph("c").add_constant("w", q, dtype=INT4, quantization=bad)


def test_temporaries_of_a_killed_conversion_are_removed_by_the_next(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    stale = tmp_path / f".model.tflite.genapi-tmp-{dead.stdout.strip()}"
    stale.write_bytes(b"half a file")
    live = tmp_path / f".other.tflite.genapi-tmp-{os.getpid()}"
    live.write_bytes(b"still being written")
    builder = ModelBuilder()
    graph = builder.subgraph("main")
    x = graph.add_tensor("x", (1, 4), np.float32)
    y = graph.add_tensor("y", (1, 4), np.float32)
    graph.add_operator("RELU", [x], [y])
    builder.add_signature("serving_default", graph, inputs={"x": x}, outputs={"y": y})
    builder.write(tmp_path / "model.tflite")
    assert not stale.exists() and live.exists()
