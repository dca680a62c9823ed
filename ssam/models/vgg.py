"""VGG-11 with BatchNorm for small images (32×32 or 28×28 inputs)."""

from __future__ import annotations

import torch
from torch import nn

VGG11_LAYOUT = (64, "pool", 128, "pool", 256, 256, "pool", 512, 512, "pool", 512, 512, "pool")


class VGG(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3, layout=VGG11_LAYOUT) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in layout:
            if item == "pool":
                # ceil_mode lets 28×28 inputs go through five poolings (28, 14, 7, 4, 2, 1).
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            else:
                layers += [nn.Conv2d(channels, item, 3, padding=1), nn.BatchNorm2d(item), nn.ReLU()]
                channels = item
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))
