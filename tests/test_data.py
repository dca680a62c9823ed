"""Dataset loaders, read from small files written in the real on-disk formats."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import TensorDataset

from ssam.data import build_datasets, fixed_subset, imagenet, missing_data_message
from ssam.data.fashion_mnist import DEBIAN_DIR
from ssam.data.transforms import Cutout

CIFAR10_MEAN = [0.4914, 0.4822, 0.4465]
CIFAR10_STD = [0.2470, 0.2435, 0.2616]
CIFAR_OPTIONS = dict(
    image_size=32, mean=CIFAR10_MEAN, std=CIFAR10_STD, crop_padding=4, hflip=True, cutout=True
)
CIFAR10_PER_BATCH = 4
CIFAR10_TEST = 6


# --- writers for the real formats -----------------------------------------------------------


def _write_cifar_batch(path: Path, data: np.ndarray, labels: list[int], label_key: str, **extra) -> None:
    """One batch file as torchvision downloads it: a pickled dict, 'data' uint8 N×3072."""
    entry = {"batch_label": path.name, "data": data, label_key: labels, **extra}
    with open(path, "wb") as f:
        pickle.dump(entry, f, protocol=2)


def _write_cifar10(root: Path, seed: int = 0) -> dict[str, tuple[np.ndarray, list[int]]]:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = CIFAR10_TEST if name == "test_batch" else CIFAR10_PER_BATCH
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n)]
        _write_cifar_batch(folder / name, data, labels, "labels")
        written[name] = (data, labels)
    return written


def _write_cifar100(root: Path) -> dict[str, tuple[np.ndarray, list[int], list[int]]]:
    rng = np.random.default_rng(1)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    written = {}
    for name, n in (("train", 7), ("test", 3)):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        fine = [int(v) for v in rng.integers(20, 100, size=n)]
        coarse = [f % 20 for f in fine]  # always differs from fine (fine >= 20)
        _write_cifar_batch(folder / name, data, fine, "fine_labels", coarse_labels=coarse)
        written[name] = (data, fine, coarse)
    return written


def _idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """An IDX file: magic 0x000008<ndim>, big-endian uint32 sizes, then the uint8 data."""
    if magic is None:
        magic = 0x00000800 | array.ndim
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_fashion_mnist(folder: Path, n_train: int = 12, n_test: int = 5, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, size=n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, size=n_test, dtype=np.uint8),
    }
    for name, array in arrays.items():
        with gzip.open(folder / name, "wb") as f:
            f.write(_idx_bytes(array))
    return arrays


def _write_image_folder(root: Path, counts: dict[str, dict[str, int]]) -> None:
    rng = np.random.default_rng(0)
    for split, per_class in counts.items():
        for class_name, n in per_class.items():
            folder = root / split / class_name
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8)  # 40 wide, 30 high
                Image.fromarray(pixels).save(folder / f"img_{i}.png")


def _normalised(planes: np.ndarray, mean: list[float], std: list[float]) -> torch.Tensor:
    """uint8 C×H×W -> (x / 255 - mean) / std, per channel."""
    x = torch.from_numpy(planes.astype(np.float32) / 255.0)
    return (x - torch.tensor(mean).view(-1, 1, 1)) / torch.tensor(std).view(-1, 1, 1)


def _planes_from_row(row: np.ndarray) -> np.ndarray:
    """CIFAR's 3072 layout: the 1024 red values, then green, then blue, each row-major 32×32."""
    return np.stack(
        [row[0:1024].reshape(32, 32), row[1024:2048].reshape(32, 32), row[2048:3072].reshape(32, 32)]
    )


# --- CIFAR-10 / CIFAR-100 -----------------------------------------------------------------------


def test_cifar10_lengths_count_all_five_train_batches_and_the_test_batch(tmp_path):
    _write_cifar10(tmp_path)
    train, test, _ = build_datasets("cifar10", root=str(tmp_path), **CIFAR_OPTIONS)
    assert len(train) == 5 * CIFAR10_PER_BATCH
    assert len(test) == CIFAR10_TEST


def test_cifar10_train_items_are_float_3x32x32_with_int_labels(tmp_path):
    _write_cifar10(tmp_path)
    train, _, _ = build_datasets("cifar10", root=str(tmp_path), **CIFAR_OPTIONS)
    for i in range(len(train)):
        image, label = train[i]
        assert image.shape == (3, 32, 32)
        assert image.dtype == torch.float32
        assert isinstance(label, int)


