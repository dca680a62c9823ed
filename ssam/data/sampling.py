"""A data order and augmentation that depend only on (seed, epoch, position).

Nothing about the data pipeline then needs saving: a run killed at step k of epoch e resumes
by skipping the first k batches of epoch e's order, and every augmentation comes out the same,
however many loader workers there are before and after.
"""

from __future__ import annotations

import math
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
    """A fresh permutation each epoch, drawn from a generator seeded by (seed, epoch); ``start``
    skips the first examples of this process's share (for a resume in the middle of the epoch).

    With ``world_size`` processes, each step's global batch, ``world_size × batch_size``
    consecutive positions of the permutation, is cut into one block per process and rank r takes
    the r-th: W processes with batch B see, step by step, the examples one process with batch
    W·B sees. An epoch that does not divide by W is padded with the permutation's first examples,
    and its last global batch is split evenly, so every process takes the same steps with
    batches of the same size (data-parallel steps must not wait on a missing batch).
    """

    def __init__(
        self, num_examples: int, seed: int, *, rank: int = 0, world_size: int = 1, batch_size: int = 1
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.num_examples = num_examples
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.batch_size = batch_size
        self.epoch = 0
        self.start = 0
        # The last share ``share_of`` drew, by epoch: a method asks for it at every step.
        self._drawn: tuple[int, torch.Tensor] | None = None

    @property
    def examples_per_process(self) -> int:
        return math.ceil(self.num_examples / self.world_size)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch = epoch
        self.start = start

    def share_of(self, epoch: int) -> torch.Tensor:
        """The indices this process visits in ``epoch``, all of them, in order (int64)."""
        if self._drawn is None or self._drawn[0] != epoch:
            generator = torch.Generator().manual_seed(mixed_seed(self.seed, epoch))
            self._drawn = epoch, self._share(torch.randperm(self.num_examples, generator=generator))
        return self._drawn[1]

    def order(self) -> torch.Tensor:
        """The indices this process still has to visit this epoch, as one int64 tensor."""
        return self.share_of(self.epoch)[self.start :]

    def batch_positions(self, epoch: int, batch: int) -> torch.Tensor:
        """The dataset indices of this process's ``batch``-th batch of ``epoch`` (both 0-based):
        what a loader taking ``batch_size`` consecutive indices of the order yields then, whatever
        epoch and start the sampler is set to (so mid-epoch resumes and every rank agree)."""
        return self.share_of(epoch)[batch * self.batch_size : (batch + 1) * self.batch_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.order().tolist())

    def _share(self, order: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return order
        padded = order[torch.arange(self.examples_per_process * self.world_size) % len(order)]
        global_batch = self.world_size * self.batch_size
        full = len(padded) // global_batch * global_batch
        blocks = padded[:full].view(-1, self.world_size, self.batch_size)[:, self.rank]
        last = padded[full:].view(self.world_size, -1)[self.rank]
        return torch.cat([blocks.reshape(-1), last])

    def __len__(self) -> int:
        return self.examples_per_process - self.start


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
