"""Model builders: plain arguments in, an ``nn.Module`` out."""

from __future__ import annotations

from typing import Any

from torch import nn

from ssam.models.resnet import compact_resnet, resnet18
from ssam.models.timm_models import timm_model
from ssam.models.vgg import VGG
from ssam.models.wide_resnet import WideResNet

MODELS = ("compact_resnet", "resnet18", "wrn28_10", "resnet50", "vit_small", "vgg11_bn", "timm")
# Built by timm from ``arch``: any of its architectures, and vit_small, a preset of one.
TIMM_MODELS = ("timm", "vit_small")


def build_model(
    name: str, *, num_classes: int, in_channels: int, image_size: int, **options: Any
) -> nn.Module:
    """The model ``name`` for images of ``in_channels`` × ``image_size``²; ``options`` are the
    model's own settings (e.g. ``widths`` for compact_resnet; ``arch`` and timm's own, such as
    ``patch_size``, for timm models)."""
    if name == "compact_resnet":
        return compact_resnet(num_classes, in_channels, **options)
    if name == "resnet18":
        return resnet18(num_classes, in_channels)
    if name == "wrn28_10":
        return WideResNet(28, 10, num_classes, in_channels, **options)
    if name == "vgg11_bn":
        return VGG(num_classes, in_channels)
    if name == "resnet50":
        import torchvision

        model = torchvision.models.resnet50(num_classes=num_classes)
        if in_channels != 3:
            model.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        return model
    if name in TIMM_MODELS:
        return timm_model(num_classes=num_classes, in_channels=in_channels, image_size=image_size, **options)
    raise ValueError(f"model must be one of {', '.join(MODELS)}, got {name!r}")