def test_cifar10_labels_follow_batch_order(tmp_path):
    written = _write_cifar10(tmp_path)
    train, test, _ = build_datasets("cifar10", root=str(tmp_path), **CIFAR_OPTIONS)
    expected_train = [label for i in range(1, 6) for label in written[f"data_batch_{i}"][1]]
    assert [train[i][1] for i in range(len(train))] == expected_train
    assert [test[i][1] for i in range(len(test))] == written["test_batch"][1]


def test_cifar10_test_image_equals_normalised_stored_pixels_in_rgb_plane_order(tmp_path):
    written = _write_cifar10(tmp_path)
    _, test, _ = build_datasets("cifar10", root=str(tmp_path), **CIFAR_OPTIONS)
    data, _ = written["test_batch"]
    for i in range(CIFAR10_TEST):
        expected = _normalised(_planes_from_row(data[i]), CIFAR10_MEAN, CIFAR10_STD)
        torch.testing.assert_close(test[i][0], expected, rtol=0, atol=1e-5)


def test_cifar10_train_image_from_a_later_batch_is_stored_pixels_without_augmentation(tmp_path):
    written = _write_cifar10(tmp_path)
    train, _, _ = build_datasets(
        "cifar10", root=str(tmp_path), image_size=32, mean=CIFAR10_MEAN, std=CIFAR10_STD
    )
    data, _ = written["data_batch_3"]
    index = 2 * CIFAR10_PER_BATCH + 1  # second image of the third batch
    expected = _normalised(_planes_from_row(data[1]), CIFAR10_MEAN, CIFAR10_STD)
    torch.testing.assert_close(train[index][0], expected, rtol=0, atol=1e-5)


def test_cifar100_reads_fine_labels_not_coarse(tmp_path):
    written = _write_cifar100(tmp_path)
    train, test, _ = build_datasets("cifar100", root=str(tmp_path), **CIFAR_OPTIONS)
    assert len(train) == 7
    assert len(test) == 3
    assert [train[i][1] for i in range(7)] == written["train"][1]
    assert [test[i][1] for i in range(3)] == written["test"][1]


def test_cifar100_test_image_equals_normalised_stored_pixels(tmp_path):
    written = _write_cifar100(tmp_path)
    mean, std = [0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762]
    _, test, _ = build_datasets("cifar100", root=str(tmp_path), image_size=32, mean=mean, std=std)
    data = written["test"][0]
    image, _ = test[2]
    assert image.shape == (3, 32, 32)
    assert image.dtype == torch.float32
    torch.testing.assert_close(image, _normalised(_planes_from_row(data[2]), mean, std), rtol=0, atol=1e-5)


def test_truncated_cifar_batch_raises_value_error_naming_the_file(tmp_path):
    _write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="data_batch_3") as info:
        build_datasets("cifar10", root=str(tmp_path), **CIFAR_OPTIONS)
    assert str(path) in str(info.value)


def test_cifar_batch_with_garbage_bytes_raises_value_error_naming_the_file(tmp_path):
    _write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(b"this is not a pickle at all")
    with pytest.raises(ValueError) as info:
        build_datasets("cifar10", root=str(tmp_path), **CIFAR_OPTIONS)
    assert str(path) in str(info.value)


def test_cifar_batch_with_more_labels_than_images_raises_value_error(tmp_path):
    _write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    _write_cifar_batch(path, np.zeros((2, 3072), dtype=np.uint8), [0, 1, 2], "labels")
    with pytest.raises(ValueError, match="2 images but 3 labels"):
        build_datasets("cifar10", root=str(tmp_path), **CIFAR_OPTIONS)


# --- ImageNet (ImageFolder tree) ------------------------------------------------------------


IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def test_imagefolder_tree_gives_3x32x32_tensors_and_sorted_class_indices(tmp_path):
    _write_image_folder(
        tmp_path,
        {"train": {"n02": 2, "n01": 3}, "val": {"n02": 1, "n01": 2}},
    )
    train, test, _ = build_datasets(
        "imagenet", root=str(tmp_path), image_size=32, mean=IMAGENET_MEAN, std=IMAGENET_STD
    )
    assert len(train) == 5
    assert len(test) == 3
    for dataset in (train, test):
        for i in range(len(dataset)):
            image, _ = dataset[i]
            assert image.shape == (3, 32, 32)
            assert image.dtype == torch.float32
    # Classes are numbered in sorted folder order: n01 -> 0, n02 -> 1.
    assert [train[i][1] for i in range(5)] == [0, 0, 0, 1, 1]
    assert [test[i][1] for i in range(3)] == [0, 0, 1]


