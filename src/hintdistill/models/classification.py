"""Classification families: Hinton's MLPs, a small CNN with width/depth knobs, CIFAR ResNets.

Modules have plain names (``features.stage2``, ``fc1``) so hints and guided layers can be named in
recipes; ``hintdistill inspect`` lists them with their output shapes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register


class MLP(nn.Module):
    """Fully connected ReLU net on flattened images (Hinton et al. 2015 MNIST nets)."""

    def __init__(self, in_features: int = 784, hidden: Sequence[int] = (800, 800), num_classes: int = 10,
                 dropout: float = 0.0, input_dropout: float = 0.0):
        super().__init__()
        self.input_dropout = nn.Dropout(input_dropout)
        layers: dict[str, nn.Module] = {}
        width = in_features
        for i, h in enumerate(hidden, start=1):
            layers[f"fc{i}"] = nn.Sequential(nn.Linear(width, h), nn.ReLU(inplace=True), nn.Dropout(dropout))
            width = h
        self.hidden = nn.ModuleDict(layers)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_dropout(x.flatten(1))
        for layer in self.hidden.values():
            x = layer(x)
        return self.classifier(x)


@register("mlp")
def mlp(**kw) -> MLP:
    return MLP(**kw)


@register("hinton_teacher")
def hinton_teacher(in_features: int = 784, num_classes: int = 10, dropout: float = 0.5,
                   input_dropout: float = 0.2) -> MLP:
    """2 x 1200 ReLU with dropout: Hinton et al.'s MNIST teacher."""
    return MLP(in_features, (1200, 1200), num_classes, dropout, input_dropout)


@register("hinton_student")
def hinton_student(in_features: int = 784, num_classes: int = 10) -> MLP:
    """2 x 800 ReLU, no regularization: Hinton et al.'s MNIST student."""
    return MLP(in_features, (800, 800), num_classes)


def conv_bn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    """Stages of ``depth`` 3x3 conv-BN-ReLU blocks; every stage but the first halves the resolution.

    ``first_stride: 2`` halves the input at once (a cheap stem for CPU runs).
    ``widths`` sets the channels of each stage (``features.stage1`` ...); a global average pool and a
    linear classifier follow. Wide-and-shallow teachers and thin-and-deep students are one family.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, widths: Sequence[int] = (32, 64, 128),
                 depth: int = 1, dropout: float = 0.0, first_stride: int = 1):
        super().__init__()
        stages: dict[str, nn.Module] = {}
        c = in_channels
        for i, w in enumerate(widths, start=1):
            blocks = [conv_bn(c, w, stride=first_stride if i == 1 else 2)]
            blocks += [conv_bn(w, w) for _ in range(depth - 1)]
            stages[f"stage{i}"] = nn.Sequential(*blocks)
            c = w
        self.features = nn.Sequential()
        for name, stage in stages.items():
            self.features.add_module(name, stage)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.pool(self.features(x)).flatten(1)))


@register("cnn")
def cnn(**kw) -> SmallCNN:
    return SmallCNN(**kw)


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """He et al. 2016 CIFAR ResNet (6n+2 layers); ``layer1..3`` are the usual hint points."""

    def __init__(self, depth: int = 20, widths: Sequence[int] = (16, 16, 32, 64), num_classes: int = 10,
                 in_channels: int = 3):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        c = widths[0]
        for i, (w, stride) in enumerate(zip(widths[1:], (1, 2, 2), strict=False), start=1):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(c, w, stride if j == 0 else 1))
                c = w
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.pool(x).flatten(1))


def _resnet(depth: int, widths: Sequence[int]):
    def factory(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
        return CifarResNet(depth, widths, num_classes, in_channels)

    return factory


for _depth in (8, 14, 20, 32, 44, 56, 110):
    register(f"resnet{_depth}")(_resnet(_depth, (16, 16, 32, 64)))
for _depth in (8, 32):
    register(f"resnet{_depth}x4")(_resnet(_depth, (32, 64, 128, 256)))
