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
    """The untransformed uint8 images and int64 labels of an ImageTensorDataset, or of a Subset
    of one (as ``fixed_subset`` makes), in the order the dataset indexes them; under NoisyLabels,
    its labels."""
    if isinstance(dataset, NoisyLabels):
        return images_and_labels(dataset.dataset)[0], dataset.labels
    indices = None
    while isinstance(dataset, Subset):
        outer = torch.as_tensor(dataset.indices, dtype=torch.long)
        indices = outer if indices is None else outer[indices]
        dataset = dataset.dataset
    if not isinstance(dataset, ImageTensorDataset):
        raise ValueError(
            f"only datasets held in memory as one image tensor can be read whole, not {type(dataset).__name__}"
        )
    if indices is None:
        return dataset.images, dataset.labels
    return dataset.images[indices], dataset.labels[indices]
