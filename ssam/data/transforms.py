"""Augmentations: the paper's CIFAR recipe (crop, flip, normalise, Cutout) and ImageNet's."""

from __future__ import annotations

import torch
from torchvision.transforms import v2

# The paper's Cutout: a 16×16 square, applied to half of the images.
CUTOUT_SIZE = 16
CUTOUT_P = 0.5


class Cutout:
    """Zero a size×size square at a uniformly random centre, clipped at the borders, with
    probability p (DeVries & Taylor, 2017; the paper uses 16×16, p = 0.5)."""

    def __init__(self, size: int = CUTOUT_SIZE, p: float = CUTOUT_P) -> None:
        self.size = size
        self.p = p

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if torch.rand(()) >= self.p:
            return image
        height, width = image.shape[-2:]
        cy = int(torch.randint(height, ()))
        cx = int(torch.randint(width, ()))
        half = self.size // 2
        image = image.clone()
        image[..., max(cy - half, 0) : cy + half, max(cx - half, 0) : cx + half] = 0
        return image


def small_image_transform(
    *,
    train: bool,
    image_size: int,
    mean: list[float],
    std: list[float],
    crop_padding: int = 0,
    hflip: bool = False,
    cutout: bool = False,
) -> v2.Compose:
    """uint8 C×H×W tensor -> normalised float tensor, augmented when ``train``."""
    steps: list = []
    if train and crop_padding > 0:
        steps.append(v2.RandomCrop(image_size, padding=crop_padding))
    if train and hflip:
        steps.append(v2.RandomHorizontalFlip())
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    if train and cutout:
        steps.append(Cutout(CUTOUT_SIZE, CUTOUT_P))
    return v2.Compose(steps)


def imagenet_transform(*, train: bool, image_size: int, mean: list[float], std: list[float]) -> v2.Compose:
    """RandomResizedCrop + flip for training; resize to 256/224 of the size + centre crop for eval."""
    if train:
        geometry = [v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip()]
    else:
        geometry = [v2.Resize(image_size * 256 // 224, antialias=True), v2.CenterCrop(image_size)]
    return v2.Compose(
        [v2.ToImage(), *geometry, v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    )
