"""Dataset builders: plain arguments in, (train, test) torch datasets out."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset

from ssam.data import cifar, fashion_mnist, imagenet
from ssam.data.errors import DataError
from ssam.data.tensor_dataset import ImageTensorDataset, images_and_labels
from ssam.data.transforms import imagenet_transform, small_image_transform

__all__ = [
    "DATASETS",
    "IN_MEMORY_DATASETS",
    "DataError",
    "build_datasets",
    "download",
    "fixed_subset",
    "images_and_labels",
    "missing_data_message",
]

DATASETS = ("fashion_mnist", "cifar10", "cifar100", "imagenet")
# Held in memory as one uint8 image tensor (ImageTensorDataset), so they can go on the device
# whole; ImageNet is read from image files one at a time.
IN_MEMORY_DATASETS = ("fashion_mnist", "cifar10", "cifar100")
# Subsets are drawn with this fixed seed, so that every run (any seed) sees the same examples.
SUBSET_SEED = 0


def missing_data_message(name: str, root: str | None) -> str | None:
    """Why ``name`` cannot be read from ``root`` and how to fetch it, or None if it is there."""
    if name == "fashion_mnist":
        if fashion_mnist.find_fashion_mnist(root) is not None:
            return None
        where = ", ".join(str(p) for p in fashion_mnist.candidate_dirs(root))
        return f"Fashion-MNIST not found in {where}: {fashion_mnist.FETCH_HINT}"
    if name in cifar.LAYOUT:
        folder = cifar.cifar_folder(name, root)
        if folder.is_dir():
            return None
        return (
            f"{name} not found: no folder {folder}. Fetch it with "
            f"`python train.py dataset={name} dataset.root={root} dataset.download=true`"
        )
    if name == "imagenet":
        missing = [str(imagenet.imagenet_split_dir(root, t)) for t in (True, False)]
        missing = [m for m in missing if not Path(m).is_dir()]
        return None if not missing else f"no folder {', '.join(missing)}. {imagenet.FETCH_HINT}"
    raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {name!r}")


def download(name: str, root: str | None) -> None:
    """Fetch ``name`` into ``root`` with torchvision (needs the network)."""
    if name == "fashion_mnist":
        fashion_mnist.download_fashion_mnist(root)
    elif name in cifar.LAYOUT:
        cifar.download_cifar(name, root)
    else:
        raise ValueError(f"{name} cannot be downloaded automatically. {imagenet.FETCH_HINT}")


def fixed_subset(dataset: Dataset, size: int | None) -> Dataset:
    """The same ``size`` examples whatever the run's seed; all of them when size is None."""
    if size is None:
        return dataset
    if size > len(dataset):
        raise ValueError(f"subset size {size} is larger than the dataset ({len(dataset)} examples)")
    generator = torch.Generator().manual_seed(SUBSET_SEED)
    indices = torch.randperm(len(dataset), generator=generator)[:size].sort().values
    return Subset(dataset, indices.tolist())


def build_datasets(
    name: str,
    *,
    root: str | None,
    image_size: int,
    mean: list[float],
    std: list[float],
    train_size: int | None = None,
    test_size: int | None = None,
    crop_padding: int = 0,
    hflip: bool = False,
    cutout: bool = False,
) -> tuple[Dataset, Dataset]:
    """Training set (augmented) and test set (not), each cut to its size when one is given."""
    message = missing_data_message(name, root)
    if message is not None:
        raise FileNotFoundError(message)
    splits = []
    for train in (True, False):
        if name == "imagenet":
            transform = imagenet_transform(train=train, image_size=image_size, mean=mean, std=std)
            dataset = imagenet.load_imagenet(root, train, transform)
        else:
            transform = small_image_transform(
                train=train,
                image_size=image_size,
                mean=mean,
                std=std,
                crop_padding=crop_padding,
                hflip=hflip,
                cutout=cutout,
            )
            if name == "fashion_mnist":
                images, labels = fashion_mnist.load_fashion_mnist(fashion_mnist.find_fashion_mnist(root), train)
            else:
                images, labels = cifar.load_cifar(name, root, train)
            dataset = ImageTensorDataset(images, labels, transform)
        splits.append(fixed_subset(dataset, train_size if train else test_size))
    return splits[0], splits[1]
