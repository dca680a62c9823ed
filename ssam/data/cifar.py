"""CIFAR-10 and CIFAR-100 in the python-pickle layout that torchvision downloads.

Read directly (torchvision's class insists on the official checksums, which would reject
the small files the tests write in the same format).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from ssam.data.errors import DataError

LAYOUT = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels"),
}


def cifar_folder(name: str, root: str) -> Path:
    return Path(root) / LAYOUT[name][0]


def download_cifar(name: str, root: str) -> None:
    import torchvision

    dataset_class = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    dataset_class(root, train=True, download=True)


def load_cifar(name: str, root: str, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as uint8 N×3×32×32 and labels as int64 N."""
    folder_name, train_files, test_files, label_key = LAYOUT[name]
    images, labels = [], []
    for file_name in train_files if train else test_files:
        path = Path(root) / folder_name / file_name
        try:
            with open(path, "rb") as f:
                entry = pickle.load(f, encoding="latin1")
            data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            file_labels = np.asarray(entry[label_key], dtype=np.int64)
        except FileNotFoundError:
            raise
        except Exception as error:
            raise DataError(f"{path} is not a readable CIFAR batch file: {error}") from error
        if len(data) != len(file_labels):
            raise DataError(f"{path}: {len(data)} images but {len(file_labels)} labels")
        images.append(data)
        labels.append(file_labels)
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))
