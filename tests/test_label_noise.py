"""Label noise and the held-out validation split: exactly round(p·N) training labels changed to
another class, the same for every run seed; the test set untouched; a fixed validation split,
disjoint from training and read without augmentation; and what a run records of them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from runs import comparable, kill_after_checkpoints, read_json, read_jsonl, train_ok
from test_data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR_OPTIONS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    _normalised,
    _planes_from_row,
    _write_cifar10,
    _write_fashion_mnist,
    _write_image_folder,
)
from torch.utils.data import Subset

from ssam.data import (
    NoisyLabels,
    build_datasets,
    changed_label_fraction,
    fixed_subset,
    images_and_labels,
    labels_of,
    missing_data_message,
    with_label_noise,
)
from ssam.data.device_loader import Augmentation, DeviceTrainLoader
from ssam.data.label_noise import noisy_labels
from ssam.data.sampling import EpochShuffle
from ssam.data.transforms import imagenet_transform

FASHION = dict(image_size=28, mean=[0.5], std=[0.5], num_classes=10)


def base_indices(dataset) -> list[int]:
    """The indices into the stored split of the examples a (nested) Subset holds, in order."""
    if isinstance(dataset, NoisyLabels):
        return base_indices(dataset.dataset)
    if isinstance(dataset, Subset):
        inner = base_indices(dataset.dataset)
        return [inner[i] for i in dataset.indices]
    return list(range(len(dataset)))


def stored_labels(dataset) -> torch.Tensor:
    """The labels as stored, under any noise."""
    return labels_of(dataset.dataset if isinstance(dataset, NoisyLabels) else dataset)


def fashion(tmp_path, **settings):
    return build_datasets("fashion_mnist", root=str(tmp_path), **FASHION, **settings)


@pytest.fixture
def fashion_root(tmp_path):
    _write_fashion_mnist(tmp_path, n_train=200, n_test=20)
    return tmp_path


# --- the corrupted labels ---------------------------------------------------------------------


@pytest.mark.parametrize(("count", "fraction"), [(100, 0.4), (101, 0.25), (7, 0.5), (1000, 0.8), (10, 0.0)])
def test_exactly_round_p_n_labels_change(count, fraction):
    labels = torch.arange(count) % 10
    noisy = noisy_labels(labels, 10, fraction, seed=3)
    assert int((noisy != labels).sum()) == round(fraction * count)


def test_every_changed_label_is_another_valid_class():
    labels = torch.arange(3000) % 5
    noisy = noisy_labels(labels, 5, 0.6, seed=0)
    changed = noisy != labels
    assert bool(((noisy >= 0) & (noisy < 5)).all())
    assert int(changed.sum()) == 1800
    # Uniform over the 4 other classes: each takes about a quarter of every class's changes.
    shifts = (noisy[changed] - labels[changed]) % 5
    assert torch.bincount(shifts, minlength=5)[0] == 0
    assert all(abs(int(n) - 450) < 90 for n in torch.bincount(shifts, minlength=5)[1:])


def test_noise_depends_on_its_seed_only():
    labels = torch.arange(500) % 10
    torch.manual_seed(0)
    first = noisy_labels(labels, 10, 0.3, seed=7)
    torch.manual_seed(1)
    assert torch.equal(noisy_labels(labels, 10, 0.3, seed=7), first)
    assert not torch.equal(noisy_labels(labels, 10, 0.3, seed=8), first)


@pytest.mark.parametrize("fraction", [1.0, -0.1])
def test_a_fraction_outside_0_1_is_refused(fraction):
    with pytest.raises(ValueError, match=r"label noise must be in \[0, 1\)"):
        noisy_labels(torch.zeros(4, dtype=torch.long), 10, fraction, seed=0)


def test_no_noise_returns_the_dataset_itself(fashion_root):
    train = fashion(fashion_root).train
    assert with_label_noise(train, 10, 0.0, seed=0) is train
    assert changed_label_fraction(train) == 0.0


# --- noise on each kind of dataset ----------------------------------------------------------


def test_fashion_mnist_training_labels_are_noisy_and_test_labels_untouched(fashion_root):
    clean = fashion(fashion_root)
    noisy = fashion(fashion_root, label_noise=0.4)
    assert isinstance(noisy.train, NoisyLabels)
    labels = torch.tensor([noisy.train[i][1] for i in range(200)])
    assert torch.equal(labels, labels_of(noisy.train))
    assert int((labels != labels_of(clean.train)).sum()) == 80
    assert changed_label_fraction(noisy.train) == 0.4
    assert torch.equal(noisy.train[5][0], clean.train[5][0])  # the images are the same
    assert torch.equal(labels_of(noisy.test), labels_of(clean.test))


def test_noisy_labels_are_the_same_for_every_run_seed_and_every_build(fashion_root):
    built = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        built.append(labels_of(fashion(fashion_root, label_noise=0.3, label_noise_seed=5).train))
    assert torch.equal(built[0], built[1])
    other_seed = labels_of(fashion(fashion_root, label_noise=0.3, label_noise_seed=6).train)
    assert not torch.equal(other_seed, built[0])


def test_no_noise_and_no_validation_give_todays_datasets(fashion_root):
    train, _, val = fashion(fashion_root, train_size=50, test_size=10, label_noise=0.0)
    assert val is None
    assert type(train) is Subset
    assert train.indices == fixed_subset(train.dataset, 50).indices


def test_cifar_subset_gets_round_p_n_wrong_labels(tmp_path):
    _write_cifar10(tmp_path)
    clean = build_datasets("cifar10", root=str(tmp_path), train_size=15, **CIFAR_OPTIONS)
    noisy = build_datasets(
        "cifar10", root=str(tmp_path), train_size=15, label_noise=0.2, num_classes=10, **CIFAR_OPTIONS
    )
    assert base_indices(noisy.train) == base_indices(clean.train)
    assert int((labels_of(noisy.train) != labels_of(clean.train)).sum()) == 3


def test_the_device_loader_gets_the_noisy_labels(fashion_root):
    train = fashion(fashion_root, train_size=64, label_noise=0.5).train
    images, labels = images_and_labels(train)
    assert torch.equal(labels, labels_of(train))
    assert int((labels != stored_labels(train)).sum()) == 32
    sampler = EpochShuffle(len(train), seed=0)
    sampler.set_epoch(0)
    loader = DeviceTrainLoader(
        images,
        labels,
        sampler,
        batch_size=16,
        mean=[0.5],
        std=[0.5],
        augmentation=Augmentation(),
        device=torch.device("cpu"),
    )
    targets = torch.cat([batch_targets for _, batch_targets in loader])
    assert torch.equal(targets, labels[sampler.order()])


def test_image_folder_labels_are_read_from_targets_and_made_noisy(tmp_path):
    _write_image_folder(tmp_path, {"train": {"a": 4, "b": 3, "c": 3}, "val": {"a": 1, "b": 1, "c": 1}})
    options = dict(root=str(tmp_path), image_size=32, mean=IMAGENET_MEAN, std=IMAGENET_STD, num_classes=3)
    train, test, _ = build_datasets("imagenet", label_noise=0.5, **options)
    stored = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    assert torch.equal(stored_labels(train), stored)
    labels = torch.tensor([train[i][1] for i in range(10)])
    assert torch.equal(labels, labels_of(train))
    assert int((labels != stored).sum()) == 5
    assert [test[i][1] for i in range(3)] == [0, 1, 2]


def test_image_folder_validation_images_go_through_the_test_transform(tmp_path):
    _write_image_folder(tmp_path, {"train": {"a": 3, "b": 3}, "val": {"a": 1, "b": 1}})
    options = dict(root=str(tmp_path), image_size=32, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    train, _, val = build_datasets("imagenet", val_size=2, **options)
    assert len(train) == 4 and not set(base_indices(train)) & set(base_indices(val))
    transform = imagenet_transform(train=False, **{k: options[k] for k in ("image_size", "mean", "std")})
    files = val.dataset.samples
    for position, index in enumerate(base_indices(val)):
        path, label = files[index]
        assert torch.equal(val[position][0], transform(Image.open(path).convert("RGB")))
        assert val[position][1] == label


# --- the validation split -------------------------------------------------------------------


def test_validation_split_is_disjoint_from_training_and_the_same_for_every_seed(fashion_root):
    splits = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        splits.append(fashion(fashion_root, val_size=40, train_size=100))
    train, _, val = splits[0]
    assert (len(train), len(val)) == (100, 40)
    assert not set(base_indices(train)) & set(base_indices(val))
    for other in splits[1:]:
        assert base_indices(other.val) == base_indices(val)
        assert base_indices(other.train) == base_indices(train)


def test_without_train_size_the_rest_of_the_split_is_trained_on(fashion_root):
    train, _, val = fashion(fashion_root, val_size=30)
    assert sorted(base_indices(train) + base_indices(val)) == list(range(200))


def test_validation_labels_are_noisy_on_a_stream_of_their_own(fashion_root):
    train, _, val = fashion(fashion_root, val_size=50, train_size=100, label_noise=0.4)
    assert int((labels_of(val) != stored_labels(val)).sum()) == 20
    assert int((labels_of(train) != stored_labels(train)).sum()) == 40
    assert [val[i][1] for i in range(50)] == labels_of(val).tolist()


def test_validation_images_are_the_training_images_without_augmentation(tmp_path):
    written = _write_cifar10(tmp_path)
    rows = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    _, _, val = build_datasets("cifar10", root=str(tmp_path), val_size=5, **CIFAR_OPTIONS)
    for position, index in enumerate(base_indices(val)):
        expected = _normalised(_planes_from_row(rows[index]), CIFAR10_MEAN, CIFAR10_STD)
        torch.testing.assert_close(val[position][0], expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            dict(val_size=200),
            r"dataset.val_size \(200\) must leave at least 1 training example: the training split has 200",
        ),
        (
            dict(val_size=150, train_size=51),
            r"dataset.val_size \(150\) \+ dataset.train_size \(51\) is larger than the training split \(200 examples\)",
        ),
    ],
)
def test_a_validation_split_too_large_is_refused(fashion_root, settings, message):
    with pytest.raises(ValueError, match=message):
        fashion(fashion_root, **settings)


# --- a run with noise and a validation split ------------------------------------------------

HAS_FASHION_MNIST = missing_data_message("fashion_mnist", None) is None
needs_fashion_mnist = pytest.mark.skipif(not HAS_FASHION_MNIST, reason="needs Fashion-MNIST")
NOISY_RUN = [
    "dataset.train_size=256",
    "dataset.val_size=128",
    "dataset.test_size=128",
    "dataset.label_noise=0.4",
    "batch_size=64",
    "epochs=2",
]
BEST_VAL_KEYS = ("best_val_acc", "best_val_epoch", "test_acc_at_best_val")


def assert_best_validation_matches_metrics(summary: dict, rows: list[dict]) -> None:
    best = max(rows, key=lambda row: (row["val_acc"], -row["epoch"]))  # a tie: the earliest
    assert summary["best_val_acc"] == best["val_acc"]
    assert summary["best_val_epoch"] == best["epoch"]
    assert summary["test_acc_at_best_val"] == best["test_acc"]


@pytest.mark.slow
@needs_fashion_mnist
@pytest.mark.parametrize("on_device", ["false", "true"])
def test_a_run_records_validation_accuracy_and_the_test_accuracy_at_its_best(tmp_path, on_device):
    run_dir = tmp_path / "run"
    train_ok(run_dir, [*NOISY_RUN, f"dataset.on_device={on_device}"])
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [row["epoch"] for row in rows] == [0, 1]
    assert all(0 <= row["val_acc"] <= 100 and row["val_loss"] > 0 for row in rows)
    summary = read_json(run_dir / "summary.json")
    assert_best_validation_matches_metrics(summary, rows)
    assert summary["label_noise"] == 0.4
    assert summary["label_noise_seed"] == 0
    assert summary["label_noise_changed"] == round(0.4 * 256) / 256
    assert summary["val_size"] == 128


@needs_fashion_mnist
@pytest.mark.slow
def test_a_killed_noisy_run_resumes_to_the_same_validation_record(tmp_path):
    overrides = [*NOISY_RUN, "trainer.checkpoint_every_steps=1"]
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    train_ok(straight, overrides)
    kill_after_checkpoints(interrupted, overrides, writes=6)  # in the second epoch (4 steps each)
    assert not (interrupted / "summary.json").exists(), "the kill must land before the run ends"
    train_ok(interrupted, overrides)
    expected, actual = read_json(straight / "summary.json"), read_json(interrupted / "summary.json")
    for key in (*BEST_VAL_KEYS, "label_noise_changed", "final_test_acc"):
        assert actual[key] == expected[key], key
    assert comparable(read_jsonl(interrupted / "metrics.jsonl")) == comparable(
        read_jsonl(straight / "metrics.jsonl")
    )
