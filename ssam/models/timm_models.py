"""Any timm architecture, randomly initialised, sized for the run's images."""

from __future__ import annotations

import difflib
from typing import Any

from torch import nn


def timm_architectures() -> list[str]:
    import timm

    return timm.list_models()


def unknown_architecture_message(arch: Any) -> str | None:
    """Why ``arch`` is not a timm architecture, with the closest names; None when it is one."""
    names = timm_architectures()
    if isinstance(arch, str) and arch in names:
        return None
    close = difflib.get_close_matches(str(arch), names, n=5, cutoff=0.6)
    hint = f"; the closest: {', '.join(close)}" if close else ""
    return f"model.arch must be one of timm.list_models() ({len(names)} names), got {arch!r}{hint}"


def timm_model(
    arch: str, *, num_classes: int, in_channels: int, image_size: int, **options: Any
) -> nn.Module:
    """``timm.create_model(arch)`` with the run's classes and input channels, and its image size
    for the architectures that take one (ViTs and the like; CNNs refuse ``img_size``)."""
    import timm

    message = unknown_architecture_message(arch)
    if message is not None:
        raise ValueError(message)
    sizing = dict(pretrained=False, num_classes=num_classes, in_chans=in_channels, **options)
    try:
        return timm.create_model(arch, img_size=image_size, **sizing)
    except TypeError as error:
        if "img_size" not in str(error):
            raise
    return timm.create_model(arch, **sizing)
