"""Dataset builders: plain arguments in, (train, test, validation) torch datasets out."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch.utils.data import Dataset, Subset
from torchvision.datasets import DatasetFolder

from ssam.data.catalog import DATASETS, DatasetSpec, dataset_named
from ssam.data.errors import DataError
from ssam.data.label_noise import NoisyLabels, noisy_labels
from ssam.data.sampling import mixed_seed
from ssam.data.tensor_dataset import ImageTensorDataset, images_and_labels
from ssam.settings import with_defaults

__all__ = [
    "DATASETS",
    "DataError",
    "DatasetSpec",
    "NoisyLabels",
    "Splits",
    "build_datasets",
    "changed_label_fraction",
    "check_labels_in_range",
    "dataset_named",
    "download",
    "fixed_subset",
    "images_and_labels",
    "labels_of",
    "missing_data_message",
    "split_off_validation",
    "with_label_noise",
]

# Subsets are drawn with this fixed seed, so that every run (any seed) sees the same examples.
SUBSET_SEED = 0
# The validation split is drawn with a fixed seed of its own, for the same reason.
VALIDATION_SEED = 1
# Label noise: the training part's draws come from dataset.label_noise_seed mixed with stream 0,
# the validation part's with stream 1 (independent draws from the one seed).
NOISE_STREAMS = {"train": 0, "val": 1}


def missing_data_message(name: str, root: str | None) -> str | None:
    """Why dataset ``name`` cannot be read from ``root`` and how to fetch it, or None if it is
    there (its declaration's ``missing``, by name: the tests skip on it)."""
    return dataset_named(name).missing(root)


def download(name: str, root: str | None) -> None:
    """Fetch ``name`` into ``root`` (needs the network)."""
    spec = dataset_named(name)
    if spec.download is None:
        raise ValueError(f"{name} cannot be downloaded automatically: {spec.missing(root)}")
    spec.download(root)


def fixed_subset(dataset: Dataset, size: int | None) -> Dataset:
    """The same ``size`` examples whatever the run's seed; all of them when size is None."""
    if size is None:
        return dataset
    if size > len(dataset):
        raise ValueError(f"subset size {size} is larger than the dataset ({len(dataset)} examples)")
    generator = torch.Generator().manual_seed(SUBSET_SEED)
    indices = torch.randperm(len(dataset), generator=generator)[:size].sort().values
    return Subset(dataset, indices.tolist())


def split_off_validation(
    num_examples: int, val_size: int, train_size: int | None
) -> tuple[list[int], list[int]]:
    """(validation indices, remaining indices), each sorted: ``val_size`` examples drawn with
    VALIDATION_SEED whatever the run's seed. ``train_size``, if given, is later drawn from the
    remainder, so both must fit."""
    if val_size >= num_examples:
        raise ValueError(
            f"dataset.val_size ({val_size}) must leave at least 1 training example: the training "
            f"split has {num_examples}"
        )
    if train_size is not None and val_size + train_size > num_examples:
        raise ValueError(
            f"dataset.val_size ({val_size}) + dataset.train_size ({train_size}) is larger than the "
            f"training split ({num_examples} examples): lower one of them"
        )
    order = torch.randperm(num_examples, generator=torch.Generator().manual_seed(VALIDATION_SEED))
    return order[:val_size].sort().values.tolist(), order[val_size:].sort().values.tolist()


def labels_of(dataset: Dataset) -> torch.Tensor:
    """The int64 labels of ``dataset`` in its order, read without loading any image: from an
    ImageTensorDataset, an ImageFolder (its ``targets``), NoisyLabels, or Subsets of those."""
    if isinstance(dataset, Subset):
        return labels_of(dataset.dataset)[torch.as_tensor(dataset.indices, dtype=torch.long)]
    if isinstance(dataset, (ImageTensorDataset, NoisyLabels)):
        return dataset.labels
    if isinstance(dataset, DatasetFolder):
        return torch.as_tensor(dataset.targets, dtype=torch.long)
    raise ValueError(f"cannot read the labels of a {type(dataset).__name__} without loading its images")


def check_labels_in_range(dataset: Dataset, num_classes: int, *, name: str, split: str) -> None:
    """Raise a DataError naming dataset ``name``, its ``split`` and the first offending label
    unless every label is in [0, num_classes): the loss would otherwise fail with an IndexError
    mid-epoch (on a GPU, a device-side assert that ends the process).

    Only labels ``labels_of`` reads without loading images are checked. Those of any other
    dataset (an extension's own Dataset class) are not: reading them means loading every image,
    an epoch's work before training starts; a bad one still stops the run when its batch comes."""
    try:
        labels = labels_of(dataset)
    except ValueError:
        return
    outside = ((labels < 0) | (labels >= num_classes)).nonzero().flatten()
    if len(outside) == 0:
        return
    first = int(outside[0])
    raise DataError(
        f"dataset {name!r}: its {split} split has {len(outside)} label(s) outside 0..{num_classes - 1} "
        f"(dataset.num_classes={num_classes}), the first {int(labels[first])} at example {first}: set "
        "dataset.num_classes to the number of classes, or fix the labels"
    )


def with_label_noise(dataset: Dataset, num_classes: int, fraction: float, seed: int) -> Dataset:
    """``dataset`` with exactly round(fraction·N) labels changed (``noisy_labels``); the dataset
    itself, unwrapped, when fraction is 0."""
    if fraction == 0:
        return dataset
    return NoisyLabels(dataset, noisy_labels(labels_of(dataset), num_classes, fraction, seed))


def changed_label_fraction(dataset: Dataset) -> float:
    """The fraction of ``dataset``'s labels that differ from the stored ones (0 without noise)."""
    if not isinstance(dataset, NoisyLabels) or len(dataset) == 0:
        return 0.0
    return (dataset.labels != labels_of(dataset.dataset)).double().mean().item()


class Splits(NamedTuple):
    train: Dataset
    test: Dataset
    val: Dataset | None  # None without dataset.val_size


def build_datasets(
    name: str,
    *,
    root: str | None,
    image_size: int,
    mean: list[float],
    std: list[float],
    train_size: int | None = None,
    test_size: int | None = None,
    val_size: int | None = None,
    label_noise: float = 0.0,
    label_noise_seed: int = 0,
    num_classes: int | None = None,
    crop_padding: int = 0,
    hflip: bool = False,
    cutout: bool = False,
    **own_settings: Any,
) -> Splits:
    """Training set (augmented), test set and validation set (not augmented) of dataset ``name``
    (``own_settings``: the settings its declaration adds, passed to its loader).

    In order: ``val_size`` examples of the training split are held out (``split_off_validation``),
    then ``train_size`` of the rest are kept (``fixed_subset``), so that train_size counts the
    examples trained on; the test set is cut to ``test_size``. Then the training and the
    validation set each get exactly round(label_noise·size) wrong labels (``with_label_noise``,
    from ``label_noise_seed`` on streams of their own); the test set keeps its labels. With
    val_size None and label_noise 0 the training set is exactly ``fixed_subset(split, train_size)``.
    Before all this, given ``num_classes``, a label outside [0, num_classes) in either split is a
    DataError (``check_labels_in_range``)."""
    spec = dataset_named(name)
    message = spec.missing(root)
    if message is not None:
        raise FileNotFoundError(message)
    if label_noise and num_classes is None:
        raise ValueError("label noise needs num_classes")
    augmentation = dict(crop_padding=crop_padding, hflip=hflip, cutout=cutout)
    own = with_defaults(spec.own_settings, own_settings, what=f"dataset {name!r}")
    splits = []
    for train in (True, False):
        transform = spec.transform(train=train, image_size=image_size, mean=mean, std=std, **augmentation)
        loaded = spec.load(root, train, transform, **own)
        # Whole splits, before any subset: the validation set comes from the training split, and
        # labels the data should not have are an error whichever examples a run happens to draw.
        if num_classes is not None:
            check_labels_in_range(loaded, num_classes, name=name, split="training" if train else "test")
        splits.append(loaded)
    train_set, test_set = splits
    val_set = None
    if val_size is not None:
        held_out, kept = split_off_validation(len(train_set), val_size, train_size)
        # The training images read through the test transform (both classes read ``transform``
        # per example; the copy shares the stored images or the file list).
        unaugmented = copy.copy(train_set)
        unaugmented.transform = test_set.transform
        val_set = Subset(unaugmented, held_out)
        train_set = Subset(train_set, kept)
    train_set = fixed_subset(train_set, train_size)
    if label_noise:
        train_set = with_label_noise(
            train_set, num_classes, label_noise, mixed_seed(label_noise_seed, NOISE_STREAMS["train"])
        )
        if val_set is not None:
            val_set = with_label_noise(
                val_set, num_classes, label_noise, mixed_seed(label_noise_seed, NOISE_STREAMS["val"])
            )
    return Splits(train_set, fixed_subset(test_set, test_size), val_set)
