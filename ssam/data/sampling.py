"""A data order and augmentation that depend only on (seed, epoch, position).

Nothing about the data pipeline then needs saving: a run killed at step k of epoch e resumes
by skipping the first k batches of epoch e's order, and every augmentation comes out the same,
however many loader workers there are before and after.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Dataset, Sampler

# Large odd multipliers mix (seed, epoch, index) into distinct 63-bit seeds.
_SEED_MIX = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9)


def mixed_seed(*parts: int) -> int:
    value = 0
    for part in parts:
        value = ((value ^ part) * _SEED_MIX[0] + _SEED_MIX[1]) % (1 << 63)
    return value


class EpochShuffle(Sampler[int]):
    """A fresh permutation each epoch, drawn from a generator seeded by (seed, epoch);
    ``start`` skips the first examples of the epoch (for a resume in the middle of it)."""

    def __init__(self, num_examples: int, seed: int) -> None:
        self.num_examples = num_examples
        self.seed = seed
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch = epoch
        self.start = start

    def order(self) -> torch.Tensor:
        """The indices this epoch still has to visit, as one int64 tensor."""
        generator = torch.Generator().manual_seed(mixed_seed(self.seed, self.epoch))
        return torch.randperm(self.num_examples, generator=generator)[self.start :]

    def __iter__(self) -> Iterator[int]:
        return iter(self.order().tolist())

    def __len__(self) -> int:
        return self.num_examples - self.start


class PerSampleSeeded(Dataset):
    """Runs the wrapped dataset's random augmentation with torch's global generator seeded by
    (seed, epoch, index), and gives the caller's random state back untouched."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        outer_state = torch.random.get_rng_state()
        torch.random.default_generator.manual_seed(mixed_seed(self.seed, self.epoch, index))
        try:
            return self.dataset[index]
        finally:
            torch.random.set_rng_state(outer_state)
