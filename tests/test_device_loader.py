"""The device loader (dataset.on_device): the CPU pipeline's order and normalisation, its
augmentation recipe drawn per batch from (seed, epoch, batch index), resumable mid-epoch, and
the global RNG left alone. Run on the CPU device; the logic is the same on a GPU."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
from torchvision.transforms.v2.functional import to_dtype

from ssam.data import fixed_subset, images_and_labels
from ssam.data.device_loader import Augmentation, DeviceEvalLoader, DeviceTrainLoader
from ssam.data.label_noise import NoisyLabels
from ssam.data.sampling import EpochShuffle, PerSampleSeeded
from ssam.data.tensor_dataset import ImageTensorDataset
from ssam.data.transforms import CUTOUT_SIZE, small_image_transform
from ssam.train.distributed import Replicas

CPU = torch.device("cpu")
SEED = 7
BATCH = 16
COUNT = 40  # batches of 16, 16 and 8
MEAN, STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]
NO_AUGMENTATION = Augmentation()
PAPER = Augmentation(crop_padding=2, hflip=True, cutout=True)


def stored(count: int = COUNT, size: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """Random uint8 images with no zero pixel (so that zero padding and Cutout show), each
    labelled with its own index (so that an output names its source)."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(1, 256, (count, 3, size, size), dtype=torch.uint8, generator=generator)
    return images, torch.arange(count)


