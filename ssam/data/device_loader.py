"""Loaders that keep a whole in-memory dataset on the training device and augment it there.

On a GPU the CPU pipeline (torchvision transforms one uint8 image at a time, then a copy to
the device) can be slower than the model for Fashion-MNIST and CIFAR. Here the images sit on
the device as one uint8 tensor, and each batch is gathered, cropped, flipped, normalised and
cut out there by a few batched kernels.

Order: the same as the CPU pipeline's, the ``EpochShuffle`` permutation of (seed, epoch) from
its ``start``, in batches like a DataLoader with drop_last=False.

Augmentation: the same recipe as ``small_image_transform`` (zero-padded random crop,
horizontal flip with p = 0.5, normalise, then Cutout), but NOT the same draws. The CPU
pipeline seeds each example from (seed, epoch, index) on torch's global generator; here one
generator on the device is seeded per batch from (seed, epoch, batch index), data-parallel also
from the process's rank, so that processes draw differently. Both depend only
on (seed, epoch, position), so a resumed run continues bit for bit with the loader it started
with, but a run trained with one loader does not reproduce a run trained with the other.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.transforms.v2.functional import to_dtype

from ssam.data.sampling import EpochShuffle, mixed_seed
from ssam.data.tensor_dataset import check_image_tensors
from ssam.data.transforms import CUTOUT_P, CUTOUT_SIZE

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Augmentation:
    """What ``small_image_transform`` does for training: a random crop with this much zero
    padding (0: none), a horizontal flip with p = 0.5, Cutout after normalising."""

    crop_padding: int = 0
    hflip: bool = False
    cutout: bool = False

    def __post_init__(self) -> None:
        if self.crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {self.crop_padding}")


def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """v2.RandomCrop(size, padding) on each image of a B×C×H×W batch: pad with zeros, then
    cut an H×W window at a top-left corner drawn per image from [0, 2·padding]²."""
    batch, channels, height, width = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    corners = torch.randint(0, 2 * padding + 1, (2, batch), generator=generator, device=images.device)
    rows = corners[0, :, None] + torch.arange(height, device=images.device)
    columns = corners[1, :, None] + torch.arange(width, device=images.device)
    # Two gathers: each image's rows, then each image's columns of those rows.
    padded = padded.gather(2, rows[:, None, :, None].expand(batch, channels, height, padded.shape[-1]))
    return padded.gather(3, columns[:, None, None, :].expand(batch, channels, height, width))


def random_hflip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 0.5, as v2.RandomHorizontalFlip does."""
    flip = torch.rand(len(images), generator=generator, device=images.device) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def cutout(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``transforms.Cutout`` on each image of a normalised batch: with probability CUTOUT_P,
    zero rows [cy − s/2, cy + s/2) and columns [cx − s/2, cx + s/2), clipped at the borders,
    around a centre drawn uniformly over the image (s = CUTOUT_SIZE)."""
    batch, _, height, width = images.shape
    device = images.device
    cut = torch.rand(batch, generator=generator, device=device) < CUTOUT_P
    centre_y = torch.randint(0, height, (batch, 1), generator=generator, device=device)
    centre_x = torch.randint(0, width, (batch, 1), generator=generator, device=device)
    half = CUTOUT_SIZE // 2
    y, x = torch.arange(height, device=device), torch.arange(width, device=device)
    in_rows = (y >= centre_y - half) & (y < centre_y + half)
    in_columns = (x >= centre_x - half) & (x < centre_x + half)
    square = cut[:, None, None] & in_rows[:, :, None] & in_columns[:, None, :]
    return images.masked_fill(square[:, None], 0.0)


class _Normalise:
    """uint8 images -> (x / 255 − mean) / std in float32, with the arithmetic of v2.ToDtype(scale=True)
    then v2.Normalize, so that un-augmented batches equal the CPU pipeline's bit for bit. Mean
    and std are kept on the device (v2.Normalize would copy them there for every batch)."""

    def __init__(self, mean: list[float], std: list[float], device: torch.device) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(-1, 1, 1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return to_dtype(images, torch.float32, scale=True).sub_(self.mean).div_(self.std)


def _to_device(
    images: torch.Tensor, labels: torch.Tensor, mean: list[float], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    check_image_tensors(images, labels)
    if len(mean) != images.shape[1]:
        raise ValueError(f"{len(mean)} channel means for images with {images.shape[1]} channels")
    return images.to(device), labels.to(device, torch.int64)


class DeviceTrainLoader:
    """Training batches (float32 normalised inputs, int64 targets) made on ``device``.

    ``sampler`` drives it as it drives a DataLoader: ``sampler.set_epoch(epoch, start)`` picks
    the epoch's order and where in it to begin (a multiple of ``batch_size``, as a mid-epoch
    resume gives); ``len()`` counts the batches left from there.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        sampler: EpochShuffle,
        *,
        batch_size: int,
        mean: list[float],
        std: list[float],
        augmentation: Augmentation,
        device: torch.device,
    ) -> None:
        if sampler.num_examples != len(images):
            raise ValueError(f"the sampler shuffles {sampler.num_examples} examples, the data holds {len(images)}")
        self.images, self.labels = _to_device(images, labels, mean, device)
        self.sampler = sampler
        self.batch_size = batch_size
        self.normalise = _Normalise(mean, std, device)
        self.augmentation = augmentation
        self.generator = torch.Generator(device=device)

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        start = self.sampler.start
        if start % self.batch_size:
            raise ValueError(f"the sampler starts at example {start}, not at a batch of {self.batch_size}")
        order = self.sampler.order().to(self.images.device)
        for batch_index, indices in enumerate(order.split(self.batch_size), start=start // self.batch_size):
            # Data-parallel, the rank too, so that the processes' draws differ; one process keeps
            # the seeds it has always had.
            ranked = (self.sampler.rank,) if self.sampler.world_size > 1 else ()
            seed = mixed_seed(self.sampler.seed, self.sampler.epoch, batch_index, *ranked)
            self.generator.manual_seed(seed)
            yield self._augmented(self.images[indices]), self.labels[indices]

    def _augmented(self, images: torch.Tensor) -> torch.Tensor:
        # The CPU pipeline's order: crop and flip the uint8 images, normalise, then Cutout.
        if self.augmentation.crop_padding:
            images = random_crop(images, self.augmentation.crop_padding, self.generator)
        if self.augmentation.hflip:
            images = random_hflip(images, self.generator)
        images = self.normalise(images)
        if self.augmentation.cutout:
            images = cutout(images, self.generator)
        return images


class DeviceEvalLoader:
    """Evaluation batches on ``device`` in the dataset's order, normalised only."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        mean: list[float],
        std: list[float],
        device: torch.device,
    ) -> None:
        self.images, self.labels = _to_device(images, labels, mean, device)
        self.batch_size = batch_size
        self.normalise = _Normalise(mean, std, device)

    def __len__(self) -> int:
        return math.ceil(len(self.images) / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        for images, labels in zip(self.images.split(self.batch_size), self.labels.split(self.batch_size)):
            yield self.normalise(images), labels
