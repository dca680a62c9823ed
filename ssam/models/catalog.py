"""The models of ``model=<name>``, each declared once as a ``ModelSpec``.

A model is built for the run's data: its number of classes, input channels and image size come
from the dataset, its own settings (``model.<key>``) from its declaration. Adding a model:
docs/extending.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from torch import nn

from ssam.errors import ConfigError
from ssam.models.resnet import compact_resnet, resnet18
from ssam.models.timm_models import timm_model, unknown_architecture_message
from ssam.models.vgg import VGG
from ssam.models.wide_resnet import WideResNet
from ssam.settings import POSITIVE_INT, Check, Setting, in_range, is_int, is_list, named, with_defaults

# (num_classes=, in_channels=, image_size=, **settings) -> the model, randomly initialised
ModelBuilder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelSpec:
    """One ``model=<name>``."""

    name: str
    description: str  # one line, for the settings reference
    build: ModelBuilder
    settings: Mapping[str, Setting] = field(default_factory=dict)
    # Keys beyond the declared ones (+model.<key>=...) go to the builder: timm's own options.
    accepts_more: bool = False
    settings_checks: tuple[Callable[[Mapping[str, Any]], None], ...] = ()  # of the whole config, resolved

    def check_settings(self, config: Mapping[str, Any]) -> None:
        for check in self.settings_checks:
            check(config)

    def with_defaults(self, given: Mapping[str, Any]) -> dict[str, Any]:
        return with_defaults(
            self.settings, given, what=f"model {self.name!r}", accepts_more=self.accepts_more
        )


def _from_classes_and_channels(build: Callable[..., nn.Module]) -> ModelBuilder:
    """The builder of a model made by ``build(num_classes, in_channels, **settings)``, which
    needs no image size."""
    return lambda *, num_classes, in_channels, image_size, **settings: build(
        num_classes, in_channels, **settings
    )


def _resnet50(num_classes: int, in_channels: int) -> nn.Module:
    import torchvision

    model = torchvision.models.resnet50(num_classes=num_classes)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    return model


def _check_timm_architecture(config: Mapping[str, Any]) -> None:
    message = unknown_architecture_message(config["model"]["arch"])
    if message is not None:
        raise ConfigError(message)


WIDTHS = Check(
    lambda value: is_list(value) and len(value) > 0 and all(is_int(v) and v >= 1 for v in value),
    "a list of integers >= 1",
    "a list of integers ≥ 1",
)
ARCHITECTURE = Check(lambda value: isinstance(value, str), "a name of timm.list_models()")
TIMM_OPTIONS = dict(
    build=lambda *, arch, num_classes, in_channels, image_size, **options: timm_model(
        arch, num_classes=num_classes, in_channels=in_channels, image_size=image_size, **options
    ),
    accepts_more=True,
    settings_checks=(_check_timm_architecture,),
)

COMPACT_RESNET = ModelSpec(
    "compact_resnet",
    "ResNet-8 (three stages of one BasicBlock, 78k weights): trains on Fashion-MNIST on a CPU in minutes",
    build=_from_classes_and_channels(compact_resnet),
    settings={"widths": Setting([16, 32, 64], WIDTHS, "channels of the three stages")},
)
RESNET18 = ModelSpec(
    "resnet18",
    "the paper's CIFAR ResNet-18: 3×3 stem, no max-pool, 11.2M weights",
    build=_from_classes_and_channels(resnet18),
)
WRN28_10 = ModelSpec(
    "wrn28_10",
    "Wide ResNet 28-10 (36.5M weights), pre-activation blocks",
    build=_from_classes_and_channels(partial(WideResNet, 28, 10)),
    settings={
        "dropout": Setting(0.0, in_range(0.0, 1.0, high_open=True), "dropout in each block (the paper: none)")
    },
)
RESNET50 = ModelSpec(
    "resnet50",
    "torchvision's ResNet-50, randomly initialised (ImageNet-1K in the paper)",
    _from_classes_and_channels(_resnet50),
)
VGG11_BN = ModelSpec(
    "vgg11_bn",
    "VGG-11 with BatchNorm for small images",
    build=_from_classes_and_channels(VGG),
)
TIMM = ModelSpec(
    "timm",
    "any timm architecture (model.arch), randomly initialised: classes and input channels from the dataset, "
    "and image size where the architecture takes one; other timm options as +model.<key>=<value>",
    settings={"arch": Setting("resnet10t", ARCHITECTURE, "a name of timm.list_models()")},
    **TIMM_OPTIONS,
)
VIT_SMALL = ModelSpec(
    "vit_small",
    "a timm preset: ViT-Small (depth 12, width 384) with patch 4, which suits 32×32 images (64 tokens); "
    "for 224×224 ImageNet use model.patch_size=16",
    settings={
        "arch": Setting("vit_small_patch16_224", ARCHITECTURE, "a name of timm.list_models()"),
        "patch_size": Setting(4, POSITIVE_INT, "side of the square patches the image is cut into"),
    },
    **TIMM_OPTIONS,
)

MODELS: dict[str, ModelSpec] = {
    spec.name: spec for spec in (COMPACT_RESNET, RESNET18, WRN28_10, RESNET50, VIT_SMALL, VGG11_BN, TIMM)
}


def model_named(name: str) -> ModelSpec:
    return named(MODELS, name, group="model")
