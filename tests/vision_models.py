"""ResNet-18 and MobileNetV3-Small written out for the conversion tests (torchvision does not
import beside the torch wheel used here), with seeded random weights.

The architectures follow the papers' tables ("Deep Residual Learning for Image Recognition";
"Searching for MobileNetV3", the small model) and the module layout torchvision users know.
`seeded` draws the weights and then calibrates the batch-norm statistics on random images, so
that activations keep a healthy scale through the depth and the running statistics are far
from the trivial mean 0 / variance 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# -- ResNet-18 -----------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (projected when the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class ResNet18(nn.Module):
    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths = (64, 128, 256, 512)
        c_in = 64
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            layer = nn.Sequential(BasicBlock(c_in, width, stride), BasicBlock(width, width, 1))
            setattr(self, f"layer{i + 1}", layer)
            c_in = width
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):  # x: [B, 3, H, W]
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# -- MobileNetV3-Small ---------------------------------------------------------------------------


def _divisible(value: float, divisor: int = 8) -> int:
    """Round channel counts to a multiple of 8, never more than 10% down (as the paper does)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class ConvBNAct(nn.Sequential):
    def __init__(self, c_in, c_out, kernel, stride=1, groups=1, act: type[nn.Module] | None = None):
        layers = [
            nn.Conv2d(c_in, c_out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(c_out),
        ]
        if act is not None:
            layers.append(act(inplace=True))
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, squeezed: int):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeezed, 1)
        self.fc2 = nn.Conv2d(squeezed, channels, 1)
        self.relu = nn.ReLU()
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x):
        scale = self.scale_activation(self.fc2(self.relu(self.fc1(self.avgpool(x)))))
        return x * scale


class InvertedResidual(nn.Module):
    """Expand (1x1), depthwise (kxk), optional squeeze-excitation, project (1x1)."""

    def __init__(self, c_in, kernel, expanded, c_out, use_se, activation, stride):
        super().__init__()
        act = nn.Hardswish if activation == "HS" else nn.ReLU
        layers: list[nn.Module] = []
        if expanded != c_in:
            layers.append(ConvBNAct(c_in, expanded, 1, act=act))
        layers.append(ConvBNAct(expanded, expanded, kernel, stride, groups=expanded, act=act))
        if use_se:
            layers.append(SqueezeExcitation(expanded, _divisible(expanded // 4)))
        layers.append(ConvBNAct(expanded, c_out, 1))
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and c_in == c_out

    def forward(self, x):
        out = self.block(x)
        return out + x if self.use_residual else out


# (input channels, kernel, expanded channels, output channels, SE, activation, stride)
MOBILENET_V3_SMALL = [
    (16, 3, 16, 16, True, "RE", 2),
    (16, 3, 72, 24, False, "RE", 2),
    (24, 3, 88, 24, False, "RE", 1),
    (24, 5, 96, 40, True, "HS", 2),
    (40, 5, 240, 40, True, "HS", 1),
    (40, 5, 240, 40, True, "HS", 1),
    (40, 5, 120, 48, True, "HS", 1),
    (48, 5, 144, 48, True, "HS", 1),
    (48, 5, 288, 96, True, "HS", 2),
    (96, 5, 576, 96, True, "HS", 1),
    (96, 5, 576, 96, True, "HS", 1),
]


class MobileNetV3Small(nn.Module):
    def __init__(self, num_classes: int = 1000):
        super().__init__()
        layers: list[nn.Module] = [ConvBNAct(3, 16, 3, 2, act=nn.Hardswish)]
        layers += [InvertedResidual(*row) for row in MOBILENET_V3_SMALL]
        layers.append(ConvBNAct(96, 576, 1, act=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(576, 1024),
            nn.Hardswish(inplace=True),
            nn.Dropout(0.2, inplace=True),
            nn.Linear(1024, num_classes),
        )

    def forward(self, x):  # x: [B, 3, H, W]
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)


# -- weights and inputs --------------------------------------------------------------------------


def images(count: int, size: int, *, seed: int) -> torch.Tensor:
    """Seeded random "images" [count, 3, size, size]: smooth and mid-frequency random fields,
    pixel noise, and a random contrast and colour cast per image, so that inputs differ in their
    global statistics and not only in noise that pooling averages away."""
    g = torch.Generator().manual_seed(seed)

    def field(cells: int) -> torch.Tensor:
        coarse = torch.randn(count, 3, cells, cells, generator=g)
        return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)

    pattern = field(4) + 0.7 * field(16) + 0.3 * torch.randn(count, 3, size, size, generator=g)
    contrast = torch.exp(0.7 * torch.randn(count, 1, 1, 1, generator=g))
    cast = 0.5 * torch.randn(count, 3, 1, 1, generator=g)
    return contrast * pattern + cast


@torch.no_grad()
def seeded(cls: type[nn.Module], *, seed: int, size: int, **kwargs) -> nn.Module:
    """`cls(**kwargs)` with PyTorch's default initialisation drawn from `seed`, random
    batch-norm affine parameters, and batch-norm statistics calibrated on random images, then
    perturbed (so they are neither trivial nor exactly the data's). Returned in eval mode."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = cls(**kwargs)
    g = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in norms:
        bn.momentum = None  # cumulative average over the calibration batches
        bn.weight.copy_(0.5 + torch.rand(bn.weight.shape, generator=g))
        bn.bias.copy_(0.2 * torch.randn(bn.bias.shape, generator=g))
    model.train()
    for i in range(2):
        model(images(8, size, seed=seed * 100 + i))
    for bn in norms:
        c = bn.num_features
        bn.running_mean.add_(0.1 * torch.randn(c, generator=g))
        bn.running_var.mul_(0.8 + 0.4 * torch.rand(c, generator=g))
    return model.eval()
