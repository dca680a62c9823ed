"""ResNets for small images (He et al., 2016): a 3×3 stem and no max-pool, as in the CIFAR
literature and the Sparse SAM paper's ResNet-18."""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class SmallImageResNet(nn.Module):
    """Stages of BasicBlocks; the first stage keeps the resolution, each later one halves it."""

    def __init__(
        self,
        blocks_per_stage: list[int],
        widths: list[int],
        num_classes: int,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages = []
        in_planes = widths[0]
        for index, (blocks, planes) in enumerate(zip(blocks_per_stage, widths)):
            strides = [1 if index == 0 else 2] + [1] * (blocks - 1)
            layers = []
            for stride in strides:
                layers.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
            stages.append(nn.Sequential(*layers))
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.pool(self.layers(out)).flatten(1)
        return self.fc(out)


def resnet18(num_classes: int, in_channels: int = 3) -> SmallImageResNet:
    """The CIFAR ResNet-18 of the paper: 4 stages of 2 blocks, widths 64 to 512 (11.2M weights)."""
    return SmallImageResNet([2, 2, 2, 2], [64, 128, 256, 512], num_classes, in_channels)


def compact_resnet(
    num_classes: int, in_channels: int = 1, widths: tuple[int, ...] = (16, 32, 64)
) -> SmallImageResNet:
    """A ResNet-8 (3 stages of one block) that trains on Fashion-MNIST on a CPU in minutes."""
    return SmallImageResNet([1] * len(widths), list(widths), num_classes, in_channels)
