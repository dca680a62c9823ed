"""A dataset of images held in memory as one uint8 tensor, augmented per sample on access."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import Dataset, Subset

from ssam.data.label_noise import NoisyLabels


def check_image_tensors(images: torch.Tensor, labels: torch.Tensor) -> None:
    """Raise ValueError unless ``images`` is uint8 N×C×H×W with one label per image."""
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"images must be uint8 N×C×H×W, got {images.dtype} {tuple(images.shape)}")
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")


class ImageTensorDataset(Dataset):
    """``images`` is uint8 N×C×H×W, ``labels`` int64 N; ``transform`` maps one uint8 C×H×W
    image to the float tensor the model sees."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        transform: Callable[[torch.Tensor], torch.Tensor],
    ) -> None:
        check_image_tensors(images, labels)
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[index]), int(self.labels[index])


def images_and_labels(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The untransformed uint8 images and int64 labels of an ImageTensorDataset, in the order
    ``dataset`` indexes them, through any nesting of Subsets (``fixed_subset``, the validation
    split, a process's shard) and NoisyLabels (whose labels replace those below it)."""
    if isinstance(dataset, NoisyLabels):
        return images_and_labels(dataset.dataset)[0], dataset.labels
    if isinstance(dataset, Subset):
        images, labels = images_and_labels(dataset.dataset)
        indices = torch.as_tensor(dataset.indices, dtype=torch.long)
        return images[indices], labels[indices]
    if not isinstance(dataset, ImageTensorDataset):
        raise ValueError(
            f"only datasets held in memory as one image tensor can be read whole, not {type(dataset).__name__}"
        )
    return dataset.images, dataset.labels
