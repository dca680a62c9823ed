"""Symmetric label noise: a fixed fraction of a split's examples relabelled with another class.

Exactly round(p·N) of the N examples are chosen, and each is given a label drawn uniformly from
the C − 1 classes other than its own, both from a generator seeded by the noise's own seed (not
the run's), so that every run seed trains on the same corrupted labels.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


def noisy_labels(labels: torch.Tensor, num_classes: int, fraction: float, seed: int) -> torch.Tensor:
    """``labels`` with exactly round(fraction·N) entries changed to another class.

    Which ones: the first round(fraction·N) of a permutation drawn from ``seed``; their new label
    is (y + k) mod C with k uniform in {1, ..., C − 1}, i.e. uniform over the classes other than y."""
    if not 0 <= fraction < 1:
        raise ValueError(f"label noise must be in [0, 1), got {fraction!r}")
    if num_classes < 2:
        raise ValueError(f"label noise needs at least 2 classes, got {num_classes}")
    if len(labels) and not (int(labels.min()) >= 0 and int(labels.max()) < num_classes):
        raise ValueError(f"labels must be in [0, {num_classes}), got {int(labels.min())} to {int(labels.max())}")
    generator = torch.Generator().manual_seed(seed)
    changed = torch.randperm(len(labels), generator=generator)[: round(fraction * len(labels))]
    shift = torch.randint(1, num_classes, (len(changed),), generator=generator)
    noisy = labels.clone()
    noisy[changed] = (labels[changed] + shift) % num_classes
    return noisy


class NoisyLabels(Dataset):
    """``dataset``'s images with ``labels`` (int64, one per example) in place of its own."""

    def __init__(self, dataset: Dataset, labels: torch.Tensor) -> None:
        if len(labels) != len(dataset):
            raise ValueError(f"{len(dataset)} examples but {len(labels)} labels")
        self.dataset = dataset
        self.labels = labels

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, _ = self.dataset[index]
        return image, int(self.labels[index])