def test_imagefolder_unreadable_image_raises_value_error_naming_the_file_on_access(tmp_path):
    _write_image_folder(tmp_path, {"train": {"a": 1}, "val": {"a": 1}})
    broken = tmp_path / "train" / "a" / "zz_broken.png"
    broken.write_bytes(b"\x00garbage, not a png\xff" * 4)
    train, _, _ = build_datasets(
        "imagenet", root=str(tmp_path), image_size=32, mean=IMAGENET_MEAN, std=IMAGENET_STD
    )
    assert len(train) == 2
    train[0]  # the good image still loads
    with pytest.raises(ValueError) as info:
        train[1]
    assert str(broken) in str(info.value)


# --- Fashion-MNIST (gzip IDX) ---------------------------------------------------------------


def test_fashion_mnist_idx_files_round_trip_pixels_and_labels(tmp_path):
    arrays = _write_fashion_mnist(tmp_path)
    train, test, _ = build_datasets("fashion_mnist", root=str(tmp_path), image_size=28, mean=[0.5], std=[0.5])
    assert len(train) == 12
    assert len(test) == 5
    for dataset, images, labels in (
        (train, arrays["train-images-idx3-ubyte.gz"], arrays["train-labels-idx1-ubyte.gz"]),
        (test, arrays["t10k-images-idx3-ubyte.gz"], arrays["t10k-labels-idx1-ubyte.gz"]),
    ):
        for i in range(len(dataset)):
            image, label = dataset[i]
            assert image.shape == (1, 28, 28)
            assert image.dtype == torch.float32
            assert label == int(labels[i])
            torch.testing.assert_close(image, _normalised(images[i][None], [0.5], [0.5]), rtol=0, atol=1e-6)


def test_fashion_mnist_found_in_torchvision_raw_layout(tmp_path):
    _write_fashion_mnist(tmp_path / "FashionMNIST" / "raw", n_train=3, n_test=2)
    train, test, _ = build_datasets("fashion_mnist", root=str(tmp_path), image_size=28, mean=[0.5], std=[0.5])
    assert (len(train), len(test)) == (3, 2)


@pytest.mark.parametrize(
    "magic",
    [0x00000903, 0x00010803, 0x00000D03],
    ids=["type-0x09", "nonzero-second-byte", "float-type"],
)
def test_fashion_mnist_bad_magic_raises_value_error_naming_the_file(tmp_path, magic):
    arrays = _write_fashion_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(_idx_bytes(arrays["train-images-idx3-ubyte.gz"], magic=magic))
    with pytest.raises(ValueError, match="not an unsigned-byte IDX file") as info:
        build_datasets("fashion_mnist", root=str(tmp_path), image_size=28, mean=[0.5], std=[0.5])
    assert str(path) in str(info.value)