def device_batches(
    augmentation: Augmentation,
    *,
    epoch: int = 0,
    start: int = 0,
    data: tuple[torch.Tensor, torch.Tensor] | None = None,
    mean: list[float] = MEAN,
    std: list[float] = STD,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    images, labels = data or stored()
    sampler = EpochShuffle(len(images), SEED)
    sampler.set_epoch(epoch, start=start)
    loader = DeviceTrainLoader(
        images, labels, sampler, batch_size=BATCH, mean=mean, std=std, augmentation=augmentation, device=CPU
    )
    return list(loader)


def cpu_batches(augmentation: Augmentation, *, epoch: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """What the trainer's CPU pipeline yields: per-sample transforms, EpochShuffle, DataLoader."""
    images, labels = stored()
    transform = small_image_transform(
        train=True,
        image_size=images.shape[-1],
        mean=MEAN,
        std=STD,
        crop_padding=augmentation.crop_padding,
        hflip=augmentation.hflip,
        cutout=augmentation.cutout,
    )
    train_set = PerSampleSeeded(ImageTensorDataset(images, labels, transform), SEED)
    train_set.set_epoch(epoch)
    sampler = EpochShuffle(len(images), SEED)
    sampler.set_epoch(epoch)
    return list(DataLoader(train_set, batch_size=BATCH, sampler=sampler))


def assert_same_batches(left, right) -> None:
    assert len(left) == len(right)
    for (inputs, targets), (other_inputs, other_targets) in zip(left, right):
        assert torch.equal(inputs, other_inputs)
        assert torch.equal(targets, other_targets)


def as_stored_pixels(inputs: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """Undo the normalisation: back to uint8 values."""
    scale = torch.tensor(std).view(-1, 1, 1)
    shift = torch.tensor(mean).view(-1, 1, 1)
    return ((inputs * scale + shift) * 255).round().to(torch.uint8)


# --- order and batches ------------------------------------------------------------------------


def test_targets_come_in_the_cpu_dataloaders_order_each_epoch():
    for epoch in (0, 3):
        expected = [targets for _, targets in cpu_batches(PAPER, epoch=epoch)]
        actual = [targets for _, targets in device_batches(PAPER, epoch=epoch)]
        assert [t.tolist() for t in actual] == [t.tolist() for t in expected]


def test_without_augmentation_batches_equal_the_cpu_pipelines_bit_for_bit():
    assert_same_batches(device_batches(NO_AUGMENTATION, epoch=2), cpu_batches(NO_AUGMENTATION, epoch=2))


def test_batches_are_float32_inputs_and_int64_targets_with_a_short_last_batch():
    batches = device_batches(PAPER)
    assert [len(targets) for _, targets in batches] == [16, 16, 8]
    for inputs, targets in batches:
        assert inputs.dtype == torch.float32 and inputs.shape[1:] == (3, 12, 12)
        assert targets.dtype == torch.int64 and inputs.device == targets.device == CPU


def test_evaluation_batches_equal_the_cpu_test_loaders_in_order():
    images, labels = stored()
    transform = small_image_transform(train=False, image_size=12, mean=MEAN, std=STD)
    expected = list(DataLoader(ImageTensorDataset(images, labels, transform), batch_size=BATCH))
    loader = DeviceEvalLoader(images, labels, batch_size=BATCH, mean=MEAN, std=STD, device=CPU)
    assert len(loader) == 3
    assert_same_batches(list(loader), expected)


# --- seeding and resuming ---------------------------------------------------------------------


def test_same_seed_and_epoch_give_identical_batches_and_another_epoch_other_ones():
    first = device_batches(PAPER, epoch=1)
    assert_same_batches(device_batches(PAPER, epoch=1), first)
    other = device_batches(PAPER, epoch=2)
    assert not torch.equal(other[0][1], first[0][1])


def test_starting_at_batch_k_yields_exactly_the_rest_of_the_epoch():
    whole = device_batches(PAPER, epoch=4)
    for k in range(len(whole)):
        sampler = EpochShuffle(COUNT, SEED)
        sampler.set_epoch(4, start=k * BATCH)
        images, labels = stored()
        loader = DeviceTrainLoader(
            images, labels, sampler, batch_size=BATCH, mean=MEAN, std=STD, augmentation=PAPER, device=CPU
        )
        assert len(loader) == len(whole) - k
        assert_same_batches(list(loader), whole[k:])


def test_batch_positions_are_the_examples_each_loader_yields_in_that_batch():
    # Each stored label is its example's index: a batch's targets are its positions.
    order = EpochShuffle(COUNT, SEED, batch_size=BATCH)
    for epoch in (0, 3):
        expected = [order.batch_positions(epoch, batch).tolist() for batch in range(3)]
        for batches in (cpu_batches(PAPER, epoch=epoch), device_batches(PAPER, epoch=epoch)):
            assert [targets.tolist() for _, targets in batches] == expected


@pytest.mark.parametrize("on_device", [False, True])
def test_batch_positions_of_a_process_resumed_mid_epoch_are_what_its_loader_yields(on_device):
    """Rank 1 of 2 with batches of 6: a share of 20, in batches of 6, 6, 6 and 2, from the second."""
    sampler = EpochShuffle(COUNT, SEED, rank=1, world_size=2, batch_size=6)
    sampler.set_epoch(2, start=6)
    images, labels = stored()
    if on_device:
        loader = DeviceTrainLoader(
            images, labels, sampler, batch_size=6, mean=MEAN, std=STD, augmentation=PAPER, device=CPU
        )
    else:
        loader = DataLoader(TensorDataset(images, labels), batch_size=6, sampler=sampler)
    yielded = [targets.tolist() for _, targets in loader]
    assert [len(batch) for batch in yielded] == [6, 6, 2]
    assert [sampler.batch_positions(2, batch).tolist() for batch in (1, 2, 3)] == yielded
    assert sampler.batch_positions(5, 0).tolist() != yielded[0]  # another epoch: another order
    assert (sampler.epoch, sampler.start) == (2, 6)  # which the positions leave as they were


def test_a_start_inside_a_batch_is_refused():
    with pytest.raises(ValueError, match="starts at example 5, not at a batch of 16"):
        device_batches(PAPER, start=5)


def test_iterating_leaves_the_global_rng_untouched():
    before = torch.random.get_rng_state()
    device_batches(PAPER)
    assert torch.equal(torch.random.get_rng_state(), before)


# --- augmentation -----------------------------------------------------------------------------


def matching_windows(pixels: torch.Tensor, padded_source: torch.Tensor, padding: int) -> list[tuple]:
    """(top, left, flipped) of every window of the padded source image that equals ``pixels``."""
    size = pixels.shape[-1]
    found = []
    for top, left in itertools.product(range(2 * padding + 1), repeat=2):
        window = padded_source[:, top : top + size, left : left + size]
        for flipped, candidate in ((False, window), (True, window.flip(-1))):
            if torch.equal(pixels, candidate):
                found.append((top, left, flipped))
    return found


def test_each_augmented_image_is_a_zero_padded_window_of_its_source_flipped_about_half_the_time():
    padding = 2
    padded = F.pad(stored()[0], (padding,) * 4)
    corners, flips = set(), []
    for epoch in range(6):
        for inputs, targets in device_batches(Augmentation(crop_padding=padding, hflip=True), epoch=epoch):
            for pixels, index in zip(as_stored_pixels(inputs, MEAN, STD), targets):
                matches = matching_windows(pixels, padded[index], padding)
                assert len(matches) == 1, matches
                top, left, flipped = matches[0]
                corners.add((top, left))
                flips.append(flipped)
    assert corners == set(itertools.product(range(2 * padding + 1), repeat=2))
    assert 0.4 < sum(flips) / len(flips) < 0.6


def test_cutout_zeroes_one_clipped_16x16_square_in_about_half_the_images():
    size = 32
    images, _ = stored(count=64, size=size)
    # Mean 0 and std 1: every stored pixel (1..255) normalises to a value > 0, so the zeros are the cut.
    mean, std = [0.0] * 3, [1.0] * 3
    half = CUTOUT_SIZE // 2
    clipped_spans = {(max(c - half, 0), min(c + half, size)) for c in range(size)}
    cut = []
    for epoch in range(3):
        batches = device_batches(
            Augmentation(cutout=True),
            epoch=epoch,
            data=(images, torch.arange(64)),
            mean=mean,
            std=std,
        )
        for inputs, targets in batches:
            for image, index in zip(inputs, targets):
                zero = image == 0
                source = to_dtype(images[index], torch.float32, scale=True)
                assert torch.equal(image[~zero], source[~zero])
                if not zero.any():
                    cut.append(False)
                    continue
                cut.append(True)
                assert torch.equal(zero[0], zero[1]) and torch.equal(zero[0], zero[2])
                rows = zero[0].any(dim=1).nonzero().flatten()
                columns = zero[0].any(dim=0).nonzero().flatten()
                assert torch.equal(zero[0], zero[0].any(dim=1)[:, None] & zero[0].any(dim=0)[None, :])
                for span in (rows, columns):
                    assert (int(span[0]), int(span[-1]) + 1) in clipped_spans
                    assert len(span) == int(span[-1]) - int(span[0]) + 1  # contiguous
    assert 0.4 < sum(cut) / len(cut) < 0.6


# --- the stored images of a built dataset -----------------------------------------------------


def test_images_and_labels_of_a_fixed_subset_are_its_examples_in_order():
    images, labels = stored()
    dataset = ImageTensorDataset(images, labels * 2, transform=lambda image: image)
    subset = fixed_subset(dataset, 10)
    subset_images, subset_labels = images_and_labels(subset)
    indices = torch.tensor(subset.indices)
    assert torch.equal(subset_images, images[indices])
    assert torch.equal(subset_labels, labels[indices] * 2)
    assert images_and_labels(dataset)[0] is images


def test_images_and_labels_read_a_process_s_shard_of_a_noisy_validation_split_example_by_example():
    """fmnist_noisy under torchrun: the shard (a Subset) of the validation split (NoisyLabels of
    a Subset) is read whole as the same examples one at a time would give."""
    images, labels = stored()
    dataset = ImageTensorDataset(images, labels, transform=lambda image: image)
    validation = NoisyLabels(fixed_subset(dataset, 12), (torch.arange(12) * 7) % 10)
    shard = Replicas(rank=1, world_size=2).shard(validation)
    shard_images, shard_labels = images_and_labels(shard)
    assert torch.equal(shard_images, torch.stack([shard[i][0] for i in range(len(shard))]))
    assert shard_labels.tolist() == [shard[i][1] for i in range(len(shard))]


def test_images_and_labels_refuses_a_dataset_not_held_as_an_image_tensor():
    with pytest.raises(ValueError, match="not TensorDataset"):
        images_and_labels(TensorDataset(torch.zeros(3, 1, 2, 2)))
