"""`genapi.convert` on vision networks: ResNet-18 and MobileNetV3-Small against PyTorch in
ai-edge-litert (fp32 and dynamic_int8), the layout handling (few TRANSPOSE ops), single ops
and their options, names, export, and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from vision_models import MobileNetV3Small, ResNet18, images, seeded

pytest.importorskip("ai_edge_litert")

from ai_edge_litert.interpreter import Interpreter  # noqa: E402

import genapi  # noqa: E402
from genapi.export.inspect import inspect_model  # noqa: E402
from genapi.export.lower import (  # noqa: E402
    Const,
    LoweringContext,
    LoweringError,
    lower_program,
)
from genapi.export.lowerings_vision import LAYOUT_LOWERINGS  # noqa: E402, F401
from genapi.export.tflite_writer import ModelBuilder, schema  # noqa: E402

SIZE = 128  # input resolution of the test networks
NUM_INPUTS = 100  # seeded random inputs for the int8 figures
TOLERANCE = 1e-4  # fp32: max |tflite - torch| / max |torch|


def _rel_error(out, ref) -> float:
    return float((torch.as_tensor(out) - ref).abs().max() / ref.abs().max())


def _snr_db(signal: torch.Tensor, approx: torch.Tensor) -> float:
    return float(10 * torch.log10(signal.pow(2).sum() / (approx - signal).pow(2).sum()))


def _ops(path) -> dict[str, int]:
    return inspect_model(path)["signatures"][0]["ops"]


def _run_each(edge, inputs: torch.Tensor) -> torch.Tensor:
    return torch.cat([edge(inputs[i : i + 1]) for i in range(len(inputs))])


def _filter_types(content: bytes) -> dict[str, list[tuple[str, int]]]:
    """Op name -> (weight tensor type, quantized dimension) of each conv / FC in the file."""
    s = schema()
    model = s.Model.GetRootAs(content, 0)
    names = {v: k for k, v in vars(s.BuiltinOperator).items() if k.isupper()}
    types = {v: k for k, v in vars(s.TensorType).items() if k.isupper()}
    graph = model.Subgraphs(0)
    found: dict[str, list[tuple[str, int]]] = {}
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        name = names[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())]
        if name in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            weight = graph.Tensors(op.Inputs(1))
            quant = weight.Quantization()
            dim = quant.QuantizedDimension() if quant is not None else -1
            found.setdefault(name, []).append((types[weight.Type()], dim))
    return found


# -- ResNet-18 -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet():
    return seeded(ResNet18, seed=1, size=SIZE)


@pytest.fixture(scope="module")
def resnet_inputs():
    return images(NUM_INPUTS, SIZE, seed=7)


@pytest.fixture(scope="module")
def resnet_fp32(resnet, resnet_inputs, tmp_path_factory):
    edge = genapi.convert(resnet, (resnet_inputs[:1],))
    path = edge.export(tmp_path_factory.mktemp("resnet") / "resnet18.tflite")
    return edge, path, _run_each(edge, resnet_inputs)


@pytest.fixture(scope="module")
def resnet_int8(resnet, resnet_inputs, tmp_path_factory):
    edge = genapi.convert(resnet, (resnet_inputs[:1],), quantize="dynamic_int8")
    path = edge.export(tmp_path_factory.mktemp("resnet") / "resnet18_int8.tflite")
    return edge, path, _run_each(edge, resnet_inputs)


@pytest.fixture(scope="module")
def resnet_reference(resnet, resnet_inputs):
    with torch.no_grad():
        return resnet(resnet_inputs)


def test_resnet18_fp32_matches_pytorch(resnet_fp32, resnet_reference):
    edge, path, outputs = resnet_fp32
    ops = _ops(path)
    print(
        f"ResNet-18 fp32: error {_rel_error(outputs, resnet_reference):.2e} of the largest output, "
        f"{ops.get('TRANSPOSE', 0)} TRANSPOSE of {sum(ops.values())} ops"
    )
    assert _rel_error(outputs, resnet_reference) <= TOLERANCE
    assert ops.get("TRANSPOSE", 0) <= 2, ops
    assert ops["CONV_2D"] == 20 and "BATCH_NORM" not in ops  # batch norms folded
    info = inspect_model(path)["signatures"][0]
    assert info["key"] == "serving_default"
    assert [(i["name"], i["shape"]) for i in info["inputs"]] == [("x", [1, 3, SIZE, SIZE])]
    assert [(o["name"], o["shape"]) for o in info["outputs"]] == [("output", [1, 1000])]


def test_resnet18_dynamic_int8(resnet_fp32, resnet_int8):
    _, fp32_path, fp32 = resnet_fp32
    edge, int8_path, int8 = resnet_int8
    ratio = int8_path.stat().st_size / fp32_path.stat().st_size
    assert ratio <= 0.27, ratio
    assert _snr_db(fp32, int8) >= 30.0
    fp32_top1, int8_top1 = fp32.argmax(1), int8.argmax(1)
    agreement = float((fp32_top1 == int8_top1).float().mean())
    print(
        f"ResNet-18 dynamic_int8: {100 * ratio:.1f}% of fp32, SNR {_snr_db(fp32, int8):.1f} dB, "
        f"{len(set(fp32_top1.tolist()))} fp32 classes, top-1 agreement {100 * agreement:.0f}%"
    )
    assert len(set(fp32_top1.tolist())) >= 10
    assert float((fp32_top1 == int8_top1).float().mean()) >= 0.95
    weights = _filter_types(edge.content)
    # The stem (3 input channels) stays float; every other conv and the classifier are int8.
    assert weights["CONV_2D"][0] == ("FLOAT32", -1)
    assert set(weights["CONV_2D"][1:]) == {("INT8", 0)}
    assert weights["FULLY_CONNECTED"] == [("INT8", 0)]


# -- MobileNetV3-Small ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mobilenet():
    return seeded(MobileNetV3Small, seed=2, size=SIZE)


@pytest.fixture(scope="module")
def mobilenet_inputs():
    return images(8, SIZE, seed=11)


@pytest.fixture(scope="module")
def mobilenet_fp32(mobilenet, mobilenet_inputs):
    edge = genapi.convert(mobilenet, (mobilenet_inputs[:1],))
    return edge, _run_each(edge, mobilenet_inputs)


def test_mobilenet_v3_small_fp32_matches_pytorch(
    mobilenet, mobilenet_inputs, mobilenet_fp32, tmp_path
):
    edge, outputs = mobilenet_fp32
    with torch.no_grad():
        reference = mobilenet(mobilenet_inputs)
    assert _rel_error(outputs, reference) <= TOLERANCE
    ops = _ops(edge.export(tmp_path / "mobilenet.tflite"))
    assert ops.get("TRANSPOSE", 0) <= 2, ops
    assert ops["DEPTHWISE_CONV_2D"] == 11 and ops["HARD_SWISH"] > 0


def test_mobilenet_v3_small_dynamic_int8_uses_hybrid_depthwise(
    mobilenet, mobilenet_inputs, mobilenet_fp32
):
    fp32, fp32_outputs = mobilenet_fp32
    int8 = genapi.convert(mobilenet, (mobilenet_inputs[:1],), quantize="dynamic_int8")
    weights = _filter_types(int8.content)
    # Depthwise filters [1, KH, KW, C] carry their channel on the last axis.
    assert ("INT8", 3) in weights["DEPTHWISE_CONV_2D"]
    assert ("INT8", 0) in weights["CONV_2D"] and ("INT8", 0) in weights["FULLY_CONNECTED"]
    assert len(int8.content) <= 0.3 * len(fp32.content)
    # MobileNets lose more to int8 activations than ResNets; this checks the hybrid kernels
    # run and compute the right thing, not a quality bar.
    assert _snr_db(fp32_outputs, _run_each(int8, mobilenet_inputs)) >= 15


# -- single ops and options ----------------------------------------------------------------------


class OpZoo(nn.Module):
    """Ops and options the two networks do not cover, in one graph kept NHWC inside."""

    def __init__(self):
        super().__init__()
        self.grouped = nn.Conv2d(8, 12, 3, padding=1, groups=2)
        self.dilated = nn.Conv2d(12, 12, 3, padding=2, dilation=2, bias=False)
        self.depthwise_multiplier = nn.Conv2d(12, 24, 5, stride=2, padding=2, groups=12)
        self.strided = nn.Conv2d(24, 16, 3, stride=2, padding="valid")
        self.same = nn.Conv2d(16, 16, 3, padding="same")
        self.bn = nn.BatchNorm2d(16)
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 16).reshape(16, 1, 1))
        self.head = nn.Linear(16, 5)

    def forward(self, x):  # x: [1, 8, 20, 20]
        y = F.leaky_relu(self.grouped(x), 0.1)
        y = torch.tanh(self.dilated(y)) + F.gelu(y)
        y = F.silu(self.depthwise_multiplier(y))  # [1, 24, 10, 10]
        z = F.avg_pool2d(y, 3, stride=1, padding=1)  # counts the padding
        z = z + F.avg_pool2d(y, 3, stride=1, padding=1, count_include_pad=False)
        z = F.max_pool2d(z, 3, stride=2, ceil_mode=True)  # [1, 24, 5, 5]
        up = F.interpolate(z, scale_factor=2, mode="nearest")  # [1, 24, 10, 10]
        up = up + F.interpolate(z, size=(10, 10), mode="bilinear", align_corners=False)
        up = up - F.interpolate(z, size=(10, 10), mode="bilinear", align_corners=True) / 3
        y = torch.cat([y, torch.sigmoid(up)], dim=1)[:, 8:40]  # slice along channels
        y = self.strided(y[:, :24])  # [1, 16, 4, 4]
        y = self.bn(self.same(y) + y) * self.scale  # batch norm that cannot be folded
        y = torch.clamp(F.hardtanh(y, -2.0, 2.0), min=-1.5)
        pooled = F.adaptive_avg_pool2d(y, 2)  # [1, 16, 2, 2]
        probs = torch.softmax(pooled, dim=1)  # over channels: the last NHWC axis
        features = probs.mean(dim=(2, 3)) + y.amax(dim=(2, 3))
        return {"logits": self.head(features), "map": F.relu6(pooled * 3)}


def test_op_zoo_matches_pytorch():
    torch.manual_seed(3)
    model = OpZoo().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(1, 8, 20, 20, generator=torch.Generator().manual_seed(0))
    edge = genapi.convert(model, (x,))
    with torch.no_grad():
        reference = model(x)
    out = edge(x)
    assert edge.output_names == ["logits", "map"]
    for name in ("logits", "map"):
        assert out[name].shape == reference[name].shape
        assert _rel_error(out[name], reference[name]) <= TOLERANCE, name


def test_vision_ops_in_the_plain_lowering_keep_pytorch_layout():
    """Registered into the shared table, the vision ops also serve `lower_program` (which
    tracks no layouts): each transposes in and out, and the result is still right."""
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.BatchNorm2d(6), nn.Hardswish(),
        nn.MaxPool2d(2), nn.Conv2d(6, 6, 3, padding=1, groups=6),
    ).eval()  # fmt: skip
    x = torch.randn(1, 3, 12, 12)
    with torch.no_grad():
        program = torch.export.export(model, (x,))
        reference = model(x)
    builder = ModelBuilder()
    graph = builder.subgraph("main")
    ctx = LoweringContext(model=builder, graph=graph)
    user = [s for s in program.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    image = ctx.input_tensor("x", tuple(x.shape), torch.float32)
    state = program.state_dict

    def param(name):
        return Const(key=name, shape=tuple(state[name].shape), dtype=torch.float32,
                     produce=lambda name=name: state[name].detach())  # fmt: skip

    (out,) = lower_program(
        program, ctx, inputs={user[0].arg.name: image}, params=param, buffers=param
    )
    ctx.finish([out.index])
    builder.add_signature("main", graph, inputs={"x": image.index}, outputs={"y": out.index})
    runner = Interpreter(model_content=builder.to_bytes()).get_signature_runner("main")
    assert _rel_error(runner(x=x.numpy())["y"], reference) <= TOLERANCE


def test_interpolate_fractional_scale_is_refused():
    class Resize(nn.Module):
        def forward(self, x):
            return F.interpolate(x, scale_factor=1.5, mode="nearest")

    with pytest.raises(LoweringError, match="pass size="):
        genapi.convert(Resize(), (torch.randn(1, 2, 5, 5),))


# -- API -----------------------------------------------------------------------------------------


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, image, bias):
        return self.conv(image) + bias, image.mean()


def test_names_numpy_inputs_and_export(tmp_path):
    model = TwoInputs().eval()
    image, bias = torch.randn(1, 3, 6, 6), torch.randn(4, 1, 1)
    edge = genapi.convert(model, (image, bias), input_names=["pixels", "shift"])
    assert edge.input_names == ["pixels", "shift"]
    assert edge.output_names == ["output_0", "output_1"]
    features, mean = edge(image.numpy(), bias.numpy())  # numpy in, numpy out
    assert isinstance(features, np.ndarray)
    with torch.no_grad():
        ref_features, ref_mean = model(image, bias)
    assert _rel_error(features, ref_features) <= TOLERANCE
    assert _rel_error(mean, ref_mean) <= TOLERANCE

    path = edge.export(tmp_path / "two.tflite")
    assert path.read_bytes() == edge.content
    named = genapi.convert(model, (image, bias), output_names=["features", "mean"])
    info = inspect_model(named.export(tmp_path / "named.tflite"))["signatures"][0]
    assert [o["name"] for o in info["outputs"]] == ["features", "mean"]
    assert [i["name"] for i in info["inputs"]] == ["image", "bias"]

    with pytest.raises(ValueError, match="shape"):
        edge(torch.randn(1, 3, 7, 7), bias)
    with pytest.raises(TypeError, match="2 input"):
        edge(image)


def test_bad_arguments():
    model = TwoInputs().eval()
    args = (torch.randn(1, 3, 6, 6), torch.randn(4, 1, 1))
    with pytest.raises(ValueError, match="quantize='int3'"):
        genapi.convert(model, args, quantize="int3")
    with pytest.raises(ValueError, match="input_names"):
        genapi.convert(model, args, input_names=["only_one"])
    with pytest.raises(ValueError, match="sample_args"):
        genapi.convert(model, (args[0], 3))


class Unsupported(nn.Module):
    def forward(self, x):
        return torch.cumsum(x, dim=1)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.blocks = nn.Sequential(nn.ReLU(), Unsupported())

    def forward(self, x):
        return self.blocks(self.stem(x))


def test_unsupported_op_names_op_and_module():
    with pytest.raises(LoweringError) as info:
        genapi.convert(Net().eval(), (torch.randn(1, 3, 4, 4),))
    message = str(info.value)
    assert "aten.cumsum" in message
    assert "'blocks.1' (Unsupported)" in message