def test_fashion_mnist_idx_with_short_data_raises_value_error(tmp_path):
    arrays = _write_fashion_mnist(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(_idx_bytes(arrays["t10k-images-idx3-ubyte.gz"])[:-10])
    with pytest.raises(ValueError, match="header says"):
        build_datasets("fashion_mnist", root=str(tmp_path), image_size=28, mean=[0.5], std=[0.5])


@pytest.mark.skipif(not DEBIAN_DIR.is_dir(), reason=f"{DEBIAN_DIR} not installed (dataset-fashion-mnist)")
def test_real_fashion_mnist_from_debian_package_has_60000_and_10000_balanced_examples():
    train, test, _ = build_datasets("fashion_mnist", root=None, image_size=28, mean=[0.2860], std=[0.3530])
    assert len(train) == 60000
    assert len(test) == 10000
    assert train.images.shape == (60000, 1, 28, 28)
    assert train.images.dtype == torch.uint8
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    image, label = test[0]
    assert image.shape == (1, 28, 28)
    assert 0 <= label < 10


# --- fixed subsets --------------------------------------------------------------------------


def test_fixed_subset_indices_do_not_depend_on_the_global_seed():
    dataset = TensorDataset(torch.arange(100))
    chosen = []
    for seed in (0, 1, 12345):
        torch.manual_seed(seed)
        chosen.append(list(fixed_subset(dataset, 10).indices))
    assert chosen[0] == chosen[1] == chosen[2]
    assert len(set(chosen[0])) == 10
    assert chosen[0] == sorted(chosen[0])
    assert all(0 <= i < 100 for i in chosen[0])


def test_fixed_subset_none_returns_the_whole_dataset():
    dataset = TensorDataset(torch.arange(7))
    assert fixed_subset(dataset, None) is dataset


def test_fixed_subset_larger_than_dataset_raises_value_error():
    with pytest.raises(ValueError, match="subset size 8 is larger than the dataset \\(7 examples\\)"):
        fixed_subset(TensorDataset(torch.arange(7)), 8)


def test_build_datasets_train_size_picks_the_same_examples_whatever_the_seed(tmp_path):
    _write_fashion_mnist(tmp_path, n_train=20, n_test=10)
    labels_by_seed = []
    for seed in (3, 4):
        torch.manual_seed(seed)
        train, test, _ = build_datasets(
            "fashion_mnist",
            root=str(tmp_path),
            image_size=28,
            mean=[0.5],
            std=[0.5],
            train_size=6,
            test_size=4,
        )
        assert (len(train), len(test)) == (6, 4)
        labels_by_seed.append((list(train.indices), list(test.indices)))
    assert labels_by_seed[0] == labels_by_seed[1]


def test_build_datasets_train_size_larger_than_the_data_raises_value_error(tmp_path):
    _write_fashion_mnist(tmp_path, n_train=5, n_test=5)
    with pytest.raises(ValueError, match="larger than the dataset"):
        build_datasets(
            "fashion_mnist", root=str(tmp_path), image_size=28, mean=[0.5], std=[0.5], train_size=6
        )


# --- Cutout ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(8))
def test_cutout_p1_zeroes_one_square_of_at_most_16x16_on_every_channel(seed):
    torch.manual_seed(seed)
    image = torch.ones(3, 32, 32)
    out = Cutout(16, p=1.0)(image)
    zero = out == 0
    assert torch.equal(zero[0], zero[1]) and torch.equal(zero[0], zero[2])
    rows = zero[0].any(dim=1)
    cols = zero[0].any(dim=0)
    assert 1 <= int(rows.sum()) <= 16
    assert 1 <= int(cols.sum()) <= 16
    # The zeroed pixels are exactly a rectangle: the product of the zeroed rows and columns.
    assert torch.equal(zero[0], rows[:, None] & cols[None, :])
    assert bool((out[~zero] == 1).all())
    assert torch.equal(image, torch.ones(3, 32, 32))  # the input is not modified


def test_cutout_p0_leaves_the_image_unchanged():
    torch.manual_seed(0)
    image = torch.rand(3, 32, 32)
    before = image.clone()
    for _ in range(20):
        assert torch.equal(Cutout(16, p=0.0)(image), before)


# --- missing data ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, folder", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")]
)
def test_missing_data_message_for_absent_cifar_names_folder_and_fetch_command(tmp_path, name, folder):
    message = missing_data_message(name, str(tmp_path))
    assert message is not None
    assert str(tmp_path / folder) in message
    assert "dataset.download=true" in message
    assert f"dataset={name}" in message


def test_missing_data_message_is_none_when_cifar_folder_present(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    assert missing_data_message("cifar10", str(tmp_path)) is None


def test_missing_data_message_for_absent_fashion_mnist_mentions_download(tmp_path):
    message = missing_data_message("fashion_mnist", str(tmp_path))
    assert message is not None
    assert str(tmp_path) in message
    assert "dataset.download=true" in message


def test_missing_data_message_is_none_when_fashion_mnist_files_present(tmp_path):
    _write_fashion_mnist(tmp_path, n_train=1, n_test=1)
    assert missing_data_message("fashion_mnist", str(tmp_path)) is None


def test_missing_data_message_for_imagenet_names_the_missing_split(tmp_path):
    (tmp_path / "train").mkdir()
    message = missing_data_message("imagenet", str(tmp_path))
    assert message == f"no folder {tmp_path / 'val'}. {imagenet.FETCH_HINT}"


def test_build_datasets_on_missing_root_raises_file_not_found_with_the_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset.download=true"):
        build_datasets("cifar10", root=str(tmp_path), **CIFAR_OPTIONS)
