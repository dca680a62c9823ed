"""A dataset of images held in memory as one uint8 tensor, augmented per sample on access."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import Dataset


class ImageTensorDataset(Dataset):
    """``images`` is uint8 N×C×H×W, ``labels`` int64 N; ``transform`` maps one uint8 C×H×W
    image to the float tensor the model sees."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        transform: Callable[[torch.Tensor], torch.Tensor],
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 N×C×H×W, got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[index]), int(self.labels[index])
