"""Model builders: plain arguments in, an ``nn.Module`` out. The models are declared in
ssam/models/catalog.py."""

from __future__ import annotations

from typing import Any

from torch import nn

from ssam.models.catalog import MODELS, ModelSpec, model_named

__all__ = ["MODELS", "ModelSpec", "build_model"]


def build_model(
    name: str, *, num_classes: int, in_channels: int, image_size: int, **options: Any
) -> nn.Module:
    """The model ``name`` for images of ``in_channels`` × ``image_size``²; ``options`` are the
    model's own settings (e.g. ``widths`` for compact_resnet; ``arch`` and timm's own, such as
    ``patch_size``, for timm models), the declared defaults for those not given."""
    spec = model_named(name)
    return spec.build(
        num_classes=num_classes, in_channels=in_channels, image_size=image_size, **spec.with_defaults(options)
    )
